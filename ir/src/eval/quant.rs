//! Quantize and dequantize, exactly as DESIGN.md defines them.

use crate::tensor::Tensor;
use crate::types::{QuantParams, ScalarType, TensorType};
use ndarray::{ArrayD, Axis};

/// `clamp(round_half_even(r / scale) + zp, qmin, qmax)`: divide by the scale, never multiply by
/// its reciprocal.
pub fn quantize_value(r: f32, scale: f32, zp: i32, lo: i32, hi: i32) -> i32 {
    let q = (r / scale).round_ties_even() + zp as f32;
    // Inputs are checked for NaN before evaluation; should one arise inside, it maps to zp.
    if q.is_nan() { zp } else { q.clamp(lo as f32, hi as f32) as i32 }
}

/// `scale * (q - zp)` in f32.
pub fn dequantize_value(q: i32, scale: f32, zp: i32) -> f32 {
    scale * (q - zp) as f32
}

fn params_along(q: &QuantParams, shape: &[usize]) -> Result<(usize, usize), String> {
    match q.axis {
        None => Ok((0, 1)),
        Some(a) if a < shape.len() && shape[a] == q.scales.len() => Ok((a, shape[a])),
        Some(a) => Err(format!("quantization axis {a} does not fit shape {shape:?}")),
    }
}

/// Quantizes an f32 tensor to the quantized element type of `out`.
pub fn quantize(x: &ArrayD<f32>, out: &TensorType) -> Result<Tensor, String> {
    let q = out.elem.quant().ok_or("quantize needs a quantized result type")?;
    let (lo, hi) = q.storage.quant_range().ok_or("bad storage")?;
    let (axis, n) = params_along(q, x.shape())?;
    let mut v = ArrayD::<i32>::zeros(x.raw_dim());
    if q.axis.is_none() {
        let (s, z) = q.at(0);
        ndarray::Zip::from(&mut v).and(x).for_each(|o, &r| *o = quantize_value(r, s, z, lo, hi));
    } else {
        for c in 0..n {
            let (s, z) = q.at(c);
            ndarray::Zip::from(v.index_axis_mut(Axis(axis), c))
                .and(x.index_axis(Axis(axis), c))
                .for_each(|o, &r| *o = quantize_value(r, s, z, lo, hi));
        }
    }
    let t = Tensor::I32(v);
    Ok(match q.storage {
        ScalarType::I32 => t,
        s => t.cast(s),
    })
}

/// Dequantizes a tensor whose type `ty` is quantized.
pub fn dequantize(x: &Tensor, ty: &TensorType) -> Result<ArrayD<f32>, String> {
    let q = ty.elem.quant().ok_or("dequantize needs a quantized operand")?;
    let ints = match x.cast(ScalarType::I32) {
        Tensor::I32(a) => a,
        _ => unreachable!("cast to i32"),
    };
    let (axis, n) = params_along(q, ints.shape())?;
    let mut out = ArrayD::<f32>::zeros(ints.raw_dim());
    if q.axis.is_none() {
        let (s, z) = q.at(0);
        ndarray::Zip::from(&mut out).and(&ints).for_each(|o, &v| *o = dequantize_value(v, s, z));
    } else {
        for c in 0..n {
            let (s, z) = q.at(c);
            ndarray::Zip::from(out.index_axis_mut(Axis(axis), c))
                .and(ints.index_axis(Axis(axis), c))
                .for_each(|o, &v| *o = dequantize_value(v, s, z));
        }
    }
    Ok(out)
}

/// relu on quantized values: `max(q, zp)`.
pub fn relu_q(x: &Tensor, zp: i32) -> Tensor {
    let st = x.scalar_type();
    match x.cast(ScalarType::I32) {
        Tensor::I32(a) => Tensor::I32(a.mapv(|v| v.max(zp))).cast(st),
        _ => unreachable!("cast to i32"),
    }
}
