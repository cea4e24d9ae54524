//! `fuse-matmul-add` — exact.
//!
//! Rewrites a 2-D `matmul` by a constant weight followed by the `add` of a constant bias vector
//! (how exporters write a linear layer as MatMul + Add) into one `gemm`, which computes the same
//! f32 operations in the same order and which `fuse-requant` turns into one integer op with an
//! i32 bias.
//!
//! ```text
//! %m = matmul(%x, %w) : tensor<?x128xf32>           →   %y = gemm(%x, %w, %b) : tensor<?x128xf32>
//! %y = add(%m, %b) : tensor<?x128xf32>                        loc("mm", fused = ["add"])
//! ```
//!
//! Leaves alone: batched (rank > 2) matmuls, non-constant weights or biases, biases that are not
//! a vector of the output width, and matmul results with other uses.

use crate::rewrite::const_value;
use crate::{Changed, Pass, PassContext, PassError};
use qc_ir::{Dim, Graph, NodeId, OpKind};

/// The `fuse-matmul-add` pass.
pub struct FuseMatmulAdd;

fn candidate(g: &Graph, add: NodeId) -> Option<(NodeId, usize)> {
    let node = g.node(add);
    if node.kind != OpKind::Add || node.attrs.get("activation").is_some() {
        return None;
    }
    for (mi, bi) in [(0, 1), (1, 0)] {
        let (m, b) = (node.operands[mi], node.operands[bi]);
        let Some(mm) = g.producer_of_kind(m, OpKind::MatMul) else { continue };
        let mn = g.node(mm);
        let (x, w) = (mn.operands[0], mn.operands[1]);
        let n = g.ty(m).dims.last().copied();
        let ok = g.use_count(m) == 1
            && mn.attrs.is_empty()
            && g.ty(x).rank() == 2
            && g.ty(w).rank() == 2
            && g.ty(m).elem.is_f32()
            && const_value(g, w).is_some()
            && const_value(g, b).is_some()
            && g.ty(b).rank() == 1
            && Some(g.ty(b).dims[0]) == n
            && n != Some(Dim::Dynamic);
        if ok {
            return Some((mm, bi));
        }
    }
    None
}

impl Pass for FuseMatmulAdd {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let adds: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).kind == OpKind::Add).collect();
        let mut changed = false;
        for add in adds {
            let Some((mm, bi)) = candidate(g, add) else { continue };
            let bias = g.node(add).operands[bi];
            let (x, w) = (g.node(mm).operands[0], g.node(mm).operands[1]);
            let add_loc = g.node(add).loc.clone();
            let mut loc = g.node(mm).loc.clone();
            loc.absorb(&add_loc);
            g.remove_node(mm);
            let n = g.node_mut(add);
            n.kind = OpKind::Gemm;
            n.operands = vec![x, w, bias];
            n.loc = loc;
            changed = true;
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
