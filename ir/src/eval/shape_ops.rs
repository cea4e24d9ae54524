//! Ops that move data without arithmetic, for every element type, and reductions.

use crate::attr::Attrs;
use crate::infer::{normalize_axes, normalize_axis, slice_range};
use crate::ops::OpKind;
use crate::tensor::{Tensor, map_tensor};
use crate::types::TensorType;
use ndarray::{ArrayD, Axis, IxDyn, Slice};

/// Reshapes (row-major) to `dims`.
pub fn reshape(x: &Tensor, dims: &[usize]) -> Result<Tensor, String> {
    let n: usize = dims.iter().product();
    if n != x.len() {
        return Err(format!("cannot reshape {} elements to {dims:?}", x.len()));
    }
    Ok(map_tensor!(x, a => a.as_standard_layout().to_owned().into_shape_with_order(IxDyn(dims)).expect("count checked")))
}

/// Resolves an ONNX reshape spec (0 copies a dim unless `allowzero`, -1 is inferred).
pub fn resolve_reshape(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &s) in spec.iter().enumerate() {
        out.push(match s {
            -1 => {
                infer_at = Some(i);
                1
            }
            0 if !allowzero => *input.get(i).ok_or("reshape copies a dim the input lacks")?,
            s if s < 0 => return Err(format!("reshape size {s} is negative")),
            s => s as usize,
        });
    }
    if let Some(i) = infer_at {
        let known: usize = out.iter().product();
        if known == 0 || total % known != 0 {
            return Err(format!("cannot reshape {input:?} to {spec:?}"));
        }
        out[i] = total / known;
    }
    Ok(out)
}

/// Permutes dims.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    map_tensor!(x, a => a.view().permuted_axes(IxDyn(perm)).as_standard_layout().to_owned())
}

/// Concatenates along `axis`.
pub fn concat(args: &[&Tensor], axis: i64) -> Result<Tensor, String> {
    if args[0].shape().is_empty() {
        return Err("concat needs operands of rank 1 or more, got scalars".into());
    }
    let axis = Axis(normalize_axis(axis, args[0].shape().len())?);
    macro_rules! cat {
        ($variant:ident) => {{
            let views: Result<Vec<_>, String> = args
                .iter()
                .map(|t| match t {
                    Tensor::$variant(a) => Ok(a.view()),
                    _ => Err("concat operands differ in element type".to_string()),
                })
                .collect();
            Tensor::$variant(ndarray::concatenate(axis, &views?).map_err(|e| e.to_string())?)
        }};
    }
    Ok(match args[0] {
        Tensor::F32(_) => cat!(F32),
        Tensor::F16(_) => cat!(F16),
        Tensor::I64(_) => cat!(I64),
        Tensor::I32(_) => cat!(I32),
        Tensor::I8(_) => cat!(I8),
        Tensor::U8(_) => cat!(U8),
        Tensor::Bool(_) => cat!(Bool),
    })
}

/// ONNX Slice.
pub fn slice(x: &Tensor, attrs: &Attrs) -> Result<Tensor, String> {
    let rank = x.shape().len();
    let starts = attrs.ints("starts").unwrap_or(&[]);
    let ends = attrs.ints("ends").unwrap_or(&[]);
    let axes = match attrs.ints("axes") {
        Some(a) => normalize_axes(a, rank)?,
        None => (0..starts.len()).collect(),
    };
    let steps = attrs.ints("steps").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; starts.len()]);
    let mut out = x.clone();
    for (k, &axis) in axes.iter().enumerate() {
        let d = x.shape()[axis] as i64;
        let (first, count) = slice_range(d, starts[k], ends[k], steps[k]);
        let step = steps[k] as isize;
        let sl = if count == 0 {
            Slice::new(0, Some(0), 1)
        } else if step > 0 {
            Slice::new(first as isize, Some((first + (count - 1) * steps[k] + 1) as isize), step)
        } else {
            let last = first + (count - 1) * steps[k];
            Slice::new(last as isize, Some(first as isize + 1), step)
        };
        out = map_tensor!(&out, a => a.slice_axis(Axis(axis), sl).to_owned());
    }
    Ok(out)
}

