//! Commands on files: `import`, `fmt`, `passes`, `pack`, `export`.

use crate::say;
use qc::model::parse_source;
use qc::{QcError, load_model, save_model};
use qc_ir::Dim;
use qc_ir::text::print;
use qc_passes::{PIPELINES, REGISTRY};
use std::io::Write;
use std::path::Path;

pub(crate) fn pack(path: &Path, out: &Path, weights: Option<&Path>) -> Result<(), QcError> {
    let model = load_model(path, weights)?;
    let packed = qc::save_model_packed(&model.graph, out)?;
    say!("{:<40} {:>10} {:>10}  coding", "tensor", "bytes", "packed");
    for p in &packed {
        say!("{:<40} {:>10} {:>10}  {:?}", p.name, p.raw_bytes, p.packed_bytes, p.coding);
    }
    let (raw, coded): (usize, usize) = packed.iter().fold((0, 0), |(r, c), p| (r + p.raw_bytes, c + p.packed_bytes));
    say!("{:<40} {:>10} {:>10}  ({:.2}x)", "total", raw, coded, raw as f64 / coded.max(1) as f64);
    // What loading pays for the compression, next to what compiling costs anyway.
    let file = qc::model::packed_weights_path(out);
    if file.exists() {
        let bytes = std::fs::read(&file).map_err(|e| QcError::Input(format!("{}: {e}", file.display())))?;
        let t = std::time::Instant::now();
        qc::packed_weights::unpack(&bytes, &file).map_err(|e| QcError::Input(format!("{e}")))?;
        let decode = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let jit = qc_codegen::CompiledModel::compile(&model.graph);
        let compile = t.elapsed().as_secs_f64();
        match jit {
            Ok(_) => say!(
                "decoding at load: {:.3} ms, {:.1} % of the JIT compile ({:.3} ms)",
                decode * 1e3,
                100.0 * decode / compile,
                compile * 1e3
            ),
            Err(_) => say!("decoding at load: {:.3} ms", decode * 1e3),
        }
    }
    Ok(())
}

pub(crate) fn import(path: &Path, out: &Path, shapes: &[String]) -> Result<(), QcError> {
    let mut opts = qc::onnx::ImportOptions::default();
    for s in shapes {
        let (name, dims) =
            s.split_once('=').ok_or_else(|| QcError::Usage(format!("--input-shape takes NAME=DIMS, got `{s}`")))?;
        let dims = dims
            .split('x')
            .map(|d| match d {
                "?" => Ok(Dim::Dynamic),
                d => d.parse::<u64>().ok().filter(|&n| n > 0).map(Dim::Fixed).ok_or(()),
            })
            .collect::<Result<Vec<_>, ()>>()
            .map_err(|_| {
                QcError::Usage(format!("--input-shape {name}: `{dims}` is not a list of positive dims like 1x3x224x224"))
            })?;
        opts.input_shapes.push((name.to_string(), dims));
    }
    let g = qc::onnx::import_file(path, &opts)?;
    save_model(&g, out)
}

pub(crate) fn fmt(path: &Path, check: bool) -> Result<(), QcError> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        // An ONNX model has no text to check: print it as QIR, as `qc import` would write it.
        if check {
            return Err(QcError::Usage(format!("--check checks QIR text; {} is an ONNX model", path.display())));
        }
        let model = load_model(path, None)?;
        say!("{}", print(&model.graph).trim_end_matches('\n'));
        return Ok(());
    }
    let source = std::fs::read_to_string(path).map_err(|e| QcError::Input(format!("cannot read {}: {e}", path.display())))?;
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
                "{} is not in canonical form (first difference at line {}); run `qc fmt {}` to see it",
                path.display(),
                line + 1,
                path.display()
            )));
        }
        return Ok(());
    }
    say!("{}", canonical.trim_end_matches('\n'));
    Ok(())
}

pub(crate) fn list_passes() {
    say!("passes:");
    for p in REGISTRY {
        say!("  {:<18} {}", p.name, p.doc);
    }
    say!("pipelines:");
    for (name, parts, doc) in PIPELINES {
        say!("  {:<18} {} — {}", name, parts.concat().join(","), doc);
    }
}

pub(crate) fn export(path: &Path, out: &Path, weights: Option<&Path>) -> Result<(), QcError> {
    let model = load_model(path, weights)?;
    write_onnx(&model.graph, out).map_err(|e| QcError::Input(format!("{}: {e}", path.display())))?;
    Ok(())
}

/// Writes `g` as an ONNX file (`qc export`, and `qc compile -o X.onnx`), with a note when its
/// weights are ones ONNX Runtime's AVX2 kernels saturate on.
pub(crate) fn write_onnx(g: &qc_ir::Graph, out: &Path) -> Result<(), String> {
    use prost::Message;
    let onnx = qc::onnx::export::export(g)?;
    qc::io::write_atomic(out, &onnx.encode_to_vec()).map_err(|e| e.to_string())?;
    let wide = layers_with_wide_weights(g);
    if !wide.is_empty() {
        crate::note!(
            "note: {} integer layers (first: {}) have weights beyond [-64, 64]: ONNX Runtime's integer kernels on x86 CPUs \
             without VNNI (AVX2 only) saturate such products, so its results there differ a little from qc's \
             (the digits: 98.3-99.4 % arg-max agreement); `qc compile --weight-bits 7` quantizes weights they compute exactly",
            wide.len(),
            wide[0]
        );
    }
    Ok(())
}

/// The integer conv/gemm/matmul layers whose constant i8 weights leave [-64, 64], by result.
fn layers_with_wide_weights(g: &qc_ir::Graph) -> Vec<String> {
    use qc_ir::OpKind;
    g.node_ids()
        .filter(|&n| {
            matches!(g.node(n).kind, OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul | OpKind::MatMulInteger | OpKind::ConvInteger)
        })
        .filter(|&n| {
            let w = g.node(n).operands.get(1).and_then(|&w| qc_passes::const_value(g, w));
            w.is_some_and(|w| {
                w.scalar_type() == qc_ir::ScalarType::I8
                    && w.to_i64_vec().is_some_and(|v| v.iter().any(|x| !(-64..=64).contains(x)))
            })
        })
        .map(|n| g.display_value(g.node(n).results[0]))
        .collect()
}
