//! The command line's arguments (clap): every command, its flags and their help.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "qc", version, about = "qc: a compiler that makes neural networks small and fast")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Print no notes and no progress on stderr (errors still).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Also print how long each step took (each pass, the JIT compile, the run) on stderr.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
}

/// `--activations`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Activations {
    /// Unsigned bytes (ONNX Runtime's default for activations).
    U8,
    /// Signed bytes.
    I8,
}

/// `--prune-criterion`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Criterion {
    /// The L1 norm of each channel's weights.
    L1,
    /// The L2 norm of each channel's weights.
    L2,
    /// |γ| of the batch norm after the layer.
    BnGamma,
    /// √E[x²] at each consumer's input times its weight norm, on the calibration samples.
    Activation,
    /// Greedy elimination of the channels the next layers' least-squares refit makes up for best.
    Lsq,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Requant {
    /// `M = f32(f32(s_x·s_w) / s_y)`, `y = rne(f32(acc)·M) + zp`.
    F32,
    /// `M = m0·2^-n`, one rounding in i64.
    Q31,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Engine {
    /// The reference evaluator.
    Interp,
    /// The Cranelift JIT.
    Jit,
}

/// `qc eval`'s arguments.
#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    /// The model.
    pub(crate) model: PathBuf,
    /// The inputs (.npy, a batch).
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// The labels (.npy, integers).
    #[arg(long)]
    pub(crate) labels: PathBuf,
    /// A reference model (e.g. the fp32 original) to measure top-1 agreement with.
    #[arg(long)]
    pub(crate) reference: Option<PathBuf>,
    /// The weights file, if not beside the model.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Samples per evaluation for models with a dynamic batch (dynamic quantization depends on it).
    #[arg(long, default_value = "1")]
    pub(crate) batch: usize,
}

