//! `fuse-activation` — exact.
//!
//! Marks a `relu` or `clip` that follows an f32 `conv2d`, `gemm`, `matmul` or `add` as that op's fused
//! activation, when the op's result feeds nothing else. The activation's uses move to the op,
//! and the op's `loc` records the absorbed activation.
//!
//! ```text
//! %c = conv2d(%x, %w, %b) {...} loc("conv1")          %c = conv2d(%x, %w, %b) {activation = "relu", ...}
//! %r = relu(%c) loc("relu1")                      →        loc("conv1", fused = ["relu1"])
//! ```
//!
//! `clip` becomes `activation = "clip"` with its bounds as `clip_min` / `clip_max`.
//! Leaves alone: ops that already have an activation, results with other uses or that are
//! returned, and quantized ops (their activation is folded into the requantization clamp by
//! `fuse-requant`).

use crate::{Changed, Pass, PassContext, PassError};
use qc_ir::{Attr, Graph, NodeId, OpKind};

/// The `fuse-activation` pass.
pub struct FuseActivation;

impl Pass for FuseActivation {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let order = g.topo_order().map_err(|n| PassError::msg(format!("the graph has a cycle through {n}")))?;
        let mut changed = false;
        for act in order {
            if !g.contains(act) || !matches!(g.node(act).kind, OpKind::Relu | OpKind::Clip) {
                continue;
            }
            let x = g.node(act).operands[0];
            let Some(p) = g.producer(x) else { continue };
            let pn = g.node(p);
            if !pn.kind.accepts_fused_activation()
                || pn.attrs.get("activation").is_some()
                || !g.ty(x).elem.is_f32()
                || g.use_count(x) != 1
            {
                continue;
            }
            fuse(g, p, act);
            changed = true;
        }
        Ok(changed.into())
    }
}

fn fuse(g: &mut Graph, op: NodeId, act: NodeId) {
    let a = g.node(act).clone();
    let x = g.node(op).results[0];
    let attrs = &mut g.node_mut(op).attrs;
    if a.kind == OpKind::Relu {
        attrs.set("activation", Attr::Str("relu".into()));
    } else {
        attrs.set("activation", Attr::Str("clip".into()));
        for (from, to) in [("min", "clip_min"), ("max", "clip_max")] {
            if let Some(v) = a.attrs.get(from) {
                attrs.set(to, v.clone());
            }
        }
    }
    g.node_mut(op).loc.absorb(&a.loc);
    g.replace_all_uses(a.results[0], x);
    g.remove_node(act);
}
