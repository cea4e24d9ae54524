//! f32 convolution (conv2d with constant weights, any groups, strides, pads, dilations, a bias
//! and a fused relu/clip) as a packed matrix product, with the evaluator's order of operations:
//! each output element is `Σ x·w` over the taps (input channel, ky, kx) in that order — one
//! multiply, then one add, never a fused multiply-add —, then `+ bias`, then the activation.
//! Taps in the padding contribute `0·w` where the evaluator skips them: the same sums, as the
//! weights are checked finite and a sum that starts at +0 never becomes −0 by adding ±0.
//!
//! Per image and group: the weights are packed once, `[oc / 5][tap][5]`; the input is packed a
//! panel at a time, `[tap][16 pixels]`, zero where a tap falls in the padding; the micro-kernel
//! keeps 5 output channels × 16 pixels in ten 8-lane accumulators while it walks the taps (on
//! AVX2, `vmulps` then `vaddps`; elsewhere the same operations lane by lane). Taps are taken in
//! blocks of [`KC`], the accumulators stored and reloaded between blocks, which keeps each
//! element's sum in order.
//!
//! Bounds: every slice is indexed through checked Rust indexing or sliced to the lengths the
//! vector loads and stores need before the intrinsics run.

use super::{F32Kernel, Window, avx2};
use crate::target::Isa;
use qc_ir::{Attrs, Tensor, TensorType};

/// Output channels per micro-tile.
const MR: usize = 5;
/// Pixels per micro-tile (two 8-lane vectors). Ten accumulators, two pixel vectors, a broadcast
/// weight and a product fit the sixteen vector registers without spilling.
const NR: usize = 16;
/// Taps per block.
const KC: usize = 128;

/// A compiled f32 convolution.
pub struct ConvF32 {
    c: usize,
    /// The window over each plane.
    win: Window,
    groups: usize,
    /// Per group: packed weights `[oc tile][tap][MR]`, zero beyond the group's channels.
    packed: Vec<Vec<f32>>,
    og: usize,
    ci: usize,
    bias: Vec<f32>,
    /// The fused activation's bounds (`-inf..inf` without one).
    lo: f32,
    hi: f32,
    relu: bool,
    avx2: bool,
}

