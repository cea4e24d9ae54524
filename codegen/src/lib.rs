//! `qc-codegen`: lowering verified QIR to machine code with Cranelift.
//!
//! [`CompiledModel::compile_with`] takes a graph and a target ([`CodegenOptions`]: an ISA level
//! and threads, [`target`]) and goes through three stages, each in its own module: `lower.rs`
//! picks each op's kernel (instruction selection), `steps.rs` lays the kernels' activations out
//! in the arena with their layouts and lifetimes, and [`plan`] packs them; `runtime.rs` runs the
//! steps on the calling thread's arena. The kernels themselves — the integer GEMM ([`gemm`],
//! scalar and 128-bit vector paths) specialized to one layer; convolutions reading their taps in
//! place ([`conv`]); depthwise convolution, max pooling, the global mean, quantize and dequantize
//! ([`depthwise`], [`pool`]); the products of dynamically quantized layers ([`integer`]); Rust
//! loops for residual adds and table activations ([`add`], [`lut`]) — know nothing of the plan
//! or the run loop: windowed kernels meet it through one trait (`kernel.rs`). The JIT wrapper
//! ([`jit`]) is the one place JIT code becomes a callable function. Every other op runs the
//! evaluator's implementation. Everything is checked bit for bit against the reference evaluator.
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod dequant_chain;
mod direct;
mod emit;
mod error;
pub mod jit;
mod kernel;
pub mod kernels;
pub mod layout;
mod lower;
pub mod model;
pub mod plan;
mod runtime;
mod steps;
pub mod target;
mod threads;

pub use error::CodegenError;
pub use gemm::{GemmKernel, GemmSpec, Path};
pub use kernels::quant::lanes;
pub use kernels::{add, conv, depthwise, gemm, integer, lut, pool, window};
pub use model::{CompiledModel, MemoryPlan, StepProfile};
pub use target::{CodegenOptions, Isa};
