//! The 256-bit GEMM path for AVX2 CPUs, precompiled with `std::arch` (Cranelift's x64 backend
//! emits 128-bit vectors only; see ARCHITECTURE.md, "Kernels past 128 bits"): `vpmaddwd` on
//! 256-bit registers, sixteen exact i16 products per instruction, summed in pairs into i32.
//!
//! Weights are packed when the layer is compiled, per block of 16 columns, as `[k pair][16
//! columns][2 k]` i16 (zero past N and past K). Activations are u8 (an i8 input is flipped,
//! `q ^ 0x80`, its zero point + 128, as on the other vector paths), widened once per row to i16
//! pairs; the accumulators start from the bias with the zero-point term `−zp_u·Σ_k w` folded in.
//! The micro-kernel keeps 4 rows × 16 columns in eight accumulators: per k pair, two weight
//! loads, four broadcast activation pairs, eight `vpmaddwd`, eight `vpaddd`. The epilogue is the
//! evaluator's f32 requantization, `clamp(rne(f32(acc)·M) + zp, lo, hi)`, on vectors: `cvtdq2ps`,
//! `mulps`, a clamp to `[lo − zp, hi − zp]` (integers, so clamping before rounding equals clamping
//! after; it bounds the value before it leaves f32, as `requant_f32` does), `roundps` to nearest
//! even, `cvtps2dq`, `+ zp`, then bytes by saturating packs ([`NativeRequant::store_avx2`], which
//! the `vpmaddubsw` path shares). The sums are exact (the
//! layer passed [`GemmSpec::accumulators_fit`]), so the order of the additions does not matter:
//! the result is the evaluator's, bit for bit.
//!
//! Bounds: `run` checks that `a` holds `m` rows of `stride` bytes and `out` `m·n` bytes; the
//! loops index through slices of the lengths the vector loads and stores take (checked by the
//! slicing), and the packed panels and tables are sized when the kernel is built.

use crate::kernels::gemm::avx2_maddubs::store_i32;
use crate::kernels::gemm::{GemmSpec, TileOut};
use qc_ir::requant::Requant;
use std::arch::x86_64::*;

/// Rows per micro-tile.
const MR: usize = 4;
/// Columns per block (two 8-lane vectors).
const NB: usize = 16;

/// A GEMM layer packed for the AVX2 path.
pub(crate) struct Avx2Gemm {
    n: usize,
    /// K rounded up to 2 (the k pairs).
    pairs: usize,
    /// Bytes per activation row.
    stride: usize,
    /// XOR that makes an activation byte u8 (0x80 for i8 inputs).
    flip: u8,
    /// Per block: `[pair][16][2]` i16.
    packed: Vec<i16>,
    /// The accumulators' starts and the requantization, per column.
    req: NativeRequant,
}

impl Avx2Gemm {
    /// Packs `spec` (f32 requantization with finite multipliers, weights in i16) for rows of
    /// `stride ≥ k` bytes; `None` otherwise.
    pub(crate) fn new(spec: &GemmSpec, stride: usize) -> Option<Avx2Gemm> {
        let (n, k) = (spec.n, spec.k);
        if n == 0 || k == 0 || stride < k || spec.weights.len() != n * k || spec.bias.len() != n || spec.requant.len() != n {
            return None;
        }
        if spec.weights.iter().any(|&w| i16::try_from(w).is_err()) {
            return None;
        }
        let blocks = n.div_ceil(NB);
        let pairs = k.div_ceil(2);
        let mut packed = vec![0i16; blocks * pairs * NB * 2];
        for c in 0..n {
            let (blk, col) = (c / NB, c % NB);
            for kk in 0..k {
                packed[((blk * pairs + kk / 2) * NB + col) * 2 + kk % 2] = spec.weights[c * k + kk] as i16;
            }
        }
        let req = NativeRequant::new(spec, blocks * NB)?;
        Some(Avx2Gemm { n, pairs, stride, flip: if spec.a_signed { 0x80 } else { 0 }, packed, req })
    }

    /// `m` rows of `a` (`stride` bytes each) into `out` (`m × n` requantized bytes).
    pub(crate) fn run(&self, a: &[u8], m: usize, out: &mut [u8]) -> Result<(), String> {
        check_rows("AVX2", a, self.stride, m, out, self.n)?;
        self.run_to(a, m, TileOut::Bytes(out))
    }

    /// `m` rows of `a` into `out` as the accumulators themselves (`m × n` i32: the products of
    /// `matmul_integer`, whose zero points and scales the caller applies).
    pub(crate) fn run_i32(&self, a: &[u8], m: usize, out: &mut [i32]) -> Result<(), String> {
        check_rows("AVX2", a, self.stride, m, out, self.n)?;
        self.run_to(a, m, TileOut::I32(out))
    }

