//! `sparsify` — approximating (zeroes weights; with `--reconstruct` the surviving weights are
//! re-fitted, and the top-1 agreement with the dense model on the calibration samples is reported).
//!
//! Magnitude pruning of the weights of f32 conv2d (groups 1), gemm and 2-D matmul layers with
//! constant weights (`Rule::Layer` of [`crate::channel_flow`]): `--sparsity S` zeroes the fraction
//! S of each layer's weights with the smallest |w| (`--sparsity-global`: one threshold over all
//! layers, so that layers with small weights lose more), `--sparsity-layer NAME=S` sets one layer.
//! Layers that read a model input directly (the first layers: fewest weights, most sensitive) are
//! left dense unless named by `--sparsity-layer`.
//! `--block` zeroes whole blocks of 16 output channels × 4 reduction inputs, ranked by their L2
//! norm — the weights one step of the JIT's GEMM reads for a block of 16 columns (for a conv, 4
//! input channels at one kernel tap, the order the JIT's patches read), which it skips when they
//! are zero. Shapes do not change:
//!
//! ```text
//! %w = const @"fc.weight" : tensor<8x16xf32>       %w = const @"fc.weight.sparse" : tensor<8x16xf32>
//! %y = gemm(%x, %w) {trans_b = true} ...       →   %y = gemm(%x, %w.sparse) {trans_b = true} ...
//! ```
//!
//! With `--reconstruct` (needs `--calib`), every layer, in order, is re-fitted by least squares on
//! its remaining weights against the dense model ([`crate::reconstruct`]). Layers whose output is a
//! model output are sparsified too (their shape does not change). Errors: a sparsity outside
//! [0, 1), an unknown layer name.

use crate::channel_flow::{Rule, layer_names, rule};
use crate::reconstruct::refit;
use crate::rewrite::{add_const, const_value};
use crate::samples::{agreement, batches};
use crate::{Changed, Pass, PassContext, PassError, PassOptions};
use qc_ir::{ConstValue, Graph, NodeId, OpKind, Tensor};
use std::sync::Arc;

/// What `sparsify` zeroes.
#[derive(Clone, Debug, Default)]
pub struct SparsifyOptions {
    /// The fraction of every layer's weights zeroed.
    pub sparsity: Option<f32>,
    /// Per-layer fractions, by location, result or weight name.
    pub layers: Vec<(String, f32)>,
    /// One magnitude threshold over all layers instead of one per layer.
    pub global: bool,
    /// Zero blocks of 16 outputs × 4 inputs (what the JIT skips) instead of single weights.
    pub block: bool,
    /// Re-fit the remaining weights on the calibration samples.
    pub reconstruct: bool,
}

/// The `sparsify` pass.
pub struct Sparsify {
    opts: SparsifyOptions,
    samples: Option<Arc<Tensor>>,
}

impl Sparsify {
    /// The pass with its options.
    pub fn new(o: &PassOptions) -> Sparsify {
        Sparsify { opts: o.sparsify.clone(), samples: o.calibration.clone() }
    }
}

fn err(msg: impl Into<String>) -> PassError {
    PassError::msg(msg)
}

/// A layer's weights as groups to rank: each group's flat indices (single weights or blocks).
fn groups(g: &Graph, n: NodeId, block: bool) -> (Arc<Tensor>, Vec<Vec<usize>>) {
    let node = g.node(n);
    let w = const_value(g, node.operands[1]).expect("a layer's weight is constant");
    let shape = w.shape().to_vec();
    let len = w.len();
    if !block {
        return (w, (0..len).map(|i| vec![i]).collect());
    }
    // (output, reduction) → flat index, with the reduction in the JIT's order.
    let (o, k, index): (usize, usize, Box<dyn Fn(usize, usize) -> usize>) = match node.kind {
        OpKind::Conv2d => {
            let (c, taps) = (shape[1], shape[2] * shape[3]);
            // reduction index r = tap · C + channel
            (shape[0], c * taps, Box::new(move |oc, r| (oc * c + r % c) * taps + r / c))
        }
        OpKind::Gemm if node.attrs.bool("trans_b", false) => {
            let k = shape[1];
            (shape[0], k, Box::new(move |oc, r| oc * k + r))
        }
        _ => {
            let n = shape[1];
            (n, shape[0], Box::new(move |oc, r| r * n + oc))
        }
    };
    let mut out = Vec::new();
    for ob in (0..o).step_by(16) {
        for kb in (0..k).step_by(4) {
            out.push(
                (ob..(ob + 16).min(o)).flat_map(|oc| (kb..(kb + 4).min(k)).map(|r| index(oc, r)).collect::<Vec<_>>()).collect(),
            );
        }
    }
    (w, out)
}

