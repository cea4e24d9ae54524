//! The corpus (`../shared/corpus`): every ONNX model imports, its QIR is canonical and
//! round-trips, and the reference evaluator reproduces ONNX Runtime's outputs.

use qc::io::read_tensor;
use qc::onnx::{ImportOptions, import_file};
use qc_ir::eval::evaluate;
use qc_ir::text::{parse, print};
use qc_ir::{ElemType, Graph, OpKind, Tensor};
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus")
}

fn models(filter: impl Fn(&str) -> bool) -> Vec<(String, PathBuf)> {
    let dir = corpus().join("models");
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus is expected at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .filter(|(n, _)| filter(n))
        .collect();
    v.sort();
    v
}

fn inputs16() -> Tensor {
    read_tensor(&corpus().join("goldens/digits_inputs16.npy")).unwrap()
}

fn golden(name: &str) -> Vec<f32> {
    read_tensor(&corpus().join(format!("goldens/{name}.npy"))).unwrap().as_f32().unwrap().iter().copied().collect()
}

fn import(path: &Path) -> Graph {
    import_file(path, &ImportOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(g: &Graph, x: &Tensor) -> Vec<f32> {
    evaluate(g, std::slice::from_ref(x)).unwrap().remove(0).as_f32().unwrap().iter().copied().collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b })
}

#[test]
fn imported_text_is_canonical_and_round_trips() {
    for (name, path) in models(|n| !n.contains("_dyn_")) {
        let g = import(&path);
        let text = print(&g);
        let again = parse(&text).unwrap_or_else(|d| panic!("{name}: {d:?}"));
        assert!(g.same_as(&again), "{name}: re-parsed graph differs");
        assert_eq!(print(&again), text, "{name}");
    }
}

#[test]
fn fp32_models_reproduce_onnx_runtime() {
    let x = inputs16();
    let fp32 = models(|n| n.ends_with("_fp32") || n.ends_with("_fp32pre"));
    assert_eq!(fp32.len(), 6);
    for (name, path) in fp32 {
        let g = import(&path);
        let (got, want) = (run(&g, &x), golden(&name));
        assert_eq!(got.len(), want.len(), "{name}");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
        println!("{name}: max error {worst:e}");
        assert!(worst <= 1e-5, "{name}: max error {worst:e}");
    }
}

/// The scale and zero point of the model's output, from the dequantize that produces it.
fn output_params(g: &Graph) -> Option<(f32, i32)> {
    let out = g.outputs()[0];
    let p = g.producer_of_kind(out, OpKind::Dequantize)?;
    match &g.ty(g.node(p).operands[0]).elem {
        ElemType::Quant(q) if q.axis.is_none() => Some((q.scales[0], q.zero_points[0])),
        _ => None,
    }
}

#[test]
fn qdq_models_match_onnx_runtime_within_one_step() {
    let x = inputs16();
    let qdq = models(|n| n.contains("_qdq_"));
    assert_eq!(qdq.len(), 26);
    for (name, path) in qdq {
        let g = import(&path);
        let (got, want) = (run(&g, &x), golden(&name));
        let (s, zp) = output_params(&g).unwrap_or_else(|| panic!("{name}: output is not a per-tensor dequantize"));
        let q = |v: f32| (v / s).round_ties_even() as i64 + zp as i64;
        let dq = got.iter().zip(&want).map(|(a, b)| (q(*a) - q(*b)).abs()).max().unwrap();
        let mut argmax_same = 0;
        for (a, b) in got.chunks(10).zip(want.chunks(10)) {
            argmax_same += (argmax(a) == argmax(b)) as usize;
        }
        println!("{name}: max |dq| = {dq}, arg-max agrees on {argmax_same}/16");
        assert!(dq <= 1, "{name}: max |dq| = {dq}");
        assert_eq!(argmax_same, 16, "{name}");
    }
}

