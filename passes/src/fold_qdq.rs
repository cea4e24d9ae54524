//! `fold-qdq` — exact.
//!
//! Simplifies quantize/dequantize (Q/DQ) pairs, the form quantization-aware training, ONNX
//! Runtime and `insert-qdq` leave, so that `fuse-requant` sees integer data flowing between ops:
//!
//! - `quantize` of a constant becomes a constant of the quantized type, stored as a new weight
//!   named after the original (`conv1.weight` → `conv1.weight.q`);
//! - `quantize(dequantize(%q))` is `%q` when the parameters are equal, else `requantize(%q)`;
//! - a quantize after reshape, flatten, transpose, squeeze, unsqueeze, slice, max_pool or relu
//!   moves above the op, so the op works on integers (these ops commute with a per-tensor
//!   quantization exactly): when the op's operand is `dequantize(%q)` with the same parameters,
//!   the pair cancels and the op reads `%q`; otherwise the op's operand is quantized instead
//!   (except a relu after conv/gemm/matmul, which `fuse-requant` folds into the clamp).
//!
//! ```text
//! %d = dequantize(%q) : tensor<?x32x2x2xf32>                %v = reshape(%q) {shape = [-1, 128]}
//! %v = reshape(%d) {shape = [-1, 128]} : tensor<?x128xf32>  →      : tensor<?x128x!q<u8, 0.03, 0>>
//! %r = quantize(%v) : tensor<?x128x!q<u8, 0.03, 0>>
//! ```
//!
//! Leaves alone: Q/DQ around ops with no exact integer form (those are `fuse-requant`'s), and
//! dequantizes other ops still read. Runs to a fixed point.

use crate::rewrite::{const_value, origin_name, store_const};
use crate::{Changed, Pass, PassContext, PassError};
use qc_ir::eval::eval_op;
use qc_ir::{ConstValue, Graph, Node, NodeId, OpKind, TensorType, ValueId};

/// The `fold-qdq` pass.
pub struct FoldQdq;

/// Ops that commute with a per-tensor quantization: they move or select values (or, for relu,
/// clamp at the real zero, which the zero point represents exactly).
pub fn commutes_with_quantize(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Reshape
            | OpKind::Flatten
            | OpKind::Transpose
            | OpKind::Squeeze
            | OpKind::Unsqueeze
            | OpKind::Slice
            | OpKind::MaxPool
            | OpKind::Relu
    )
}

/// If `v` is `dequantize(%q)`, returns `%q`.
pub fn dequantized(g: &Graph, v: ValueId) -> Option<ValueId> {
    g.producer_of_kind(v, OpKind::Dequantize).map(|d| g.node(d).operands[0])
}

/// Turns the node `q` (a quantize of a constant) into a constant of its quantized type.
fn fold_constant(g: &mut Graph, q: NodeId) -> bool {
    let x = g.node(q).operands[0];
    let Some(t) = const_value(g, x) else { return false };
    let out = g.ty(g.node(q).results[0]).clone();
    let Ok(data) = eval_op(OpKind::Quantize, &Default::default(), &[t.as_ref()], &[g.ty(x)], &out) else { return false };
    let base = match g.producer(x).and_then(|p| g.node(p).value.clone()) {
        Some(ConstValue::Weight(w)) => w,
        _ => origin_name(g, x),
    };
    let value = store_const(g, &format!("{base}.q"), data);
    let n = g.node_mut(q);
    n.kind = OpKind::Const;
    n.operands.clear();
    n.value = Some(value);
    true
}

/// `quantize(dequantize(%q))`: `%q`, or a requantize.
fn fold_pair(g: &mut Graph, q: NodeId) -> bool {
    let x = g.node(q).operands[0];
    let Some(inner) = dequantized(g, x) else { return false };
    let result = g.node(q).results[0];
    if g.ty(inner).elem == g.ty(result).elem {
        g.replace_all_uses(result, inner);
        g.remove_node(q);
        return true;
    }
    let per_tensor = |t: &TensorType| t.elem.quant().is_some_and(|p| p.axis.is_none());
    if !(per_tensor(g.ty(inner)) && per_tensor(g.ty(result))) {
        return false;
    }
    let n = g.node_mut(q);
    n.kind = OpKind::Requantize;
    n.operands = vec![inner];
    true
}

/// `quantize(op(x))` for an op that commutes with quantization: `op(quantize(x))`, and when `x`
/// is `dequantize(%q)` with the same parameters, `op(%q)`.
fn sink_through(g: &mut Graph, q: NodeId) -> bool {
    let x = g.node(q).operands[0];
    let Some(op) = g.producer(x) else { return false };
    let kind = g.node(op).kind;
    let result = g.node(q).results[0];
    if !commutes_with_quantize(kind) || g.use_count(x) != 1 || g.ty(result).elem.quant().is_none_or(|p| p.axis.is_some()) {
        return false;
    }
    let input = g.node(op).operands[0];
    let quantized_input = match dequantized(g, input) {
        Some(inner) if g.ty(inner).elem == g.ty(result).elem => inner,
        // Other parameters, per tensor: the op reads a requantized copy (the quantize of the
        // dequantize, which `fold_pair` makes a requantize), exact for these monotone ops.
        Some(inner) if g.ty(inner).elem.quant().is_some_and(|p| p.axis.is_none()) => {
            let ty = g.ty(input).with_elem(g.ty(result).elem.clone());
            let mut nq = Node::new(OpKind::Quantize, vec![input], Default::default(), g.node(q).loc.clone());
            nq.span = None;
            let id = g.add_node(nq, vec![ty]);
            g.node(id).results[0]
        }
        Some(_) => return false,
        // A relu after conv/gemm/matmul stays where fuse-requant folds it into the clamp.
        None if kind == OpKind::Relu && g.producer(input).is_some_and(|p| g.node(p).kind.accepts_fused_activation()) => {
            return false;
        }
        None => {
            // Quantize the op's input instead (same parameters, the input's shape).
            let ty = g.ty(input).with_elem(g.ty(result).elem.clone());
            let mut nq = Node::new(OpKind::Quantize, vec![input], Default::default(), g.node(q).loc.clone());
            nq.span = None;
            let id = g.add_node(nq, vec![ty]);
            g.node(id).results[0]
        }
    };
    // The op now reads integers and produces the quantize's result value (keeping its name and uses).
    let mut moved = Node::new(kind, g.node(op).operands.clone(), g.node(op).attrs.clone(), g.node(op).loc.clone());
    moved.operands[0] = quantized_input;
    moved.results = vec![result];
    moved.loc.absorb(&g.node(q).loc);
    g.remove_node(q);
    g.remove_node(op);
    g.insert_node(moved);
    true
}

impl Pass for FoldQdq {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let mut changed = false;
        loop {
            let order = g.topo_order().map_err(|n| PassError::msg(format!("the graph has a cycle through {n}")))?;
            let mut step = false;
            for q in order {
                if !g.contains(q) || g.node(q).kind != OpKind::Quantize {
                    continue;
                }
                step |= fold_constant(g, q) || fold_pair(g, q) || sink_through(g, q);
            }
            if !step {
                break;
            }
            g.rebuild_edges();
            changed = true;
        }
        Ok(changed.into())
    }
}
