//! Commands that run a model: `run`, `bench`, `eval`.

use super::args::{Against, BenchArgs, Engine, EvalArgs};
use crate::say;
use qc::io::{read_tensor, write_tensor};
use qc::{QcError, load_model};
use qc_codegen::CompiledModel;
use qc_ir::eval::evaluate;
use qc_ir::{Dim, Tensor};
use std::io::Write;
use std::path::Path;

#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    path: &Path,
    inputs: &[String],
    out: &Path,
    weights: Option<&Path>,
    engine: Engine,
    isa: &str,
    threads: usize,
    json: bool,
) -> Result<(), QcError> {
    let options = super::codegen_options(isa, threads)?;
    if matches!(engine, Engine::Interp) && threads != 1 {
        return Err(super::usage("--threads: the evaluator runs on one thread; --threads is for --engine jit"));
    }
    let model = load_model(path, weights)?;
    let g = &model.graph;
    let files = qc::io::input_files(g, inputs, "--input").map_err(QcError::Usage)?;
    let xs = files.iter().map(|f| read_tensor(f)).collect::<Result<Vec<Tensor>, _>>()?;
    let what = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
    let fixed = matches!(g.params().first().and_then(|&p| g.ty(p).dims.first()), Some(Dim::Fixed(_)));
    let mut compile_ms = None;
    let t = std::time::Instant::now();
    let ys = match engine {
        Engine::Jit => {
            let compiled = CompiledModel::compile_with(g, &options).map_err(|e| QcError::Input(format!("{e}")))?;
            compile_ms = Some(t.elapsed().as_secs_f64() * 1e3);
            let run = |xs: Vec<Tensor>| compiled.run(&xs).map_err(|e| e.to_string());
            // A model specialized to a batch size runs a larger batch in chunks of it.
            if fixed { qc::exec::run_batches(g, &xs, 1, run) } else { run(xs) }
        }
        Engine::Interp => {
            let run = |xs: Vec<Tensor>| evaluate(g, &xs).map_err(|e| e.to_string());
            if fixed { qc::exec::run_batches(g, &xs, 1, run) } else { run(xs) }
        }
    }
    .map_err(|e| QcError::Input(format!("{what}: {e}")))?;
    let run_ms = t.elapsed().as_secs_f64() * 1e3 - compile_ms.unwrap_or(0.0);
    let outs = qc::io::output_files(g, out);
    for (file, y) in outs.iter().zip(&ys) {
        write_tensor(file, y)?;
    }
    if super::verbose() {
        if let Some(c) = compile_ms {
            eprintln!("time: JIT compile {c:.2} ms");
        }
        eprintln!("time: run {run_ms:.2} ms");
    }
    if json {
        let outputs: Vec<serde_json::Value> = outs
            .iter()
            .zip(&ys)
            .zip(g.outputs())
            .map(|((file, y), &r)| {
                serde_json::json!({
                    "name": g.value(r).name.clone(),
                    "file": file.display().to_string(),
                    "shape": y.shape(),
                    "dtype": y.scalar_type().to_string(),
                })
            })
            .collect();
        super::say_json(&serde_json::json!({
            "model": path.display().to_string(),
            "engine": match engine { Engine::Jit => "jit", Engine::Interp => "interp" },
            "compile_ms": compile_ms,
            "run_ms": run_ms,
            "outputs": outputs,
        }));
    } else if outs.len() > 1 {
        let names: Vec<String> = outs.iter().map(|f| f.display().to_string()).collect();
        say!("wrote {}", names.join(", "));
    }
    Ok(())
}

/// An input of type `ty` at batch `batch` for timing: a repeating pattern in [0, 1) for floats,
/// 0 for integers (a valid index and a mask that keeps nothing).
fn made_up_input(ty: &qc_ir::TensorType, batch: usize) -> Result<Tensor, QcError> {
    let mut dims: Vec<usize> = ty.dims.iter().map(|d| d.fixed().map_or(batch, |n| n as usize)).collect();
    if let Some(d) = dims.first_mut() {
        *d = batch;
    }
    let n: usize = dims.iter().product();
    let data = (0..n).map(|i| ((i * 7) % 11) as f32 / 11.0).collect();
    let x = Tensor::F32(
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), data)
            .map_err(|e| QcError::Input(format!("an input of shape {dims:?} cannot be made: {e}")))?,
    );
    // Values in [0, 1) become 0 as integers.
    Ok(x.cast(ty.elem.storage()))
}

