//! qc's JIT and ONNX Runtime side by side in one process, one thread each, on the corpus digits
//! models at batch 1 and 64: both take f32 input and return f32 output (qc's input quantize and
//! output dequantize included), runs interleaved (qc, ORT fp32, ORT int8, qc, ...) so that the
//! machine's noise falls on all of them alike. ONNX Runtime is the pip wheel's library, loaded at
//! run time:
//!
//! ```sh
//! cd bench/ort && cargo run --release -- [RUNS] [ZOO_MODEL...]
//! ```
//!
//! (`ORT_DYLIB_PATH` overrides where `libonnxruntime.so` is looked for.) Static: qc's model is the
//! fp32 ONNX file through the `int8` pipeline with the corpus calibration samples; ONNX Runtime
//! runs the fp32 file and every int8 (QDQ) variant in the corpus, and the fastest is its "best".
//! Dynamic: qc's `dynamic` pipeline against ONNX Runtime's `quantize_dynamic` variants.
//! Zoo CNNs (when `../shared/zoo/build` has run; `QC_ZOO` overrides `~/.cache/qc-zoo`): qc
//! compiles the fp32 file with the zoo's calibration samples (MinMax, the default); ONNX Runtime
//! runs the fp32 file and the zoo's QDQ files; batch 1 and 8, `RUNS / 10` runs (at least 10); then
//! batch 8 on two threads for both (qc splitting the batch, ONNX Runtime's intra-op threads). qc
//! runs each zoo model twice, with 8-bit weights and with 7-bit ones (`--weight-bits 7`, rows
//! marked `w7`: what CPUs without VNNI multiply with `vpmaddubsw`). Zoo transformers (BERT-mini
//! and ViT-tiny, imported with their inputs' shapes fixed): qc's static (percentile) and dynamic
//! pipelines against ONNX Runtime's fp32, QDQ and `quantize_dynamic` models, batch 1, `RUNS / 2`
//! runs. Naming zoo models (e.g. `mobilenet_v2 bert_mini`) measures only those, and not the
//! corpus.

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use qc_codegen::CompiledModel;
use qc_ir::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

type Error = Box<dyn std::error::Error>;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
}

/// The wheel's `libonnxruntime.so`, found through Python unless `ORT_DYLIB_PATH` says.
fn ort_library() -> Result<PathBuf, Error> {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return Ok(p.into());
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("capi");
    let lib = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
        .ok_or("no libonnxruntime.so in the onnxruntime wheel (pip install onnxruntime)")?;
    Ok(lib)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// qc's model of a corpus fp32 model through `pipeline` (`int8` or `dynamic`).
fn qc_model(name: &str, pipeline: &str) -> Result<CompiledModel, Error> {
    let mut g = qc::onnx::import_file(&corpus().join(format!("models/{name}_fp32.onnx")), &Default::default())?;
    let calib = Arc::new(qc::io::read_tensor(&corpus().join("data/digits_calib_x.npy"))?);
    let opts = qc_passes::PipelineOptions {
        pass_options: qc_passes::PassOptions { calibration: Some(calib), ..Default::default() },
        ..Default::default()
    };
    qc_passes::run_pipeline(&mut g, &qc_passes::pipeline(pipeline)?, &opts, &mut std::io::sink())?;
    Ok(CompiledModel::compile(&g)?)
}

fn session(env: &ort::environment::Environment, path: &Path, threads: usize) -> Result<Session, Error> {
    Ok(Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(threads)?
        .with_inter_threads(1)?
        .with_parallel_execution(false)?
        .commit_from_file(path)?)
}

/// One ORT run: f32 in, f32 out (copied out, as qc's output is).
fn ort_run(s: &mut Session, shape: &[usize], x: &[f32]) -> Result<Vec<f32>, Error> {
    let input = TensorRef::from_array_view((shape.to_vec(), x))?;
    let outputs = s.run(ort::inputs![input])?;
    let (_, y) = outputs[0].try_extract_tensor::<f32>()?;
    Ok(y.to_vec())
}

fn main() -> Result<(), Error> {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    let only: Vec<String> = std::env::args().skip(2).collect();
    let names = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"];
    let known: Vec<&str> = names.iter().copied().chain(TRANSFORMERS.iter().map(|(n, _)| *n)).collect();
    if let Some(unknown) = only.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(format!("`{unknown}` is not a zoo model (one of {})", known.join(", ")).into());
    }
    let env = ort::init_from(ort_library()?)?.build()?;
    if only.is_empty() {
        corpus_models(&env, runs)?;
    }
    if let Some(zoo) = zoo() {
        let names: Vec<&str> = names.into_iter().filter(|n| only.is_empty() || only.iter().any(|o| o == n)).collect();
        if !names.is_empty() {
            zoo_models(&env, &zoo, &names, runs)?;
        }
        let transformers: Vec<_> =
            TRANSFORMERS.iter().filter(|(n, _)| only.is_empty() || only.iter().any(|o| o == n)).copied().collect();
        if !transformers.is_empty() {
            transformer_models(&env, &zoo, &transformers, runs)?;
        }
    } else if !only.is_empty() {
        return Err("the zoo has not been built (../shared/zoo/build; QC_ZOO overrides ~/.cache/qc-zoo)".into());
    }
    Ok(())
}

