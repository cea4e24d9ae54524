//! `fold-layer-norm` — approximating (f32 rounding only: `layer_norm` multiplies by
//! `1 / sqrt(var + eps)` where the decomposed form divides).
//!
//! Recognizes the layer normalization exporters spell out op by op (opsets before 17, Paddle's
//! and older PyTorch exports) and replaces it with one `layer_norm`: the mean over the trailing
//! axes, its square deviation's mean plus epsilon, the deviation divided by its square root,
//! then an optional multiply by a constant scale and add of a constant bias (operands of `mul`
//! and `add` in either order). The intermediate results must have no other use.
//!
//! ```text
//! %m = reduce_mean(%x) {axes = [-1]}
//! %d = sub(%x, %m)
//! %p = pow(%d, 2.0)
//! %v = reduce_mean(%p) {axes = [-1]}
//! %e = add(%v, 1e-5)                          →   %y = layer_norm(%x, %g, %b) {axis = -1, epsilon = 1e-5}
//! %s = sqrt(%e)
//! %n = div(%d, %s)
//! %y = add(mul(%n, %g), %b)
//! ```
//!
//! Leaves alone: reductions over other than the trailing axes, a squared deviation spelled
//! `mul(d, d)`, a scale or bias that is not a constant of the normalized dims, anything not f32.

use crate::rewrite::{add_const, collapse_into, const_scalar as scalar, const_value};
use crate::{Changed, Pass, PassContext, PassError};
use qc_ir::{Attr, Attrs, Graph, NodeId, OpKind, Tensor, TensorType, ValueId};

/// The `fold-layer-norm` pass.
pub struct FoldLayerNorm;

/// The producer of `v` if it is a `kind` op whose result has only `uses` uses.
fn producer(g: &Graph, v: ValueId, kind: OpKind, uses: usize) -> Option<NodeId> {
    g.producer_of_kind(v, kind).filter(|_| g.use_count(v) == uses)
}

/// The first reduced axis of a `reduce_mean` over the trailing axes of its rank-`rank` operand
/// that keeps its dims; `None` for any other.
fn trailing_axis(g: &Graph, n: NodeId) -> Option<usize> {
    let node = g.node(n);
    let rank = g.ty(node.operands[0]).rank();
    let mut axes: Vec<usize> =
        node.attrs.ints("axes")?.iter().map(|&a| if a < 0 { a + rank as i64 } else { a } as usize).collect();
    axes.sort_unstable();
    let first = *axes.first()?;
    (node.attrs.bool("keepdims", true) && axes == (first..rank).collect::<Vec<_>>()).then_some(first)
}

/// The constant operand of `n` (the other operand being `x`) when it broadcasts to the dims from
/// `axis` on without dims of its own before them.
fn row_constant(g: &Graph, n: NodeId, x: ValueId, axis: usize) -> Option<ValueId> {
    let ops = &g.node(n).operands;
    let c = if ops[0] == x { ops[1] } else { ops[0] };
    let a = const_value(g, c)?.as_f32()?.clone();
    let dims: Vec<usize> = g.ty(x).dims[axis..].iter().map(|d| d.fixed().map(|n| n as usize)).collect::<Option<_>>()?;
    let fits = a.ndim() <= g.ty(x).rank() && a.shape().iter().rev().skip(dims.len()).all(|&d| d == 1);
    (fits && a.broadcast(ndarray::IxDyn(&dims)).is_some()).then_some(c)
}

/// What a match found: the input, the normalized axis, epsilon, the ops computing the
/// normalization (the last of them the root to replace) and the scale and bias.
struct Found {
    x: ValueId,
    axis: usize,
    eps: f32,
    absorbed: Vec<NodeId>,
    root: NodeId,
    scale: Option<ValueId>,
    bias: Option<ValueId>,
}

fn match_at(g: &Graph, div: NodeId) -> Option<Found> {
    let [d, s] = [g.node(div).operands[0], g.node(div).operands[1]];
    let sqrt = producer(g, s, OpKind::Sqrt, 1)?;
    let add = producer(g, g.node(sqrt).operands[0], OpKind::Add, 1)?;
    let [a0, a1] = [g.node(add).operands[0], g.node(add).operands[1]];
    let (v, eps) = match (scalar(g, a0), scalar(g, a1)) {
        (None, Some(e)) => (a0, e),
        (Some(e), None) => (a1, e),
        _ => return None,
    };
    let var = producer(g, v, OpKind::ReduceMean, 1)?;
    let pow = producer(g, g.node(var).operands[0], OpKind::Pow, 1)?;
    if g.node(pow).operands[0] != d || scalar(g, g.node(pow).operands[1]) != Some(2.0) {
        return None;
    }
    let sub = producer(g, d, OpKind::Sub, 2)?;
    let [x, m] = [g.node(sub).operands[0], g.node(sub).operands[1]];
    let mean = producer(g, m, OpKind::ReduceMean, 1)?;
    let axis = trailing_axis(g, mean)?;
    let fixed = g.ty(x).dims[axis..].iter().all(|d| d.fixed().is_some());
    if g.node(mean).operands[0] != x || trailing_axis(g, var) != Some(axis) || g.ty(x).dims != g.ty(d).dims || !fixed {
        return None;
    }
    let mut found = Found { x, axis, eps, absorbed: vec![mean, sub, pow, var, add, sqrt], root: div, scale: None, bias: None };
    // Then an optional scale, and an optional bias.
    let mut y = g.node(div).results[0];
    if let Some(mul) = g.uses(y).first().map(|&(n, _)| n).filter(|&n| g.node(n).kind == OpKind::Mul && g.use_count(y) == 1)
        && let Some(t) = row_constant(g, mul, y, axis)
    {
        found.absorbed.push(found.root);
        found.root = mul;
        found.scale = Some(t);
        y = g.node(mul).results[0];
    }
    if let Some(badd) = g.uses(y).first().map(|&(n, _)| n).filter(|&n| g.node(n).kind == OpKind::Add && g.use_count(y) == 1)
        && g.node(badd).attrs.str("activation").is_none()
        && let Some(t) = row_constant(g, badd, y, axis)
    {
        found.absorbed.push(found.root);
        found.root = badd;
        found.bias = Some(t);
    }
    g.ty(g.node(found.root).results[0]).elem.is_f32().then_some(found)
}

impl Pass for FoldLayerNorm {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let divs: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).kind == OpKind::Div).collect();
        let mut changed = false;
        for div in divs {
            if !g.contains(div) || !g.ty(g.node(div).results[0]).elem.is_f32() {
                continue;
            }
            let Some(f) = match_at(g, div) else { continue };
            let loc = g.node(f.root).loc.clone();
            let scale = match f.scale {
                Some(s) => s,
                None => {
                    let dims: Vec<u64> = g.ty(f.x).dims[f.axis..].iter().filter_map(|d| d.fixed()).collect();
                    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
                    let ones = Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&shape), 1.0));
                    let name = g.value(g.node(f.root).results[0]).name.clone().unwrap_or_else(|| "layer_norm".into());
                    add_const(g, &format!("{name}.scale"), ones, TensorType::new(&dims, qc_ir::ScalarType::F32), loc.clone())
                }
            };
            let operands = [vec![f.x, scale], f.bias.into_iter().collect()].concat();
            let rank = g.ty(f.x).rank() as i64;
            let attrs = Attrs::new().with("axis", Attr::Int(f.axis as i64 - rank)).with("epsilon", Attr::Float(f.eps));
            collapse_into(g, f.root, OpKind::LayerNorm, operands, attrs, f.absorbed);
            changed = true;
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
