//! `prune-channels` — approximating (removes channels; by how much the outputs move is measured
//! and reported: top-1 agreement with the unpruned model on the calibration samples).
//!
//! Removes whole output channels of f32 conv2d (groups 1), gemm and 2-D matmul layers with
//! constant weights, chosen by a criterion (`--prune-criterion`: `l1`/`l2`, the channel's weight
//! norm; `bn-gamma`, |γ| of the batch norm that follows the layer while it is still there;
//! `activation`, what the channel feeds the next layers on the calibration samples; `lsq`, greedy
//! elimination by what the next layers' least-squares refit makes up for), with a
//! global ratio (`--prune-ratio 0.5`) and per-layer ratios (`--prune-layer NAME=0.3`, NAME being the
//! layer's location, result or weight name). Kept counts are multiples of `--prune-multiple`
//! (default 4, the column panel of the JIT's GEMM kernel). Shape propagation follows
//! [`crate::channel_flow`]: consumers lose the matching input channels, batch norms, depthwise
//! convs and per-channel constants shrink along, residual adds prune their operands' layers
//! together, flatten → gemm loses blocks of rows; model outputs are never pruned.
//!
//! ```text
//! %c1 = conv2d(%x, %w1, %b1) : tensor<?x32x8x8xf32>       %c1 = conv2d(%x, %w1.pruned, %b1.pruned) : tensor<?x16x8x8xf32>
//! %r = relu(%c1) : tensor<?x32x8x8xf32>               →   %r = relu(%c1) : tensor<?x16x8x8xf32>
//! %c2 = conv2d(%r, %w2, %b2) : tensor<?x8x8x8xf32>        %c2 = conv2d(%r, %w2.pruned, %b2) : tensor<?x8x8x8xf32>
//! ```
//!
//! With `--reconstruct` (needs `--calib`), every layer from the first whose input lost channels
//! on is re-fitted by least squares to the unpruned model's outputs, depthwise convs channel by
//! channel ([`crate::reconstruct`]). With
//! `--prune-steps K` the ratios are reached in K equal steps, re-scoring and reconstructing
//! between steps; each step reports channels, parameters, MACs and top-1 agreement with the
//! unpruned model on the calibration samples; `--max-loss P` (percentage points of agreement)
//! stops at the last step within the budget.
//!
//! Errors: a ratio outside [0, 1) (1 would remove every channel), a named layer that does not
//! exist or may not be pruned (it feeds a model output or an op channels cannot pass), and
//! `--reconstruct`/`--max-loss` without samples. Without a ratio the pass does nothing.

use crate::channel_flow::{Flow, Rule, analyze, apply, layer_names, rule};
use crate::channel_selection::select;
use crate::distill::{DistillOptions, distill};
use crate::reconstruct::{refit, refit_depthwise};
use crate::rewrite::const_value;
use crate::samples::{agreement, batches};
use crate::{Changed, Pass, PassContext, PassError, PassOptions};
use qc_ir::cost::layer_costs;
use qc_ir::eval::evaluate_observed;
use qc_ir::{Graph, NodeId, OpKind, Tensor, ValueId};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// How channels are ranked (the lowest go first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PruneCriterion {
    /// Sum of |w| over the channel's weights.
    L1,
    /// Euclidean norm of the channel's weights.
    #[default]
    L2,
    /// |γ| of the batch norm after the layer (L2 where there is none).
    BnGamma,
    /// What the channel feeds the next layers on the calibration samples: for each consumer,
    /// `√E[x²]` of the channel at its input times the norm of the consumer's weights reading it.
    Activation,
    /// Greedy elimination of the channels whose loss the next layers' least-squares refit makes
    /// up for best ([`crate::channel_selection`]).
    Lsq,
}

