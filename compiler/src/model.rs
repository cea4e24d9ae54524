//! Loading a model (QIR text + the safetensors file beside it) and saving one.

use crate::QcError;
use crate::io::{read_weights, weights_to_bytes, write_atomic};
use qc_ir::diag::render_all;
use qc_ir::text::{parse, print};
use qc_ir::verify::{VerifyOptions, verify};
use qc_ir::{ConstValue, Graph};
use std::path::{Path, PathBuf};

/// A loaded model: the graph with its weights, and the text it came from (for diagnostics).
pub struct Model {
    /// The graph, weights attached.
    pub graph: Graph,
    /// The file it was read from.
    pub path: PathBuf,
    /// The source text.
    pub source: String,
}

impl Model {
    /// Renders diagnostics against this model's source.
    pub fn render(&self, diags: &[qc_ir::Diagnostic]) -> String {
        render_all(diags, &self.path.display().to_string(), &self.source)
    }
}

/// The weights file that belongs to a model file: `model.qir` → `model.safetensors`.
pub fn weights_path(model: &Path) -> PathBuf {
    model.with_extension("safetensors")
}

/// The compressed weights file that may belong to a model file instead: `model.qcw`.
pub fn packed_weights_path(model: &Path) -> PathBuf {
    model.with_extension("qcw")
}

/// The weights file beside a model: `.safetensors`, else `.qcw` (saving one removes the other).
fn weights_beside(model: &Path) -> PathBuf {
    let packed = packed_weights_path(model);
    if !weights_path(model).exists() && packed.exists() { packed } else { weights_path(model) }
}

/// Names of the weights a graph refers to, in order of appearance.
pub fn referenced_weights(g: &Graph) -> Vec<String> {
    g.node_ids()
        .filter_map(|id| match &g.node(id).value {
            Some(ConstValue::Weight(w)) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

/// Parses and verifies QIR text without weights (what `qc fmt` needs).
pub fn parse_source(path: &Path, source: &str) -> Result<Graph, QcError> {
    let file = path.display().to_string();
    let g = parse(source).map_err(|d| QcError::Diagnostics(render_all(&d, &file, source)))?;
    verify(&g, VerifyOptions::default()).map_err(|d| QcError::Diagnostics(render_all(&d, &file, source)))?;
    Ok(g)
}

/// Reads a model file, and the weights it refers to (from `weights`, else the file beside it),
/// and verifies the whole.
pub fn load_model(path: &Path, weights: Option<&Path>) -> Result<Model, QcError> {
    if path.extension().is_some_and(|e| e == "onnx") {
        let graph = crate::onnx::import_file(path, &crate::onnx::ImportOptions::default())?;
        let source = qc_ir::text::print(&graph);
        return Ok(Model { graph, path: path.to_path_buf(), source });
    }
    let source = std::fs::read_to_string(path).map_err(|e| QcError::Input(format!("cannot read {}: {e}", path.display())))?;
    let mut graph = parse_source(path, &source)?;
    let needed = referenced_weights(&graph);
    let wpath = weights.map(Path::to_path_buf).unwrap_or_else(|| weights_beside(path));
    if !needed.is_empty() {
        if !wpath.exists() {
            return Err(QcError::Input(format!(
                "{} refers to weights (\"{}\", ...) but the weights file {} does not exist",
                path.display(),
                needed[0],
                wpath.display()
            )));
        }
        graph.weights = read_weights(&wpath)?;
    }
    let model = Model { graph, path: path.to_path_buf(), source };
    verify(&model.graph, VerifyOptions { check_weights: true }).map_err(|d| QcError::Diagnostics(model.render(&d)))?;
    Ok(model)
}

/// The weights `g` refers to, and only those.
fn needed_weights(g: &Graph) -> Option<qc_ir::Weights> {
    let needed = referenced_weights(g);
    let mut w = g.weights.clone();
    w.retain(|n| needed.iter().any(|m| m == n));
    (!needed.is_empty()).then_some(w)
}

fn remove_stale(path: &Path) -> Result<(), QcError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(QcError::Input(format!("cannot remove the stale {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

/// The weights whose constants are typed i4 (stored two per byte).
pub fn i4_weights(g: &Graph) -> std::collections::BTreeSet<String> {
    g.node_ids()
        .filter_map(|id| match &g.node(id).value {
            Some(ConstValue::Weight(w)) if g.ty(g.node(id).results[0]).elem.storage() == qc_ir::ScalarType::I4 => Some(w.clone()),
            _ => None,
        })
        .collect()
}

/// Writes `OUT.qir` and, when the graph refers to weights, `OUT.safetensors` with exactly those
/// (i4 weights packed two per byte).
pub fn save_model(g: &Graph, out: &Path) -> Result<(), QcError> {
    if let Some(w) = needed_weights(g) {
        write_atomic(&weights_path(out), &weights_to_bytes(&w, &i4_weights(g))?)?;
        remove_stale(&packed_weights_path(out))?;
    }
    write_atomic(out, print(g).as_bytes())?;
    Ok(())
}

/// What writes each `--dump-dir` dump's weights beside it (`NN-pass.qir` → `NN-pass.safetensors`),
/// so that every dump compiles again: a hard link to the previous dump's file when the bytes are
/// the same (most passes leave the weights alone), else a file of its own.
pub fn dump_weights_writer() -> qc_passes::DumpWeights {
    let last: std::sync::Mutex<Option<(Vec<u8>, PathBuf)>> = std::sync::Mutex::new(None);
    qc_passes::DumpWeights(std::sync::Arc::new(move |g: &Graph, qir: &Path| {
        let Some(w) = needed_weights(g) else { return Ok(()) };
        let bytes = weights_to_bytes(&w, &i4_weights(g)).map_err(|e| e.to_string())?;
        let path = weights_path(qir);
        remove_stale(&path).map_err(|e| e.to_string())?;
        let mut last = last.lock().map_err(|_| "a dump's weights writer failed before".to_string())?;
        match &*last {
            Some((same, previous)) if *same == bytes && std::fs::hard_link(previous, &path).is_ok() => {}
            _ => {
                write_atomic(&path, &bytes).map_err(|e| e.to_string())?;
                *last = Some((bytes, path));
            }
        }
        Ok(())
    }))
}

/// Writes `OUT.qir` and its weights compressed as `OUT.qcw`; returns what each tensor became.
pub fn save_model_packed(g: &Graph, out: &Path) -> Result<Vec<crate::packed_weights::Packed>, QcError> {
    let mut report = Vec::new();
    if let Some(w) = needed_weights(g) {
        let (bytes, r) = crate::packed_weights::pack(&w);
        write_atomic(&packed_weights_path(out), &bytes)?;
        remove_stale(&weights_path(out))?;
        report = r;
    }
    write_atomic(out, print(g).as_bytes())?;
    Ok(report)
}
