//! The kernels, one folder or file per op: each builds its code with [`crate::jit::Jit`] and
//! the helpers of `emit.rs`, checks the lengths of what it reads and writes, and knows nothing of
//! the plan or the run loop (windowed kernels meet it through `crate::kernel::WindowKernel`).

pub mod add;
pub mod conv;
pub mod depthwise;
pub mod f32;
pub mod gemm;
pub mod integer;
pub mod lut;
pub mod mul;
pub mod pool;
pub mod quant;
pub mod window;
