//! `qc export` output runs in ONNX Runtime and agrees with qc's evaluator. Skipped, with the
//! reason printed, when python3 with onnxruntime and numpy is not installed (.ci/run installs it).
//!
//! ONNX Runtime runs each model twice: with its graph optimizations off, so that every QDQ node
//! computes as the ONNX spec defines it (the check of what the exported graph means), and with
//! its defaults, which fuse Q/DQ into its integer kernels. On a CPU without VNNI its AVX2 u8×s8
//! kernels (`vpmaddubsw`) saturate pairs of products, so there a run that goes through them (the
//! default one, and any run of a dynamically quantized model, whose `MatMulInteger` is one) has
//! its agreement printed, not required — unless the model has 7-bit weights (`--weight-bits 7`,
//! in [−64, 64]), with which no pair can saturate: that is the export for such CPUs, and there
//! agreement is required on every CPU.

use qc::exec::{argmax_rows, run_batch};
use qc::io::{read_tensor, write_atomic};
use qc::onnx::{ImportOptions, import_file};
use std::path::{Path, PathBuf};
use std::process::Command;

const RUN_ORT: &str = r#"
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[2]).astype(np.float32)
o = ort.SessionOptions()
if sys.argv[4] == "none":
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
np.save(sys.argv[3], np.concatenate([s.run(None, {name: x[i:i+1]})[0] for i in range(len(x))]))
"#;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus")
}

fn onnxruntime_available() -> Result<(), String> {
    match Command::new("python3").args(["-c", "import onnxruntime, numpy"]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("import failed").to_string()),
        Err(e) => Err(format!("python3: {e}")),
    }
}

#[test]
fn exported_models_run_in_onnx_runtime_and_agree() {
    if let Err(why) = onnxruntime_available() {
        println!("skipped: onnxruntime is not installed for python3 ({why}); `pip install onnxruntime numpy` enables this test");
        return;
    }
    let dir = std::env::temp_dir().join(format!("qc-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let x_path = corpus().join("data/digits_test_x.npy");
    let x = read_tensor(&x_path).unwrap();
    let calib = std::sync::Arc::new(read_tensor(&corpus().join("data/digits_calib_x.npy")).unwrap());
    let cases = [
        ("digits_cnn", "default", 8),
        ("digits_cnn", "int8", 8),
        ("digits_resdw", "int8", 8),
        ("digits_mlp", "int8", 8),
        ("digits_mlpmm", "dynamic", 8),
        ("digits_cnn", "int8", 7),
        ("digits_resdw", "int8", 7),
        ("digits_mlp", "int8", 7),
    ];
    for (base, pipeline, weight_bits) in cases {
        let mut g = import_file(&corpus().join(format!("models/{base}_fp32.onnx")), &ImportOptions::default()).unwrap();
        let opts = qc_passes::PipelineOptions {
            check_weights: true,
            pass_options: qc_passes::PassOptions { calibration: Some(calib.clone()), weight_bits, ..Default::default() },
            ..Default::default()
        };
        qc_passes::run_pipeline(&mut g, &qc_passes::pipeline(pipeline).unwrap(), &opts, &mut std::io::sink()).unwrap();
        let onnx = qc::onnx::export::export(&g).unwrap();
        let name = format!("{base} ({pipeline}, {weight_bits}-bit weights)");
        let path = dir.join(format!("{base}_{pipeline}_w{weight_bits}.onnx"));
        write_atomic(&path, &prost::Message::encode_to_vec(&onnx)).unwrap();
        let ours = argmax_rows(&run_batch(&g, &x, 1).unwrap());
        // Its integer kernels saturate without VNNI (see the top of this file).
        let vnni = qc_codegen::Isa::host().vnni();
        for level in ["none", "default"] {
            let y_path = dir.join(format!("{base}_{pipeline}_w{weight_bits}_{level}.npy"));
            let o =
                Command::new("python3").args(["-c", RUN_ORT]).arg(&path).arg(&x_path).arg(&y_path).arg(level).output().unwrap();
            assert!(o.status.success(), "{name}: onnxruntime failed:\n{}", String::from_utf8_lossy(&o.stderr));
            let ort = argmax_rows(&read_tensor(&y_path).unwrap());
            let agree = ours.iter().zip(&ort).filter(|(a, b)| a == b).count() as f64 / ours.len() as f64;
            println!("{name}: arg-max agreement with ONNX Runtime (optimizations {level}) {:.2} %", 100.0 * agree);
            let integer_kernels = pipeline != "default" && (level == "default" || pipeline == "dynamic");
            if vnni || !integer_kernels || weight_bits == 7 {
                assert!(agree >= 0.995, "{name}, optimizations {level}: agreement {agree}");
            } else {
                println!("  (not required: ONNX Runtime's integer kernels saturate on this CPU without VNNI)");
            }
        }
    }
}
