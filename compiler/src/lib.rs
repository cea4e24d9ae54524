//! `qc`: the compiler driver behind the `qc` command — loading models and weights, running
//! pipelines, evaluating, and writing results.

pub mod analyze;
pub mod exec;
pub mod huffman;
pub mod io;
pub mod mixed_precision;
pub mod model;
pub mod onnx;
pub mod packed_weights;
pub mod plots;
pub mod prune_report;
pub mod report;
pub mod size_report;

pub use model::{Model, load_model, save_model, save_model_packed};

use std::fmt;

/// A failure the CLI reports: bad input (exit code 1) or bad usage (exit code 2).
#[derive(Debug)]
pub enum QcError {
    /// The input is wrong: a file, a model, a tensor. The message is complete (diagnostics
    /// are already rendered with their source lines).
    Input(String),
    /// The command line is wrong.
    Usage(String),
}

impl QcError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            QcError::Input(_) => 1,
            QcError::Usage(_) => 2,
        }
    }
}

impl fmt::Display for QcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QcError::Input(m) | QcError::Usage(m) => f.write_str(m.trim_end()),
        }
    }
}

impl std::error::Error for QcError {}

impl From<anyhow::Error> for QcError {
    fn from(e: anyhow::Error) -> Self {
        QcError::Input(format!("error: {e:#}"))
    }
}
