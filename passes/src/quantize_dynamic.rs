//! `quantize-dynamic` — approximating (weights move by at most half a step of their channel's
//! scale; activations are quantized per call).
//!
//! Dynamic quantization, as ONNX Runtime's `quantize_dynamic` does it: the constant weight of
//! every f32 gemm, matmul and conv2d becomes i8 (symmetric, per output channel, or per tensor with
//! `--per-tensor`; in [−64, 64] with `--weight-bits 7`, which AVX2 CPUs without VNNI multiply
//! exactly with `vpmaddubsw`), and its input is quantized on every call with `dynamic_quantize` (u8, the
//! range of the whole tensor widened to include 0). The product is exact in i32
//! (`matmul_integer`, `conv_integer`); the result is `f32(acc) · f32(s_x · s_w[c]) + b`, then the
//! op's fused activation.
//!
//! ```text
//!                                                 %x.q, %x.scale, %x.zp = dynamic_quantize(%x)
//! %y = gemm(%x, %w, %b) {trans_b = true}    →     %acc = matmul_integer(%x.q, %w.q8, %x.zp) : tensor<?x64xi32>
//!                                                 %y = add(mul(cast(%acc), mul(%x.scale, %w.scale)), %b)
//! ```
//!
//! A matmul's input may have batch dims before its rows (a transformer's `[batch, tokens,
//! hidden]`); its weight is a constant matrix. Leaves alone: ops whose weight is not a constant
//! (attention's activation × activation products), gemm with `trans_a`, alpha or beta other than
//! 1, and biases that are not a vector of the output width.

use crate::rewrite::{add_const, const_f32, const_value, origin_name};
use crate::{Changed, Pass, PassContext, PassError, PassOptions};
use ndarray::{ArrayD, IxDyn};
use qc_ir::infer::{Operand, infer_type};
use qc_ir::{Attr, Attrs, Graph, Loc, Node, NodeId, OpKind, ScalarType, Tensor, TensorType, ValueId};
use std::collections::HashMap;

/// The `quantize-dynamic` pass.
pub struct QuantizeDynamic {
    per_channel: bool,
    /// The weights' largest magnitude: 127, or 64 for 7-bit weights.
    qmax: f32,
}

impl QuantizeDynamic {
    /// The pass with its options.
    pub fn new(opts: &PassOptions) -> QuantizeDynamic {
        QuantizeDynamic { per_channel: !opts.per_tensor_weights, qmax: if opts.weight_bits == 7 { 64.0 } else { 127.0 } }
    }
}

fn add_op(g: &mut Graph, kind: OpKind, operands: Vec<ValueId>, attrs: Attrs, loc: &Loc) -> ValueId {
    let ty = {
        let ops: Vec<Operand> = operands.iter().map(|&o| Operand { ty: g.ty(o), value: None }).collect();
        infer_type(kind, &attrs, &ops).expect("the rewrite builds well-typed ops")
    };
    let id = g.add_node(Node::new(kind, operands, attrs, loc.clone()), vec![ty]);
    g.node(id).results[0]
}

/// An i8 weight ready for an integer kernel, and how its result is scaled back.
struct Prepared {
    /// The integer op and its attributes.
    kind: OpKind,
    attrs: Attrs,
    /// The i8 weight.
    weight: Tensor,
    /// One scale per output channel, shaped to broadcast over the result.
    scales: Tensor,
    /// The f32 bias, shaped like `scales`.
    bias: Option<Tensor>,
}

fn f32_tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).expect("sized"))
}

impl QuantizeDynamic {
    /// Symmetric per-channel (or per-tensor) scales for the channel maxima `absmax`.
    fn scales(&self, absmax: Vec<f32>) -> Vec<f32> {
        let mut s: Vec<f32> = absmax.iter().map(|m| m / self.qmax).collect();
        if !self.per_channel {
            let m = s.iter().fold(0f32, |a, &b| a.max(b));
            s = vec![m; s.len()];
        }
        s.into_iter().map(|v| if v.is_finite() && v >= f32::MIN_POSITIVE { v } else { 1.0 }).collect()
    }

