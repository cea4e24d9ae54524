//! The pruning report: per layer and in total, parameters, MACs per sample, weight bytes and JIT
//! latency of the model compiled without pruning ("before") and with it ("after").

use qc_codegen::CompiledModel;
use qc_ir::cost::{LayerCost, layer_costs};
use qc_ir::{Dim, Graph, Tensor};
use serde_json::{Value, json};
use std::fmt::Write;

/// One side of the comparison.
#[derive(Clone, Debug)]
pub struct Side {
    /// Every layer's cost.
    pub layers: Vec<LayerCost>,
    /// Median milliseconds per layer location (the steps carrying that `loc`, summed).
    pub layer_ms: Vec<(String, f64)>,
    /// Median milliseconds of a whole run.
    pub total_ms: f64,
}

/// Before and after pruning, timed at one batch size.
#[derive(Clone, Debug)]
pub struct PruneReport {
    /// The batch size timed.
    pub batch: usize,
    /// Without pruning.
    pub before: Side,
    /// With it.
    pub after: Side,
}

/// Timed runs of one model in a row.
const BLOCK: usize = 10;
/// Seconds the interleaved timing aims to take (at least the minimum rounds).
const BUDGET_S: f64 = 0.5;
/// Rounds at most.
const MAX_ROUNDS: usize = 5000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn input_for(g: &Graph, batch: usize) -> Result<Tensor, String> {
    let p = *g.params().first().ok_or("the model has no input")?;
    let dims: Vec<usize> = g.ty(p).dims.iter().map(|d| if let Dim::Fixed(n) = d { *n as usize } else { batch }).collect();
    let n: usize = dims.iter().product();
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), (0..n).map(|i| ((i * 7) % 11) as f32 / 11.0).collect())
        .map(Tensor::F32)
        .map_err(|e| e.to_string())
}

/// Compiles both graphs and times them interleaved, so that the machine's noise hits both alike:
/// in each round, each model runs once untimed (the other model has just filled the caches) and
/// then [`BLOCK`] times in a row, timed together (a clock read per run would add its own cost to
/// a run of a few microseconds), so that both are timed as a host runs one model repeatedly; the
/// latency is the median over rounds of a block's mean. At
/// least `min_rounds` rounds, and as many more as fill [`BUDGET_S`] seconds, so that a burst of
/// noise on the machine does not cover the whole measurement of a fast model.
pub fn prune_report(before: &Graph, after: &Graph, batch: usize, min_rounds: usize) -> Result<PruneReport, String> {
    let x = input_for(before, batch)?;
    let models =
        [CompiledModel::compile(before).map_err(|e| e.to_string())?, CompiledModel::compile(after).map_err(|e| e.to_string())?];
    let start = std::time::Instant::now();
    for m in &models {
        m.run(std::slice::from_ref(&x)).map_err(|e| e.to_string())?;
    }
    let round_s = start.elapsed().as_secs_f64() * (BLOCK + 1) as f64;
    let rounds = ((BUDGET_S / round_s.max(1e-9)) as usize).clamp(min_rounds.max(1), MAX_ROUNDS);
    let mut totals = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (m, t) in models.iter().zip(totals.iter_mut()) {
            m.run(std::slice::from_ref(&x)).map_err(|e| e.to_string())?;
            let start = std::time::Instant::now();
            for _ in 0..BLOCK {
                m.run(std::slice::from_ref(&x)).map_err(|e| e.to_string())?;
            }
            t.push(start.elapsed().as_secs_f64() * 1e3 / BLOCK as f64);
        }
    }
    let runs = rounds * BLOCK;
    let side = |g: &Graph, m: &CompiledModel, total: Vec<f64>| -> Result<Side, String> {
        let layers = layer_costs(g);
        let profile = m.profile(std::slice::from_ref(&x), runs).map_err(|e| e.to_string())?;
        let layer_ms = layers
            .iter()
            .map(|l| (l.name.clone(), profile.iter().filter(|p| p.loc == l.name).map(|p| p.seconds * 1e3).sum()))
            .collect();
        Ok(Side { layers, layer_ms, total_ms: median(total) })
    };
    let [tb, ta] = totals;
    Ok(PruneReport { batch, before: side(before, &models[0], tb)?, after: side(after, &models[1], ta)? })
}

impl Side {
    fn ms(&self, name: &str) -> Option<f64> {
        self.layer_ms.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    fn layer(&self, name: &str) -> Option<&LayerCost> {
        self.layers.iter().find(|l| l.name == name)
    }

    fn sums(&self) -> (u64, u64, u64) {
        self.layers.iter().fold((0, 0, 0), |(p, m, b), l| (p + l.params, m + l.macs, b + l.weight_bytes))
    }
}

impl PruneReport {
    /// The table a person reads.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "pruning report (JIT latency at batch {}):\n  {:<28} {:>13} {:>19} {:>17} {:>21}\n",
            self.batch, "layer", "channels", "params", "MACs/sample", "latency ms"
        );
        for l in &self.before.layers {
            let a = self.after.layer(&l.name);
            let (ac, ap, am) = a.map_or((0, 0, 0), |a| (a.channels, a.params, a.macs));
            let (tb, ta) = (self.before.ms(&l.name).unwrap_or(0.0), self.after.ms(&l.name).unwrap_or(0.0));
            writeln!(
                s,
                "  {:<28} {:>5} → {:<5} {:>8} → {:<8} {:>7} → {:<7} {:>8.4} → {:<8.4}",
                l.name, l.channels, ac, l.params, ap, l.macs, am, tb, ta
            )
            .expect("String");
        }
        let ((pb, mb, bb), (pa, ma, ba)) = (self.before.sums(), self.after.sums());
        writeln!(
            s,
            "  total: params {pb} → {pa} ({:.2}x fewer), MACs {mb} → {ma} ({:.2}x fewer), weight bytes {bb} → {ba}, latency {:.4} → {:.4} ms ({:.2}x faster)",
            pb as f64 / pa.max(1) as f64,
            mb as f64 / ma.max(1) as f64,
            self.before.total_ms,
            self.after.total_ms,
            self.before.total_ms / self.after.total_ms.max(1e-12)
        )
        .expect("String");
        s
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let side = |s: &Side| {
            let layers: Vec<Value> = s
                .layers
                .iter()
                .map(|l| {
                    json!({"name": l.name, "op": l.op.name(), "channels": l.channels, "params": l.params, "macs": l.macs,
                           "weight_bytes": l.weight_bytes, "latency_ms": s.ms(&l.name)})
                })
                .collect();
            let (p, m, b) = s.sums();
            json!({"layers": layers, "params": p, "macs": m, "weight_bytes": b, "latency_ms": s.total_ms})
        };
        json!({"batch": self.batch, "before": side(&self.before), "after": side(&self.after)})
    }
}
