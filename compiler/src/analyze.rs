//! `qc analyze`: where quantization error enters a model, layer by layer, and which layers to
//! keep in fp32.
//!
//! For every quantized op of the int8 model (compiled here with the int8 pipeline, or given with
//! `--quantized`), matched to the fp32 op of the same location name, on the calibration samples:
//!
//! - **isolated**: the op alone quantized — its fp32 inputs quantized with its input parameters,
//!   the integer op evaluated, its output dequantized — against the fp32 op's output;
//! - **cumulative**: the op's output in the int8 model (everything before it quantized) against the
//!   fp32 op's output;
//! - **keep fp32**: how many dB of model-output SQNR keeping only this op in fp32 recovers
//!   (`--keep-fp32`, the int8 pipeline otherwise unchanged, calibrated once).
//!
//! Each comparison reports SQNR in dB, cosine similarity, and the max and mean absolute error. The
//! layers are ranked by what keeping them in fp32 recovers, most first.

use qc_ir::eval::{eval_op, evaluate, evaluate_observed};
use qc_ir::{Graph, NodeId, OpKind, Tensor, ValueId};
use qc_passes::observer::Observer;
use qc_passes::samples::input_batches;
use qc_passes::{CalibMethod, PipelineOptions};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// How far a tensor is from its reference.
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics {
    /// Signal-to-quantization-noise ratio, dB.
    pub sqnr_db: f64,
    /// Cosine similarity.
    pub cosine: f64,
    /// Largest absolute error.
    pub max_abs: f64,
    /// Mean absolute error.
    pub mean_abs: f64,
}

/// Sums that [`Metrics`] are computed from, accumulated over batches.
#[derive(Clone, Copy, Debug, Default)]
struct Acc {
    signal: f64,
    noise: f64,
    dot: f64,
    got: f64,
    max_abs: f64,
    sum_abs: f64,
    n: usize,
}

impl Acc {
    fn add(&mut self, reference: &[f32], got: &[f32]) {
        for (&r, &g) in reference.iter().zip(got) {
            let (r, g) = (r as f64, g as f64);
            self.signal += r * r;
            self.noise += (r - g) * (r - g);
            self.dot += r * g;
            self.got += g * g;
            self.max_abs = self.max_abs.max((r - g).abs());
            self.sum_abs += (r - g).abs();
        }
        self.n += reference.len();
    }

    fn metrics(&self) -> Metrics {
        let sqnr_db = if self.noise == 0.0 { f64::INFINITY } else { 10.0 * (self.signal / self.noise).log10() };
        let cosine = if self.signal == 0.0 || self.got == 0.0 { 1.0 } else { self.dot / (self.signal.sqrt() * self.got.sqrt()) };
        Metrics { sqnr_db, cosine, max_abs: self.max_abs, mean_abs: self.sum_abs / self.n.max(1) as f64 }
    }
}

/// One quantized op.
#[derive(Clone, Debug)]
pub struct LayerError {
    /// Its location name.
    pub name: String,
    /// The op.
    pub op: String,
    /// Only this op quantized.
    pub isolated: Option<Metrics>,
    /// Everything up to it quantized.
    pub cumulative: Metrics,
    /// Model-output SQNR gained by keeping only this op in fp32.
    pub keep_fp32_db: f64,
}

/// One activation's histogram and the clipping range each calibration method picks.
#[derive(Clone, Debug)]
pub struct Histogram {
    /// The value's name.
    pub value: String,
    /// Counts of nonzero |x| over `[0, range]`.
    pub bins: Vec<u64>,
    /// The histogram's range.
    pub range: f32,
    /// Exact zeros.
    pub zeros: u64,
    /// (method, lo, hi).
    pub ranges: Vec<(String, f32, f32)>,
}

/// What `qc analyze` found.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// Layers, most worth keeping in fp32 first.
    pub layers: Vec<LayerError>,
    /// The int8 model's output SQNR against fp32, dB.
    pub output_sqnr_db: f64,
    /// Top-1 agreement of the int8 model with fp32 on the samples.
    pub agreement: f64,
    /// Activation histograms with each method's range.
    pub histograms: Vec<Histogram>,
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.as_f32().map(|a| a.iter().copied().collect()).unwrap_or_default()
}

/// The fp32 ops by location name (computing ops only).
fn ops_by_loc(g: &Graph) -> HashMap<String, NodeId> {
    let mut m = HashMap::new();
    for n in g.topo_order().unwrap_or_default() {
        let node = g.node(n);
        if node.kind != OpKind::Const && !node.loc.name.is_empty() {
            m.entry(node.loc.name.clone()).or_insert(n);
        }
    }
    m
}

