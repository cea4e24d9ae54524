//! The depthwise convolution as a Cranelift function specialized to one layer: channels, taps,
//! the window table, zero points, weights, bias and requantization constants are fixed when it is
//! compiled. It runs one NHWC image at a time, read from a copy followed by one pixel of the input
//! zero point, so that a tap in the padding reads that pixel instead of branching.
//!
//! Per output position, the taps' pixel addresses come from the window table (byte offsets,
//! `pixel · C`, the padding marker pointing at the zero-point pixel). Channels go 8 at a time:
//! the bytes of two taps are widened to i16 (`uload8x8`/`sload8x8`) and interleaved
//! (`punpcklwd`/`punpckhwd`), so one `pmaddwd` with weights packed as `[tap pair][channel][2]`
//! gives 4 channels × 2 taps, added into i32 accumulators (an odd last tap pairs with a zero
//! weight). Padding reads `x = zp_x`, so the bias starts at `b − zp_x·Σ_taps w` and the taps add
//! the raw bytes: `Σ (x − zp_x)·w = Σ x·w − zp_x·Σ w`. The epilogue is the GEMM's: f32
//! requantization, clamp in f32, narrow to bytes. `pmaddwd` is SSE2, so this runs on every x64.
//!
//! Bounds (checked by [`DepthwiseKernel::run_image`] before the call): the kernel reads 8 bytes at
//! `x + off + 8g` with `off ≤ plane·C` (a table entry, checked as the table is built) and
//! `8g < C`, so below `(plane + 1)·C + 8` = [`DepthwiseKernel::scratch_len`]; it writes 8 bytes
//! at `out + pos·C + 8g` for whole groups (`8g + 8 ≤ C`) and single bytes below `out + pos·C + C`
//! for the last, partial one, so below `positions·C`; and it reads its own tables.

use crate::gemm::emit_loop;
use crate::gemm_simd::{Epilogue, pmaddwd, store_bytes};
use crate::jit::{Jit, JitCode};
use crate::window::Window;
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;
use std::sync::Arc;

/// Everything a depthwise kernel is specialized to.
pub struct DepthwiseSpec<'a> {
    /// Channels (in = out).
    pub c: usize,
    /// The sliding window.
    pub window: &'a Window,
    /// `w − zp_w`, `[taps][C]`.
    pub weights: &'a [i32],
    /// The i32 bias of each channel.
    pub bias: &'a [i32],
    /// The f32 requantization multiplier of each channel (finite).
    pub mult: &'a [f32],
    /// The input zero point, as stored (i8 or u8).
    pub zp_x: i32,
    /// Whether the input is stored as i8.
    pub x_signed: bool,
    /// The output zero point.
    pub zp_y: i32,
    /// The output clamp.
    pub lo: i32,
    /// See `lo`.
    pub hi: i32,
}

/// A compiled depthwise kernel.
pub struct DepthwiseKernel {
    f: unsafe extern "C" fn(*const u8, *mut u8),
    c: usize,
    plane: usize,
    positions: usize,
    pad_byte: u8,
    _tables: Box<Tables>,
    _code: Arc<JitCode>,
}

struct Tables {
    /// `[position][tap]`: byte offsets of the tap's pixel in the padded image.
    offsets: Box<[u32]>,
    /// `[group of 8 channels][tap pair][half][4 channels][2 taps]` as i16.
    weights: Box<[i16]>,
    /// `b − zp_x·Σ w`, padded to whole groups.
    bias: Box<[i32]>,
    /// Multipliers, padded to whole groups.
    mult: Box<[f32]>,
}