#[test]
fn dynamic_models_match_onnx_runtime_at_batch_1() {
    let x = inputs16();
    let xs = x.as_f32().unwrap();
    let dynamic = models(|n| n.contains("_dyn_"));
    assert_eq!(dynamic.len(), 4);
    for (name, path) in dynamic {
        let g = import(&path);
        let want = golden(&name);
        let mut worst = 0f32;
        for i in 0..16 {
            let xi = Tensor::F32(xs.slice_axis(ndarray::Axis(0), ndarray::Slice::from(i..i + 1)).to_owned());
            let got = run(&g, &xi);
            let w = &want[i * 10..(i + 1) * 10];
            assert_eq!(argmax(&got), argmax(w), "{name}, sample {i}");
            worst = got.iter().zip(w).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(worst, f32::max);
        }
        println!("{name}: max error {worst:e}");
        assert!(worst <= 1e-5, "{name}: max error {worst:e}");
    }
}

fn compile(g: &mut Graph, pipeline: &str, mode: qc_ir::requant::RequantMode) {
    let opts = qc_passes::PipelineOptions {
        check_weights: true,
        pass_options: qc_passes::PassOptions { requant: mode, ..Default::default() },
        ..Default::default()
    };
    qc_passes::run_pipeline(g, &qc_passes::pipeline(pipeline).unwrap(), &opts, &mut std::io::sink()).unwrap();
}

/// Largest |Δq| between two output batches, and whether arg-max agrees on every row (a row
/// whose reference top two are within one step may differ).
fn agreement(got: &[f32], want: &[f32], s: f32, zp: i32) -> (i64, bool) {
    let q = |v: f32| (v / s).round_ties_even() as i64 + zp as i64;
    let dq = got.iter().zip(want).map(|(a, b)| (q(*a) - q(*b)).abs()).max().unwrap();
    let ok = got.chunks(10).zip(want.chunks(10)).all(|(a, b)| {
        let mut sorted: Vec<i64> = b.iter().map(|&v| q(v)).collect();
        sorted.sort_unstable();
        argmax(a) == argmax(b) || sorted[9] - sorted[8] <= 1
    });
    (dq, ok)
}

#[test]
fn onnx_runtime_qdq_models_compile_to_integer_ops_that_match_it() {
    let x = inputs16();
    for (name, path) in models(|n| n.contains("_qdq_pre_")) {
        let mut g = import(&path);
        let (s, zp) = output_params(&g).unwrap();
        compile(&mut g, "qdq", qc_ir::requant::RequantMode::F32);
        // Only the model's input quantize and output dequantize are left; everything else is integer.
        let qdq = g.node_ids().filter(|&n| matches!(g.node(n).kind, OpKind::Quantize | OpKind::Dequantize)).count();
        let f32_ops: Vec<String> = g
            .node_ids()
            .filter(|&n| {
                let k = g.node(n).kind;
                !matches!(k, OpKind::Const | OpKind::Quantize | OpKind::Dequantize) && g.ty(g.node(n).results[0]).elem.is_f32()
            })
            .map(|n| g.node(n).kind.to_string())
            .collect();
        assert_eq!(qdq, 2, "{name}: Q/DQ left:\n{}", print(&g));
        assert!(f32_ops.is_empty(), "{name}: f32 ops left: {f32_ops:?}");
        let (got, want) = (run(&g, &x), golden(&name));
        let (dq, argmax_ok) = agreement(&got, &want, s, zp);
        println!("{name}: integer ops, max |dq| = {dq}");
        if name.starts_with("digits_resdw") {
            assert!(dq <= 2 && argmax_ok, "{name}: max |dq| = {dq}");
        } else {
            assert_eq!(dq, 0, "{name}");
        }
        // q31 requantization stays within a step of ONNX Runtime's f32 formula.
        let mut g31 = import(&path);
        compile(&mut g31, "qdq", qc_ir::requant::RequantMode::Q31);
        let (dq31, ok31) = agreement(&run(&g31, &x), &want, s, zp);
        println!("{name}: q31, max |dq| = {dq31}");
        assert!(dq31 <= 2 && ok31, "{name}: q31 max |dq| = {dq31}");
    }
}

