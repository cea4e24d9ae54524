//! The `qc` command line.

use clap::{Parser, Subcommand, ValueEnum};
use qc::io::{read_tensor, write_tensor};
use qc::model::parse_source;
use qc::{QcError, load_model, save_model};
use qc_ir::eval::evaluate;
use qc_ir::requant::RequantMode;
use qc_ir::text::print;
use qc_ir::{Dim, Tensor};
use qc_passes::{PIPELINES, PassOptions, PipelineOptions, REGISTRY, run_pipeline};
use std::io::Write;
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
    /// Run a pipeline of passes over a model and write the result.
    Compile {
        /// The model (.qir, weights in the .safetensors beside it).
        model: PathBuf,
        /// Where to write the optimized QIR (weights go beside it); stdout when absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The weights file, if not beside the model.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// A named pipeline (see `qc passes`).
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
        #[arg(long, value_enum, default_value = "interp")]
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
        Command::Compile {
            model,
            output,
            weights,
            pipeline,
            passes,
            print_after_all,
            print_after,
            dump_dir,
            stop_after,
            requant,
        } => {
            let requant = match requant {
                Requant::F32 => RequantMode::F32,
                Requant::Q31 => RequantMode::Q31,
            };
            let pass_options = PassOptions { requant };
            let opts = PipelineOptions { print_after_all, print_after, dump_dir, stop_after, check_weights: true, pass_options };
            compile(&model, output.as_deref(), weights.as_deref(), pipeline, passes, &opts)
        }
        Command::Run { model, input, output, weights, engine } => run(&model, &input, &output, weights.as_deref(), engine),
    };
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(e.exit_code());
    }
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
    print!("{canonical}");
    Ok(())
}

fn list_passes() {
    println!("passes:");
    for p in REGISTRY {
        println!("  {:<18} {}", p.name, p.doc);
    }
    println!("pipelines:");
    for (name, passes, doc) in PIPELINES {
        println!("  {:<18} {} — {}", name, passes.join(","), doc);
    }
}

fn compile(
    path: &Path,
    out: Option<&Path>,
    weights: Option<&Path>,
    pipeline: Option<String>,
    passes: Option<Vec<String>>,
    opts: &PipelineOptions,
) -> Result<(), QcError> {
    let names = match (pipeline, passes) {
        (_, Some(p)) => p,
        (Some(name), None) => qc_passes::pipeline(&name).map_err(QcError::Usage)?,
        (None, None) => qc_passes::pipeline("default").expect("the default pipeline exists"),
    };
    for n in names.iter().chain(&opts.print_after).chain(&opts.stop_after) {
        qc_passes::lookup(n, &opts.pass_options).map_err(|e| QcError::Usage(format!("error: {e}")))?;
    }
    let mut model = load_model(path, weights)?;
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let result = run_pipeline(&mut model.graph, &names, opts, &mut lock);
    result.map_err(|e| {
        if e.diagnostics.is_empty() {
            QcError::Input(format!("error: {e}"))
        } else {
            QcError::Input(format!("error: pass {}: {}\n{}", e.pass, e.message, model.render(&e.diagnostics)))
        }
    })?;
    match out {
        Some(o) => save_model(&model.graph, o)?,
        None if !(opts.print_after_all || !opts.print_after.is_empty()) => {
            write!(lock, "{}", print(&model.graph)).map_err(|e| QcError::Input(e.to_string()))?;
        }
        None => {}
    }
    Ok(())
}

fn run(path: &Path, input: &str, out: &Path, weights: Option<&Path>, engine: Engine) -> Result<(), QcError> {
    if let Engine::Jit = engine {
        return Err(QcError::Usage("error: the JIT engine is not available in this build yet; use --engine interp".into()));
    }
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
    let param_ty = g.ty(g.params()[0]);
    // A model specialized to batch 1 runs a larger batch one sample at a time.
    let per_sample =
        param_ty.dims.first() == Some(&Dim::Fixed(1)) && x.shape().first().is_some_and(|&n| n > 1) && x.as_f32().is_some();
    let outputs: Vec<Tensor> = if per_sample {
        let n = x.shape()[0];
        let mut outs = Vec::with_capacity(n);
        for i in 0..n {
            let xi = slice_batch(&x, i);
            outs.push(evaluate(g, &[xi]).map_err(|e| QcError::Input(format!("error: {file}, sample {i}: {e}")))?.remove(0));
        }
        vec![concat_batch(&outs)]
    } else {
        evaluate(g, &[x]).map_err(|e| QcError::Input(format!("error: {file}: {e}")))?
    };
    write_tensor(out, &outputs[0])?;
    Ok(())
}

fn slice_batch(x: &Tensor, i: usize) -> Tensor {
    let a = x.as_f32().expect("batches are split only for f32 inputs");
    Tensor::F32(a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(i..i + 1)).to_owned())
}

fn concat_batch(parts: &[Tensor]) -> Tensor {
    let views: Vec<_> = parts.iter().filter_map(|t| t.as_f32().map(|a| a.view())).collect();
    Tensor::F32(ndarray::concatenate(ndarray::Axis(0), &views).expect("outputs of one model agree in shape"))
}