    fn prepare(&self, g: &Graph, op: NodeId) -> Option<Prepared> {
        let node = g.node(op);
        let (x, w) = (node.operands[0], node.operands[1]);
        if !g.ty(node.results[0]).elem.is_f32() || !g.ty(x).elem.is_f32() {
            return None;
        }
        let wt = const_value(g, w)?;
        let wa = wt.as_f32()?;
        let bias = match node.operands.get(2) {
            None => None,
            Some(&b) => Some(const_f32(g, b).filter(|_| g.ty(b).rank() == 1)?),
        };
        let qmax = self.qmax as i32;
        let q = |v: f32, s: f32| qc_ir::eval::quantize_value(v, s, 0, -qmax, qmax) as i8;
        match node.kind {
            OpKind::Conv2d => {
                let o = wa.shape()[0];
                if bias.as_ref().is_some_and(|b| b.len() != o) {
                    return None;
                }
                let absmax =
                    (0..o).map(|c| wa.index_axis(ndarray::Axis(0), c).iter().fold(0f32, |m, v| m.max(v.abs()))).collect();
                let scales = self.scales(absmax);
                let per = wa.len() / o;
                let weight: Vec<i8> = wa.iter().enumerate().map(|(i, &v)| q(v, scales[i / per])).collect();
                let mut attrs = Attrs::new();
                for k in ["strides", "pads", "dilations", "groups"] {
                    if let Some(v) = node.attrs.get(k) {
                        attrs.set(k, v.clone());
                    }
                }
                Some(Prepared {
                    kind: OpKind::ConvInteger,
                    attrs,
                    weight: Tensor::I8(ArrayD::from_shape_vec(IxDyn(wa.shape()), weight).expect("sized")),
                    scales: f32_tensor(&[o, 1, 1], scales),
                    bias: bias.map(|b| f32_tensor(&[o, 1, 1], b)),
                })
            }
            _ => {
                // A gemm's input is a matrix; a matmul's may carry batch dims before its rows.
                let rank_ok = match node.kind {
                    OpKind::Gemm => g.ty(x).rank() == 2,
                    _ => g.ty(x).rank() >= 2,
                };
                if wa.ndim() != 2 || !rank_ok || node.attrs.bool("trans_a", false) {
                    return None;
                }
                if node.attrs.float("alpha", 1.0) != 1.0 || node.attrs.float("beta", 1.0) != 1.0 {
                    return None;
                }
                // The weight as [K, N].
                let wa = wa.view().into_dimensionality::<ndarray::Ix2>().expect("rank 2");
                let w_kn = if node.kind == OpKind::Gemm && node.attrs.bool("trans_b", false) {
                    wa.t().to_owned()
                } else {
                    wa.to_owned()
                };
                let n = w_kn.ncols();
                if bias.as_ref().is_some_and(|b| b.len() != n) {
                    return None;
                }
                let scales = self.scales((0..n).map(|c| w_kn.column(c).iter().fold(0f32, |m, v| m.max(v.abs()))).collect());
                let weight: Vec<i8> = w_kn.indexed_iter().map(|((_, c), &v)| q(v, scales[c])).collect();
                Some(Prepared {
                    kind: OpKind::MatMulInteger,
                    attrs: Attrs::new(),
                    weight: Tensor::I8(ArrayD::from_shape_vec(IxDyn(&[w_kn.nrows(), n]), weight).expect("sized")),
                    scales: f32_tensor(&[n], scales),
                    bias: bias.map(|b| f32_tensor(&[n], b)),
                })
            }
        }
    }

    fn rewrite(&self, g: &mut Graph, op: NodeId, inputs: &mut HashMap<ValueId, [ValueId; 3]>) -> bool {
        let Some(p) = self.prepare(g, op) else { return false };
        let node = g.node(op).clone();
        let (x, w) = (node.operands[0], node.operands[1]);
        let loc = node.loc.clone();
        let wname = match g.producer(w).and_then(|p| g.node(p).value.clone()) {
            Some(qc_ir::ConstValue::Weight(name)) => name,
            _ => origin_name(g, w),
        };
        let ty_of = |t: &Tensor, st: ScalarType| TensorType::new(&t.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(), st);
        let (wty, sty) = (ty_of(&p.weight, ScalarType::I8), ty_of(&p.scales, ScalarType::F32));
        let wq = add_const(g, &format!("{wname}.q8"), p.weight, wty, loc.clone());
        let ws = add_const(g, &format!("{wname}.scale"), p.scales, sty.clone(), loc.clone());
        // Each input is quantized once, however many ops read it.
        let [xq, xs, xz] = match inputs.get(&x) {
            Some(&q) => q,
            None => {
                let tys = vec![
                    g.ty(x).with_elem(ScalarType::U8),
                    TensorType::new(&[], ScalarType::F32),
                    TensorType::new(&[], ScalarType::U8),
                ];
                let dq = g.add_node(Node::new(OpKind::DynamicQuantize, vec![x], Attrs::new(), loc.clone()), tys);
                let q = [0, 1, 2].map(|i| g.node(dq).results[i]);
                let xname = g.value(x).name.clone().unwrap_or_else(|| origin_name(g, x));
                for (v, suffix) in q.iter().zip(["q", "scale", "zp"]) {
                    g.value_mut(*v).name = Some(g.unique_name(&format!("{xname}.{suffix}")));
                }
                inputs.insert(x, q);
                q
            }
        };
        let acc = add_op(g, p.kind, vec![xq, wq, xz], p.attrs, &loc);
        let accf = add_op(g, OpKind::Cast, vec![acc], Attrs::new().with("to", Attr::Str("f32".into())), &loc);
        let scale = add_op(g, OpKind::Mul, vec![xs, ws], Attrs::new(), &loc);
        let mut y = add_op(g, OpKind::Mul, vec![accf, scale], Attrs::new(), &loc);
        let mut act = Attrs::new();
        for key in ["activation", "clip_min", "clip_max"] {
            if let Some(v) = node.attrs.get(key) {
                act.set(key, v.clone());
            }
        }
        if let Some(b) = p.bias {
            let bname = node.operands.get(2).and_then(|&b| g.value(b).name.clone()).unwrap_or_else(|| format!("{wname}.bias"));
            let bv = add_const(g, &format!("{bname}.dyn"), b, sty, loc.clone());
            y = add_op(g, OpKind::Add, vec![y, bv], std::mem::take(&mut act), &loc);
        }
        if !act.is_empty() {
            let kind = if act.str("activation") == Some("relu") { OpKind::Relu } else { OpKind::Clip };
            let mut a = Attrs::new();
            for (from, to) in [("clip_min", "min"), ("clip_max", "max")] {
                if let Some(v) = act.get(from) {
                    a.set(to, v.clone());
                }
            }
            y = add_op(g, kind, vec![y], a, &loc);
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
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let ops: Vec<NodeId> =
            g.node_ids().filter(|&n| matches!(g.node(n).kind, OpKind::Gemm | OpKind::MatMul | OpKind::Conv2d)).collect();
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
