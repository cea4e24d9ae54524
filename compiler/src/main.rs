//! The `qc` command line.

use clap::{Parser, Subcommand, ValueEnum};
use qc::io::{read_tensor, write_tensor};
use qc::model::parse_source;
use qc::{QcError, load_model, save_model};
use qc_ir::eval::evaluate;
use qc_ir::requant::RequantMode;
use qc_ir::text::print;
use qc_ir::{Dim, ScalarType, Tensor};
use qc_passes::{PIPELINES, PassOptions, PipelineOptions, REGISTRY, run_pipeline};
use std::io::Write;

/// Prints a line to stdout; a closed pipe (`qc ... | head`) ends the output quietly instead of
/// panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "qc", version, about = "qc: a compiler that makes neural networks small and fast")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Requant {
    /// `M = f32(f32(s_x·s_w) / s_y)`, `y = rne(f32(acc)·M) + zp`.
    F32,
    /// `M = m0·2^-n`, one rounding in i64.
    Q31,
}

#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    /// The reference evaluator.
    Interp,
    /// The Cranelift JIT.
    Jit,
}

/// `qc eval`'s arguments.
#[derive(clap::Args)]
struct EvalArgs {
    /// The model.
    model: PathBuf,
    /// The inputs (.npy, a batch).
    #[arg(long)]
    input: PathBuf,
    /// The labels (.npy, integers).
    #[arg(long)]
    labels: PathBuf,
    /// A reference model (e.g. the fp32 original) to measure top-1 agreement with.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The weights file, if not beside the model.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Samples per evaluation for models with a dynamic batch (dynamic quantization depends on it).
    #[arg(long, default_value = "1")]
    batch: usize,
}

/// `qc compile`'s arguments.
#[derive(clap::Args, Clone)]
struct CompileArgs {
    /// The model (.qir, weights in the .safetensors beside it; or .onnx).
    model: PathBuf,
    /// Where to write the optimized QIR (weights go beside it); stdout when absent.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The weights file, if not beside the model.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// A named pipeline (see `qc passes`); `int8` when --calib is given, else `default`.
    #[arg(long, conflicts_with = "passes")]
    pipeline: Option<String>,
    /// Passes to run, comma separated.
    #[arg(long, value_delimiter = ',')]
    passes: Option<Vec<String>>,
    /// Print the IR after every pass.
    #[arg(long)]
    print_after_all: bool,
    /// Print the IR after this pass (repeatable).
    #[arg(long)]
    print_after: Vec<String>,
    /// Write NN-pass.qir after every pass into this directory.
    #[arg(long)]
    dump_dir: Option<PathBuf>,
    /// Stop after this pass.
    #[arg(long)]
    stop_after: Option<String>,
    /// How integer ops requantize: f32 (ONNX Runtime's formula) or q31 (integer only).
    #[arg(long, value_enum, default_value = "f32")]
    requant: Requant,
    /// Calibration samples: a batch of model inputs (.npy).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration method: minmax, percentile[:P], kl, js, mse, or auto (the best SQNR on the
    /// calibration samples).
    #[arg(long, default_value = "minmax")]
    calib_method: String,
    /// A method for one tensor, by value name or op location: NAME=METHOD (repeatable).
    #[arg(long)]
    calib_override: Vec<String>,
    /// Activation storage: u8 or i8.
    #[arg(long, default_value = "u8")]
    activations: String,
    /// Symmetric activations (zero point 0 for i8, 128 for u8).
    #[arg(long)]
    symmetric: bool,
    /// One weight scale per tensor instead of one per output channel.
    #[arg(long)]
    per_tensor: bool,
    /// Correct the quantized weights' spread and the outputs' mean shift on the --calib samples
    /// (adds `bias-correction` after `insert-qdq`).
    #[arg(long)]
    bias_correction: bool,
    /// Cross-layer equalization before calibration (adds `equalize` after `fuse-activation`).
    #[arg(long)]
    equalize: bool,
    /// SmoothQuant for gemm/matmul pairs with this migration strength (implies --equalize).
    #[arg(long)]
    smooth_alpha: Option<f32>,
    /// Weight bits: 8, or 4 (i4 weights with 8-bit activations).
    #[arg(long, default_value = "8", value_parser = clap::value_parser!(u8).range(4..=8))]
    weight_bits: u8,
    /// Weight bits for one layer: NAME=4 or NAME=8 (repeatable).
    #[arg(long)]
    layer_weight_bits: Vec<String>,
    /// Choose each layer's precision (int4 weights, int8, fp32) greedily by measured sensitivity
    /// until the --max-loss budget holds on the --calib samples.
    #[arg(long, requires = "calib")]
    mixed_precision: bool,
    /// With --mixed-precision: also keep the output SQNR against fp32 (calibration samples) at
    /// least this many dB.
    #[arg(long)]
    min_sqnr: Option<f64>,
    /// Keep this op (location or result name) in fp32 when quantizing (repeatable).
    #[arg(long)]
    keep_fp32: Vec<String>,
    /// Dynamic quantization (the `dynamic` pipeline) instead of calibrated static quantization.
    #[arg(long, conflicts_with_all = ["calib", "pipeline", "passes"])]
    dynamic: bool,
    /// Write the fusion report (what stayed f32 and why) to this JSON file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Structured pruning: remove this fraction of every prunable layer's output channels
    /// (adds `prune-channels` before `fold-bn` to the pipeline).
    #[arg(long)]
    prune_ratio: Option<f32>,
    /// A pruning ratio for one layer (its location, result or weight name): NAME=RATIO (repeatable).
    #[arg(long)]
    prune_layer: Vec<String>,
    /// How channels are ranked for pruning: l1, l2 or bn-gamma.
    #[arg(long, default_value = "l2")]
    prune_criterion: String,
    /// Kept channel counts are multiples of this (4: the JIT's GEMM column panel).
    #[arg(long, default_value = "4")]
    prune_multiple: usize,
    /// After pruning, re-fit the following layers by least squares on the --calib samples.
    #[arg(long)]
    reconstruct: bool,
    /// Reach the pruning ratios in this many steps, reconstructing in between.
    #[arg(long, default_value = "1")]
    prune_steps: usize,
    /// After pruning (and --reconstruct), fit every layer jointly to the unpruned model's outputs
    /// on shifted and mixed --calib samples, for this many Adam steps (distillation; 0: off).
    #[arg(long, default_value = "0")]
    distill: usize,
    /// The most top-1 agreement with the unpruned model (percentage points, on the --calib
    /// samples) pruning may lose; pruning stops at the last step within it.
    #[arg(long)]
    max_loss: Option<f64>,
    /// Unstructured sparsity: zero this fraction of every layer's weights, smallest first (adds
    /// `sparsify` after `fold-bn` to the pipeline; --reconstruct re-fits the rest).
    #[arg(long)]
    sparsity: Option<f32>,
    /// A sparsity for one layer: NAME=FRACTION (repeatable).
    #[arg(long)]
    sparsity_layer: Vec<String>,
    /// One magnitude threshold over all layers instead of the same fraction of each.
    #[arg(long)]
    sparsity_global: bool,
    /// Zero whole blocks of 16 output channels x 4 inputs (which the JIT skips) instead of single weights.
    #[arg(long)]
    block: bool,
    /// Weight sharing: k-means each layer's nonzero weights into this many values (adds
    /// `cluster-weights` before quantization).
    #[arg(long)]
    clusters: Option<usize>,
    /// Write the weights compressed (OUT.qcw: Huffman-coded, codebooks for shared weights)
    /// instead of OUT.safetensors.
    #[arg(long)]
    compress: bool,
}