impl FromStr for PruneCriterion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "l1" => Ok(PruneCriterion::L1),
            "l2" => Ok(PruneCriterion::L2),
            "bn-gamma" => Ok(PruneCriterion::BnGamma),
            "activation" => Ok(PruneCriterion::Activation),
            "lsq" => Ok(PruneCriterion::Lsq),
            _ => Err(format!("unknown pruning criterion `{s}`; valid: l1, l2, bn-gamma, activation, lsq")),
        }
    }
}

impl fmt::Display for PruneCriterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PruneCriterion::L1 => "l1",
            PruneCriterion::L2 => "l2",
            PruneCriterion::BnGamma => "bn-gamma",
            PruneCriterion::Activation => "activation",
            PruneCriterion::Lsq => "lsq",
        })
    }
}

/// What `prune-channels` removes and how.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// The fraction of channels removed from every prunable layer.
    pub ratio: Option<f32>,
    /// Per-layer fractions, by location, result or weight name.
    pub layers: Vec<(String, f32)>,
    /// The ranking.
    pub criterion: PruneCriterion,
    /// Kept channel counts are multiples of this.
    pub multiple: usize,
    /// Re-fit the layers after each pruned one on the calibration samples.
    pub reconstruct: bool,
    /// Steps to reach the ratios in.
    pub steps: usize,
    /// Adam steps of distillation from the unpruned model after each pruning step (0: none;
    /// [`crate::distill`]).
    pub distill: usize,
    /// The most top-1 agreement (percentage points) a step may lose against the unpruned model.
    pub max_loss: Option<f64>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            ratio: None,
            layers: Vec::new(),
            criterion: PruneCriterion::L2,
            multiple: 4,
            reconstruct: false,
            steps: 1,
            distill: 0,
            max_loss: None,
        }
    }
}

/// The `prune-channels` pass.
pub struct PruneChannels {
    opts: PruneOptions,
    samples: Option<Arc<Tensor>>,
}

impl PruneChannels {
    /// The pass with its options.
    pub fn new(o: &PassOptions) -> PruneChannels {
        PruneChannels { opts: o.prune.clone(), samples: o.calibration.clone() }
    }
}

fn err(msg: impl Into<String>) -> PassError {
    PassError::msg(msg)
}

fn display_name(g: &Graph, n: NodeId) -> String {
    layer_names(g, n).into_iter().next().unwrap_or_else(|| g.display_value(g.node(n).results[0]))
}

/// How many of `c` channels stay when a fraction `r` goes, as a multiple of `m` (at least one).
pub fn kept_count(c: usize, r: f64, m: usize) -> usize {
    let m = m.max(1);
    if c <= m {
        return c;
    }
    let target = c as f64 * (1.0 - r);
    (((target / m as f64).round() as usize) * m).clamp(m, c)
}

/// Each output channel's score under `criterion`, for layer `n`.
fn scores(g: &Graph, n: NodeId, criterion: PruneCriterion, fallback: &mut bool) -> Vec<f64> {
    let node = g.node(n);
    if criterion == PruneCriterion::BnGamma {
        let uses = g.uses(node.results[0]);
        if let [(bn, 0)] = uses.as_slice()
            && g.node(*bn).kind == OpKind::BatchNorm
            && let Some(t) = const_value(g, g.node(*bn).operands[1])
            && let Some(a) = t.as_f32()
        {
            return a.iter().map(|v| v.abs() as f64).collect();
        }
        *fallback = true;
    }
    let Rule::Layer { out_axis, .. } = rule(g, n) else { return Vec::new() };
    let w = const_value(g, node.operands[1]).expect("a layer's weight is constant");
    let a = w.as_f32().expect("a layer's weight is f32");
    a.axis_iter(ndarray::Axis(out_axis))
        .map(|c| match criterion {
            PruneCriterion::L1 => c.iter().map(|v| v.abs() as f64).sum(),
            _ => c.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt(),
        })
        .collect()
}