/// The corpus's digits models, static and dynamic.
fn corpus_models(env: &ort::environment::Environment, runs: usize) -> Result<(), Error> {
    let x_all = qc::io::read_tensor(&corpus().join("data/digits_test_x.npy"))?;
    let x_all = x_all.as_f32().ok_or("test data is not f32")?.clone();
    println!("Static int8: qc's `int8` pipeline against ONNX Runtime's fp32 model and every int8 (QDQ) variant.");
    header("qc int8 ms", "ORT int8 ms", "(ORT's fastest int8 variant)");
    for name in ["digits_mlp", "digits_cnn", "digits_resdw"] {
        side_by_side(env, name, "int8", "qdq", &x_all, runs)?;
    }
    println!();
    println!("Dynamic: qc's `dynamic` pipeline against ONNX Runtime's fp32 model and its quantize_dynamic variants.");
    header("qc dyn ms", "ORT dyn ms", "(ORT's fastest dynamic variant)");
    for name in ["digits_mlp", "digits_mlpmm"] {
        side_by_side(env, name, "dynamic", "dyn", &x_all, runs)?;
    }
    println!();
    Ok(())
}

/// The zoo's CNNs `names`, at batch 1 and 8 on one thread, then at batch 8 on two.
fn zoo_models(env: &ort::environment::Environment, zoo: &Path, names: &[&str], runs: usize) -> Result<(), Error> {
    println!(
        "Zoo CNNs at 224×224: qc compiled with the zoo's calibration samples against ONNX Runtime's fp32 model and its QDQ models."
    );
    header("qc int8 ms", "ORT int8 ms", "(ORT's fastest int8 variant)");
    let x_all = qc::io::read_tensor(&zoo.join("data/resnet18_test.npy"))?;
    let x_all = x_all.as_f32().ok_or("test data is not f32")?.clone();
    let mut graphs = Vec::new();
    for &name in names {
        let fp32 = zoo.join(format!("models/{name}.onnx"));
        let calib = Arc::new(qc::io::read_tensor(&zoo.join(format!("data/{name}_calib.npy")))?);
        let mut compiled = Vec::new();
        for (label, bits) in [(name.to_string(), 8), (format!("{name} w7"), 7)] {
            let mut model = qc::model::load_model(&fp32, None)?;
            let mut request = qc::driver::Request::default();
            request.options.calibration = Some(calib.clone());
            request.options.weight_bits = bits;
            qc::driver::compile(&mut model, &request, &mut std::io::sink())?;
            compiled.push((label, model.graph));
        }
        let variants = files_starting(&zoo.join("models"), &format!("{name}_qdq"))?;
        let qcs = compiled.iter().map(|(l, g)| Ok((l.clone(), CompiledModel::compile(g)?))).collect::<Result<Vec<_>, Error>>()?;
        compare(env, &qcs, &fp32, &variants, &x_all, &[1, 8], (runs / 10).max(10), 1)?;
        graphs.push((compiled, fp32, variants));
    }
    println!();
    println!("The same at batch 8 on two threads: qc splits the batch (--threads 2), ONNX Runtime has intra_op_num_threads = 2.");
    header("qc int8 ms", "ORT int8 ms", "(ORT's fastest int8 variant)");
    for (compiled, fp32, variants) in &graphs {
        let options = qc_codegen::CodegenOptions { threads: 2, ..qc_codegen::CodegenOptions::host() };
        let qcs = compiled
            .iter()
            .map(|(l, g)| Ok((l.clone(), CompiledModel::compile_with(g, &options)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        compare(env, &qcs, fp32, variants, &x_all, &[8], (runs / 10).max(10), 2)?;
    }
    Ok(())
}

/// The zoo's transformers and their inputs' fixed shapes (`qc import --input-shape`).
type Transformer = (&'static str, &'static [(&'static str, &'static [usize])]);
const TRANSFORMERS: &[Transformer] = &[
    ("bert_mini", &[("input_ids", &[1, 128]), ("attention_mask", &[1, 128]), ("token_type_ids", &[1, 128])]),
    ("vit_tiny", &[("pixel_values", &[1, 3, 112, 112])]),
];

/// The zoo's transformers at batch 1: qc's static (percentile calibration) and dynamic pipelines
/// against ONNX Runtime's fp32 model and its int8 models (QDQ and `quantize_dynamic`).
fn transformer_models(env: &ort::environment::Environment, zoo: &Path, models: &[Transformer], runs: usize) -> Result<(), Error> {
    println!();
    println!(
        "Zoo transformers at batch 1: qc static (percentile) and dynamic against ONNX Runtime's fp32 model and its int8 models."
    );
    header("qc int8 ms", "ORT int8 ms", "(ORT's fastest int8 variant)");
    for &(name, inputs) in models {
        let fp32 = zoo.join(format!("models/{name}.onnx"));
        let opts = qc::onnx::ImportOptions {
            input_shapes: inputs
                .iter()
                .map(|(n, d)| (n.to_string(), d.iter().map(|&x| qc_ir::Dim::Fixed(x as u64)).collect()))
                .collect(),
        };
        let graph = qc::onnx::import_file(&fp32, &opts)?;
        // `data/NAME_KIND.npy` for one input, `data/NAME_KIND.INPUT.npy` for each of several.
        let read = |kind: &str| -> Result<Vec<Tensor>, Error> {
            inputs
                .iter()
                .map(|(input, _)| {
                    let file =
                        if inputs.len() == 1 { format!("{name}_{kind}.npy") } else { format!("{name}_{kind}.{input}.npy") };
                    Ok(qc::io::read_tensor(&zoo.join("data").join(file))?)
                })
                .collect()
        };
        let calib = read("calib")?;
        let test: Vec<Tensor> = read("test")?.iter().map(|t| t.rows(0, 1).ok_or("no test sample")).collect::<Result<_, _>>()?;
        let mut qcs = Vec::new();
        for (label, dynamic) in [(format!("{name} static"), false), (format!("{name} dynamic"), true)] {
            let mut model = qc::model::Model { graph: graph.clone(), path: fp32.clone(), source: String::new() };
            let mut request = qc::driver::Request { dynamic, ..Default::default() };
            if !dynamic {
                request.options.calibration = Some(Arc::new(calib[0].clone()));
                request.options.calibration_rest = calib[1..].iter().cloned().map(Arc::new).collect();
                request.calibration = qc::driver::Calibration::Method("percentile".parse()?);
            }
            qc::driver::compile(&mut model, &request, &mut std::io::sink())?;
            qcs.push((label, CompiledModel::compile(&model.graph)?));
        }
        let mut sessions: Vec<(String, Session)> = std::iter::once(fp32.clone())
            .chain(files_starting(&zoo.join("models"), &format!("{name}_"))?)
            .map(|p| Ok((p.file_stem().unwrap_or_default().to_string_lossy().into_owned(), session(env, &p, 1)?)))
            .collect::<Result<_, Error>>()?;
        let feeds = || -> Result<Vec<(String, ort::session::SessionInputValue<'static>)>, Error> {
            inputs
                .iter()
                .zip(&test)
                .map(|((input, _), t)| {
                    let shape = t.shape().to_vec();
                    let value: ort::session::SessionInputValue<'static> = match t {
                        Tensor::F32(a) => ort::value::Tensor::from_array((shape, a.iter().copied().collect::<Vec<_>>()))?.into(),
                        Tensor::I64(a) => ort::value::Tensor::from_array((shape, a.iter().copied().collect::<Vec<_>>()))?.into(),
                        _ => return Err(format!("{name}: input {input} is neither f32 nor i64").into()),
                    };
                    Ok((input.to_string(), value))
                })
                .collect()
        };
        for _ in 0..3 {
            for (_, qc) in &qcs {
                qc.run(&test)?;
            }
            for (_, s) in &mut sessions {
                s.run(feeds()?)?;
            }
        }
        let mut t_qc = vec![Vec::new(); qcs.len()];
        let mut t_ort = vec![Vec::new(); sessions.len()];
        for _ in 0..(runs / 2).max(10) {
            for ((_, qc), times) in qcs.iter().zip(&mut t_qc) {
                let t = Instant::now();
                std::hint::black_box(qc.run(&test)?);
                times.push(t.elapsed().as_secs_f64());
            }
            for ((_, s), times) in sessions.iter_mut().zip(&mut t_ort) {
                let f = feeds()?;
                let t = Instant::now();
                std::hint::black_box(s.run(f)?);
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let f = median(t_ort.remove(0));
        sessions.remove(0);
        let (best, i8_t) = sessions
            .iter()
            .zip(t_ort)
            .map(|((n, _), t)| (n.clone(), median(t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or("no int8 variant")?;
        for ((label, _), times) in qcs.iter().zip(t_qc) {
            let q = median(times);
            println!(
                "{label:<18} {:>5} {:>11.4} {:>12.4} {:>12.4}  {best:<38} {:>12.2}x",
                1,
                q * 1e3,
                f * 1e3,
                i8_t * 1e3,
                q / f.min(i8_t)
            );
        }
    }
    Ok(())
}

/// The zoo's folder, when it has been built.
fn zoo() -> Option<PathBuf> {
    let dir = std::env::var_os("QC_ZOO")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/qc-zoo")))?;
    dir.join("results.json").exists().then_some(dir)
}

/// The `.onnx` files in `dir` whose names start with `prefix`, sorted.
fn files_starting(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, Error> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "onnx") && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    v.sort();
    Ok(v)
}

fn header(qc: &str, ort: &str, variant: &str) {
    println!(
        "{:<18} {:>5} {:>11} {:>12} {:>12}  {:<38} {:>13}",
        "model", "batch", qc, "ORT fp32 ms", ort, variant, "qc / best ORT"
    );
}

/// One corpus model at batch 1 and 64: qc through `pipeline`, ONNX Runtime's fp32 model and its
/// `{name}_{prefix}_*` variants, interleaved; prints a row per batch.
fn side_by_side(
    env: &ort::environment::Environment,
    name: &str,
    pipeline: &str,
    prefix: &str,
    x_all: &ndarray::ArrayD<f32>,
    runs: usize,
) -> Result<(), Error> {
    let qc = [(name.to_string(), qc_model(name, pipeline)?)];
    let variants = files_starting(&corpus().join("models"), &format!("{name}_{prefix}_"))?;
    compare(env, &qc, &corpus().join(format!("models/{name}_fp32.onnx")), &variants, x_all, &[1, 64], runs, 1)
}

/// qc's compiled models (each with its row label) against ONNX Runtime's `fp32` file and its int8
/// `variants` (sessions on `threads` intra-op threads), interleaved, on the first `batch` rows of
/// `x_all` for each batch; prints a row per qc model and batch.
#[allow(clippy::too_many_arguments)]
fn compare(
    env: &ort::environment::Environment,
    qcs: &[(String, CompiledModel)],
    fp32: &Path,
    variants: &[PathBuf],
    x_all: &ndarray::ArrayD<f32>,
    batches: &[usize],
    runs: usize,
    threads: usize,
) -> Result<(), Error> {
    let mut fp32 = session(env, fp32, threads)?;
    let mut variants: Vec<(String, Session)> = variants
        .iter()
        .map(|p| Ok((p.file_stem().unwrap_or_default().to_string_lossy().into_owned(), session(env, p, threads)?)))
        .collect::<Result<_, Error>>()?;
    for &batch in batches {
        let x = x_all.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..batch)).to_owned();
        let shape = x.shape().to_vec();
        let data: Vec<f32> = x.iter().copied().collect();
        let input = Tensor::F32(x);
        // Warm up everything, then interleave.
        for _ in 0..3 {
            for (_, qc) in qcs {
                qc.run(std::slice::from_ref(&input))?;
            }
            ort_run(&mut fp32, &shape, &data)?;
            for (_, s) in &mut variants {
                ort_run(s, &shape, &data)?;
            }
        }
        let (mut t_qc, mut t_fp32) = (vec![Vec::new(); qcs.len()], Vec::new());
        let mut t_int8: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..runs {
            for ((_, qc), times) in qcs.iter().zip(&mut t_qc) {
                let t = Instant::now();
                std::hint::black_box(qc.run(std::slice::from_ref(&input))?);
                times.push(t.elapsed().as_secs_f64());
            }
            let t = Instant::now();
            std::hint::black_box(ort_run(&mut fp32, &shape, &data)?);
            t_fp32.push(t.elapsed().as_secs_f64());
            for ((_, s), times) in variants.iter_mut().zip(&mut t_int8) {
                let t = Instant::now();
                std::hint::black_box(ort_run(s, &shape, &data)?);
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let f = median(t_fp32);
        let (best, i8_t) = variants
            .iter()
            .zip(t_int8)
            .map(|((n, _), t)| (n.clone(), median(t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or("no quantized variant")?;
        for ((name, _), times) in qcs.iter().zip(t_qc) {
            let q = median(times);
            println!(
                "{name:<18} {batch:>5} {:>11.4} {:>12.4} {:>12.4}  {best:<38} {:>12.2}x",
                q * 1e3,
                f * 1e3,
                i8_t * 1e3,
                q / f.min(i8_t)
            );
        }
    }
    Ok(())
}
