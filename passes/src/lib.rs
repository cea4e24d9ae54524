//! `qc-passes`: the [`Pass`] trait, the registry of every pass, named pipelines, and the runner
//! that verifies the graph after each pass and can print or dump the IR after any of them.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod options;
pub mod support;

pub(crate) use support::{backprop, channel_selection, rewrite};
pub use support::{channel_flow, distill, observer, reconstruct, samples};

pub use cluster_weights::kmeans_1d;
pub use fuse_requant::explain as explain_unfused;
pub use insert_qdq::{activation_params, kept_fp32};
pub use observer::CalibMethod;
pub use options::{CalibCache, OPTION_KEYS, PassOptions, Progress};
pub use prune_channels::{PruneCriterion, PruneOptions, kept_count};
pub use rewrite::const_value;
pub use sparsify::SparsifyOptions;

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

    /// A plain failure of the running pass (the runner names it).
    pub fn msg(message: impl Into<String>) -> PassError {
        PassError::new("", message)
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

/// What a pass gets besides the graph: the options, and where to leave notes for the user.
pub struct PassContext<'a> {
    /// The passes' options (calibration samples included).
    pub options: &'a PassOptions,
    /// What the pass wants the user to know (decisions it took that change accuracy).
    pub notes: Vec<String>,
}

