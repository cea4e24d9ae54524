//! ONNX models: protobuf messages, tensor decoding, and import into QIR.

pub mod export;
pub mod fold;
pub mod import;
pub mod proto;
pub mod tensor;

pub use import::{ImportOptions, import, sanitize};

use crate::QcError;
use prost::Message;
use qc_ir::Graph;
use qc_passes::Pass;
use std::path::Path;

/// Decodes ONNX bytes and imports the model; `name` becomes the function's name. The
/// exporters' spelled-out hard-swish is folded into `hard_swish` on the way in.
pub fn import_bytes(bytes: &[u8], name: &str, opts: &ImportOptions) -> Result<Graph, String> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| format!("not a valid ONNX protobuf: {e}"))?;
    let mut g = import(&model, name, opts)?;
    let options = qc_passes::PassOptions::default();
    for pass in [&qc_passes::FoldHardSwish as &dyn Pass, &qc_passes::DeadCode] {
        pass.run(&mut g, &mut qc_passes::PassContext::new(&options)).map_err(|e| e.to_string())?;
    }
    Ok(g)
}

/// Reads and imports an ONNX file.
pub fn import_file(path: &Path, opts: &ImportOptions) -> Result<Graph, QcError> {
    let bytes = std::fs::read(path).map_err(|e| QcError::Input(format!("cannot read {}: {e}", path.display())))?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    import_bytes(&bytes, &name, opts).map_err(|e| QcError::Input(format!("{}: {e}", path.display())))
}
