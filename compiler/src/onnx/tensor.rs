//! `TensorProto` ↔ qc tensors: raw little-endian data or the typed repeated fields.

use super::proto::{TensorProto, data_type};
use ndarray::{ArrayD, IxDyn};
use qc_ir::{ScalarType, Tensor};

/// The qc scalar type of an ONNX data type, if qc has one (f64 becomes f32).
pub fn scalar_type(dt: i32) -> Option<ScalarType> {
    Some(match dt {
        data_type::FLOAT | data_type::DOUBLE => ScalarType::F32,
        data_type::UINT8 => ScalarType::U8,
        data_type::INT8 => ScalarType::I8,
        data_type::INT32 => ScalarType::I32,
        data_type::INT64 => ScalarType::I64,
        data_type::BOOL => ScalarType::Bool,
        data_type::FLOAT16 => ScalarType::F16,
        _ => return None,
    })
}

/// The ONNX data type of a qc tensor.
pub fn data_type_of(t: &Tensor) -> i32 {
    match t {
        Tensor::F32(_) => data_type::FLOAT,
        Tensor::F16(_) => data_type::FLOAT16,
        Tensor::I64(_) => data_type::INT64,
        Tensor::I32(_) => data_type::INT32,
        Tensor::I8(_) => data_type::INT8,
        Tensor::U8(_) => data_type::UINT8,
        Tensor::Bool(_) => data_type::BOOL,
    }
}

/// Decodes a tensor, checking that its data matches its declared size.
pub fn decode(t: &TensorProto) -> Result<Tensor, String> {
    let what = if t.name.is_empty() { "a constant tensor".to_string() } else { format!("tensor \"{}\"", t.name) };
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(format!(
            "{what} keeps its data in an external file, which qc does not read; re-export with the weights inside the model"
        ));
    }
    if t.dims.iter().any(|&d| d < 0) {
        return Err(format!("{what} has a negative dimension in {:?}", t.dims));
    }
    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).filter(|&n| n <= 1 << 36);
    // A zero dim makes the tensor empty, but the other dims must still describe a possible shape.
    let nonzero = shape.iter().filter(|&&d| d > 0).try_fold(1usize, |a, &b| a.checked_mul(b)).filter(|&n| n <= 1 << 36);
    let (Some(n), Some(_)) = (n, nonzero) else { return Err(format!("{what} declares dims {:?}, too many elements", t.dims)) };
    let st =
        scalar_type(t.data_type).ok_or_else(|| format!("{what} has data type {}, which qc does not support", t.data_type))?;
    let width = match t.data_type {
        data_type::DOUBLE | data_type::INT64 => 8,
        data_type::FLOAT | data_type::INT32 => 4,
        data_type::FLOAT16 => 2,
        _ => 1,
    };
    let count_err = |got: usize| format!("{what} declares {n} elements (dims {:?}) but holds {got}", t.dims);
    let sh = IxDyn(&shape);
    let raw = &t.raw_data;
    if !raw.is_empty() {
        if raw.len() != n * width {
            return Err(count_err(raw.len() / width));
        }
        let c = raw.chunks_exact(width);
        return Ok(match t.data_type {
            data_type::FLOAT => Tensor::F32(
                ArrayD::from_shape_vec(sh, c.map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
                    .map_err(|e| format!("{what}: {e}"))?,
            ),
            data_type::DOUBLE => Tensor::F32(
                ArrayD::from_shape_vec(sh, c.map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect())
                    .map_err(|e| format!("{what}: {e}"))?,
            ),
            data_type::FLOAT16 => Tensor::F16(
                ArrayD::from_shape_vec(sh, c.map(|b| half::f16::from_le_bytes(b.try_into().unwrap())).collect())
                    .map_err(|e| format!("{what}: {e}"))?,
            ),
            data_type::INT64 => Tensor::I64(
                ArrayD::from_shape_vec(sh, c.map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect())
                    .map_err(|e| format!("{what}: {e}"))?,
            ),
            data_type::INT32 => Tensor::I32(
                ArrayD::from_shape_vec(sh, c.map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect())
                    .map_err(|e| format!("{what}: {e}"))?,
            ),
            data_type::INT8 => {
                Tensor::I8(ArrayD::from_shape_vec(sh, c.map(|b| b[0] as i8).collect()).map_err(|e| format!("{what}: {e}"))?)
            }
            data_type::UINT8 => {
                Tensor::U8(ArrayD::from_shape_vec(sh, c.map(|b| b[0]).collect()).map_err(|e| format!("{what}: {e}"))?)
            }
            _ => Tensor::Bool(ArrayD::from_shape_vec(sh, c.map(|b| b[0] != 0).collect()).map_err(|e| format!("{what}: {e}"))?),
        });
    }
    let typed = match t.data_type {
        data_type::FLOAT => t.float_data.len(),
        data_type::DOUBLE => t.double_data.len(),
        data_type::INT64 => t.int64_data.len(),
        _ => t.int32_data.len(),
    };
    if typed != n {
        return Err(count_err(typed));
    }
    Ok(match st {
        ScalarType::F32 if t.data_type == data_type::DOUBLE => Tensor::F32(
            ArrayD::from_shape_vec(sh, t.double_data.iter().map(|&v| v as f32).collect()).map_err(|e| format!("{what}: {e}"))?,
        ),
        ScalarType::F32 => Tensor::F32(ArrayD::from_shape_vec(sh, t.float_data.clone()).map_err(|e| format!("{what}: {e}"))?),
        ScalarType::F16 => Tensor::F16(
            ArrayD::from_shape_vec(sh, t.int32_data.iter().map(|&v| half::f16::from_bits(v as u16)).collect())
                .map_err(|e| format!("{what}: {e}"))?,
        ),
        ScalarType::I64 => Tensor::I64(ArrayD::from_shape_vec(sh, t.int64_data.clone()).map_err(|e| format!("{what}: {e}"))?),
        ScalarType::I32 => Tensor::I32(ArrayD::from_shape_vec(sh, t.int32_data.clone()).map_err(|e| format!("{what}: {e}"))?),
        ScalarType::I8 => Tensor::I8(
            ArrayD::from_shape_vec(sh, t.int32_data.iter().map(|&v| v as i8).collect()).map_err(|e| format!("{what}: {e}"))?,
        ),
        ScalarType::U8 => Tensor::U8(
            ArrayD::from_shape_vec(sh, t.int32_data.iter().map(|&v| v as u8).collect()).map_err(|e| format!("{what}: {e}"))?,
        ),
        _ => Tensor::Bool(
            ArrayD::from_shape_vec(sh, t.int32_data.iter().map(|&v| v != 0).collect()).map_err(|e| format!("{what}: {e}"))?,
        ),
    })
}

/// Encodes a tensor with raw little-endian data (for tests and export).
pub fn encode(name: &str, t: &Tensor) -> TensorProto {
    let raw: Vec<u8> = match t {
        Tensor::F32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Tensor::F16(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Tensor::I64(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Tensor::I32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Tensor::I8(a) => a.iter().map(|&v| v as u8).collect(),
        Tensor::U8(a) => a.iter().copied().collect(),
        Tensor::Bool(a) => a.iter().map(|&v| v as u8).collect(),
    };
    TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: data_type_of(t),
        name: name.to_string(),
        raw_data: raw,
        ..Default::default()
    }
}
