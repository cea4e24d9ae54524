//! `qc-codegen`: lowering verified QIR to machine code with Cranelift.
//!
//! Today: the JIT wrapper ([`jit`]) and the integer GEMM kernel ([`gemm`]), specialized to one
//! layer and checked bit for bit against the reference evaluator. The execution plan, the other
//! kernels and the vector paths are the open JIT issue's.
#![warn(missing_docs)]

pub mod gemm;
mod gemm_simd;
pub mod jit;

pub use gemm::{GemmKernel, GemmSpec, Path};
