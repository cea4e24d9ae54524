//! Running a model on a batch of inputs with the reference evaluator.

use qc_ir::eval::evaluate;
use qc_ir::{Dim, Graph, Tensor};

/// Runs `g` on the batch `x` (its first dim), `chunk` samples per evaluation: a model whose batch
/// dim is fixed runs in chunks of that size. Returns the batch of outputs.
pub fn run_batch(g: &Graph, x: &Tensor, chunk: usize) -> Result<Tensor, String> {
    run_batch_with(g, x, chunk, |xi| evaluate(g, &[xi]).map(|mut v| v.remove(0)).map_err(|e| e.to_string()))
}

/// Like [`run_batch`], on the JIT when `g` compiles (its outputs are the evaluator's, bit for bit:
/// the JIT's contract), else on the evaluator: for measuring a graph on many samples.
pub fn run_batch_compiled(g: &Graph, x: &Tensor, chunk: usize) -> Result<Tensor, String> {
    match qc_codegen::CompiledModel::compile(g) {
        Ok(compiled) => run_batch_with(g, x, chunk, |xi| compiled.run(&[xi]).map(|mut v| v.remove(0)).map_err(|e| e.to_string())),
        Err(_) => run_batch(g, x, chunk),
    }
}

/// Like [`run_batch`], running each chunk with `run` (the evaluator or a compiled model).
pub fn run_batch_with(
    g: &Graph,
    x: &Tensor,
    chunk: usize,
    run: impl Fn(Tensor) -> Result<Tensor, String>,
) -> Result<Tensor, String> {
    if g.params().len() != 1 || g.outputs().len() != 1 {
        return Err(format!(
            "@{} has {} inputs and {} outputs; batches are run for one of each",
            g.name,
            g.params().len(),
            g.outputs().len()
        ));
    }
    let mut ys = run_batches(g, std::slice::from_ref(x), chunk, |mut xs| run(xs.remove(0)).map(|y| vec![y]))?;
    Ok(ys.remove(0))
}

/// Runs `g` on a batch of samples: one tensor per input, each holding the samples along its
/// first dim; `chunk` samples per call of `run`, or the model's own batch when its first input's
/// batch dim is fixed. Returns each output's batch.
pub fn run_batches(
    g: &Graph,
    inputs: &[Tensor],
    chunk: usize,
    run: impl Fn(Vec<Tensor>) -> Result<Vec<Tensor>, String>,
) -> Result<Vec<Tensor>, String> {
    if inputs.len() != g.params().len() {
        return Err(format!("@{} takes {} inputs, got {}", g.name, g.params().len(), inputs.len()));
    }
    let counts: Vec<usize> = inputs.iter().map(|t| t.shape().first().copied().unwrap_or(0)).collect();
    let n = counts.first().copied().ok_or("the model has no inputs")?;
    if inputs.iter().any(|t| t.shape().is_empty()) || counts.iter().any(|&c| c != n) {
        return Err(format!("the inputs must hold the same number of samples along their first dim, got {counts:?}"));
    }
    let fixed = match g.params().first().map(|&p| g.ty(p).dims.first()) {
        Some(Some(Dim::Fixed(b))) => Some(*b as usize),
        _ => None,
    };
    let chunk = fixed.unwrap_or(chunk.max(1));
    if fixed.is_some() && n % chunk != 0 {
        return Err(format!("a batch of {n} does not split into the model's batches of {chunk}"));
    }
    let mut outs: Vec<Vec<Tensor>> = vec![Vec::new(); g.outputs().len()];
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let xs = inputs.iter().map(|t| t.rows(start, end).expect("counted")).collect();
        let ys = run(xs).map_err(|e| format!("samples {start}..{end}: {e}"))?;
        for (o, y) in outs.iter_mut().zip(ys) {
            o.push(y);
        }
    }
    outs.iter().map(|parts| Tensor::concat_rows(parts)).collect()
}

/// The index of the largest value of each row of a `[N, C]` batch (the passes' own, so that
/// the CLI and the passes count agreement alike).
pub use qc_passes::samples::argmax_rows;

/// Signal-to-quantization-noise ratio of `got` against `reference`, in dB.
pub fn sqnr_db(reference: &Tensor, got: &Tensor) -> f64 {
    let (r, g) = (reference.to_f64_vec(), got.to_f64_vec());
    let signal: f64 = r.iter().map(|v| v * v).sum();
    let noise: f64 = r.iter().zip(&g).map(|(a, b)| (a - b) * (a - b)).sum();
    if noise == 0.0 { f64::INFINITY } else { 10.0 * (signal / noise).log10() }
}

/// The calibration methods `auto` tries.
pub const AUTO_METHODS: [&str; 5] = ["minmax", "percentile", "kl", "js", "mse"];

/// Compiles `g` with each calibration method and keeps the one whose outputs on the calibration
/// samples have the best SQNR against the uncompiled graph (calibrating once: the methods share
/// what it observed; scoring on the JIT). Returns the choice and every score.
pub fn choose_calibration(
    g: &Graph,
    passes: &[String],
    opts: &qc_passes::PipelineOptions,
    samples: &Tensor,
) -> Result<(qc_passes::CalibMethod, Vec<(String, f64)>), String> {
    let reference = run_batch_compiled(g, samples, 64)?;
    let mut scores = Vec::new();
    let mut best: Option<(qc_passes::CalibMethod, f64)> = None;
    // One forward pass of calibration for all the methods (they differ in how they read it), in
    // `opts`' cache when it has one.
    let cache = opts.pass_options.calib_cache.clone().unwrap_or_default();
    for name in AUTO_METHODS {
        let method: qc_passes::CalibMethod = name.parse().expect("a known method");
        let mut o = qc_passes::PipelineOptions {
            check_weights: opts.check_weights,
            pass_options: opts.pass_options.clone(),
            ..Default::default()
        };
        o.pass_options.calib_method = method;
        o.pass_options.calib_cache = Some(cache.clone());
        let mut trial = g.clone();
        qc_passes::run_pipeline(&mut trial, passes, &o, &mut std::io::sink()).map_err(|e| e.to_string())?;
        let s = sqnr_db(&reference, &run_batch_compiled(&trial, samples, 64)?);
        scores.push((name.to_string(), s));
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((method, s));
        }
    }
    Ok((best.expect("methods were tried").0, scores))
}

/// Runs `passes` over `g` quietly.
pub fn run_passes(g: &mut Graph, passes: &[String], opts: &qc_passes::PipelineOptions) -> Result<(), String> {
    qc_passes::run_pipeline(g, passes, opts, &mut std::io::sink()).map(|_| ()).map_err(|e| e.to_string())
}

/// The fp32 reference (`g` after [`qc_passes::fp32_cleanup`]) and the same graph calibrated.
pub fn reference_and_calibrated(g: &Graph, opts: &qc_passes::PipelineOptions) -> Result<(Graph, Graph), String> {
    let mut reference = g.clone();
    run_passes(&mut reference, &qc_passes::fp32_cleanup(), opts)?;
    let mut calibrated = reference.clone();
    run_passes(&mut calibrated, &["calibrate".to_string()], opts)?;
    Ok((reference, calibrated))
}
