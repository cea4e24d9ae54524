//! `equalize` — exact in real arithmetic (outputs agree within f32 rounding); it changes how well
//! the weights quantize.
//!
//! Cross-layer equalization (Nagel et al., data-free quantization) of f32 layer pairs
//! `L1 → (relu | max_pool)* → L2`, where L1 is a conv2d (groups 1 or depthwise), gemm or 2-D
//! matmul, L2 a conv2d (groups 1), gemm or matmul reading L1's channels on axis 1, every value in
//! between used once, and L1's fused activation (if any) a relu. ReLU and max pooling commute
//! with a positive per-channel scale, so dividing L1's output channel `c` (weights and bias) by
//! `s_c` and multiplying L2's input channel `c` by `s_c` computes the same function:
//!
//! - CLE: `s_c = √(r1_c / r2_c)` with `r1_c = max|W1[c]|`, `r2_c = max|W2[:, c]|`, so that both
//!   become `√(r1_c · r2_c)` — per-tensor weight scales then waste no range on small channels;
//! - SmoothQuant (`--smooth-alpha α`, for pairs whose L2 is a gemm or matmul, with `--calib`):
//!   `s_c = max|x_c|^α / max|W2[:, c]|^(1−α)` from the calibration samples' activations `x` at L2's
//!   input, migrating activation outliers into the weights.
//!
//! - SmoothQuant through a `layer_norm` (with `--smooth-alpha`): for a layer_norm over the last
//!   axis read by gemms or matmuls by a constant weight (a transformer's Q, K, V or first MLP
//!   layer), `s_c = max|x_c|^α / max|W[c, :]|^(1−α)`, `W` those consumers' weights together;
//!   each consumer's input channel `c` is multiplied by `s_c`, and the layer_norm's scale and
//!   bias divided by it — or, when something else reads the layer_norm too (a post-norm
//!   encoder's residual add), a `mul` by `1 / s_c` feeds the consumers alone.
//!
//! Sweeps repeat until no scale moves by more than 0.1 % (at most 20). A model with no such pair,
//! or whose pairs are already balanced, is left unchanged.
//!
//! ```text
//! %a = conv2d(%x, %w1, %b1) {activation = "relu"}     %a = conv2d(%x, %w1.eq, %b1.eq) {activation = "relu"}
//! %b = conv2d(%a, %w2, %b2)                       →   %b = conv2d(%a, %w2.eq, %b2)
//! ```

