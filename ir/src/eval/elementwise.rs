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

pub(crate) fn zip_broadcast<T: Copy, U>(a: &ArrayD<T>, b: &ArrayD<T>, f: impl Fn(T, T) -> U) -> Result<ArrayD<U>, String> {
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

/// The exponential every part of qc uses, defined by its operations so that a vectorized loop
/// computes the same bits: `x` is clamped to [−87, 88] (the result stays a normal number),
/// `n = round_half_even(x·log2 e)`, `r = x − n·c₁ − n·c₂` (c₁ = 0.693359375 has 9 bits, so
/// `n·c₁` is exact), then Cephes' degree-5 polynomial `1 + r + r²·p(r)` by Horner's rule (a
/// multiply, then an add, never a fused multiply-add), scaled by 2ⁿ through the exponent bits.
/// Within 2 ulp of the true value; NaN gives NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
    let c = x.max(-87.0).min(88.0);
    let n = (c * LOG2E).round_ties_even();
    let r = c - n * C1 - n * C2;
    let mut p = P[0];
    for &q in &P[1..] {
        p = p * r + q;
    }
    let y = p * (r * r) + r + 1.0;
    // n is an integer in [−126, 127], so n + 127 + 2²³ is exact and its low mantissa bits are
    // n + 127: shifted into the exponent field, that is 2ⁿ (a normal number). No float-to-int
    // conversion, so a vectorized loop keeps it in vectors.
    let scale = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    if x.is_nan() { x } else { y * scale }
}

/// The sigmoid every part of qc uses: `1 / (1 + exp(-x))` in f32, with [`exp`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `max(0, min(1, alpha * x + beta))` in f32.
#[inline(always)]
pub fn hard_sigmoid(x: f32, alpha: f32, beta: f32) -> f32 {
    (alpha * x + beta).clamp(0.0, 1.0)
}

/// `x * max(0, min(1, x / 6 + 0.5))` in f32.
#[inline(always)]
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

#[cfg(test)]
mod tests {
    use super::exp;

    /// Distance in representable f32s.
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |v: f32| {
            let b = v.to_bits() as i32;
            if b < 0 { i32::MIN - b } else { b }
        };
        key(a).abs_diff(key(b))
    }

    #[test]
    fn exp_is_within_two_ulp_where_it_is_normal() {
        let mut worst = (0, 0.0f32);
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp() as f32;
            let d = ulps(exp(x), want);
            if d > worst.0 {
                worst = (d, x);
            }
            x += 0.000_61;
        }
        assert!(worst.0 <= 2, "exp({}) is {} ulp off", worst.1, worst.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }
}
