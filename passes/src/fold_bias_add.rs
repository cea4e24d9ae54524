//! `fold-bias-add` — approximating (f32 rounding only: outputs agree within 1e-5 relative).
//!
//! Folds the `add` of a per-channel constant into the bias of the `conv2d` or `gemm` before it:
//! how exporters write a convolution without bias followed by `Add` of a reshaped vector, and
//! what a batch norm that could not fold into its producer leaves behind. The constant may have
//! any shape that broadcasts along the channel axis only (a conv's axis 1: `[C, 1, 1]`,
//! `[1, C, 1, 1]`, `[1]`, ...; a gemm's last axis: `[N]`, `[1, N]`); it is added to the op's bias
//! (0 without one; a gemm's `beta` is folded in). A fused activation on the add moves to the op.
//! The new bias is named after the old one, else after the op (`conv1.bias.add`); the result
//! keeps the add's value (and so its name).
//!
//! ```text
//! %c = conv2d(%x, %w) loc("conv1")                       %y = conv2d(%x, %w, %conv1.bias.add)
//! %k = const dense<...> : tensor<1x16x1x1xf32>      →        loc("conv1", fused = ["add1"])
//! %y = add(%c, %k) loc("add1")
//! ```
//!
//! Leaves alone: ops that are not f32, have a fused activation, or whose result has other uses;
//! constants that vary along another axis; gemms whose bias is not a constant vector.
//! Precondition: none beyond a verified graph; the old constants are left for `dead-code`.

use crate::rewrite::{add_const, const_f32, derived_name, origin_name};
use crate::{Changed, Pass, PassContext, PassError};
use ndarray::{ArrayD, IxDyn};
use qc_ir::{Graph, NodeId, OpKind, Tensor, TensorType, ValueId};

/// The `fold-bias-add` pass.
pub struct FoldBiasAdd;

/// The attributes of a fused activation.
const ACTIVATION: [&str; 3] = ["activation", "clip_min", "clip_max"];

/// A matching add: the producer, its result, and the per-channel values of the constant.
struct Match {
    op: NodeId,
    x: ValueId,
    add_values: Vec<f32>,
}

/// The constant's value per channel, when `k` is a constant that broadcasts to a result of
/// dims `out` along axis `axis` only.
fn per_channel(g: &Graph, k: ValueId, out: &[u64], axis: usize) -> Option<Vec<f32>> {
    let data = const_f32(g, k)?;
    let dims = g.ty(k).fixed_dims()?;
    if dims.len() > out.len() {
        return None;
    }
    let c = out[axis] as usize;
    // Right-aligned against the result's dims, as broadcasting reads them.
    let padded: Vec<usize> = std::iter::repeat_n(1, out.len() - dims.len()).chain(dims.iter().copied()).collect();
    let along = padded[axis];
    let others_one = padded.iter().enumerate().all(|(i, &d)| i == axis || d == 1);
    match along {
        _ if !others_one => None,
        1 => Some(vec![data[0]; c]),
        n if n == c => Some(data),
        _ => None,
    }
}

fn candidate(g: &Graph, add: NodeId) -> Option<Match> {
    let node = g.node(add);
    if node.kind != OpKind::Add || node.operands.len() != 2 {
        return None;
    }
    for (xi, ki) in [(0, 1), (1, 0)] {
        let (x, k) = (node.operands[xi], node.operands[ki]);
        let Some(op) = g.producer(x) else { continue };
        let on = g.node(op);
        let out = g.ty(x);
        let axis = match on.kind {
            OpKind::Conv2d if out.rank() == 4 => 1,
            OpKind::Gemm if out.rank() == 2 => 1,
            _ => continue,
        };
        let fits = out.elem.is_f32()
            && g.ty(node.results[0]).dims == out.dims
            && g.use_count(x) == 1
            && ACTIVATION.iter().all(|a| on.attrs.get(a).is_none());
        let Some(dims) = out.dims.iter().map(|d| d.fixed()).collect::<Option<Vec<u64>>>().or_else(|| {
            // The batch may be dynamic; only the channel axis must be known.
            out.dims[axis].fixed().map(|c| out.dims.iter().enumerate().map(|(i, _)| if i == axis { c } else { 1 }).collect())
        }) else {
            continue;
        };
        if !fits {
            continue;
        }
        if let Some(add_values) = per_channel(g, k, &dims, axis) {
            return Some(Match { op, x, add_values });
        }
    }
    None
}

/// The op's bias per channel with the constant added, or `None` when its bias does not fold.
fn folded_bias(g: &Graph, m: &Match) -> Option<Vec<f32>> {
    let on = g.node(m.op);
    let c = m.add_values.len();
    let beta = if on.kind == OpKind::Gemm { on.attrs.float("beta", 1.0) } else { 1.0 };
    let bias = match on.operands.get(2) {
        None => vec![0.0; c],
        Some(&b) => match (const_f32(g, b), g.ty(b).fixed_dims()) {
            // A conv's bias is [C]; a gemm's C may be [N] or [1, N] (not a matrix).
            (Some(v), Some(d)) if v.len() == c && d.iter().rev().skip(1).all(|&n| n == 1) => v,
            _ => return None,
        },
    };
    Some(bias.iter().zip(&m.add_values).map(|(b, k)| beta * b + k).collect())
}

impl Pass for FoldBiasAdd {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let adds: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).kind == OpKind::Add).collect();
        let mut changed = false;
        for add in adds {
            let Some(m) = candidate(g, add) else { continue };
            let Some(bias) = folded_bias(g, &m) else { continue };
            let c = bias.len();
            let name = derived_name(g, g.node(m.op).operands.get(2).copied(), &format!("{}.bias", origin_name(g, m.x)), "add");
            let loc = g.node(m.op).loc.clone();
            let tensor = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[c]), bias).expect("sized"));
            let b = add_const(g, &name, tensor, TensorType::new(&[c as u64], qc_ir::ScalarType::F32), loc);
            // The add becomes the op, so that its result (a model output, perhaps) keeps its name.
            let mut op = g.node(m.op).clone();
            let add_node = g.node(add);
            op.attrs.0.remove("beta");
            for a in ACTIVATION {
                if let Some(v) = add_node.attrs.get(a) {
                    op.attrs.set(a, v.clone());
                }
            }
            op.loc.absorb(&add_node.loc);
            g.remove_node(m.op);
            let n = g.node_mut(add);
            n.kind = op.kind;
            n.operands = vec![op.operands[0], op.operands[1], b];
            n.attrs = op.attrs;
            n.loc = op.loc;
            changed = true;
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
