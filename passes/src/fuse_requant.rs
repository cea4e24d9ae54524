//! `fuse-requant` — approximating by design: the fused op computes the integer semantics of
//! ARCHITECTURE.md (with f32 requantization, bit for bit what ONNX Runtime's integer kernels compute),
//! which may differ from the f32 simulation of the QDQ form it replaces by one quantization step
//! where the f32 sum rounds differently.
//!
//! Turns `dequantize → op → quantize` into one op on quantized operands:
//!
//! - conv2d / gemm / matmul with a per-tensor quantized input, a constant quantized weight
//!   (per-channel parameters on the output axis) and an optional constant i32 bias whose scale is
//!   `f32(s_x·s_w[c])`: `acc = bias + Σ(x − zp_x)(w − zp_w)` in i32, requantized (`--requant
//!   f32|q31`, recorded as `requant = "q31"`) into the quantize's type; a relu or clip between the
//!   op and the quantize (or a fused `activation`) becomes the requantization clamp;
//! - add, mul (ONNX Runtime's QLinearMul), avg_pool, global_avg_pool, reduce_mean, concat, and the lookup-table activations
//!   (sigmoid, hard_sigmoid, hard_swish, clip) whose operands are all dequantized.
//!
//! ```text
//! %x = dequantize(%xq) : tensor<?x1x8x8xf32>
//! %w = dequantize(%wq) : tensor<16x1x3x3xf32>               %c = conv2d(%xq, %wq, %bq) {pads = [1, 1, 1, 1]}
//! %b = dequantize(%bq) : tensor<16xf32>                  →       : tensor<?x16x8x8x!q<u8, 0.0133, 0>>
//! %y = conv2d(%x, %w, %b) {pads = [1, 1, 1, 1]} : ...
//! %c = quantize(%y) : tensor<?x16x8x8x!q<u8, 0.0133, 0>>
//! ```
//!
//! Leaves alone, with the reason [`explain`] gives (the fusion report prints it): ops whose
//! operands are not all dequantized, non-constant weights, weights quantized along another axis,
//! biases whose scale is not `f32(s_x·s_w)`, gemm with alpha or beta other than 1, results read by
//! more than the quantize. Run `fold-qdq` first; the dequantizes left unread go in `dead-code`.

use crate::fold_qdq::dequantized;
use crate::{Changed, Pass, PassContext, PassError, PassOptions};
use qc_ir::eval::weight_output_axis;
use qc_ir::requant::{RequantMode, acc_scale};
use qc_ir::{Attr, Attrs, Graph, Loc, Node, NodeId, OpKind, ValueId};

/// The `fuse-requant` pass.
pub struct FuseRequant {
    /// How fused ops requantize.
    pub mode: RequantMode,
}

impl FuseRequant {
    /// The pass with its options.
    pub fn new(opts: &PassOptions) -> FuseRequant {
        FuseRequant { mode: opts.requant }
    }
}

/// Whether `kind` on quantized operands has an integer kernel (data movement aside).
pub fn has_integer_form(kind: OpKind) -> bool {
    matches!(
        kind,
        OpKind::Conv2d
            | OpKind::Gemm
            | OpKind::MatMul
            | OpKind::Add
            | OpKind::Mul
            | OpKind::AvgPool
            | OpKind::GlobalAvgPool
            | OpKind::ReduceMean
            | OpKind::Concat
            | OpKind::Sigmoid
            | OpKind::HardSigmoid
            | OpKind::HardSwish
            | OpKind::Clip
    )
}

/// What a fusion would produce: the op, its quantized operands, attributes, and absorbed locs.
struct Fusion {
    kind: OpKind,
    operands: Vec<ValueId>,
    attrs: Attrs,
    absorbed: Vec<NodeId>,
}

fn is_const(g: &Graph, v: ValueId) -> bool {
    g.producer_of_kind(v, OpKind::Const).is_some()
}

