//! Integer `mul` of two per-tensor 8-bit activations (ONNX Runtime's QLinearMul), same-shape or
//! with one operand a per-channel gate (`[n, c, 1, 1]` times `[n, c, h, w]`, the squeeze-excite
//! form): the result is a function of the two bytes alone, so the kernel is the evaluator's own
//! result on all 256 × 256 byte pairs, computed when the model is compiled and looked up — equal
//! to it by construction. A same-shape mul works in any layout both operands share; a gated one
//! reads the large operand channels-last or channels-first and the gate's `c` bytes per image.
//!
//! Bounds: the table has 65 536 entries indexed by two bytes; lengths are checked against the
//! per-image sizes before the loops, which walk whole chunks of those sizes; safe Rust.

use crate::kernels::quant::Q8;
use crate::layout::Layout;
use qc_ir::{Attrs, Dim, OpKind, ScalarType, Tensor, TensorType};

/// How the operands' shapes relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Both operands and the result have the same dims.
    Same,
    /// Operand `large` is `[n, c, h, w]`, the other `[n, c, 1, 1]`.
    Gated { large: usize, channels: usize, plane: usize },
}

/// A compiled 8-bit mul.
pub struct MulQ {
    /// `table[a · 256 + b]` for operand 0's byte `a` and operand 1's byte `b`.
    table: Box<[u8]>,
    shape: Shape,
}

fn eight(t: &TensorType) -> bool {
    t.elem.quant().is_some_and(|q| q.axis.is_none() && matches!(q.storage, ScalarType::I8 | ScalarType::U8))
}

impl MulQ {
    /// The kernel of a mul (with its attributes) of two 8-bit per-tensor operands into `out`, or `None` when the
    /// types or shapes are not one of the two forms (same dims; a per-channel gate).
    pub fn new(attrs: &Attrs, tys: &[&TensorType], out: &TensorType) -> Option<MulQ> {
        if tys.len() != 2 || !eight(tys[0]) || !eight(tys[1]) || !eight(out) {
            return None;
        }
        let shape = if tys[0].dims == tys[1].dims && tys[0].dims == out.dims {
            Shape::Same
        } else {
            let large = (0..2).find(|&i| tys[i].dims == out.dims)?;
            let small = tys[1 - large];
            if out.rank() != 4 || small.rank() != 4 || small.dims[0] != out.dims[0] {
                return None;
            }
            let fixed =
                |t: &TensorType| -> Option<Vec<usize>> { t.dims[1..].iter().map(|d| d.fixed().map(|n| n as usize)).collect() };
            let (big, small) = (fixed(out)?, fixed(small)?);
            if small != [big[0], 1, 1] {
                return None;
            }
            Shape::Gated { large, channels: big[0], plane: big[1] * big[2] }
        };
        let bytes = |t: &TensorType, f: &dyn Fn(usize) -> usize| -> Option<Tensor> {
            let q = Q8::of(t)?;
            let v: Vec<i32> = (0..1 << 16).map(|i| q.value(f(i) as u8)).collect();
            Some(Tensor::I32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1 << 16]), v).ok()?).cast(t.elem.storage()))
        };
        let (a, b) = (bytes(tys[0], &|i| i >> 8)?, bytes(tys[1], &|i| i & 0xff)?);
        let flat = |t: &TensorType| TensorType { dims: vec![Dim::Fixed(1 << 16)], elem: t.elem.clone() };
        let y = qc_ir::eval::eval_op(OpKind::Mul, attrs, &[&a, &b], &[&flat(tys[0]), &flat(tys[1])], &flat(out)).ok()?;
        let table = crate::kernels::gemm::tensor_bytes(&y)?.into_boxed_slice();
        (table.len() == 1 << 16).then_some(MulQ { table, shape })
    }

    /// Which operand is the large one of a gated mul (`None` for a same-shape mul).
    pub fn large_operand(&self) -> Option<usize> {
        match self.shape {
            Shape::Same => None,
            Shape::Gated { large, .. } => Some(large),
        }
    }

    /// What it runs.
    pub fn describe(&self) -> &'static str {
        match self.shape {
            Shape::Same => "mul, table",
            Shape::Gated { .. } => "mul by a per-channel gate, table",
        }
    }

    #[inline(always)]
    fn one(&self, a: u8, b: u8) -> u8 {
        self.table[(a as usize) << 8 | b as usize]
    }

    /// Multiplies operand 0's bytes `a` by operand 1's bytes `b` into `y`: equal lengths for a
    /// same-shape mul (any shared layout); for a gated one, whole images of the large operand in
    /// `layout` and `c` gate bytes per image.
    pub fn run(&self, a: &[u8], b: &[u8], y: &mut [u8], layout: Layout) -> Result<(), String> {
        match self.shape {
            Shape::Same => {
                if a.len() != b.len() || a.len() != y.len() {
                    return Err(format!("mul operands have {} and {} bytes, its result {}", a.len(), b.len(), y.len()));
                }
                for ((o, &p), &q) in y.iter_mut().zip(a).zip(b) {
                    *o = self.one(p, q);
                }
            }
            Shape::Gated { large, channels, plane } => {
                let (x, gate) = if large == 0 { (a, b) } else { (b, a) };
                let image = channels * plane;
                let images = y.len() / image.max(1);
                if x.len() != y.len() || y.len() != images * image || gate.len() != images * channels {
                    return Err(format!("a gated mul reads {} and {} bytes into {}", x.len(), gate.len(), y.len()));
                }
                let at = |v: u8, g: u8| if large == 0 { self.one(v, g) } else { self.one(g, v) };
                for ((xi, yi), gi) in x.chunks_exact(image).zip(y.chunks_exact_mut(image)).zip(gate.chunks_exact(channels)) {
                    match layout {
                        Layout::Nhwc => {
                            for (xp, yp) in xi.chunks_exact(channels).zip(yi.chunks_exact_mut(channels)) {
                                for ((o, &v), &g) in yp.iter_mut().zip(xp).zip(gi) {
                                    *o = at(v, g);
                                }
                            }
                        }
                        Layout::Nchw => {
                            for ((xc, yc), &g) in xi.chunks_exact(plane).zip(yi.chunks_exact_mut(plane)).zip(gi) {
                                for (o, &v) in yc.iter_mut().zip(xc) {
                                    *o = at(v, g);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
