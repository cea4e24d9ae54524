//! `qc-passes`: the [`Pass`] trait, the registry of every pass, named pipelines, and the runner
//! that verifies the graph after each pass and can print or dump the IR after any of them.
#![warn(missing_docs)]

mod backprop;
mod bias_correction;
mod calibrate;
pub mod channel_flow;
mod channel_selection;
mod cluster_weights;
mod dead_code;
pub mod distill;
mod equalize;
mod fold_bn;
mod fold_constants;
mod fold_hard_swish;
mod fold_qdq;
mod fuse_activation;
mod fuse_matmul_add;
mod fuse_requant;
mod insert_qdq;
pub mod observer;
mod prune_channels;
mod quantize_dynamic;
pub mod reconstruct;
mod rewrite;
pub mod samples;
mod sparsify;

pub use bias_correction::BiasCorrection;
pub use calibrate::Calibrate;
pub use cluster_weights::{ClusterWeights, kmeans_1d};
pub use dead_code::DeadCode;
pub use equalize::Equalize;
pub use fold_bn::FoldBn;
pub use fold_constants::FoldConstants;
pub use fold_hard_swish::FoldHardSwish;
pub use fold_qdq::FoldQdq;
pub use fuse_activation::FuseActivation;
pub use fuse_matmul_add::FuseMatmulAdd;
pub use fuse_requant::{FuseRequant, explain as explain_unfused};
pub use insert_qdq::{InsertQdq, activation_params, kept_fp32};
pub use observer::CalibMethod;
pub use prune_channels::{PruneChannels, PruneCriterion, PruneOptions, kept_count};
pub use quantize_dynamic::QuantizeDynamic;
pub use rewrite::const_value;
pub use sparsify::{Sparsify, SparsifyOptions};

use qc_ir::Graph;
use qc_ir::diag::Diagnostic;
use qc_ir::text::print;
use qc_ir::verify::{VerifyOptions, verify};
use std::fmt;
use std::path::PathBuf;

/// Whether a pass changed the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// The graph is different.
    Yes,
    /// The graph is as it was.
    No,
}

impl From<bool> for Changed {
    fn from(b: bool) -> Self {
        if b { Changed::Yes } else { Changed::No }
    }
}

/// A pass failed: the graph is not what it requires, or its input is bad.
#[derive(Clone, Debug, PartialEq)]
pub struct PassError {
    /// The pass.
    pub pass: String,
    /// What went wrong; verifier failures carry their diagnostics.
    pub message: String,
    /// Diagnostics, when the failure is a verifier error after the pass.
    pub diagnostics: Vec<Diagnostic>,
}

impl PassError {
    /// A plain failure of `pass`.
    pub fn new(pass: &str, message: impl Into<String>) -> PassError {
        PassError { pass: pass.to_string(), message: message.into(), diagnostics: Vec::new() }
    }
}

