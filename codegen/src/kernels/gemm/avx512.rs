//! The 512-bit GEMM path for AVX-512 VNNI CPUs, precompiled with `std::arch` (Cranelift's x64
//! backend emits 128-bit vectors only; see ARCHITECTURE.md, "Kernels past 128 bits"):
//! `vpdpbusd` on 512-bit registers, sixty-four u8 × i8 products per instruction, summed four at a
//! time into i32 lanes without saturation.
//!
//! Weights (i8) are packed when the layer is compiled, per panel of 32 columns (16 for a last
//! panel of at most 16), as `[k quad][columns]` i32 words, each holding a column's four weights
//! of that quad (zero past N and past K). Activations are u8 (an i8 input is flipped, `q ^ 0x80`,
//! its zero point + 128, as on the other vector paths), copied once per tile of rows into k-quad
//! words; the accumulators start from the bias with the zero-point term `−zp_u·Σ_k w` folded in.
//! The micro-kernel keeps up to 8 rows × 32 columns in sixteen accumulators: per k quad, two
//! weight loads, eight broadcast activation words, sixteen `vpdpbusd`. The epilogue is the
//! evaluator's f32 requantization on vectors: `vcvtdq2ps`, `vmulps`, a clamp to
//! `[lo − zp, hi − zp]` (integers, so clamping before rounding equals clamping after),
//! `vcvtps2dq` rounding to nearest even by its embedded rounding mode, `+ zp`, then `vpmovdb` to
//! bytes. The sums are exact (the layer passed [`GemmSpec::accumulators_fit`]), so
//! the result is the evaluator's, bit for bit.
//!
//! Bounds: `run` checks that `a` holds `m` rows of `stride` bytes and `out` `m·n` bytes; every
//! vector load and store goes through a slice of exactly its width (checked by the slicing), and
//! the packed panels and tables are sized when the kernel is built.

use crate::kernels::gemm::avx2::{NativeRequant, check_rows};
use crate::kernels::gemm::quads::{QuadPanels, with_rows};
use crate::kernels::gemm::{GemmSpec, TileOut};
use std::arch::x86_64::*;

/// Rows per micro-tile.
const MR: usize = 8;

/// Columns per vector.
const L: usize = 16;

/// A GEMM layer packed for the AVX-512 VNNI path.
pub(crate) struct Avx512Gemm {
    n: usize,
    /// Bytes per activation row (at least `4 · quads`).
    stride: usize,
    /// XOR that makes four activation bytes u8 (0x80808080 for i8 inputs).
    flip: u32,
    /// The weights, in panels of 32 columns.
    w: QuadPanels,
    /// The accumulators' starts and the requantization, per column.
    req: NativeRequant,
}

impl Avx512Gemm {
    /// Packs `spec` (f32 requantization with finite multipliers, weights in i8) for rows of
    /// `stride` bytes (a multiple of 4, at least `k`); `None` otherwise.
    pub(crate) fn new(spec: &GemmSpec, stride: usize) -> Option<Avx512Gemm> {
        let w = QuadPanels::new(spec, L)?;
        if !stride.is_multiple_of(4) || stride < 4 * w.quads {
            return None;
        }
        let req = NativeRequant::new(spec, spec.n.div_ceil(2 * L) * 2 * L)?;
        Some(Avx512Gemm { n: spec.n, stride, flip: if spec.a_signed { 0x8080_8080 } else { 0 }, w, req })
    }

    /// Whether this CPU runs the path.
    pub(crate) fn on_host() -> bool {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }

    /// `m` rows of `a` (`stride` bytes each) into `out` (`m × n` requantized bytes).
    pub(crate) fn run(&self, a: &[u8], m: usize, out: &mut [u8]) -> Result<(), String> {
        check_rows("AVX-512", a, self.stride, m, out, self.n)?;
        self.run_to(a, m, TileOut::Bytes(out))
    }

    /// `m` rows of `a` into `out` as the accumulators themselves (`m × n` i32: the products of
    /// `matmul_integer`, whose zero points and scales the caller applies).
    pub(crate) fn run_i32(&self, a: &[u8], m: usize, out: &mut [i32]) -> Result<(), String> {
        check_rows("AVX-512", a, self.stride, m, out, self.n)?;
        self.run_to(a, m, TileOut::I32(out))
    }

    fn run_to(&self, a: &[u8], m: usize, out: TileOut<'_>) -> Result<(), String> {
        if !Avx512Gemm::on_host() {
            return Err("the AVX-512 VNNI GEMM path runs on a CPU without AVX-512 VNNI".into());
        }
        // SAFETY: AVX-512 F, BW and VNNI are present (checked just above).
        unsafe { self.run_avx512(a, m, out) };
        Ok(())
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn run_avx512(&self, a: &[u8], m: usize, mut out: TileOut<'_>) {
        with_rows(MR * self.w.quads, |rows| {
            for r0 in (0..m).step_by(MR) {
                let mr = MR.min(m - r0);
                self.w.load_rows(a, self.stride, r0, mr, self.flip, rows);
                let out = out.rows(r0 * self.n..(r0 + mr) * self.n);
                match mr {
                    8 => self.tile_rows::<8>(rows, out),
                    7 => self.tile_rows::<7>(rows, out),
                    6 => self.tile_rows::<6>(rows, out),
                    5 => self.tile_rows::<5>(rows, out),
                    4 => self.tile_rows::<4>(rows, out),
                    3 => self.tile_rows::<3>(rows, out),
                    2 => self.tile_rows::<2>(rows, out),
                    _ => self.tile_rows::<1>(rows, out),
                }
            }
        })
    }

    /// `R` rows (their k-quad words in `rows`) against every panel, into `out` (`R × n`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn tile_rows<const R: usize>(&self, rows: &[i32], mut out: TileOut<'_>) {
        for (col0, weights, nonzero, full) in self.w.panels(self.n) {
            if full {
                let acc = self.micro::<R, 2>(rows, weights, nonzero, col0);
                self.store::<R, 2>(&acc, col0, &mut out);
            } else {
                let acc = self.micro::<R, 1>(rows, weights, nonzero, col0);
                self.store::<R, 1>(&acc, col0, &mut out);
            }
        }
    }