/// The `activation` criterion for every space of `flow`: space → score per channel.
fn activation_scores(g: &Graph, flow: &Flow, batches: &[Tensor]) -> Result<HashMap<usize, Vec<f64>>, String> {
    // The consumers: layers reading a carrier, with the per-position norms of their weights.
    let mut sinks: HashMap<ValueId, Vec<Vec<f64>>> = HashMap::new();
    for n in g.topo_order().unwrap_or_default() {
        let node = g.node(n);
        let Some(&x) = node.operands.first() else { continue };
        let Rule::Layer { in_axis, .. } = rule(g, n) else { continue };
        if !flow.carriers.contains_key(&x) {
            continue;
        }
        let w = const_value(g, node.operands[1]).expect("a layer's weight is constant");
        let a = w.as_f32().expect("a layer's weight is f32");
        let norms = a
            .axis_iter(ndarray::Axis(in_axis))
            .map(|c| c.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt())
            .collect();
        sinks.entry(x).or_default().push(norms);
    }
    // E[x²] per position of axis 1 of each consumer input.
    let mut energy: HashMap<ValueId, (Vec<f64>, usize)> = HashMap::new();
    for b in batches {
        evaluate_observed(g, std::slice::from_ref(b), |v, t| {
            if !sinks.contains_key(&v) {
                return;
            }
            let Some(a) = t.as_f32() else { return };
            let c = a.shape()[1];
            let e = energy.entry(v).or_insert_with(|| (vec![0.0; c], 0));
            for lane in a.axis_iter(ndarray::Axis(1)).enumerate() {
                e.0[lane.0] += lane.1.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>();
            }
            e.1 += a.len() / c;
        })
        .map_err(|e| e.to_string())?;
    }
    let mut out: HashMap<usize, Vec<f64>> = HashMap::new();
    for (x, norms) in &sinks {
        let Some((e, count)) = energy.get(x) else { continue };
        for p in &flow.carriers[x] {
            let score = out.entry(p.space).or_insert_with(|| vec![0.0; flow.spaces[p.space].channels]);
            for (c, sc) in score.iter_mut().enumerate() {
                for j in p.offset + c * p.block..p.offset + (c + 1) * p.block {
                    let rms = (e[j] / (*count).max(1) as f64).sqrt();
                    for nrm in norms {
                        *sc += (rms * nrm[j]).powi(2);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The teacher channel of each channel `v` carries, when `v` holds exactly one space's channels
/// (at offset 0, one position each) — what a depthwise conv reading `v` needs to be re-fitted.
fn carried_origin(flow: &Flow, origin: &HashMap<NodeId, Vec<usize>>, v: ValueId) -> Option<Vec<usize>> {
    match flow.carriers.get(&v)?.as_slice() {
        [p] if p.offset == 0 && p.block == 1 => origin.get(&flow.spaces[p.space].layer).cloned(),
        _ => None,
    }
}

/// Channels, parameters and MACs of `g`'s layers, one line.
fn summary(g: &Graph, base: &[qc_ir::cost::LayerCost]) -> String {
    let costs = layer_costs(g);
    let channels: Vec<String> = costs.iter().map(|c| c.channels.to_string()).collect();
    let (p0, m0): (u64, u64) = (base.iter().map(|c| c.params).sum(), base.iter().map(|c| c.macs).sum());
    let (p, m): (u64, u64) = (costs.iter().map(|c| c.params).sum(), costs.iter().map(|c| c.macs).sum());
    format!(
        "channels [{}], params {p} ({:.1} % of {p0}), MACs/sample {m} ({:.1} % of {m0})",
        channels.join(", "),
        100.0 * p as f64 / p0.max(1) as f64,
        100.0 * m as f64 / m0.max(1) as f64
    )
}

impl PruneChannels {
    /// The ratio each group gets, keyed by the group's root space.
    fn ratios(&self, g: &Graph, flow: &Flow) -> Result<HashMap<usize, f64>, PassError> {
        let check = |what: &str, r: f32| {
            if !(0.0..1.0).contains(&r) {
                Err(err(format!("{what}: a pruning ratio must lie in [0, 1), got {r} (1 would remove every channel)")))
            } else {
                Ok(())
            }
        };
        if let Some(r) = self.opts.ratio {
            check("--prune-ratio", r)?;
        }
        let mut out: HashMap<usize, f64> = HashMap::new();
        for (name, r) in &self.opts.layers {
            check(&format!("--prune-layer {name}"), *r)?;
            let space = flow.spaces.iter().position(|s| layer_names(g, s.layer).contains(name)).ok_or_else(|| {
                let known: Vec<String> = flow.spaces.iter().map(|s| display_name(g, s.layer)).collect();
                err(format!("no prunable layer is named `{name}`; the prunable layers are {}", known.join(", ")))
            })?;
            if let Some(why) = flow.protected(space) {
                return Err(err(format!("cannot prune `{name}`: its channels reach {why}")));
            }
            let e = out.entry(flow.root(space)).or_default();
            *e = e.max(*r as f64);
        }
        if let Some(r) = self.opts.ratio {
            for (root, _) in flow.groups() {
                if flow.protected(root).is_none() {
                    out.entry(root).or_insert(r as f64);
                }
            }
        }
        Ok(out)
    }
}

impl Pass for PruneChannels {
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<Changed, PassError> {
        let notes = &mut cx.notes;
        if self.opts.ratio.is_none() && self.opts.layers.is_empty() {
            return Ok(Changed::No);
        }
        let flow0 = analyze(g);
        let ratios = self.ratios(g, &flow0)?;
        for (root, members) in flow0.groups() {
            if let Some(why) = flow0.protected(root) {
                let names: Vec<String> = members.iter().map(|&s| display_name(g, flow0.spaces[s].layer)).collect();
                notes.push(format!("kept whole: {} (reaches {why})", names.join(", ")));
            }
        }
        let needs_samples = self.opts.reconstruct
            || self.opts.distill > 0
            || self.opts.max_loss.is_some()
            || self.opts.steps > 1
            || matches!(self.opts.criterion, PruneCriterion::Activation | PruneCriterion::Lsq);
        let batches = match (&self.samples, needs_samples) {
            (Some(s), _) => batches(g, s).map_err(err)?,
            (None, true) => {
                return Err(err(
                    "--reconstruct, --distill, --prune-steps, --max-loss and --prune-criterion activation|lsq need calibration samples (--calib X.npy)",
                ));
            }
            (None, false) => Vec::new(),
        };
        let teacher = g.clone();
        let base_costs = layer_costs(g);
        // The teacher channel of every current channel, per layer.
        let mut origin: HashMap<NodeId, Vec<usize>> = flow0.spaces.iter().map(|s| (s.layer, (0..s.channels).collect())).collect();
        let steps = self.opts.steps.max(1);
        let mut changed = false;
        for step in 1..=steps {
            let flow = analyze(g);
            let mut removed: HashMap<usize, Vec<usize>> = HashMap::new();
            let mut fallback = false;
            let measured = match self.opts.criterion {
                PruneCriterion::Activation => activation_scores(g, &flow, &batches).map_err(err)?,
                _ => HashMap::new(),
            };
            for (root, members) in flow.groups() {
                // Groups keep their structure from step to step; find this one's ratio by its root layer.
                let root0 = flow0.space_of(flow.spaces[root].layer).map(|s| flow0.root(s));
                let Some(&r) = root0.and_then(|r0| ratios.get(&r0)) else { continue };
                let c0 = flow0.spaces[root0.expect("found")].channels;
                let c = flow.spaces[root].channels;
                let keep = kept_count(c0, r * step as f64 / steps as f64, self.opts.multiple);
                if keep >= c {
                    continue;
                }
                if self.opts.criterion == PruneCriterion::Lsq {
                    removed.insert(root, select(&teacher, g, &flow, root, c - keep, &origin, &batches).map_err(err)?);
                    continue;
                }
                let mut score = vec![0f64; c];
                for &s in &members {
                    let own = match measured.get(&s) {
                        Some(m) => m.clone(),
                        None if self.opts.criterion == PruneCriterion::Activation => continue,
                        None => scores(g, flow.spaces[s].layer, self.opts.criterion, &mut fallback),
                    };
                    for (t, v) in score.iter_mut().zip(own) {
                        *t += v;
                    }
                }
                let mut order: Vec<usize> = (0..c).collect();
                order.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
                let mut gone = order[..c - keep].to_vec();
                gone.sort_unstable();
                removed.insert(root, gone);
            }
            if fallback {
                notes.push("bn-gamma: some layers have no batch norm after them; their channels are ranked by l2".into());
            }
            if removed.is_empty() {
                break;
            }
            let before = g.clone();
            apply(g, &flow, &removed);
            for (root, members) in flow.groups() {
                if let Some(gone) = removed.get(&root) {
                    for s in members {
                        let o = origin.get_mut(&flow.spaces[s].layer).expect("every layer has an origin");
                        let mut i = 0;
                        o.retain(|_| {
                            i += 1;
                            !gone.contains(&(i - 1))
                        });
                    }
                }
            }
            changed = true;
            if self.opts.reconstruct {
                // Every layer from the first one whose input lost channels on: what they read has moved.
                let order = g.topo_order().unwrap_or_default();
                let mut downstream = false;
                for n in order {
                    let x = g.node(n).operands.first().copied();
                    downstream |= x.is_some_and(|x| before.ty(x).dims.get(1) != g.ty(x).dims.get(1));
                    if !downstream {
                        continue;
                    }
                    let fit = match rule(g, n) {
                        Rule::Layer { .. } => refit(&teacher, g, n, &origin[&n], &batches, false),
                        Rule::Through(_) if g.node(n).kind == OpKind::Conv2d => {
                            match carried_origin(&flow, &origin, g.node(n).operands[0]) {
                                Some(o) => refit_depthwise(&teacher, g, n, &o, &batches),
                                None => continue,
                            }
                        }
                        _ => continue,
                    };
                    match fit {
                        Ok(fit) => notes.push(format!(
                            "step {step}: reconstructed {}: relative output error {:.4} → {:.4}",
                            display_name(g, n),
                            fit.before,
                            fit.after
                        )),
                        Err(e) => notes.push(format!("step {step}: {} not reconstructed: {e}", display_name(g, n))),
                    }
                }
            }
            if self.opts.distill > 0 {
                let x = self.samples.as_ref().and_then(|s| s.as_f32()).ok_or_else(|| err("distillation needs f32 samples"))?;
                let opts = DistillOptions { steps: self.opts.distill, ..DistillOptions::default() };
                match distill(&teacher, g, x, &opts) {
                    Ok(d) => notes.push(format!(
                        "step {step}: distilled from the unpruned model ({} Adam steps of {} shifted and mixed calibration samples): loss on the {} calibration samples {:.4} → {:.4}",
                        opts.steps, opts.batch, d.samples, d.before, d.after
                    )),
                    Err(e) => notes.push(format!("step {step}: not distilled: {e}")),
                }
            }
            let mut line = format!("step {step}/{steps}: {}", summary(g, &base_costs));
            if !batches.is_empty() {
                let a = agreement(&teacher, g, &batches).map_err(err)?;
                line += &format!(
                    ", top-1 agreement with the unpruned model {:.2} % on {} calibration samples",
                    100.0 * a,
                    batches.iter().map(|b| b.shape()[0]).sum::<usize>()
                );
                let loss = 100.0 * (1.0 - a);
                if let Some(budget) = self.opts.max_loss
                    && loss > budget
                {
                    notes.push(line);
                    notes.push(format!(
                        "step {step} loses {loss:.2} points > --max-loss {budget}: kept the model of step {}",
                        step - 1
                    ));
                    *g = before;
                    changed = step > 1;
                    break;
                }
            }
            notes.push(line);
        }
        Ok(changed.into())
    }
}
