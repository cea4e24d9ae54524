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
//! Bounds (see [`crate::window_jit`], which checks them before the call): the kernel reads 8
//! bytes at `pixel + 8g` with `8g < C`, so at most 8 bytes past the pixel's `C` ([`SLACK`]); it
//! writes 8 bytes at `out + pos·C + 8g` for whole groups (`8g + 8 ≤ C`) and single bytes below
//! `out + pos·C + C` for the last, partial one; and it reads its own tables.

use crate::gemm_simd::{Epilogue, pmaddwd, store_bytes};
use crate::window::Window;
use crate::window_jit::{self, ImageFn};
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;

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
    f: ImageFn,
    _tables: Box<Tables>,
}

struct Tables {
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
            weights: weights.into_boxed_slice(),
            bias: bias.into_boxed_slice(),
            mult: mult.into_boxed_slice(),
        });
        let addr = |p: *const u8| p as i64;
        let wt = addr(tables.weights.as_ptr().cast());
        let (bt, mt) = (addr(tables.bias.as_ptr().cast()), addr(tables.mult.as_ptr().cast()));
        let (x_signed, unsigned_out) = (s.x_signed, s.lo >= 0);
        let (zp_y, lo, hi) = (s.zp_y, s.lo, s.hi);
        let pad = if s.x_signed { s.zp_x as i8 as u8 } else { s.zp_x as u8 };
        let f = window_jit::compile(w, c, pad, SLACK, |b, pixels, o_pos| {
            let raw = MemFlagsData::new().with_notrap();
            let little = MemFlagsData::new().with_endianness(Endianness::Little);
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
            window_jit::emit_groups(b, c, 8, group);
        })?;
        Ok(DepthwiseKernel { f, _tables: tables })
    }

    /// Runs one NHWC image (`plane · C` bytes) into `out` (`positions · C` bytes).
    pub fn run_image(&self, img: &[u8], out: &mut [u8]) -> Result<(), String> {
        self.f.run_image(img, out)
    }
}

/// Bytes past the padding pixel that the kernel may read: 8-byte loads of the last group.
const SLACK: usize = 8;

/// `shuffle` masks that interleave the i16 lanes 0–3 (4–7) of two vectors, which the x64
/// backend emits as `punpcklwd` (`punpckhwd`).
const PUNPCKLWD: [u8; 16] = [0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23];
const PUNPCKHWD: [u8; 16] = [8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31];
