//! The compile driver: a typed [`Request`] (which passes, their options, calibration, the
//! compression and precision choices, what to print and report) in, an [`Outcome`] (the graph,
//! the fusion report, the passes' notes, the choices it made, timings) out. It owns what the
//! passes alone do not decide: assembling the pipeline (compression passes placed by the rules
//! below), choosing the calibration method (`auto`), mixed precision, and the pruning report.
//! The CLI, the C ABI and other hosts call it; none of them re-implements an option.

use crate::QcError;
use crate::model::Model;
use qc_ir::{Graph, OpKind};
use qc_passes::{CalibMethod, PassOptions, PassRecord, PipelineOptions, run_pipeline};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which passes run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Pipeline {
    /// `dynamic` for dynamic quantization, `int8` when calibration samples are given, else
    /// `default`; with the compression passes the options call for.
    #[default]
    Default,
    /// A named pipeline (see `qc passes`), with the compression passes the options call for.
    Named(String),
    /// Exactly these passes, in this order.
    Passes(Vec<String>),
}

/// How calibration chooses each activation's range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Calibration {
    /// One method for every tensor (overrides aside).
    Method(CalibMethod),
    /// Each method in turn; keep the one whose outputs on the calibration samples have the best
    /// SQNR against the uncompiled graph.
    Auto,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration::Method(CalibMethod::MinMax)
    }
}

/// Mixed precision's budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixedPrecision {
    /// The most top-1 agreement (percentage points, on the calibration samples) to lose.
    pub max_loss: f64,
    /// And the least output SQNR against fp32 to keep, in dB.
    pub min_sqnr: Option<f64>,
}

/// What the pipeline shows as it runs.
#[derive(Clone, Debug, Default)]
pub struct Printing {
    /// Print the IR after every pass.
    pub after_all: bool,
    /// Print the IR after these passes.
    pub after: Vec<String>,
    /// Write `NN-pass.qir` after every pass into this directory.
    pub dump_dir: Option<PathBuf>,
    /// End the pipeline after this pass.
    pub stop_after: Option<String>,
}

/// A compile request.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Which passes.
    pub pipeline: Pipeline,
    /// Dynamic quantization (the `dynamic` pipeline by default).
    pub dynamic: bool,
    /// The passes' options: quantization scheme, calibration samples, pruning, sparsity, ...
    pub options: PassOptions,
    /// The calibration method (`options.calib_method` is set from it).
    pub calibration: Calibration,
    /// Add `bias-correction` after `insert-qdq`.
    pub bias_correction: bool,
    /// Add `equalize` after `fuse-activation` (SmoothQuant when `options.smooth_alpha` is set,
    /// which implies it).
    pub equalize: bool,
    /// Add `cluster-weights` (with `options.clusters` values per layer).
    pub cluster: bool,
    /// Choose each layer's precision by measured sensitivity.
    pub mixed_precision: Option<MixedPrecision>,
    /// Measure the pruned model against the unpruned one (latency at batch 1 and 64).
    pub pruning_report: bool,
    /// What to print or dump as the passes run.
    pub printing: Printing,
}

impl Request {
    /// Whether the options prune channels.
    pub fn prunes(&self) -> bool {
        self.options.prune.ratio.is_some() || !self.options.prune.layers.is_empty()
    }

    /// Whether the options sparsify weights.
    pub fn sparsifies(&self) -> bool {
        self.options.sparsify.sparsity.is_some() || !self.options.sparsify.layers.is_empty()
    }

    /// The same request without pruning, sparsity or clustering (the stages `qc size` compares).
    pub fn without_compression(&self) -> Request {
        let mut r = self.clone();
        r.options.prune.ratio = None;
        r.options.prune.layers.clear();
        r.options.sparsify.sparsity = None;
        r.options.sparsify.layers.clear();
        r.cluster = false;
        r
    }

    /// The passes to run: the pipeline, plus the compression and accuracy passes the options
    /// call for, each where its [`qc_passes::Placement`] in the registry says (`prune-channels`
    /// before `fold-bn`, so that `bn-gamma` can rank channels by batch norms; `sparsify` after
    /// it, so that its zeros are those of the weights the JIT multiplies; ...). An explicit pass
    /// list is taken as it is.
    pub fn passes(&self) -> Result<Vec<String>, QcError> {
        self.passes_for(None)
    }