impl fmt::Display for PassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pass {}: {}", self.pass, self.message)?;
        for d in &self.diagnostics {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PassError {}

/// The options of the passes (`qc passes` lists which pass reads which).
#[derive(Clone, Debug)]
pub struct PassOptions {
    /// How `fuse-requant` requantizes: `f32` (ONNX Runtime's formula) or `q31`.
    pub requant: qc_ir::requant::RequantMode,
    /// `calibrate`'s samples (a batch of model inputs).
    pub calibration: Option<std::sync::Arc<qc_ir::Tensor>>,
    /// `calibrate`'s method.
    pub calib_method: CalibMethod,
    /// Per-tensor methods, by value name or op location.
    pub calib_overrides: Vec<(String, CalibMethod)>,
    /// `insert-qdq`'s activation storage: u8 or i8.
    pub activations: qc_ir::ScalarType,
    /// `insert-qdq`: symmetric activations.
    pub symmetric_activations: bool,
    /// `insert-qdq`: one weight scale per tensor instead of per output channel.
    pub per_tensor_weights: bool,
    /// Called by `calibrate` with (samples done, samples in all) after each batch.
    pub progress: Option<Progress>,
    /// What `prune-channels` removes.
    pub prune: PruneOptions,
    /// What `sparsify` zeroes.
    pub sparsify: SparsifyOptions,
    /// `cluster-weights`: shared values per layer.
    pub clusters: usize,
    /// `insert-qdq`: ops (by location or result name) that stay in fp32.
    pub keep_fp32: Vec<String>,
    /// `equalize`: SmoothQuant's migration strength for gemm/matmul pairs.
    pub smooth_alpha: Option<f32>,
    /// `insert-qdq`: weight bits (8, or 4 for i4 weights).
    pub weight_bits: u8,
    /// `insert-qdq`: weight bits of single layers (by location or result name).
    pub layer_weight_bits: Vec<(String, u8)>,
}

/// A progress callback: (done, total).
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            requant: Default::default(),
            calibration: None,
            calib_method: CalibMethod::MinMax,
            calib_overrides: Vec::new(),
            activations: qc_ir::ScalarType::U8,
            symmetric_activations: false,
            per_tensor_weights: false,
            progress: None,
            prune: PruneOptions::default(),
            sparsify: SparsifyOptions::default(),
            clusters: 16,
            keep_fp32: Vec::new(),
            smooth_alpha: None,
            weight_bits: 8,
            layer_weight_bits: Vec::new(),
        }
    }
}

