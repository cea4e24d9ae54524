//! Commands that compile: `compile`, `analyze`, `size` — a [`Request`] built from the flags, the
//! driver, and the printing.

use super::args::{Activations, CompileArgs, Criterion, Requant};
use super::usage;
use crate::{note, say};
use qc::driver::{Calibration, MixedPrecision, Pipeline, Printing, Request};
use qc::io::read_tensor;
use qc::{QcError, load_model, save_model};
use qc_ir::requant::RequantMode;
use qc_ir::text::print;
use qc_passes::PassOptions;
use std::io::Write;
use std::path::Path;

pub(crate) fn analyze(a: CompileArgs, quantized: Option<&Path>, plots: Option<&Path>, json: bool) -> Result<(), QcError> {
    reject_outputs("analyze", &a)?;
    if a.calib.is_empty() {
        return Err(usage("qc analyze needs --calib X.npy"));
    }
    let model = load_model(&a.model, a.weights.as_deref())?;
    let mut q = quantized.map(|p| load_model(p, None)).transpose()?;
    if let (Some(q), Some(path)) = (&mut q, quantized)
        && Request::default().default_pipeline(Some(&q.graph)) == "qdq"
    {
        // A model quantized elsewhere (ONNX Runtime's QDQ form) computes in f32 between its
        // dequantize and quantize ops: its integer ops are what the qdq pipeline makes of them.
        note!("note: {} is a QDQ model: comparing the integer ops the qdq pipeline makes of it", path.display());
        qc::driver::compile(q, &Request::default(), &mut std::io::sink())?;
    }
    let opts = qc_passes::PipelineOptions {
        check_weights: true,
        pass_options: request(&a, &model.graph)?.options,
        ..Default::default()
    };
    let r = qc::analyze::analyze(&model.graph, q.as_ref().map(|m| &m.graph), &opts).map_err(|e| QcError::Input(e.to_string()))?;
    if let Some(dir) = plots {
        std::fs::create_dir_all(dir).map_err(|e| QcError::Input(format!("cannot create {}: {e}", dir.display())))?;
        qc::io::write_atomic(&dir.join("sqnr.svg"), qc::plots::sqnr_bars(&r).as_bytes())?;
        for h in &r.histograms {
            let name: String =
                h.value.trim_start_matches('%').chars().map(|c| if c.is_alphanumeric() || c == '_' { c } else { '_' }).collect();
            qc::io::write_atomic(&dir.join(format!("hist_{name}.svg")), qc::plots::histogram(h).as_bytes())?;
        }
        note!("plots: {} files in {}", 1 + r.histograms.len(), dir.display());
    }
    if let (Some(q), true) = (&q, r.layers.is_empty()) {
        // Layers are matched by their op's location (the ONNX node name): say why none did.
        let locs = |g: &qc_ir::Graph| -> Vec<String> {
            let mut v: Vec<String> = g.node_ids().map(|n| g.node(n).loc.name.clone()).filter(|l| !l.is_empty()).collect();
            v.sort();
            v.dedup();
            v.truncate(4);
            v
        };
        note!(
            "note: no integer op of {} has the location (ONNX node name) of an op of {}, so no layer can be compared;              they have e.g. {:?} and {:?}",
            q.path.display(),
            a.model.display(),
            locs(&q.graph),
            locs(&model.graph)
        );
    }
    if json {
        super::say_json(&r.to_json());
    } else {
        say!("{}", r.summary().trim_end());
    }
    Ok(())
}

/// `analyze` and `size` take `compile`'s options but write no model: the options that only
/// shape what `compile` writes or prints are refused rather than ignored.
fn reject_outputs(command: &str, a: &CompileArgs) -> Result<(), QcError> {
    let given = [
        ("-o/--output", a.output.is_some()),
        ("--dump-dir", a.dump_dir.is_some()),
        ("--report", a.report.is_some()),
        ("--compress", a.compress),
        ("--print-after-all", a.print_after_all),
        ("--print-after", !a.print_after.is_empty()),
    ];
    match given.iter().find(|(_, on)| *on) {
        Some((flag, _)) => Err(usage(format!("qc {command} writes no model: {flag} is for qc compile"))),
        None => Ok(()),
    }
}