/// `qc compile`'s arguments.
#[derive(clap::Args, Clone)]
pub(crate) struct CompileArgs {
    /// The model (.qir, weights in the .safetensors beside it; or .onnx).
    pub(crate) model: PathBuf,
    /// Where to write the optimized QIR (weights go beside it), or ONNX for a `.onnx` path (as
    /// `qc export` writes it); stdout when absent.
    #[arg(short, long)]
    pub(crate) output: Option<PathBuf>,
    /// The weights file, if not beside the model.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// A named pipeline (see `qc passes`); `int8` when --calib is given, else `default`.
    #[arg(help_heading = "Pipeline and printing", long, conflicts_with = "passes")]
    pub(crate) pipeline: Option<String>,
    /// Passes to run, comma separated.
    #[arg(help_heading = "Pipeline and printing", long, value_delimiter = ',')]
    pub(crate) passes: Option<Vec<String>>,
    /// Print the IR after every pass.
    #[arg(help_heading = "Pipeline and printing", long)]
    pub(crate) print_after_all: bool,
    /// Print the IR after this pass (repeatable).
    #[arg(help_heading = "Pipeline and printing", long)]
    pub(crate) print_after: Vec<String>,
    /// Write NN-pass.qir after every pass into this directory.
    #[arg(help_heading = "Pipeline and printing", long)]
    pub(crate) dump_dir: Option<PathBuf>,
    /// Stop after this pass.
    #[arg(help_heading = "Pipeline and printing", long)]
    pub(crate) stop_after: Option<String>,
    /// How integer ops requantize: f32 (ONNX Runtime's formula) or q31 (integer only).
    #[arg(help_heading = "Quantization", long, value_enum, default_value = "f32")]
    pub(crate) requant: Requant,
    /// Calibration samples: a batch of model inputs (.npy); for a model of several inputs,
    /// NAME=X.npy for each (repeatable) or X.npy for X.NAME.npy.
    #[arg(help_heading = "Quantization", long)]
    pub(crate) calib: Vec<String>,
    /// Calibration method: minmax, percentile[:P], kl, js, mse, or auto (the best SQNR on the
    /// calibration samples).
    #[arg(help_heading = "Quantization", long, default_value = "minmax")]
    pub(crate) calib_method: String,
    /// A method for one tensor, by value name or op location: NAME=METHOD (repeatable).
    #[arg(help_heading = "Quantization", long)]
    pub(crate) calib_override: Vec<String>,
    /// Activation storage.
    #[arg(help_heading = "Quantization", long, value_enum, default_value = "u8")]
    pub(crate) activations: Activations,
    /// Symmetric activations (zero point 0 for i8, 128 for u8).
    #[arg(help_heading = "Quantization", long)]
    pub(crate) symmetric: bool,
    /// One weight scale per tensor instead of one per output channel.
    #[arg(help_heading = "Quantization", long)]
    pub(crate) per_tensor: bool,
    /// Correct the quantized weights' spread and the outputs' mean shift on the --calib samples
    /// (adds `bias-correction` after `insert-qdq`).
    #[arg(help_heading = "Quantization", long)]
    pub(crate) bias_correction: bool,
    /// Cross-layer equalization before calibration (adds `equalize` after `fuse-activation`).
    #[arg(help_heading = "Quantization", long)]
    pub(crate) equalize: bool,
    /// SmoothQuant for gemm/matmul pairs, and through a layer_norm into the layers reading it,
    /// with this migration strength (implies --equalize).
    #[arg(help_heading = "Quantization", long)]
    pub(crate) smooth_alpha: Option<f32>,
    /// Weight bits: 8; 7 (weights in [-64, 64], ONNX Runtime's reduce_range: CPUs with AVX2 but
    /// no VNNI multiply them exactly with vpmaddubsw, about 1.3x faster); or 4 (i4 weights with
    /// 8-bit activations).
    #[arg(help_heading = "Quantization", long, default_value = "8", value_parser = weight_bits)]
    pub(crate) weight_bits: u8,
    /// Weight bits for one layer: NAME=4, NAME=7 or NAME=8 (repeatable).
    #[arg(help_heading = "Quantization", long)]
    pub(crate) layer_weight_bits: Vec<String>,
    /// Choose each layer's precision (int4 weights, int8, fp32) greedily by measured sensitivity
    /// until the --max-loss budget holds on the --calib samples.
    #[arg(help_heading = "Quantization", long, requires = "calib")]
    pub(crate) mixed_precision: bool,
    /// With --mixed-precision: also keep the output SQNR against fp32 (calibration samples) at
    /// least this many dB.
    #[arg(help_heading = "Quantization", long, requires = "mixed_precision")]
    pub(crate) min_sqnr: Option<f64>,
    /// Keep this op (location or result name) in fp32 when quantizing (repeatable).
    #[arg(help_heading = "Quantization", long)]
    pub(crate) keep_fp32: Vec<String>,
    /// Dynamic quantization (the `dynamic` pipeline) instead of calibrated static quantization.
    #[arg(help_heading = "Quantization", long, conflicts_with_all = ["calib", "pipeline", "passes"])]
    pub(crate) dynamic: bool,
    /// Write the fusion report (what stayed f32 and why) to this JSON file.
    #[arg(help_heading = "Output", long)]
    pub(crate) report: Option<PathBuf>,
    /// Structured pruning: remove this fraction of every prunable layer's output channels
    /// (adds `prune-channels` before `fold-bn` to the pipeline).
    #[arg(help_heading = "Pruning", long, allow_negative_numbers = true, value_parser = fraction)]
    pub(crate) prune_ratio: Option<f32>,
    /// A pruning ratio for one layer (its location, result or weight name): NAME=RATIO (repeatable).
    #[arg(help_heading = "Pruning", long)]
    pub(crate) prune_layer: Vec<String>,
    /// How channels are ranked for pruning.
    #[arg(help_heading = "Pruning", long, value_enum, default_value = "l2")]
    pub(crate) prune_criterion: Criterion,
    /// Kept channel counts are multiples of this (4: the JIT's GEMM column panel).
    #[arg(help_heading = "Pruning", long, default_value = "4")]
    pub(crate) prune_multiple: usize,
    /// After pruning, re-fit the following layers by least squares on the --calib samples.
    #[arg(help_heading = "Pruning", long)]
    pub(crate) reconstruct: bool,
    /// Reach the pruning ratios in this many steps, reconstructing in between.
    #[arg(help_heading = "Pruning", long, default_value = "1")]
    pub(crate) prune_steps: usize,
    /// After pruning (and --reconstruct), fit every layer jointly to the unpruned model's outputs
    /// on shifted and mixed --calib samples, for this many Adam steps (distillation; 0: off).
    #[arg(help_heading = "Pruning", long, default_value = "0")]
    pub(crate) distill: usize,
    /// The most top-1 agreement (percentage points, on the --calib samples) may be lost: by
    /// pruning, against the unpruned model (it stops at the last step within it), and by
    /// --mixed-precision, against fp32.
    #[arg(help_heading = "Pruning", long)]
    pub(crate) max_loss: Option<f64>,
    /// Unstructured sparsity: zero this fraction of every layer's weights, smallest first (adds
    /// `sparsify` after `fold-bn` to the pipeline; --reconstruct re-fits the rest).
    #[arg(help_heading = "Sparsity and weight sharing", long, allow_negative_numbers = true, value_parser = fraction)]
    pub(crate) sparsity: Option<f32>,
    /// A sparsity for one layer: NAME=FRACTION (repeatable).
    #[arg(help_heading = "Sparsity and weight sharing", long)]
    pub(crate) sparsity_layer: Vec<String>,
    /// One magnitude threshold over all layers instead of the same fraction of each.
    #[arg(help_heading = "Sparsity and weight sharing", long)]
    pub(crate) sparsity_global: bool,
    /// Zero whole blocks of 16 output channels x 4 inputs (which the JIT skips) instead of single weights.
    #[arg(help_heading = "Sparsity and weight sharing", long)]
    pub(crate) block: bool,
    /// Weight sharing: k-means each layer's nonzero weights into this many values (adds
    /// `cluster-weights` before quantization).
    #[arg(help_heading = "Sparsity and weight sharing", long)]
    pub(crate) clusters: Option<usize>,
    /// Write the weights compressed (OUT.qcw: Huffman-coded, codebooks for shared weights)
    /// instead of OUT.safetensors.
    #[arg(help_heading = "Sparsity and weight sharing", long)]
    pub(crate) compress: bool,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    Compile {
        #[command(flatten)]
        args: CompileArgs,
        /// Print what compiling did as JSON on stdout (the pipeline, each stage's time, the
        /// calibration choice, the fusion report); needs -o.
        #[arg(long, requires = "output", conflicts_with_all = ["print_after_all", "print_after"])]
        json: bool,
    },
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
    Eval {
        #[command(flatten)]
        args: EvalArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Latency of the JIT and the evaluator, the JIT compile time, and time per layer.
    Bench {
        #[command(flatten)]
        args: BenchArgs,
        /// Print JSON instead of text (every layer, not the slowest 12).
        #[arg(long)]
        json: bool,
    },
    /// Run a model on inputs from .npy files.
    Run {
        /// The model.
        model: PathBuf,
        /// The input batch: X.npy, or NAME=X.npy once per input (repeatable); for a model of
        /// several inputs, X.npy alone reads X.NAME.npy for each.
        #[arg(long, required = true)]
        input: Vec<String>,
        /// Where to write the output (.npy); a model of several outputs writes Y.NAME.npy for
        /// each beside it.
        #[arg(short, long)]
        output: PathBuf,
        /// The weights file, if not beside the model.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Which engine runs the model.
        #[arg(long, value_enum, default_value = "jit")]
        engine: Engine,
        /// The JIT's ISA level: host (this CPU's best), scalar, sse4.1, avx2, avx512bw, avx-vnni,
        /// avx512-vnni.
        #[arg(long, default_value = "host")]
        isa: String,
        /// Threads the JIT splits the batch over (the model's images must be independent).
        #[arg(long, default_value = "1", value_parser = at_least_one)]
        threads: usize,
        /// Print the outputs written (file, name, shape, type) and the times as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `qc bench`'s arguments.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// The model.
    pub(crate) model: PathBuf,
    /// Inputs to time (.npy), as `qc run` takes them; the first `--batch` samples are used.
    /// Without them, made-up values (0 for integer inputs).
    #[arg(long)]
    pub(crate) input: Vec<String>,
    /// The batch size.
    #[arg(long, default_value = "1", value_parser = at_least_one)]
    pub(crate) batch: usize,
    /// Timed runs (medians are reported).
    #[arg(long, default_value = "50", value_parser = at_least_one)]
    pub(crate) runs: usize,
    /// The weights file, if not beside the model.
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// Before each timed JIT run, write to this many KiB of other memory, as another program
    /// sharing the core's caches would (2048 empties this machine's 1 MiB L2); 0 times warm
    /// runs back to back.
    #[arg(long, default_value = "0")]
    pub(crate) evict_kib: usize,
    /// The JIT's ISA level: host (this CPU's best), scalar, sse4.1, avx2, avx512bw, avx-vnni,
    /// avx512-vnni.
    #[arg(long, default_value = "host")]
    pub(crate) isa: String,
    /// Threads the JIT splits the batch over (the model's images must be independent); the
    /// per-layer times are one thread's.
    #[arg(long, default_value = "1", value_parser = at_least_one)]
    pub(crate) threads: usize,
    /// Also time this engine on the same inputs (the reference evaluator, which is slow: a fifth
    /// of --runs).
    #[arg(long, value_enum)]
    pub(crate) against: Option<Against>,
}

/// What `qc bench --against` times beside the JIT.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Against {
    /// The reference evaluator.
    Interp,
}

/// A fraction in [0, 1) (`--prune-ratio`, `--sparsity`: 1 would remove everything).
fn fraction(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..1.0).contains(&v) { Ok(v) } else { Err(format!("{v} is not in [0, 1) (1 would remove every channel or weight)")) }
}

/// A count of at least 1 (runs, batch, threads).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// `--weight-bits`: 8, 7 or 4.
fn weight_bits(s: &str) -> Result<u8, String> {
    match s {
        "8" => Ok(8),
        "7" => Ok(7),
        "4" => Ok(4),
        _ => Err(format!("`{s}` is not one of 8, 7, 4")),
    }
}
