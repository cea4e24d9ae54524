//! f32 reductions over trailing axes: the mean (global average pooling, reduce_mean), softmax
//! on the last axis and layer normalization. A sum is the evaluator's: in index order, one add at a time from 0; eight
//! sums run side by side so that their adds overlap.

use super::{F32Kernel, slice, tensor, twin};
use qc_ir::eval::{exp, layer_norm_row};
use qc_ir::infer::{normalize_axes, normalize_axis};
use qc_ir::{Attrs, OpKind, Tensor, TensorType};

/// The mean over the axes from `from` to the last.
pub struct Mean {
    from: usize,
    keepdims: bool,
    avx2: bool,
}

impl Mean {
    /// global_avg_pool (axes 2..), or reduce_mean whose axes are the trailing ones of `x`.
    pub fn new(kind: OpKind, attrs: &Attrs, x: &TensorType, avx2: bool) -> Option<Mean> {
        let rank = x.rank();
        let (axes, keepdims) = match kind {
            OpKind::GlobalAvgPool => ((2..rank).collect(), true),
            _ => match attrs.ints("axes") {
                Some(a) if !a.is_empty() => (normalize_axes(a, rank).ok()?, attrs.bool("keepdims", true)),
                _ => ((0..rank).collect::<Vec<_>>(), attrs.bool("keepdims", true)),
            },
        };
        let from = rank.checked_sub(axes.len())?;
        let mut sorted = axes;
        sorted.sort_unstable();
        (sorted == (from..rank).collect::<Vec<_>>() && from < rank).then_some(Mean { from, keepdims, avx2 })
    }
}

/// `sums[j] = Σ x[j·len + i]` over `i` in order, for every `j`, eight `j` at a time.
#[inline(always)]
fn row_sums(x: &[f32], len: usize, sums: &mut [f32]) {
    const W: usize = 8;
    let mut blocks = sums.chunks_exact_mut(W);
    let mut j0 = 0;
    for block in &mut blocks {
        let rows: [&[f32]; W] = std::array::from_fn(|k| &x[(j0 + k) * len..][..len]);
        let mut acc = [0.0f32; W];
        for i in 0..len {
            for k in 0..W {
                acc[k] += rows[k][i];
            }
        }
        block.copy_from_slice(&acc);
        j0 += W;
    }
    for (k, s) in blocks.into_remainder().iter_mut().enumerate() {
        *s = x[(j0 + k) * len..][..len].iter().fold(0.0f32, |a, &b| a + b);
    }
}

impl F32Kernel for Mean {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let x = args.first().ok_or("a mean has one operand")?;
        let shape = x.shape();
        if shape.len() <= self.from {
            return Err(format!("a mean from axis {} got shape {shape:?}", self.from));
        }
        let len: usize = shape[self.from..].iter().product();
        let rows: usize = shape[..self.from].iter().product();
        let xs = slice(x)?;
        let mut y = vec![f32::NAN; rows];
        if len > 0 {
            twin! {
                fn means(x: &[f32], len: usize, y: &mut [f32]) {
                    row_sums(x, len, y);
                    let n = len as f32;
                    y.iter_mut().for_each(|v| *v /= n);
                }
            }
            means(self.avx2, &xs, len, &mut y);
        }
        let mut out: Vec<usize> = shape[..self.from].to_vec();
        if self.keepdims {
            out.extend(std::iter::repeat_n(1, shape.len() - self.from));
        }
        tensor(&out, y)
    }

    fn describe(&self) -> &'static str {
        if self.avx2 { "f32 mean, avx2" } else { "f32 mean, rust loop" }
    }
}

/// Softmax on the last axis: `e = exp(v − max)`, their sum in order, `e / sum`.
pub struct Softmax {
    avx2: bool,
}

impl Softmax {
    /// Softmax on the last axis of `x`; `None` on another axis.
    pub fn new(attrs: &Attrs, x: &TensorType, avx2: bool) -> Option<Softmax> {
        let rank = x.rank();
        (normalize_axis(attrs.int("axis", -1), rank).ok()? + 1 == rank).then_some(Softmax { avx2 })
    }
}

impl F32Kernel for Softmax {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let x = args.first().ok_or("softmax has one operand")?;
        let shape = x.shape();
        let len = *shape.last().ok_or("softmax of a scalar")?;
        let xs = slice(x)?;
        let mut y = vec![0.0f32; xs.len()];
        if len > 0 {
            twin! {
                fn lanes(x: &[f32], len: usize, y: &mut [f32]) {
                    for (src, dst) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
                        let m = src.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                        for (o, &v) in dst.iter_mut().zip(src) {
                            *o = exp(v - m);
                        }
                        let s = dst.iter().fold(0.0f32, |a, &b| a + b);
                        dst.iter_mut().for_each(|v| *v /= s);
                    }
                }
            }
            lanes(self.avx2, &xs, len, &mut y);
        }
        tensor(shape, y)
    }

    fn describe(&self) -> &'static str {
        if self.avx2 { "f32 softmax, avx2" } else { "f32 softmax, rust loop" }
    }
}

/// Layer normalization over the dims from `axis` on, row by row as the evaluator's
/// `layer_norm_row`, with constant scale and bias spread over a row once.
pub struct LayerNorm {
    /// Elements per row (the normalized dims).
    row: usize,
    scale: Vec<f32>,
    bias: Option<Vec<f32>>,
    eps: f32,
    avx2: bool,
}

impl LayerNorm {
    /// layer_norm of `x` (fixed normalized dims) by the constants `scale` and `bias`.
    pub fn new(attrs: &Attrs, x: &TensorType, scale: &Tensor, bias: Option<&Tensor>, avx2: bool) -> Option<LayerNorm> {
        let axis = normalize_axis(attrs.int("axis", -1), x.rank()).ok()?;
        let norm: Vec<usize> = x.dims[axis..].iter().map(|d| d.fixed().map(|n| n as usize)).collect::<Option<_>>()?;
        let spread =
            |t: &Tensor| -> Option<Vec<f32>> { Some(t.as_f32()?.broadcast(ndarray::IxDyn(&norm))?.iter().copied().collect()) };
        Some(LayerNorm {
            row: norm.iter().product(),
            scale: spread(scale)?,
            bias: match bias {
                Some(b) => Some(spread(b)?),
                None => None,
            },
            eps: attrs.float("epsilon", 1e-5),
            avx2,
        })
    }
}

impl F32Kernel for LayerNorm {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let x = args.first().ok_or("layer_norm has operands")?;
        let xs = slice(x)?;
        if self.row == 0 || xs.len() % self.row != 0 {
            return Err(format!("a layer_norm over rows of {} got shape {:?}", self.row, x.shape()));
        }
        let mut y = vec![0.0f32; xs.len()];
        twin! {
            fn rows(x: &[f32], row: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32, y: &mut [f32]) {
                for (src, dst) in x.chunks_exact(row).zip(y.chunks_exact_mut(row)) {
                    layer_norm_row(src, scale, bias, eps, dst);
                }
            }
        }
        rows(self.avx2, &xs, self.row, &self.scale, self.bias.as_deref(), self.eps, &mut y);
        tensor(x.shape(), y)
    }

    fn describe(&self) -> &'static str {
        if self.avx2 { "f32 layer_norm, avx2" } else { "f32 layer_norm, rust loop" }
    }
}