pub(crate) fn size(a: CompileArgs, test: Option<(&Path, &Path)>, json: bool) -> Result<(), QcError> {
    reject_outputs("size", &a)?;
    let model = load_model(&a.model, a.weights.as_deref())?;
    let data = match test {
        Some((x, y)) => Some((
            read_tensor(x)?,
            read_tensor(y)?.to_i64_vec().ok_or_else(|| QcError::Input(format!("{}: labels must be integers", y.display())))?,
        )),
        None => None,
    };
    let errors = |g: &qc_ir::Graph| -> Result<Option<usize>, QcError> {
        let Some((x, y)) = &data else { return Ok(None) };
        let compiled = qc_codegen::CompiledModel::compile(g).map_err(|e| QcError::Input(e.to_string()))?;
        let out =
            qc::exec::run_batch_with(g, x, 64, |xi| compiled.run(&[xi]).map(|mut v| v.remove(0)).map_err(|e| e.to_string()))
                .map_err(|e| QcError::Input(e.to_string()))?;
        Ok(Some(qc::exec::argmax_rows(&out).iter().zip(y).filter(|(p, l)| **p as i64 != **l).count()))
    };
    let full = request(&a, &model.graph)?;
    let compiled = |r: &Request| qc::driver::compile_quietly(&model.graph, r);
    let mut stages = vec![qc::size_report::stage("fp32", &model.graph, errors(&model.graph)?)];
    let mut last = model.graph.clone();
    if !a.calib.is_empty() {
        last = compiled(&full.without_compression())?;
        stages.push(qc::size_report::stage("int8", &last, errors(&last)?));
    }
    if full.prunes() || full.sparsifies() {
        last = compiled(&Request { cluster: false, ..full.clone() })?;
        stages.push(qc::size_report::stage("pruned", &last, errors(&last)?));
    }
    if full.cluster {
        last = compiled(&full)?;
        stages.push(qc::size_report::stage("clustered", &last, errors(&last)?));
    }
    let needed = qc::model::referenced_weights(&last);
    let mut w = last.weights.clone();
    w.retain(|n| needed.iter().any(|m| m == n));
    let (bytes, packed) = qc::packed_weights::pack(&w);
    stages.push(qc::size_report::packed_stage(&last, &packed, bytes.len() as u64, stages.last().and_then(|s| s.errors)));
    if json {
        super::say_json(&qc::size_report::to_json(&stages));
    } else {
        say!("{}", qc::size_report::summary(&stages).trim_end());
    }
    Ok(())
}