    /// The pipeline [`Pipeline::Default`] stands for: `dynamic` with `--dynamic`, `int8` with
    /// calibration samples, `qdq` for a model `g` that is already quantized (it carries
    /// quantize/dequantize ops: ONNX Runtime's QDQ models, quantization-aware training's), else
    /// `default`.
    pub fn default_pipeline(&self, g: Option<&Graph>) -> &'static str {
        let quantized = |g: &Graph| g.node_ids().any(|n| matches!(g.node(n).kind, OpKind::Quantize | OpKind::Dequantize));
        if self.dynamic {
            "dynamic"
        } else if self.options.calibration.is_some() {
            "int8"
        } else if g.is_some_and(quantized) {
            "qdq"
        } else {
            "default"
        }
    }

    /// [`Request::passes`] for the model `g` (the default pipeline depends on it).
    pub fn passes_for(&self, g: Option<&Graph>) -> Result<Vec<String>, QcError> {
        let mut names = match &self.pipeline {
            Pipeline::Passes(p) => return Ok(p.clone()),
            Pipeline::Named(name) => qc_passes::pipeline(name).map_err(|e| QcError::Usage(format!("{e}")))?,
            Pipeline::Default => qc_passes::pipeline(self.default_pipeline(g)).expect("the pipeline exists"),
        };
        let wanted = [
            ("prune-channels", self.prunes()),
            ("sparsify", self.sparsifies()),
            ("equalize", self.equalize || self.options.smooth_alpha.is_some()),
            ("bias-correction", self.bias_correction),
            ("cluster-weights", self.cluster),
        ];
        for (pass, _) in wanted.iter().filter(|(_, on)| *on) {
            qc_passes::place(&mut names, pass).map_err(|e| QcError::Usage(format!("{e}")))?;
        }
        Ok(names)
    }

    /// Checks every pass name the request uses (the pipeline's, `--print-after`'s and
    /// `--stop-after`'s) before any work is done.
    pub fn check(&self) -> Result<Vec<String>, QcError> {
        let names = self.passes()?;
        for n in names.iter().chain(&self.printing.after).chain(&self.printing.stop_after) {
            qc_passes::lookup(n, &self.options).map_err(|e| QcError::Usage(format!("{e}")))?;
        }
        if self.calibration == Calibration::Auto && self.options.calibration.is_none() {
            return Err(QcError::Usage("--calib-method auto needs --calib".into()));
        }
        if names.iter().any(|n| n == "quantize-dynamic") {
            if self.options.weight_bits == 4 {
                return Err(QcError::Usage(
                    "--weight-bits 4 is for static quantization; dynamic quantization takes 8 or 7".into(),
                ));
            }
            if !self.options.layer_weight_bits.is_empty() {
                return Err(QcError::Usage(
                    "--layer-weight-bits is for static quantization; --dynamic takes --weight-bits".into(),
                ));
            }
        }
        Ok(names)
    }

    /// Pipeline options for a quiet run of the passes (no printing), with `options`.
    fn quiet(options: &PassOptions) -> PipelineOptions {
        PipelineOptions { check_weights: true, pass_options: options.clone(), ..Default::default() }
    }
}

/// What compiling decided and measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The pipeline the request's default stood for with this model (see
    /// [`Request::default_pipeline`]); `None` when the request named a pipeline or passes.
    pub pipeline: Option<&'static str>,
    /// What each pass did.
    pub records: Vec<PassRecord>,
    /// What stayed f32 and why, with the passes' notes.
    pub fusion: crate::report::FusionReport,
    /// The calibration method `auto` chose, with every method's output SQNR (dB).
    pub calibration: Option<(CalibMethod, Vec<(String, f64)>)>,
    /// Mixed precision's decisions, in order.
    pub mixed_precision: Vec<String>,
    /// The pruning reports (batch 1 and 64), when asked for and the request prunes.
    pub pruning: Vec<crate::prune_report::PruneReport>,
    /// Wall time of each stage: `auto-calibration`, `mixed-precision`, each pass, `pruning-report`.
    pub timings: Vec<(String, Duration)>,
}