impl ConvF32 {
    /// The kernel of an f32 conv2d reading `x` with constant weight `w` and bias `b`, or `None`
    /// when the shapes are not fixed (but the batch) or a weight is not finite. The AVX2 loop runs
    /// where `isa` has AVX2.
    pub fn new(attrs: &Attrs, x: &TensorType, w: &Tensor, b: Option<&Tensor>, out: &TensorType, isa: Isa) -> Option<ConvF32> {
        if !x.elem.is_f32() || !out.elem.is_f32() || x.rank() != 4 || out.rank() != 4 {
            return None;
        }
        let fixed = |t: &TensorType, i: usize| t.dims[i].fixed().map(|n| n as usize);
        let (c, h, wd) = (fixed(x, 1)?, fixed(x, 2)?, fixed(x, 3)?);
        let (oc, oh, ow) = (fixed(out, 1)?, fixed(out, 2)?, fixed(out, 3)?);
        let w = w.as_f32()?;
        let ws = w.as_standard_layout();
        let ws = ws.as_slice()?;
        if w.ndim() != 4 || ws.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let (o, ci, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
        let groups = attrs.int("groups", 1).max(1) as usize;
        if o != oc || ci * groups != c || o % groups != 0 {
            return None;
        }
        let ints = |name: &str, n: usize, default: i64| -> Option<Vec<usize>> {
            let v = attrs.ints(name).map_or_else(|| vec![default; n], <[i64]>::to_vec);
            (v.len() == n && v.iter().all(|&a| a >= 0)).then(|| v.iter().map(|&a| a as usize).collect())
        };
        let (s, p, d) = (ints("strides", 2, 1)?, ints("pads", 4, 0)?, ints("dilations", 2, 1)?);
        // The output size the shape rule gave must be what these windows make.
        let span = |len: usize, i: usize, k: usize| (len + p[i] + p[i + 2]).checked_sub(d[i] * (k - 1) + 1).map(|v| v / s[i] + 1);
        if kh == 0 || kw == 0 || s.contains(&0) || span(h, 0, kh)? != oh || span(wd, 1, kw)? != ow {
            return None;
        }
        let bias = match b {
            Some(b) => b.as_f32()?.iter().copied().collect(),
            None => vec![0.0; o],
        };
        if bias.len() != o {
            return None;
        }
        let og = o / groups;
        let taps = ci * kh * kw;
        let tiles = og.div_ceil(MR);
        let packed = (0..groups)
            .map(|g| {
                let mut pk = vec![0.0f32; tiles * taps * MR];
                for j in 0..og {
                    let oc = g * og + j;
                    for t in 0..taps {
                        pk[((j / MR) * taps + t) * MR + j % MR] = ws[oc * taps + t];
                    }
                }
                pk
            })
            .collect();
        let (lo, hi, relu) = match attrs.str("activation") {
            None => (f32::NEG_INFINITY, f32::INFINITY, false),
            Some("relu") => (0.0, f32::INFINITY, true),
            Some("clip") => (attrs.float("clip_min", f32::NEG_INFINITY), attrs.float("clip_max", f32::INFINITY), false),
            Some(_) => return None,
        };
        Some(ConvF32 {
            c,
            win: Window::new([h, wd], [kh, kw], [s[0], s[1]], [d[0], d[1]], [p[0], p[1]], [oh, ow]),
            groups,
            packed,
            og,
            ci,
            bias,
            lo,
            hi,
            relu,
            avx2: isa.avx2() && avx2(),
        })
    }

    /// Multiply-adds per image.
    pub fn macs(&self) -> u64 {
        (self.groups * self.og * self.win.out[0] * self.win.out[1] * self.ci * self.win.k[0] * self.win.k[1]) as u64
    }

    /// The convolution of `x` (`[n, c, h, w]`, standard layout) into a new tensor.
    pub fn convolve(&self, x: &Tensor) -> Result<Tensor, String> {
        let x = x.as_f32().ok_or("an f32 conv reads f32")?;
        let shape = x.shape();
        if shape.len() != 4 || shape[1..] != [self.c, self.win.h, self.win.w] {
            return Err(format!("an f32 conv for [n, {}, {}, {}] got {shape:?}", self.c, self.win.h, self.win.w));
        }
        let n = shape[0];
        let x = x.as_standard_layout();
        let xs = x.as_slice().ok_or("standard layout")?;
        let o = self.groups * self.og;
        let plane = self.win.out[0] * self.win.out[1];
        let mut out = vec![0.0f32; n * o * plane];
        let image_in = self.c * self.win.h * self.win.w;
        let taps = self.ci * self.win.k[0] * self.win.k[1];
        let mut panel = vec![0.0f32; KC.min(taps) * NR];
        let tiles = self.og.div_ceil(MR);
        // The sums of one pixel panel: [oc tile][MR][NR].
        let mut sums = vec![0.0f32; tiles * MR * NR];
        for ni in 0..n {
            let image = &xs[ni * image_in..][..image_in];
            for g in 0..self.groups {
                let input = &image[g * self.ci * self.win.h * self.win.w..][..self.ci * self.win.h * self.win.w];
                if self.og < MR {
                    // Few channels per group (depthwise): each output row is the vector.
                    for j in 0..self.og {
                        let oc = g * self.og + j;
                        let dst = &mut out[(ni * o + oc) * plane..][..plane];
                        self.rows(input, oc, dst);
                    }
                    continue;
                }
                for p0 in (0..plane).step_by(NR) {
                    for k0 in (0..taps).step_by(KC) {
                        let kc = KC.min(taps - k0);
                        self.pack(input, p0, k0, kc, &mut panel[..kc * NR]);
                        for t in 0..tiles {
                            let w = &self.packed[g][(t * taps + k0) * MR..][..kc * MR];
                            let acc = &mut sums[t * MR * NR..][..MR * NR];
                            if k0 == 0 {
                                acc.fill(0.0);
                            }
                            self.micro(w, &panel[..kc * NR], acc);
                        }
                    }
                    let width = NR.min(plane - p0);
                    for j in 0..self.og {
                        let oc = g * self.og + j;
                        let row = &sums[(j / MR) * MR * NR + (j % MR) * NR..][..width];
                        let dst = &mut out[(ni * o + oc) * plane + p0..][..width];
                        for (d, &s) in dst.iter_mut().zip(row) {
                            *d = self.activate(s + self.bias[oc]);
                        }
                    }
                }
            }
        }
        let t = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[n, o, self.win.out[0], self.win.out[1]]), out)
            .map_err(|e| e.to_string())?;
        Ok(Tensor::F32(t))
    }

    /// Output channel `oc` of one group's `input` into `dst` (`[oh][ow]`), a row at a time: for
    /// each tap in order, the row's outputs whose tap is inside the input take `+ x·w`.
    fn rows(&self, input: &[f32], oc: usize, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` was set only where the CPU has AVX2 (checked by `avx2()`).
            unsafe { self.rows_avx2(input, oc, dst) };
            return;
        }
        self.rows_any(input, oc, dst);
    }

    /// [`ConvF32::rows`] compiled for AVX2 (the same operations, eight lanes at a time).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn rows_avx2(&self, input: &[f32], oc: usize, dst: &mut [f32]) {
        self.rows_any(input, oc, dst);
    }

    #[inline(always)]
    fn rows_any(&self, input: &[f32], oc: usize, dst: &mut [f32]) {
        let ([kh, kw], [oh, ow], (h, w)) = (self.win.k, self.win.out, (self.win.h, self.win.w));
        let (sy, sx) = (self.win.stride[0], self.win.stride[1]);
        debug_assert_eq!(self.win.cols.len(), kw);
        let taps = self.ci * kh * kw;
        let weights = &self.packed[oc / self.og][((oc % self.og) / MR) * taps * MR..][..taps * MR];
        let lane = (oc % self.og) % MR;
        for y in 0..oh {
            let row = &mut dst[y * ow..][..ow];
            row.fill(0.0);
            for ic in 0..self.ci {
                for ky in 0..kh {
                    let iy = (y * sy + ky * self.win.dil[0]).wrapping_sub(self.win.pad[0]);
                    if iy >= h {
                        continue;
                    }
                    let line = &input[(ic * h + iy) * w..][..w];
                    for (kx, &(lo, hi)) in self.win.cols.iter().enumerate() {
                        let wv = weights[((ic * kh + ky) * kw + kx) * MR + lane];
                        if lo >= hi {
                            continue;
                        }
                        let col = |x: usize| x * sx + kx * self.win.dil[1] - self.win.pad[1];
                        if sx == 1 {
                            let first = col(lo);
                            for (a, &v) in row[lo..hi].iter_mut().zip(&line[first..first + (hi - lo)]) {
                                *a += v * wv;
                            }
                        } else {
                            for (x, a) in row[lo..hi].iter_mut().enumerate() {
                                *a += line[col(lo + x)] * wv;
                            }
                        }
                    }
                }
            }
            let b = self.bias[oc];
            for a in row.iter_mut() {
                *a = self.activate(*a + b);
            }
        }
    }

    /// The evaluator's fused activation: `max(v, 0)` for relu, `min(max(v, lo), hi)` for clip.
    #[inline(always)]
    fn activate(&self, v: f32) -> f32 {
        if self.relu {
            v.max(0.0)
        } else if self.lo == f32::NEG_INFINITY && self.hi == f32::INFINITY {
            v
        } else {
            v.max(self.lo).min(self.hi)
        }
    }

    /// Packs taps `k0..k0 + kc` of pixels `p0..p0 + NR` of one group's input into `panel`
    /// (`[tap][NR]`), zero for taps in the padding and pixels past the end.
    fn pack(&self, input: &[f32], p0: usize, k0: usize, kc: usize, panel: &mut [f32]) {
        let [kh, kw] = self.win.k;
        let [oh, ow] = self.win.out;
        let (h, w) = (self.win.h, self.win.w);
        let count = NR.min(oh * ow - p0);
        for (r, row) in panel.chunks_exact_mut(NR).enumerate().take(kc) {
            let tap = k0 + r;
            let (ic, ky, kx) = (tap / (kh * kw), tap / kw % kh, tap % kw);
            let chan = &input[ic * h * w..][..h * w];
            row.fill(0.0);
            let (dy, dx) = (ky * self.win.dil[0], kx * self.win.dil[1]);
            let (sy, sx, px) = (self.win.stride[0], self.win.stride[1], self.win.pad[1]);
            // Pixels p0.. in runs of one output row each.
            let mut i = 0;
            while i < count {
                let (y, x0) = ((p0 + i) / ow, (p0 + i) % ow);
                let run = (ow - x0).min(count - i);
                // A position above the input wraps to a huge value: outside too.
                let iy = (y * sy + dy).wrapping_sub(self.win.pad[0]);
                if iy < h {
                    let line = &chan[iy * w..][..w];
                    // The x of this run whose input column is inside the row: [lo, hi).
                    let col = |x: usize| (x * sx + dx).wrapping_sub(px);
                    let lo = (x0..x0 + run).find(|&x| col(x) < w).unwrap_or(x0 + run);
                    let hi = (lo..x0 + run).find(|&x| col(x) >= w).unwrap_or(x0 + run);
                    let dst = &mut row[i + (lo - x0)..i + (hi - x0)];
                    if sx == 1 && hi > lo {
                        dst.copy_from_slice(&line[col(lo)..col(lo) + (hi - lo)]);
                    } else {
                        for (j, v) in dst.iter_mut().enumerate() {
                            *v = line[col(lo + j)];
                        }
                    }
                }
                i += run;
            }
        }
    }

    /// `acc[m][n] = acc[m][n] + w[k][m] · panel[k][n]` for k in order.
    fn micro(&self, w: &[f32], panel: &[f32], acc: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` was set only where the CPU has AVX2 (checked by `avx2()`).
            unsafe { micro_avx2(w, panel, acc) };
            return;
        }
        for (wk, pk) in w.chunks_exact(MR).zip(panel.chunks_exact(NR)) {
            for (m, &wv) in wk.iter().enumerate() {
                for (a, &x) in acc[m * NR..][..NR].iter_mut().zip(pk) {
                    *a += wv * x;
                }
            }
        }
    }
}