/// A transformation of the graph. `run` either leaves a graph the verifier accepts or fails.
pub trait Pass {
    /// The registered name (`fold-bn`).
    fn name(&self) -> &'static str;
    /// Runs the pass.
    fn run(&self, g: &mut Graph) -> Result<Changed, PassError>;
    /// What the last run wants the user to know (decisions it took that change accuracy).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A registry entry.
pub struct PassInfo {
    /// The name used on the command line.
    pub name: &'static str,
    /// One line of documentation.
    pub doc: &'static str,
    /// Makes the pass.
    pub make: fn(&PassOptions) -> Box<dyn Pass>,
}

/// Every pass, in the order `qc passes` lists them.
pub const REGISTRY: &[PassInfo] = &[
    PassInfo {
        name: "fold-constants",
        doc: "evaluate ops whose operands are all constant (shape arithmetic included); constant shape operands become attributes",
        make: |_| Box::new(FoldConstants),
    },
    PassInfo {
        name: "fold-hard-swish",
        doc: "replace x * clip(x + 3, 0, 6) / 6 and x * hard_sigmoid(x) with hard_swish",
        make: |_| Box::new(FoldHardSwish),
    },
    PassInfo {
        name: "fold-bn",
        doc: "fold batch_norm into the conv2d/gemm before it, or into a standalone mul + add",
        make: |_| Box::new(FoldBn),
    },
    PassInfo {
        name: "prune-channels",
        doc: "remove output channels of conv/gemm layers and propagate the shapes (--prune-ratio, --prune-layer, --prune-criterion, --prune-multiple, --reconstruct, --prune-steps, --max-loss)",
        make: |o| Box::new(PruneChannels::new(o)),
    },
    PassInfo {
        name: "sparsify",
        doc: "zero the smallest weights of conv/gemm layers, one by one or in the 16x4 blocks the JIT skips (--sparsity, --sparsity-layer, --sparsity-global, --block, --reconstruct)",
        make: |o| Box::new(Sparsify::new(o)),
    },
    PassInfo {
        name: "cluster-weights",
        doc: "weight sharing: k-means the nonzero weights of each conv/gemm layer into --clusters K values (Deep Compression)",
        make: |o| Box::new(ClusterWeights::new(o)),
    },
    PassInfo {
        name: "fuse-matmul-add",
        doc: "rewrite a 2-D matmul by a constant weight plus a constant bias vector as one gemm",
        make: |_| Box::new(FuseMatmulAdd),
    },
    PassInfo {
        name: "fuse-activation",
        doc: "mark a relu/clip that follows a conv2d/gemm/matmul as that op's fused activation",
        make: |_| Box::new(FuseActivation),
    },
    PassInfo {
        name: "equalize",
        doc: "cross-layer equalization of conv/gemm pairs through relu and max pooling; SmoothQuant for gemm/matmul pairs (--smooth-alpha)",
        make: |o| Box::new(Equalize::new(o)),
    },
    PassInfo {
        name: "calibrate",
        doc: "run the evaluator on --calib samples and record each activation's range in a stats op (--calib-method, --calib-override)",
        make: |o| Box::new(Calibrate::new(o)),
    },
    PassInfo {
        name: "insert-qdq",
        doc: "quantize/dequantize calibrated activations next to integer-capable ops, and their weights and biases (--activations, --symmetric, --per-tensor, --keep-fp32, --weight-bits)",
        make: |o| Box::new(InsertQdq::new(o)),
    },
    PassInfo {
        name: "bias-correction",
        doc: "after insert-qdq: match each quantized weight channel's spread to the original (scale) and fold the mean output shift on the calibration samples into the bias",
        make: |o| Box::new(BiasCorrection::new(o)),
    },
    PassInfo {
        name: "fold-qdq",
        doc: "quantize constants; cancel quantize(dequantize(q)) or make it a requantize; move Q/DQ through reshape, transpose, max_pool, relu",
        make: |_| Box::new(FoldQdq),
    },
    PassInfo {
        name: "fuse-requant",
        doc: "dequantize → conv2d/gemm/matmul/add/pool/concat/activation → quantize becomes one integer op (--requant f32|q31)",
        make: |o| Box::new(FuseRequant::new(o)),
    },
    PassInfo {
        name: "quantize-dynamic",
        doc: "dynamic quantization of gemm/matmul/conv2d: i8 weights, u8 activations quantized per call (--per-tensor)",
        make: |o| Box::new(QuantizeDynamic::new(o)),
    },
    PassInfo {
        name: "dead-code",
        doc: "remove ops whose results are never used, and weights no const refers to",
        make: |_| Box::new(DeadCode),
    },
];

/// Named pipelines: (name, passes, doc).
pub const PIPELINES: &[(&str, &[&str], &str)] = &[
    (
        "default",
        &["fold-constants", "fold-hard-swish", "fold-bn", "fuse-matmul-add", "fuse-activation", "dead-code"],
        "the fp32 clean-up before quantization",
    ),
    ("cleanup", &["fold-constants", "dead-code"], "constant folding and dead-code removal only"),
    (
        "int8",
        &[
            "fold-constants",
            "fold-hard-swish",
            "fold-bn",
            "fuse-matmul-add",
            "fuse-activation",
            "calibrate",
            "insert-qdq",
            "fold-qdq",
            "fuse-requant",
            "dead-code",
        ],
        "post-training static quantization to integer ops (needs --calib)",
    ),
    (
        "dynamic",
        &["fold-constants", "fold-hard-swish", "fold-bn", "fuse-matmul-add", "fuse-activation", "quantize-dynamic", "dead-code"],
        "dynamic quantization of gemm and matmul (ONNX Runtime's quantize_dynamic)",
    ),
    (
        "qdq",
        &["fold-constants", "fold-hard-swish", "fold-bn", "fold-qdq", "fuse-requant", "dead-code"],
        "compile a model quantized elsewhere (QDQ from ONNX Runtime or quantization-aware training) to integer ops",
    ),
];

/// Makes the pass called `name` with `opts`, or an error listing the valid names.
pub fn lookup(name: &str, opts: &PassOptions) -> Result<Box<dyn Pass>, String> {
    REGISTRY.iter().find(|p| p.name == name).map(|p| (p.make)(opts)).ok_or_else(|| {
        let names: Vec<&str> = REGISTRY.iter().map(|p| p.name).collect();
        format!("unknown pass `{name}`; valid passes: {}", names.join(", "))
    })
}

/// The pass names of pipeline `name`, or an error listing the valid pipelines.
pub fn pipeline(name: &str) -> Result<Vec<String>, String> {
    PIPELINES.iter().find(|p| p.0 == name).map(|p| p.1.iter().map(|s| s.to_string()).collect()).ok_or_else(|| {
        let names: Vec<&str> = PIPELINES.iter().map(|p| p.0).collect();
        format!("unknown pipeline `{name}`; valid pipelines: {}", names.join(", "))
    })
}

/// How the runner reports and checks.
#[derive(Clone, Debug, Default)]
pub struct PipelineOptions {
    /// Print the IR after every pass.
    pub print_after_all: bool,
    /// Print the IR after the passes named here.
    pub print_after: Vec<String>,
    /// Write `NN-name.qir` after each pass (and `00-input.qir`) into this directory.
    pub dump_dir: Option<PathBuf>,
    /// Stop after the pass of this name.
    pub stop_after: Option<String>,
    /// Verify against the weights too (they are loaded).
    pub check_weights: bool,
    /// The passes' options.
    pub pass_options: PassOptions,
}

/// What one pass did.
#[derive(Clone, Debug, PartialEq)]
pub struct PassRecord {
    /// The pass.
    pub name: String,
    /// Whether it changed the graph.
    pub changed: Changed,
    /// What the pass reported.
    pub notes: Vec<String>,
}

/// Runs `passes` in order, verifying after each; IR printed after passes goes to `print_to`.
pub fn run_pipeline(
    g: &mut Graph,
    passes: &[String],
    opts: &PipelineOptions,
    print_to: &mut dyn std::io::Write,
) -> Result<Vec<PassRecord>, PassError> {
    let made: Vec<Box<dyn Pass>> = passes
        .iter()
        .map(|n| lookup(n, &opts.pass_options).map_err(|e| PassError::new("pipeline", e)))
        .collect::<Result<_, _>>()?;
    for n in opts.print_after.iter().chain(&opts.stop_after) {
        lookup(n, &opts.pass_options).map_err(|e| PassError::new("pipeline", e))?;
    }
    let vopts = VerifyOptions { check_weights: opts.check_weights };
    verify(g, vopts).map_err(|d| PassError {
        pass: "input".into(),
        message: "the input does not verify".into(),
        diagnostics: d,
    })?;
    let dump = |index: usize, name: &str, g: &Graph| -> Result<(), PassError> {
        if let Some(dir) = &opts.dump_dir {
            std::fs::create_dir_all(dir).map_err(|e| PassError::new(name, format!("cannot create {}: {e}", dir.display())))?;
            let path = dir.join(format!("{index:02}-{name}.qir"));
            std::fs::write(&path, print(g)).map_err(|e| PassError::new(name, format!("cannot write {}: {e}", path.display())))?;
        }
        Ok(())
    };
    dump(0, "input", g)?;
    let mut records = Vec::new();
    for (i, pass) in made.iter().enumerate() {
        let name = pass.name();
        let changed = pass.run(g)?;
        verify(g, vopts).map_err(|d| PassError {
            pass: name.into(),
            message: "the pass produced a graph that does not verify (a bug in the pass)".into(),
            diagnostics: d,
        })?;
        records.push(PassRecord { name: name.into(), changed, notes: pass.notes() });
        if opts.print_after_all || opts.print_after.iter().any(|p| p == name) {
            let note = if changed == Changed::Yes { "" } else { " (no change)" };
            writeln!(print_to, "// ----- IR after {name}{note} -----\n{}", print(g))
                .map_err(|e| PassError::new(name, e.to_string()))?;
        }
        dump(i + 1, name, g)?;
        if opts.stop_after.as_deref() == Some(name) {
            break;
        }
    }
    Ok(records)
}
