//! `quantize-dynamic` — approximating (weights move by at most half a step of their channel's
//! scale; activations are quantized per call).
//!
//! Dynamic quantization, as ONNX Runtime's `quantize_dynamic` does it: the constant weight of
//! every f32 gemm and matmul becomes i8 (symmetric, per output channel, or per tensor with
//! `--per-tensor`), and its input is quantized on every call with `dynamic_quantize` (u8, the
//! range of the whole tensor widened to include 0). The product is exact in i32; the result is
//! `f32(acc) · f32(s_x · s_w[c]) + b`, then the op's fused activation.
//!
//! ```text
//!                                                 %x.q, %x.scale, %x.zp = dynamic_quantize(%x)
//! %y = gemm(%x, %w, %b) {trans_b = true}    →     %acc = matmul_integer(%x.q, %w.q8, %x.zp) : tensor<?x64xi32>
//!                                                 %y = add(mul(cast(%acc), mul(%x.scale, %w.scale)), %b)
//! ```
//!
//! Leaves alone: ops whose weight is not a 2-D constant, gemm with `trans_a`, alpha or beta other
//! than 1, and biases that are not a vector of the output width.

use crate::rewrite::{add_const, const_f32, const_value, origin_name};
use crate::{Changed, Pass, PassError, PassOptions};
use ndarray::{ArrayD, IxDyn};
use qc_ir::{Attr, Attrs, Dim, Graph, Loc, Node, NodeId, OpKind, ScalarType, Tensor, TensorType, ValueId};
use std::collections::HashMap;

/// The `quantize-dynamic` pass.
pub struct QuantizeDynamic {
    per_channel: bool,
}

impl QuantizeDynamic {
    /// The pass with its options.
    pub fn new(opts: &PassOptions) -> QuantizeDynamic {
        QuantizeDynamic { per_channel: !opts.per_tensor_weights }
    }
}

fn add_op(g: &mut Graph, kind: OpKind, operands: Vec<ValueId>, attrs: Attrs, ty: TensorType, loc: &Loc) -> ValueId {
    let id = g.add_node(Node::new(kind, operands, attrs, loc.clone()), vec![ty]);
    g.node(id).results[0]
}

