//! Elementwise ops: broadcasting arithmetic and activations.

use crate::attr::Attrs;
use crate::ops::OpKind;
use crate::tensor::Tensor;
use ndarray::{ArrayD, IxDyn, Zip};

/// Numpy broadcasting of two concrete shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let n = a.len().max(b.len());
    let get = |s: &[usize], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { 1 };
    (0..n)
        .map(|i| match (get(a, i), get(b, i)) {
            (1, d) | (d, 1) => Ok(d),
            (p, q) if p == q => Ok(p),
            (p, q) => Err(format!("shapes {a:?} and {b:?} do not broadcast ({p} vs {q})")),
        })
        .collect()
}

fn zip_broadcast<T: Copy, U>(a: &ArrayD<T>, b: &ArrayD<T>, f: impl Fn(T, T) -> U) -> Result<ArrayD<U>, String> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    // Same shapes, both in standard order: one loop over the two slices.
    if a.shape() == b.shape()
        && let (Some(x), Some(y)) = (a.as_slice(), b.as_slice())
    {
        let v = x.iter().zip(y).map(|(&p, &q)| f(p, q)).collect();
        return ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| e.to_string());
    }
    let av = a.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    let bv = b.broadcast(IxDyn(&shape)).ok_or("broadcast failed")?;
    // Fixed ranks iterate much faster than dynamic ones in ndarray.
    macro_rules! fixed {
        ($ix:ty) => {{
            let (x, y) = (av.into_dimensionality::<$ix>().expect("rank"), bv.into_dimensionality::<$ix>().expect("rank"));
            Ok(Zip::from(&x).and(&y).map_collect(|&p, &q| f(p, q)).into_dyn())
        }};
    }
    match shape.len() {
        2 => fixed!(ndarray::Ix2),
        3 => fixed!(ndarray::Ix3),
        4 => fixed!(ndarray::Ix4),
        _ => Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y))),
    }
}

/// add, sub, mul, div on f32, or on integers (shape arithmetic; division truncates).
pub fn binary(kind: OpKind, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    match (a, b) {
        (Tensor::F32(x), Tensor::F32(y)) => Ok(Tensor::F32(match kind {
            OpKind::Add => zip_broadcast(x, y, |p, q| p + q)?,
            OpKind::Sub => zip_broadcast(x, y, |p, q| p - q)?,
            OpKind::Mul => zip_broadcast(x, y, |p, q| p * q)?,
            _ => zip_broadcast(x, y, |p, q| p / q)?,
        })),
        (Tensor::I64(x), Tensor::I64(y)) => {
            if kind == OpKind::Div && y.iter().any(|&v| v == 0) {
                return Err("integer division by zero".into());
            }
            Ok(Tensor::I64(zip_broadcast(x, y, |p, q| match kind {
                OpKind::Add => p.wrapping_add(q),
                OpKind::Sub => p.wrapping_sub(q),
                OpKind::Mul => p.wrapping_mul(q),
                _ => p.wrapping_div(q),
            })?))
        }
        (Tensor::I32(_), Tensor::I32(_)) => {
            binary(kind, &a.cast(crate::types::ScalarType::I64), &b.cast(crate::types::ScalarType::I64))
                .map(|t| t.cast(crate::types::ScalarType::I32))
        }
        _ => Err(format!("{kind} on {} and {} is not supported", a.scalar_type(), b.scalar_type())),
    }
}

/// The sigmoid every part of qc uses: `1 / (1 + exp(-x))` in f32.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `max(0, min(1, alpha * x + beta))` in f32.
pub fn hard_sigmoid(x: f32, alpha: f32, beta: f32) -> f32 {
    (alpha * x + beta).clamp(0.0, 1.0)
}

/// `x * max(0, min(1, x / 6 + 0.5))` in f32.
pub fn hard_swish(x: f32) -> f32 {
    x * (x / 6.0 + 0.5).clamp(0.0, 1.0)
}

/// A unary activation on f32.
pub fn unary(kind: OpKind, x: &ArrayD<f32>, attrs: &Attrs) -> ArrayD<f32> {
    match kind {
        OpKind::Relu => x.mapv(|v| v.max(0.0)),
        OpKind::Clip => {
            let (lo, hi) = (attrs.float("min", f32::NEG_INFINITY), attrs.float("max", f32::INFINITY));
            x.mapv(|v| v.max(lo).min(hi))
        }
        OpKind::Sigmoid => x.mapv(sigmoid),
        OpKind::HardSigmoid => {
            let (a, b) = (attrs.float("alpha", 0.2), attrs.float("beta", 0.5));
            x.mapv(|v| hard_sigmoid(v, a, b))
        }
        OpKind::HardSwish => x.mapv(hard_swish),
        _ => unreachable!("not a unary activation: {kind}"),
    }
}

/// Applies a fused `activation` attribute (set by `fuse-activation`), if any.
pub fn fused_activation(mut y: ArrayD<f32>, attrs: &Attrs) -> ArrayD<f32> {
    match attrs.str("activation") {
        Some("relu") => y.mapv_inplace(|v| v.max(0.0)),
        Some("clip") => {
            let (lo, hi) = (attrs.float("clip_min", f32::NEG_INFINITY), attrs.float("clip_max", f32::INFINITY));
            y.mapv_inplace(|v| v.max(lo).min(hi));
        }
        _ => {}
    }
    y
}
