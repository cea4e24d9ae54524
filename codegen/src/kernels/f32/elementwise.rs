//! Elementwise f32 ops: the activations, add/sub/mul/div with numpy broadcasting (and a fused
//! activation), inference batch norm. Each element is the evaluator's scalar function of its
//! inputs (`qc_ir::eval::elementwise`), so any loop order gives the same bits.

use super::{F32Kernel, activate, fused, slice, tensor, twin};
use qc_ir::eval::{broadcast_shape, erf, exp, gelu, gelu_tanh, hard_sigmoid, hard_swish, pow, sigmoid, tanh};
use qc_ir::{Attrs, OpKind, Tensor, TensorType};

/// relu, clip, sigmoid, hard_sigmoid, hard_swish, gelu, erf, tanh, sqrt, exp, neg: the
/// evaluator's functions of `qc_ir::eval`, element by element.
pub struct Unary {
    kind: OpKind,
    /// clip's bounds, hard_sigmoid's alpha and beta.
    a: f32,
    b: f32,
    avx2: bool,
}

impl Unary {
    /// The kernel of activation `kind` with its attributes.
    pub fn new(kind: OpKind, attrs: &Attrs, avx2: bool) -> Unary {
        let (a, b) = match kind {
            OpKind::Clip => (attrs.float("min", f32::NEG_INFINITY), attrs.float("max", f32::INFINITY)),
            OpKind::HardSigmoid => (attrs.float("alpha", 0.2), attrs.float("beta", 0.5)),
            // 1 selects gelu's tanh form.
            OpKind::Gelu => (f32::from(u8::from(attrs.str("approximate") == Some("tanh"))), 0.0),
            _ => (0.0, 0.0),
        };
        Unary { kind, a, b, avx2 }
    }
}

/// `y[i] = f(x[i])`.
#[inline(always)]
fn map(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f(v);
    }
}

impl F32Kernel for Unary {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let x = args.first().ok_or("an activation has one operand")?;
        let xs = slice(x)?;
        let mut y = vec![0.0f32; xs.len()];
        let (a, b) = (self.a, self.b);
        twin! {
            fn activation(kind: OpKind, a: f32, b: f32, x: &[f32], y: &mut [f32]) {
                match kind {
                    OpKind::Relu => map(x, y, |v| v.max(0.0)),
                    OpKind::Clip => map(x, y, |v| v.max(a).min(b)),
                    OpKind::Sigmoid => map(x, y, sigmoid),
                    OpKind::HardSigmoid => map(x, y, |v| hard_sigmoid(v, a, b)),
                    OpKind::HardSwish => map(x, y, hard_swish),
                    OpKind::Gelu if a == 1.0 => map(x, y, gelu_tanh),
                    OpKind::Gelu => map(x, y, gelu),
                    OpKind::Erf => map(x, y, erf),
                    OpKind::Tanh => map(x, y, tanh),
                    OpKind::Sqrt => map(x, y, f32::sqrt),
                    OpKind::Exp => map(x, y, exp),
                    _ => map(x, y, |v| -v),
                }
            }
        }
        activation(self.avx2, self.kind, a, b, &xs, &mut y);
        tensor(x.shape(), y)
    }

    fn describe(&self) -> &'static str {
        if self.avx2 { "f32 activation, avx2" } else { "f32 activation, rust loop" }
    }
}

/// add, sub, mul, div, pow with broadcasting, then the fused activation.
pub struct Binary {
    kind: OpKind,
    act: Option<(f32, f32)>,
    avx2: bool,
}

impl Binary {
    /// The kernel of `kind`, or `None` for a fused activation it does not know.
    pub fn new(kind: OpKind, attrs: &Attrs, avx2: bool) -> Option<Binary> {
        Some(Binary { kind, act: fused(attrs)?, avx2 })
    }
}

/// The broadcast of shapes `a` and `b` as runs of dims: `(len, a's stride, b's stride)`, a stride
/// 0 where that operand is broadcast; dims of length 1 dropped, neighbours that broadcast alike
/// merged (a per-channel gate of `[n, c, h, w]` is `[(n·c, 1, 1), (h·w, 1, 0)]`). Also the
/// result's shape.
pub(crate) fn broadcast_runs(a: &[usize], b: &[usize]) -> Result<(Vec<usize>, Vec<(usize, usize, usize)>), String> {
    let out = broadcast_shape(a, b)?;
    let r = out.len();
    let padded = |s: &[usize], i: usize| if i + s.len() >= r { s[i + s.len() - r] } else { 1 };
    let mut dims: Vec<(usize, bool, bool)> = Vec::new();
    for (i, &len) in out.iter().enumerate() {
        if len == 1 {
            continue;
        }
        let d = (len, padded(a, i) != 1, padded(b, i) != 1);
        match dims.last_mut() {
            Some(last) if (last.1, last.2) == (d.1, d.2) => last.0 *= len,
            _ => dims.push(d),
        }
    }
    let (mut sa, mut sb) = (1, 1);
    let mut runs: Vec<(usize, usize, usize)> = dims
        .iter()
        .rev()
        .map(|&(len, fa, fb)| {
            let run = (len, if fa { sa } else { 0 }, if fb { sb } else { 0 });
            sa *= if fa { len } else { 1 };
            sb *= if fb { len } else { 1 };
            run
        })
        .collect();
    runs.reverse();
    Ok((out, runs))
}