impl QuantizeDynamic {
    fn rewrite(&self, g: &mut Graph, op: NodeId, inputs: &mut HashMap<ValueId, [ValueId; 3]>) -> bool {
        let node = g.node(op).clone();
        if !g.ty(node.results[0]).elem.is_f32() || node.attrs.bool("trans_a", false) {
            return false;
        }
        if node.attrs.float("alpha", 1.0) != 1.0 || node.attrs.float("beta", 1.0) != 1.0 {
            return false;
        }
        let (x, w) = (node.operands[0], node.operands[1]);
        let Some(wt) = const_value(g, w) else { return false };
        let Some(wa) = wt.as_f32() else { return false };
        if wa.ndim() != 2 || !g.ty(x).elem.is_f32() || g.ty(x).rank() != 2 {
            return false;
        }
        // The weight as [K, N].
        let wa = wa.view().into_dimensionality::<ndarray::Ix2>().expect("rank 2");
        let w_kn = if node.kind == OpKind::Gemm && node.attrs.bool("trans_b", false) { wa.t().to_owned() } else { wa.to_owned() };
        let (k, n) = (w_kn.shape()[0], w_kn.shape()[1]);
        let bias = match node.operands.get(2) {
            None => None,
            Some(&b) => match const_f32(g, b) {
                Some(v) if v.len() == n && g.ty(b).rank() == 1 => Some(b),
                _ => return false,
            },
        };
        let absmax = |c: usize| w_kn.column(c).iter().fold(0f32, |m, v| m.max(v.abs()));
        let mut scales: Vec<f32> = (0..n).map(|c| absmax(c) / 127.0).collect();
        if !self.per_channel {
            let s = scales.iter().fold(0f32, |m, &v| m.max(v));
            scales = vec![s; n];
        }
        for s in &mut scales {
            if !(s.is_finite() && *s >= f32::MIN_POSITIVE) {
                *s = 1.0;
            }
        }
        let q: Vec<i8> =
            w_kn.indexed_iter().map(|((_, c), &v)| qc_ir::eval::quantize_value(v, scales[c], 0, -127, 127) as i8).collect();
        let loc = node.loc.clone();
        let base = origin_name(g, w);
        let wname = match g.producer(w).and_then(|p| g.node(p).value.clone()) {
            Some(qc_ir::ConstValue::Weight(name)) => name,
            _ => base.clone(),
        };
        let batch = g.ty(x).dims[0];
        let wq = add_const(
            g,
            &format!("{wname}.q8"),
            Tensor::I8(ArrayD::from_shape_vec(IxDyn(&[k, n]), q).expect("sized")),
            TensorType::new(&[k as u64, n as u64], ScalarType::I8),
            loc.clone(),
        );
        let ws = add_const(
            g,
            &format!("{wname}.scale"),
            Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[n]), scales).expect("sized")),
            TensorType::new(&[n as u64], ScalarType::F32),
            loc.clone(),
        );
        // Each input is quantized once, however many ops read it.
        let [xq, xs, xz] = match inputs.get(&x) {
            Some(&q) => q,
            None => {
                let dq = g.add_node(
                    Node::new(OpKind::DynamicQuantize, vec![x], Attrs::new(), loc.clone()),
                    vec![
                        g.ty(x).with_elem(ScalarType::U8),
                        TensorType::new(&[], ScalarType::F32),
                        TensorType::new(&[], ScalarType::U8),
                    ],
                );
                let q = [0, 1, 2].map(|i| g.node(dq).results[i]);
                let xname = g.value(x).name.clone().unwrap_or_else(|| base.clone());
                for (v, suffix) in q.iter().zip(["q", "scale", "zp"]) {
                    g.value_mut(*v).name = Some(g.unique_name(&format!("{xname}.{suffix}")));
                }
                inputs.insert(x, q);
                q
            }
        };
        let out = |elem: ScalarType| TensorType { dims: vec![batch, Dim::Fixed(n as u64)], elem: elem.into() };
        let acc = add_op(g, OpKind::MatMulInteger, vec![xq, wq, xz], Attrs::new(), out(ScalarType::I32), &loc);
        let accf =
            add_op(g, OpKind::Cast, vec![acc], Attrs::new().with("to", Attr::Str("f32".into())), out(ScalarType::F32), &loc);
        let scale = add_op(g, OpKind::Mul, vec![xs, ws], Attrs::new(), TensorType::new(&[n as u64], ScalarType::F32), &loc);
        let mut y = add_op(g, OpKind::Mul, vec![accf, scale], Attrs::new(), out(ScalarType::F32), &loc);
        let mut act = Attrs::new();
        for key in ["activation", "clip_min", "clip_max"] {
            if let Some(v) = node.attrs.get(key) {
                act.set(key, v.clone());
            }
        }
        match bias {
            Some(b) => y = add_op(g, OpKind::Add, vec![y, b], act, out(ScalarType::F32), &loc),
            None if !act.is_empty() => {
                let kind = if act.str("activation") == Some("relu") { OpKind::Relu } else { OpKind::Clip };
                let mut a = Attrs::new();
                for (from, to) in [("clip_min", "min"), ("clip_max", "max")] {
                    if let Some(v) = act.get(from) {
                        a.set(to, v.clone());
                    }
                }
                y = add_op(g, kind, vec![y], a, out(ScalarType::F32), &loc);
            }
            None => {}
        }
        g.replace_all_uses(node.results[0], y);
        if let Some(name) = g.value(node.results[0]).name.clone() {
            g.value_mut(node.results[0]).name = None;
            g.value_mut(y).name = Some(name);
        }
        g.remove_node(op);
        true
    }
}

impl Pass for QuantizeDynamic {
    fn name(&self) -> &'static str {
        "quantize-dynamic"
    }

    fn run(&self, g: &mut Graph) -> Result<Changed, PassError> {
        let ops: Vec<NodeId> = g.node_ids().filter(|&n| matches!(g.node(n).kind, OpKind::Gemm | OpKind::MatMul)).collect();
        let mut changed = false;
        let mut inputs = HashMap::new();
        for op in ops {
            changed |= self.rewrite(g, op, &mut inputs);
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
