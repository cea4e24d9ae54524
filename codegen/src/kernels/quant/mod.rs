//! Per-tensor quantize (f32 → 8 bits) and dequantize (8 bits → f32) as Cranelift functions
//! specialized to one value's scale, zero point and storage, 16 elements per iteration; the
//! elements past the last multiple of 16 go through the evaluator's scalar functions. On the
//! AVX-512 levels the 512-bit `std::arch` kernels of `native.rs` run instead (BERT-mini's 52
//! quantizes 0.87 → 0.35 ms on Zen 4: the 128-bit kernels were bound by `divps`).
//!
//! Both repeat the evaluator's f32 operations lane by lane, so they equal it exactly:
//! quantize is `clamp(rne(x / s) + zp, lo, hi)` (`divps`, `roundps` to nearest even, `addps`; a NaN
//! gives the zero point, ±∞ the clamp's ends), dequantize `s · f32(q − zp)`.
//!
//! Bounds: the kernels read and write `16·n` elements for the `n` they are given, which
//! [`QuantizeKernel::run`] and [`DequantizeKernel::run`] derive from the lengths of their slices.

pub mod lanes;
#[cfg(target_arch = "x86_64")]
mod native;

use crate::emit::emit_loop;
use crate::emit::store_bytes;
use crate::jit::{Jit, JitCode};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;
use qc_ir::eval::{dequantize_value, quantize_value};
use qc_ir::{ScalarType, TensorType};
use std::sync::Arc;

/// One value's per-tensor 8-bit quantization.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Q8 {
    pub(crate) scale: f32,
    pub(crate) zp: i32,
    pub(crate) signed: bool,
}

impl Q8 {
    /// The parameters of a per-tensor 8-bit type, or `None`.
    pub(crate) fn of(t: &TensorType) -> Option<Q8> {
        let q = t.elem.quant()?;
        if q.axis.is_some() || !matches!(q.storage, ScalarType::I8 | ScalarType::U8) {
            return None;
        }
        Some(Q8 { scale: q.scales[0], zp: q.zero_points[0], signed: q.storage == ScalarType::I8 })
    }

    /// The integer a stored byte holds.
    pub(crate) fn value(self, b: u8) -> i32 {
        if self.signed { b as i8 as i32 } else { b as i32 }
    }

    /// The storage's range.
    pub(crate) fn range(self) -> (i32, i32) {
        if self.signed { (-128, 127) } else { (0, 255) }
    }
}

type Kernel = crate::jit::RowsFn;

/// Compiles `f(src, dst, n)` running `body(b, src + 16·i elements, dst + 16·i elements)` for
/// `i < n`; `src_bytes`/`dst_bytes` are an element's sizes.
fn compile(
    src_bytes: i64,
    dst_bytes: i64,
    body: impl Fn(&mut FunctionBuilder, Value, Value),
) -> Result<(Kernel, Arc<JitCode>), String> {
    let mut jit = Jit::new()?;
    let ptr = jit.pointer_type();
    let id = jit.define(&[ptr, ptr, types::I64], |b, args| {
        let (src, dst, n) = (args[0], args[1], args[2]);
        let zero = b.ins().iconst(types::I64, 0);
        emit_loop(b, zero, n, |b, i| {
            let s_off = b.ins().imul_imm_s(i, 16 * src_bytes);
            let d_off = b.ins().imul_imm_s(i, 16 * dst_bytes);
            let (s, d) = (b.ins().iadd(src, s_off), b.ins().iadd(dst, d_off));
            body(b, s, d);
        });
        b.ins().return_(&[]);
    })?;
    let code = Arc::new(jit.finish()?);
    let f = code.function(id)?;
    Ok((f, code))
}