/// Compiles `model.graph` in place as `request` says; the IR printed after passes goes to
/// `print_to`.
pub fn compile(model: &mut Model, request: &Request, print_to: &mut dyn std::io::Write) -> Result<Outcome, QcError> {
    request.check()?;
    crate::layer_names::check_layer_names(&model.graph, &request.options)?;
    let names = request.passes_for(Some(&model.graph))?;
    let mut options = request.options.clone();
    let mut outcome = Outcome::default();
    if request.pipeline == Pipeline::Default {
        outcome.pipeline = Some(request.default_pipeline(Some(&model.graph)));
    }
    let input_error = |e: String| QcError::Input(format!("{e}"));
    if request.calibration == Calibration::Auto {
        let t = Instant::now();
        let samples = options.calibration.clone().expect("checked");
        // The trials and the compile after them calibrate once (see `exec::choose_calibration`).
        options.calib_cache = Some(qc_passes::CalibCache::default());
        let (method, scores) =
            crate::exec::choose_calibration(&model.graph, &names, &Request::quiet(&options), &samples).map_err(input_error)?;
        options.calib_method = method;
        outcome.calibration = Some((method, scores));
        outcome.timings.push(("auto-calibration".into(), t.elapsed()));
    } else if let Calibration::Method(m) = request.calibration {
        options.calib_method = m;
    }
    if let Some(mp) = request.mixed_precision {
        let t = Instant::now();
        let plan = crate::mixed_precision::choose(&model.graph, &Request::quiet(&options), mp.max_loss, mp.min_sqnr)
            .map_err(input_error)?;
        plan.apply(&mut options);
        outcome.mixed_precision = plan.decisions;
        outcome.timings.push(("mixed-precision".into(), t.elapsed()));
    }
    let opts = PipelineOptions {
        print_after_all: request.printing.after_all,
        print_after: request.printing.after.clone(),
        dump_dir: request.printing.dump_dir.clone(),
        dump_weights: request.printing.dump_dir.as_ref().map(|_| crate::model::dump_weights_writer()),
        stop_after: request.printing.stop_after.clone(),
        check_weights: true,
        pass_options: options.clone(),
    };
    let unpruned_input = (request.prunes() && request.pruning_report).then(|| model.graph.clone());
    let output_names: Vec<Option<String>> = model.graph.outputs().iter().map(|&v| model.graph.value(v).name.clone()).collect();
    let records = run_pipeline(&mut model.graph, &names, &opts, print_to).map_err(|e| {
        if e.diagnostics.is_empty() {
            QcError::Input(format!("{e}"))
        } else {
            QcError::Input(format!("pass {}: {}\n{}", e.pass, e.message, model.render(&e.diagnostics)))
        }
    })?;
    outcome.timings.extend(records.iter().map(|r| (r.name.clone(), r.elapsed)));
    restore_output_names(&mut model.graph, &output_names);
    outcome.fusion = crate::report::fusion_report(&model.graph);
    outcome.fusion.notes = records.iter().flat_map(|r| r.notes.iter().map(|n| format!("{}: {n}", r.name))).collect();
    outcome.records = records;
    if let Some(unpruned) = unpruned_input {
        let t = Instant::now();
        outcome.pruning = pruning_report(unpruned, &model.graph, &names, &options)?;
        outcome.timings.push(("pruning-report".into(), t.elapsed()));
    }
    Ok(outcome)
}

/// Gives each output of `g` back the name the model's output had (`%logits`, not the
/// `%logits.dq` quantizing left), so that what reads the outputs by name (`qc run`'s files, an
/// exported model's outputs) finds the names of the model it started from; a value that took
/// the name meanwhile gets another.
fn restore_output_names(g: &mut Graph, names: &[Option<String>]) {
    for (i, name) in names.iter().enumerate() {
        let (Some(name), Some(&out)) = (name, g.outputs().get(i)) else { continue };
        if g.value(out).name.as_deref() == Some(name.as_str())
            || g.outputs().iter().any(|&o| o != out && g.value(o).name.as_deref() == Some(name.as_str()))
        {
            continue;
        }
        let holder = g.value_ids().find(|&v| g.value(v).name.as_deref() == Some(name.as_str()));
        if let Some(holder) = holder {
            let other = g.unique_name(&format!("{name}.inner"));
            g.value_mut(holder).name = Some(other);
        }
        g.value_mut(out).name = Some(name.clone());
    }
}

/// The same pipeline without pruning, timed against the pruned graph at batch 1 and 64.
fn pruning_report(
    mut unpruned: Graph,
    pruned: &Graph,
    names: &[String],
    options: &PassOptions,
) -> Result<Vec<crate::prune_report::PruneReport>, QcError> {
    let without: Vec<String> = names.iter().filter(|n| *n != "prune-channels").cloned().collect();
    run_pipeline(&mut unpruned, &without, &Request::quiet(options), &mut std::io::sink())
        .map_err(|e| QcError::Input(format!("{e}")))?;
    [1, 64]
        .into_iter()
        .map(|batch| {
            crate::prune_report::prune_report(&unpruned, pruned, batch, 50)
                .map_err(|e| QcError::Input(format!("pruning report: {e}")))
        })
        .collect()
}

/// Runs `request`'s passes over a copy of `g` quietly (no printing, no report): the graph a
/// stage of `qc size` or a trial of a search measures.
pub fn compile_quietly(g: &Graph, request: &Request) -> Result<Graph, QcError> {
    let names = request.passes_for(Some(g))?;
    let mut options = request.options.clone();
    if let Calibration::Method(m) = request.calibration {
        options.calib_method = m;
    }
    let mut out = g.clone();
    run_pipeline(&mut out, &names, &Request::quiet(&options), &mut std::io::sink())
        .map_err(|e| QcError::Input(format!("{e}")))?;
    Ok(out)
}
