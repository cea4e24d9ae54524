//! `qc-ir`: the QIR intermediate representation of the qc compiler.
//!
//! - [`types`]: tensor types, with quantization in the type (`real = scale * (q - zero_point)`);
//! - [`graph`]: the dataflow graph of SSA values and ops;
//! - [`ops`] and [`infer`]: the op set and each op's shape and type rule;
//! - [`text`]: the QIR text format (lexer, grammar, printer);
//! - [`verify`]: the verifier every pass output must pass;
//! - [`eval`]: the reference evaluator, the oracle for every optimization;
//! - [`cost`]: parameters, MACs and weight bytes per layer;
//! - [`diag`]: diagnostics with spans, rendered with a caret.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod attr;
pub mod cost;
pub mod diag;
pub mod eval;
pub mod graph;
pub mod infer;
pub mod ops;
pub mod requant;
pub mod tensor;
pub mod text;
pub mod types;
pub mod verify;
pub mod weights;

pub use attr::{Attr, Attrs};
pub use diag::Diagnostic;
pub use graph::{ConstValue, Graph, Loc, Node, NodeId, ValueId};
pub use ops::OpKind;
pub use tensor::Tensor;
pub use types::{Dim, ElemType, QuantParams, ScalarType, TensorType};
pub use weights::Weights;