/// `y = f(a, b)` over the broadcast `runs`: the last run is the inner loop (each operand
/// contiguous or one value), the others are counted through.
#[inline(always)]
fn zip_runs(a: &[f32], b: &[f32], runs: &[(usize, usize, usize)], y: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    let (outer, (len, ia, ib)) = match runs.split_last() {
        Some((&inner, outer)) => (outer, inner),
        None => (&[][..], (1, 0, 0)),
    };
    let mut idx = vec![0usize; outer.len()];
    let (mut oa, mut ob) = (0usize, 0usize);
    for dst in y.chunks_exact_mut(len) {
        match (ia, ib) {
            (0, 0) => dst.fill(f(a[oa], b[ob])),
            (0, _) => {
                let p = a[oa];
                map(&b[ob..ob + len], dst, |q| f(p, q));
            }
            (_, 0) => {
                let q = b[ob];
                map(&a[oa..oa + len], dst, |p| f(p, q));
            }
            _ => {
                for ((o, &p), &q) in dst.iter_mut().zip(&a[oa..oa + len]).zip(&b[ob..ob + len]) {
                    *o = f(p, q);
                }
            }
        }
        for (d, &(n, sa, sb)) in outer.iter().enumerate().rev() {
            idx[d] += 1;
            oa += sa;
            ob += sb;
            if idx[d] < n {
                break;
            }
            idx[d] = 0;
            oa -= sa * n;
            ob -= sb * n;
        }
    }
}

impl F32Kernel for Binary {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let [a, b] = args else { return Err(format!("{} has two operands", self.kind)) };
        let (shape, runs) = broadcast_runs(a.shape(), b.shape())?;
        let (xa, xb) = (slice(a)?, slice(b)?);
        let mut y = vec![0.0f32; shape.iter().product()];
        if y.is_empty() {
            return tensor(&shape, y);
        }
        twin! {
            fn arithmetic(kind: OpKind, a: &[f32], b: &[f32], runs: &[(usize, usize, usize)], y: &mut [f32], act: Option<(f32, f32)>) {
                match kind {
                    OpKind::Add => zip_runs(a, b, runs, y, |p, q| p + q),
                    OpKind::Sub => zip_runs(a, b, runs, y, |p, q| p - q),
                    OpKind::Mul => zip_runs(a, b, runs, y, |p, q| p * q),
                    OpKind::Pow => zip_runs(a, b, runs, y, pow),
                    _ => zip_runs(a, b, runs, y, |p, q| p / q),
                }
                activate(y, act);
            }
        }
        arithmetic(self.avx2, self.kind, &xa, &xb, &runs, &mut y, self.act);
        tensor(&shape, y)
    }

    fn describe(&self) -> &'static str {
        if self.avx2 { "f32 elementwise, avx2" } else { "f32 elementwise, rust loop" }
    }
}

/// Inference batch norm over axis 1, the evaluator's `(x − mean) · (1 / sqrt(var + eps)) · scale
/// + bias` with its per-channel factor computed once.
pub struct BatchNorm {
    /// Per channel: mean, 1 / sqrt(var + eps), scale, bias.
    channels: Vec<[f32; 4]>,
    avx2: bool,
}

impl BatchNorm {
    /// With constant `[scale, bias, mean, var]` of one value per channel of `x` (axis 1).
    pub fn new(attrs: &Attrs, x: &TensorType, params: [&Tensor; 4], avx2: bool) -> Option<BatchNorm> {
        let c = x.dims.get(1)?.fixed()? as usize;
        let p: Vec<Vec<f32>> = params.iter().map(|t| Some(t.as_f32()?.iter().copied().collect())).collect::<Option<_>>()?;
        if x.rank() < 2 || p.iter().any(|a| a.len() != c) {
            return None;
        }
        let eps = attrs.float("epsilon", 1e-5);
        let channels = (0..c).map(|i| [p[2][i], 1.0 / (p[3][i] + eps).sqrt(), p[0][i], p[1][i]]).collect();
        Some(BatchNorm { channels, avx2 })
    }
}

impl F32Kernel for BatchNorm {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let x = args.first().ok_or("batch_norm has no input")?;
        let shape = x.shape();
        let c = self.channels.len();
        if shape.len() < 2 || shape[1] != c {
            return Err(format!("batch_norm over {c} channels got shape {shape:?}"));
        }
        let plane: usize = shape[2..].iter().product();
        let xs = slice(x)?;
        let mut y = vec![0.0f32; xs.len()];
        twin! {
            fn normalize(channels: &[[f32; 4]], plane: usize, x: &[f32], y: &mut [f32]) {
                for (i, (src, dst)) in x.chunks_exact(plane).zip(y.chunks_exact_mut(plane)).enumerate() {
                    let [m, inv, s, b] = channels[i % channels.len()];
                    map(src, dst, |v| (v - m) * inv * s + b);
                }
            }
        }
        if plane > 0 {
            normalize(self.avx2, &self.channels, plane, &xs, &mut y);
        }
        tensor(shape, y)
    }

    fn describe(&self) -> &'static str {
        if self.avx2 { "f32 batch norm, avx2" } else { "f32 batch norm, rust loop" }
    }
}
