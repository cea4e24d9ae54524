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
