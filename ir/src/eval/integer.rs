//! Ops on quantized operands: the integer kernels, exactly as ARCHITECTURE.md ("What an op computes") defines them.
//!
//! conv2d / gemm / matmul: `acc = bias_q + Σ (x - zp_x)(w - zp_w)` in i32 (computed in i64 and
//! checked), then requantized to the result type ([`crate::requant`]), or, for an f32 result,
//! `f32(acc) · f32(s_x · s_w[c])`. Padding reads `zp_x` (real zero).

use super::elementwise::{broadcast_shape, fused_activation};
use super::nn;
use super::quant::{dequantize, quantize};
use crate::attr::Attrs;
use crate::ops::OpKind;
use crate::requant::{Requant, RequantMode, acc_scale, output_range};
use crate::tensor::Tensor;
use crate::types::{ElemType, QuantParams, ScalarType, TensorType};
use ndarray::{ArrayD, Axis, IxDyn};

fn ints(t: &Tensor) -> ArrayD<i64> {
    match t.cast(ScalarType::I64) {
        Tensor::I64(a) => a,
        _ => unreachable!("cast to i64"),
    }
}

fn quant<'a>(ty: &'a TensorType, what: &str) -> Result<&'a QuantParams, String> {
    ty.elem.quant().ok_or_else(|| format!("{what} must be quantized, got {ty}"))
}

fn per_tensor<'a>(ty: &'a TensorType, what: &str) -> Result<&'a QuantParams, String> {
    let q = quant(ty, what)?;
    if q.axis.is_some() {
        return Err(format!("{what} must be quantized per tensor, got {ty}"));
    }
    Ok(q)
}

/// Scale and zero point of each of `n` channels.
fn channels(q: &QuantParams, n: usize) -> Vec<(f32, i32)> {
    (0..n).map(|c| q.at(c)).collect()
}

/// Stores integers in the result's storage type.
fn store(v: ArrayD<i32>, out: &TensorType) -> Tensor {
    let t = Tensor::I32(v);
    match out.elem.storage() {
        ScalarType::I32 => t,
        s => t.cast(s),
    }
}

/// The output axis of a weight operand, where per-channel parameters must lie.
pub fn weight_output_axis(kind: OpKind, attrs: &Attrs, w_rank: usize) -> usize {
    match kind {
        OpKind::Conv2d => 0,
        OpKind::Gemm if attrs.bool("trans_b", false) => 0,
        _ => w_rank - 1,
    }
}

/// conv2d, gemm or matmul on quantized operands.
pub fn kernel(kind: OpKind, attrs: &Attrs, args: &[&Tensor], tys: &[&TensorType], out: &TensorType) -> Result<Tensor, String> {
    let xq = per_tensor(tys[0], "the input")?;
    let wq = quant(tys[1], "the weight")?;
    let (s_x, zp_x) = xq.at(0);
    let w_rank = args[1].shape().len();
    let w_axis = weight_output_axis(kind, attrs, w_rank);
    if wq.axis.is_some_and(|a| a != w_axis) {
        return Err(format!("per-channel weight parameters lie on axis {}, not the output axis {w_axis}", wq.axis.unwrap_or(0)));
    }
    let n_out = args[1].shape()[w_axis];
    let wch = channels(wq, n_out);
    let x = ints(args[0]).mapv(|v| v - zp_x as i64);
    let mut w = ints(args[1]);
    for (c, mut lane) in w.axis_iter_mut(Axis(w_axis)).enumerate() {
        let z = wch[c].1 as i64;
        lane.mapv_inplace(|v| v - z);
    }
    let scales: Vec<f32> = wch.iter().map(|&(s, _)| acc_scale(s_x, s)).collect();
    let bias = match args.get(2) {
        None => None,
        Some(b) => {
            let bq = quant(tys[2], "the bias")?;
            if bq.storage != ScalarType::I32 || bq.zero_points.iter().any(|&z| z != 0) {
                return Err(format!("the bias must be i32 with zero point 0, got {}", tys[2]));
            }
            for (c, &s) in scales.iter().enumerate() {
                if bq.at(c).0.to_bits() != s.to_bits() {
                    return Err(format!("bias scale {} of channel {c} is not f32(s_x * s_w) = {s}", bq.at(c).0));
                }
            }
            Some(ints(b))
        }
    };
    let (acc, out_axis) = match kind {
        OpKind::Conv2d => (nn::conv2d(&x, &w, bias.as_ref(), attrs)?, 1),
        _ => {
            let (a, b) = if kind == OpKind::Gemm {
                if attrs.float("alpha", 1.0) != 1.0 || attrs.float("beta", 1.0) != 1.0 {
                    return Err("an integer gemm needs alpha = beta = 1".into());
                }
                let a = if attrs.bool("trans_a", false) { x.t().to_owned() } else { x };
                (a, if attrs.bool("trans_b", false) { w.t().to_owned() } else { w })
            } else {
                (x, w)
            };
            let mut y = nn::matmul(&a, &b)?;
            if let Some(bias) = &bias {
                let shape = y.shape().to_vec();
                y = &y + &bias.broadcast(IxDyn(&shape)).ok_or("the bias does not broadcast")?;
            }
            let rank = y.ndim();
            (y, rank - 1)
        }
    };
    if let Some(v) = acc.iter().find(|v| v.unsigned_abs() >= 1 << 31) {
        return Err(format!("an accumulator reaches {v}, outside i32"));
    }
    match &out.elem {
        ElemType::Quant(yq) => {
            if yq.axis.is_some() {
                return Err(format!("the result must be quantized per tensor, got {out}"));
            }
            let (s_y, zp_y) = yq.at(0);
            let (lo, hi) = output_range(yq, attrs);
            let mode = RequantMode::of(attrs)?;
            let rq: Vec<Requant> = scales.iter().map(|&s| Requant::new(mode, s, s_y)).collect::<Result<_, _>>()?;
            let mut y = ArrayD::<i32>::zeros(acc.raw_dim());
            for (c, (mut yl, al)) in y.axis_iter_mut(Axis(out_axis)).zip(acc.axis_iter(Axis(out_axis))).enumerate() {
                ndarray::Zip::from(&mut yl).and(&al).for_each(|o, &a| *o = rq[c].apply(a as i32, zp_y, lo, hi));
            }
            Ok(store(y, out))
        }
        ElemType::Scalar(ScalarType::F32) => {
            let mut y = ArrayD::<f32>::zeros(acc.raw_dim());
            for (c, (mut yl, al)) in y.axis_iter_mut(Axis(out_axis)).zip(acc.axis_iter(Axis(out_axis))).enumerate() {
                ndarray::Zip::from(&mut yl).and(&al).for_each(|o, &a| *o = (a as i32) as f32 * scales[c]);
            }
            Ok(Tensor::F32(fused_activation(y, attrs)))
        }
        e => Err(format!("an integer {kind} produces a quantized or f32 result, not {e}")),
    }
}