/// ONNX Runtime's results for every model file, from `results.json`.
fn ort_results() -> serde_json::Value {
    let text = std::fs::read_to_string(corpus().join("results.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["models"].clone()
}

fn labels() -> Vec<i64> {
    read_tensor(&corpus().join("data/digits_test_y.npy")).unwrap().to_i64_vec().unwrap()
}

#[test]
fn post_training_quantization_matches_or_beats_onnx_runtime() {
    let ort = ort_results();
    let test_x = read_tensor(&corpus().join("data/digits_test_x.npy")).unwrap();
    let calib = std::sync::Arc::new(read_tensor(&corpus().join("data/digits_calib_x.npy")).unwrap());
    let y = labels();
    let x16 = inputs16();
    for base in ["digits_cnn", "digits_resdw", "digits_mlp", "digits_mlpmm"] {
        let fp32 = import(&corpus().join(format!("models/{base}_fp32.onnx")));
        // The method is chosen on the calibration samples only.
        let opts = qc_passes::PipelineOptions {
            check_weights: true,
            pass_options: qc_passes::PassOptions { calibration: Some(calib.clone()), ..Default::default() },
            ..Default::default()
        };
        let passes = qc_passes::pipeline("int8").unwrap();
        let (method, _) = qc::exec::choose_calibration(&fp32, &passes, &opts, &calib).unwrap();
        let mut int8 = fp32.clone();
        let mut o = opts.clone();
        o.pass_options.calib_method = method;
        qc_passes::run_pipeline(&mut int8, &passes, &o, &mut std::io::sink()).unwrap();
        let report = qc::report::fusion_report(&int8);
        assert!(!report.has_findings(), "{base}: {}", report.summary());

        let pred = qc::exec::argmax_rows(&qc::exec::run_batch(&int8, &test_x, 64).unwrap());
        let ref_pred = qc::exec::argmax_rows(&qc::exec::run_batch(&fp32, &test_x, 64).unwrap());
        let errors = pred.iter().zip(&y).filter(|(p, l)| **p as i64 != **l).count();
        let agree = pred.iter().zip(&ref_pred).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
        let (best_name, best_acc) = ort
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{base}_")) && (k.contains("_qdq_") || k.contains("_dyn_")))
            .map(|(k, v)| (k.clone(), v["test_acc_b1"].as_f64().unwrap()))
            .fold((String::new(), 0.0), |b, c| if c.1 > b.1 { c } else { b });
        let ort_errors = ((1.0 - best_acc) * y.len() as f64).round() as usize;
        // SQNR of the logits against fp32 on the 16 golden inputs, ours and ONNX Runtime's best.
        let fp32_golden =
            Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[16, 10]), golden(&format!("{base}_fp32"))).unwrap());
        let ours = qc::exec::sqnr_db(&fp32_golden, &qc::exec::run_batch(&int8, &x16, 16).unwrap());
        let ort_sqnr = ort
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| {
                k.starts_with(&format!("{base}_")) && k.contains("_qdq_") && corpus().join(format!("goldens/{k}.npy")).exists()
            })
            .map(|k| {
                let g = Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[16, 10]), golden(k)).unwrap());
                qc::exec::sqnr_db(&fp32_golden, &g)
            })
            .fold(f64::NEG_INFINITY, f64::max);
        println!(
            "{base}: {method}: {errors} test errors (ONNX Runtime's best, {best_name}: {ort_errors}), agreement {:.2} %, SQNR {ours:.2} dB (ONNX Runtime's best {ort_sqnr:.2} dB)",
            100.0 * agree
        );
        // No more errors than the better of ONNX Runtime's best int8 model and fp32, plus one.
        let fp32_errors = pred.len() - ref_pred.iter().zip(&y).filter(|(p, l)| **p as i64 == **l).count();
        assert!(
            errors <= ort_errors.min(fp32_errors) + 1,
            "{base}: {errors} errors vs {ort_errors} (ONNX Runtime), {fp32_errors} (fp32)"
        );
        assert!(agree >= 0.996, "{base}: agreement {agree}");
        assert!(ours >= ort_sqnr - 1.0, "{base}: SQNR {ours:.2} dB vs {ort_sqnr:.2} dB");
    }
}

/// Test-set errors of `g` (through the JIT).
fn test_errors(g: &Graph, x: &Tensor, y: &[i64]) -> usize {
    let m = qc_codegen::CompiledModel::compile(g).unwrap();
    let out = qc::exec::run_batch_with(g, x, 64, |xi| m.run(&[xi]).map(|mut v| v.remove(0)).map_err(|e| e.to_string())).unwrap();
    qc::exec::argmax_rows(&out).iter().zip(y).filter(|(p, l)| **p as i64 != **l).count()
}

