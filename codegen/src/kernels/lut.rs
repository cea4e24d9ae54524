//! 8-bit activations without an integer form (sigmoid, hard_sigmoid, hard_swish, clip on
//! quantized values) as one table lookup per element: the evaluator dequantizes, applies the f32
//! function and quantizes, a function of the byte alone for per-tensor parameters, so the table
//! is the evaluator's own result on all 256 bytes, computed when the model is compiled — equal to
//! it by construction. The layout does not matter.
//!
//! Bounds: the table has 256 entries, indexed by a byte; lengths are checked equal; safe Rust.

use crate::kernels::quant::Q8;
use qc_ir::{Attrs, Dim, OpKind, Tensor, TensorType};

/// A compiled lookup-table activation.
pub struct Lut {
    table: Box<[u8; 256]>,
}

impl Lut {
    /// The table of an 8-bit per-tensor `kind` from `x` to `out`, or `None`.
    pub fn new(kind: OpKind, attrs: &Attrs, x: &TensorType, out: &TensorType) -> Option<Lut> {
        if !matches!(kind, OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish | OpKind::Clip) {
            return None;
        }
        let (qx, _) = (Q8::of(x)?, Q8::of(out)?);
        let bytes: Vec<i32> = (0..=255u8).map(|b| qx.value(b)).collect();
        let all = Tensor::I32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[256]), bytes).ok()?).cast(x.elem.storage());
        let flat = |t: &TensorType| TensorType { dims: vec![Dim::Fixed(256)], elem: t.elem.clone() };
        let y = qc_ir::eval::eval_op(kind, attrs, &[&all], &[&flat(x)], &flat(out)).ok()?;
        let mut table = Box::new([0u8; 256]);
        for (slot, b) in table.iter_mut().zip(crate::kernels::gemm::tensor_bytes(&y)?) {
            *slot = b;
        }
        Some(Lut { table })
    }

    /// Maps `x` into `y` (of the same length).
    pub fn run(&self, x: &[u8], y: &mut [u8]) -> Result<(), String> {
        if x.len() != y.len() {
            return Err(format!("a lookup reads {} bytes into {}", x.len(), y.len()));
        }
        for (o, &b) in y.iter_mut().zip(x) {
            *o = self.table[b as usize];
        }
        Ok(())
    }
}