/// `y = clamp(rne((s_a(a−z_a) + s_b(b−z_b)) / s_y) + z_y)` in f32, without fused multiply-add; a
/// fused activation narrows the clamp.
pub fn add(attrs: &Attrs, args: &[&Tensor], tys: &[&TensorType], out: &TensorType) -> Result<Tensor, String> {
    let (aq, bq, yq) = (per_tensor(tys[0], "a")?, per_tensor(tys[1], "b")?, per_tensor(out, "the result")?);
    let ((sa, za), (sb, zb), (sy, zy)) = (aq.at(0), bq.at(0), yq.at(0));
    let (lo, hi) = output_range(yq, attrs);
    let (a, b) = (ints(args[0]), ints(args[1]));
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let (av, bv) = (a.broadcast(IxDyn(&shape)).ok_or("broadcast")?, b.broadcast(IxDyn(&shape)).ok_or("broadcast")?);
    let y = ndarray::Zip::from(&av).and(&bv).map_collect(|&p, &q| {
        let real = sa * (p as i32 - za) as f32 + sb * (q as i32 - zb) as f32;
        let v = crate::requant::round_even(real / sy) + zy as f32;
        v.clamp(lo as f32, hi as f32) as i32
    });
    Ok(store(y, out))
}

/// `mul` of two per-tensor quantized operands with numpy broadcasting (ONNX Runtime's QLinearMul):
/// `acc = (a − z_a)(b − z_b)` exactly in i32, `y = clamp(rne(f32(acc) · M) + z_y)` with
/// `M = f32(f32(s_a · s_b) / s_y)`.
pub fn mul(args: &[&Tensor], tys: &[&TensorType], out: &TensorType) -> Result<Tensor, String> {
    let (aq, bq, yq) = (per_tensor(tys[0], "a")?, per_tensor(tys[1], "b")?, per_tensor(out, "the result")?);
    let ((sa, za), (sb, zb), (sy, zy)) = (aq.at(0), bq.at(0), yq.at(0));
    let (lo, hi) = yq.storage.quant_range().expect("quantized");
    let m = mul_multiplier(sa, sb, sy);
    let (a, b) = (ints(args[0]), ints(args[1]));
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let (av, bv) = (a.broadcast(IxDyn(&shape)).ok_or("broadcast")?, b.broadcast(IxDyn(&shape)).ok_or("broadcast")?);
    let y = ndarray::Zip::from(&av)
        .and(&bv)
        .map_collect(|&p, &q| crate::requant::requant_f32(((p - za as i64) * (q - zb as i64)) as i32, m, zy, lo, hi));
    Ok(store(y, out))
}

/// The multiplier of an integer `mul`: `f32(f32(s_a · s_b) / s_y)`, in that order.
pub fn mul_multiplier(sa: f32, sb: f32, sy: f32) -> f32 {
    sa * sb / sy
}

