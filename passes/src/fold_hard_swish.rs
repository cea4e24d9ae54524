//! `fold-hard-swish` — approximating (f32 rounding only: within 1e-6 relative).
//!
//! Recognizes the ways exporters spell hard-swish and replaces them with one `hard_swish`:
//! `x * clip(x + 3, 0, 6) / 6` (the division may be a multiplication by 1/6, and the operands of
//! `add` and `mul` may come in either order) and `x * hard_sigmoid(x)` with alpha 1/6 and beta
//! 0.5. The intermediate results must have no other use.
//!
//! ```text
//! %a = add(%x, %three) : ...
//! %c = clip(%a) {max = 6.0, min = 0.0} : ...      →   %y = hard_swish(%x) : ... loc("div", fused = [...])
//! %m = mul(%x, %c) : ...
//! %y = div(%m, %six) : ...
//! ```
//!
//! Leaves alone: other constants (e.g. `clip(x + 3, 0, 5)`), shared intermediates, and
//! anything not on f32.

use crate::rewrite::const_value;
use crate::{Changed, Pass, PassContext, PassError};
use qc_ir::{Graph, NodeId, OpKind, ValueId};

/// The `fold-hard-swish` pass.
pub struct FoldHardSwish;

fn scalar(g: &Graph, v: ValueId) -> Option<f32> {
    let t = const_value(g, v)?;
    let a = t.as_f32()?;
    (a.len() == 1).then(|| *a.iter().next().expect("one"))
}

/// The single-use producer of `v` if it is a `kind` op.
fn single_use(g: &Graph, v: ValueId, kind: OpKind) -> Option<NodeId> {
    g.producer_of_kind(v, kind).filter(|_| g.use_count(v) == 1)
}

/// Splits a binary op's operands into (the non-constant one, the constant scalar).
fn with_scalar(g: &Graph, n: NodeId) -> Option<(ValueId, f32)> {
    let ops = &g.node(n).operands;
    match (scalar(g, ops[0]), scalar(g, ops[1])) {
        (None, Some(c)) => Some((ops[0], c)),
        (Some(c), None) if g.node(n).kind != OpKind::Div => Some((ops[1], c)),
        _ => None,
    }
}

/// If `root` computes hard-swish of some `x`, returns `x` and the ops to absorb.
fn match_at(g: &Graph, root: NodeId) -> Option<(ValueId, Vec<NodeId>)> {
    let node = g.node(root);
    // x * hard_sigmoid(x) with alpha 1/6, beta 0.5.
    if node.kind == OpKind::Mul {
        let [p, q] = [node.operands[0], node.operands[1]];
        for (x, h) in [(p, q), (q, p)] {
            if let Some(hs) = single_use(g, h, OpKind::HardSigmoid) {
                let a = &g.node(hs).attrs;
                if g.node(hs).operands[0] == x && a.float("alpha", 0.2) == 1.0 / 6.0 && a.float("beta", 0.5) == 0.5 {
                    return Some((x, vec![hs]));
                }
            }
        }
    }
    // (x * clip(x + 3, 0, 6)) / 6, or * (1/6).
    let (m, c) = with_scalar(g, root)?;
    let ok = match node.kind {
        OpKind::Div => c == 6.0,
        OpKind::Mul => c == 1.0 / 6.0,
        _ => false,
    };
    if !ok {
        return None;
    }
    let mul = single_use(g, m, OpKind::Mul)?;
    let [p, q] = [g.node(mul).operands[0], g.node(mul).operands[1]];
    for (x, cl) in [(p, q), (q, p)] {
        let Some(clip) = single_use(g, cl, OpKind::Clip) else { continue };
        let a = &g.node(clip).attrs;
        if a.float("min", f32::NEG_INFINITY) != 0.0 || a.float("max", f32::INFINITY) != 6.0 {
            continue;
        }
        let Some(add) = single_use(g, g.node(clip).operands[0], OpKind::Add) else { continue };
        if with_scalar(g, add) == Some((x, 3.0)) {
            return Some((x, vec![add, clip, mul]));
        }
    }
    None
}

impl Pass for FoldHardSwish {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let roots: Vec<NodeId> = g.node_ids().filter(|&n| matches!(g.node(n).kind, OpKind::Div | OpKind::Mul)).collect();
        let mut changed = false;
        for root in roots {
            if !g.contains(root) || !g.ty(g.node(root).results[0]).elem.is_f32() {
                continue;
            }
            let Some((x, absorbed)) = match_at(g, root) else { continue };
            let mut loc = g.node(root).loc.clone();
            for &n in &absorbed {
                loc.absorb(&g.node(n).loc);
            }
            let node = g.node_mut(root);
            node.kind = OpKind::HardSwish;
            node.operands = vec![x];
            node.attrs = Default::default();
            node.loc = loc;
            for n in absorbed {
                g.remove_node(n);
            }
            changed = true;
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