    /// A tile's accumulators into `out`: requantized, or as they are.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn store<const R: usize, const V: usize>(&self, acc: &[[__m512i; V]; R], col0: usize, out: &mut TileOut<'_>) {
        match out {
            TileOut::Bytes(out) => self.epilogue::<R, V>(acc, col0, out),
            TileOut::I32(out) => {
                let cols = (V * L).min(self.n - col0);
                for (r, row) in acc.iter().enumerate() {
                    let mut lanes = [0i32; 2 * L];
                    for (v, a) in row.iter().enumerate() {
                        let dst: &mut [i32; L] = (&mut lanes[v * L..(v + 1) * L]).try_into().expect("16 lanes");
                        // SAFETY: `dst` is exactly 16 i32s.
                        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), *a) };
                    }
                    out[r * self.n + col0..][..cols].copy_from_slice(&lanes[..cols]);
                }
            }
        }
    }

    /// The accumulators of an `R`-row × `16·V`-column tile from column `col0`: `start + Σ a·w`
    /// over the k quads (those in `nonzero` when given).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn micro<const R: usize, const V: usize>(
        &self,
        rows: &[i32],
        weights: &[i32],
        nonzero: Option<&[u32]>,
        col0: usize,
    ) -> [[__m512i; V]; R] {
        // Plain loops, no `array::from_fn`, `for_each` or closures: a generic function compiled
        // without this function's target features cannot inline the intrinsics, and whether a
        // closure is inlined depends on the embedding build's code-generation units (measured:
        // with 16, MobileNetV2 took 5.7 ms instead of 3.6, its GEMM steps calls out of line).
        let start = &self.req.start[col0..][..V * L];
        let mut acc = [[_mm512_setzero_si512(); V]; R];
        for row in acc.iter_mut() {
            for (v, a) in row.iter_mut().enumerate() {
                let s: &[i32; L] = start[v * L..][..L].try_into().expect("16 lanes");
                // SAFETY: `s` is exactly 16 i32s.
                *a = unsafe { _mm512_loadu_si512(s.as_ptr().cast()) };
            }
        }
        let quads = self.w.quads;
        let rows = &rows[..R * quads];
        let steps = nonzero.map_or(weights.len() / (V * L), <[u32]>::len);
        for i in 0..steps {
            let q = match nonzero {
                None => i,
                Some(nz) => nz[i] as usize,
            };
            let w = &weights[q * V * L..][..V * L];
            let mut wv = [_mm512_setzero_si512(); V];
            for (v, wv) in wv.iter_mut().enumerate() {
                let s: &[i32; L] = w[v * L..][..L].try_into().expect("16 lanes");
                // SAFETY: `s` is exactly 16 i32s.
                *wv = unsafe { _mm512_loadu_si512(s.as_ptr().cast()) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(rows[r * quads + q]);
                for (a, &w) in row.iter_mut().zip(&wv) {
                    *a = _mm512_dpbusd_epi32(*a, x, w);
                }
            }
        }
        acc
    }

    /// Requantizes a tile into `out` (`R` rows of `n` bytes) at columns `col0..`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn epilogue<const R: usize, const V: usize>(&self, acc: &[[__m512i; V]; R], col0: usize, out: &mut [u8]) {
        let mult = &self.req.mult[col0..][..V * L];
        let mut m = [_mm512_setzero_ps(); V];
        for (v, m) in m.iter_mut().enumerate() {
            let s: &[f32; L] = mult[v * L..][..L].try_into().expect("16 lanes");
            // SAFETY: `s` is exactly 16 f32s.
            *m = unsafe { _mm512_loadu_ps(s.as_ptr()) };
        }
        let (lo, hi) = (_mm512_set1_ps((self.req.lo - self.req.zp) as f32), _mm512_set1_ps((self.req.hi - self.req.zp) as f32));
        let zp = _mm512_set1_epi32(self.req.zp);
        for (r, row) in acc.iter().enumerate() {
            for (v, (&a, &m)) in row.iter().zip(&m).enumerate() {
                // Clamping to the integer bounds before rounding gives what clamping after it
                // does; the conversion rounds to nearest even whatever MXCSR says.
                let f = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), m), lo), hi);
                let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
                let bytes = _mm512_cvtepi32_epi8(_mm512_add_epi32(q, zp));
                let c = col0 + v * L;
                if c >= self.n {
                    break;
                }
                let dst = &mut out[r * self.n + c..][..L.min(self.n - c)];
                if let Ok(dst) = <&mut [u8; L]>::try_from(&mut *dst) {
                    // SAFETY: `dst` is exactly 16 bytes.
                    unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), bytes) };
                } else {
                    let mut tile = [0u8; L];
                    // SAFETY: `tile` is exactly 16 bytes.
                    unsafe { _mm_storeu_si128(tile.as_mut_ptr().cast(), bytes) };
                    dst.copy_from_slice(&tile[..dst.len()]);
                }
            }
        }
    }
}
