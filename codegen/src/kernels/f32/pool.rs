//! f32 max and average pooling (2-D, NCHW, every ONNX attribute): an output row at a time, the
//! taps in the evaluator's order (ky, then kx) for the whole row. Max keeps the first of equal
//! values (`v > m`), padding never wins; the average divides the in-order sum by the count of
//! positions it counts (`count_include_pad` counts the padding, not what `ceil_mode` adds past
//! it), 0 when there are none.

use super::{F32Kernel, Window, slice, tensor, twin};
use qc_ir::infer::{ints_or, window_out};
use qc_ir::{Attrs, OpKind, Tensor, TensorType};

/// A compiled f32 max or average pooling.
pub struct Pool {
    max: bool,
    c: usize,
    /// The window over each plane.
    win: Window,
    /// Per output row and per output column: the positions an average counts.
    count_y: Vec<usize>,
    count_x: Vec<usize>,
    avx2: bool,
}

impl Pool {
    /// max_pool or avg_pool over `x` (`[n, c, h, w]`, all but `n` fixed) into `out`.
    pub fn new(kind: OpKind, attrs: &Attrs, x: &TensorType, out: &TensorType, avx2: bool) -> Option<Pool> {
        if x.rank() != 4 || out.rank() != 4 {
            return None;
        }
        let fixed = |t: &TensorType, i: usize| t.dims[i].fixed().map(|n| n as usize);
        let (c, h, w) = (fixed(x, 1)?, fixed(x, 2)?, fixed(x, 3)?);
        let k = ints_or(attrs, "kernel_shape", 2, 1).ok()?;
        let s = ints_or(attrs, "strides", 2, 1).ok()?;
        let p = ints_or(attrs, "pads", 4, 0).ok()?;
        let d = ints_or(attrs, "dilations", 2, 1).ok()?;
        let ceil = attrs.bool("ceil_mode", false);
        let mut out_hw = [0usize; 2];
        for (i, o) in out_hw.iter_mut().enumerate() {
            *o = window_out([h, w][i] as u64, k[i], s[i], p[i], p[i + 2], d[i], ceil).ok()? as usize;
        }
        if [fixed(out, 1)?, fixed(out, 2)?, fixed(out, 3)?] != [c, out_hw[0], out_hw[1]] {
            return None;
        }
        let u = |v: &[u64]| v.iter().map(|&a| a as usize).collect::<Vec<_>>();
        let (k, s, p, d) = (u(&k), u(&s), u(&p), u(&d));
        let include_pad = attrs.bool("count_include_pad", false);
        // Along dim i: how many taps of output o an average counts.
        let counts = |i: usize, len: usize| -> Vec<usize> {
            (0..out_hw[i])
                .map(|o| {
                    (0..k[i])
                        .filter(|&t| {
                            let pos = (o * s[i] + t * d[i]) as isize - p[i] as isize;
                            let inside = pos >= 0 && (pos as usize) < len;
                            inside || (include_pad && pos < (len + p[i + 2]) as isize)
                        })
                        .count()
                })
                .collect()
        };
        Some(Pool {
            max: kind == OpKind::MaxPool,
            c,
            win: Window::new([h, w], [k[0], k[1]], [s[0], s[1]], [d[0], d[1]], [p[0], p[1]], out_hw),
            count_y: counts(0, h),
            count_x: counts(1, w),
            avx2,
        })
    }

    /// One plane's output row `y` into `row`.
    #[inline(always)]
    fn row(&self, plane: &[f32], y: usize, row: &mut [f32]) {
        let (sx, dx, px) = (self.win.stride[1], self.win.dil[1], self.win.pad[1]);
        row.fill(if self.max { f32::NEG_INFINITY } else { 0.0 });
        for ky in 0..self.win.k[0] {
            let iy = (y * self.win.stride[0] + ky * self.win.dil[0]).wrapping_sub(self.win.pad[0]);
            if iy >= self.win.h {
                continue;
            }
            let line = &plane[iy * self.win.w..][..self.win.w];
            for (kx, &(lo, hi)) in self.win.cols.iter().enumerate() {
                if lo >= hi {
                    continue;
                }
                let first = lo * sx + kx * dx - px;
                let dst = &mut row[lo..hi];
                match (self.max, sx) {
                    (true, 1) => {
                        for (m, &v) in dst.iter_mut().zip(&line[first..first + (hi - lo)]) {
                            *m = if v > *m { v } else { *m };
                        }
                    }
                    (false, 1) => {
                        for (a, &v) in dst.iter_mut().zip(&line[first..first + (hi - lo)]) {
                            *a += v;
                        }
                    }
                    (true, _) => {
                        for (j, m) in dst.iter_mut().enumerate() {
                            let v = line[first + j * sx];
                            *m = if v > *m { v } else { *m };
                        }
                    }
                    (false, _) => {
                        for (j, a) in dst.iter_mut().enumerate() {
                            *a += line[first + j * sx];
                        }
                    }
                }
            }
        }
        if !self.max {
            let cy = self.count_y[y];
            for (a, &cx) in row.iter_mut().zip(&self.count_x) {
                let n = cy * cx;
                *a = if n == 0 { 0.0 } else { *a / n as f32 };
            }
        }
    }
}

impl F32Kernel for Pool {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let x = args.first().ok_or("pooling has one operand")?;
        let shape = x.shape();
        if shape.len() != 4 || shape[1..] != [self.c, self.win.h, self.win.w] {
            return Err(format!("pooling over [n, {}, {}, {}] got {shape:?}", self.c, self.win.h, self.win.w));
        }
        let [oh, ow] = self.win.out;
        let xs = slice(x)?;
        let mut y = vec![0.0f32; shape[0] * self.c * oh * ow];
        if ow > 0 && self.win.h * self.win.w > 0 {
            twin! {
                fn planes(p: &Pool, x: &[f32], y: &mut [f32]) {
                    let [oh, ow] = p.win.out;
                    for (plane, out) in x.chunks_exact(p.win.h * p.win.w).zip(y.chunks_exact_mut(oh * ow)) {
                        for (yo, row) in out.chunks_exact_mut(ow).enumerate() {
                            p.row(plane, yo, row);
                        }
                    }
                }
            }
            planes(self.avx2, self, &xs, &mut y);
        }
        tensor(&[shape[0], self.c, oh, ow], y)
    }

    fn describe(&self) -> &'static str {
        match (self.max, self.avx2) {
            (true, true) => "f32 max pool, avx2",
            (true, false) => "f32 max pool, rust loop",
            (false, true) => "f32 average pool, avx2",
            (false, false) => "f32 average pool, rust loop",
        }
    }
}
