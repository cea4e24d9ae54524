//! `CompiledModel` (the JIT) against the reference evaluator on the corpus: equal outputs, bit for
//! bit; one model run from four threads at once; wrong inputs rejected.

use qc::io::read_tensor;
use qc::onnx::{ImportOptions, import_file};
use qc_codegen::CompiledModel;
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

#[test]
fn wrong_inputs_are_errors() {
    let g = compiled("digits_mlp_fp32", "int8");
    let model = CompiledModel::compile(&g).unwrap();
    let bad = Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 1, 8, 7])));
    assert!(model.run(&[bad]).unwrap_err().0.contains("must be tensor<?x1x8x8xf32>"));
    let ints = Tensor::I64(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 1, 8, 8])));
    assert!(model.run(&[ints]).is_err());
    assert!(model.run(&[]).unwrap_err().0.contains("takes 1 inputs, got 0"));
    let mut nan = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 1, 8, 8]));
    nan[[0, 0, 3, 3]] = f32::NAN;
    assert!(model.run(&[Tensor::F32(nan)]).unwrap_err().0.contains("holds NaN"));
}