impl CompileArgs {
    fn prunes(&self) -> bool {
        self.prune_ratio.is_some() || !self.prune_layer.is_empty()
    }

    fn sparsifies(&self) -> bool {
        self.sparsity.is_some() || !self.sparsity_layer.is_empty()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Import an ONNX model as QIR + safetensors weights.
    Import {
        /// The ONNX model.
        model: PathBuf,
        /// Where to write the QIR (weights go beside it).
        #[arg(short, long)]
        output: PathBuf,
        /// Fix the dims of an input: NAME=1x3x48x192 (repeatable; `?` keeps a dim dynamic).
        #[arg(long = "input-shape")]
        input_shape: Vec<String>,
    },
    /// Print a QIR file in canonical form.
    Fmt {
        /// The QIR file.
        model: PathBuf,
        /// Print nothing; exit 1 if the file is not in canonical form.
        #[arg(long)]
        check: bool,
    },
    /// List every pass and pipeline.
    Passes,
    /// Weight bytes per layer at each compression stage (fp32, int8, pruned, clustered, Huffman),
    /// with test errors when --test and --labels are given. Takes `qc compile`'s options.
    Size {
        #[command(flatten)]
        args: CompileArgs,
        /// Test inputs (.npy), to count each stage's errors.
        #[arg(long, requires = "labels")]
        test: Option<PathBuf>,
        /// Test labels (.npy).
        #[arg(long, requires = "test")]
        labels: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Per-layer quantization error (isolated and cumulative SQNR, cosine, max/mean error) and what
    /// keeping each layer in fp32 recovers, ranked. Takes `qc compile`'s quantization options.
    Analyze {
        #[command(flatten)]
        args: CompileArgs,
        /// Analyze this int8 model instead of compiling one.
        #[arg(long)]
        quantized: Option<PathBuf>,
        /// Write SVG plots here: per-layer SQNR bars, activation histograms with each method's range.
        #[arg(long)]
        plots: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite a model's weights compressed (OUT.qcw beside OUT.qir) and print what each tensor became.
    Pack {
        /// The model.
        model: PathBuf,
        /// Where to write the model (its compressed weights go beside it).
        #[arg(short, long)]
        output: PathBuf,
        /// The weights file, if not beside the model.
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Run a pipeline of passes over a model and write the result.
    Compile(CompileArgs),
    /// Write a model as ONNX (QDQ for quantized graphs) that ONNX Runtime runs.
    Export {
        /// The model.
        model: PathBuf,
        /// The ONNX file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// The weights file, if not beside the model.
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Accuracy of a model on labelled inputs, and top-1 agreement with a reference model.
    Eval(EvalArgs),
    /// Latency of the JIT and the evaluator, the JIT compile time, and time per layer.
    Bench {
        /// The model.
        model: PathBuf,
        /// Inputs to time (.npy); the first `--batch` samples are used.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The batch size.
        #[arg(long, default_value = "1")]
        batch: usize,
        /// Timed runs (medians are reported).
        #[arg(long, default_value = "50")]
        runs: usize,
        /// The weights file, if not beside the model.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Before each timed JIT run, write to this many KiB of other memory, as another program
        /// sharing the core's caches would (2048 empties this machine's 1 MiB L2); 0 times warm
        /// runs back to back.
        #[arg(long, default_value = "0")]
        evict_kib: usize,
    },
    /// Run a model on inputs from .npy files.
    Run {
        /// The model.
        model: PathBuf,
        /// The input batch: X.npy, or NAME=X.npy.
        #[arg(long)]
        input: String,
        /// Where to write the outputs (.npy).
        #[arg(short, long)]
        output: PathBuf,
        /// The weights file, if not beside the model.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Which engine runs the model.
        #[arg(long, value_enum, default_value = "jit")]
        engine: Engine,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Import { model, output, input_shape } => import(&model, &output, &input_shape),
        Command::Fmt { model, check } => fmt(&model, check),
        Command::Passes => {
            list_passes();
            Ok(())
        }
        Command::Compile(args) => compile(args),
        Command::Analyze { args, quantized, plots, json } => analyze(args, quantized.as_deref(), plots.as_deref(), json),
        Command::Pack { model, output, weights } => pack(&model, &output, weights.as_deref()),
        Command::Size { args, test, labels, json } => size(args, test.as_deref().zip(labels.as_deref()), json),
        Command::Eval(args) => eval(args),
        Command::Bench { model, input, batch, runs, weights, evict_kib } => {
            bench(&model, input.as_deref(), batch, runs, weights.as_deref(), evict_kib)
        }
        Command::Export { model, output, weights } => export(&model, &output, weights.as_deref()),
        Command::Run { model, input, output, weights, engine } => run(&model, &input, &output, weights.as_deref(), engine),
    };
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(e.exit_code());
    }
}

fn analyze(a: CompileArgs, quantized: Option<&Path>, plots: Option<&Path>, json: bool) -> Result<(), QcError> {
    if a.calib.is_none() {
        return Err(usage("qc analyze needs --calib X.npy"));
    }
    let model = load_model(&a.model, a.weights.as_deref())?;
    let q = quantized.map(|p| load_model(p, None)).transpose()?;
    let opts = PipelineOptions { check_weights: true, pass_options: pass_options(&a)?, ..Default::default() };
    let r = qc::analyze::analyze(&model.graph, q.as_ref().map(|m| &m.graph), &opts)
        .map_err(|e| QcError::Input(format!("error: {e}")))?;
    if let Some(dir) = plots {
        std::fs::create_dir_all(dir).map_err(|e| QcError::Input(format!("error: cannot create {}: {e}", dir.display())))?;
        qc::io::write_atomic(&dir.join("sqnr.svg"), qc::plots::sqnr_bars(&r).as_bytes())?;
        for h in &r.histograms {
            let name: String =
                h.value.trim_start_matches('%').chars().map(|c| if c.is_alphanumeric() || c == '_' { c } else { '_' }).collect();
            qc::io::write_atomic(&dir.join(format!("hist_{name}.svg")), qc::plots::histogram(h).as_bytes())?;
        }
        eprintln!("plots: {} files in {}", 1 + r.histograms.len(), dir.display());
    }
    if json {
        say!("{}", serde_json::to_string_pretty(&r.to_json()).expect("JSON"));
    } else {
        say!("{}", r.summary().trim_end());
    }
    Ok(())
}

fn size(a: CompileArgs, test: Option<(&Path, &Path)>, json: bool) -> Result<(), QcError> {
    let model = load_model(&a.model, a.weights.as_deref())?;
    let data = match test {
        Some((x, y)) => Some((
            read_tensor(x)?,
            read_tensor(y)?
                .to_i64_vec()
                .ok_or_else(|| QcError::Input(format!("error: {}: labels must be integers", y.display())))?,
        )),
        None => None,
    };
    let errors = |g: &qc_ir::Graph| -> Result<Option<usize>, QcError> {
        let Some((x, y)) = &data else { return Ok(None) };
        let compiled = qc_codegen::CompiledModel::compile(g).map_err(|e| QcError::Input(format!("error: {e}")))?;
        let out =
            qc::exec::run_batch_with(g, x, 64, |xi| compiled.run(&[xi]).map(|mut v| v.remove(0)).map_err(|e| e.to_string()))
                .map_err(|e| QcError::Input(format!("error: {e}")))?;
        Ok(Some(qc::exec::argmax_rows(&out).iter().zip(y).filter(|(p, l)| **p as i64 != **l).count()))
    };
    let compiled = |args: &CompileArgs| -> Result<qc_ir::Graph, QcError> {
        let names = pipeline_names(args)?;
        let opts = PipelineOptions { check_weights: true, pass_options: pass_options(args)?, ..Default::default() };
        let mut g = model.graph.clone();
        run_pipeline(&mut g, &names, &opts, &mut std::io::sink()).map_err(|e| QcError::Input(format!("error: {e}")))?;
        Ok(g)
    };
    let mut stages = vec![qc::size_report::stage("fp32", &model.graph, errors(&model.graph)?)];
    let mut last = model.graph.clone();
    let plain = CompileArgs {
        prune_ratio: None,
        prune_layer: Vec::new(),
        sparsity: None,
        sparsity_layer: Vec::new(),
        clusters: None,
        ..a.clone()
    };
    if a.calib.is_some() {
        last = compiled(&plain)?;
        stages.push(qc::size_report::stage("int8", &last, errors(&last)?));
    }
    if a.prunes() || a.sparsifies() {
        last = compiled(&CompileArgs { clusters: None, ..a.clone() })?;
        stages.push(qc::size_report::stage("pruned", &last, errors(&last)?));
    }
    if a.clusters.is_some() {
        last = compiled(&a)?;
        stages.push(qc::size_report::stage("clustered", &last, errors(&last)?));
    }
    let needed = qc::model::referenced_weights(&last);
    let mut w = last.weights.clone();
    w.retain(|n| needed.iter().any(|m| m == n));
    let (bytes, packed) = qc::packed_weights::pack(&w);
    stages.push(qc::size_report::packed_stage(&last, &packed, bytes.len() as u64, stages.last().and_then(|s| s.errors)));
    if json {
        say!("{}", serde_json::to_string_pretty(&qc::size_report::to_json(&stages)).expect("JSON"));
    } else {
        say!("{}", qc::size_report::summary(&stages).trim_end());
    }
    Ok(())
}

fn pack(path: &Path, out: &Path, weights: Option<&Path>) -> Result<(), QcError> {
    let model = load_model(path, weights)?;
    let packed = qc::save_model_packed(&model.graph, out)?;
    say!("{:<40} {:>10} {:>10}  coding", "tensor", "bytes", "packed");
    for p in &packed {
        say!("{:<40} {:>10} {:>10}  {:?}", p.name, p.raw_bytes, p.packed_bytes, p.coding);
    }
    let (raw, coded): (usize, usize) = packed.iter().fold((0, 0), |(r, c), p| (r + p.raw_bytes, c + p.packed_bytes));
    say!("{:<40} {:>10} {:>10}  ({:.2}x)", "total", raw, coded, raw as f64 / coded.max(1) as f64);
    // What loading pays for the compression, next to what compiling costs anyway.
    let file = qc::model::packed_weights_path(out);
    if file.exists() {
        let bytes = std::fs::read(&file).map_err(|e| QcError::Input(format!("error: {}: {e}", file.display())))?;
        let t = std::time::Instant::now();
        qc::packed_weights::unpack(&bytes, &file).map_err(|e| QcError::Input(format!("error: {e}")))?;
        let decode = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let jit = qc_codegen::CompiledModel::compile(&model.graph);
        let compile = t.elapsed().as_secs_f64();
        match jit {
            Ok(_) => say!(
                "decoding at load: {:.3} ms, {:.1} % of the JIT compile ({:.3} ms)",
                decode * 1e3,
                100.0 * decode / compile,
                compile * 1e3
            ),
            Err(_) => say!("decoding at load: {:.3} ms", decode * 1e3),
        }
    }
    Ok(())
}

fn import(path: &Path, out: &Path, shapes: &[String]) -> Result<(), QcError> {
    let mut opts = qc::onnx::ImportOptions::default();
    for s in shapes {
        let (name, dims) =
            s.split_once('=').ok_or_else(|| QcError::Usage(format!("error: --input-shape takes NAME=DIMS, got `{s}`")))?;
        let dims = dims
            .split('x')
            .map(|d| match d {
                "?" => Ok(Dim::Dynamic),
                d => d.parse::<u64>().ok().filter(|&n| n > 0).map(Dim::Fixed).ok_or(()),
            })
            .collect::<Result<Vec<_>, ()>>()
            .map_err(|_| {
                QcError::Usage(format!("error: --input-shape {name}: `{dims}` is not a list of positive dims like 1x3x224x224"))
            })?;
        opts.input_shapes.push((name.to_string(), dims));
    }
    let g = qc::onnx::import_file(path, &opts)?;
    save_model(&g, out)
}

fn fmt(path: &Path, check: bool) -> Result<(), QcError> {
    let source =
        std::fs::read_to_string(path).map_err(|e| QcError::Input(format!("error: cannot read {}: {e}", path.display())))?;
    let g = parse_source(path, &source)?;
    let canonical = print(&g);
    if check {
        if canonical != source {
            let line = source
                .lines()
                .zip(canonical.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| source.lines().count().min(canonical.lines().count()));
            return Err(QcError::Input(format!(
                "error: {} is not in canonical form (first difference at line {}); run `qc fmt {}` to see it",
                path.display(),
                line + 1,
                path.display()
            )));
        }
        return Ok(());
    }
    say!("{}", canonical.trim_end_matches('\n'));
    Ok(())
}

fn list_passes() {
    say!("passes:");
    for p in REGISTRY {
        say!("  {:<18} {}", p.name, p.doc);
    }
    say!("pipelines:");
    for (name, passes, doc) in PIPELINES {
        say!("  {:<18} {} — {}", name, passes.join(","), doc);
    }
}

fn usage(e: impl std::fmt::Display) -> QcError {
    QcError::Usage(format!("error: {e}"))
}

fn pass_options(a: &CompileArgs) -> Result<PassOptions, QcError> {
    let mut o = PassOptions {
        requant: match a.requant {
            Requant::F32 => RequantMode::F32,
            Requant::Q31 => RequantMode::Q31,
        },
        calib_method: if a.calib_method == "auto" { Default::default() } else { a.calib_method.parse().map_err(usage)? },
        symmetric_activations: a.symmetric,
        per_tensor_weights: a.per_tensor,
        keep_fp32: a.keep_fp32.clone(),
        smooth_alpha: a.smooth_alpha,
        weight_bits: a.weight_bits,
        ..Default::default()
    };
    if !matches!(a.weight_bits, 4 | 8) {
        return Err(usage(format!("--weight-bits takes 8 or 4, not {}", a.weight_bits)));
    }
    for l in &a.layer_weight_bits {
        let bad = || usage(format!("--layer-weight-bits takes NAME=4 or NAME=8, got `{l}`"));
        let (name, b) = l.rsplit_once('=').ok_or_else(bad)?;
        let b: u8 = b.parse().ok().filter(|b| *b == 4 || *b == 8).ok_or_else(bad)?;
        o.layer_weight_bits.push((name.to_string(), b));
    }
    o.prune = qc_passes::PruneOptions {
        ratio: a.prune_ratio,
        layers: Vec::new(),
        criterion: a.prune_criterion.parse().map_err(usage)?,
        multiple: a.prune_multiple,
        reconstruct: a.reconstruct,
        steps: a.prune_steps,
        distill: a.distill,
        max_loss: a.max_loss,
    };
    o.clusters = a.clusters.unwrap_or(16);
    o.sparsify = qc_passes::SparsifyOptions {
        sparsity: a.sparsity,
        layers: Vec::new(),
        global: a.sparsity_global,
        block: a.block,
        reconstruct: a.reconstruct,
    };
    for l in &a.sparsity_layer {
        let bad = || usage(format!("--sparsity-layer takes NAME=FRACTION, got `{l}`"));
        let (name, r) = l.rsplit_once('=').ok_or_else(bad)?;
        o.sparsify.layers.push((name.to_string(), r.parse().map_err(|_| bad())?));
    }
    for l in &a.prune_layer {
        let bad = || usage(format!("--prune-layer takes NAME=RATIO, got `{l}`"));
        let (name, r) = l.rsplit_once('=').ok_or_else(bad)?;
        o.prune.layers.push((name.to_string(), r.parse().map_err(|_| bad())?));
    }
    o.activations = match a.activations.as_str() {
        "u8" => ScalarType::U8,
        "i8" => ScalarType::I8,
        other => return Err(usage(format!("--activations takes u8 or i8, not `{other}`"))),
    };
    for ov in &a.calib_override {
        let (name, m) = ov.split_once('=').ok_or_else(|| usage(format!("--calib-override takes NAME=METHOD, got `{ov}`")))?;
        o.calib_overrides.push((name.to_string(), m.parse().map_err(usage)?));
    }
    if let Some(path) = &a.calib {
        let samples = read_tensor(path)?;
        // A progress bar on stderr when a person is watching a long calibration.
        let n = samples.shape().first().copied().unwrap_or(0);
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) && n >= 64 {
            let bar = indicatif::ProgressBar::new(n as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("calibrating {bar:40} {pos}/{len} samples").expect("a valid template"),
            );
            o.progress = Some(qc_passes::Progress(std::sync::Arc::new(move |done, total| {
                bar.set_position(done as u64);
                if done >= total {
                    bar.finish_and_clear();
                }
            })));
        }
        o.calibration = Some(std::sync::Arc::new(samples));
    }
    Ok(o)
}

/// The passes `a` asks for: the named (or default) pipeline, plus the compression passes its
/// options call for.
fn pipeline_names(a: &CompileArgs) -> Result<Vec<String>, QcError> {
    let mut names = match (&a.pipeline, &a.passes) {
        (_, Some(p)) => return Ok(p.clone()),
        (Some(name), None) => qc_passes::pipeline(name).map_err(QcError::Usage)?,
        (None, None) => {
            let name = if a.dynamic {
                "dynamic"
            } else if a.calib.is_some() {
                "int8"
            } else {
                "default"
            };
            qc_passes::pipeline(name).expect("the pipeline exists")
        }
    };
    fn insert(names: &mut Vec<String>, pass: &str, at: usize) {
        if !names.iter().any(|n| n == pass) {
            names.insert(at.min(names.len()), pass.into());
        }
    }
    let fold_bn = |names: &[String]| names.iter().position(|n| n == "fold-bn");
    if a.prunes() {
        // Before fold-bn, so that bn-gamma can rank channels by the batch norms.
        let at = fold_bn(&names).unwrap_or(0);
        insert(&mut names, "prune-channels", at);
    }
    if a.sparsifies() {
        // After fold-bn, so that the zeros are those of the weights the JIT multiplies.
        let at = fold_bn(&names).map_or(0, |i| i + 1);
        insert(&mut names, "sparsify", at);
    }
    if (a.equalize || a.smooth_alpha.is_some())
        && let Some(i) = names.iter().position(|n| n == "fuse-activation")
    {
        insert(&mut names, "equalize", i + 1);
    }
    if a.bias_correction
        && let Some(i) = names.iter().position(|n| n == "insert-qdq")
    {
        insert(&mut names, "bias-correction", i + 1);
    }
    if a.clusters.is_some() {
        // After the weights are final in f32 (folded, pruned, sparsified), before quantization.
        let at = names.iter().position(|n| n == "sparsify").or(fold_bn(&names)).map_or(0, |i| i + 1);
        insert(&mut names, "cluster-weights", at);
    }
    Ok(names)
}

fn compile(a: CompileArgs) -> Result<(), QcError> {
    let names = pipeline_names(&a)?;
    let mut pass_options = pass_options(&a)?;
    for n in names.iter().chain(&a.print_after).chain(&a.stop_after) {
        qc_passes::lookup(n, &pass_options).map_err(usage)?;
    }
    let mut model = load_model(&a.model, a.weights.as_deref())?;
    if a.calib_method == "auto" {
        let samples = pass_options.calibration.clone().ok_or_else(|| usage("--calib-method auto needs --calib"))?;
        let trial = PipelineOptions { check_weights: true, pass_options: pass_options.clone(), ..Default::default() };
        let (method, scores) = qc::exec::choose_calibration(&model.graph, &names, &trial, &samples)
            .map_err(|e| QcError::Input(format!("error: {e}")))?;
        let table: Vec<String> = scores.iter().map(|(m, s)| format!("{m} {s:.2} dB")).collect();
        eprintln!("calibration: {method} (output SQNR on the calibration samples: {})", table.join(", "));
        pass_options.calib_method = method;
    }
    if a.mixed_precision {
        let budget = a.max_loss.ok_or_else(|| usage("--mixed-precision needs --max-loss P (percentage points of agreement)"))?;
        let trial = PipelineOptions { check_weights: true, pass_options: pass_options.clone(), ..Default::default() };
        let plan = qc::mixed_precision::choose(&model.graph, &trial, budget, a.min_sqnr)
            .map_err(|e| QcError::Input(format!("error: {e}")))?;
        for d in &plan.decisions {
            eprintln!("mixed precision: {d}");
        }
        plan.apply(&mut pass_options);
    }
    let opts = PipelineOptions {
        print_after_all: a.print_after_all,
        print_after: a.print_after.clone(),
        dump_dir: a.dump_dir.clone(),
        stop_after: a.stop_after.clone(),
        check_weights: true,
        pass_options,
    };
    let unpruned_input = (a.prunes() && a.report.is_some()).then(|| model.graph.clone());
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let result = run_pipeline(&mut model.graph, &names, &opts, &mut lock);
    let records = result.map_err(|e| {
        if e.diagnostics.is_empty() {
            QcError::Input(format!("error: {e}"))
        } else {
            QcError::Input(format!("error: pass {}: {}\n{}", e.pass, e.message, model.render(&e.diagnostics)))
        }
    })?;
    for r in &records {
        for n in &r.notes {
            eprintln!("note: {}: {n}", r.name);
        }
    }
    let mut report = qc::report::fusion_report(&model.graph);
    report.notes = records.iter().flat_map(|r| r.notes.iter().map(|n| format!("{}: {n}", r.name))).collect();
    if report.has_findings() {
        eprint!("{}", report.summary());
    }
    if let Some(path) = &a.report {
        let mut json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("the fusion report is JSON");
        if let Some(mut unpruned) = unpruned_input {
            // The same pipeline without pruning, for the before/after comparison.
            let without: Vec<String> = names.iter().filter(|n| *n != "prune-channels").cloned().collect();
            let quiet = PipelineOptions { check_weights: true, pass_options: opts.pass_options.clone(), ..Default::default() };
            run_pipeline(&mut unpruned, &without, &quiet, &mut std::io::sink())
                .map_err(|e| QcError::Input(format!("error: {e}")))?;
            let mut tables = Vec::new();
            for batch in [1, 64] {
                let r = qc::prune_report::prune_report(&unpruned, &model.graph, batch, 50)
                    .map_err(|e| QcError::Input(format!("error: pruning report: {e}")))?;
                eprint!("{}", r.summary());
                tables.push(r.to_json());
            }
            json["pruning"] = serde_json::Value::Array(tables);
        }
        let text = serde_json::to_string_pretty(&json).expect("JSON") + "\n";
        qc::io::write_atomic(path, text.as_bytes())?;
    }
    match &a.output {
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
        None if !(opts.print_after_all || !opts.print_after.is_empty()) => {
            write!(lock, "{}", print(&model.graph)).map_err(|e| QcError::Input(e.to_string()))?;
        }
        None => {}
    }
    Ok(())
}

fn run(path: &Path, input: &str, out: &Path, weights: Option<&Path>, engine: Engine) -> Result<(), QcError> {
    let model = load_model(path, weights)?;
    let g = &model.graph;
    if g.params().len() != 1 || g.outputs().len() != 1 {
        return Err(QcError::Usage(format!(
            "error: @{} has {} inputs and {} outputs; `qc run` handles one of each so far",
            g.name,
            g.params().len(),
            g.outputs().len()
        )));
    }
    let file = match input.split_once('=') {
        Some((name, file)) => {
            let p = g.params()[0];
            if g.value(p).name.as_deref() != Some(name) {
                return Err(QcError::Usage(format!(
                    "error: @{} has no input named {name}; it takes {}",
                    g.name,
                    g.display_value(p)
                )));
            }
            file
        }
        None => input,
    };
    let x = read_tensor(Path::new(file))?;
    let y = match engine {
        Engine::Jit => {
            let compiled = qc_codegen::CompiledModel::compile(g).map_err(|e| QcError::Input(format!("error: {e}")))?;
            match g.ty(g.params()[0]).dims.first() {
                // A model specialized to a batch size runs a larger batch in chunks of it.
                Some(Dim::Fixed(b)) if x.shape().first() != Some(&(*b as usize)) => qc::exec::run_batch_with(g, &x, 1, |xi| {
                    compiled.run(&[xi]).map(|mut v| v.remove(0)).map_err(|e| e.to_string())
                }),
                _ => compiled.run(&[x]).map(|mut v| v.remove(0)).map_err(|e| e.to_string()),
            }
        }
        Engine::Interp => match g.ty(g.params()[0]).dims.first() {
            Some(Dim::Fixed(_)) if x.as_f32().is_some() => qc::exec::run_batch(g, &x, 1),
            _ => evaluate(g, &[x]).map(|mut v| v.remove(0)).map_err(|e| e.to_string()),
        },
    }
    .map_err(|e| QcError::Input(format!("error: {file}: {e}")))?;
    write_tensor(out, &y)?;
    Ok(())
}

fn export(path: &Path, out: &Path, weights: Option<&Path>) -> Result<(), QcError> {
    use prost::Message;
    let model = load_model(path, weights)?;
    let onnx = qc::onnx::export::export(&model.graph).map_err(|e| QcError::Input(format!("error: {}: {e}", path.display())))?;
    Ok(qc::io::write_atomic(out, &onnx.encode_to_vec())?)
}

/// The `q`-quantile (0 ≤ q ≤ 1) of times sorted in ascending order.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn bench(
    path: &Path,
    input: Option<&Path>,
    batch: usize,
    runs: usize,
    weights: Option<&Path>,
    evict_kib: usize,
) -> Result<(), QcError> {
    let model = load_model(path, weights)?;
    let g = &model.graph;
    if g.params().len() != 1 {
        return Err(QcError::Usage("error: qc bench times models with one input".into()));
    }
    let batch = match g.ty(g.params()[0]).dims.first() {
        Some(Dim::Fixed(b)) => *b as usize,
        _ => batch.max(1),
    };
    qc_ir::eval::check_sizes(g, batch).map_err(|e| QcError::Input(format!("error: {}: {e}", path.display())))?;
    let mut dims: Vec<usize> = g.ty(g.params()[0]).dims.iter().map(|d| d.fixed().map_or(batch, |n| n as usize)).collect();
    dims[0] = batch;
    let x = match input {
        Some(p) => {
            let t = read_tensor(p)?;
            let a = t.as_f32().ok_or_else(|| QcError::Input(format!("error: {}: inputs must be f32", p.display())))?;
            if a.shape().first().copied().unwrap_or(0) < batch {
                return Err(QcError::Input(format!("error: {} holds fewer than {batch} samples", p.display())));
            }
            Tensor::F32(a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..batch)).to_owned())
        }
        None => {
            let n: usize = dims.iter().product();
            let data = (0..n).map(|i| ((i * 7) % 11) as f32 / 11.0).collect();
            Tensor::F32(
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), data)
                    .map_err(|e| QcError::Input(format!("error: an input of shape {dims:?} cannot be made: {e}")))?,
            )
        }
    };
    let t = std::time::Instant::now();
    let compiled = qc_codegen::CompiledModel::compile(g).map_err(|e| QcError::Input(format!("error: {e}")))?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    // Memory written between timed runs (`--evict-kib`), a byte per cache line.
    if evict_kib > 1 << 20 {
        return Err(QcError::Usage(format!("error: --evict-kib {evict_kib} is more than 1 GiB (1048576 KiB)")));
    }
    let other = std::cell::RefCell::new(vec![0u8; evict_kib * 1024]);
    let evict = |on: bool| {
        if on {
            let mut other = other.borrow_mut();
            for b in other.iter_mut().step_by(64) {
                *b = b.wrapping_add(1);
            }
            std::hint::black_box(&mut *other);
        }
    };
    // Each run's time, sorted; `cold`: with memory written before each.
    let time = |f: &dyn Fn() -> Result<(), String>, n: usize, cold: bool| -> Result<Vec<f64>, QcError> {
        f().map_err(|e| QcError::Input(format!("error: {e}")))?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            evict(cold);
            let t = std::time::Instant::now();
            f().map_err(|e| QcError::Input(format!("error: {e}")))?;
            v.push(t.elapsed().as_secs_f64());
        }
        v.sort_by(f64::total_cmp);
        Ok(v)
    };
    let jit_times = time(&|| compiled.run(std::slice::from_ref(&x)).map(|_| ()).map_err(|e| e.to_string()), runs, evict_kib > 0)?;
    let jit = quantile(&jit_times, 0.5);
    let interp = quantile(
        &time(&|| evaluate(g, std::slice::from_ref(&x)).map(|_| ()).map_err(|e| e.to_string()), runs.div_ceil(5), false)?,
        0.5,
    );
    say!("{}: batch {batch}, {} JIT kernels compiled in {compile_ms:.2} ms", path.display(), compiled.kernel_count());
    // The spread as well as the median: on a shared machine run times often fall into a fast
    // and a slow mode, and a median alone hides which one it came from.
    say!(
        "  jit     {:>10.4} ms (median of {runs}; 10 % of runs took under {:.4} ms, 10 % over {:.4} ms){}",
        jit * 1e3,
        quantile(&jit_times, 0.1) * 1e3,
        quantile(&jit_times, 0.9) * 1e3,
        if evict_kib > 0 { format!("; {evict_kib} KiB of other memory written before each run") } else { String::new() }
    );
    say!("  interp  {:>10.4} ms ({:.1}x the JIT's time)", interp * 1e3, interp / jit);
    let mem = compiled.memory();
    say!(
        "  arena   {} bytes at batch {batch} ({} per image; lower bound {}, {} activations unshared {}){}",
        mem.arena * batch,
        mem.arena,
        mem.lower_bound,
        mem.buffers,
        mem.unshared,
        match compiled.fallback_ops().len() {
            0 => String::new(),
            n => format!("; {n} ops on the evaluator"),
        }
    );
    let mut profile = compiled.profile(std::slice::from_ref(&x), runs).map_err(|e| QcError::Input(format!("error: {e}")))?;
    profile.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    say!("  per layer (median):");
    for p in profile.iter().take(12) {
        let gops = if p.ops > 0 { format!("{:>7.1} GOPS", p.ops as f64 / p.seconds / 1e9) } else { String::new() };
        say!("    {:>9.4} ms  {:<4} {gops:>12}  {}", p.seconds * 1e3, if p.jit { "jit" } else { "rust" }, p.label);
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<(), QcError> {
    let model = load_model(&a.model, a.weights.as_deref())?;
    let x = read_tensor(&a.input)?;
    let labels = read_tensor(&a.labels)?
        .to_i64_vec()
        .ok_or_else(|| QcError::Input(format!("error: {}: labels must be integers", a.labels.display())))?;
    // The JIT computes the evaluator's bits, faster.
    let run = |g: &qc_ir::Graph| -> Result<Tensor, QcError> {
        let compiled = qc_codegen::CompiledModel::compile(g).map_err(|e| QcError::Input(format!("error: {e}")))?;
        qc::exec::run_batch_with(g, &x, a.batch, |xi| compiled.run(&[xi]).map(|mut v| v.remove(0)).map_err(|e| e.to_string()))
            .map_err(|e| QcError::Input(format!("error: {}: {e}", a.input.display())))
    };
    let y = run(&model.graph)?;
    let pred = qc::exec::argmax_rows(&y);
    if pred.len() != labels.len() {
        return Err(QcError::Input(format!("error: {} samples but {} labels", pred.len(), labels.len())));
    }
    let correct = pred.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
    let n = labels.len();
    say!("{}: accuracy {:.2} % ({correct}/{n}, {} errors)", a.model.display(), 100.0 * correct as f64 / n as f64, n - correct);
    if let Some(r) = &a.reference {
        let reference = load_model(r, None)?;
        let ry = run(&reference.graph)?;
        let rp = qc::exec::argmax_rows(&ry);
        let same = pred.iter().zip(&rp).filter(|(a, b)| a == b).count();
        let rc = rp.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
        say!("{}: accuracy {:.2} % ({rc}/{n})", r.display(), 100.0 * rc as f64 / n as f64);
        say!("top-1 agreement {:.2} % ({same}/{n})", 100.0 * same as f64 / n as f64);
        say!("output SQNR against the reference {:.2} dB", qc::exec::sqnr_db(&ry, &y));
    }
    Ok(())
}
