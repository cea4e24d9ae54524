//! 8-bit max pooling as a Cranelift function specialized to one layer (channels, taps and the
//! window table fixed when it is compiled). It runs one NHWC image at a time, read from a copy
//! followed by one pixel of the type's lowest value, where the window table's padding marker
//! points: the padding never wins, and a window entirely in the padding gives the lowest value,
//! as the evaluator does. Per output position, 16 channels at a time: the first tap's bytes, then
//! `umax` (u8) or `smax` (i8) with each other tap's.
//!
//! Bounds (see [`crate::window_jit`], which checks them before the call): the kernel reads 16
//! bytes at `pixel + 16g` with `16g < C`, so at most 16 bytes past the pixel's `C` ([`SLACK`]);
//! it writes 16 bytes at `out + pos·C + 16g` for whole groups (`16g + 16 ≤ C`) and single bytes
//! below `out + pos·C + C` for the last, partial one.

use crate::window::Window;
use crate::window_jit::{self, ImageFn};
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;

/// A compiled max pooling kernel.
pub struct MaxPoolKernel {
    f: ImageFn,
}

/// Bytes past the padding pixel that the kernel may read: 16-byte loads of the last group.
const SLACK: usize = 16;

impl MaxPoolKernel {
    /// Compiles max pooling of `c`-channel images over `window`, on i8 (`signed`) or u8 bytes.
    pub fn compile(c: usize, window: &Window, signed: bool) -> Result<MaxPoolKernel, String> {
        let taps = window.taps;
        let lowest = if signed { 0x80 } else { 0 };
        let f = window_jit::compile(window, c, lowest, SLACK, |b, pixels, o_pos| {
            let raw = MemFlagsData::new().with_notrap();
            let little = MemFlagsData::new().with_endianness(Endianness::Little);
            let group = |b: &mut FunctionBuilder, g: Value, lanes: usize| {
                let ch = b.ins().imul_imm_s(g, 16);
                let load = |b: &mut FunctionBuilder, t: usize| {
                    let a = b.ins().iadd(pixels[t], ch);
                    b.ins().load(types::I8X16, raw, a, 0)
                };
                let mut m = load(b, 0);
                for t in 1..taps {
                    let v = load(b, t);
                    m = if signed { b.ins().smax(m, v) } else { b.ins().umax(m, v) };
                }
                let o_addr = b.ins().iadd(o_pos, ch);
                if lanes == 16 {
                    b.ins().store(raw, m, o_addr, 0);
                    return;
                }
                let mut t = 0;
                if lanes >= 8 {
                    let words = b.ins().bitcast(types::I64X2, little, m);
                    let word = b.ins().extractlane(words, 0);
                    b.ins().store(raw, word, o_addr, 0);
                    t = 8;
                }
                for t in t..lanes {
                    let byte = b.ins().extractlane(m, t as u8);
                    b.ins().store(raw, byte, o_addr, t as i32);
                }
            };
            window_jit::emit_groups(b, c, 16, group);
        })?;
        Ok(MaxPoolKernel { f })
    }

    /// Runs one NHWC image (`plane · C` bytes) into `out` (`positions · C` bytes).
    pub fn run_image(&self, img: &[u8], out: &mut [u8]) -> Result<(), String> {
        self.f.run_image(img, out)
    }
}
