//! reshape, flatten, squeeze and unsqueeze of f32 tensors: the same values in row-major order,
//! under the result type's dims (one of them may be the batch, taken from the element count).

use super::F32Kernel;
use qc_ir::{Tensor, TensorType};

/// A compiled f32 reshape (flatten, squeeze, unsqueeze).
pub struct Reshape {
    /// The result's dims; `None` for the one that is not fixed.
    dims: Vec<Option<usize>>,
}

impl Reshape {
    /// For a result type with at most one dim that is not fixed.
    pub fn new(out: &TensorType) -> Option<Reshape> {
        let dims: Vec<Option<usize>> = out.dims.iter().map(|d| d.fixed().map(|n| n as usize)).collect();
        (dims.iter().filter(|d| d.is_none()).count() <= 1).then_some(Reshape { dims })
    }
}

impl F32Kernel for Reshape {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let x = args.first().ok_or("a reshape has an operand")?;
        let a = x.as_f32().ok_or("an f32 reshape reads f32")?;
        let known: usize = self.dims.iter().flatten().product();
        let len = a.len();
        let dims: Vec<usize> = self.dims.iter().map(|d| d.unwrap_or(if known == 0 { 0 } else { len / known })).collect();
        if dims.iter().product::<usize>() != len {
            return Err(format!("{} values do not reshape to {:?}", len, self.dims));
        }
        let data: Vec<f32> = match a.as_slice() {
            Some(s) => s.to_vec(),
            None => a.iter().copied().collect(),
        };
        super::tensor(&dims, data)
    }

    fn describe(&self) -> &'static str {
        "f32 reshape"
    }
}