/// The quantized ops of `q` that have an fp32 counterpart in `reference`.
fn quantized_ops(q: &Graph, reference: &HashMap<String, NodeId>) -> Vec<NodeId> {
    q.topo_order()
        .unwrap_or_default()
        .into_iter()
        .filter(|&n| {
            let node = q.node(n);
            !matches!(node.kind, OpKind::Const | OpKind::Quantize | OpKind::Dequantize | OpKind::Requantize)
                && q.ty(node.results[0]).elem.quant().is_some()
                && reference.contains_key(&node.loc.name)
        })
        .collect()
}

fn dequantize(t: &Tensor, ty: &qc_ir::TensorType) -> Result<Vec<f32>, String> {
    let out = ty.with_elem(qc_ir::ScalarType::F32);
    Ok(flat(&eval_op(OpKind::Dequantize, &Default::default(), &[t], &[ty], &out)?))
}

/// Output SQNR (first output) of `g` against `reference_out` over the batches.
fn output_sqnr(g: &Graph, batches: &[Vec<Tensor>], reference_out: &[Tensor]) -> Result<(f64, f64), String> {
    let (mut acc, mut same, mut all) = (Acc::default(), 0, 0);
    for (x, r) in batches.iter().zip(reference_out) {
        let y = evaluate(g, x).map_err(|e| e.to_string())?.remove(0);
        acc.add(&flat(r), &flat(&y));
        let (a, b) = (qc_passes::samples::argmax_rows(r), qc_passes::samples::argmax_rows(&y));
        same += a.iter().zip(&b).filter(|(p, q)| p == q).count();
        all += a.len();
    }
    Ok((acc.metrics().sqnr_db, same as f64 / all.max(1) as f64))
}

/// Runs the analysis. `fp32` is the model as given; `quantized`, if given, is analyzed instead of
/// the int8 pipeline's result. `opts` carries the calibration samples and quantization options.
pub fn analyze(fp32: &Graph, quantized: Option<&Graph>, opts: &PipelineOptions) -> Result<Analysis, String> {
    let samples: Arc<Tensor> = opts.pass_options.calibration.clone().ok_or("analyze needs calibration samples (--calib)")?;
    let (reference, calibrated) = crate::exec::reference_and_calibrated(fp32, opts)?;
    let lower = qc_passes::lower_to_int8();
    let mut ours = calibrated.clone();
    crate::exec::run_passes(&mut ours, &lower, opts)?;
    let q = quantized.unwrap_or(&ours);
    let batches = input_batches(&reference, &samples, &opts.pass_options.calibration_rest)?;

    // The reference: every value on every batch.
    let mut values: Vec<HashMap<ValueId, Tensor>> = Vec::new();
    let mut reference_out = Vec::new();
    for x in &batches {
        let mut m = HashMap::new();
        let out = evaluate_observed(&reference, x, |v, t| {
            m.insert(v, t.clone());
        })
        .map_err(|e| e.to_string())?;
        reference_out.push(out.into_iter().next().ok_or("the model has no output")?);
        values.push(m);
    }
    let by_loc = ops_by_loc(&reference);
    let layers = quantized_ops(q, &by_loc);

    // Cumulative: the int8 model's own values.
    let mut cumulative = vec![Acc::default(); layers.len()];
    let results: HashMap<ValueId, usize> = layers.iter().enumerate().map(|(i, &n)| (q.node(n).results[0], i)).collect();
    for (b, x) in batches.iter().enumerate() {
        let mut err = None;
        evaluate_observed(q, x, |v, t| {
            if let Some(&i) = results.get(&v) {
                let r = &values[b][&reference.node(by_loc[&q.node(layers[i]).loc.name]).results[0]];
                match dequantize(t, q.ty(v)) {
                    Ok(got) => cumulative[i].add(&flat(r), &got),
                    Err(e) => err = Some(e),
                }
            }
        })
        .map_err(|e| e.to_string())?;
        if let Some(e) = err {
            return Err(e);
        }
    }

    // Isolated: each op alone, on the reference's own inputs.
    let mut isolated: Vec<Option<Acc>> = vec![Some(Acc::default()); layers.len()];
    for (i, &n) in layers.iter().enumerate() {
        let node = q.node(n);
        let rnode = reference.node(by_loc[&node.loc.name]);
        if rnode.operands.len() != node.operands.len() {
            isolated[i] = None;
            continue;
        }
        for vals in values.iter() {
            let mut args = Vec::new();
            let mut ok = true;
            for (k, &o) in node.operands.iter().enumerate() {
                let ty = q.ty(o);
                if let Some(c) = qc_passes::const_value(q, o) {
                    args.push((*c).clone());
                } else if let (Some(t), Some(_)) = (vals.get(&rnode.operands[k]), ty.elem.quant()) {
                    args.push(eval_op(
                        OpKind::Quantize,
                        &Default::default(),
                        &[t],
                        &[&ty.with_elem(qc_ir::ScalarType::F32)],
                        ty,
                    )?);
                } else {
                    ok = false;
                    break;
                }
            }
            if !ok {
                isolated[i] = None;
                break;
            }
            let refs: Vec<&Tensor> = args.iter().collect();
            let tys: Vec<&qc_ir::TensorType> = node.operands.iter().map(|&o| q.ty(o)).collect();
            let out_ty = q.ty(node.results[0]);
            let y = eval_op(node.kind, &node.attrs, &refs, &tys, out_ty)?;
            if let Some(acc) = isolated[i].as_mut() {
                acc.add(&flat(&vals[&rnode.results[0]]), &dequantize(&y, out_ty)?);
            }
        }
    }

    // What keeping each op in fp32 recovers, from the same calibration.
    let (full_db, agreement) = output_sqnr(&ours, &batches, &reference_out)?;
    let (output_sqnr_db, agreement) = match quantized {
        Some(g) => output_sqnr(g, &batches, &reference_out)?,
        None => (full_db, agreement),
    };
    let mut report = Vec::new();
    for (i, &n) in layers.iter().enumerate() {
        let name = q.node(n).loc.name.clone();
        let mut o = opts.clone();
        o.pass_options.keep_fp32 = vec![name.clone()];
        let mut kept = calibrated.clone();
        crate::exec::run_passes(&mut kept, &lower, &o)?;
        let (db, _) = output_sqnr(&kept, &batches, &reference_out)?;
        report.push(LayerError {
            name,
            op: q.node(n).kind.to_string(),
            isolated: isolated[i].map(|a| a.metrics()),
            cumulative: cumulative[i].metrics(),
            keep_fp32_db: db - full_db,
        });
    }
    report.sort_by(|a, b| b.keep_fp32_db.total_cmp(&a.keep_fp32_db));

    // Histograms of the calibrated activations, with each method's range.
    let mut histograms = Vec::new();
    for s in calibrated.topo_order().unwrap_or_default() {
        let node = calibrated.node(s);
        if node.kind != OpKind::Stats {
            continue;
        }
        let v = node.operands[0];
        let mut obs = Observer::default();
        for vals in &values {
            if let Some(a) = vals.get(&v).and_then(|t| t.as_f32()) {
                obs.observe(a.iter().copied());
            }
        }
        let (bins, range, zeros) = obs.histogram();
        let ranges = ["minmax", "percentile", "kl", "js", "mse"]
            .iter()
            .map(|m| {
                let method: CalibMethod = m.parse().expect("a known method");
                let (lo, hi) = obs.range(method);
                (m.to_string(), lo, hi)
            })
            .collect();
        histograms.push(Histogram { value: calibrated.display_value(v), bins: bins.to_vec(), range, zeros, ranges });
    }
    Ok(Analysis { layers: report, output_sqnr_db, agreement, histograms })
}

