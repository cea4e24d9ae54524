//! The `qc` command line, end to end: what users run, and what bad input gets.

use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn qc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qc")).args(args).current_dir(root()).env("RUST_BACKTRACE", "0").output().expect("qc runs")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qc-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Asserts a bad-input failure: exit code 1 (never a panic's 101) and a message containing `want`.
fn fails_with(o: &Output, want: &str) {
    let e = stderr(o);
    assert_eq!(code(o), 1, "expected exit code 1, stderr:\n{e}");
    assert!(e.contains(want), "expected `{want}` in:\n{e}");
}

#[test]
fn fmt_check_accepts_examples_and_rejects_non_canonical() {
    for ex in ["examples/tiny_cnn.qir", "examples/mlp.qir"] {
        let o = qc(&["fmt", "--check", ex]);
        assert_eq!(code(&o), 0, "{ex}: {}", stderr(&o));
    }
    let d = scratch("fmt");
    let f = d.join("loose.qir");
    std::fs::write(&f, "func @f(%x: tensor<4xf32>) -> tensor<4xf32> {\n  %y = relu(%x) : tensor<4xf32>\n    return %y\n}\n")
        .unwrap();
    fails_with(&qc(&["fmt", "--check", p(&f)]), "is not in canonical form (first difference at line 3)");
    let o = qc(&["fmt", p(&f)]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("\n  return %y\n"));
}

#[test]
fn passes_lists_every_pass_and_pipeline() {
    let out = stdout(&qc(&["passes"]));
    for name in ["fold-constants", "fold-bn", "fuse-activation", "dead-code", "default", "cleanup"] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
}

