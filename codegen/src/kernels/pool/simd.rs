//! 8-bit pooling kernels: max pooling and the global mean (below).
//!
//! Max pooling is a Cranelift function specialized to one layer (channels, taps and the
//! window table fixed when it is compiled). It runs one NHWC image at a time, read from a copy
//! followed by one pixel of the type's lowest value, where the window table's padding marker
//! points: the padding never wins, and a window entirely in the padding gives the lowest value,
//! as the evaluator does. Per output position, 16 channels at a time: the first tap's bytes, then
//! `umax` (u8) or `smax` (i8) with each other tap's.
//!
//! Bounds (see [`crate::kernels::window::jit`], which checks them before the call): the kernel reads 16
//! bytes at `pixel + 16g` with `16g < C`, so at most 16 bytes past the pixel's `C` ([`SLACK`]);
//! it writes 16 bytes at `out + pos·C + 16g` for whole groups (`16g + 16 ≤ C`) and single bytes
//! below `out + pos·C + C` for the last, partial one.

use crate::emit::emit_loop;
use crate::emit::{Epilogue, small, store_lanes};
use crate::jit::{Jit, JitCode};
use crate::kernels::window::Window;
use crate::kernels::window::halo::Scratch;
use crate::kernels::window::jit::{self as window_jit, ImageFn};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;
use std::sync::Arc;

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
                store_lanes(b, m, o_addr, lanes);
            };
            window_jit::emit_groups(b, c, 16, group);
        })?;
        Ok(MaxPoolKernel { f })
    }

    /// Runs one NHWC image (`plane · C` bytes) into `out` (`positions · C` bytes), through its
    /// copy in `scratch` ([`MaxPoolKernel::scratch_len`] bytes).
    pub(crate) fn run_image(&self, img: &[u8], out: &mut [u8], scratch: &mut Scratch<'_>) -> Result<(), String> {
        self.f.run_image(img, out, scratch)
    }

    /// The bytes of the buffer it copies an image into.
    pub(crate) fn scratch_len(&self) -> usize {
        self.f.scratch_len()
    }

    /// Its function for a direct call on one image (see [`crate::direct`]).
    pub(crate) fn direct(&self) -> crate::direct::Direct {
        self.f.direct()
    }
}

/// The 8-bit global mean (f32 requantization) as a Cranelift function specialized to the
/// channels, plane size, zero points and multiplier: per image and group of 8 channels, the
/// bytes of every pixel are widened and summed into two i32x4 accumulators that start at
/// `−zp_x·h·w`, then requantized by the GEMM's epilogue ([`Epilogue`]) with `M = s_x/(s_y·h·w)`.
/// Channels past the last multiple of 8 are left to the caller.
///
/// Bounds: for `batch` images it reads 8 bytes at `x + i·image + p·C + 8g` with `p < plane` and
/// `8g + 8 ≤ C` (whole groups only), so below `batch·image`, and writes 8 bytes at
/// `out + i·C + 8g`, below `batch·C`; [`GlobalMeanKernel::run`] checks both lengths.
pub struct GlobalMeanKernel {
    f: crate::jit::RowsFn,
    c: usize,
    plane: usize,
    _code: Arc<JitCode>,
}

/// What a global mean kernel is specialized to.
pub struct MeanSpec {
    /// Channels.
    pub c: usize,
    /// `h · w`.
    pub plane: usize,
    /// The input zero point and storage.
    pub zp_x: i32,
    /// See `zp_x`.
    pub signed: bool,
    /// The requantization multiplier (finite).
    pub m: f32,
    /// The output zero point.
    pub zp_y: i32,
    /// The output clamp.
    pub lo: i32,
    /// See `lo`.
    pub hi: i32,
}

