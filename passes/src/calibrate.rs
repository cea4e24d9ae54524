//! `calibrate` — exact (it only records ranges; `stats` is an identity).
//!
//! Runs the fp32 reference evaluator over the calibration samples (`--calib X.npy`) in batches,
//! streaming: each f32 activation (function inputs and op results, not constants) gets an
//! [`Observer`] with bounded state. The chosen clipping range (`--calib-method`, per tensor with
//! `--calib-override NAME=METHOD`) is recorded by a `stats` op on the value, which every former
//! use of the value now reads. Data movement (reshape, transpose, max_pool, ...) shares its
//! input's range, so that quantization parameters pass through it unchanged:
//!
//! ```text
//! %c = conv2d(%x, %w, %b) {activation = "relu"} ...      %c = conv2d(%x, %w, %b) {activation = "relu"} ...
//! %p = max_pool(%c) ...                              →   %c.stats = stats(%c) {max = 6.73, min = 0.0} ...
//!                                                        %p = max_pool(%c.stats) ...
//! ```
//!
//! Errors: no samples, samples of the wrong shape, and NaN or Inf in a sample or in any tensor it
//! produces (naming the sample and the tensor). A tensor with zero range records [0, 0]; the
//! quantization parameters derived from it are still valid. Existing `stats` ops are replaced.

use crate::fold_qdq::commutes_with_quantize;
use crate::observer::{CalibMethod, Observer};
use crate::{Changed, Pass, PassContext, PassError, PassOptions};
use qc_ir::eval::evaluate_observed;
use qc_ir::{Attr, Attrs, Dim, Graph, Loc, Node, OpKind, Tensor, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// The `calibrate` pass.
pub struct Calibrate {
    progress: Option<crate::Progress>,
    cache: Option<crate::CalibCache>,
    samples: Option<Arc<Tensor>>,
    /// The samples of the other inputs.
    rest: Vec<Arc<Tensor>>,
    method: CalibMethod,
    overrides: Vec<(String, CalibMethod)>,
}

impl Calibrate {
    /// The pass with its options.
    pub fn new(opts: &PassOptions) -> Calibrate {
        Calibrate {
            progress: opts.progress.clone(),
            cache: opts.calib_cache.clone(),
            samples: opts.calibration.clone(),
            rest: opts.calibration_rest.clone(),
            method: opts.calib_method,
            overrides: opts.calib_overrides.clone(),
        }
    }
}

/// Samples evaluated at once when the batch dimension is dynamic.
const BATCH: usize = 16;

fn err(msg: impl Into<String>) -> PassError {
    PassError::msg(msg)
}

/// Removes `stats` ops, so that calibrating twice measures the graph itself.
fn remove_stats(g: &mut Graph) {
    let stats: Vec<_> = g.node_ids().filter(|&n| g.node(n).kind == OpKind::Stats).collect();
    for s in stats {
        let (x, r) = (g.node(s).operands[0], g.node(s).results[0]);
        g.replace_all_uses(r, x);
        g.remove_node(s);
    }
}

/// The values calibration observes: f32 inputs and f32 results of computing ops.
fn observed_values(g: &Graph) -> Vec<ValueId> {
    let mut v: Vec<ValueId> = g.params().iter().copied().filter(|&p| g.ty(p).elem.is_f32()).collect();
    for id in g.topo_order().unwrap_or_default() {
        let n = g.node(id);
        if matches!(n.kind, OpKind::Const | OpKind::Dequantize | OpKind::Shape) {
            continue;
        }
        v.extend(n.results.iter().copied().filter(|&r| g.ty(r).elem.is_f32()));
    }
    v
}

impl Pass for Calibrate {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let samples = self.samples.as_ref().ok_or_else(|| err("calibration needs samples: pass --calib X.npy"))?;
        remove_stats(g);
        let batches = if g.params().len() == 1 && self.rest.is_empty() {
            let x = samples.as_f32().ok_or_else(|| err(format!("calibration samples must be f32, got {}", samples.scalar_type())))?;
            let param_ty = g.ty(g.params()[0]).clone();
            let fits = x.ndim() == param_ty.rank()
                && param_ty.dims.iter().zip(x.shape()).skip(1).all(|(d, &n)| d.fixed().is_none_or(|f| f as usize == n));
            if !fits || x.shape().first().copied().unwrap_or(0) == 0 {
                return Err(err(format!("calibration samples of shape {:?} do not fit the input {param_ty}", x.shape())));
            }
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                let per = x.len() / x.shape()[0];
                return Err(err(format!(
                    "calibration sample {} holds {} in input {} (flat index {})",
                    i / per,
                    x.iter().nth(i).expect("found"),
                    g.display_value(g.params()[0]),
                    i % per
                )));
            }
            let batch = match param_ty.dims[0] {
                Dim::Fixed(b) => b as usize,
                Dim::Dynamic => BATCH,
            };
            // A model of fixed batch size sees only whole batches.
            let n = match param_ty.dims[0] {
                Dim::Fixed(_) => x.shape()[0] / batch * batch,
                Dim::Dynamic => x.shape()[0],
            };
            (0..n).step_by(batch).map(|s| vec![samples.rows(s, (s + batch).min(n)).expect("counted")]).collect()
        } else {
            let batches = crate::samples::input_batches(g, samples, &self.rest).map_err(|e| err(format!("calibration: {e}")))?;
            for (i, t) in batches.iter().flatten().enumerate() {
                if let Some(a) = t.as_f32()
                    && let Some(v) = a.iter().find(|v| !v.is_finite())
                {
                    let input = g.display_value(g.params()[i % g.params().len()]);
                    return Err(err(format!("the calibration samples of {input} hold {v}")));
                }
            }
            batches
        };
        let values = observed_values(g);
        // The same graph on the same samples observes the same values: reuse them.
        let key = self.cache.as_ref().map(|_| (qc_ir::text::print(g), Arc::as_ptr(samples) as usize));
        let cached = match (&self.cache, &key) {
            (Some(cache), Some((text, ptr))) => cache
                .0
                .lock()
                .ok()
                .and_then(|c| c.as_ref().filter(|(t, p, o)| t == text && p == ptr && o.len() == values.len()).map(|c| c.2.clone())),
            _ => None,
        };
        let observers = match cached {
            Some(observers) => observers,
            None => {
                let observers = self.observe(g, &values, batches)?;
                if let (Some(cache), Some((text, ptr))) = (&self.cache, key)
                    && let Ok(mut c) = cache.0.lock()
                {
                    *c = Some((text, ptr, observers.clone()));
                }
                observers
            }
        };
        let mut ranges: HashMap<ValueId, (f32, f32)> = HashMap::new();
        for (v, obs) in values.into_iter().zip(observers) {
            // Data movement shares its input's range (as ONNX Runtime does), so that no
            // requantization is needed around it.
            // (The op may already read its input's `stats`, inserted a step earlier.)
            let input = |p: qc_ir::NodeId| {
                let x = g.node(p).operands[0];
                g.producer_of_kind(x, OpKind::Stats).map_or(x, |s| g.node(s).operands[0])
            };
            let shared = g
                .producer(v)
                .filter(|&p| g.node(p).kind != OpKind::Relu && commutes_with_quantize(g.node(p).kind))
                .and_then(|p| ranges.get(&input(p)).copied());
            let (lo, hi) = shared.unwrap_or_else(|| obs.range(self.method_for(g, v)));
            ranges.insert(v, (lo, hi));
            let attrs = Attrs::new().with("max", Attr::Float(hi)).with("min", Attr::Float(lo));
            let stats = g.add_node(Node::new(OpKind::Stats, vec![v], attrs, Loc::default()), vec![g.ty(v).clone()]);
            let s = g.node(stats).results[0];
            if let Some(name) = g.value(v).name.clone() {
                g.value_mut(s).name = Some(g.unique_name(&format!("{name}.stats")));
            }
            for (user, i) in g.uses(v) {
                if user != stats {
                    g.set_operand(user, i, s);
                }
            }
            let outs: Vec<ValueId> = g.outputs().iter().map(|&o| if o == v { s } else { o }).collect();
            g.set_outputs(outs);
        }
        Ok(Changed::Yes)
    }
}