#[test]
fn compile_prints_after_every_pass() {
    let o = qc(&["compile", "examples/tiny_cnn.qir", "--print-after-all"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    for pass in ["fold-constants", "fold-bn", "fuse-activation", "dead-code"] {
        assert!(out.contains(&format!("// ----- IR after {pass} -----")), "{pass}:\n{out}");
    }
    assert!(out.contains("loc(\"conv1\", fused = [\"bn1\", \"relu1\"])"));
}

#[test]
fn compile_dump_dir_stop_after_and_print_after() {
    let d = scratch("dump");
    let o = qc(&["compile", "examples/tiny_cnn.qir", "--dump-dir", p(&d), "--stop-after", "fold-bn", "--print-after", "fold-bn"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut files: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qir"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "00-input.qir",
            "01-fold-constants.qir",
            "02-fold-hard-swish.qir",
            "03-fold-gelu.qir",
            "04-fold-layer-norm.qir",
            "05-fold-bn.qir"
        ]
    );
    let out = stdout(&o);
    assert!(out.contains("IR after fold-bn") && !out.contains("IR after fold-constants"));
    assert!(!std::fs::read_to_string(d.join("05-fold-bn.qir")).unwrap().contains("batch_norm"));
}

#[test]
fn compiled_model_runs_like_the_original() {
    let d = scratch("run");
    let out = d.join("cnn.qir");
    let o = qc(&["compile", "examples/tiny_cnn.qir", "-o", p(&out)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(d.join("cnn.safetensors").exists());
    let o = qc(&["fmt", "--check", p(&out)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // A batch of 3 runs through a model specialized to batch 1.
    let x = ArrayD::from_shape_vec(IxDyn(&[3, 1, 8, 8]), (0..192).map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0).collect()).unwrap();
    let xin = d.join("x.npy");
    ndarray_npy::write_npy(&xin, &x).unwrap();
    let (y0, y1) = (d.join("y0.npy"), d.join("y1.npy"));
    for (model, y) in [("examples/tiny_cnn.qir", &y0), (p(&out), &y1)] {
        let o = qc(&["run", model, "--input", p(&xin), "-o", p(y), "--engine", "interp"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let a: ArrayD<f32> = ndarray_npy::read_npy(&y0).unwrap();
    let b: ArrayD<f32> = ndarray_npy::read_npy(&y1).unwrap();
    assert_eq!(a.shape(), [3, 10]);
    for (x, y) in a.iter().zip(b.iter()) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let o = qc(&["compile", "examples/mlp.qir", "--passes", "fold-bn,nope"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("unknown pass `nope`; valid passes: fold-constants, fold-hard-swish, fold-gelu"),
        "{}",
        stderr(&o)
    );
    let o = qc(&["compile", "examples/mlp.qir", "--dynamic", "--weight-bits", "4"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("dynamic quantization takes 8 or 7"), "{}", stderr(&o));
    let o = qc(&["compile", "examples/mlp.qir", "--pipeline", "fast"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("valid pipelines: default"));
    assert_eq!(code(&qc(&["frobnicate"])), 2);
    // ISA levels: an unknown name lists the levels; a level this CPU cannot run is refused.
    let o = qc(&["bench", "examples/mlp.qir", "--isa", "sse"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("unknown ISA level `sse`; the levels are host, scalar, sse4.1"), "{}", stderr(&o));
    if let Some(missing) = qc_codegen::Isa::ALL.into_iter().find(|l| !l.on_host()) {
        let o = qc(&["run", "examples/mlp.qir", "--input", "x.npy", "-o", "y.npy", "--isa", missing.name()]);
        assert_eq!(code(&o), 2);
        assert!(stderr(&o).contains(&format!("this CPU cannot run ISA level {missing}")), "{}", stderr(&o));
    }
}

/// `qc bench` names the CPU and the ISA level it compiled for, and the threads.
#[test]
fn bench_names_the_isa_level() {
    let o = qc(&["bench", "examples/mlp.qir", "--runs", "3", "--isa", "scalar"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("for ISA level scalar on "), "{out}");
    let o = qc(&["bench", "examples/mlp.qir", "--runs", "3", "--batch", "4", "--threads", "2"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(", 2 threads"), "{}", String::from_utf8_lossy(&o.stdout));
    // Threads are at least one, and only the JIT takes them.
    let o = qc(&["bench", "examples/mlp.qir", "--threads", "0"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--threads") && stderr(&o).contains("must be at least 1"), "{}", stderr(&o));
    let o = qc(&["run", "examples/mlp.qir", "--input", "x.npy", "-o", "y.npy", "--engine", "interp", "--threads", "2"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--threads is for --engine jit"), "{}", stderr(&o));
}

#[test]
fn bad_weights_are_reported() {
    let d = scratch("weights");
    // The weights file is missing.
    let m = d.join("m.qir");
    std::fs::copy(root().join("examples/mlp.qir"), &m).unwrap();
    fails_with(&qc(&["compile", p(&m)]), "refers to weights (\"fc1.weight\", ...) but the weights file");
    // A weight is missing from the file.
    fails_with(
        &qc(&["compile", "examples/tiny_cnn.qir", "--weights", "examples/mlp.safetensors"]),
        "weight \"conv1.weight\" is not in the weights file",
    );
    // A weight of the wrong shape, and of the wrong dtype.
    let text = std::fs::read_to_string(root().join("examples/mlp.qir")).unwrap();
    std::fs::write(
        &m,
        text.replace("%fc1.bias = const @\"fc1.bias\" : tensor<32xf32>", "%fc1.bias = const @\"fc1.bias\" : tensor<1x32xf32>"),
    )
    .unwrap();
    std::fs::copy(root().join("examples/mlp.safetensors"), d.join("m.safetensors")).unwrap();
    fails_with(&qc(&["compile", p(&m)]), "weight \"fc1.bias\" is f32 of shape [32] but the IR declares tensor<1x32xf32>");
    std::fs::write(
        &m,
        text.replace("%fc2.bias = const @\"fc2.bias\" : tensor<10xf32>", "%fc2.bias = const @\"fc2.bias\" : tensor<10xi32>"),
    )
    .unwrap();
    fails_with(&qc(&["compile", p(&m)]), "weight \"fc2.bias\" is f32 of shape [10] but the IR declares tensor<10xi32>");
    // A corrupt weights file.
    std::fs::write(&m, &text).unwrap();
    std::fs::write(d.join("m.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    fails_with(&qc(&["compile", p(&m)]), "not a valid safetensors file");
    let bytes = std::fs::read(root().join("examples/mlp.safetensors")).unwrap();
    std::fs::write(d.join("m.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&qc(&["compile", p(&m)]), "not a valid safetensors file");
}

#[test]
fn bad_inputs_are_reported() {
    let d = scratch("inputs");
    let y = d.join("y.npy");
    let wrong = d.join("wrong.npy");
    ndarray_npy::write_npy(&wrong, &ArrayD::<f32>::zeros(IxDyn(&[2, 63]))).unwrap();
    fails_with(
        &qc(&["run", "examples/mlp.qir", "--input", p(&wrong), "-o", p(&y)]),
        "input %input must be tensor<?x64xf32>, got f32 of shape [2, 63]",
    );
    let nan = d.join("nan.npy");
    let mut a = ArrayD::<f32>::zeros(IxDyn(&[2, 64]));
    a[[1, 3]] = f32::NAN;
    ndarray_npy::write_npy(&nan, &a).unwrap();
    fails_with(&qc(&["run", "examples/mlp.qir", "--input", p(&nan), "-o", p(&y)]), "holds NaN at flat index 67");
    let ints = d.join("ints.npy");
    ndarray_npy::write_npy(&ints, &ArrayD::<i64>::zeros(IxDyn(&[2, 64]))).unwrap();
    fails_with(&qc(&["run", "examples/mlp.qir", "--input", p(&ints), "-o", p(&y)]), "must be tensor<?x64xf32>, got i64");
    let junk = d.join("junk.npy");
    std::fs::write(&junk, b"\x93NUMPY\x01\x00garbage").unwrap();
    fails_with(&qc(&["run", "examples/mlp.qir", "--input", p(&junk), "-o", p(&y)]), "not a readable .npy file");
    fails_with(&qc(&["run", "examples/mlp.qir", "--input", "no/such.npy", "-o", p(&y)]), "no such file");
    fails_with(&qc(&["fmt", "no/such.qir"]), "cannot read no/such.qir");
}

#[test]
fn parse_errors_show_the_line_and_a_caret() {
    let d = scratch("parse");
    let f = d.join("bad.qir");
    std::fs::write(
        &f,
        "func @f(%x: tensor<4xf32>) -> tensor<4xf32> {\n  %y = relu(%x) {alpha = 1.0} : tensor<4xf32>\n  return %y\n}\n",
    )
    .unwrap();
    let o = qc(&["compile", p(&f)]);
    fails_with(&o, "relu has no attribute `alpha`; it takes none");
    let e = stderr(&o);
    assert!(e.contains("bad.qir:2:18"), "{e}");
    assert!(e.contains(" 2 │   %y = relu(%x) {alpha = 1.0} : tensor<4xf32>"), "{e}");
    assert!(e.contains("─────┬─────"), "{e}");
}

#[test]
fn import_then_run_an_onnx_model() {
    let d = scratch("import");
    let out = d.join("cnn.qir");
    let o = qc(&["import", "../shared/corpus/models/digits_cnn_fp32.onnx", "-o", p(&out)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(d.join("cnn.safetensors").exists());
    assert_eq!(code(&qc(&["fmt", "--check", p(&out)])), 0);
    let x = "../shared/corpus/goldens/digits_inputs16.npy";
    let (y0, y1) = (d.join("y0.npy"), d.join("y1.npy"));
    let o = qc(&["run", p(&out), "--input", x, "-o", p(&y0)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Every command that takes a model takes the .onnx file too.
    let o = qc(&["run", "../shared/corpus/models/digits_cnn_fp32.onnx", "--input", &format!("input={x}"), "-o", p(&y1)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let a: ArrayD<f32> = ndarray_npy::read_npy(&y0).unwrap();
    let b: ArrayD<f32> = ndarray_npy::read_npy(&y1).unwrap();
    let golden: ArrayD<f32> = ndarray_npy::read_npy(root().join("../shared/corpus/goldens/digits_cnn_fp32.npy")).unwrap();
    assert_eq!(a, b);
    for (x, y) in a.iter().zip(golden.iter()) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
    }
    let o = qc(&["compile", "../shared/corpus/models/digits_cnn_fp32.onnx", "--print-after", "fold-bn"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stdout(&o).contains("= batch_norm("));
}

#[test]
fn import_errors() {
    let d = scratch("import-err");
    let out = d.join("x.qir");
    let bad = d.join("bad.onnx");
    std::fs::write(&bad, b"\x08\x07\x12garbage that is not protobuf").unwrap();
    fails_with(&qc(&["import", p(&bad), "-o", p(&out)]), "not a valid ONNX protobuf");
    assert!(!out.exists(), "a failed import leaves no output");
    let o = qc(&["import", "../shared/corpus/models/digits_mlp_fp32.onnx", "-o", p(&out), "--input-shape", "input=1xbadx8"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = qc(&["import", "../shared/corpus/models/digits_mlp_fp32.onnx", "-o", p(&out), "--input-shape", "input=4x1x8x8"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read_to_string(&out).unwrap().contains("%input: tensor<4x1x8x8xf32>"));
}

const CALIB: &str = "../shared/corpus/data/digits_calib_x.npy";
const TEST_X: &str = "../shared/corpus/data/digits_test_x.npy";
const TEST_Y: &str = "../shared/corpus/data/digits_test_y.npy";

#[test]
fn quantize_evaluate_report_and_export() {
    let d = scratch("ptq");
    let out = d.join("cnn_int8.qir");
    let report = d.join("report.json");
    let model = "../shared/corpus/models/digits_resdw_fp32.onnx";
    let o = qc(&["compile", model, "--calib", CALIB, "--calib-method", "auto", "-o", p(&out), "--report", p(&report)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("calibration: "), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("conv2d(%input.q") && text.contains("!q<u8"), "{text}");
    let json = std::fs::read_to_string(&report).unwrap();
    assert!(json.contains("\"integer_ops\": ") && json.contains("the integer graph starts here"), "{json}");
    let o = qc(&["eval", p(&out), "--input", TEST_X, "--labels", TEST_Y, "--reference", model, "--batch", "64"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("accuracy 98.") && stdout(&o).contains("top-1 agreement"), "{}", stdout(&o));
    let onnx = d.join("cnn_int8.onnx");
    let o = qc(&["export", p(&out), "-o", p(&onnx)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1000);
    assert!(stderr(&o).contains("saturate") && stderr(&o).contains("--weight-bits 7"), "{}", stderr(&o));
    // With 7-bit weights there is nothing to say.
    let out7 = d.join("cnn_int8_w7.qir");
    let o = qc(&["compile", model, "--calib", CALIB, "--weight-bits", "7", "-o", p(&out7)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = qc(&["export", p(&out7), "-o", p(&d.join("cnn_int8_w7.onnx"))]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("saturate"), "{}", stderr(&o));
    // Dynamic quantization, and q31 requantization.
    let o = qc(&["compile", "../shared/corpus/models/digits_mlp_fp32.onnx", "--dynamic"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("dynamic_quantize("));
    let o = qc(&["compile", model, "--calib", CALIB, "--requant", "q31", "--activations", "i8", "--symmetric"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("requant = \"q31\"") && stdout(&o).contains("!q<i8, "), "{}", stdout(&o));
}

#[test]
fn fusion_report_explains_what_stayed_f32() {
    let d = scratch("report");
    let m = d.join("m.qir");
    std::fs::write(
        &m,
        "func @m(%x: tensor<2x4xf32>) -> tensor<2x4xf32> {\n  %s = softmax(%x) : tensor<2x4xf32> loc(\"softmax\")\n  %y = relu(%s) : tensor<2x4xf32> loc(\"relu\")\n  return %y\n}\n",
    )
    .unwrap();
    let calib = d.join("calib.npy");
    ndarray_npy::write_npy(
        &calib,
        &ArrayD::from_shape_vec(IxDyn(&[3, 4]), (0..12).map(|i| i as f32 / 6.0 - 1.0).collect()).unwrap(),
    )
    .unwrap();
    let o = qc(&["compile", p(&m), "--calib", p(&calib)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("fusion report: 1 integer ops, 1 f32 ops"), "{e}");
    assert!(e.contains("%s = softmax loc(\"softmax\"): softmax has no integer form"), "{e}");
}

#[test]
fn calibration_errors() {
    let d = scratch("calib-err");
    let nan = d.join("nan.npy");
    let mut a = ArrayD::<f32>::zeros(IxDyn(&[4, 1, 8, 8]));
    a[[2, 0, 1, 1]] = f32::INFINITY;
    ndarray_npy::write_npy(&nan, &a).unwrap();
    let model = "../shared/corpus/models/digits_cnn_fp32.onnx";
    fails_with(&qc(&["compile", model, "--calib", p(&nan)]), "calibration sample 2 holds inf in input %input (flat index 9)");
    let wrong = d.join("wrong.npy");
    ndarray_npy::write_npy(&wrong, &ArrayD::<f32>::zeros(IxDyn(&[4, 64]))).unwrap();
    fails_with(&qc(&["compile", model, "--calib", p(&wrong)]), "calibration samples of shape [4, 64] do not fit the input");
    fails_with(&qc(&["compile", model, "--pipeline", "int8"]), "calibration needs samples: pass --calib X.npy");
    let o = qc(&["compile", model, "--calib", CALIB, "--calib-method", "median"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("unknown calibration method `median`"));
    // A zero-range input still gets a valid scale.
    let zeros = d.join("zeros.npy");
    ndarray_npy::write_npy(&zeros, &ArrayD::<f32>::zeros(IxDyn(&[4, 1, 8, 8]))).unwrap();
    let o = qc(&["compile", model, "--calib", p(&zeros)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("quantize(%input) : tensor<?x1x8x8x!q<u8, 1.0, 0>>"), "{}", stdout(&o));
}

/// Misuse is an error (exit 2) that says what is wrong: layer names the model does not have
/// (with the closest one), values out of range, including negative ones.
#[test]
fn misuse_is_an_error_with_the_choices() {
    let model = "../shared/corpus/models/digits_cnn_fp32.onnx";
    let cases: [(&[&str], &str); 8] = [
        (
            &["--keep-fp32", "node_conv2d_x"],
            "--keep-fp32: the model has no layer named `node_conv2d_x`; did you mean `node_conv2d",
        ),
        (&["--layer-weight-bits", "nosuch=4"], "--layer-weight-bits: the model has no layer named `nosuch`"),
        (&["--calib-override", "nosuch=minmax"], "--calib-override: the model has no layer named `nosuch`"),
        (&["--prune-ratio", "1.5"], "1.5 is not in [0, 1)"),
        (&["--prune-ratio", "-0.2"], "-0.2 is not in [0, 1)"),
        (&["--sparsity", "1"], "1 is not in [0, 1)"),
        (&["--weight-bits", "6"], "`6` is not one of 8, 7, 4"),
        (&["--layer-weight-bits", "node_conv2d=6"], "takes NAME=4, NAME=7 or NAME=8"),
    ];
    for (args, want) in cases {
        let mut argv = vec!["compile", model, "--calib", CALIB];
        argv.extend_from_slice(args);
        let o = qc(&argv);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    // A name the model has is taken.
    let o = qc(&["compile", model, "--calib", CALIB, "--keep-fp32", "node_conv2d", "--calib-override", "node_conv2d_1=minmax"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = qc(&["bench", "examples/mlp.qir", "--runs", "0"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--runs") && stderr(&o).contains("must be at least 1"), "{}", stderr(&o));
    // Options that would do nothing.
    let unused: [(&[&str], &str); 5] = [
        (&["compile", model, "--calib", CALIB, "--distill", "10"], "--distill recovers what pruning lost"),
        (&["compile", model, "--calib", CALIB, "--min-sqnr", "30"], "--mixed-precision"),
        (&["analyze", model, "--calib", CALIB, "-o", "x.qir"], "qc analyze writes no model: -o/--output is for qc compile"),
        (&["size", model, "--print-after-all"], "qc size writes no model: --print-after-all is for qc compile"),
        (&["compile", model, "--calib", CALIB, "--compress", "-o", "x.onnx"], "an .onnx output holds its weights itself"),
    ];
    for (argv, want) in unused {
        let o = qc(argv);
        assert_eq!(code(&o), 2, "{argv:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{argv:?}: {}", stderr(&o));
    }
}

/// `qc compile -o X.onnx` writes ONNX (what `qc export` writes), which qc reads back and runs.
#[test]
fn compile_to_an_onnx_file_writes_onnx() {
    let d = scratch("compile-onnx");
    let onnx = d.join("q.onnx");
    let o = qc(&["compile", "../shared/corpus/models/digits_cnn_fp32.onnx", "--calib", CALIB, "-o", p(&onnx)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let bytes = std::fs::read(&onnx).unwrap();
    assert!(!bytes.starts_with(b"func"), "QIR text in an .onnx file");
    let y = d.join("y.npy");
    let o = qc(&["run", p(&onnx), "--input", TEST_X, "-o", p(&y)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn bench_times_the_jit_and_the_evaluator() {
    let d = scratch("bench");
    let out = d.join("mlp.qir");
    let o = qc(&["compile", "../shared/corpus/models/digits_mlp_fp32.onnx", "--calib", CALIB, "-o", p(&out)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = qc(&["bench", p(&out), "--batch", "4", "--runs", "5"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("batch 4, 5 JIT kernels compiled in") && s.contains("jit ") && s.contains("GOPS"), "{s}");
    assert!(s.contains("10 % of runs took under") && !s.contains("other memory"), "{s}");
    // The evaluator is timed only when asked.
    assert!(!s.contains("interp"), "{s}");
    let o = qc(&["bench", p(&out), "--runs", "5", "--against", "interp"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("x the JIT's time"), "{}", stdout(&o));
    let o = qc(&["bench", p(&out), "--runs", "5", "--evict-kib", "64"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("64 KiB of other memory written before each run"), "{}", stdout(&o));
    let o = qc(&["bench", p(&out), "--runs", "5", "--evict-kib", "99999999999"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("more than 1 GiB"), "{}", stderr(&o));
}

#[test]
fn compressed_weights_load_and_run_like_the_plain_ones() {
    let d = scratch("compress");
    let (plain, packed) = (d.join("plain.qir"), d.join("packed.qir"));
    let model = "../shared/corpus/models/digits_cnn_fp32.onnx";
    let args = ["--calib", CALIB, "--sparsity", "0.8", "--reconstruct", "--clusters", "16"];
    let o = qc(&[&["compile", model, "-o", p(&plain)][..], &args].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = qc(&[&["compile", model, "--compress", "-o", p(&packed)][..], &args].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("bytes compressed"), "{}", stderr(&o));
    assert!(d.join("packed.qcw").exists() && !d.join("packed.safetensors").exists());
    let plain_size = std::fs::metadata(d.join("plain.safetensors")).unwrap().len();
    let packed_size = std::fs::metadata(d.join("packed.qcw")).unwrap().len();
    assert!(packed_size * 2 < plain_size, "{packed_size} vs {plain_size}");
    // The same outputs, bit for bit.
    let (ya, yb) = (d.join("a.npy"), d.join("b.npy"));
    assert_eq!(code(&qc(&["run", p(&plain), "--input", TEST_X, "-o", p(&ya)])), 0);
    assert_eq!(code(&qc(&["run", p(&packed), "--input", TEST_X, "-o", p(&yb)])), 0);
    assert_eq!(std::fs::read(&ya).unwrap(), std::fs::read(&yb).unwrap());
    // A damaged file is an error naming the problem.
    let mut bytes = std::fs::read(d.join("packed.qcw")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(d.join("packed.qcw"), &bytes).unwrap();
    fails_with(&qc(&["run", p(&packed), "--input", TEST_X, "-o", p(&yb)]), "checksum mismatch");
    std::fs::write(d.join("packed.qcw"), &bytes[..mid]).unwrap();
    fails_with(&qc(&["run", p(&packed), "--input", TEST_X, "-o", p(&yb)]), "corrupt or truncated");
    // The size report goes stage by stage.
    let o = qc(&[&["size", model, "--test", TEST_X, "--labels", TEST_Y][..], &args].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for stage in ["fp32", "int8", "pruned", "clustered", "huffman", "fp32 / stage", "test errors"] {
        assert!(stdout(&o).contains(stage), "{}", stdout(&o));
    }
}

#[test]
fn analyze_prints_ranked_layers_json_and_plots() {
    let d = scratch("analyze");
    let plots = d.join("plots");
    let model = "../shared/corpus/models/digits_cnn_fp32.onnx";
    let o = qc(&["analyze", model, "--calib", CALIB, "--plots", p(&plots), "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let layers = json["layers"].as_array().unwrap();
    assert!(layers.len() >= 5, "{json}");
    assert_eq!(layers[0]["rank"], 1);
    assert!(layers[0]["cumulative"]["sqnr_db"].as_f64().unwrap() > 20.0, "{json}");
    let sqnr = std::fs::read_to_string(plots.join("sqnr.svg")).unwrap();
    assert!(sqnr.starts_with("<svg") && sqnr.contains("node_conv2d"), "{sqnr}");
    let hists = std::fs::read_dir(&plots)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("hist_"))
        .count();
    assert!(hists >= 5, "{hists} histograms");
    // Without samples it is a usage error.
    let o = qc(&["analyze", model]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("needs --calib"), "{}", stderr(&o));
}

#[test]
fn int4_weights_and_mixed_precision() {
    let d = scratch("int4");
    let model = "../shared/corpus/models/digits_cnn_fp32.onnx";
    let (q8, q4) = (d.join("q8.qir"), d.join("q4.qir"));
    assert_eq!(code(&qc(&["compile", model, "--calib", CALIB, "-o", p(&q8)])), 0);
    let o = qc(&["compile", model, "--calib", CALIB, "--weight-bits", "4", "-o", p(&q4)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read_to_string(&q4).unwrap().contains("!q<i4:axis0"));
    // Two weights per byte: the file is little more than half the int8 one.
    let (s8, s4) =
        (std::fs::metadata(d.join("q8.safetensors")).unwrap().len(), std::fs::metadata(d.join("q4.safetensors")).unwrap().len());
    assert!(s4 * 10 < s8 * 6, "{s4} vs {s8}");
    // Loaded back, the JIT and the evaluator agree bit for bit.
    let (yj, yi) = (d.join("j.npy"), d.join("i.npy"));
    assert_eq!(code(&qc(&["run", p(&q4), "--input", TEST_X, "-o", p(&yj)])), 0);
    assert_eq!(code(&qc(&["run", p(&q4), "--input", TEST_X, "-o", p(&yi), "--engine", "interp"])), 0);
    assert_eq!(std::fs::read(&yj).unwrap(), std::fs::read(&yi).unwrap());
    let o = qc(&["eval", p(&q4), "--input", TEST_X, "--labels", TEST_Y]);
    assert!(stdout(&o).contains("accuracy 9"), "{}", stdout(&o));
    // Mixed precision: decisions printed, both precisions in the IR.
    let mp = d.join("mp.qir");
    let o = qc(&["compile", model, "--calib", CALIB, "--mixed-precision", "--max-loss", "0.5", "--min-sqnr", "30", "-o", p(&mp)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("int4 → int8") && stderr(&o).contains("final:"), "{}", stderr(&o));
    let text = std::fs::read_to_string(&mp).unwrap();
    assert!(text.contains("!q<i4:") && text.contains("!q<i8:"), "{text}");
    let o = qc(&["compile", model, "--calib", CALIB, "--mixed-precision"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

/// An ONNX Runtime QDQ model compiles to integer ops without a pipeline flag: qc sees its
/// quantize/dequantize ops, says so, and only the boundary quantize and dequantize stay.
#[test]
fn an_onnx_runtime_qdq_model_picks_the_qdq_pipeline() {
    let d = scratch("qdq");
    let model = "../shared/corpus/models/digits_resdw_qdq_pre_u8s8_minmax.onnx";
    let (out, report) = (d.join("resdw.qir"), d.join("report.json"));
    let o = qc(&["compile", model, "-o", p(&out), "--report", p(&report)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("compiling it with the qdq pipeline"), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let count = |op: &str| text.lines().filter(|l| l.contains(&format!("= {op}("))).count();
    assert_eq!((count("quantize"), count("dequantize")), (1, 1), "{text}");
    assert!(count("conv2d") > 0);
    let report = std::fs::read_to_string(&report).unwrap();
    assert!(!report.contains("has no integer form"), "{report}");
}

/// A reader that goes away (`qc compile --print-after-all | head`) ends qc quietly: exit 0, no
/// "Broken pipe" error from the pass that was printing.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(["compile", "../shared/corpus/models/digits_cnn_fp32.onnx", "--calib", CALIB, "--print-after-all"])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("qc runs");
    let mut first = String::new();
    // A small buffer: qc writes more than the pipe holds (76 KB against 64 KB), so it is still
    // writing when the reader goes.
    BufReader::with_capacity(64, child.stdout.take().expect("piped")).read_line(&mut first).unwrap();
    assert!(first.contains("IR after"), "{first}");
    // The reader is dropped here, closing the pipe while qc still has passes to print.
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("Broken pipe"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// An all-zero calibration set is not silently taken: the zero-range activation is named.
#[test]
fn a_constant_calibration_set_is_reported() {
    let d = scratch("zero-calib");
    let zeros = d.join("zeros.npy");
    ndarray_npy::write_npy(&zeros, &ArrayD::<f32>::zeros(IxDyn(&[8, 1, 8, 8]))).unwrap();
    let o = qc(&["compile", "../shared/corpus/models/digits_cnn_fp32.onnx", "--calib", p(&zeros), "-o", p(&d.join("z.qir"))]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("%input: every calibration sample gives it the same value (0), a zero range"), "{}", stderr(&o));
}

/// `qc fmt` takes an ONNX model too (printed as QIR), as every command does.
#[test]
fn fmt_prints_an_onnx_model_as_qir() {
    let o = qc(&["fmt", "../shared/corpus/models/digits_mlp_fp32.onnx"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).starts_with("func @digits_mlp_fp32("), "{}", stdout(&o));
    let o = qc(&["fmt", "--check", "../shared/corpus/models/digits_mlp_fp32.onnx"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

#[test]
fn run_takes_several_named_inputs_and_writes_each_output() {
    let d = scratch("multi");
    let model = d.join("m.qir");
    std::fs::write(
        &model,
        "func @m(%ids: tensor<?x3xi64>, %x: tensor<?x3xf32>) -> (tensor<?x3xf32>, tensor<?x3xf32>) {
  %table = const dense<[0.5, 1.5, 2.5]> : tensor<3xf32>
  %e = gather(%table, %ids) {axis = 0} : tensor<?x3xf32>
  %sum = add(%e, %x) : tensor<?x3xf32>
  %g = gelu(%sum) : tensor<?x3xf32>
  return %sum, %g
}
",
    )
    .unwrap();
    let ids = qc_ir::Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0, 1, 2, 2, 1, 0]).unwrap());
    let x = qc_ir::Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, 0.0, -1.0, 0.0, 0.0, 0.0]).unwrap());
    // As the zoo names them: a stem, then each input's name.
    qc::io::write_tensor(&d.join("in.ids.npy"), &ids).unwrap();
    qc::io::write_tensor(&d.join("in.x.npy"), &x).unwrap();
    for engine in ["jit", "interp"] {
        let o = qc(&["run", p(&model), "--input", p(&d.join("in.npy")), "-o", p(&d.join("out.npy")), "--engine", engine]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let sum = qc::io::read_tensor(&d.join("out.sum.npy")).unwrap();
        assert_eq!(sum.to_f64_vec(), vec![1.5, 1.5, 1.5, 2.5, 1.5, 0.5], "{engine}");
        assert_eq!(qc::io::read_tensor(&d.join("out.g.npy")).unwrap().shape(), [2, 3]);
    }
    // By name, in any order.
    let by_name = |args: &[String]| {
        let mut a = vec!["run".to_string(), p(&model).to_string(), "-o".into(), p(&d.join("named.npy")).to_string()];
        for s in args {
            a.extend(["--input".to_string(), s.clone()]);
        }
        qc(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let x_arg = format!("x={}", p(&d.join("in.x.npy")));
    let ids_arg = format!("ids={}", p(&d.join("in.ids.npy")));
    let o = by_name(&[x_arg.clone(), ids_arg.clone()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(d.join("named.sum.npy").exists() && d.join("named.g.npy").exists());
    let o = by_name(std::slice::from_ref(&x_arg));
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("input ids is not given: add --input ids=FILE"), "{}", stderr(&o));
    let o = by_name(&[x_arg.clone(), ids_arg.clone(), format!("mask={}", p(&d.join("in.x.npy")))]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("@m has no input named mask; its inputs are ids, x"), "{}", stderr(&o));
    let o = by_name(&[x_arg.clone(), p(&d.join("in.ids.npy")).to_string()]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("give each as --input NAME=FILE"), "{}", stderr(&o));
    // A missing stem file is named.
    fails_with(&qc(&["run", p(&model), "--input", p(&d.join("nope.npy")), "-o", p(&d.join("o.npy"))]), "nope.ids.npy");
    // So does --calib, naming itself.
    let o = qc(&["compile", p(&model), "--calib", &x_arg]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("input ids is not given: add --calib ids=FILE"), "{}", stderr(&o));
    // bench takes the same inputs.
    let o = qc(&["bench", p(&model), "--input", p(&d.join("in.npy")), "--runs", "2", "--batch", "2"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// `--json` on compile, run, eval and bench prints one JSON document on stdout with what the
/// text says; `--quiet` silences the notes on stderr and `--verbose` adds each step's time.
#[test]
fn json_outputs_and_quiet_and_verbose() {
    let d = scratch("json");
    let (model, q) = ("../shared/corpus/models/digits_mlp_fp32.onnx", d.join("q.qir"));
    let json = |o: &Output| -> serde_json::Value {
        assert_eq!(code(o), 0, "{}", stderr(o));
        serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
    };
    let v = json(&qc(&["compile", model, "--calib", CALIB, "-o", p(&q), "--json"]));
    let stages: Vec<&str> = v["timings_ms"].as_array().unwrap().iter().map(|t| t["stage"].as_str().unwrap()).collect();
    assert!(stages.contains(&"calibrate") && stages.contains(&"fuse-requant"), "{v}");
    assert_eq!(v["pipeline"].as_array().unwrap().len(), stages.len(), "{v}");
    assert!(v["integer_ops"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["output"], p(&q));
    // The compiled model and its ONNX export keep the model's output name.
    let onnx = d.join("q.onnx");
    assert_eq!(code(&qc(&["export", p(&q), "-o", p(&onnx)])), 0);
    for m in [&q, &onnx] {
        let text = stdout(&qc(&["fmt", p(m)]));
        assert!(text.contains("return %logits\n"), "{}: {text}", m.display());
    }
    // JSON goes to stdout, where the QIR goes without -o.
    assert_eq!(code(&qc(&["compile", model, "--json"])), 2);

    let v = json(&qc(&["eval", p(&q), "--input", TEST_X, "--labels", TEST_Y, "--reference", model, "--json"]));
    assert_eq!(v["samples"], 540);
    let acc = v["accuracy_percent"].as_f64().unwrap();
    assert!(acc > 90.0 && acc == 100.0 * v["correct"].as_f64().unwrap() / 540.0, "{v}");
    assert!(v["reference"]["top1_agreement_percent"].as_f64().unwrap() > 95.0, "{v}");

    let y = d.join("y.npy");
    let v = json(&qc(&["run", p(&q), "--input", TEST_X, "-o", p(&y), "--json"]));
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([540, 10]), "{v}");
    assert_eq!(v["outputs"][0]["file"], p(&y));
    assert!(y.exists());

    let v = json(&qc(&["bench", p(&q), "--input", TEST_X, "--runs", "3", "--json"]));
    let layers = v["layers"].as_array().unwrap();
    assert!(layers.iter().any(|l| l["label"].as_str().unwrap().contains("gemm") && l["gops"].as_f64().unwrap() > 0.0), "{v}");
    assert!(v["jit_ms"]["p10"].as_f64().unwrap() <= v["jit_ms"]["median"].as_f64().unwrap(), "{v}");
    assert!(v["isa"].is_string() && v["cpu"].is_string() && v["interp_ms"].is_null(), "{v}");

    // An ONNX Runtime QDQ model gets a note on which pipeline compiles it, unless --quiet.
    let qdq = "../shared/corpus/models/digits_mlp_qdq_raw_u8s8_minmax.onnx";
    let o = qc(&["compile", qdq, "-o", p(&d.join("a.qir"))]);
    assert!(stderr(&o).contains("qdq pipeline"), "{}", stderr(&o));
    let o = qc(&["compile", qdq, "-o", p(&d.join("b.qir")), "--quiet"]);
    assert_eq!((code(&o), stderr(&o)), (0, String::new()));
    let o = qc(&["-v", "compile", qdq, "-o", p(&d.join("c.qir"))]);
    assert!(stderr(&o).contains("time: fold-qdq"), "{}", stderr(&o));
    assert_eq!(code(&qc(&["compile", qdq, "-q", "-v"])), 2);
}

/// Each `--dump-dir` dump has its weights beside it (shared by a hard link while a pass leaves
/// them alone), so a dump compiles again: the rest of the pipeline from one gives the same model;
/// and the compiled model's output keeps the name it had (`logits`, not `logits.dq`).
#[test]
fn every_dump_compiles_again() {
    let d = scratch("dump-weights");
    let (dir, whole, rest) = (d.join("dumps"), d.join("whole.qir"), d.join("rest.qir"));
    let model = "../shared/corpus/models/digits_cnn_fp32.onnx";
    let o = qc(&["compile", model, "--calib", CALIB, "--dump-dir", p(&dir), "-o", p(&whole)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let dumps: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".qir"))
        .collect();
    for qir in &dumps {
        assert!(dir.join(qir.replace(".qir", ".safetensors")).exists(), "{qir} has no weights beside it");
    }
    let dump = |suffix: &str| dir.join(dumps.iter().find(|n| n.ends_with(suffix)).expect("dumped"));
    let o = qc(&["compile", p(&dump("-insert-qdq.qir")), "--passes", "fold-qdq,fuse-requant,dead-code", "-o", p(&rest)]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let last = std::fs::read_to_string(dump("-dead-code.qir")).unwrap();
    assert_eq!(std::fs::read_to_string(&rest).unwrap(), last);
    // The whole compile gave the output its model's name back; the dumps show the passes' names.
    assert!(last.contains("return %logits.dq"), "{last}");
    assert_eq!(std::fs::read_to_string(&whole).unwrap(), last.replace("%logits.dq", "%logits"));
}

/// `analyze --quantized` on a model ONNX Runtime quantized (QDQ) compares the integer ops the
/// qdq pipeline makes of it with the fp32 model's, layer by layer, matched by node name.
#[test]
fn analyze_compares_an_onnx_runtime_qdq_model_by_node_name() {
    let (fp32, qdq) =
        ("../shared/corpus/models/digits_cnn_fp32pre.onnx", "../shared/corpus/models/digits_cnn_qdq_pre_u8s8_minmax.onnx");
    let o = qc(&["analyze", fp32, "--calib", CALIB, "--quantized", qdq, "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("is a QDQ model"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let layers: Vec<&str> = v["layers"].as_array().unwrap().iter().map(|l| l["layer"].as_str().unwrap()).collect();
    for want in ["node_conv2d", "node_conv2d_1", "node_conv2d_2", "node_linear", "node_linear_1"] {
        assert!(layers.contains(&want), "{want} not in {layers:?}");
    }
    assert!(v["layers"].as_array().unwrap().iter().all(|l| l["cumulative"]["sqnr_db"].as_f64().unwrap() > 30.0), "{v}");
}
