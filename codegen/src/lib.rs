//! `qc-codegen`: lowering verified QIR to machine code with Cranelift.
//!
//! Today: the JIT wrapper ([`jit`]), the integer GEMM kernel ([`gemm`], scalar and 128-bit vector
//! paths) specialized to one layer and checked bit for bit against the reference evaluator, and
//! [`CompiledModel`], which runs gemm/matmul/conv layers on those kernels and every other op on the
//! evaluator's implementation. The memory plan, the remaining kernels and the C ABI are the open
//! JIT issue's.
#![warn(missing_docs)]

pub mod gemm;
mod gemm_simd;
pub mod jit;
pub mod model;

pub use gemm::{GemmKernel, GemmSpec, Path};
pub use model::{CodegenError, CompiledModel, StepProfile};
