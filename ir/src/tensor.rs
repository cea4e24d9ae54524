//! Tensor data: what constants hold and what the evaluator computes with.

use crate::types::{Dim, ScalarType, TensorType};
use half::f16;
use ndarray::{ArrayD, IxDyn};

/// A dense tensor of one of the storable scalar types. Quantized tensors are stored as their
/// integers (`I8`, `U8`, `I32`; `i4` in `I8`); their parameters live in the value's type.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    /// f32 data.
    F32(ArrayD<f32>),
    /// f16 data.
    F16(ArrayD<f16>),
    /// i64 data.
    I64(ArrayD<i64>),
    /// i32 data.
    I32(ArrayD<i32>),
    /// i8 (and i4) data.
    I8(ArrayD<i8>),
    /// u8 data.
    U8(ArrayD<u8>),
    /// bool data.
    Bool(ArrayD<bool>),
}

macro_rules! each_tensor {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            Tensor::F32($a) => $body,
            Tensor::F16($a) => $body,
            Tensor::I64($a) => $body,
            Tensor::I32($a) => $body,
            Tensor::I8($a) => $body,
            Tensor::U8($a) => $body,
            Tensor::Bool($a) => $body,
        }
    };
}

/// Applies a shape-only function (reshape, transpose, slice, broadcast, ...) to any tensor,
/// keeping its type: `map_tensor!(t, a => a.t().to_owned())`.
#[macro_export]
macro_rules! map_tensor {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            $crate::Tensor::F32($a) => $crate::Tensor::F32($body),
            $crate::Tensor::F16($a) => $crate::Tensor::F16($body),
            $crate::Tensor::I64($a) => $crate::Tensor::I64($body),
            $crate::Tensor::I32($a) => $crate::Tensor::I32($body),
            $crate::Tensor::I8($a) => $crate::Tensor::I8($body),
            $crate::Tensor::U8($a) => $crate::Tensor::U8($body),
            $crate::Tensor::Bool($a) => $crate::Tensor::Bool($body),
        }
    };
}
pub(crate) use map_tensor;

