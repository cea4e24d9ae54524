//! Small helpers the passes share for reading constants and adding new ones.

use qc_ir::{ConstValue, Graph, Loc, Node, NodeId, OpKind, ScalarType, Tensor, TensorType, ValueId};
use std::sync::Arc;

/// Constants of at most this many elements, and i64 constants (shapes, axes, indices), are
/// written inline as `dense<...>`; the others go to the weights file.
pub const INLINE_LIMIT: usize = 16;

/// The value of `v` if a `const` defines it and its data is at hand.
pub fn const_value(g: &Graph, v: ValueId) -> Option<Arc<Tensor>> {
    let p = g.producer_of_kind(v, OpKind::Const)?;
    match g.node(p).value.as_ref()? {
        ConstValue::Dense(t) => Some(Arc::new(t.clone())),
        ConstValue::Weight(name) => g.weights.get(name).cloned(),
    }
}

/// The f32 data of constant `v`, if it is one.
pub fn const_f32(g: &Graph, v: ValueId) -> Option<Vec<f32>> {
    const_value(g, v).and_then(|t| t.as_f32().map(|a| a.iter().copied().collect()))
}

/// Whether `t` is written inline rather than stored in the weights file.
pub fn is_inline(t: &Tensor) -> bool {
    t.len() <= INLINE_LIMIT || t.scalar_type() == ScalarType::I64
}

/// The const value a node with result `result` should hold for `t`: inline when small, else a new
/// weight named after `base` (made unique).
pub fn store_const(g: &mut Graph, base: &str, t: Tensor) -> ConstValue {
    if is_inline(&t) {
        ConstValue::Dense(t)
    } else {
        let name = g.unique_weight_name(base);
        g.weights.insert(name.clone(), t);
        ConstValue::Weight(name)
    }
}

/// Adds a `const` op holding `t` (of type `ty`), named after `base`; returns its value.
pub fn add_const(g: &mut Graph, base: &str, t: Tensor, ty: TensorType, loc: Loc) -> ValueId {
    let value = store_const(g, base, t);
    let mut node = Node::new(OpKind::Const, Vec::new(), Default::default(), loc);
    node.value = Some(value);
    let id = g.add_node(node, vec![ty]);
    let v = g.node(id).results[0];
    g.value_mut(v).name = Some(g.unique_name(base));
    v
}

/// A base name for tensors a pass derives from value `v`: its source location, else its name.
pub fn origin_name(g: &Graph, v: ValueId) -> String {
    if let Some(p) = g.producer(v) {
        let loc = &g.node(p).loc;
        if !loc.name.is_empty() {
            return loc.name.clone();
        }
    }
    g.value(v).name.clone().unwrap_or_else(|| format!("v{}", v.0))
}

/// The name of a tensor a pass derives from value `v` (`suffix` says how): `v`'s weight name or
/// value name with the suffix (`conv1.bias` → `conv1.bias.bn`), else `fallback` with it.
pub fn derived_name(g: &Graph, v: Option<ValueId>, fallback: &str, suffix: &str) -> String {
    let weight = v.and_then(|v| g.producer(v)).and_then(|p| match &g.node(p).value {
        Some(ConstValue::Weight(w)) => Some(w.clone()),
        _ => None,
    });
    let base = weight.or_else(|| v.and_then(|v| g.value(v).name.clone())).unwrap_or_else(|| fallback.to_string());
    format!("{base}.{suffix}")
}

/// The value of `v` when it is a constant f32 of one element.
pub fn const_scalar(g: &Graph, v: ValueId) -> Option<f32> {
    let t = const_value(g, v)?;
    let a = t.as_f32()?;
    (a.len() == 1).then(|| *a.iter().next().expect("one"))
}

/// The producer of `v` if it is a `kind` op and `v` has no other use.
pub fn single_use_producer(g: &Graph, v: ValueId, kind: OpKind) -> Option<NodeId> {
    g.producer_of_kind(v, kind).filter(|_| g.use_count(v) == 1)
}

/// A binary op's (non-constant operand, constant scalar), the scalar on either side (a `div`'s
/// must be its divisor).
pub fn split_scalar(g: &Graph, n: NodeId) -> Option<(ValueId, f32)> {
    let ops = &g.node(n).operands;
    match (const_scalar(g, ops[0]), const_scalar(g, ops[1])) {
        (None, Some(c)) => Some((ops[0], c)),
        (Some(c), None) if g.node(n).kind != OpKind::Div => Some((ops[1], c)),
        _ => None,
    }
}

/// Makes `root` a `kind` op on `operands` with `attrs`, absorbing the ops of `absorbed` (their
/// locations join its own; they are removed). The caller rebuilds the edges.
pub fn collapse_into(
    g: &mut Graph,
    root: NodeId,
    kind: OpKind,
    operands: Vec<ValueId>,
    attrs: qc_ir::Attrs,
    absorbed: Vec<NodeId>,
) {
    let mut loc = g.node(root).loc.clone();
    for &n in &absorbed {
        loc.absorb(&g.node(n).loc);
    }
    let node = g.node_mut(root);
    node.kind = kind;
    node.operands = operands;
    node.attrs = attrs;
    node.loc = loc;
    for n in absorbed {
        g.remove_node(n);
    }
}