/// `fp32` through the `int8` pipeline on the calibration samples, with `prune-channels` (before
/// `fold-bn`, as `--prune-ratio` puts it) when `prune` is given.
fn int8_pruned(fp32: &Graph, calib: &std::sync::Arc<Tensor>, prune: Option<qc_passes::PruneOptions>) -> Graph {
    let mut passes = qc_passes::pipeline("int8").unwrap();
    if prune.is_some() {
        let at = passes.iter().position(|p| p == "fold-bn").unwrap();
        passes.insert(at, "prune-channels".into());
    }
    let mut g = fp32.clone();
    let opts = qc_passes::PipelineOptions {
        check_weights: true,
        pass_options: qc_passes::PassOptions {
            calibration: Some(calib.clone()),
            prune: prune.unwrap_or_default(),
            ..Default::default()
        },
        ..Default::default()
    };
    qc_passes::run_pipeline(&mut g, &passes, &opts, &mut std::io::sink()).unwrap();
    g
}

/// The test inputs, the calibration samples, the test labels and `base`'s fp32 model.
fn digits(base: &str) -> (Tensor, std::sync::Arc<Tensor>, Vec<i64>, Graph) {
    let test_x = read_tensor(&corpus().join("data/digits_test_x.npy")).unwrap();
    let calib = std::sync::Arc::new(read_tensor(&corpus().join("data/digits_calib_x.npy")).unwrap());
    (test_x, calib, labels(), import(&corpus().join(format!("models/{base}_fp32.onnx"))))
}

fn total_macs(g: &Graph) -> u64 {
    qc_ir::cost::layer_costs(g).iter().map(|c| c.macs).sum()
}

#[test]
fn pruning_half_the_channels_then_int8_keeps_digits_cnn_accurate() {
    let (test_x, calib, y, fp32) = digits("digits_cnn");
    let unpruned = int8_pruned(&fp32, &calib, None);
    let prune = qc_passes::PruneOptions {
        ratio: Some(0.5),
        criterion: qc_passes::PruneCriterion::Lsq,
        reconstruct: true,
        ..Default::default()
    };
    let pruned = int8_pruned(&fp32, &calib, Some(prune.clone()));
    let naive = int8_pruned(&fp32, &calib, Some(qc_passes::PruneOptions { reconstruct: false, ..prune }));
    let (e0, e1, e2) = (test_errors(&unpruned, &test_x, &y), test_errors(&pruned, &test_x, &y), test_errors(&naive, &test_x, &y));
    println!(
        "digits_cnn int8: {e0} test errors unpruned, {e1} with half the channels pruned and reconstructed, {e2} pruned without reconstruction; MACs {} → {}",
        total_macs(&unpruned),
        total_macs(&pruned)
    );
    // Every conv keeps half its channels; ≤ 1 point of the 540 test samples (5 errors) lost.
    let channels: Vec<u64> = qc_ir::cost::layer_costs(&pruned).iter().map(|c| c.channels).collect();
    assert_eq!(channels, [8, 16, 16, 32, 10]);
    assert!(e1 <= e0 + 5, "{e1} errors pruned vs {e0}");
    assert!(e2 > e1, "reconstruction should help: {e2} vs {e1}");
}

