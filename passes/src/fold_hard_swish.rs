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

use crate::rewrite::{collapse_into, single_use_producer as single_use, split_scalar as with_scalar};
use crate::{Changed, Pass, PassContext, PassError};
use qc_ir::{Graph, NodeId, OpKind, ValueId};

/// The `fold-hard-swish` pass.
pub struct FoldHardSwish;

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
            collapse_into(g, root, OpKind::HardSwish, vec![x], Default::default(), absorbed);
            changed = true;
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