/// ONNX Pad with `[begin..., end...]`; constant padding of a quantized tensor uses its zero point.
pub fn pad(x: &Tensor, attrs: &Attrs, ty: &TensorType) -> Result<Tensor, String> {
    let rank = x.shape().len();
    let pads = attrs.ints("pads").ok_or("pad needs pads")?;
    let mode = attrs.str("mode").unwrap_or("constant");
    let value = match ty.elem.quant() {
        Some(q) => q.zero_points[0] as f32,
        None => attrs.float("value", 0.0),
    };
    let shape: Vec<usize> = x.shape().iter().enumerate().map(|(i, &d)| d + (pads[i] + pads[i + rank]) as usize).collect();
    let src = |i: usize, o: usize| -> Option<usize> {
        let (b, d) = (pads[i] as isize, x.shape()[i] as isize);
        let p = o as isize - b;
        if (0..d).contains(&p) {
            return Some(p as usize);
        }
        match mode {
            "edge" => Some(p.clamp(0, d - 1) as usize),
            "reflect" if d > 1 => {
                let period = 2 * (d - 1);
                let m = p.rem_euclid(period);
                Some(if m < d { m } else { period - m } as usize)
            }
            "reflect" => Some(0),
            _ => None,
        }
    };
    macro_rules! fill {
        ($a:expr, $v:expr) => {{
            let a = $a;
            let mut out = ArrayD::from_elem(IxDyn(&shape), $v);
            for (idx, o) in out.indexed_iter_mut() {
                let s: Option<Vec<usize>> = (0..rank).map(|i| src(i, idx[i])).collect();
                if let Some(s) = s {
                    *o = a[IxDyn(&s)];
                }
            }
            out
        }};
    }
    Ok(match x {
        Tensor::F32(a) => Tensor::F32(fill!(a, value)),
        Tensor::I64(a) => Tensor::I64(fill!(a, value as i64)),
        Tensor::I32(a) => Tensor::I32(fill!(a, value as i32)),
        Tensor::I8(a) => Tensor::I8(fill!(a, value as i8)),
        Tensor::U8(a) => Tensor::U8(fill!(a, value as u8)),
        other => return Err(format!("pad on {} is not supported", other.scalar_type())),
    })
}

/// ONNX Gather along `axis`.
pub fn gather(x: &Tensor, indices: &Tensor, axis: i64) -> Result<Tensor, String> {
    if x.shape().is_empty() {
        return Err("gather needs an operand of rank 1 or more, got a scalar".into());
    }
    let axis = normalize_axis(axis, x.shape().len())?;
    let d = x.shape()[axis] as i64;
    let idx = indices.to_i64_vec().ok_or("gather indices must be integers")?;
    let mut norm = Vec::with_capacity(idx.len());
    for i in idx {
        if i < -d || i >= d {
            return Err(format!("gather index {i} is out of range for size {d}"));
        }
        norm.push(if i < 0 { (i + d) as usize } else { i as usize });
    }
    let mut shape = x.shape()[..axis].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&x.shape()[axis + 1..]);
    let taken = map_tensor!(x, a => a.select(Axis(axis), &norm));
    reshape(&taken, &shape)
}

/// Mean over `axes`: each result is the sum of its inputs in index order, one add at a time
/// from 0, divided by their count.
pub fn reduce_mean(x: &ArrayD<f32>, axes: &[usize], keepdims: bool) -> ArrayD<f32> {
    reduce(OpKind::ReduceMean, x, axes, keepdims)
}

/// `reduce_mean`, `reduce_sum`, `reduce_max` or `reduce_min` over `axes`: each result folds its
/// elements in index order (a mean is that sum divided by the count; an empty mean is NaN, an
/// empty maximum −∞).
pub fn reduce(kind: OpKind, x: &ArrayD<f32>, axes: &[usize], keepdims: bool) -> ArrayD<f32> {
    let rank = x.ndim();
    let kept: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
    let perm: Vec<usize> = kept.iter().copied().chain((0..rank).filter(|a| axes.contains(a))).collect();
    let moved = x.view().permuted_axes(IxDyn(&perm));
    let moved = moved.as_standard_layout();
    let count: usize = (0..rank).filter(|a| axes.contains(a)).map(|a| x.shape()[a]).product();
    let outer: usize = kept.iter().map(|&a| x.shape()[a]).product();
    let fold = |c: &[f32]| match kind {
        OpKind::ReduceMax => c.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
        OpKind::ReduceMin => c.iter().fold(f32::INFINITY, |a, &b| a.min(b)),
        _ => c.iter().fold(0.0f32, |a, &b| a + b),
    };
    let values: Vec<f32> = match (count, kind) {
        (0, OpKind::ReduceMean) => vec![f32::NAN; outer],
        (0, _) => vec![fold(&[]); outer],
        (_, OpKind::ReduceMean) => {
            let n = count as f32;
            moved.as_slice().expect("standard layout").chunks_exact(count).map(|c| fold(c) / n).collect()
        }
        _ => moved.as_slice().expect("standard layout").chunks_exact(count).map(fold).collect(),
    };
    let shape: Vec<usize> =
        (0..rank).filter_map(|a| if axes.contains(&a) { keepdims.then_some(1) } else { Some(x.shape()[a]) }).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), values).expect("sized")
}

/// The result dims of squeeze / unsqueeze for a concrete input shape.
pub fn squeeze_dims(kind: OpKind, shape: &[usize], attrs: &Attrs) -> Result<Vec<usize>, String> {
    if kind == OpKind::Squeeze {
        let axes = match attrs.ints("axes") {
            Some(a) => normalize_axes(a, shape.len())?,
            None => (0..shape.len()).filter(|&i| shape[i] == 1).collect(),
        };
        Ok((0..shape.len()).filter(|i| !axes.contains(i)).map(|i| shape[i]).collect())
    } else {
        let axes_attr = attrs.ints("axes").unwrap_or(&[]);
        let rank = shape.len() + axes_attr.len();
        let axes = normalize_axes(axes_attr, rank)?;
        let mut rest = shape.iter();
        Ok((0..rank).map(|i| if axes.contains(&i) { 1 } else { *rest.next().expect("counted") }).collect())
    }
}