/// digits_resdw: both residual streams halved (every conv at 50 %), and only the second stream
/// cut (to 12 of 32 channels), each reconstructed and not. The numbers the README quotes.
#[test]
fn pruning_digits_resdw_with_and_without_reconstruction() {
    let (test_x, calib, y, fp32) = digits("digits_resdw");
    let unpruned = int8_pruned(&fp32, &calib, None);
    let e0 = test_errors(&unpruned, &test_x, &y);
    let lsq = |reconstruct: bool| qc_passes::PruneOptions {
        criterion: qc_passes::PruneCriterion::Lsq,
        reconstruct,
        ..Default::default()
    };
    let both = |r| qc_passes::PruneOptions { ratio: Some(0.5), ..lsq(r) };
    let second = |r| qc_passes::PruneOptions { layers: vec![("node_Conv_126".into(), 0.625)], ..lsq(r) };
    let mut errors = Vec::new();
    for (what, fit, raw) in
        [("both streams at 50 %", both(true), both(false)), ("the second stream at 62.5 %", second(true), second(false))]
    {
        let (fit, raw) = (int8_pruned(&fp32, &calib, Some(fit)), int8_pruned(&fp32, &calib, Some(raw)));
        let (e1, e2) = (test_errors(&fit, &test_x, &y), test_errors(&raw, &test_x, &y));
        println!(
            "digits_resdw int8, {what}: {e1} test errors reconstructed, {e2} not (unpruned {e0}); MACs {} → {}",
            total_macs(&unpruned),
            total_macs(&fit)
        );
        assert!(e1 < e2, "{what}: reconstruction should help: {e1} vs {e2}");
        errors.push(e1);
    }
    assert!(errors[1] <= e0 + 12, "a regression guard: {errors:?} vs {e0}");
}

/// The goal on digits_resdw: every conv at 50 % of its channels, then int8, within 1 point
/// (5 of the 540 test samples) of the unpruned int8 model — reached with distillation from the
/// unpruned model after the least-squares reconstruction.
#[test]
fn pruning_half_of_digits_resdw_with_distillation_keeps_it_accurate() {
    let (test_x, calib, y, fp32) = digits("digits_resdw");
    let unpruned = int8_pruned(&fp32, &calib, None);
    let prune = qc_passes::PruneOptions {
        ratio: Some(0.5),
        criterion: qc_passes::PruneCriterion::L2,
        reconstruct: true,
        distill: 8000,
        ..Default::default()
    };
    let pruned = int8_pruned(&fp32, &calib, Some(prune));
    let (e0, e1) = (test_errors(&unpruned, &test_x, &y), test_errors(&pruned, &test_x, &y));
    println!(
        "digits_resdw int8, both streams at 50 %, l2 + reconstruct + distill 8000: {e1} test errors (unpruned {e0}); MACs {} → {}",
        total_macs(&unpruned),
        total_macs(&pruned)
    );
    let channels: Vec<u64> = qc_ir::cost::layer_costs(&pruned).iter().map(|c| c.channels).collect();
    assert_eq!(channels, [8, 8, 8, 16, 16, 16, 16, 16, 10]);
    assert!(e1 <= e0 + 5, "{e1} errors pruned vs {e0}");
}