/// The driver's request for `a`: flags parsed into typed options (choices by clap, the
/// `NAME=VALUE` ones and calibration methods by [`PassOptions::set`], the parser the test
/// directives share), the calibration samples read.
/// The request `a` makes of compiling `g` (whose inputs name the calibration files).
pub(crate) fn request(a: &CompileArgs, g: &qc_ir::Graph) -> Result<Request, QcError> {
    if a.distill > 0 && a.prune_ratio.is_none() && a.prune_layer.is_empty() {
        return Err(usage("--distill recovers what pruning lost: it needs --prune-ratio or --prune-layer"));
    }
    let mut o = PassOptions {
        requant: match a.requant {
            Requant::F32 => RequantMode::F32,
            Requant::Q31 => RequantMode::Q31,
        },
        activations: match a.activations {
            Activations::U8 => qc_ir::ScalarType::U8,
            Activations::I8 => qc_ir::ScalarType::I8,
        },
        symmetric_activations: a.symmetric,
        per_tensor_weights: a.per_tensor,
        keep_fp32: a.keep_fp32.clone(),
        smooth_alpha: a.smooth_alpha,
        prune: qc_passes::PruneOptions {
            ratio: a.prune_ratio,
            layers: Vec::new(),
            criterion: match a.prune_criterion {
                Criterion::L1 => qc_passes::PruneCriterion::L1,
                Criterion::L2 => qc_passes::PruneCriterion::L2,
                Criterion::BnGamma => qc_passes::PruneCriterion::BnGamma,
                Criterion::Activation => qc_passes::PruneCriterion::Activation,
                Criterion::Lsq => qc_passes::PruneCriterion::Lsq,
            },
            multiple: a.prune_multiple,
            reconstruct: a.reconstruct,
            steps: a.prune_steps,
            distill: a.distill,
            max_loss: a.max_loss,
        },
        clusters: a.clusters.unwrap_or(16),
        sparsify: qc_passes::SparsifyOptions {
            sparsity: a.sparsity,
            layers: Vec::new(),
            global: a.sparsity_global,
            block: a.block,
            reconstruct: a.reconstruct,
        },
        ..Default::default()
    };
    let calibration = match a.calib_method.as_str() {
        "auto" => Calibration::Auto,
        m => {
            o.set("calib-method", Some(m)).map_err(usage)?;
            Calibration::Method(o.calib_method)
        }
    };
    let weight_bits = [a.weight_bits.to_string()];
    let named: [(&str, &[String]); 5] = [
        ("weight-bits", &weight_bits),
        ("layer-weight-bits", &a.layer_weight_bits),
        ("sparsity-layer", &a.sparsity_layer),
        ("prune-layer", &a.prune_layer),
        ("calib-override", &a.calib_override),
    ];
    for (key, values) in named {
        for v in values {
            o.set(key, Some(v)).map_err(usage)?;
        }
    }
    if !a.calib.is_empty() {
        let files = qc::io::input_files(g, &a.calib, "--calib").map_err(usage)?;
        let mut samples = files.iter().map(|f| read_tensor(f).map(std::sync::Arc::new)).collect::<Result<Vec<_>, _>>()?;
        let first = samples.remove(0);
        o.progress = progress_bar(first.shape().first().copied().unwrap_or(0));
        o.calibration = Some(first);
        o.calibration_rest = samples;
    }
    let mixed_precision = match (a.mixed_precision, a.max_loss) {
        (false, _) => None,
        (true, Some(max_loss)) => Some(MixedPrecision { max_loss, min_sqnr: a.min_sqnr }),
        (true, None) => return Err(usage("--mixed-precision needs --max-loss P (percentage points of agreement)")),
    };
    Ok(Request {
        pipeline: match (&a.pipeline, &a.passes) {
            (_, Some(p)) => Pipeline::Passes(p.clone()),
            (Some(name), None) => Pipeline::Named(name.clone()),
            (None, None) => Pipeline::Default,
        },
        dynamic: a.dynamic,
        options: o,
        calibration,
        bias_correction: a.bias_correction,
        equalize: a.equalize,
        cluster: a.clusters.is_some(),
        mixed_precision,
        pruning_report: a.report.is_some(),
        printing: Printing {
            after_all: a.print_after_all,
            after: a.print_after.clone(),
            dump_dir: a.dump_dir.clone(),
            stop_after: a.stop_after.clone(),
        },
    })
}

/// A progress bar on stderr when a person is watching a long calibration.
fn progress_bar(samples: usize) -> Option<qc_passes::Progress> {
    if super::quiet() || !std::io::IsTerminal::is_terminal(&std::io::stderr()) || samples < 64 {
        return None;
    }
    let bar = indicatif::ProgressBar::new(samples as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("calibrating {bar:40} {pos}/{len} samples").expect("a valid template"));
    Some(qc_passes::Progress(std::sync::Arc::new(move |done, total| {
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
        }
    })))
}

