//! The kernels' contract with the runtime: what a windowed kernel ([`WindowKernel`]) offers the
//! step that runs it. Kernel modules implement it; they do not see the plan or the run loop.

use crate::direct::Direct;
use crate::kernels::window::halo::Scratch;

/// A kernel over a sliding window of NHWC images (see [`crate::kernels::window`]).
pub trait WindowKernel: Send + Sync {
    /// Runs `batch` NHWC images into `y` (lengths checked inside), with its buffer `scratch`
    /// ([`WindowKernel::scratch_len`] bytes, kept from run to run).
    fn run(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Scratch<'_>) -> Result<(), String>;
    /// The bytes of the buffer it keeps in the arena from run to run (an image with its border).
    fn scratch_len(&self) -> usize {
        0
    }
    /// The output's logical `[C, oh, ow]`.
    fn out_dims(&self) -> [usize; 3];
    /// Integer operations (2 · multiply-adds) for `batch` images; 0 for pooling.
    fn ops(&self, batch: usize) -> u64;
    /// Whether JIT-compiled code does the arithmetic.
    fn jit(&self) -> bool;
    /// Which kernel and path it is, for people and the codegen case files
    /// (`conv 3x3 in place, gemm vnni`).
    fn describe(&self) -> String;
    /// Its JIT function, when one call of it runs an image (see [`crate::direct`]).
    fn direct(&self) -> Option<Direct> {
        None
    }
}