/// Why `op` (an f32 op feeding a quantize through `absorbed`) cannot become an integer op, or the
/// fusion.
fn plan(g: &Graph, op: NodeId, mut attrs: Attrs, absorbed: Vec<NodeId>) -> Result<Fusion, String> {
    let node = g.node(op);
    let kind = node.kind;
    if !has_integer_form(kind) {
        return Err(format!("{kind} has no integer form"));
    }
    let deq: Vec<Option<ValueId>> = node.operands.iter().map(|&o| dequantized(g, o)).collect();
    if let Some(i) = deq.iter().position(Option::is_none) {
        return Err(format!("operand {} ({}) is not dequantized from integers", i, g.display_value(node.operands[i])));
    }
    let q: Vec<ValueId> = deq.into_iter().map(|v| v.expect("checked")).collect();
    let per_tensor = |v: ValueId| g.ty(v).elem.quant().is_some_and(|p| p.axis.is_none());
    match kind {
        OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul => {
            if !per_tensor(q[0]) {
                return Err("the input is quantized per axis; integer kernels take per-tensor activations".into());
            }
            if !is_const(g, q[1]) {
                return Err("the weight is not a constant".into());
            }
            let (xq, wq) = (g.ty(q[0]).elem.quant().expect("quantized"), g.ty(q[1]).elem.quant().expect("quantized"));
            let w_axis = weight_output_axis(kind, &node.attrs, g.ty(q[1]).rank());
            if let Some(a) = wq.axis.filter(|&a| a != w_axis) {
                return Err(format!("the weight is quantized along axis {a}, not its output axis {w_axis}"));
            }
            if kind == OpKind::Gemm && (node.attrs.float("alpha", 1.0) != 1.0 || node.attrs.float("beta", 1.0) != 1.0) {
                return Err("gemm has alpha or beta other than 1".into());
            }
            if let Some(&b) = q.get(2) {
                let bq = g.ty(b).elem.quant().expect("quantized");
                if !is_const(g, b) || bq.storage != qc_ir::ScalarType::I32 || bq.zero_points.iter().any(|&z| z != 0) {
                    return Err("the bias is not a constant i32 with zero point 0".into());
                }
                let n = g.ty(q[1]).dims[w_axis].fixed().unwrap_or(1) as usize;
                for c in 0..n {
                    let want = acc_scale(xq.at(0).0, wq.at(c).0);
                    if bq.at(c).0.to_bits() != want.to_bits() {
                        return Err(format!("the bias scale of channel {c} is {}, not f32(s_x·s_w) = {want}", bq.at(c).0));
                    }
                }
            }
        }
        OpKind::Add | OpKind::Mul | OpKind::AvgPool | OpKind::GlobalAvgPool | OpKind::ReduceMean | OpKind::Concat => {
            if let Some(&v) = q.iter().find(|&&v| !per_tensor(v)) {
                return Err(format!("{} is quantized per axis", g.display_value(v)));
            }
        }
        OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish | OpKind::Clip => {
            if !per_tensor(q[0]) {
                return Err("the operand is quantized per axis".into());
            }
        }
        _ => unreachable!("checked above"),
    }
    for (k, v) in &node.attrs.0 {
        attrs.0.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Ok(Fusion { kind, operands: q, attrs, absorbed })
}

/// For a quantize node: the op it would fuse with and the activation between them.
fn producer_chain(g: &Graph, quantize: NodeId) -> Result<(NodeId, Attrs, Vec<NodeId>), String> {
    let x = g.node(quantize).operands[0];
    let Some(p) = g.producer(x) else { return Err("it quantizes a function input".into()) };
    if g.use_count(x) != 1 {
        return Err(format!("{} is also read by other ops", g.display_value(x)));
    }
    let pn = g.node(p);
    if matches!(pn.kind, OpKind::Relu | OpKind::Clip) {
        let inner = pn.operands[0];
        if let Some(k) = g.producer(inner).filter(|&k| g.node(k).kind.accepts_fused_activation())
            && g.use_count(inner) == 1
            && g.node(k).attrs.get("activation").is_none()
        {
            let mut a = Attrs::new();
            if pn.kind == OpKind::Relu {
                a.set("activation", Attr::Str("relu".into()));
            } else {
                a.set("activation", Attr::Str("clip".into()));
                for (from, to) in [("min", "clip_min"), ("max", "clip_max")] {
                    if let Some(v) = pn.attrs.get(from) {
                        a.set(to, v.clone());
                    }
                }
            }
            return Ok((k, a, vec![p]));
        }
    }
    Ok((p, Attrs::new(), vec![]))
}

/// Why the f32 op `op` was not fused into an integer op, when it was not.
pub fn explain(g: &Graph, op: NodeId) -> String {
    let node = g.node(op);
    let result = node.results[0];
    let uses = g.uses(result);
    let quantize = match uses.as_slice() {
        [(u, _)] if g.node(*u).kind == OpKind::Quantize => *u,
        [(u, _)] if matches!(g.node(*u).kind, OpKind::Relu | OpKind::Clip) => match g.uses(g.node(*u).results[0]).as_slice() {
            [(q, _)] if g.node(*q).kind == OpKind::Quantize => *q,
            _ => return "its result is not quantized".into(),
        },
        [] if g.is_output(result) => return "its result is a model output in f32".into(),
        [] => return "its result is unused".into(),
        [_] => return "its result is not quantized".into(),
        _ => return "its result is read by several ops".into(),
    };
    match producer_chain(g, quantize).and_then(|(p, a, abs)| plan(g, p, a, abs)) {
        Ok(_) => "it can be fused: run fuse-requant".into(),
        Err(e) => e,
    }
}

impl Pass for FuseRequant {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let order = g.topo_order().map_err(|n| PassError::msg(format!("the graph has a cycle through {n}")))?;
        let mut changed = false;
        for quantize in order {
            if !g.contains(quantize) || g.node(quantize).kind != OpKind::Quantize {
                continue;
            }
            let Ok((op, act, absorbed)) = producer_chain(g, quantize) else { continue };
            let Ok(mut f) = plan(g, op, act, absorbed) else { continue };
            if self.mode == RequantMode::Q31
                && matches!(
                    f.kind,
                    OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul | OpKind::AvgPool | OpKind::GlobalAvgPool | OpKind::ReduceMean
                )
            {
                f.attrs.set("requant", Attr::Str("q31".into()));
            }
            let result = g.node(quantize).results[0];
            let mut loc: Loc = g.node(op).loc.clone();
            for &n in &f.absorbed {
                loc.absorb(&g.node(n).loc);
            }
            loc.absorb(&g.node(quantize).loc);
            let mut fused = Node::new(f.kind, f.operands, f.attrs, loc);
            fused.results = vec![result];
            g.remove_node(quantize);
            for n in f.absorbed {
                g.remove_node(n);
            }
            g.remove_node(op);
            g.insert_node(fused);
            changed = true;
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