impl GlobalMeanKernel {
    /// Compiles the kernel; an error without whole groups of 8 channels or with a multiplier
    /// that is not finite.
    pub fn compile(s: &MeanSpec) -> Result<GlobalMeanKernel, String> {
        let (c, plane) = (s.c, s.plane);
        if c < 8 || plane == 0 || !s.m.is_finite() {
            return Err("the mean kernel needs 8 channels or more, pixels and a finite multiplier".into());
        }
        let bias = i32::try_from(-(s.zp_x as i64) * plane as i64).map_err(|_| "the mean's sum leaves i32")?;
        let (signed, m) = (s.signed, s.m);
        let (zp_y, lo, hi) = (s.zp_y, s.lo, s.hi);
        let mut jit = Jit::new()?;
        let ptr = jit.pointer_type();
        let id = jit.define(&[ptr, ptr, types::I64], |b, args| {
            let (x, out, batch) = (args[0], args[1], args[2]);
            let raw = MemFlagsData::new().with_notrap();
            let zero = b.ins().iconst(types::I64, 0);
            emit_loop(b, zero, batch, |b, img| {
                let off = b.ins().imul_imm_s(img, (c * plane) as i64);
                let x_img = b.ins().iadd(x, off);
                let off = b.ins().imul_imm_s(img, c as i64);
                let o_img = b.ins().iadd(out, off);
                let groups = b.ins().iconst(types::I64, (c / 8) as i64);
                emit_loop(b, zero, groups, |b, g| {
                    let ch = b.ins().imul_imm_s(g, 8);
                    let x_g = b.ins().iadd(x_img, ch);
                    let start = {
                        let k = b.ins().iconst(types::I32, bias as i64);
                        b.ins().splat(types::I32X4, k)
                    };
                    let acc = [b.declare_var(types::I32X4), b.declare_var(types::I32X4)];
                    for &a in &acc {
                        b.def_var(a, start);
                    }
                    let pixels = b.ins().iconst(types::I64, plane as i64);
                    emit_loop(b, zero, pixels, |b, p| {
                        let off = b.ins().imul_imm_s(p, c as i64);
                        let addr = b.ins().iadd(x_g, off);
                        let v = if signed { b.ins().sload8x8(raw, addr, 0) } else { b.ins().uload8x8(raw, addr, 0) };
                        for (half, &a) in acc.iter().enumerate() {
                            let w = if half == 0 { b.ins().swiden_low(v) } else { b.ins().swiden_high(v) };
                            let sum = b.use_var(a);
                            let sum = b.ins().iadd(sum, w);
                            b.def_var(a, sum);
                        }
                    });
                    let epilogue = Epilogue::new(b, zp_y, lo, hi, small(&[m]));
                    let mv = {
                        let k = b.ins().f32const(m);
                        b.ins().splat(types::F32X4, k)
                    };
                    let q = acc.map(|a| {
                        let sum = b.use_var(a);
                        epilogue.apply(b, sum, mv)
                    });
                    let o_addr = b.ins().iadd(o_img, ch);
                    let bytes = epilogue.bytes(b, &q);
                    store_lanes(b, bytes, o_addr, 8);
                });
            });
            b.ins().return_(&[]);
        })?;
        let code = Arc::new(jit.finish()?);
        let f = code.function(id)?;
        Ok(GlobalMeanKernel { f, c, plane, _code: code })
    }

    /// Its function for a direct call on one image (see [`crate::direct`]), which does all of
    /// the mean when C is a multiple of 8.
    pub(crate) fn direct(&self) -> Option<crate::direct::Direct> {
        self.c.is_multiple_of(8).then(|| crate::direct::Direct {
            f: crate::direct::DirectFn::Rows { f: self.f, m: 1 },
            input: self.c * self.plane,
            output: self.c,
        })
    }

    /// Runs `batch` NHWC images (`x`) into `[batch][C]` bytes (`y`), the whole groups of 8
    /// channels only.
    pub fn run(&self, x: &[u8], batch: usize, y: &mut [u8]) -> Result<(), String> {
        if x.len() != batch * self.c * self.plane || y.len() != batch * self.c {
            return Err(format!("a mean kernel got {} and {} bytes for {batch} images", x.len(), y.len()));
        }
        // SAFETY: the kernel reads below `batch·C·plane` bytes of `x` and writes below `batch·C`
        // of `y` (its bounds; both lengths checked above) and nothing else.
        unsafe { (self.f)(x.as_ptr(), y.as_mut_ptr(), batch as i64) };
        Ok(())
    }
}