pub(crate) fn compile(a: CompileArgs, json: bool) -> Result<(), QcError> {
    let mut model = load_model(&a.model, a.weights.as_deref())?;
    let request = request(&a, &model.graph)?;
    request.check()?;
    let mut out = super::QuietPipe(std::io::stdout().lock());
    let outcome = qc::driver::compile(&mut model, &request, &mut out)?;
    if outcome.pipeline == Some("qdq") {
        note!("note: the model is already quantized (it has quantize/dequantize ops): compiling it with the qdq pipeline");
    }
    if let Some((method, scores)) = &outcome.calibration {
        let table: Vec<String> = scores.iter().map(|(m, s)| format!("{m} {s:.2} dB")).collect();
        note!("calibration: {method} (output SQNR on the calibration samples: {})", table.join(", "));
    }
    for d in &outcome.mixed_precision {
        note!("mixed precision: {d}");
    }
    for n in &outcome.fusion.notes {
        note!("note: {n}");
    }
    if outcome.fusion.has_findings() && !super::quiet() {
        eprint!("{}", outcome.fusion.summary());
    }
    if super::verbose() {
        for (stage, t) in &outcome.timings {
            eprintln!("time: {stage:<24} {:>10.2} ms", t.as_secs_f64() * 1e3);
        }
    }
    for r in &outcome.pruning {
        note!("{}", r.summary().trim_end());
    }
    if let Some(path) = &a.report {
        let text = serde_json::to_string_pretty(&report_json(&outcome)).expect("JSON") + "\n";
        qc::io::write_atomic(path, text.as_bytes())?;
    }
    match &a.output {
        Some(o) if o.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) => {
            if a.compress {
                return Err(usage("--compress writes qc's packed weights file; an .onnx output holds its weights itself"));
            }
            super::files::write_onnx(&model.graph, o).map_err(|e| QcError::Input(format!("{}: {e}", a.model.display())))?;
        }
        Some(o) if a.compress => {
            let packed = qc::save_model_packed(&model.graph, o)?;
            let (raw, coded): (usize, usize) = packed.iter().fold((0, 0), |(r, c), p| (r + p.raw_bytes, c + p.packed_bytes));
            eprintln!(
                "weights: {raw} bytes → {coded} bytes compressed ({:.2}x) in {}",
                raw as f64 / coded.max(1) as f64,
                qc::model::packed_weights_path(o).display()
            );
        }
        Some(o) => save_model(&model.graph, o)?,
        None if !(a.print_after_all || !a.print_after.is_empty()) => {
            write!(out, "{}", print(&model.graph)).map_err(|e| QcError::Input(e.to_string()))?;
        }
        None => {}
    }
    if json {
        let mut v = report_json(&outcome);
        v["model"] = a.model.display().to_string().into();
        v["output"] = a.output.as_ref().map(|o| o.display().to_string()).into();
        v["pipeline"] = outcome.records.iter().map(|r| r.name.clone()).collect();
        v["calibration"] = match &outcome.calibration {
            Some((method, scores)) => serde_json::json!({
                "method": method.to_string(),
                "output_sqnr_db": scores.iter().map(|(m, s)| (m.clone(), serde_json::json!(s))).collect::<serde_json::Map<_, _>>(),
            }),
            None => serde_json::Value::Null,
        };
        v["mixed_precision"] = outcome.mixed_precision.clone().into();
        super::say_json(&v);
    }
    Ok(())
}

/// The `--report` file: the fusion report, each stage's wall time (`timings_ms`, in order) and
/// the pruning reports when asked for.
fn report_json(outcome: &qc::driver::Outcome) -> serde_json::Value {
    let mut json = outcome.fusion.to_json();
    json["timings_ms"] =
        outcome.timings.iter().map(|(stage, t)| serde_json::json!({ "stage": stage, "ms": t.as_secs_f64() * 1e3 })).collect();
    if !outcome.pruning.is_empty() {
        json["pruning"] = outcome.pruning.iter().map(|r| r.to_json()).collect();
    }
    json
}