    fn run_to(&self, a: &[u8], m: usize, out: TileOut<'_>) -> Result<(), String> {
        if !std::is_x86_feature_detected!("avx2") {
            return Err("the AVX2 GEMM path runs on a CPU without AVX2".into());
        }
        // SAFETY: AVX2 is present (checked just above).
        unsafe { self.run_avx2(a, m, out) };
        Ok(())
    }

    #[target_feature(enable = "avx2")]
    fn run_avx2(&self, a: &[u8], m: usize, mut out: TileOut<'_>) {
        let pairs = self.pairs;
        // MR rows widened to i16 pairs, one i32 word per k pair (`a[2p] | a[2p + 1] << 16`), zero
        // past K.
        crate::kernels::gemm::quads::with_rows(MR * pairs, |rows| {
            for r0 in (0..m).step_by(MR) {
                let mr = MR.min(m - r0);
                rows.fill(0);
                for (r, dst) in rows.chunks_exact_mut(pairs).enumerate().take(mr) {
                    let src = &a[(r0 + r) * self.stride..][..self.stride];
                    self.widen(src, dst);
                }
                let mut out = out.rows(r0 * self.n..(r0 + mr) * self.n);
                for blk in 0..self.n.div_ceil(NB) {
                    let panel = &self.packed[blk * pairs * NB * 2..][..pairs * NB * 2];
                    let acc = self.micro(rows, panel, blk);
                    match &mut out {
                        TileOut::Bytes(out) => self.req.store_avx2::<MR, 2>(&acc, mr, blk * NB, self.n, out),
                        TileOut::I32(out) => store_i32::<MR, 2>(&acc, mr, blk * NB, self.n, out),
                    }
                }
            }
        })
    }

    /// One activation row as i16 pair words (`dst[p] = a[2p] | a[2p + 1] << 16`, each byte made
    /// u8), sixteen bytes at a time with `vpmovzxbw`, the tail byte by byte.
    #[target_feature(enable = "avx2")]
    fn widen(&self, src: &[u8], dst: &mut [i32]) {
        let flip = _mm_set1_epi8(self.flip as i8);
        let (mut i, n) = (0, src.len().min(dst.len() * 2));
        while i + 16 <= n {
            let s: &[u8; 16] = src[i..i + 16].try_into().expect("16 bytes");
            let d: &mut [i32; 8] = (&mut dst[i / 2..i / 2 + 8]).try_into().expect("8 words");
            // SAFETY: `s` is 16 bytes and `d` 32 bytes (8 words).
            unsafe {
                let v = _mm_xor_si128(_mm_loadu_si128(s.as_ptr().cast()), flip);
                _mm256_storeu_si256(d.as_mut_ptr().cast(), _mm256_cvtepu8_epi16(v));
            }
            i += 16;
        }
        for (d, two) in dst[i / 2..].iter_mut().zip(src[i..n].chunks(2)) {
            let lo = (two[0] ^ self.flip) as i32;
            let hi = two.get(1).map_or(0, |&b| (b ^ self.flip) as i32);
            *d = lo | hi << 16;
        }
    }

    /// The accumulators of one 4-row × 16-column tile: `start + Σ a·w` over the k pairs.
    #[target_feature(enable = "avx2")]
    fn micro(&self, rows: &[i32], panel: &[i16], blk: usize) -> [[std::arch::x86_64::__m256i; 2]; MR] {
        let pairs = self.pairs;
        const { assert!(MR == 4, "the loop below takes four rows") };
        let load = |s: &[i32]| -> __m256i {
            let s: &[i32; 8] = s[..8].try_into().expect("8 lanes");
            // SAFETY: `s` is exactly 8 i32s.
            unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
        };
        let start = &self.req.start[blk * NB..][..NB];
        let mut acc = [[load(&start[..8]), load(&start[8..])]; MR];
        let rows: &[i32] = &rows[..MR * pairs];
        let (r0, rest) = rows.split_at(pairs);
        let (r1, rest) = rest.split_at(pairs);
        let (r2, r3) = rest.split_at(pairs);
        for ((((w, &x0), &x1), &x2), &x3) in panel.chunks_exact(NB * 2).zip(r0).zip(r1).zip(r2).zip(r3) {
            let w: &[i16; 32] = w.try_into().expect("a panel of 16 column pairs");
            // SAFETY: `w` is 32 i16s, two 256-bit loads.
            let (w0, w1) = unsafe { (_mm256_loadu_si256(w.as_ptr().cast()), _mm256_loadu_si256(w[16..].as_ptr().cast())) };
            for (row, x) in acc.iter_mut().zip([x0, x1, x2, x3]) {
                let x = _mm256_set1_epi32(x);
                row[0] = _mm256_add_epi32(row[0], _mm256_madd_epi16(x, w0));
                row[1] = _mm256_add_epi32(row[1], _mm256_madd_epi16(x, w1));
            }
        }
        acc
    }
}

