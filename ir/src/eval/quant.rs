//! Quantize and dequantize, exactly as ARCHITECTURE.md ("What an op computes") defines them.

use crate::tensor::Tensor;
use crate::types::{QuantParams, ScalarType, TensorType};
use ndarray::{ArrayD, Axis};

/// `clamp(round_half_even(r / scale) + zp, qmin, qmax)`: divide by the scale, never multiply by
/// its reciprocal.
pub fn quantize_value(r: f32, scale: f32, zp: i32, lo: i32, hi: i32) -> i32 {
    let q = crate::requant::round_even(r / scale) + zp as f32;
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

/// ONNX DynamicQuantizeLinear as ARCHITECTURE.md defines it: u8, the range widened to include 0,
/// `s = (max - min) / 255` (1 when max = min), `zp = rne(clamp(-min / s, 0, 255))`.
/// Returns (data, scale, zero point).
pub fn dynamic_quantize(x: &ArrayD<f32>) -> (Tensor, Tensor, Tensor) {
    // min and max ignore NaN and are order-free otherwise: fold the memory in place.
    let (lo, hi) = match x.as_slice_memory_order() {
        Some(v) => v.iter().fold((0f32, 0f32), |(l, h), &b| (l.min(b), h.max(b))),
        None => x.iter().fold((0f32, 0f32), |(l, h), &b| (l.min(b), h.max(b))),
    };
    let (s, zp) = dynamic_params(lo, hi);
    let q = x.mapv(|v| quantize_value(v, s, zp, 0, 255) as u8);
    let scalar = ndarray::IxDyn(&[]);
    (Tensor::U8(q), Tensor::F32(ArrayD::from_elem(scalar.clone(), s)), Tensor::U8(ArrayD::from_elem(scalar, zp as u8)))
}

/// The scale and zero point [`dynamic_quantize`] picks for values in `[lo, hi]` (`lo ≤ 0 ≤ hi`).
pub fn dynamic_params(lo: f32, hi: f32) -> (f32, i32) {
    let s = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
    let zp = (-lo / s).clamp(0.0, 255.0).round_ties_even() as i32;
    (s, zp)
}

/// ONNX MatMulInteger: `(a - a_zp)(b - b_zp)` exactly, in i32. `a_zp` is a scalar or one per row
/// of `a`; `b_zp` a scalar or one per column of `b`.
pub fn matmul_integer(args: &[&Tensor]) -> Result<Tensor, String> {
    let wide = |t: &Tensor| match t.cast(ScalarType::I64) {
        Tensor::I64(a) => a,
        _ => unreachable!("cast to i64"),
    };
    let (mut a, mut b) = (wide(args[0]), wide(args[1]));
    if let Some(z) = args.get(2) {
        let zs: Vec<i64> = wide(z).iter().copied().collect();
        let (last, m) = (a.ndim() - 1, if a.ndim() >= 2 { a.shape()[a.ndim() - 2] } else { 1 });
        if zs.len() != 1 && zs.len() != m {
            return Err(format!("a's zero point has {} values for {m} rows", zs.len()));
        }
        for (i, mut row) in a.lanes_mut(Axis(last)).into_iter().enumerate() {
            let zi = if zs.len() == 1 { zs[0] } else { zs[i % m] };
            row.mapv_inplace(|v| v - zi);
        }
    }
    if let Some(z) = args.get(3) {
        let zs: Vec<i64> = wide(z).iter().copied().collect();
        let last = b.ndim() - 1;
        if zs.len() != 1 && zs.len() != b.shape()[last] {
            return Err(format!("b's zero point has {} values for {} columns", zs.len(), b.shape()[last]));
        }
        for (j, mut col) in b.axis_iter_mut(Axis(last)).enumerate() {
            let zj = if zs.len() == 1 { zs[0] } else { zs[j] };
            col.mapv_inplace(|v| v - zj);
        }
    }
    let y = super::nn::matmul(&a, &b)?;
    Ok(Tensor::I32(y.mapv(|v| v as i32)))
}

/// ONNX ConvInteger: `(x - x_zp) * (w - w_zp)` exactly, in i32; `x_zp` is a scalar, `w_zp` a
/// scalar or one per output channel. Padding reads `x_zp` (zero after the subtraction).
pub fn conv_integer(args: &[&Tensor], attrs: &crate::attr::Attrs) -> Result<Tensor, String> {
    let wide = |t: &Tensor| match t.cast(ScalarType::I64) {
        Tensor::I64(a) => a,
        _ => unreachable!("cast to i64"),
    };
    let mut x = wide(args[0]);
    let mut w = wide(args[1]);
    if let Some(z) = args.get(2) {
        let zs: Vec<i64> = wide(z).iter().copied().collect();
        if zs.len() != 1 {
            return Err(format!("x's zero point must be a scalar, got {} values", zs.len()));
        }
        x.mapv_inplace(|v| v - zs[0]);
    }
    if let Some(z) = args.get(3) {
        let zs: Vec<i64> = wide(z).iter().copied().collect();
        let o = w.shape()[0];
        if zs.len() != 1 && zs.len() != o {
            return Err(format!("w's zero point has {} values for {o} output channels", zs.len()));
        }
        for (c, mut lane) in w.axis_iter_mut(Axis(0)).enumerate() {
            let zc = if zs.len() == 1 { zs[0] } else { zs[c] };
            lane.mapv_inplace(|v| v - zc);
        }
    }
    let y = super::nn::conv2d(&x, &w, None, attrs)?;
    if let Some(v) = y.iter().find(|v| v.unsigned_abs() >= 1 << 31) {
        return Err(format!("an accumulator reaches {v}, outside i32"));
    }
    Ok(Tensor::I32(y.mapv(|v| v as i32)))
}