impl<'a> PassContext<'a> {
    /// A context with `options` and no notes.
    pub fn new(options: &'a PassOptions) -> PassContext<'a> {
        PassContext { options, notes: Vec::new() }
    }
}

/// A transformation of the graph. `run` either leaves a graph the verifier accepts or fails.
/// Its name, doc and placement are its line in [`REGISTRY`].
pub trait Pass {
    /// Runs the pass.
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<Changed, PassError>;
}

/// Where the driver puts a pass that an option adds to a pipeline (`--prune-ratio` adds
/// `prune-channels`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Only where a pipeline or pass list names it.
    Listed,
    /// Just before this pass, else first.
    Before(&'static str),
    /// Just after the first of these passes the pipeline has, else first.
    After(&'static [&'static str]),
    /// Just after this pass; not added to a pipeline without it.
    RightAfter(&'static str),
}

/// A registry entry.
pub struct PassInfo {
    /// The name used on the command line.
    pub name: &'static str,
    /// One line of documentation.
    pub doc: &'static str,
    /// Where an option adds it to a pipeline.
    pub placement: Placement,
    /// Makes the pass with its options.
    pub make: fn(&PassOptions) -> Box<dyn Pass>,
}

/// The registry, one line per pass: `name => module::Type, how to make it from the options,
/// placement, doc`. It declares the pass's module and exports its type; this table is the only
/// place a pass's name is written, and the only line a new pass adds outside its own file.
macro_rules! declare_passes {
    ($($name:literal => $module:ident::$ty:ident, |$o:pat_param| $make:expr, $place:expr, $doc:literal;)*) => {
        $(mod $module; pub use $module::$ty;)*

        /// Every pass, in the order `qc passes` lists them.
        pub const REGISTRY: &[PassInfo] = &[
            $(PassInfo { name: $name, doc: $doc, placement: $place, make: |$o| Box::new($make) },)*
        ];
    };
}

declare_passes! {
    "fold-constants" => fold_constants::FoldConstants, |_| FoldConstants, Placement::Listed,
        "evaluate ops whose operands are all constant (shape arithmetic included); constant shape operands become attributes";
    "fold-hard-swish" => fold_hard_swish::FoldHardSwish, |_| FoldHardSwish, Placement::Listed,
        "replace x * clip(x + 3, 0, 6) / 6 and x * hard_sigmoid(x) with hard_swish";
    "fold-gelu" => fold_gelu::FoldGelu, |_| FoldGelu, Placement::Listed,
        "replace x * 0.5 * (1 + erf(x / sqrt(2))), as exporters spell GELU, with gelu";
    "fold-layer-norm" => fold_layer_norm::FoldLayerNorm, |_| FoldLayerNorm, Placement::Listed,
        "replace layer normalization spelled op by op (reduce_mean, sub, pow, reduce_mean, add, sqrt, div, then a scale and bias) with layer_norm";
    "fold-bn" => fold_bn::FoldBn, |_| FoldBn, Placement::Listed,
        "fold batch_norm into the conv2d/gemm before it, or into a standalone mul + add";
    "prune-channels" => prune_channels::PruneChannels, |o| PruneChannels::new(o), Placement::Before("fold-bn"),
        "remove output channels of conv/gemm layers and propagate the shapes (--prune-ratio, --prune-layer, --prune-criterion, --prune-multiple, --reconstruct, --prune-steps, --max-loss)";
    "sparsify" => sparsify::Sparsify, |o| Sparsify::new(o), Placement::After(&["fold-bn"]),
        "zero the smallest weights of conv/gemm layers, one by one or in the 16x4 blocks the JIT skips (--sparsity, --sparsity-layer, --sparsity-global, --block, --reconstruct)";
    "cluster-weights" => cluster_weights::ClusterWeights, |o| ClusterWeights::new(o), Placement::After(&["sparsify", "fold-bn"]),
        "weight sharing: k-means the nonzero weights of each conv/gemm layer into --clusters K values (Deep Compression)";
    "fold-bias-add" => fold_bias_add::FoldBiasAdd, |_| FoldBiasAdd, Placement::Listed,
        "fold the add of a per-channel constant into the bias of the conv2d/gemm before it";
    "fuse-matmul-add" => fuse_matmul_add::FuseMatmulAdd, |_| FuseMatmulAdd, Placement::Listed,
        "rewrite a 2-D matmul by a constant weight plus a constant bias vector as one gemm";
    "fuse-activation" => fuse_activation::FuseActivation, |_| FuseActivation, Placement::Listed,
        "mark a relu/clip that follows a conv2d/gemm/matmul as that op's fused activation";
    "equalize" => equalize::Equalize, |o| Equalize::new(o), Placement::RightAfter("fuse-activation"),
        "cross-layer equalization of conv/gemm pairs through relu and max pooling; SmoothQuant for gemm/matmul pairs and through layer_norm (--smooth-alpha)";
    "calibrate" => calibrate::Calibrate, |o| Calibrate::new(o), Placement::Listed,
        "run the evaluator on --calib samples and record each activation's range in a stats op (--calib-method, --calib-override)";
    "insert-qdq" => insert_qdq::InsertQdq, |o| InsertQdq::new(o), Placement::Listed,
        "quantize/dequantize calibrated activations next to integer-capable ops, and their weights and biases (--activations, --symmetric, --per-tensor, --keep-fp32, --weight-bits)";
    "bias-correction" => bias_correction::BiasCorrection, |o| BiasCorrection::new(o), Placement::RightAfter("insert-qdq"),
        "after insert-qdq: match each quantized weight channel's spread to the original (scale) and fold the mean output shift on the calibration samples into the bias";
    "fold-qdq" => fold_qdq::FoldQdq, |_| FoldQdq, Placement::Listed,
        "quantize constants; cancel quantize(dequantize(q)) or make it a requantize; move Q/DQ through reshape, transpose, max_pool, relu";
    "fuse-requant" => fuse_requant::FuseRequant, |o| FuseRequant::new(o), Placement::Listed,
        "dequantize → conv2d/gemm/matmul/add/pool/concat/activation → quantize becomes one integer op (--requant f32|q31)";
    "quantize-dynamic" => quantize_dynamic::QuantizeDynamic, |o| QuantizeDynamic::new(o), Placement::Listed,
        "dynamic quantization of gemm/matmul/conv2d: i8 weights, u8 activations quantized per call (--per-tensor)";
    "dead-code" => dead_code::DeadCode, |_| DeadCode, Placement::Listed,
        "remove ops whose results are never used, and weights no const refers to";
}

/// The fp32 clean-up every quantizing pipeline starts with.
const FP32_CLEANUP: &[&str] = &[
    "fold-constants",
    "fold-hard-swish",
    "fold-gelu",
    "fold-layer-norm",
    "fold-bn",
    "fold-bias-add",
    "fuse-matmul-add",
    "fuse-activation",
];

/// Named pipelines: (name, their passes as a sequence of parts, doc).
pub const PIPELINES: &[(&str, &[&[&str]], &str)] = &[
    ("default", &[FP32_CLEANUP, &["dead-code"]], "the fp32 clean-up before quantization"),
    ("cleanup", &[&["fold-constants", "dead-code"]], "constant folding and dead-code removal only"),
    (
        "int8",
        &[FP32_CLEANUP, &["calibrate", "insert-qdq", "fold-qdq", "fuse-requant", "dead-code"]],
        "post-training static quantization to integer ops (needs --calib)",
    ),
    (
        "dynamic",
        &[FP32_CLEANUP, &["quantize-dynamic", "dead-code"]],
        "dynamic quantization of gemm and matmul (ONNX Runtime's quantize_dynamic)",
    ),
    (
        "qdq",
        &[&[
            "fold-constants",
            "fold-hard-swish",
            "fold-gelu",
            "fold-layer-norm",
            "fold-bn",
            "fold-qdq",
            "fuse-requant",
            "dead-code",
        ]],
        "compile a model quantized elsewhere (QDQ from ONNX Runtime or quantization-aware training) to integer ops",
    ),
];

/// The registry entry of the pass called `name`, or an error listing the valid names.
pub fn info(name: &str) -> Result<&'static PassInfo, String> {
    REGISTRY.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = REGISTRY.iter().map(|p| p.name).collect();
        format!("unknown pass `{name}`; valid passes: {}", names.join(", "))
    })
}