impl DepthwiseKernel {
    /// Compiles the kernel; an error when the tables are inconsistent or the weights do not fit
    /// i16 (they are `w − zp_w` of 8-bit weights, so they always do).
    pub fn compile(s: &DepthwiseSpec) -> Result<DepthwiseKernel, String> {
        let (c, w) = (s.c, s.window);
        let taps = w.taps;
        if c == 0 || taps == 0 || s.weights.len() != taps * c || s.bias.len() != c || s.mult.len() != c {
            return Err("inconsistent depthwise kernel tables".into());
        }
        if s.mult.iter().any(|m| !m.is_finite()) {
            return Err("the depthwise kernel requantizes with finite f32 multipliers".into());
        }
        let groups = c.div_ceil(8);
        let pairs = taps.div_ceil(2);
        let mut offsets = Vec::with_capacity(w.pixels.len());
        for &p in &w.pixels {
            // Every entry is a pixel of the plane or the marker (= plane): the zero-point pixel.
            if p as usize > w.plane {
                return Err("a window entry lies outside the plane".into());
            }
            offsets.push(u32::try_from(p as usize * c).map_err(|_| "the image is too large for the depthwise kernel")?);
        }
        let mut weights = vec![0i16; groups * pairs * 16];
        for ch in 0..c {
            let (g, lane) = (ch / 8, ch % 8);
            for t in 0..taps {
                let v = i16::try_from(s.weights[t * c + ch]).map_err(|_| "a depthwise weight does not fit i16")?;
                weights[(g * pairs + t / 2) * 16 + (lane / 4) * 8 + (lane % 4) * 2 + t % 2] = v;
            }
        }
        let mut bias = vec![0i32; groups * 8];
        let mut mult = vec![0f32; groups * 8];
        for ch in 0..c {
            let wsum: i64 = (0..taps).map(|t| s.weights[t * c + ch] as i64).sum();
            bias[ch] = i32::try_from(s.bias[ch] as i64 - s.zp_x as i64 * wsum).map_err(|_| "the folded bias leaves i32")?;
            mult[ch] = s.mult[ch];
        }
        let tables = Box::new(Tables {
            offsets: offsets.into_boxed_slice(),
            weights: weights.into_boxed_slice(),
            bias: bias.into_boxed_slice(),
            mult: mult.into_boxed_slice(),
        });
        let addr = |p: *const u8| p as i64;
        let (ot, wt) = (addr(tables.offsets.as_ptr().cast()), addr(tables.weights.as_ptr().cast()));
        let (bt, mt) = (addr(tables.bias.as_ptr().cast()), addr(tables.mult.as_ptr().cast()));
        let positions = w.positions;
        let (x_signed, unsigned_out) = (s.x_signed, s.lo >= 0);
        let (zp_y, lo, hi) = (s.zp_y, s.lo, s.hi);
        let mut jit = Jit::new()?;
        let ptr = jit.pointer_type();
        let id = jit.define(&[ptr, ptr], |b, args| {
            let (x, out) = (args[0], args[1]);
            let raw = MemFlagsData::new().with_notrap();
            let little = MemFlagsData::new().with_endianness(Endianness::Little);
            let zero = b.ins().iconst(types::I64, 0);
            let end = b.ins().iconst(types::I64, positions as i64);
            emit_loop(b, zero, end, |b, pos| {
                // The taps' pixel addresses.
                let row = b.ins().imul_imm_s(pos, 4 * taps as i64);
                let row = b.ins().iadd_imm_s(row, ot);
                let pixels: Vec<Value> = (0..taps)
                    .map(|t| {
                        let off = b.ins().uload32(raw, row, 4 * t as i32);
                        b.ins().iadd(x, off)
                    })
                    .collect();
                let o_pos = {
                    let off = b.ins().imul_imm_s(pos, c as i64);
                    b.ins().iadd(out, off)
                };
                // One group of 8 channels starting at byte `ch` (a value), `lanes` of them stored.
                let group = |b: &mut FunctionBuilder, g: Value, lanes: usize| {
                    let ch = b.ins().imul_imm_s(g, 8);
                    let ch4 = b.ins().imul_imm_s(g, 32);
                    let b_addr = b.ins().iadd_imm_s(ch4, bt);
                    let mut acc = [b.ins().load(types::I32X4, raw, b_addr, 0), b.ins().load(types::I32X4, raw, b_addr, 16)];
                    let w_base = b.ins().imul_imm_s(g, 32 * pairs as i64);
                    let w_base = b.ins().iadd_imm_s(w_base, wt);
                    let load = |b: &mut FunctionBuilder, t: usize| {
                        let a = b.ins().iadd(pixels[t], ch);
                        if x_signed { b.ins().sload8x8(raw, a, 0) } else { b.ins().uload8x8(raw, a, 0) }
                    };
                    for p in 0..pairs {
                        let x0 = load(b, 2 * p);
                        let x1 = if 2 * p + 1 < taps { load(b, 2 * p + 1) } else { x0 };
                        let (x0b, x1b) = (b.ins().bitcast(types::I8X16, little, x0), b.ins().bitcast(types::I8X16, little, x1));
                        for (half, mask) in [PUNPCKLWD, PUNPCKHWD].into_iter().enumerate() {
                            let mask = b.func.dfg.immediates.push(mask.as_slice().into());
                            let xs = b.ins().shuffle(x0b, x1b, mask);
                            let xs = b.ins().bitcast(types::I16X8, little, xs);
                            let wv = b.ins().load(types::I16X8, raw, w_base, (32 * p + 16 * half) as i32);
                            let prod = pmaddwd(b, xs, wv);
                            acc[half] = b.ins().iadd(acc[half], prod);
                        }
                    }
                    // Requantize as the GEMM does.
                    let epilogue = Epilogue::new(b, zp_y, lo, hi);
                    let m_addr = b.ins().iadd_imm_s(ch4, mt);
                    let q: Vec<Value> = (0..2)
                        .map(|half| {
                            let mv = b.ins().load(types::F32X4, raw, m_addr, 16 * half as i32);
                            epilogue.apply(b, acc[half], mv)
                        })
                        .collect();
                    let o_addr = b.ins().iadd(o_pos, ch);
                    store_bytes(b, [q[0], q[1]], unsigned_out, o_addr, lanes);
                };
                let full = c / 8;
                if full > 0 {
                    let end = b.ins().iconst(types::I64, full as i64);
                    emit_loop(b, zero, end, |b, g| group(b, g, 8));
                }
                if c % 8 != 0 {
                    let g = b.ins().iconst(types::I64, full as i64);
                    group(b, g, c % 8);
                }
            });
            b.ins().return_(&[]);
        })?;
        let code = Arc::new(jit.finish()?);
        // SAFETY: `id` is a finalized function of `code` with the signature (pointer, pointer)
        // -> (), in the host's System V calling convention.
        let f = unsafe { std::mem::transmute::<*const u8, unsafe extern "C" fn(*const u8, *mut u8)>(code.function(id)) };
        let pad_byte = if s.x_signed { s.zp_x as i8 as u8 } else { s.zp_x as u8 };
        Ok(DepthwiseKernel { f, c, plane: w.plane, positions, pad_byte, _tables: tables, _code: code })
    }

