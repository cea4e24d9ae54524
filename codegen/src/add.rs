//! Integer add of two same-shape per-tensor 8-bit tensors (a residual connection) as one table
//! lookup per element: the evaluator's `clamp(rne((s_a(a − z_a) + s_b(b − z_b)) / s_y) + z_y)` in
//! f32 is a function of the two bytes alone, so it is computed once for all 256 × 256 pairs when
//! the model is compiled, with the evaluator's own operations — equal to it by construction.
//! The layout does not matter as long as both operands share it.
//!
//! Bounds: the table has 65 536 entries and is indexed by two bytes; operand lengths are checked
//! equal before the loop; safe Rust.

use qc_ir::requant::{output_range, round_even};
use qc_ir::{Attrs, ScalarType, TensorType};

/// A compiled 8-bit add.
pub struct AddQ {
    /// `table[a · 256 + b]`.
    table: Box<[u8]>,
}

impl AddQ {
    /// The kernel of an 8-bit add of per-tensor quantized same-shape operands, or `None`.
    pub fn new(attrs: &Attrs, tys: &[&TensorType], out: &TensorType) -> Option<AddQ> {
        let (aq, bq, yq) = (tys[0].elem.quant()?, tys[1].elem.quant()?, out.elem.quant()?);
        let eight = |q: &qc_ir::QuantParams| q.axis.is_none() && matches!(q.storage, ScalarType::I8 | ScalarType::U8);
        if !(eight(aq) && eight(bq) && eight(yq)) || tys[0].dims != tys[1].dims || tys[0].dims != out.dims {
            return None;
        }
        let (lo, hi) = output_range(yq, attrs);
        let (sy, zy) = yq.at(0);
        // s·(v − z) for every byte value: the same f32 operations as element by element.
        let real = |q: &qc_ir::QuantParams| -> Vec<f32> {
            let (s, z) = q.at(0);
            let signed = q.storage == ScalarType::I8;
            (0..=255u8).map(|v| s * (if signed { v as i8 as i32 } else { v as i32 } - z) as f32).collect()
        };
        let (ra, rb) = (real(aq), real(bq));
        let mut table = vec![0u8; 1 << 16].into_boxed_slice();
        for (a, &fa) in ra.iter().enumerate() {
            for (b, &fb) in rb.iter().enumerate() {
                let v = round_even((fa + fb) / sy) + zy as f32;
                table[a << 8 | b] = v.clamp(lo as f32, hi as f32) as i32 as u8;
            }
        }
        Some(AddQ { table })
    }

    /// Adds two operands of the same length and layout.
    pub fn run(&self, a: &[u8], b: &[u8], y: &mut [u8]) -> Result<(), String> {
        if a.len() != b.len() || a.len() != y.len() {
            return Err(format!("add operands have {} and {} bytes, its result {}", a.len(), b.len(), y.len()));
        }
        for ((o, &p), &q) in y.iter_mut().zip(a).zip(b) {
            *o = self.table[(p as usize) << 8 | q as usize];
        }
        Ok(())
    }
}