/// Makes the pass called `name` with `opts`, or an error listing the valid names.
pub fn lookup(name: &str, opts: &PassOptions) -> Result<Box<dyn Pass>, String> {
    info(name).map(|p| (p.make)(opts))
}

/// Adds `pass` to the pass list `names` where its [`Placement`] says, unless it is there
/// already (or its placement needs a pass the list does not have).
pub fn place(names: &mut Vec<String>, pass: &str) -> Result<(), String> {
    if names.iter().any(|n| n == pass) {
        return Ok(());
    }
    let position = |p: &str| names.iter().position(|n| n == p);
    let at = match info(pass)?.placement {
        Placement::Listed => return Err(format!("pass `{pass}` is added by naming it in a pipeline or pass list")),
        Placement::Before(p) => position(p).unwrap_or(0),
        Placement::After(ps) => ps.iter().find_map(|p| position(p)).map_or(0, |i| i + 1),
        Placement::RightAfter(p) => match position(p) {
            Some(i) => i + 1,
            None => return Ok(()),
        },
    };
    names.insert(at, pass.to_string());
    Ok(())
}

/// The pass names of pipeline `name`, or an error listing the valid pipelines.
pub fn pipeline(name: &str) -> Result<Vec<String>, String> {
    PIPELINES.iter().find(|p| p.0 == name).map(|p| p.1.concat().iter().map(|s| s.to_string()).collect()).ok_or_else(|| {
        let names: Vec<&str> = PIPELINES.iter().map(|p| p.0).collect();
        format!("unknown pipeline `{name}`; valid pipelines: {}", names.join(", "))
    })
}

/// The fp32 clean-up every int8 model is compared with: the `int8` pipeline's passes before
/// `calibrate`, then `dead-code` (the `default` pipeline).
pub fn fp32_cleanup() -> Vec<String> {
    let int8 = pipeline("int8").expect("the int8 pipeline exists");
    let calibrate = int8.iter().position(|p| p == "calibrate").expect("int8 calibrates");
    int8[..calibrate].iter().cloned().chain(["dead-code".to_string()]).collect()
}

