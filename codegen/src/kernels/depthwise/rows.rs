//! The depthwise convolution with stride 1 on CPUs with VNNI, as a Cranelift function that walks
//! output rows of one image copied into a border of its zero point ([`Halo`]).
//!
//! With stride 1, output row `oy` is a one-dimensional convolution along the row's bytes: output
//! byte `j = ox·C + c` of the row is `Σ_taps w[t][c] · halo[oy + ky·dy][j + kx·dx·C]`, so the
//! tap's 16 input bytes for 16 consecutive output bytes lie at a fixed distance from them — an
//! immediate offset, with no table and no branch on the border. When C divides 16 (1, 2, 4, 8),
//! those 16 bytes are `16/C` neighbouring pixels, so a channel count below the vector's width
//! still fills it; when 16 divides C, they are a group of 16 channels of one pixel. Either way the
//! weights of lane `l` of panel `p` are those of channel `(16p + l) mod C`, packed as the
//! [`crate::kernels::depthwise::simd`] VNNI kernel packs its groups (`[panel][tap quad][4 × 4 lanes][4
//! taps]`), and a chunk of 16 lanes is that kernel's group: four taps' bytes interleaved into
//! 4 lanes × 4 taps per vector, one `vpdpbusd` per vector, the u8 form of the input (i8 flipped
//! by `^ 0x80`), accumulators starting at `b − zp_u·Σ w`, the GEMM's f32 epilogue.
//!
//! Bounds: the kernel copies its image into the halo buffer ([`Halo::emit_copy_in`]), then reads
//! 16 bytes at `x + oy·cols·C + j + off[t]` for chunks starting at `j < ow·C`, all below the
//! reach given to [`Halo::reaching`], which [`Halo::each_image`] allocates; it writes 16 bytes
//! at `out + oy·ow·C + j` for whole chunks and `ow·C − j` single bytes for the last, partial one,
//! below `oh·ow·C`, which [`RowsKernel::run`] checks; and it reads its own tables.

use crate::direct::{Direct, DirectFn};
use crate::emit::emit_loop;
use crate::emit::{small, store_lanes};
use crate::jit::{Jit, JitCode};
use crate::kernels::depthwise::simd::{DepthwiseSpec, dot_quad, folded, load_u8x16, requantized};
use crate::kernels::window::halo::{Halo, Scratch};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;
use std::sync::Arc;

/// Rows of at most this many whole chunks are unrolled.
const UNROLL: usize = 4;

/// A compiled row kernel.
pub(crate) struct RowsKernel {
    /// `(image, out, halo buffer)`.
    f: crate::jit::BufferFn,
    halo: Halo,
    pad: u8,
    out_image: usize,
    _tables: Box<Tables>,
    _code: Arc<JitCode>,
}

struct Tables {
    /// `[panel][tap quad][4 × 4 lanes][4 taps]`.
    quads: Box<[i8]>,
    /// `b − zp_u·Σ w` per lane.
    bias: Box<[i32]>,
    /// The multiplier per lane.
    mult: Box<[f32]>,
}