    /// The bytes [`DepthwiseKernel::run_image`] needs in its scratch buffer.
    pub fn scratch_len(&self) -> usize {
        (self.plane + 1) * self.c + 8
    }

    /// Runs one NHWC image (`plane · C` bytes) into `out` (`positions · C` bytes), through
    /// `scratch` ([`DepthwiseKernel::scratch_len`] bytes or more).
    pub fn run_image(&self, img: &[u8], scratch: &mut [u8], out: &mut [u8]) -> Result<(), String> {
        let image = self.plane * self.c;
        if img.len() != image || out.len() != self.positions * self.c || scratch.len() < self.scratch_len() {
            return Err(format!(
                "depthwise kernel: {} input, {} output and {} scratch bytes for {image}, {} and {}",
                img.len(),
                out.len(),
                scratch.len(),
                self.positions * self.c,
                self.scratch_len()
            ));
        }
        scratch[..image].copy_from_slice(img);
        scratch[image..image + self.c].fill(self.pad_byte);
        // SAFETY: the kernel reads below `scratch_len()` bytes of `scratch` and writes below
        // `positions · C` bytes of `out` (the module's bounds, both checked above), and reads its
        // own tables, which live as long as `self`.
        unsafe { (self.f)(scratch.as_ptr(), out.as_mut_ptr()) };
        Ok(())
    }
}

/// `shuffle` masks that interleave the i16 lanes 0–3 (4–7) of two vectors, which the x64
/// backend emits as `punpcklwd` (`punpckhwd`).
const PUNPCKLWD: [u8; 16] = [0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23];
const PUNPCKHWD: [u8; 16] = [8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31];