#[test]
fn deep_compression_makes_digits_cnn_ten_times_smaller() {
    let (test_x, calib, y, fp32) = digits("digits_cnn");
    let fp32_bytes = qc::packed_weights::pack(&fp32.weights).1.iter().map(|p| p.raw_bytes).sum::<usize>();
    // Prune (80 % sparsity, reconstructed), share 16 values per layer, quantize, Huffman-code.
    let mut passes = qc_passes::pipeline("int8").unwrap();
    let at = passes.iter().position(|p| p == "fold-bn").unwrap() + 1;
    passes.insert(at, "sparsify".into());
    passes.insert(at + 1, "cluster-weights".into());
    let opts = qc_passes::PipelineOptions {
        check_weights: true,
        pass_options: qc_passes::PassOptions {
            calibration: Some(calib),
            sparsify: qc_passes::SparsifyOptions { sparsity: Some(0.8), reconstruct: true, ..Default::default() },
            clusters: 16,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut g = fp32.clone();
    qc_passes::run_pipeline(&mut g, &passes, &opts, &mut std::io::sink()).unwrap();
    let needed = qc::model::referenced_weights(&g);
    let mut w = g.weights.clone();
    w.retain(|n| needed.iter().any(|m| m == n));
    let (file, _) = qc::packed_weights::pack(&w);
    let (e0, e1) = (test_errors(&fp32, &test_x, &y), test_errors(&g, &test_x, &y));
    println!(
        "digits_cnn: {fp32_bytes} fp32 weight bytes → {} compressed ({:.2}x); {e0} → {e1} test errors",
        file.len(),
        fp32_bytes as f64 / file.len() as f64
    );
    assert!(file.len() * 10 <= fp32_bytes, "{} vs {fp32_bytes}", file.len());
    // ≤ 1 point of the 540 test samples.
    assert!(e1 <= e0 + 5, "{e1} errors vs {e0}");
}

#[test]
fn analyze_ranks_first_the_layer_whose_fp32_copy_recovers_most() {
    let calib = std::sync::Arc::new(read_tensor(&corpus().join("data/digits_calib_x.npy")).unwrap());
    let fp32 = import(&corpus().join("models/digits_resdw_fp32.onnx"));
    let opts = qc_passes::PipelineOptions {
        check_weights: true,
        pass_options: qc_passes::PassOptions { calibration: Some(calib.clone()), ..Default::default() },
        ..Default::default()
    };
    let a = qc::analyze::analyze(&fp32, None, &opts).unwrap();
    print!("{}", a.summary());
    assert!(a.layers.len() >= 10, "{} layers", a.layers.len());
    // Independently: compile the int8 pipeline keeping each layer in fp32, and measure the output
    // SQNR against fp32 on the same samples.
    let reference = qc::exec::run_batch(&fp32, &calib, 64).unwrap();
    let passes = qc_passes::pipeline("int8").unwrap();
    let measured: Vec<(String, f64)> = a
        .layers
        .iter()
        .map(|l| {
            let mut o = opts.clone();
            o.pass_options.keep_fp32 = vec![l.name.clone()];
            let mut g = fp32.clone();
            qc_passes::run_pipeline(&mut g, &passes, &o, &mut std::io::sink()).unwrap();
            (l.name.clone(), qc::exec::sqnr_db(&reference, &qc::exec::run_batch(&g, &calib, 64).unwrap()))
        })
        .collect();
    let best = measured.iter().map(|m| m.1).fold(f64::NEG_INFINITY, f64::max);
    assert!(measured[0].1 >= best - 1e-9, "top-ranked {:?}, measured {measured:?}", measured[0]);
    // And the analysis's own gains are what compiling measures (its reference has the batch norms
    // folded: within f32 rounding).
    let none = {
        let mut g = fp32.clone();
        qc_passes::run_pipeline(&mut g, &passes, &opts, &mut std::io::sink()).unwrap();
        qc::exec::sqnr_db(&reference, &qc::exec::run_batch(&g, &calib, 64).unwrap())
    };
    for (l, (_, db)) in a.layers.iter().zip(&measured) {
        assert!((l.keep_fp32_db - (db - none)).abs() < 1e-3, "{}: {} vs {}", l.name, l.keep_fp32_db, db - none);
    }
}

/// Output SQNR (dB, test set) of `base`'s int8 model compiled with `extra` passes inserted.
fn int8_sqnr(base: &str, per_tensor: bool, extra: &[(&str, &str)]) -> f64 {
    let test_x = read_tensor(&corpus().join("data/digits_test_x.npy")).unwrap();
    let calib = std::sync::Arc::new(read_tensor(&corpus().join("data/digits_calib_x.npy")).unwrap());
    let fp32 = import(&corpus().join(format!("models/{base}_fp32.onnx")));
    let mut passes = qc_passes::pipeline("int8").unwrap();
    for (pass, after) in extra {
        let at = passes.iter().position(|p| p == after).unwrap() + 1;
        passes.insert(at, pass.to_string());
    }
    let opts = qc_passes::PipelineOptions {
        check_weights: true,
        pass_options: qc_passes::PassOptions { calibration: Some(calib), per_tensor_weights: per_tensor, ..Default::default() },
        ..Default::default()
    };
    let mut g = fp32.clone();
    qc_passes::run_pipeline(&mut g, &passes, &opts, &mut std::io::sink()).unwrap();
    qc::exec::sqnr_db(&qc::exec::run_batch(&fp32, &test_x, 64).unwrap(), &qc::exec::run_batch(&g, &test_x, 64).unwrap())
}

#[test]
fn bias_correction_and_equalization_gain_sqnr() {
    let mut report = String::new();
    let (mut bc_gain, mut eq_gain) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for base in ["digits_cnn", "digits_resdw", "digits_mlp"] {
        let plain = int8_sqnr(base, false, &[]);
        let bc = int8_sqnr(base, false, &[("bias-correction", "insert-qdq")]);
        let plain_pt = int8_sqnr(base, true, &[]);
        let eq_pt = int8_sqnr(base, true, &[("equalize", "fuse-activation")]);
        report += &format!(
            "{base}: per-channel {plain:.2} dB, with bias-correction {bc:.2} dB ({:+.2}); per-tensor {plain_pt:.2} dB, with equalize {eq_pt:.2} dB ({:+.2})\n",
            bc - plain,
            eq_pt - plain_pt
        );
        bc_gain = bc_gain.max(bc - plain);
        eq_gain = eq_gain.max(eq_pt - plain_pt);
    }
    print!("{report}");
    assert!(bc_gain > 0.5 && eq_gain > 0.5, "{report}");
    insta::assert_snapshot!("bias_correction_and_equalization", report);
}

/// `--weight-bits 7` (weights in [-64, 64], ONNX Runtime's `reduce_range`): on the AVX2 level
/// every GEMM and convolution of the digits models takes the exact `vpmaddubsw` path and equals
/// the evaluator; its accuracy cost against 8-bit weights is printed and bounded.
#[test]
fn seven_bit_weights_take_the_maddubs_path_at_a_small_accuracy_cost() {
    let (test_x, calib, y, _) = digits("digits_cnn");
    assert!(test_x.shape()[0] >= 64);
    let mut report = String::new();
    for base in ["digits_cnn", "digits_resdw", "digits_mlp"] {
        let fp32 = import(&corpus().join(format!("models/{base}_fp32.onnx")));
        let reference = qc::exec::run_batch(&fp32, &test_x, 64).unwrap();
        let quantized = |bits: u8| {
            let mut g = fp32.clone();
            let opts = qc_passes::PipelineOptions {
                check_weights: true,
                pass_options: qc_passes::PassOptions {
                    calibration: Some(calib.clone()),
                    weight_bits: bits,
                    ..Default::default()
                },
                ..Default::default()
            };
            qc_passes::run_pipeline(&mut g, &qc_passes::pipeline("int8").unwrap(), &opts, &mut std::io::sink()).unwrap();
            g
        };
        let (g8, g7) = (quantized(8), quantized(7));
        let (e8, e7) = (test_errors(&g8, &test_x, &y), test_errors(&g7, &test_x, &y));
        let s8 = qc::exec::sqnr_db(&reference, &qc::exec::run_batch(&g8, &test_x, 64).unwrap());
        let s7 = qc::exec::sqnr_db(&reference, &qc::exec::run_batch(&g7, &test_x, 64).unwrap());
        report += &format!(
            "{base}: 8-bit weights {e8} test errors, SQNR {s8:.2} dB; 7-bit weights {e7} test errors, SQNR {s7:.2} dB\n"
        );
        assert!(e7 <= e8 + y.len() / 200, "{base}: {e7} errors with 7-bit weights, {e8} with 8-bit");
        assert!(s7 >= s8 - 4.0, "{base}: SQNR {s7:.2} dB with 7-bit weights, {s8:.2} dB with 8-bit");
        if qc_codegen::Isa::host_levels().contains(&qc_codegen::Isa::Avx2) {
            let options = qc_codegen::CodegenOptions { isa: qc_codegen::Isa::Avx2, ..qc_codegen::CodegenOptions::host() };
            let m = qc_codegen::CompiledModel::compile_with(&g7, &options).unwrap();
            let gemms: Vec<String> = m.kernels().into_iter().map(|(_, how)| how).filter(|how| how.contains("gemm")).collect();
            assert!(!gemms.is_empty() && gemms.iter().all(|how| how.ends_with("vpmaddubsw")), "{base}: {gemms:?}");
            let a = test_x.as_f32().unwrap();
            let x = Tensor::F32(a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..64)).to_owned());
            let got = m.run(std::slice::from_ref(&x)).unwrap().remove(0);
            assert_eq!(got, evaluate(&g7, &[x]).unwrap().remove(0), "{base}: the JIT on AVX2 equals the evaluator");
        }
    }
    print!("{report}");
}