/// Runs a kernel over the whole groups of 16 elements of `src` into `dst` (of the same length,
/// checked); returns how many groups it did.
///
/// # Safety
/// `f` must be a kernel of this module compiled for elements of `S` (read) and `D` (written).
unsafe fn call<S, D>(f: Kernel, src: &[S], dst: &mut [D]) -> Result<usize, String> {
    if src.len() != dst.len() {
        return Err(format!("a (de)quantize of {} values into {}", src.len(), dst.len()));
    }
    let n = src.len() / 16;
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: the kernel, compiled for elements of `S` and `D` (the caller's promise), reads
    // 16·n ≤ len elements of `src` and writes 16·n of `dst`.
    unsafe { f(src.as_ptr().cast(), dst.as_mut_ptr().cast(), n as i64) };
    Ok(n)
}

fn splat_f(b: &mut FunctionBuilder, v: f32) -> Value {
    let c = b.ins().f32const(v);
    b.ins().splat(types::F32X4, c)
}

/// Whether the 512-bit `std::arch` kernels of `native.rs` run the (de)quantize: on the AVX-512
/// levels of a CPU that has it.
fn use_native(isa: crate::target::Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    return isa.avx512() && native::available();
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// A compiled quantize.
pub(crate) struct QuantizeKernel {
    f: Kernel,
    q: Q8,
    _code: Arc<JitCode>,
    /// The 512-bit `std::arch` kernel runs instead of `f`.
    native: bool,
}

impl QuantizeKernel {
    /// Compiles the quantize of f32 values to `q` for `isa`.
    pub(crate) fn compile(q: Q8, isa: crate::target::Isa) -> Result<QuantizeKernel, String> {
        let (lo, hi) = q.range();
        let (f, code) = compile(4, 1, |b, src, dst| {
            let raw = MemFlagsData::new().with_notrap();
            let little = MemFlagsData::new().with_endianness(Endianness::Little);
            let (scale, zp) = (splat_f(b, q.scale), splat_f(b, q.zp as f32));
            let (lo_f, hi_f) = (splat_f(b, lo as f32), splat_f(b, hi as f32));
            let ints: Vec<Value> = (0..4)
                .map(|v| {
                    let x = b.ins().load(types::F32X4, raw, src, 16 * v);
                    let x = b.ins().fdiv(x, scale);
                    let x = b.ins().nearest(x);
                    let x = b.ins().fadd(x, zp);
                    // NaN → zp; then maxps(x, lo), minps(x, hi) in the forms the backend matches.
                    let number = b.ins().fcmp(FloatCC::Equal, x, x);
                    let number = b.ins().bitcast(types::F32X4, little, number);
                    let x = b.ins().bitselect(number, x, zp);
                    let above = b.ins().fcmp(FloatCC::LessThan, lo_f, x);
                    let above = b.ins().bitcast(types::F32X4, little, above);
                    let x = b.ins().bitselect(above, x, lo_f);
                    let below = b.ins().fcmp(FloatCC::LessThan, x, hi_f);
                    let below = b.ins().bitcast(types::F32X4, little, below);
                    let x = b.ins().bitselect(below, x, hi_f);
                    b.ins().x86_cvtt2dq(types::I32X4, x)
                })
                .collect();
            for half in 0..2 {
                let at = b.ins().iadd_imm_s(dst, 8 * half as i64);
                store_bytes(b, [ints[2 * half], ints[2 * half + 1]], !q.signed, at, 8);
            }
        })?;
        Ok(QuantizeKernel { f, q, _code: code, native: use_native(isa) })
    }

    /// Quantizes `x` into `out` (as many bytes as values).
    pub(crate) fn run(&self, x: &[f32], out: &mut [u8]) -> Result<(), String> {
        let done = match self.native {
            #[cfg(target_arch = "x86_64")]
            true if x.len() == out.len() => {
                // SAFETY: `native` is set only where the CPU has AVX-512 F and BW.
                unsafe { native::quantize(self.q, x, out) }
            }
            // SAFETY: a quantize kernel reads f32 and writes bytes.
            _ => 16 * unsafe { call(self.f, x, out)? },
        };
        let (lo, hi) = self.q.range();
        for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
            *o = quantize_value(v, self.q.scale, self.q.zp, lo, hi) as u8;
        }
        Ok(())
    }
}

/// A compiled dequantize.
pub(crate) struct DequantizeKernel {
    f: Kernel,
    q: Q8,
    _code: Arc<JitCode>,
    /// The 512-bit `std::arch` kernel runs instead of `f`.
    native: bool,
}

impl DequantizeKernel {
    /// Compiles the dequantize of values stored as `q` for `isa`.
    pub(crate) fn compile(q: Q8, isa: crate::target::Isa) -> Result<DequantizeKernel, String> {
        let (f, code) = compile(1, 4, |b, src, dst| {
            let raw = MemFlagsData::new().with_notrap();
            let scale = splat_f(b, q.scale);
            let zp = {
                let c = b.ins().iconst(types::I32, q.zp as i64);
                b.ins().splat(types::I32X4, c)
            };
            let bytes = b.ins().load(types::I8X16, raw, src, 0);
            let halves = if q.signed {
                [b.ins().swiden_low(bytes), b.ins().swiden_high(bytes)]
            } else {
                [b.ins().uwiden_low(bytes), b.ins().uwiden_high(bytes)]
            };
            for (h, &half) in halves.iter().enumerate() {
                for (l, wide) in [b.ins().swiden_low(half), b.ins().swiden_high(half)].into_iter().enumerate() {
                    let v = b.ins().isub(wide, zp);
                    let v = b.ins().fcvt_from_sint(types::F32X4, v);
                    let v = b.ins().fmul(scale, v);
                    b.ins().store(raw, v, dst, (32 * h + 16 * l) as i32);
                }
            }
        })?;
        Ok(DequantizeKernel { f, q, _code: code, native: use_native(isa) })
    }

    /// Dequantizes `bytes` into `out` (as many values as bytes).
    pub(crate) fn run(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
        let done = match self.native {
            #[cfg(target_arch = "x86_64")]
            true if bytes.len() == out.len() => {
                // SAFETY: `native` is set only where the CPU has AVX-512 F and BW.
                unsafe { native::dequantize(self.q, bytes, out) }
            }
            // SAFETY: a dequantize kernel reads bytes and writes f32.
            _ => 16 * unsafe { call(self.f, bytes, out)? },
        };
        for (o, &b) in out[done..].iter_mut().zip(&bytes[done..]) {
            *o = dequantize_value(self.q.value(b), self.q.scale, self.q.zp);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that stress rounding and clamping: halves, ±0, tiny and huge magnitudes, ±∞, NaN,
    /// and a spread of ordinary ones; 61 of them, so that the scalar tail runs too.
    fn values() -> Vec<f32> {
        let mut v = vec![0.0f32, -0.0, 0.5, 1.5, 2.5, -2.5, -0.5, 1e-9, 3.0e7, -3.0e7, 5.0e6, f32::INFINITY, f32::NEG_INFINITY];
        v.extend([f32::NAN, 0.12345, -7.77, 4_194_303.5, -4_194_304.5, 8_388_609.0, 1e30, -1e30, f32::MIN_POSITIVE]);
        v.extend((0..39).map(|i| (i as f32 - 19.0) * 0.37));
        v
    }

    #[test]
    fn quantize_kernel_equals_the_evaluator() {
        let xs = values();
        for &scale in &[1e-3f32, 0.0039, 0.5, 1.0, 1e9, 3e-39] {
            for (zp, signed) in [(0, false), (128, false), (255, false), (-3, true), (0, true), (127, true)] {
                let q = Q8 { scale, zp, signed };
                for isa in crate::target::Isa::host_levels() {
                    let kernel = QuantizeKernel::compile(q, isa).expect("compiles");
                    for n in [0, 15, 16, 17, xs.len()] {
                        let mut out = vec![0u8; n];
                        kernel.run(&xs[..n], &mut out).expect("runs");
                        let (lo, hi) = q.range();
                        for (&x, &o) in xs.iter().zip(&out) {
                            assert_eq!(o, quantize_value(x, scale, zp, lo, hi) as u8, "{x} / {scale} + {zp} on {isa}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dequantize_kernel_equals_the_evaluator() {
        let bytes: Vec<u8> = (0..=255u8).chain(0..7).collect();
        for &scale in &[1e-3f32, 0.0039, 0.5, 1.0, 1e9, 3e-39] {
            for (zp, signed) in [(0, false), (128, false), (255, false), (-3, true), (0, true), (127, true)] {
                let q = Q8 { scale, zp, signed };
                for isa in crate::target::Isa::host_levels() {
                    let kernel = DequantizeKernel::compile(q, isa).expect("compiles");
                    let mut out = vec![0f32; bytes.len()];
                    kernel.run(&bytes, &mut out).expect("runs");
                    for (&b, &o) in bytes.iter().zip(&out) {
                        assert_eq!(o.to_bits(), dequantize_value(q.value(b), scale, zp).to_bits(), "{b} {scale} {zp} on {isa}");
                    }
                }
            }
        }
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let q = Q8 { scale: 0.1, zp: 3, signed: false };
        for isa in crate::target::Isa::host_levels() {
            assert!(QuantizeKernel::compile(q, isa).unwrap().run(&[0.0; 17], &mut [0u8; 16]).is_err());
            assert!(DequantizeKernel::compile(q, isa).unwrap().run(&[0u8; 16], &mut [0.0; 17]).is_err());
        }
    }
}
