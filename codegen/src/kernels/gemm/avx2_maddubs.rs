//! The 256-bit u8 × i8 GEMM path for AVX2 CPUs without VNNI, precompiled with `std::arch` (see
//! ARCHITECTURE.md, "Kernels past 128 bits"): `vpmaddubsw` multiplies thirty-two u8 activations
//! by i8 weights and adds adjacent products into sixteen i16 lanes, `vpmaddwd` by ones adds those
//! in pairs into eight i32 lanes, `vpaddd` accumulates — thirty-two multiply-accumulates per
//! three instructions, twice what `vpmaddwd` on widened i16 pairs does (`avx2.rs`).
//!
//! `vpmaddubsw` saturates its i16 sums, so the path is taken only by layers where no pair can
//! reach saturation whatever the activations ([`pairs_fit`]): for every column and every pair of
//! adjacent k, the positive weights of the pair sum to at most 128 and the negative ones to at
//! least −128, so that `|a₀w₀ + a₁w₁| ≤ 255·128 = 32640`. Weights in [−64, 64] always pass
//! (`--weight-bits 7`, ONNX Runtime's `reduce_range`); an 8-bit layer passes only where its
//! large weights fall apart. The sums are then exact, and the result is the evaluator's, bit for
//! bit: no approximation is made to reach the speed.
//!
//! Layout (shared with the 512-bit path, `quads.rs`): weights in panels of 16 columns (8 for a
//! last panel of at most 8), `[k quad][columns]` words of four i8; activations (u8; an i8 input is
//! flipped, `q ^ 0x80`, its zero point + 128) copied once per tile of rows into k-quad words and
//! broadcast; the accumulators start from the bias with the zero-point term `−zp_u·Σ_k w` folded
//! in. The micro-kernel keeps up to 4 rows × 16 columns in eight accumulators. The epilogue is
//! the evaluator's f32 requantization on vectors (`cvtdq2ps`, `mulps`, a clamp to
//! `[lo − zp, hi − zp]`, `roundps` to nearest even, `cvtps2dq`, `+ zp`), narrowed to bytes with
//! saturating packs that the clamp keeps from saturating.
//!
//! Bounds: `run` checks that `a` holds `m` rows of `stride` bytes and `out` `m·n` bytes; every
//! vector load and store goes through a slice of exactly its width (checked by the slicing), and
//! the packed panels and tables are sized when the kernel is built.

use crate::kernels::gemm::avx2::{NativeRequant, check_rows};
use crate::kernels::gemm::quads::{QuadPanels, with_rows};
use crate::kernels::gemm::{GemmSpec, TileOut};
use std::arch::x86_64::*;

/// Rows per micro-tile.
const MR: usize = 4;
/// Columns per vector.
const L: usize = 8;

/// Whether `vpmaddubsw` computes every pair of `spec`'s products without saturating: for each
/// column and each pair of adjacent k (pairs start at even k), its positive weights sum to at
/// most 128 and its negative ones to at least −128.
pub fn pairs_fit(spec: &GemmSpec) -> bool {
    let k = spec.k;
    k > 0
        && spec.weights.len() == spec.n * k
        && spec.weights.chunks_exact(k).all(|col| {
            col.chunks(2).all(|pair| {
                let pos: i32 = pair.iter().map(|&w| w.max(0)).sum();
                let neg: i32 = pair.iter().map(|&w| w.min(0)).sum();
                pos <= 128 && neg >= -128
            })
        })
}

/// A GEMM layer packed for the AVX2 `vpmaddubsw` path.
pub(crate) struct Avx2MaddubsGemm {
    n: usize,
    /// Bytes per activation row (at least `4 · quads`).
    stride: usize,
    /// XOR that makes four activation bytes u8 (0x80808080 for i8 inputs).
    flip: u32,
    /// The weights, in panels of 16 columns.
    w: QuadPanels,
    /// The accumulators' starts and the requantization, per column.
    req: NativeRequant,
}

impl Avx2MaddubsGemm {
    /// Packs `spec` (f32 requantization with finite multipliers, i8 weights whose pairs fit, see
    /// [`pairs_fit`]) for rows of `stride` bytes (a multiple of 4, at least `k`); `None`
    /// otherwise.
    pub(crate) fn new(spec: &GemmSpec, stride: usize) -> Option<Avx2MaddubsGemm> {
        if !pairs_fit(spec) {
            return None;
        }
        let w = QuadPanels::new(spec, L)?;
        if !stride.is_multiple_of(4) || stride < 4 * w.quads {
            return None;
        }
        let req = NativeRequant::new(spec, spec.n.div_ceil(2 * L) * 2 * L)?;
        Some(Avx2MaddubsGemm { n: spec.n, stride, flip: if spec.a_signed { 0x8080_8080 } else { 0 }, w, req })
    }

    /// `m` rows of `a` (`stride` bytes each) into `out` (`m × n` requantized bytes).
    pub(crate) fn run(&self, a: &[u8], m: usize, out: &mut [u8]) -> Result<(), String> {
        check_rows("AVX2 vpmaddubsw", a, self.stride, m, out, self.n)?;
        self.run_to(a, m, TileOut::Bytes(out))
    }

