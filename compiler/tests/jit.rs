//! `CompiledModel` (the JIT) against the reference evaluator on the corpus (int8, QDQ and
//! dynamically quantized models): equal outputs, bit for bit; one model run from four threads at once; every corpus model run from many threads for a
//! bounded time (`QC_STRESS_SECONDS`, default 2), each output equal to the single-threaded run's;
//! wrong inputs rejected.

use qc::io::read_tensor;
use qc::onnx::{ImportOptions, import_file};
use qc_codegen::{CodegenError, CompiledModel};
use qc_ir::eval::evaluate;
use qc_ir::{Graph, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus")
}

fn compiled(model: &str, pipeline: &str) -> Graph {
    let mut g = import_file(&corpus().join(format!("models/{model}.onnx")), &ImportOptions::default()).unwrap();
    let calib = Arc::new(read_tensor(&corpus().join("data/digits_calib_x.npy")).unwrap());
    let opts = qc_passes::PipelineOptions {
        check_weights: true,
        pass_options: qc_passes::PassOptions { calibration: Some(calib), ..Default::default() },
        ..Default::default()
    };
    qc_passes::run_pipeline(&mut g, &qc_passes::pipeline(pipeline).unwrap(), &opts, &mut std::io::sink()).unwrap();
    g
}

fn cases() -> Vec<(String, Graph)> {
    let mut v: Vec<(String, Graph)> = ["digits_cnn", "digits_resdw", "digits_mlp", "digits_mlpmm"]
        .iter()
        .map(|m| (format!("{m} int8"), compiled(&format!("{m}_fp32"), "int8")))
        .collect();
    for m in ["digits_cnn_qdq_pre_u8s8_minmax", "digits_resdw_qdq_pre_s8s8_minmax", "digits_mlp_qdq_pre_s8s8_entropy2048"] {
        v.push((m.to_string(), compiled(m, "qdq")));
    }
    // Dynamic quantization: matmul_integer and conv_integer run as i32-output kernels.
    for m in ["digits_cnn", "digits_resdw", "digits_mlp"] {
        v.push((format!("{m} dynamic"), compiled(&format!("{m}_fp32"), "dynamic")));
    }
    v
}

