//! Sensitivity-driven mixed precision (`qc compile --mixed-precision --max-loss P [--min-sqnr D]`):
//! each conv, gemm and matmul gets i4 weights, i8 weights or fp32, whichever is cheapest while the
//! model's top-1 agreement with fp32 on the calibration samples loses at most P percentage points
//! (and, with `--min-sqnr`, its output SQNR against fp32 stays at least D dB).
//!
//! Greedy: every layer starts at i4 weights (with 8-bit activations); while the loss exceeds the
//! budget, the upgrade that raises the model's output SQNR most is taken — i4 → i8 first, and
//! i8 → fp32 only once no layer is left at i4. Every candidate is measured by compiling it (from
//! one calibration) and running it on the samples. Each decision is reported with its reason; the
//! resulting IR shows each layer's precision in its weight type (`!q<i4`, `!q<i8` or `f32`).

use qc_ir::eval::evaluate;
use qc_ir::{Graph, OpKind, Tensor};
use qc_passes::PipelineOptions;
use qc_passes::samples::{argmax_rows, input_batches};

/// A layer's precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// i4 weights, 8-bit activations.
    Int4,
    /// i8 weights, 8-bit activations.
    Int8,
    /// Not quantized.
    Fp32,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Int4 => "int4",
            Precision::Int8 => "int8",
            Precision::Fp32 => "fp32",
        })
    }
}

/// The choice: each layer's precision and the decisions that led there.
#[derive(Clone, Debug)]
pub struct Plan {
    /// (layer location name, precision).
    pub layers: Vec<(String, Precision)>,
    /// One line per decision.
    pub decisions: Vec<String>,
    /// Final agreement loss, percentage points.
    pub loss: f64,
}

impl Plan {
    /// Sets the options `insert-qdq` reads.
    pub fn apply(&self, o: &mut qc_passes::PassOptions) {
        for (name, p) in &self.layers {
            match p {
                Precision::Int4 => o.layer_weight_bits.push((name.clone(), 4)),
                Precision::Int8 => o.layer_weight_bits.push((name.clone(), 8)),
                Precision::Fp32 => o.keep_fp32.push(name.clone()),
            }
        }
    }
}

struct Scorer {
    batches: Vec<Vec<Tensor>>,
    reference: Vec<Tensor>,
}

impl Scorer {
    /// (agreement loss in points, output SQNR in dB).
    fn score(&self, g: &Graph) -> Result<(f64, f64), String> {
        let (mut same, mut all, mut signal, mut noise) = (0usize, 0usize, 0f64, 0f64);
        for (x, r) in self.batches.iter().zip(&self.reference) {
            let y = evaluate(g, x).map_err(|e| e.to_string())?.remove(0);
            let (a, b) = (argmax_rows(r), argmax_rows(&y));
            same += a.iter().zip(&b).filter(|(p, q)| p == q).count();
            all += a.len();
            for (p, q) in r.to_f64_vec().iter().zip(y.to_f64_vec()) {
                signal += p * p;
                noise += (p - q) * (p - q);
            }
        }
        let sqnr = if noise == 0.0 { f64::INFINITY } else { 10.0 * (signal / noise).log10() };
        Ok((100.0 * (1.0 - same as f64 / all.max(1) as f64), sqnr))
    }
}

/// Chooses each layer's precision for `fp32` under `max_loss` points, with `opts`' calibration
/// samples and quantization options.
pub fn choose(fp32: &Graph, opts: &PipelineOptions, max_loss: f64, min_sqnr: Option<f64>) -> Result<Plan, String> {
    let samples = opts.pass_options.calibration.clone().ok_or("--mixed-precision needs --calib")?;
    let (reference, calibrated) = crate::exec::reference_and_calibrated(fp32, opts)?;
    let batches = input_batches(&reference, &samples, &opts.pass_options.calibration_rest)?;
    let outputs: Result<Vec<Tensor>, String> =
        batches.iter().map(|x| evaluate(&reference, x).map(|mut v| v.remove(0)).map_err(|e| e.to_string())).collect();
    let scorer = Scorer { batches, reference: outputs? };
    let names: Vec<String> = calibrated
        .topo_order()
        .unwrap_or_default()
        .into_iter()
        .filter(|&n| matches!(calibrated.node(n).kind, OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul))
        .map(|n| calibrated.node(n).loc.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    let try_plan = |layers: &[(String, Precision)]| -> Result<(f64, f64), String> {
        let plan = Plan { layers: layers.to_vec(), decisions: Vec::new(), loss: 0.0 };
        let mut o = opts.clone();
        o.pass_options.layer_weight_bits.clear();
        plan.apply(&mut o.pass_options);
        let mut g = calibrated.clone();
        crate::exec::run_passes(&mut g, &qc_passes::lower_to_int8(), &o)?;
        scorer.score(&g)
    };
    let mut layers: Vec<(String, Precision)> = names.iter().map(|n| (n.clone(), Precision::Int4)).collect();
    let (mut loss, mut sqnr) = try_plan(&layers)?;
    let mut decisions = vec![format!(
        "start: every layer int4: agreement loss {loss:.2} points, output SQNR {sqnr:.2} dB (budget {max_loss} points{})",
        min_sqnr.map_or(String::new(), |d| format!(", at least {d} dB"))
    )];
    let floor = min_sqnr.unwrap_or(f64::NEG_INFINITY);
    while loss > max_loss || sqnr < floor {
        let from = if layers.iter().any(|l| l.1 == Precision::Int4) { Precision::Int4 } else { Precision::Int8 };
        let to = if from == Precision::Int4 { Precision::Int8 } else { Precision::Fp32 };
        let mut best: Option<(usize, f64, f64)> = None;
        for i in 0..layers.len() {
            if layers[i].1 != from {
                continue;
            }
            let mut trial = layers.clone();
            trial[i].1 = to;
            let (l, s) = try_plan(&trial)?;
            if best.is_none_or(|(_, bl, bs)| (s, -l) > (bs, -bl)) {
                best = Some((i, l, s));
            }
        }
        let Some((i, l, s)) = best else {
            decisions.push("every layer is fp32".into());
            break;
        };
        decisions.push(format!(
            "{}: {from} → {to}, the most sensitive left at {from} (output SQNR {sqnr:.2} → {s:.2} dB, agreement loss {loss:.2} → {l:.2} points)",
            layers[i].0
        ));
        layers[i].1 = to;
        (loss, sqnr) = (l, s);
    }
    decisions.push(format!("final: agreement loss {loss:.2} points, output SQNR {sqnr:.2} dB"));
    Ok(Plan { layers, decisions, loss })
}