/// The `q`-quantile (0 ≤ q ≤ 1) of times sorted in ascending order.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub(crate) fn bench(args: BenchArgs, json: bool) -> Result<(), QcError> {
    let BenchArgs { model: path, input, batch, runs, weights, evict_kib, isa, threads, against } = args;
    let (path, weights) = (path.as_path(), weights.as_deref());
    let options = super::codegen_options(&isa, threads)?;
    let model = load_model(path, weights)?;
    let g = &model.graph;
    let batch = match g.params().first().and_then(|&p| g.ty(p).dims.first()) {
        Some(Dim::Fixed(b)) => *b as usize,
        _ => batch.max(1),
    };
    qc_ir::eval::check_sizes(g, batch).map_err(|e| QcError::Input(format!("{}: {e}", path.display())))?;
    let x: Vec<Tensor> = if input.is_empty() {
        g.params().iter().map(|&p| made_up_input(g.ty(p), batch)).collect::<Result<_, _>>()?
    } else {
        let files = qc::io::input_files(g, &input, "--input").map_err(QcError::Usage)?;
        let mut xs = Vec::new();
        for f in &files {
            let t = read_tensor(f)?;
            xs.push(t.rows(0, batch).ok_or_else(|| QcError::Input(format!("{} holds fewer than {batch} samples", f.display())))?);
        }
        xs
    };
    let t = std::time::Instant::now();
    let compiled = CompiledModel::compile_with(g, &options).map_err(|e| QcError::Input(format!("{e}")))?;
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    // Memory written between timed runs (`--evict-kib`), a byte per cache line.
    if evict_kib > 1 << 20 {
        return Err(QcError::Usage(format!("--evict-kib {evict_kib} is more than 1 GiB (1048576 KiB)")));
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
        f().map_err(|e| QcError::Input(format!("{e}")))?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            evict(cold);
            let t = std::time::Instant::now();
            f().map_err(|e| QcError::Input(format!("{e}")))?;
            v.push(t.elapsed().as_secs_f64());
        }
        v.sort_by(f64::total_cmp);
        Ok(v)
    };
    let jit_times = time(&|| compiled.run(&x).map(|_| ()).map_err(|e| e.to_string()), runs, evict_kib > 0)?;
    let jit = quantile(&jit_times, 0.5);
    let interp = match against {
        Some(Against::Interp) => {
            Some(quantile(&time(&|| evaluate(g, &x).map(|_| ()).map_err(|e| e.to_string()), runs.div_ceil(5), false)?, 0.5))
        }
        None => None,
    };
    let mem = compiled.memory();
    let mut profile = compiled.profile(&x, runs).map_err(|e| QcError::Input(format!("{e}")))?;
    profile.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    // The steps' time by op (or by what the step does: a layout change, a tensor copied in).
    let mut by_op: Vec<(String, f64, usize)> = Vec::new();
    for p in &profile {
        let op = match p.label.split_once(" = ") {
            Some((_, rest)) => rest.split([' ', '(']).next().unwrap_or(rest).to_string(),
            None if p.label.contains(" → ") => "layout change / copy".to_string(),
            None => p.label.clone(),
        };
        match by_op.iter_mut().find(|(o, _, _)| *o == op) {
            Some(e) => (e.1, e.2) = (e.1 + p.seconds, e.2 + 1),
            None => by_op.push((op, p.seconds, 1)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    let gops = |p: &qc_codegen::StepProfile| (p.ops > 0).then(|| p.ops as f64 / p.seconds / 1e9);
    if json {
        let ms = |q: f64| quantile(&jit_times, q) * 1e3;
        super::say_json(&serde_json::json!({
            "model": path.display().to_string(),
            "cpu": cpu_model(),
            "isa": compiled.isa().to_string(),
            "batch": batch,
            "threads": threads,
            "runs": runs,
            "kernels": compiled.kernel_count(),
            "compile_ms": compile_ms,
            "jit_ms": { "median": ms(0.5), "p10": ms(0.1), "p90": ms(0.9) },
            "evict_kib": evict_kib,
            "interp_ms": interp.map(|t| t * 1e3),
            "arena_bytes": mem.arena * batch,
            "ops_on_evaluator": compiled.fallback_ops().len(),
            "layers": profile.iter().map(|p| serde_json::json!({
                "label": p.label,
                "kernel": p.kernel,
                "engine": if p.jit { "jit" } else { "rust" },
                "median_ms": p.seconds * 1e3,
                "ops": p.ops,
                "gops": gops(p),
            })).collect::<Vec<_>>(),
            "op_kinds": by_op.iter().map(|(op, t, n)| serde_json::json!({ "op": op, "count": n, "ms": t * 1e3 })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    say!(
        "{}: batch {batch}, {} JIT kernels compiled in {compile_ms:.2} ms for ISA level {} on {}{}",
        path.display(),
        compiled.kernel_count(),
        compiled.isa(),
        cpu_model(),
        if threads > 1 { format!(", {threads} threads") } else { String::new() }
    );
    // The spread as well as the median: on a shared machine run times often fall into a fast
    // and a slow mode, and a median alone hides which one it came from.
    say!(
        "  jit     {:>10.4} ms (median of {runs}; 10 % of runs took under {:.4} ms, 10 % over {:.4} ms){}",
        jit * 1e3,
        quantile(&jit_times, 0.1) * 1e3,
        quantile(&jit_times, 0.9) * 1e3,
        if evict_kib > 0 { format!("; {evict_kib} KiB of other memory written before each run") } else { String::new() }
    );
    if let Some(interp) = interp {
        say!("  interp  {:>10.4} ms ({:.1}x the JIT's time)", interp * 1e3, interp / jit);
    }
    say!(
        "  arena   {} bytes at batch {batch} ({} per image; lower bound {}, {} activations unshared {}){}",
        mem.arena * batch,
        mem.arena,
        mem.lower_bound,
        mem.buffers,
        mem.unshared,
        match compiled.fallback_ops().len() {
            1 => "; 1 op on the evaluator".to_string(),
            n => format!("; {n} ops on the evaluator"),
        }
    );
    say!("  per layer (median):");
    for p in profile.iter().take(12) {
        let gops = gops(p).map(|g| format!("{g:>7.1} GOPS")).unwrap_or_default();
        say!(
            "    {:>9.4} ms  {:<4} {gops:>12}  {}  [{}]",
            p.seconds * 1e3,
            if p.jit { "jit" } else { "rust" },
            p.label,
            p.kernel
        );
    }
    say!("  per op kind (sum of medians):");
    for (op, t, n) in by_op {
        say!("    {:>9.4} ms  {n:>4} × {op}", t * 1e3);
    }
    Ok(())
}

pub(crate) fn eval(a: EvalArgs, json: bool) -> Result<(), QcError> {
    let model = load_model(&a.model, a.weights.as_deref())?;
    let x = read_tensor(&a.input)?;
    let labels = read_tensor(&a.labels)?
        .to_i64_vec()
        .ok_or_else(|| QcError::Input(format!("{}: labels must be integers", a.labels.display())))?;
    // The JIT computes the evaluator's bits, faster.
    let run = |g: &qc_ir::Graph| -> Result<Tensor, QcError> {
        let compiled = CompiledModel::compile(g).map_err(|e| QcError::Input(format!("{e}")))?;
        qc::exec::run_batch_with(g, &x, a.batch, |xi| compiled.run(&[xi]).map(|mut v| v.remove(0)).map_err(|e| e.to_string()))
            .map_err(|e| QcError::Input(format!("{}: {e}", a.input.display())))
    };
    let y = run(&model.graph)?;
    let pred = qc::exec::argmax_rows(&y);
    if pred.len() != labels.len() {
        return Err(QcError::Input(format!("{} samples but {} labels", pred.len(), labels.len())));
    }
    let correct = pred.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
    let n = labels.len();
    let percent = |k: usize| 100.0 * k as f64 / n as f64;
    let reference = match &a.reference {
        Some(r) => {
            let ry = run(&load_model(r, None)?.graph)?;
            let rp = qc::exec::argmax_rows(&ry);
            let same = pred.iter().zip(&rp).filter(|(a, b)| a == b).count();
            let rc = rp.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
            Some((r, rc, same, qc::exec::sqnr_db(&ry, &y)))
        }
        None => None,
    };
    if json {
        super::say_json(&serde_json::json!({
            "model": a.model.display().to_string(),
            "samples": n,
            "correct": correct,
            "accuracy_percent": percent(correct),
            "reference": reference.map(|(r, rc, same, sqnr)| serde_json::json!({
                "model": r.display().to_string(),
                "correct": rc,
                "accuracy_percent": percent(rc),
                "top1_agreement_percent": percent(same),
                "output_sqnr_db": sqnr,
            })),
        }));
        return Ok(());
    }
    say!("{}: accuracy {:.2} % ({correct}/{n}, {} errors)", a.model.display(), percent(correct), n - correct);
    if let Some((r, rc, same, sqnr)) = reference {
        say!("{}: accuracy {:.2} % ({rc}/{n})", r.display(), percent(rc));
        say!("top-1 agreement {:.2} % ({same}/{n})", percent(same));
        say!("output SQNR against the reference {sqnr:.2} dB");
    }
    Ok(())
}

/// The CPU's model name (`/proc/cpuinfo`), for benchmark output.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".into())
}
