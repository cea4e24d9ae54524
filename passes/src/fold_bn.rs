//! `fold-bn` — approximating (f32 rounding only: outputs agree within 1e-5 relative).
//!
//! Folds an inference `batch_norm` with constant parameters into the `conv2d` or `gemm` that
//! feeds it, when that op is f32, has no fused activation, and its result feeds only the batch
//! norm. With `s = scale / sqrt(var + eps)` and `t = bias - mean * s`, output channel `c` gets
//! `w'[c] = w[c] * s[c]` and `b'[c] = b[c] * s[c] + t[c]`. The new tensors are named after the
//! tensors they replace (`conv1.weight.bn`, `conv1.bias.bn`) and the conv's `loc` records the batch norm.
//!
//! ```text
//! %c = conv2d(%x, %w, %b) ... loc("conv1")            %c = conv2d(%x, %w.bn, %b.bn) ...
//! %y = batch_norm(%c, %g, %be, %m, %v) loc("bn1")  →       loc("conv1", fused = ["bn1"])
//! ```
//!
//! A batch norm that cannot fold into its producer becomes a standalone scale and shift:
//! `mul(x, s)` then `add(_, t)` with `s`, `t` shaped `[C, 1, 1]` to broadcast over NCHW.
//!
//! Leaves alone: batch norms whose parameters are not constants (or not loaded).
//! Precondition: none beyond a verified graph; the old constants are left for `dead-code`.

use crate::rewrite::{add_const, const_f32, derived_name, origin_name};
use crate::{Changed, Pass, PassContext, PassError};
use ndarray::{ArrayD, IxDyn};
use qc_ir::{Graph, Node, NodeId, OpKind, Tensor, TensorType, ValueId};

/// The `fold-bn` pass.
pub struct FoldBn;

/// Per-channel scale and shift of a batch norm.
struct Affine {
    s: Vec<f32>,
    t: Vec<f32>,
}

fn bn_affine(g: &Graph, bn: NodeId) -> Option<Affine> {
    let n = g.node(bn);
    let p: Option<Vec<Vec<f32>>> = n.operands[1..5].iter().map(|&v| const_f32(g, v)).collect();
    let p = p?;
    let eps = n.attrs.float("epsilon", 1e-5);
    let s: Vec<f32> = (0..p[0].len()).map(|c| p[0][c] / (p[3][c] + eps).sqrt()).collect();
    let t: Vec<f32> = (0..s.len()).map(|c| p[1][c] - p[2][c] * s[c]).collect();
    Some(Affine { s, t })
}

fn f32_tensor(shape: &[usize], data: Vec<f32>) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data).expect("sized"))
}

/// Folds into the producer if it qualifies; returns whether it did.
fn fold_into_producer(g: &mut Graph, bn: NodeId, a: &Affine) -> bool {
    let x = g.node(bn).operands[0];
    let Some(p) = g.producer(x) else { return false };
    let pn = g.node(p);
    let fits = matches!(pn.kind, OpKind::Conv2d | OpKind::Gemm)
        && pn.attrs.get("activation").is_none()
        && g.ty(x).elem.is_f32()
        && g.use_count(x) == 1;
    if !fits {
        return false;
    }
    let (kind, w, b) = (pn.kind, pn.operands[1], pn.operands.get(2).copied());
    let Some(wdata) = const_f32(g, w) else { return false };
    let wshape = g.ty(w).fixed_dims().expect("const weights have fixed dims");
    let c = a.s.len();
    let bias: Vec<f32> = match b {
        None => vec![0.0; c],
        Some(b) => match (const_f32(g, b), g.ty(b).fixed_dims()) {
            // conv bias is [C]; gemm's C may be [C] or [1, C] (anything else does not fold).
            (Some(v), Some(d)) if v.len() == c && d.iter().rev().skip(1).all(|&n| n == 1) => v,
            _ => return false,
        },
    };
    let (new_w, new_b) = match kind {
        OpKind::Conv2d => {
            let per = wdata.len() / c;
            let w2: Vec<f32> = wdata.iter().enumerate().map(|(i, v)| v * a.s[i / per]).collect();
            let b2: Vec<f32> = (0..c).map(|o| bias[o] * a.s[o] + a.t[o]).collect();
            (w2, b2)
        }
        _ => {
            let beta = pn.attrs.float("beta", 1.0);
            let trans_b = pn.attrs.bool("trans_b", false);
            let cols = wshape[1];
            let w2: Vec<f32> =
                wdata.iter().enumerate().map(|(i, v)| v * a.s[if trans_b { i / cols } else { i % cols }]).collect();
            let b2: Vec<f32> = (0..c).map(|o| beta * bias[o] * a.s[o] + a.t[o]).collect();
            (w2, b2)
        }
    };
    // New tensors are named after the ones they replace (`conv1.weight` → `conv1.weight.bn`).
    let origin = origin_name(g, x);
    let named = |v: Option<ValueId>, role: &str| derived_name(g, v, &format!("{origin}.{role}"), "bn");
    let (w_name, b_name) = (named(Some(w), "weight"), named(b, "bias"));
    let loc = g.node(p).loc.clone();
    let wty = g.ty(w).clone();
    let bty = TensorType::new(&[c as u64], qc_ir::ScalarType::F32);
    let w_new = add_const(g, &w_name, f32_tensor(&wshape, new_w), wty, loc.clone());
    let b_new = add_const(g, &b_name, f32_tensor(&[c], new_b), bty, loc);
    let bn_loc = g.node(bn).loc.clone();
    let bn_result = g.node(bn).results[0];
    let pn = g.node_mut(p);
    pn.operands.truncate(1);
    pn.operands.push(w_new);
    pn.operands.push(b_new);
    if kind == OpKind::Gemm {
        pn.attrs.0.remove("beta");
    }
    pn.loc.absorb(&bn_loc);
    g.replace_all_uses(bn_result, x);
    g.remove_node(bn);
    true
}

/// Rewrites the batch norm as `mul` then `add`, keeping its result value.
fn to_scale_shift(g: &mut Graph, bn: NodeId, a: &Affine) {
    let node = g.node(bn).clone();
    let (x, result) = (node.operands[0], node.results[0]);
    let rank = g.ty(x).rank();
    let mut shape = vec![a.s.len()];
    shape.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
    let ty = TensorType::new(&shape.iter().map(|&d| d as u64).collect::<Vec<_>>(), qc_ir::ScalarType::F32);
    let origin = origin_name(g, result);
    let s = add_const(g, &format!("{origin}.scale.bn"), f32_tensor(&shape, a.s.clone()), ty.clone(), node.loc.clone());
    let t = add_const(g, &format!("{origin}.shift.bn"), f32_tensor(&shape, a.t.clone()), ty, node.loc.clone());
    g.remove_node(bn);
    let mul = g.add_node(Node::new(OpKind::Mul, vec![x, s], Default::default(), node.loc.clone()), vec![g.ty(result).clone()]);
    let scaled: ValueId = g.node(mul).results[0];
    let mut add = Node::new(OpKind::Add, vec![scaled, t], Default::default(), node.loc);
    add.results = vec![result];
    g.insert_node(add);
}

impl Pass for FoldBn {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let bns: Vec<NodeId> = g.node_ids().filter(|&id| g.node(id).kind == OpKind::BatchNorm).collect();
        let mut changed = false;
        for bn in bns {
            let Some(a) = bn_affine(g, bn) else { continue };
            if !fold_into_producer(g, bn, &a) {
                to_scale_shift(g, bn, &a);
            }
            changed = true;
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
