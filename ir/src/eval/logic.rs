//! Comparisons, logic on bools, `where` and `expand`: the arithmetic of attention masks.

use super::elementwise::{broadcast_shape, zip_broadcast};
use crate::ops::OpKind;
use crate::tensor::Tensor;
use ndarray::{ArrayD, IxDyn, Zip};

fn compare<T: Copy + PartialOrd>(kind: OpKind, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<bool>, String> {
    zip_broadcast(a, b, |p, q| match kind {
        OpKind::Equal => p == q,
        OpKind::Less => p < q,
        OpKind::LessOrEqual => p <= q,
        OpKind::Greater => p > q,
        _ => p >= q,
    })
}

/// `equal`, `less`, `less_or_equal`, `greater`, `greater_or_equal` of two tensors of one type.
pub fn comparison(kind: OpKind, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    Ok(Tensor::Bool(match (a, b) {
        (Tensor::F32(x), Tensor::F32(y)) => compare(kind, x, y)?,
        (Tensor::I64(x), Tensor::I64(y)) => compare(kind, x, y)?,
        (Tensor::I32(x), Tensor::I32(y)) => compare(kind, x, y)?,
        (Tensor::I8(x), Tensor::I8(y)) => compare(kind, x, y)?,
        (Tensor::U8(x), Tensor::U8(y)) => compare(kind, x, y)?,
        (Tensor::Bool(x), Tensor::Bool(y)) => compare(kind, x, y)?,
        _ => return Err(format!("{kind} of {} and {}", a.scalar_type(), b.scalar_type())),
    }))
}

/// `and`, `or` of two bool tensors; `not` of one.
pub fn logical(kind: OpKind, args: &[&Tensor]) -> Result<Tensor, String> {
    let bools = |t: &Tensor| match t {
        Tensor::Bool(a) => Ok(a.clone()),
        other => Err(format!("{kind} needs bools, got {}", other.scalar_type())),
    };
    let a = bools(args[0])?;
    Ok(Tensor::Bool(match kind {
        OpKind::Not => a.mapv(|v| !v),
        OpKind::And => zip_broadcast(&a, &bools(args[1])?, |p, q| p & q)?,
        _ => zip_broadcast(&a, &bools(args[1])?, |p, q| p | q)?,
    }))
}

fn choose<T: Copy>(c: &ArrayD<bool>, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>, String> {
    let shape = broadcast_shape(&broadcast_shape(c.shape(), a.shape())?, b.shape())?;
    let to = IxDyn(&shape);
    let (c, a, b) = (c.broadcast(to.clone()), a.broadcast(to.clone()), b.broadcast(to));
    let (Some(c), Some(a), Some(b)) = (c, a, b) else { return Err("where's operands do not broadcast".into()) };
    Ok(Zip::from(&c).and(&a).and(&b).map_collect(|&c, &p, &q| if c { p } else { q }))
}

/// `where(cond, a, b)`.
pub fn where_(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let Tensor::Bool(c) = cond else { return Err(format!("where's condition is {}, not bool", cond.scalar_type())) };
    Ok(match (a, b) {
        (Tensor::F32(x), Tensor::F32(y)) => Tensor::F32(choose(c, x, y)?),
        (Tensor::F16(x), Tensor::F16(y)) => Tensor::F16(choose(c, x, y)?),
        (Tensor::I64(x), Tensor::I64(y)) => Tensor::I64(choose(c, x, y)?),
        (Tensor::I32(x), Tensor::I32(y)) => Tensor::I32(choose(c, x, y)?),
        (Tensor::I8(x), Tensor::I8(y)) => Tensor::I8(choose(c, x, y)?),
        (Tensor::U8(x), Tensor::U8(y)) => Tensor::U8(choose(c, x, y)?),
        (Tensor::Bool(x), Tensor::Bool(y)) => Tensor::Bool(choose(c, x, y)?),
        _ => return Err(format!("where between {} and {}", a.scalar_type(), b.scalar_type())),
    })
}

/// `expand`: `x` broadcast with `shape` (either may be the larger in a dim).
pub fn expand(x: &Tensor, shape: &[i64]) -> Result<Tensor, String> {
    let dims: Vec<usize> =
        shape.iter().map(|&d| usize::try_from(d).map_err(|_| format!("expand shape holds {d}"))).collect::<Result<_, _>>()?;
    let to = broadcast_shape(x.shape(), &dims)?;
    let mut failed = false;
    let out = crate::tensor::map_tensor!(x, a => match a.broadcast(IxDyn(&to)) {
        Some(v) => v.to_owned(),
        None => {
            failed = true;
            ArrayD::from_elem(IxDyn(&[0]), Default::default())
        }
    });
    if failed { Err(format!("cannot expand {:?} to {to:?}", x.shape())) } else { Ok(out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i64s(v: &[i64], shape: &[usize]) -> Tensor {
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }

    fn bools(v: &[bool]) -> Tensor {
        Tensor::Bool(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap())
    }

    #[test]
    fn mask_arithmetic_follows_onnx() {
        let x = i64s(&[1, 2, 3], &[3, 1]);
        assert_eq!(expand(&x, &[2, 1, 4]).unwrap().shape(), [2, 3, 4]);
        assert!(expand(&x, &[2, 2]).is_err());
        let c = bools(&[true, false]);
        assert_eq!(where_(&c, &i64s(&[1, 2], &[2]), &i64s(&[9], &[1])).unwrap(), i64s(&[1, 9], &[2]));
        assert!(where_(&i64s(&[1], &[1]), &c, &c).is_err());
        assert_eq!(comparison(OpKind::Equal, &i64s(&[1, 2], &[2]), &i64s(&[2], &[])).unwrap(), bools(&[false, true]));
        assert_eq!(comparison(OpKind::GreaterOrEqual, &i64s(&[1, 2], &[2]), &i64s(&[2], &[])).unwrap(), bools(&[false, true]));
        assert_eq!(comparison(OpKind::Less, &i64s(&[1, 2], &[2]), &i64s(&[2], &[])).unwrap(), bools(&[true, false]));
        assert_eq!(logical(OpKind::And, &[&c, &bools(&[true])]).unwrap(), c);
        assert_eq!(logical(OpKind::Or, &[&c, &bools(&[true])]).unwrap(), bools(&[true, true]));
        assert_eq!(logical(OpKind::Not, &[&c]).unwrap(), bools(&[false, true]));
    }
}