impl Pass for Sparsify {
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<Changed, PassError> {
        let notes = &mut cx.notes;
        if self.opts.sparsity.is_none() && self.opts.layers.is_empty() {
            return Ok(Changed::No);
        }
        for (what, s) in self
            .opts
            .sparsity
            .iter()
            .map(|s| ("--sparsity".to_string(), *s))
            .chain(self.opts.layers.iter().map(|(n, s)| (format!("--sparsity-layer {n}"), *s)))
        {
            if !(0.0..1.0).contains(&s) {
                return Err(err(format!("{what}: a sparsity must lie in [0, 1), got {s}")));
            }
        }
        let layers: Vec<NodeId> =
            g.topo_order().unwrap_or_default().into_iter().filter(|&n| matches!(rule(g, n), Rule::Layer { .. })).collect();
        for (name, _) in &self.opts.layers {
            if !layers.iter().any(|&n| layer_names(g, n).contains(name)) {
                let known: Vec<String> = layers.iter().filter_map(|&n| layer_names(g, n).into_iter().next()).collect();
                return Err(err(format!("no layer is named `{name}`; the layers are {}", known.join(", "))));
            }
        }
        let batches = match (&self.samples, self.opts.reconstruct) {
            (Some(s), _) => batches(g, s).map_err(err)?,
            (None, true) => return Err(err("--reconstruct needs calibration samples (--calib X.npy)")),
            (None, false) => Vec::new(),
        };
        let teacher = g.clone();
        // Each layer's groups and their scores.
        let ranked: Vec<(NodeId, Arc<Tensor>, Vec<Vec<usize>>, Vec<f64>)> = layers
            .iter()
            .map(|&n| {
                let (w, gs) = groups(g, n, self.opts.block);
                let a = w.as_f32().expect("f32 weights");
                let flat = a.as_slice_memory_order().expect("standard layout").to_vec();
                let scores = gs.iter().map(|ix| ix.iter().map(|&i| (flat[i] as f64).powi(2)).sum::<f64>().sqrt()).collect();
                (n, w.clone(), gs, scores)
            })
            .collect();
        let threshold = match (self.opts.global, self.opts.sparsity) {
            (true, Some(s)) => {
                let mut all: Vec<f64> = ranked.iter().flat_map(|r| r.3.iter().copied()).collect();
                all.sort_by(f64::total_cmp);
                Some(all[((all.len() as f64 * s as f64) as usize).min(all.len() - 1)])
            }
            _ => None,
        };
        let mut changed = false;
        let (mut zeros, mut total) = (0usize, 0usize);
        for (n, w, gs, scores) in ranked {
            let explicit = self.opts.layers.iter().find(|(name, _)| layer_names(g, n).contains(name)).map(|(_, s)| *s);
            // The first layers (reading a model input) have the fewest weights and matter most;
            // only an explicit --sparsity-layer sparsifies them.
            let first = g.producer(g.node(n).operands[0]).is_none();
            if first && explicit.is_none() {
                let w = w.as_f32().expect("f32");
                zeros += w.iter().filter(|v| **v == 0.0).count();
                total += w.len();
                continue;
            }
            let mut flat: Vec<f32> = w.as_f32().expect("f32").iter().copied().collect();
            let drop: Vec<usize> = match (explicit, threshold, self.opts.sparsity) {
                (None, Some(t), _) => (0..gs.len()).filter(|&i| scores[i] < t).collect(),
                (Some(s), _, _) | (None, None, Some(s)) => {
                    let mut order: Vec<usize> = (0..gs.len()).collect();
                    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
                    let count = (gs.len() as f64 * s as f64).round() as usize;
                    order.truncate(count);
                    order
                }
                (None, None, None) => Vec::new(),
            };
            for &i in &drop {
                for &j in &gs[i] {
                    flat[j] = 0.0;
                }
            }
            let z = flat.iter().filter(|v| **v == 0.0).count();
            zeros += z;
            total += flat.len();
            if drop.is_empty() {
                continue;
            }
            let name = layer_names(g, n).into_iter().next().unwrap_or_default();
            notes.push(format!("{name}: {:.1} % zeros", 100.0 * z as f64 / flat.len() as f64));
            let v = g.node(n).operands[1];
            let base = match g.producer(v).and_then(|p| g.node(p).value.clone()) {
                Some(ConstValue::Weight(w)) => format!("{w}.sparse"),
                _ => format!("{name}.weight.sparse"),
            };
            let t = Tensor::F32(ndarray::ArrayD::from_shape_vec(w.shape(), flat).expect("sized"));
            let ty = g.ty(v).clone();
            let loc = g.node(n).loc.clone();
            let nv = add_const(g, &base, t, ty, loc);
            g.set_operand(n, 1, nv);
            changed = true;
        }
        if self.opts.reconstruct && changed {
            for &n in &layers {
                let o = g.ty(g.node(n).results[0]).dims[1].fixed().unwrap_or(0) as usize;
                let origin: Vec<usize> = (0..o).collect();
                match refit(&teacher, g, n, &origin, &batches, true) {
                    Ok(f) => {
                        notes.push(format!("reconstructed {}: relative output error {:.4} → {:.4}", f.layer, f.before, f.after))
                    }
                    Err(e) => notes.push(format!("{} not reconstructed: {e}", g.node(n).loc.name)),
                }
            }
        }
        let mut line =
            format!("{:.1} % of the layers' weights are zero ({zeros} of {total})", 100.0 * zeros as f64 / total.max(1) as f64);
        if !batches.is_empty() {
            let a = agreement(&teacher, g, &batches).map_err(err)?;
            line += &format!("; top-1 agreement with the dense model {:.2} % on the calibration samples", 100.0 * a);
        }
        notes.push(line);
        Ok(changed.into())
    }
}
