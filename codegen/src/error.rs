//! Why a model could not be compiled or run ([`CodegenError`]).

/// Why a model could not be compiled or run.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CodegenError {
    /// The model cannot be compiled (a weight missing, a layer the kernels refuse, ...).
    #[error("{0}")]
    Compile(String),
    /// A run got `got` inputs; the model takes `expected`.
    #[error("the model takes {expected} inputs, got {got}")]
    InputCount {
        /// What the model takes.
        expected: usize,
        /// What the run got.
        got: usize,
    },
    /// Input `name` does not have the model's type for it (element type, rank, a fixed dim) or
    /// holds NaN or an infinity.
    #[error("{message}")]
    Input {
        /// The input, as the model names it.
        name: String,
        /// What is wrong, with the expected type.
        message: String,
    },
    /// A value would not fit the memory qc allows at this batch (checked before allocating).
    #[error("{0}")]
    TooLarge(String),
    /// A step failed during the run (an op the evaluator refuses for these values).
    #[error("{0}")]
    Run(String),
}

/// A compile error.
pub(crate) fn err(msg: impl Into<String>) -> CodegenError {
    CodegenError::Compile(msg.into())
}

/// A run error.
pub(crate) fn run_err(msg: impl Into<String>) -> CodegenError {
    CodegenError::Run(msg.into())
}