/// What the native paths' epilogues read: per column, padded with zeros to a multiple of their
/// block, the accumulator's start, `bias − zp_u·Σ_k w` (the activations' zero point as u8, after
/// the i8 flip), and the f32 multiplier; the output zero point and clamp.
pub(crate) struct NativeRequant {
    pub(crate) start: Vec<i32>,
    pub(crate) mult: Vec<f32>,
    pub(crate) zp: i32,
    pub(crate) lo: i32,
    pub(crate) hi: i32,
}

impl NativeRequant {
    /// Requantizes the first `rows` rows of a tile of `8·V` columns (`V` of 1 or 2) from column
    /// `col0` into `out`, rows of `n` bytes: the evaluator's f32 requantization on vectors, then
    /// bytes by saturating packs that the clamp keeps from saturating, stored directly.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) fn store_avx2<const R: usize, const V: usize>(
        &self,
        acc: &[[__m256i; V]; R],
        rows: usize,
        col0: usize,
        n: usize,
        out: &mut [u8],
    ) {
        const L: usize = 8;
        let mult = &self.mult[col0..][..V * L];
        let mut m = [_mm256_setzero_ps(); V];
        for (v, m) in m.iter_mut().enumerate() {
            let s: &[f32; L] = mult[v * L..][..L].try_into().expect("8 lanes");
            // SAFETY: `s` is exactly 8 f32s.
            *m = unsafe { _mm256_loadu_ps(s.as_ptr()) };
        }
        let (lo, hi) = (_mm256_set1_ps((self.lo - self.zp) as f32), _mm256_set1_ps((self.hi - self.zp) as f32));
        let zp = _mm256_set1_epi32(self.zp);
        let unsigned = self.lo >= 0;
        let cols = (V * L).min(n - col0);
        for (r, row) in acc.iter().enumerate().take(rows) {
            let mut q = [_mm256_setzero_si256(); V];
            for ((q, &a), &m) in q.iter_mut().zip(row).zip(&m) {
                let f = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), m), lo), hi);
                let f = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
                *q = _mm256_add_epi32(_mm256_cvtps_epi32(f), zp);
            }
            // Every value lies in [lo, hi], within i16 and within the bytes' range: the packs
            // do not saturate. `packs_epi32` interleaves the 128-bit halves; the permute puts
            // the sixteen i16 back in column order.
            let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q[0], q[V - 1]));
            let (w0, w1) = (_mm256_castsi256_si128(words), _mm256_extracti128_si256::<1>(words));
            let bytes = if unsigned { _mm_packus_epi16(w0, w1) } else { _mm_packs_epi16(w0, w1) };
            let dst = &mut out[r * n + col0..][..cols];
            if let Ok(dst) = <&mut [u8; 2 * L]>::try_from(&mut *dst) {
                // SAFETY: `dst` is exactly 16 bytes.
                unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), bytes) };
            } else if let Ok(dst) = <&mut [u8; L]>::try_from(&mut *dst) {
                // SAFETY: `dst` is exactly 8 bytes, the low half of `bytes`.
                unsafe { _mm_storel_epi64(dst.as_mut_ptr().cast(), bytes) };
            } else {
                let mut tile = [0u8; 2 * L];
                // SAFETY: `tile` is exactly 16 bytes.
                unsafe { _mm_storeu_si128(tile.as_mut_ptr().cast(), bytes) };
                dst.copy_from_slice(&tile[..dst.len()]);
            }
        }
    }

    /// `None` unless every column requantizes in f32 with a finite multiplier.
    pub(crate) fn new(spec: &GemmSpec, padded: usize) -> Option<NativeRequant> {
        let (n, k) = (spec.n, spec.k);
        let zp_u = spec.zp_a as i64 + if spec.a_signed { 128 } else { 0 };
        let mut start = vec![0i32; padded.max(n)];
        let mut mult = vec![0f32; padded.max(n)];
        for c in 0..n {
            let wsum: i64 = spec.weights[c * k..(c + 1) * k].iter().map(|&w| w as i64).sum();
            start[c] = (spec.bias[c] as i64 - zp_u * wsum) as i32;
            mult[c] = match spec.requant[c] {
                Requant::F32(m) if m.is_finite() => m,
                _ => return None,
            };
        }
        Some(NativeRequant { start, mult, zp: spec.zp_y, lo: spec.lo, hi: spec.hi })
    }
}

/// Checks what a precompiled path's `run` is given: `m` rows of `stride` bytes in `a`, `m·n`
/// outputs in `out`.
pub(crate) fn check_rows<T>(what: &str, a: &[u8], stride: usize, m: usize, out: &[T], n: usize) -> Result<(), String> {
    if a.len() != m * stride || out.len() != m * n {
        return Err(format!("{what} GEMM: {} input bytes and {} outputs for {m} rows", a.len(), out.len()));
    }
    Ok(())
}
