//! `qc-codegen`: lowering verified QIR to machine code with Cranelift.
//!
//! The JIT wrapper ([`jit`]); the integer GEMM kernel ([`gemm`], scalar and 128-bit vector
//! paths) specialized to one layer; convolutions as GEMMs over channels-last patches ([`conv`]);
//! depthwise convolution, max pooling, the global mean, quantize and dequantize as kernels of
//! their own ([`depthwise`], [`pool`]); the products of dynamically quantized layers as GEMMs
//! writing i32 ([`integer`]); Rust table kernels for residual adds and activations ([`add`],
//! [`lut`]); and
//! [`CompiledModel`], which runs a graph on them and every other op on the evaluator's
//! implementation. Everything is checked bit for bit against the reference evaluator.
#![warn(missing_docs)]

pub mod add;
pub mod conv;
pub mod depthwise;
mod depthwise_rows;
mod depthwise_simd;
mod dequant_chain;
mod direct;
pub mod gemm;
mod gemm_simd;
mod halo;
pub mod integer;
pub mod jit;
pub mod lanes;
pub mod layout;
pub mod lut;
pub mod model;
pub mod plan;
pub mod pool;
mod pool_simd;
mod quant_simd;
pub mod window;
mod window_jit;

pub use gemm::{GemmKernel, GemmSpec, Path};
pub use model::{CodegenError, CompiledModel, MemoryPlan, StepProfile};