impl Calibrate {
    /// Runs the sample batches (a tensor per input each) through `g` and observes `values`
    /// (the forward pass).
    fn observe(&self, g: &Graph, values: &[ValueId], batches: Vec<Vec<Tensor>>) -> Result<Vec<Observer>, PassError> {
        let index: HashMap<ValueId, usize> = values.iter().enumerate().map(|(i, &v)| (v, i)).collect();
        let mut observers = vec![Observer::default(); values.len()];
        let n: usize = batches.iter().map(|b| b[0].shape()[0]).sum();
        let mut start = 0;
        for b in batches {
            let end = start + b[0].shape()[0];
            let mut bad: Option<(ValueId, f32)> = None;
            evaluate_observed(g, &b, |v, t| {
                if let (Some(&i), Some(a)) = (index.get(&v), t.as_f32()) {
                    if bad.is_none()
                        && let Some(&nf) = a.iter().find(|x| !x.is_finite())
                    {
                        bad = Some((v, nf));
                    }
                    observers[i].observe(a.iter().copied().filter(|x| x.is_finite()));
                }
            })
            .map_err(|e| err(format!("calibration samples {start}..{end}: {e}")))?;
            if let Some((v, nf)) = bad {
                return Err(err(format!("calibration samples {start}..{end} make {} hold {nf}", g.display_value(v))));
            }
            start = end;
            if let Some(p) = &self.progress {
                (p.0)(end, n);
            }
        }
        Ok(observers)
    }

    /// The method for `v`: an override naming the value or its op's `loc`, else the default.
    fn method_for(&self, g: &Graph, v: ValueId) -> CalibMethod {
        let name = g.value(v).name.clone().unwrap_or_default();
        let loc = g.producer(v).map(|p| g.node(p).loc.name.clone()).unwrap_or_default();
        self.overrides.iter().find(|(n, _)| *n == name || *n == loc).map_or(self.method, |(_, m)| *m)
    }
}