impl RowsKernel {
    /// Compiles the kernel, or `None` for a layer it does not run: a stride other than 1, C
    /// neither a divisor nor a multiple of 16, a weight `w − zp_w` outside i8, or an image too
    /// large for immediate offsets. The caller has checked that the CPU has VNNI.
    pub(crate) fn compile(s: &DepthwiseSpec) -> Result<Option<RowsKernel>, String> {
        let (c, g) = (s.c, &s.window.geometry);
        let fits_i8 = s.weights.iter().all(|w| i8::try_from(*w).is_ok());
        if g.strides != [1, 1] || !(c.is_multiple_of(16) || 16 % c == 0) || !fits_i8 {
            return Ok(None);
        }
        let Some(halo) = Halo::new(c, g) else { return Ok(None) };
        let ([kh, kw], [oh, ow], [dy, dx]) = (g.k, g.out, g.dilations);
        let taps = kh * kw;
        if taps != s.window.taps || s.weights.len() != taps * c {
            return Err("inconsistent depthwise kernel tables".into());
        }
        let quads = taps.div_ceil(4);
        // A group is one step along the row: 16 bytes (16/C pixels), or one pixel of C ≥ 16
        // channels as C/16 panels of 16.
        let panels = c.div_ceil(16);
        let group = 16 * panels;
        let row = ow * c;
        let (full, rest) = (row / group, row % group);
        let offsets: Vec<usize> = (0..taps).map(|t| halo.pixel(t / kw * dy, t % kw * dx)).collect();
        let row_stride = halo.pixel(1, 0);
        let last_chunk_end = if rest > 0 { full * group + 16 } else { full * group };
        let reach = (oh - 1) * row_stride + offsets.iter().max().copied().unwrap_or(0) + last_chunk_end;
        if reach > i32::MAX as usize {
            return Ok(None);
        }
        let halo = halo.reaching(reach);

        let lanes = panels * 16;
        let mut packed = vec![0i8; panels * quads * 64];
        for l in 0..lanes {
            let ch = l % c;
            for t in 0..taps {
                let v = i8::try_from(s.weights[t * c + ch]).map_err(|_| "a depthwise weight does not fit i8")?;
                packed[((l / 16) * quads + t / 4) * 64 + (l % 16) * 4 + t % 4] = v;
            }
        }
        let (bias_c, mult_c) = folded(s, c, s.zp_x + if s.x_signed { 128 } else { 0 })?;
        let bias: Box<[i32]> = (0..lanes).map(|l| bias_c[l % c]).collect();
        let mult: Box<[f32]> = (0..lanes).map(|l| mult_c[l % c]).collect();
        let tables = Box::new(Tables { quads: packed.into_boxed_slice(), bias, mult });
        let (wt, bt, mt) = (tables.quads.as_ptr() as i64, tables.bias.as_ptr() as i64, tables.mult.as_ptr() as i64);
        let small_mults = small(&tables.mult);
        let (x_signed, zp_y, lo, hi) = (s.x_signed, s.zp_y, s.lo, s.hi);

        let raw = MemFlagsData::new().with_notrap();
        // The 16 lanes of panel `p` whose input bytes start at `x_at + at` (tap 0's offset
        // added per tap) and whose outputs go to `o_at + at`, `lanes` of them stored.
        let chunk = |b: &mut FunctionBuilder, x_at: Value, o_at: Value, p: usize, at: usize, lanes: usize| {
            let b_addr = b.ins().iconst(types::I64, bt + 64 * p as i64);
            let mut acc: Vec<Value> = (0..4).map(|j| b.ins().load(types::I32X4, raw, b_addr, 16 * j)).collect();
            let w_addr = b.ins().iconst(types::I64, wt + (64 * quads * p) as i64);
            for q in 0..quads {
                let x: Vec<Value> =
                    (4 * q..(4 * q + 4).min(taps)).map(|t| load_u8x16(b, x_at, (offsets[t] + at) as i32, x_signed)).collect();
                dot_quad(b, &x, w_addr, 64 * q as i32, &mut acc);
            }
            let m_addr = b.ins().iconst(types::I64, mt + 64 * p as i64);
            let bytes = requantized(b, &acc, m_addr, [zp_y, lo, hi], small_mults);
            let o_addr = b.ins().iadd_imm_s(o_at, at as i64);
            store_lanes(b, bytes, o_addr, lanes);
        };

        let mut jit = Jit::new()?;
        let ptr = jit.pointer_type();
        let id = jit.define(&[ptr, ptr, ptr], |b, args| {
            let (img, out, x) = (args[0], args[1], args[2]);
            halo.emit_copy_in(b, img, x);
            let zero = b.ins().iconst(types::I64, 0);
            let rows = b.ins().iconst(types::I64, oh as i64);
            emit_loop(b, zero, rows, |b, oy| {
                let x_row = b.ins().imul_imm_s(oy, row_stride as i64);
                let x_row = b.ins().iadd(x, x_row);
                let o_row = b.ins().imul_imm_s(oy, row as i64);
                let o_row = b.ins().iadd(out, o_row);
                if full * panels <= UNROLL {
                    // A short row: its chunks unrolled, so that no loop exit is mispredicted.
                    for gi in 0..full {
                        for p in 0..panels {
                            chunk(b, x_row, o_row, p, gi * group + 16 * p, 16);
                        }
                    }
                } else {
                    let (zero, end) = (b.ins().iconst(types::I64, 0), b.ins().iconst(types::I64, full as i64));
                    emit_loop(b, zero, end, |b, gi| {
                        let at = b.ins().imul_imm_s(gi, group as i64);
                        let (x_at, o_at) = (b.ins().iadd(x_row, at), b.ins().iadd(o_row, at));
                        for p in 0..panels {
                            chunk(b, x_at, o_at, p, 16 * p, 16);
                        }
                    });
                }
                if rest > 0 {
                    chunk(b, x_row, o_row, 0, full * group, rest);
                }
            });
            b.ins().return_(&[]);
        })?;
        let code = Arc::new(jit.finish()?);
        let f = code.function(id)?;
        let pad = if s.x_signed { s.zp_x as i8 as u8 } else { s.zp_x as u8 };
        Ok(Some(RowsKernel { f, halo, pad, out_image: oh * ow * c, _tables: tables, _code: code }))
    }

    /// The bytes of its halo buffer.
    pub(crate) fn scratch_len(&self) -> usize {
        self.halo.len()
    }

    /// Its function for a direct call on one image (see [`crate::direct`]).
    pub(crate) fn direct(&self) -> Direct {
        Direct {
            f: DirectFn::Window { f: self.f, pad: self.pad, buffer: self.halo.len() },
            input: self.halo.image(),
            output: self.out_image,
        }
    }

    /// Runs `batch` NHWC images of `x` into `y`, each copied into the halo buffer `scratch`.
    pub(crate) fn run(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Scratch<'_>) -> Result<(), String> {
        let out_image = self.out_image;
        if y.len() != batch * out_image {
            return Err(format!("a depthwise kernel's output has {} bytes, not {batch}·{out_image}", y.len()));
        }
        self.halo.each_image(x, batch, self.pad, scratch, |img, buf, i| {
            let out = &mut y[i * out_image..(i + 1) * out_image];
            // SAFETY: the kernel reads the `h·w·C` bytes of `img` (checked by `each_image`);
            // writes the image into `buf` (the halo buffer, `halo.len` bytes) and reads it below
            // its reach, which `buf` holds; writes below `oh·ow·C` bytes of `out`, its length; and
            // reads its own tables, which live as long as `self`.
            unsafe { (self.f)(img.as_ptr(), out.as_mut_ptr(), buf.as_mut_ptr()) };
            Ok(())
        })
    }
}