/// The `int8` pipeline's passes after `calibrate`: the lowering to integer ops.
pub fn lower_to_int8() -> Vec<String> {
    let int8 = pipeline("int8").expect("the int8 pipeline exists");
    let calibrate = int8.iter().position(|p| p == "calibrate").expect("int8 calibrates");
    int8[calibrate + 1..].to_vec()
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
    /// With `dump_dir`: what writes each dump's weights beside its QIR, so that every dump loads
    /// again (this crate writes no weights files; `qc` hands its writer in).
    pub dump_weights: Option<DumpWeights>,
    /// Stop after the pass of this name.
    pub stop_after: Option<String>,
    /// Verify against the weights too (they are loaded).
    pub check_weights: bool,
    /// The passes' options.
    pub pass_options: PassOptions,
}

/// Writes the weights of a graph dumped to the QIR file it is given, beside that file.
#[derive(Clone)]
pub struct DumpWeights(pub std::sync::Arc<dyn Fn(&Graph, &std::path::Path) -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for DumpWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DumpWeights")
    }
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
    /// How long it ran (the verification after it included).
    pub elapsed: std::time::Duration,
}

/// Runs `passes` in order, verifying after each; IR printed after passes goes to `print_to`.
pub fn run_pipeline(
    g: &mut Graph,
    passes: &[String],
    opts: &PipelineOptions,
    print_to: &mut dyn std::io::Write,
) -> Result<Vec<PassRecord>, PassError> {
    let made: Vec<(&'static str, Box<dyn Pass>)> = passes
        .iter()
        .map(|n| {
            let info = info(n).map_err(|e| PassError::new("pipeline", e))?;
            Ok((info.name, (info.make)(&opts.pass_options)))
        })
        .collect::<Result<_, PassError>>()?;
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
            if let Some(DumpWeights(write)) = &opts.dump_weights {
                write(g, &path)
                    .map_err(|e| PassError::new(name, format!("cannot write the weights of {}: {e}", path.display())))?;
            }
        }
        Ok(())
    };
    dump(0, "input", g)?;
    let mut records = Vec::new();
    for (i, (name, pass)) in made.iter().enumerate() {
        let name = *name;
        let started = std::time::Instant::now();
        let mut cx = PassContext::new(&opts.pass_options);
        let changed = pass.run(g, &mut cx).map_err(|e| PassError { pass: name.into(), ..e })?;
        verify(g, vopts).map_err(|d| PassError {
            pass: name.into(),
            message: "the pass produced a graph that does not verify (a bug in the pass)".into(),
            diagnostics: d,
        })?;
        records.push(PassRecord { name: name.into(), changed, notes: cx.notes, elapsed: started.elapsed() });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pipeline_is_the_int8_pipelines_fp32_part() {
        assert_eq!(pipeline("default").unwrap(), fp32_cleanup());
        for p in PIPELINES.iter().flat_map(|p| p.1.concat()) {
            info(p).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn options_place_their_passes_by_the_table() {
        let mut names = pipeline("int8").unwrap();
        for p in ["prune-channels", "sparsify", "cluster-weights", "equalize", "bias-correction"] {
            place(&mut names, p).unwrap();
        }
        assert_eq!(
            names.join(","),
            "fold-constants,fold-hard-swish,fold-gelu,fold-layer-norm,prune-channels,fold-bn,sparsify,cluster-weights,fold-bias-add,\
             fuse-matmul-add,\
             fuse-activation,equalize,calibrate,insert-qdq,bias-correction,fold-qdq,fuse-requant,dead-code"
        );
        let mut fp32 = pipeline("cleanup").unwrap();
        place(&mut fp32, "bias-correction").unwrap();
        assert!(!fp32.iter().any(|p| p == "bias-correction"));
        assert!(place(&mut fp32, "fold-bn").is_err());
    }
}