/// [`ConvF32::micro`] with AVX2: per tap, two 8-pixel loads, five broadcast weights, ten `vmulps`
/// and ten `vaddps` (the rounding of the scalar `a + w·x`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn micro_avx2(w: &[f32], panel: &[f32], acc: &mut [f32]) {
    use std::arch::x86_64::*;
    let acc: &mut [f32; MR * NR] = (&mut acc[..MR * NR]).try_into().expect("MR × NR sums");
    let load = |s: &[f32]| -> __m256 {
        let s: &[f32; 8] = s[..8].try_into().expect("8 lanes");
        // SAFETY: `s` is exactly 8 f32s.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    };
    let mut a = [[_mm256_setzero_ps(); NR / 8]; MR];
    for (m, row) in a.iter_mut().enumerate() {
        for (v, r) in row.iter_mut().enumerate() {
            *r = load(&acc[m * NR + v * 8..]);
        }
    }
    for (wk, pk) in w.chunks_exact(MR).zip(panel.chunks_exact(NR)) {
        let x = [load(&pk[0..]), load(&pk[8..])];
        for (m, row) in a.iter_mut().enumerate() {
            let wv = _mm256_set1_ps(wk[m]);
            for (r, &xv) in row.iter_mut().zip(&x) {
                *r = _mm256_add_ps(*r, _mm256_mul_ps(wv, xv));
            }
        }
    }
    for (m, row) in a.iter().enumerate() {
        for (v, &r) in row.iter().enumerate() {
            let dst: &mut [f32; 8] = (&mut acc[m * NR + v * 8..][..8]).try_into().expect("8 lanes");
            // SAFETY: `dst` is exactly 8 f32s.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), r) };
        }
    }
}

impl F32Kernel for ConvF32 {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        self.convolve(args.first().ok_or("conv2d has no input")?)
    }

    fn describe(&self) -> &'static str {
        if self.avx2 { "f32 conv, avx2 (mul + add)" } else { "f32 conv, rust loop" }
    }

    fn ops(&self, len: usize) -> u64 {
        2 * self.macs() * (len / (self.c * self.win.h * self.win.w).max(1)) as u64
    }
}