/// Requantizes a sum of `n` values: `rne(f32(sum) · M) + zp_y` with `M = s_x / (s_y · n)`.
fn requant_mean(sum: i64, n: usize, s_x: f32, s_y: f32, zp_y: i32, lo: i32, hi: i32, mode: RequantMode) -> Result<i32, String> {
    if n == 0 {
        return Ok(zp_y.clamp(lo, hi));
    }
    let acc = i32::try_from(sum).map_err(|_| format!("a pooling sum reaches {sum}, outside i32"))?;
    Ok(match mode {
        RequantMode::F32 => crate::requant::requant_f32(acc, s_x / (s_y * n as f32), zp_y, lo, hi),
        RequantMode::Q31 => {
            crate::requant::requant_q31(acc, crate::requant::q31(s_x as f64 / (s_y as f64 * n as f64))?, zp_y, lo, hi)
        }
    })
}

/// Average pooling, global average pooling and reduce_mean on quantized values:
/// `y = requant(Σ(x − zp_x), s_x / (s_y·n))`.
pub fn mean(kind: OpKind, attrs: &Attrs, args: &[&Tensor], tys: &[&TensorType], out: &TensorType) -> Result<Tensor, String> {
    let (xq, yq) = (per_tensor(tys[0], "the input")?, per_tensor(out, "the result")?);
    let ((s_x, zp_x), (s_y, zp_y)) = (xq.at(0), yq.at(0));
    let (lo, hi) = yq.storage.quant_range().expect("quantized");
    let mode = RequantMode::of(attrs)?;
    let x = ints(args[0]).mapv(|v| v - zp_x as i64);
    let y: ArrayD<i32> = if kind == OpKind::AvgPool {
        let (sums, counts) = nn::window_sums(&x, attrs)?;
        let mut y = ArrayD::<i32>::zeros(sums.raw_dim());
        for ((o, &s), &n) in y.iter_mut().zip(sums.iter()).zip(counts.iter()) {
            *o = requant_mean(s, n, s_x, s_y, zp_y, lo, hi, mode)?;
        }
        y
    } else {
        let rank = x.ndim();
        let axes: Vec<usize> = match (kind, attrs.ints("axes")) {
            (OpKind::GlobalAvgPool, _) => (2..rank).collect(),
            (_, Some(a)) if !a.is_empty() => crate::infer::normalize_axes(a, rank)?,
            _ => (0..rank).collect(),
        };
        let keep = kind == OpKind::GlobalAvgPool || attrs.bool("keepdims", true);
        let n: usize = axes.iter().map(|&a| x.shape()[a]).product();
        let mut sums = x;
        let mut sorted = axes.clone();
        sorted.sort_unstable();
        for &a in sorted.iter().rev() {
            sums = sums.sum_axis(Axis(a));
            if keep {
                sums.insert_axis_inplace(Axis(a));
            }
        }
        let mut y = ArrayD::<i32>::zeros(sums.raw_dim());
        for (o, &s) in y.iter_mut().zip(sums.iter()) {
            *o = requant_mean(s, n, s_x, s_y, zp_y, lo, hi, mode)?;
        }
        y
    };
    Ok(store(y, out))
}

/// `y = clamp(rne(f32(q − zp_in) · f32(s_in / s_out)) + zp_out)`: one quantized tensor to other
/// per-tensor parameters.
pub fn requantize(x: &Tensor, ty: &TensorType, out: &TensorType) -> Result<Tensor, String> {
    let (xq, yq) = (per_tensor(ty, "the operand")?, per_tensor(out, "the result")?);
    let ((s_in, z_in), (s_out, z_out)) = (xq.at(0), yq.at(0));
    if xq == yq {
        return Ok(x.clone());
    }
    let (lo, hi) = yq.storage.quant_range().expect("quantized");
    let m = s_in / s_out;
    let y = ints(x).mapv(|q| {
        let v = crate::requant::round_even((q as i32 - z_in) as f32 * m) + z_out as f32;
        v.clamp(lo as f32, hi as f32) as i32
    });
    Ok(store(y, out))
}

/// Concatenation of quantized tensors: a copy when parameters agree, else a per-input requantize.
pub fn concat(args: &[&Tensor], tys: &[&TensorType], out: &TensorType, axis: i64) -> Result<Tensor, String> {
    let parts: Vec<Tensor> = args.iter().zip(tys).map(|(a, t)| requantize(a, t, out)).collect::<Result<_, _>>()?;
    let refs: Vec<&Tensor> = parts.iter().collect();
    super::shape_ops::concat(&refs, axis)
}

/// sigmoid, hard_sigmoid, hard_swish, clip on quantized values: `quantize(f(dequantize(q)))`, which
/// the JIT turns into a 256-entry table built with these same functions.
pub fn lookup(kind: OpKind, attrs: &Attrs, x: &Tensor, ty: &TensorType, out: &TensorType) -> Result<Tensor, String> {
    let real = dequantize(x, ty)?;
    let y = super::elementwise::unary(kind, &real, attrs);
    quantize(&y, out)
}