impl Tensor {
    /// Rows `start..end` of the leading axis (`None` for a scalar or a range past the end).
    pub fn rows(&self, start: usize, end: usize) -> Option<Tensor> {
        let n = *self.shape().first()?;
        (start <= end && end <= n)
            .then(|| map_tensor!(self, a => a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(start..end)).to_owned()))
    }

    /// `parts` stacked along the leading axis (the inverse of [`Tensor::rows`]): an error when
    /// their types or other dims differ.
    pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor, String> {
        macro_rules! stack {
            ($($v:ident),*) => {
                match parts.first() {
                    None => Err("nothing to stack".to_string()),
                    $(Some(Tensor::$v(_)) => {
                        let views = parts
                            .iter()
                            .map(|p| match p { Tensor::$v(a) => Ok(a.view()), _ => Err("tensors of different types".to_string()) })
                            .collect::<Result<Vec<_>, String>>()?;
                        ndarray::concatenate(ndarray::Axis(0), &views).map(Tensor::$v).map_err(|e| e.to_string())
                    })*
                }
            };
        }
        stack!(F32, F16, I64, I32, I8, U8, Bool)
    }

    /// The scalar type of the stored elements.
    pub fn scalar_type(&self) -> ScalarType {
        match self {
            Tensor::F32(_) => ScalarType::F32,
            Tensor::F16(_) => ScalarType::F16,
            Tensor::I64(_) => ScalarType::I64,
            Tensor::I32(_) => ScalarType::I32,
            Tensor::I8(_) => ScalarType::I8,
            Tensor::U8(_) => ScalarType::U8,
            Tensor::Bool(_) => ScalarType::Bool,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        each_tensor!(self, a => a.shape())
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        each_tensor!(self, a => a.len())
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this tensor's scalar type and shape can hold a value of type `ty`.
    pub fn matches(&self, ty: &TensorType) -> bool {
        let storage = match ty.elem.storage() {
            ScalarType::I4 => ScalarType::I8,
            s => s,
        };
        storage == self.scalar_type()
            && ty.dims.len() == self.shape().len()
            && ty.dims.iter().zip(self.shape()).all(|(d, &n)| match d {
                Dim::Fixed(f) => *f == n as u64,
                Dim::Dynamic => true,
            })
    }

    /// A zero-filled tensor of a storable scalar type (`i4` is stored as `i8`).
    pub fn zeros(scalar: ScalarType, shape: &[usize]) -> Tensor {
        let s = IxDyn(shape);
        match scalar {
            ScalarType::F32 => Tensor::F32(ArrayD::zeros(s)),
            ScalarType::F16 => Tensor::F16(ArrayD::from_elem(s, f16::ZERO)),
            ScalarType::I64 => Tensor::I64(ArrayD::zeros(s)),
            ScalarType::I32 => Tensor::I32(ArrayD::zeros(s)),
            ScalarType::I8 | ScalarType::I4 => Tensor::I8(ArrayD::zeros(s)),
            ScalarType::U8 => Tensor::U8(ArrayD::zeros(s)),
            ScalarType::Bool => Tensor::Bool(ArrayD::from_elem(s, false)),
        }
    }

    /// The f32 array, if this is f32.
    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match self {
            Tensor::F32(a) => Some(a),
            _ => None,
        }
    }

    /// The elements as i64, if this is an integer or bool tensor.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            Tensor::I64(a) => a.iter().copied().collect(),
            Tensor::I32(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::I8(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::U8(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::Bool(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::F32(_) | Tensor::F16(_) => return None,
        })
    }

    /// The elements converted to f64 (for printing and comparisons).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Tensor::F32(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::F16(a) => a.iter().map(|&x| x.to_f64()).collect(),
            Tensor::I64(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::I32(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::I8(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::U8(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::Bool(a) => a.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// Converts to another scalar type the way ONNX `Cast` does (floats to ints truncate toward
    /// zero and saturate).
    pub fn cast(&self, to: ScalarType) -> Tensor {
        // Common casts directly, element by element (the same values as through f64, which holds
        // every one of these sources exactly).
        match (self, to) {
            (Tensor::I32(a), ScalarType::F32) => return Tensor::F32(a.mapv(|x| x as f32)),
            (Tensor::I32(a), ScalarType::I64) => return Tensor::I64(a.mapv(|x| x as i64)),
            (Tensor::U8(a), ScalarType::I64) => return Tensor::I64(a.mapv(|x| x as i64)),
            (Tensor::I8(a), ScalarType::I64) => return Tensor::I64(a.mapv(|x| x as i64)),
            (Tensor::U8(a), ScalarType::I32) => return Tensor::I32(a.mapv(|x| x as i32)),
            (Tensor::I8(a), ScalarType::I32) => return Tensor::I32(a.mapv(|x| x as i32)),
            _ => {}
        }
        let v = self.to_f64_vec();
        let shape = IxDyn(self.shape());
        match to {
            ScalarType::F32 => Tensor::F32(ArrayD::from_shape_vec(shape, v.iter().map(|&x| x as f32).collect()).unwrap()),
            ScalarType::F16 => Tensor::F16(ArrayD::from_shape_vec(shape, v.iter().map(|&x| f16::from_f64(x)).collect()).unwrap()),
            ScalarType::I64 => Tensor::I64(ArrayD::from_shape_vec(shape, v.iter().map(|&x| x as i64).collect()).unwrap()),
            ScalarType::I32 => Tensor::I32(ArrayD::from_shape_vec(shape, v.iter().map(|&x| x as i32).collect()).unwrap()),
            ScalarType::I8 | ScalarType::I4 => {
                Tensor::I8(ArrayD::from_shape_vec(shape, v.iter().map(|&x| x as i8).collect()).unwrap())
            }
            ScalarType::U8 => Tensor::U8(ArrayD::from_shape_vec(shape, v.iter().map(|&x| x as u8).collect()).unwrap()),
            ScalarType::Bool => Tensor::Bool(ArrayD::from_shape_vec(shape, v.iter().map(|&x| x != 0.0).collect()).unwrap()),
        }
    }

    /// An i64 vector tensor.
    pub fn from_i64s(v: Vec<i64>) -> Tensor {
        let n = v.len();
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n]), v).expect("1-d shape matches"))
    }
}