use crate::channel_flow::{Rule, rule};
use crate::rewrite::{add_const, const_value};
use crate::{Changed, Pass, PassContext, PassError, PassOptions};
use ndarray::Axis;
use qc_ir::eval::evaluate_observed;
use qc_ir::{Attr, Graph, NodeId, OpKind, Tensor, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// The `equalize` pass.
pub struct Equalize {
    alpha: Option<f32>,
    samples: Option<Arc<Tensor>>,
    /// The samples of the model's other inputs.
    rest: Vec<Arc<Tensor>>,
}

impl Equalize {
    /// The pass with its options.
    pub fn new(o: &PassOptions) -> Equalize {
        Equalize { alpha: o.smooth_alpha, samples: o.calibration.clone(), rest: o.calibration_rest.clone() }
    }
}

/// A pair: L1, L2, and the value L2 reads.
struct Pair {
    first: NodeId,
    second: NodeId,
    input: ValueId,
}

fn pairs(g: &Graph) -> Vec<Pair> {
    let mut out = Vec::new();
    for n in g.topo_order().unwrap_or_default() {
        let node = g.node(n);
        let layer = matches!(rule(g, n), Rule::Layer { .. });
        let depthwise = node.kind == OpKind::Conv2d && matches!(rule(g, n), Rule::Through(_));
        let act_ok = match node.attrs.get("activation") {
            None => true,
            Some(Attr::Str(a)) => a == "relu",
            _ => false,
        };
        if !(layer || depthwise) || !act_ok || g.ty(node.results[0]).rank() < 2 {
            continue;
        }
        let mut v = node.results[0];
        loop {
            if g.is_output(v) {
                break;
            }
            let uses = g.uses(v);
            let [(u, 0)] = uses.as_slice() else { break };
            let un = g.node(*u);
            match un.kind {
                OpKind::Relu | OpKind::MaxPool => v = un.results[0],
                OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul if matches!(rule(g, *u), Rule::Layer { .. }) => {
                    out.push(Pair { first: n, second: *u, input: v });
                    break;
                }
                _ => break,
            }
        }
    }
    out
}

/// L1's output-channel weight axis and L2's input-channel axis.
fn axes(g: &Graph, p: &Pair) -> (usize, usize) {
    let out = match rule(g, p.first) {
        Rule::Layer { out_axis, .. } => out_axis,
        _ => 0, // depthwise: OIHW, axis 0
    };
    let Rule::Layer { in_axis, .. } = rule(g, p.second) else { unreachable!("pairs end in layers") };
    (out, in_axis)
}

fn ranges(t: &Tensor, axis: usize) -> Vec<f32> {
    t.as_f32().expect("f32 weights").axis_iter(Axis(axis)).map(|c| c.iter().fold(0f32, |m, v| m.max(v.abs()))).collect()
}

fn scaled(t: &Tensor, axis: usize, s: &[f32], divide: bool) -> Tensor {
    let mut a = t.as_f32().expect("f32 weights").clone();
    for (c, mut lane) in a.axis_iter_mut(Axis(axis)).enumerate() {
        let f = if divide { 1.0 / s[c] } else { s[c] };
        lane.mapv_inplace(|v| v * f);
    }
    Tensor::F32(a)
}

fn replace(g: &mut Graph, n: NodeId, i: usize, t: Tensor) {
    let v = g.node(n).operands[i];
    let base = match g.producer(v).and_then(|p| g.node(p).value.clone()) {
        Some(qc_ir::ConstValue::Weight(w)) => format!("{w}.eq"),
        _ => format!("{}.eq", crate::rewrite::origin_name(g, v)),
    };
    let ty = g.ty(v).clone();
    let loc = g.node(n).loc.clone();
    let nv = add_const(g, &base, t, ty, loc);
    g.set_operand(n, i, nv);
}

impl Pass for Equalize {
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<Changed, PassError> {
        let notes = &mut cx.notes;
        // Activation ranges for SmoothQuant: max |x_c| at each gemm/matmul pair's input.
        let mut act: HashMap<ValueId, Vec<f32>> = HashMap::new();
        if let Some(alpha) = self.alpha {
            if !(0.0..=1.0).contains(&alpha) {
                return Err(PassError::msg(format!("--smooth-alpha must lie in [0, 1], got {alpha}")));
            }
            let samples = self.samples.as_ref().ok_or_else(|| PassError::msg("--smooth-alpha needs --calib"))?;
            let wanted: Vec<ValueId> =
                pairs(g).iter().filter(|p| g.node(p.second).kind != OpKind::Conv2d).map(|p| p.input).collect();
            for b in crate::samples::input_batches(g, samples, &self.rest).map_err(PassError::msg)? {
                evaluate_observed(g, &b, |v, t| {
                    if wanted.contains(&v)
                        && let Some(a) = t.as_f32()
                    {
                        let r = ranges(t, 1);
                        let e = act.entry(v).or_insert_with(|| vec![0.0; a.shape()[1]]);
                        for (m, x) in e.iter_mut().zip(r) {
                            *m = m.max(x);
                        }
                    }
                })
                .map_err(|e| PassError::msg(e.to_string()))?;
            }
        }
        if let Some(alpha) = self.alpha {
            for (ln, consumers, s) in smooth_layer_norms(g, &act_ln(g, self.samples.as_ref(), &self.rest)?, alpha) {
                let (lo, hi) = s.iter().fold((f32::INFINITY, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
                let layers = if consumers.len() == 1 { "1 layer".to_string() } else { format!("{} layers", consumers.len()) };
                notes.push(format!("{} → {layers}: smoothed, channel scales in [{lo:.4}, {hi:.4}]", g.node(ln).loc.name));
            }
        }
        // Each pair's accumulated scale per channel.
        let mut total: HashMap<(NodeId, NodeId), Vec<f32>> = HashMap::new();
        let mut smoothed: Vec<ValueId> = Vec::new();
        for _sweep in 0..20 {
            let mut moved = false;
            for p in pairs(g) {
                if smoothed.contains(&p.input) {
                    continue;
                }
                let (oa, ia) = axes(g, &p);
                let w1 = const_value(g, g.node(p.first).operands[1]).expect("a constant weight");
                let w2 = const_value(g, g.node(p.second).operands[1]).expect("a constant weight");
                let (r1, r2) = (ranges(&w1, oa), ranges(&w2, ia));
                let smooth = act.get(&p.input).filter(|_| g.node(p.second).kind != OpKind::Conv2d);
                let s: Vec<f32> = (0..r1.len().min(r2.len()))
                    .map(|c| {
                        let s = match (smooth, self.alpha) {
                            (Some(a), Some(alpha)) => a[c].powf(alpha) / r2[c].powf(1.0 - alpha),
                            _ => (r1[c] / r2[c]).sqrt(),
                        };
                        if s.is_finite() && s > 0.0 { s } else { 1.0 }
                    })
                    .collect();
                if s.iter().all(|&x| (x - 1.0).abs() < 1e-3) {
                    continue;
                }
                moved = true;
                let e = total.entry((p.first, p.second)).or_insert_with(|| vec![1.0; s.len()]);
                for (t, &x) in e.iter_mut().zip(&s) {
                    *t *= x;
                }
                replace(g, p.first, 1, scaled(&w1, oa, &s, true));
                if let Some(&b) = g.node(p.first).operands.get(2) {
                    let bt = const_value(g, b).expect("a constant bias");
                    let axis = g.ty(b).rank().saturating_sub(1);
                    if bt.shape().get(axis) == Some(&s.len()) {
                        replace(g, p.first, 2, scaled(&bt, axis, &s, true));
                    }
                }
                replace(g, p.second, 1, scaled(&w2, ia, &s, false));
                // SmoothQuant scales once, from the measured activations.
                if smooth.is_some() {
                    smoothed.push(p.input);
                }
            }
            if !moved {
                break;
            }
        }
        let mut changed = !notes.is_empty();
        for ((a, b), s) in total {
            let name = |n: NodeId| g.node(n).loc.name.clone();
            let (lo, hi) = s.iter().fold((f32::INFINITY, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
            let how = if smoothed.iter().any(|&v| g.producer(v).is_some())
                && g.node(b).kind != OpKind::Conv2d
                && self.alpha.is_some()
            {
                "smoothed"
            } else {
                "equalized"
            };
            notes.push(format!("{} → {}: {how}, channel scales in [{lo:.4}, {hi:.4}]", name(a), name(b)));
            changed = true;
        }
        notes.sort();
        Ok(changed.into())
    }
}

/// A layer_norm over the last axis read by gemms or matmuls by a constant weight, with those
/// consumers, the weight axis each reads the channels on, and whether anything else reads it
/// too (a post-norm transformer's residual add).
fn layer_norm_groups(g: &Graph) -> Vec<(NodeId, Vec<(NodeId, usize)>, bool)> {
    let mut out = Vec::new();
    for n in g.node_ids() {
        let node = g.node(n);
        let y = node.results[0];
        let last = g.ty(y).rank().checked_sub(1);
        let over_last = last.is_some_and(|l| qc_ir::infer::normalize_axis(node.attrs.int("axis", -1), l + 1) == Ok(l));
        if node.kind != OpKind::LayerNorm || !over_last || node.operands.iter().skip(1).any(|&c| const_value(g, c).is_none()) {
            continue;
        }
        let uses = g.uses(y);
        let consumers: Vec<(NodeId, usize)> = uses
            .iter()
            .filter_map(|&(u, slot)| {
                let c = g.node(u);
                let w = c.operands.get(1).filter(|_| slot == 0).and_then(|&w| const_value(g, w))?;
                let axis = match c.kind {
                    OpKind::MatMul => 0,
                    OpKind::Gemm if !c.attrs.bool("trans_a", false) => usize::from(c.attrs.bool("trans_b", false)),
                    _ => return None,
                };
                (w.shape().len() == 2 && g.ty(c.results[0]).elem.is_f32()).then_some((u, axis))
            })
            .collect();
        let shared = consumers.len() < uses.len() || g.is_output(y);
        if !consumers.is_empty() {
            out.push((n, consumers, shared));
        }
    }
    out
}

/// max |x_c| over the calibration samples of each smoothable layer_norm's result.
fn act_ln(g: &Graph, samples: Option<&Arc<Tensor>>, rest: &[Arc<Tensor>]) -> Result<HashMap<ValueId, Vec<f32>>, PassError> {
    let wanted: Vec<ValueId> = layer_norm_groups(g).iter().map(|(n, _, _)| g.node(*n).results[0]).collect();
    let mut act: HashMap<ValueId, Vec<f32>> = HashMap::new();
    if wanted.is_empty() {
        return Ok(act);
    }
    let samples = samples.ok_or_else(|| PassError::msg("--smooth-alpha needs --calib"))?;
    for b in crate::samples::input_batches(g, samples, rest).map_err(PassError::msg)? {
        evaluate_observed(g, &b, |v, t| {
            if wanted.contains(&v)
                && let Some(a) = t.as_f32()
            {
                let last = a.ndim() - 1;
                let r = ranges(t, last);
                let e = act.entry(v).or_insert_with(|| vec![0.0; a.shape()[last]]);
                for (m, x) in e.iter_mut().zip(r) {
                    *m = m.max(x);
                }
            }
        })
        .map_err(|e| PassError::msg(e.to_string()))?;
    }
    Ok(act)
}

/// Applies SmoothQuant through each layer_norm of [`layer_norm_groups`]; returns what it scaled.
fn smooth_layer_norms(g: &mut Graph, act: &HashMap<ValueId, Vec<f32>>, alpha: f32) -> Vec<(NodeId, Vec<NodeId>, Vec<f32>)> {
    let mut done = Vec::new();
    for (ln, consumers, shared) in layer_norm_groups(g) {
        let Some(a) = act.get(&g.node(ln).results[0]) else { continue };
        let c = a.len();
        // The largest weight magnitude of each input channel over every consumer.
        let mut r = vec![0f32; c];
        for &(u, axis) in &consumers {
            let w = const_value(g, g.node(u).operands[1]).expect("a constant weight");
            for (m, x) in r.iter_mut().zip(ranges(&w, axis)) {
                *m = m.max(x);
            }
        }
        let s: Vec<f32> = (0..c)
            .map(|i| {
                let s = a[i].powf(alpha) / r[i].powf(1.0 - alpha);
                if s.is_finite() && s > 0.0 { s } else { 1.0 }
            })
            .collect();
        if s.iter().all(|&x| (x - 1.0).abs() < 1e-3) {
            continue;
        }
        let ty = qc_ir::TensorType::new(&[c as u64], qc_ir::ScalarType::F32);
        let loc = g.node(ln).loc.clone();
        let base = format!("{}.smooth", loc.name);
        if shared {
            // Others read the normalized values as they are: the consumers read them divided.
            let inv: Vec<f32> = s.iter().map(|&x| 1.0 / x).collect();
            let k = add_const(g, &base, Tensor::F32(ndarray::Array1::from(inv).into_dyn()), ty, loc.clone());
            let y = g.node(ln).results[0];
            let node = qc_ir::Node::new(OpKind::Mul, vec![y, k], Default::default(), loc);
            let m = g.add_node(node, vec![g.ty(y).clone()]);
            let my = g.node(m).results[0];
            g.value_mut(my).name = Some(g.unique_name(&base));
            for &(u, _) in &consumers {
                g.set_operand(u, 0, my);
            }
        } else {
            // The scale and bias must spread over the channels to be divided.
            let params: Vec<Option<Tensor>> = g.node(ln).operands[1..]
                .iter()
                .map(|&p| {
                    let t = const_value(g, p)?;
                    let spread = t.as_f32()?.broadcast(ndarray::IxDyn(&[c]))?.to_owned();
                    Some(Tensor::F32(spread))
                })
                .collect();
            if params.iter().any(Option::is_none) {
                continue;
            }
            for (i, t) in params.into_iter().enumerate() {
                let t = scaled(&t.expect("checked"), 0, &s, true);
                let nv = add_const(g, &base, t, ty.clone(), loc.clone());
                g.set_operand(ln, i + 1, nv);
            }
        }
        for &(u, axis) in &consumers {
            let w = const_value(g, g.node(u).operands[1]).expect("a constant weight");
            replace(g, u, 1, scaled(&w, axis, &s, false));
        }
        done.push((ln, consumers.into_iter().map(|(u, _)| u).collect(), s));
    }
    done
}