impl Analysis {
    /// The ranked table.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "int8 vs fp32 on the calibration samples: output SQNR {:.2} dB, top-1 agreement {:.2} %\n",
            self.output_sqnr_db,
            100.0 * self.agreement
        );
        s += &format!(
            "{:>4}  {:<28} {:<10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>12}\n",
            "rank", "layer", "op", "isol. dB", "cumul. dB", "cosine", "max |e|", "mean |e|", "keep fp32"
        );
        for (i, l) in self.layers.iter().enumerate() {
            let iso = l.isolated.map_or("-".to_string(), |m| format!("{:.2}", m.sqnr_db));
            s += &format!(
                "{:>4}  {:<28} {:<10} {:>10} {:>10.2} {:>8.5} {:>10.4} {:>10.5} {:>+9.2} dB\n",
                i + 1,
                l.name,
                l.op,
                iso,
                l.cumulative.sqnr_db,
                l.cumulative.cosine,
                l.cumulative.max_abs,
                l.cumulative.mean_abs,
                l.keep_fp32_db
            );
        }
        s
    }

    /// The analysis as JSON.
    pub fn to_json(&self) -> Value {
        let m = |m: &Metrics| json!({"sqnr_db": m.sqnr_db, "cosine": m.cosine, "max_abs": m.max_abs, "mean_abs": m.mean_abs});
        let layers: Vec<Value> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({"rank": i + 1, "layer": l.name, "op": l.op, "isolated": l.isolated.as_ref().map(m),
                       "cumulative": m(&l.cumulative), "keep_fp32_gain_db": l.keep_fp32_db})
            })
            .collect();
        json!({"output_sqnr_db": self.output_sqnr_db, "agreement": self.agreement, "layers": layers})
    }
}
