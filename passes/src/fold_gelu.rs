//! `fold-gelu` — approximating (f32 rounding only: `gelu` multiplies by 1/√2 where an export
//! may divide by √2).
//!
//! Recognizes GELU's exact form as exporters spell it, `x · 0.5 · (1 + erf(x / √2))`, and
//! replaces it with one `gelu`: the argument of `erf` may be `x / √2` or `x · (1/√2)`, the
//! halving may come first (`(x · 0.5) · (1 + erf(…))`) or last (`(x · (1 + erf(…))) · 0.5`), and
//! the operands of each `add` and `mul` may come in either order. The intermediate results must
//! have no other use.
//!
//! ```text
//! %t = div(%x, 1.4142135)
//! %e = erf(%t)
//! %a = add(%e, 1.0)                    →   %y = gelu(%x) {approximate = "none"}
//! %m = mul(%x, %a)
//! %y = mul(%m, 0.5)
//! ```
//!
//! Leaves alone: other constants, shared intermediates, anything not on f32.

use crate::rewrite::{collapse_into, single_use_producer as single_use, split_scalar as with_scalar};
use crate::{Changed, Pass, PassContext, PassError};
use qc_ir::{Attr, Attrs, Graph, NodeId, OpKind, ValueId};

/// The `fold-gelu` pass.
pub struct FoldGelu;

fn near(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * b.abs()
}

/// If `a` is `1 + erf(x / √2)` (single use), returns `x` and its ops.
fn one_plus_erf(g: &Graph, a: ValueId) -> Option<(ValueId, Vec<NodeId>)> {
    let add = single_use(g, a, OpKind::Add)?;
    let (e, one) = with_scalar(g, add)?;
    let erf = single_use(g, e, OpKind::Erf).filter(|_| one == 1.0)?;
    let t = g.node(erf).operands[0];
    let scale = g.producer(t).filter(|_| g.use_count(t) == 1)?;
    let (x, c) = with_scalar(g, scale)?;
    let ok = match g.node(scale).kind {
        OpKind::Div => near(c, std::f32::consts::SQRT_2),
        OpKind::Mul => near(c, std::f32::consts::FRAC_1_SQRT_2),
        _ => false,
    };
    ok.then(|| (x, vec![scale, erf, add]))
}

/// If `root` computes GELU of some `x`, returns `x` and the ops to absorb.
fn match_at(g: &Graph, root: NodeId) -> Option<(ValueId, Vec<NodeId>)> {
    let [p, q] = [g.node(root).operands[0], g.node(root).operands[1]];
    // (x · (1 + erf(x/√2))) · 0.5
    if let Some((m, half)) = with_scalar(g, root)
        && half == 0.5
        && let Some(mul) = single_use(g, m, OpKind::Mul)
    {
        let [a, b] = [g.node(mul).operands[0], g.node(mul).operands[1]];
        for (x, t) in [(a, b), (b, a)] {
            if let Some((y, mut ops)) = one_plus_erf(g, t)
                && y == x
            {
                ops.push(mul);
                return Some((x, ops));
            }
        }
    }
    // (x · 0.5) · (1 + erf(x/√2))
    for (h, t) in [(p, q), (q, p)] {
        let Some(half) = single_use(g, h, OpKind::Mul) else { continue };
        let Some((x, c)) = with_scalar(g, half) else { continue };
        if let Some((y, mut ops)) = one_plus_erf(g, t)
            && c == 0.5
            && y == x
        {
            ops.push(half);
            return Some((x, ops));
        }
    }
    None
}

impl Pass for FoldGelu {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let roots: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).kind == OpKind::Mul).collect();
        let mut changed = false;
        for root in roots {
            if !g.contains(root) || !g.ty(g.node(root).results[0]).elem.is_f32() {
                continue;
            }
            let Some((x, absorbed)) = match_at(g, root) else { continue };
            let attrs = Attrs::new().with("approximate", Attr::Str("none".into()));
            collapse_into(g, root, OpKind::Gelu, vec![x], attrs, absorbed);
            changed = true;
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
