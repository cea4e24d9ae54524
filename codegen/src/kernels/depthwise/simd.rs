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
//! This is the portable path: the `sse4.1` level runs it. The AVX2 and AVX-512 levels run the
//! `std::arch` kernel of `native.rs` instead, which does the same arithmetic on 256- and 512-bit
//! vectors (a VNNI form of this kernel, 4 channels × 4 taps per `vpdpbusd`, and a row form for
//! stride 1 were slower than it on Zen 4 and were removed; see docs/decisions.md).
//!
//! Bounds (see [`crate::kernels::window::jit`], which checks them before the call): the kernel reads 8
//! bytes at `pixel + 8g` with `8g < C`, so at most 16 bytes past the pixel's `C` ([`SLACK`]); it
//! writes 8 bytes at `out + pos·C + 8g` for whole groups and single bytes below `out + pos·C + C` for the last, partial one;
//! and it reads its own tables.

use crate::emit::{Epilogue, pmaddwd, small, store_lanes};
use crate::kernels::window::Window;
use crate::kernels::window::halo::Scratch;
use crate::kernels::window::jit::{self as window_jit, ImageFn};
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

/// A compiled depthwise kernel: it walks a window table, an image at a time.
pub struct DepthwiseKernel {
    /// The compiled function.
    f: ImageFn,
    /// What it reads.
    _tables: Box<Tables>,
}

pub struct Tables {
    /// `[group of 8 channels][tap pair][half][4 channels][2 taps]` as i16.
    weights: Box<[i16]>,
    /// `b − zp_x·Σ w`, padded to whole groups.
    bias: Box<[i32]>,
    /// Multipliers, padded to whole groups.
    mult: Box<[f32]>,
}

/// What a kernel body is compiled with: its tables' addresses (weights, bias, multipliers);
/// whether the input is i8; the output's zero point and clamp; the padding byte.
type Constants = ([i64; 3], bool, (i32, i32, i32), u8);

impl Tables {
    fn constants(&self, s: &DepthwiseSpec) -> Constants {
        let weights = self.weights.as_ptr() as i64;
        let pad = if s.x_signed { s.zp_x as i8 as u8 } else { s.zp_x as u8 };
        let addresses = [weights, self.bias.as_ptr() as i64, self.mult.as_ptr() as i64];
        (addresses, s.x_signed, (s.zp_y, s.lo, s.hi), pad)
    }
}

impl DepthwiseKernel {
    /// Which kernel it is.
    pub(crate) fn describe(&self) -> &'static str {
        "table, pmaddwd"
    }
}

impl DepthwiseKernel {
    /// Compiles the kernel; an error when the tables are inconsistent or the weights do not fit
    /// i16 (they are `w − zp_w` of 8-bit weights, so they always do).
    pub fn compile(s: &DepthwiseSpec) -> Result<DepthwiseKernel, String> {
        let (c, taps) = (s.c, s.window.taps);
        if c == 0 || taps == 0 || s.weights.len() != taps * c || s.bias.len() != c || s.mult.len() != c {
            return Err("inconsistent depthwise kernel tables".into());
        }
        if s.mult.iter().any(|m| !m.is_finite()) {
            return Err("the depthwise kernel requantizes with finite f32 multipliers".into());
        }
        DepthwiseKernel::compile_pmaddwd(s)
    }

    /// The `pmaddwd` kernel: 8 channels × 2 taps at a time.
    fn compile_pmaddwd(s: &DepthwiseSpec) -> Result<DepthwiseKernel, String> {
        let (c, w) = (s.c, s.window);
        let taps = w.taps;
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
        let (bias, mult) = folded(s, groups * 8, s.zp_x)?;
        let tables = Box::new(Tables { weights: weights.into_boxed_slice(), bias, mult });
        let ([wt, bt, mt], x_signed, (zp_y, lo, hi), pad) = tables.constants(s);
        let small_mults = small(&tables.mult);
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
                let m_addr = b.ins().iadd_imm_s(ch4, mt);
                let bytes = requantized(b, &acc, m_addr, [zp_y, lo, hi], small_mults);
                let o_addr = b.ins().iadd(o_pos, ch);
                store_lanes(b, bytes, o_addr, lanes);
            };
            window_jit::emit_groups(b, c, 8, group);
        })?;
        Ok(DepthwiseKernel { f, _tables: tables })
    }

    /// The bytes of the buffer it copies an image into.
    pub(crate) fn scratch_len(&self) -> usize {
        self.f.scratch_len()
    }

    /// Its function for a direct call on one image (see [`crate::direct`]).
    pub(crate) fn direct(&self) -> crate::direct::Direct {
        self.f.direct()
    }

    /// Runs `batch` NHWC images (`plane · C` bytes each) into `y` (`positions · C` bytes each),
    /// each copied into `scratch` ([`DepthwiseKernel::scratch_len`] bytes).
    pub(crate) fn run(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Scratch<'_>) -> Result<(), String> {
        let (image, out) = (x.len() / batch.max(1), y.len() / batch.max(1));
        if x.len() != batch * image || y.len() != batch * out {
            return Err(format!("a depthwise kernel got {} and {} bytes for {batch} images", x.len(), y.len()));
        }
        x.chunks_exact(image.max(1))
            .zip(y.chunks_exact_mut(out.max(1)))
            .try_for_each(|(img, dst)| self.f.run_image(img, dst, scratch))
    }
}

/// The output bytes of the accumulators `acc` (2 or 4 i32x4), requantized as the GEMM does
/// ([`Epilogue`]) with the multipliers at `m_addr`, 16 bytes per vector.
pub(crate) fn requantized(b: &mut FunctionBuilder, acc: &[Value], m_addr: Value, [zp_y, lo, hi]: [i32; 3], small: bool) -> Value {
    let raw = MemFlagsData::new().with_notrap();
    let epilogue = Epilogue::new(b, zp_y, lo, hi, small);
    let q: Vec<Value> = acc
        .iter()
        .enumerate()
        .map(|(j, &acc)| {
            let mv = b.ins().load(types::F32X4, raw, m_addr, 16 * j as i32);
            epilogue.apply(b, acc, mv)
        })
        .collect();
    epilogue.bytes(b, &q)
}

/// The starting accumulators `b − zp·Σ w` (`zp` the zero point of the bytes the kernel reads) and
/// the multipliers of each channel, padded with zeros to `len`.
pub(crate) fn folded(s: &DepthwiseSpec, len: usize, zp: i32) -> Result<(Box<[i32]>, Box<[f32]>), String> {
    let (c, taps) = (s.c, s.window.taps);
    let mut bias = vec![0i32; len];
    let mut mult = vec![0f32; len];
    for ch in 0..c {
        let wsum: i64 = (0..taps).map(|t| s.weights[t * c + ch] as i64).sum();
        bias[ch] = i32::try_from(s.bias[ch] as i64 - zp as i64 * wsum).map_err(|_| "the folded bias leaves i32")?;
        mult[ch] = s.mult[ch];
    }
    Ok((bias.into_boxed_slice(), mult.into_boxed_slice()))
}

/// Bytes past the padding pixel that the kernel may read: 16-byte loads of the last group.
const SLACK: usize = 16;

/// `shuffle` masks that interleave the i16 lanes 0–3 (4–7) of two vectors, which the x64
/// backend emits as `punpcklwd` (`punpckhwd`).
const PUNPCKLWD: [u8; 16] = [0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23];
const PUNPCKHWD: [u8; 16] = [8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31];