    /// `m` rows of `a` into `out` as the accumulators themselves (`m × n` i32: the products of
    /// `matmul_integer`, whose zero points and scales the caller applies).
    pub(crate) fn run_i32(&self, a: &[u8], m: usize, out: &mut [i32]) -> Result<(), String> {
        check_rows("AVX2 vpmaddubsw", a, self.stride, m, out, self.n)?;
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
        with_rows(MR * self.w.quads, |rows| {
            for r0 in (0..m).step_by(MR) {
                let mr = MR.min(m - r0);
                self.w.load_rows(a, self.stride, r0, mr, self.flip, rows);
                let out = out.rows(r0 * self.n..(r0 + mr) * self.n);
                match mr {
                    4 => self.tile_rows::<4>(rows, out),
                    3 => self.tile_rows::<3>(rows, out),
                    2 => self.tile_rows::<2>(rows, out),
                    _ => self.tile_rows::<1>(rows, out),
                }
            }
        })
    }

    /// `R` rows (their k-quad words in `rows`) against every panel, into `out` (`R × n`):
    /// requantized, or the accumulators as they are.
    #[target_feature(enable = "avx2")]
    fn tile_rows<const R: usize>(&self, rows: &[i32], mut out: TileOut<'_>) {
        for (col0, weights, nonzero, full) in self.w.panels(self.n) {
            if full {
                let acc = self.micro::<R, 2>(rows, weights, nonzero, col0);
                match &mut out {
                    TileOut::Bytes(out) => self.req.store_avx2::<R, 2>(&acc, R, col0, self.n, out),
                    TileOut::I32(out) => store_i32(&acc, R, col0, self.n, out),
                }
            } else {
                let acc = self.micro::<R, 1>(rows, weights, nonzero, col0);
                match &mut out {
                    TileOut::Bytes(out) => self.req.store_avx2::<R, 1>(&acc, R, col0, self.n, out),
                    TileOut::I32(out) => store_i32(&acc, R, col0, self.n, out),
                }
            }
        }
    }

    /// The accumulators of an `R`-row × `8·V`-column tile from column `col0`: `start + Σ a·w`
    /// over the k quads (those in `nonzero` when given).
    #[target_feature(enable = "avx2")]
    fn micro<const R: usize, const V: usize>(
        &self,
        rows: &[i32],
        weights: &[i32],
        nonzero: Option<&[u32]>,
        col0: usize,
    ) -> [[__m256i; V]; R] {
        let load = |s: &[i32]| -> __m256i {
            let s: &[i32; L] = s[..L].try_into().expect("8 lanes");
            // SAFETY: `s` is exactly 8 i32s.
            unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
        };
        // Plain loops, no `array::from_fn` or `for_each` closures: a generic function compiled
        // without AVX2 cannot inline this function's AVX2 closures, and would call them per
        // element.
        let start = &self.req.start[col0..][..V * L];
        let mut acc = [[_mm256_setzero_si256(); V]; R];
        for row in acc.iter_mut() {
            for (v, a) in row.iter_mut().enumerate() {
                *a = load(&start[v * L..]);
            }
        }
        let quads = self.w.quads;
        let rows = &rows[..R * quads];
        let ones = _mm256_set1_epi16(1);
        let count = nonzero.map_or(quads, <[u32]>::len);
        for i in 0..count {
            let q = match nonzero {
                None => i,
                Some(nz) => nz[i] as usize,
            };
            let wq = &weights[q * V * L..][..V * L];
            let mut w = [_mm256_setzero_si256(); V];
            for (v, w) in w.iter_mut().enumerate() {
                *w = load(&wq[v * L..]);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32(rows[r * quads + q]);
                for (a, &w) in row.iter_mut().zip(&w) {
                    // Exact: the pairs fit in i16 (`pairs_fit`).
                    let pairs = _mm256_maddubs_epi16(x, w);
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        acc
    }
}

/// Stores the first `rows` rows of the accumulators of an `R`-row tile from column `col0` into
/// `out` (rows of `n`), the columns past `n` left out.
#[target_feature(enable = "avx2")]
pub(crate) fn store_i32<const R: usize, const V: usize>(
    acc: &[[__m256i; V]; R],
    rows: usize,
    col0: usize,
    n: usize,
    out: &mut [i32],
) {
    let cols = (V * L).min(n - col0);
    for (r, row) in acc.iter().enumerate().take(rows) {
        let mut lanes = [0i32; 2 * L];
        for (v, a) in row.iter().enumerate() {
            let dst: &mut [i32; L] = (&mut lanes[v * L..(v + 1) * L]).try_into().expect("8 lanes");
            // SAFETY: `dst` is exactly 8 i32s.
            unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), *a) };
        }
        out[r * n + col0..][..cols].copy_from_slice(&lanes[..cols]);
    }
}
