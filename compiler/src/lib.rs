//! `qc`: the library behind the `qc` command — loading models and weights ([`model`], [`io`],
//! [`onnx`]), the compile driver ([`driver`]: a typed request in, the compiled graph and its
//! reports out), evaluation helpers ([`exec`]), and the reports (fusion, pruning, size,
//! analysis). The command line (`main.rs`, `cli/`) only parses arguments and prints.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod driver;
pub mod exec;
pub mod huffman;
pub mod io;
pub mod layer_names;
pub mod mixed_precision;
pub mod model;
pub mod onnx;
pub mod packed_weights;
pub mod plots;
pub mod prune_report;
pub mod report;
pub mod size_report;

pub use model::{Model, load_model, save_model, save_model_packed};

/// A failure the CLI reports. The `error:` prefix and the exit code are decided here: bad input
/// exits 1, bad usage 2.
#[derive(Debug, thiserror::Error)]
pub enum QcError {
    /// The input is wrong: a file, a model, a tensor (the message names which and why).
    #[error("error: {}", .0.trim_end())]
    Input(String),
    /// The command line is wrong.
    #[error("error: {}", .0.trim_end())]
    Usage(String),
    /// Diagnostics already rendered against their source (each with its own `error:` line).
    #[error("{}", .0.trim_end())]
    Diagnostics(String),
}

impl QcError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            QcError::Input(_) | QcError::Diagnostics(_) => 1,
            QcError::Usage(_) => 2,
        }
    }
}

impl From<anyhow::Error> for QcError {
    fn from(e: anyhow::Error) -> Self {
        QcError::Input(format!("{e:#}"))
    }
}