#[test]
fn jit_equals_the_evaluator_on_the_corpus() {
    let x = read_tensor(&corpus().join("data/digits_test_x.npy")).unwrap();
    for (name, g) in cases() {
        let model = CompiledModel::compile(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(model.kernel_count() >= 2, "{name}: {} kernels", model.kernel_count());
        let got = model.run(std::slice::from_ref(&x)).unwrap().remove(0);
        let want = evaluate(&g, std::slice::from_ref(&x)).unwrap().remove(0);
        assert_eq!(got, want, "{name}");
        println!("{name}: {} JIT kernels, 540 outputs equal the evaluator's", model.kernel_count());
    }
}

#[test]
fn one_model_runs_from_four_threads() {
    let g = compiled("digits_cnn_fp32", "int8");
    let model = Arc::new(CompiledModel::compile(&g).unwrap());
    let x = read_tensor(&corpus().join("data/digits_test_x.npy")).unwrap();
    let xs = x.as_f32().unwrap();
    let batches: Vec<Tensor> = (0..4)
        .map(|i| Tensor::F32(xs.slice_axis(ndarray::Axis(0), ndarray::Slice::from(i * 100..i * 100 + 100)).to_owned()))
        .collect();
    let single: Vec<Tensor> = batches.iter().map(|b| model.run(std::slice::from_ref(b)).unwrap().remove(0)).collect();
    let handles: Vec<_> = batches
        .into_iter()
        .map(|b| {
            let m = model.clone();
            std::thread::spawn(move || (0..20).map(|_| m.run(std::slice::from_ref(&b)).unwrap().remove(0)).collect::<Vec<_>>())
        })
        .collect();
    for (h, want) in handles.into_iter().zip(&single) {
        for got in h.join().unwrap() {
            assert_eq!(&got, want);
        }
    }
}

/// Eight threads per model, three models, for a bounded time: each thread runs its model on
/// batches of varying size (1 to 64 images, so that thread-owned scratch grows and shrinks) and
/// compares every output to the single-threaded run of the same batch.
#[test]
fn many_threads_for_a_bounded_time_agree_with_one() {
    let seconds: f64 = std::env::var("QC_STRESS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let x = read_tensor(&corpus().join("data/digits_test_x.npy")).unwrap();
    let xs = x.as_f32().unwrap();
    let sizes = [1usize, 3, 17, 64, 2];
    let batches: Arc<Vec<Tensor>> = Arc::new(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Tensor::F32(xs.slice_axis(ndarray::Axis(0), ndarray::Slice::from(i * 70..i * 70 + n)).to_owned()))
            .collect(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let mut handles = Vec::new();
    for m in ["digits_cnn_fp32", "digits_resdw_fp32", "digits_mlp_fp32"] {
        let model = Arc::new(CompiledModel::compile(&compiled(m, "int8")).unwrap());
        let single: Arc<Vec<Tensor>> =
            Arc::new(batches.iter().map(|b| model.run(std::slice::from_ref(b)).unwrap().remove(0)).collect());
        for t in 0..8 {
            let (model, single, batches) = (model.clone(), single.clone(), batches.clone());
            handles.push(std::thread::spawn(move || {
                let mut runs = 0usize;
                while std::time::Instant::now() < deadline || runs < batches.len() {
                    let i = (t + runs) % batches.len();
                    let got = model.run(std::slice::from_ref(&batches[i])).unwrap().remove(0);
                    assert_eq!(got, single[i], "{m}, thread {t}, run {runs}");
                    runs += 1;
                }
                runs
            }));
        }
    }
    let runs: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    println!("{runs} runs on 24 threads in {seconds} s, all equal to the single-threaded outputs");
}

#[test]
fn wrong_inputs_are_errors() {
    let g = compiled("digits_mlp_fp32", "int8");
    let model = CompiledModel::compile(&g).unwrap();
    let bad = Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 1, 8, 7])));
    let input_error = |e: CodegenError| match e {
        CodegenError::Input { name, message } => {
            assert_eq!(name, "%input");
            message
        }
        other => panic!("not an input error: {other:?}"),
    };
    assert!(input_error(model.run(&[bad]).unwrap_err()).contains("must be tensor<?x1x8x8xf32>"));
    let ints = Tensor::I64(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 1, 8, 8])));
    assert!(input_error(model.run(&[ints]).unwrap_err()).contains("must be tensor<?x1x8x8xf32>"));
    assert_eq!(model.run(&[]).unwrap_err(), CodegenError::InputCount { expected: 1, got: 0 });
    let mut nan = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 1, 8, 8]));
    nan[[0, 0, 3, 3]] = f32::NAN;
    assert!(input_error(model.run(&[Tensor::F32(nan)]).unwrap_err()).contains("holds NaN"));
}

/// `threads` splits a batch over the model's workers: every corpus model whose images are
/// independent gives the one-thread outputs, bit for bit, for 2 and 3 threads and batches of
/// 1, 2, 5 and 540 (parts of unequal size, fewer images than threads); a dynamically quantized
/// model (one range for the whole batch) is refused with the reason, and so are 0 threads.
#[test]
fn a_batch_split_over_threads_gives_the_one_thread_outputs() {
    let x = read_tensor(&corpus().join("data/digits_test_x.npy")).unwrap();
    for (name, g) in cases() {
        let one = CompiledModel::compile(&g).unwrap();
        for threads in [2, 3] {
            let options = qc_codegen::CodegenOptions { threads, ..qc_codegen::CodegenOptions::host() };
            let many = match CompiledModel::compile_with(&g, &options) {
                Ok(m) => m,
                Err(e) => {
                    assert!(name.ends_with("dynamic"), "{name}: {e}");
                    assert!(e.to_string().contains("dynamic quantization"), "{name}: {e}");
                    continue;
                }
            };
            assert!(!name.ends_with("dynamic"), "{name} took {threads} threads");
            for n in [1, 2, 5, 540] {
                let xs = x.rows(0, n).unwrap();
                let want = one.run(std::slice::from_ref(&xs)).unwrap();
                assert_eq!(many.run(std::slice::from_ref(&xs)).unwrap(), want, "{name}, {threads} threads, batch {n}");
            }
        }
        let zero = qc_codegen::CodegenOptions { threads: 0, ..qc_codegen::CodegenOptions::host() };
        assert!(CompiledModel::compile_with(&g, &zero).is_err(), "{name}: 0 threads");
    }
}
