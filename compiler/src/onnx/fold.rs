//! ONNX ops that exporters use to build constants from shapes — a detector's anchor grid and
//! strides, a mask's shape — computed at import when their inputs are constant (once the input
//! shape is fixed, `Shape` is): `ConstantOfShape`, `Range`, `Tile`.
//! Each follows its ONNX definition; nothing of them reaches the QIR but their values.

use ndarray::{ArrayD, IxDyn};
use qc_ir::Tensor;

fn dims(shape: &[i64], what: &str) -> Result<Vec<usize>, String> {
    shape.iter().map(|&d| usize::try_from(d).map_err(|_| format!("{what} holds {d}"))).collect()
}

/// `ConstantOfShape`: a tensor of `shape` filled with `value`'s one element (f32 0 without it).
pub fn constant_of_shape(shape: &[i64], value: Option<&Tensor>) -> Result<Tensor, String> {
    let to = dims(shape, "ConstantOfShape's shape")?;
    let value = value.cloned().unwrap_or_else(|| Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), 0.0)));
    if value.len() != 1 {
        return Err(format!("ConstantOfShape's value holds {} elements, not 1", value.len()));
    }
    Ok(qc_ir::map_tensor!(&value, a => ArrayD::from_elem(IxDyn(&to), a.iter().next().expect("one element").clone())))
}

/// `Range`: `start, start + delta, ...` below `limit` (above it for a negative delta), in the
/// inputs' type: `max(ceil((limit − start) / delta), 0)` elements.
pub fn range(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<Tensor, String> {
    let scalar = |t: &Tensor, what: &str| match t.to_f64_vec().as_slice() {
        [v] => Ok(*v),
        _ => Err(format!("Range's {what} must be a scalar")),
    };
    let (s, l, d) = (scalar(start, "start")?, scalar(limit, "limit")?, scalar(delta, "delta")?);
    if d == 0.0 {
        return Err("Range's delta is 0".into());
    }
    let n = ((l - s) / d).ceil().max(0.0);
    if n > 1e8 {
        return Err(format!("Range would make {n} elements"));
    }
    let n = n as usize;
    Ok(match start {
        Tensor::F32(_) => {
            let (s, d) = (s as f32, d as f32);
            Tensor::F32(ArrayD::from_shape_fn(IxDyn(&[n]), |i| s + i[0] as f32 * d))
        }
        Tensor::I64(_) => {
            let (s, d) = (s as i64, d as i64);
            Tensor::I64(ArrayD::from_shape_fn(IxDyn(&[n]), |i| s + i[0] as i64 * d))
        }
        Tensor::I32(_) => {
            let (s, d) = (s as i32, d as i32);
            Tensor::I32(ArrayD::from_shape_fn(IxDyn(&[n]), |i| s + i[0] as i32 * d))
        }
        t => return Err(format!("Range of {}", t.scalar_type())),
    })
}

/// `Tile`: `x` repeated `repeats[i]` times along each dim `i`.
pub fn tile(x: &Tensor, repeats: &[i64]) -> Result<Tensor, String> {
    let reps = dims(repeats, "Tile's repeats")?;
    if reps.len() != x.shape().len() {
        return Err(format!("Tile's repeats has {} values for a rank-{} input", reps.len(), x.shape().len()));
    }
    let to: Vec<usize> = x.shape().iter().zip(&reps).map(|(d, r)| d * r).collect();
    let src = x.shape().to_vec();
    Ok(qc_ir::map_tensor!(x, a => ArrayD::from_shape_fn(IxDyn(&to), |i| {
        let at: Vec<usize> = (0..src.len()).map(|k| i[k] % src[k]).collect();
        a[IxDyn(&at)].clone()
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i64s(v: &[i64], shape: &[usize]) -> Tensor {
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }

    #[test]
    fn shape_ops_follow_onnx() {
        assert_eq!(range(&i64s(&[1], &[]), &i64s(&[10], &[]), &i64s(&[3], &[])).unwrap(), i64s(&[1, 4, 7], &[3]));
        let f = |v: f32| Tensor::F32(ArrayD::from_elem(IxDyn(&[]), v));
        assert_eq!(range(&f(0.5), &f(2.0), &f(0.5)).unwrap().to_f64_vec(), vec![0.5, 1.0, 1.5]);
        assert_eq!(range(&f(3.0), &f(1.0), &f(1.0)).unwrap().len(), 0);
        assert_eq!(tile(&i64s(&[1, 2], &[1, 2]), &[2, 2]).unwrap(), i64s(&[1, 2, 1, 2, 1, 2, 1, 2], &[2, 4]));
        assert_eq!(constant_of_shape(&[2, 3], Some(&i64s(&[7], &[1]))).unwrap(), i64s(&[7; 6], &[2, 3]));
    }
}
