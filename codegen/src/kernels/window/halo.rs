//! An NHWC image copied into a border of padding bytes wide enough for every tap of a window
//! ([`Halo`]), so that a kernel reads each tap in place at a fixed distance from its output
//! position instead of looking it up or branching on the border. The convolution's in-place GEMM
//! and the depthwise row kernel read their images this way.
//!
//! The buffer is the kernel's own region of the run's arena ([`Scratch`]), which keeps it from
//! run to run: its border is written when the region is fresh, and after that only the image is
//! copied in.
//!
//! The kernels copy the image in themselves ([`Halo::emit_copy_in`]): moves at immediate offsets
//! in their own code, instead of a Rust loop over rows before the call.
//!
//! Bounds: the buffer a kernel gets is [`Halo::len`] bytes: the `rows × cols` pixels and any
//! bytes past them that a kernel declared it reaches ([`Halo::reaching`]). The copy reads the
//! image's `h·w·C` bytes and writes its rows at `pixel(top + y, left)`, inside the `rows × cols`
//! pixels.

use crate::emit::emit_loop;
use crate::kernels::window::Geometry;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Type, Value, types};
use cranelift_frontend::FunctionBuilder;

/// `rows × cols` pixels of `c` bytes, the image's pixel `(y, x)` at `(top + y, left + x)`, in a
/// buffer of `len` bytes.
pub(crate) struct Halo {
    c: usize,
    h: usize,
    w: usize,
    cols: usize,
    top: usize,
    left: usize,
    len: usize,
}

/// A windowed kernel's own buffer in the run's arena, kept from run to run (see
/// `CompiledModel::run`). `fresh`: it may hold anything, and the kernel writes all of it that it
/// relies on (the border); otherwise it holds what the kernel left there, and the border is
/// still the padding.
pub(crate) struct Scratch<'a> {
    pub(crate) bytes: &'a mut [u8],
    pub(crate) fresh: bool,
}

impl Scratch<'_> {
    /// The first `len` bytes, filled with `pad` when the buffer is fresh (and from then on not
    /// fresh); an error when the buffer is shorter.
    pub(crate) fn padded(&mut self, len: usize, pad: u8) -> Result<&mut [u8], String> {
        let have = self.bytes.len();
        let buf = self.bytes.get_mut(..len).ok_or_else(|| format!("a kernel's buffer has {have} bytes, not {len}"))?;
        if self.fresh {
            buf.fill(pad);
            self.fresh = false;
        }
        Ok(buf)
    }
}

impl Halo {
    /// The halo of `c`-channel images for window `g`: it holds the image and the last tap of the
    /// last output position. `None` when it would pass 4 GiB.
    pub(crate) fn new(c: usize, g: &Geometry) -> Option<Halo> {
        let ([h, w], [kh, kw], [oh, ow]) = (g.hw, g.k, g.out);
        let ([s0, s1], [top, left], [d0, d1]) = (g.strides, g.pads, g.dilations);
        if [oh, ow, kh, kw, c].contains(&0) {
            return None;
        }
        let extent =
            |o: usize, s: usize, k: usize, d: usize| (o - 1).checked_mul(s)?.checked_add((k - 1).checked_mul(d)?)?.checked_add(1);
        let rows = extent(oh, s0, kh, d0)?.max(top.checked_add(h)?);
        let cols = extent(ow, s1, kw, d1)?.max(left.checked_add(w)?);
        let len = rows.checked_mul(cols)?.checked_mul(c)?;
        if len > 1 << 32 {
            return None;
        }
        Some(Halo { c, h, w, cols, top, left, len })
    }

    /// The same halo, its buffer long enough for a kernel that reads below byte `reach`.
    pub(crate) fn reaching(self, reach: usize) -> Halo {
        Halo { len: self.len.max(reach), ..self }
    }

    /// The bytes of its buffer.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The byte offset of halo pixel `(y, x)`.
    pub(crate) fn pixel(&self, y: usize, x: usize) -> usize {
        (y * self.cols + x) * self.c
    }

    /// The bytes of one image, `h·w·C`.
    pub(crate) fn image(&self) -> usize {
        self.h * self.w * self.c
    }

    /// Calls `f` with each of `batch` NHWC images of `x`, the halo buffer `scratch` (whose
    /// border is `pad`) for the kernel to copy it into ([`Halo::emit_copy_in`]), and its index.
    pub(crate) fn each_image(
        &self,
        x: &[u8],
        batch: usize,
        pad: u8,
        scratch: &mut Scratch<'_>,
        mut f: impl FnMut(&[u8], &mut [u8], usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let image = self.image();
        if x.len() != batch * image {
            return Err(format!("a windowed kernel's input has {} bytes, not {batch}·{image}", x.len()));
        }
        let buf = scratch.padded(self.len, pad)?;
        x.chunks_exact(image.max(1)).enumerate().try_for_each(|(i, img)| f(img, buf, i))
    }

    /// Emits the copy of the NHWC image at `img` into the halo buffer at `buf`, whose border is
    /// already the padding: each row's `w·C` bytes to `pixel(top + y, left)`.
    pub(crate) fn emit_copy_in(&self, b: &mut FunctionBuilder, img: Value, buf: Value) {
        let dst = b.ins().iadd_imm_s(buf, self.pixel(self.top, self.left) as i64);
        emit_copy_rows(b, img, dst, [self.h, self.w * self.c], self.cols * self.c);
    }
}

/// Moves an image copy makes in line, rows unrolled; past this, a loop over its rows.
const UNROLLED_MOVES: usize = 64;
/// 16-byte moves a row makes in line; past this, a loop over them.
const ROW_MOVES: usize = 16;

/// The moves that copy `bytes` bytes from offset `at`: 16-byte ones, then one each of 8, 4, 2
/// and 1 bytes as the rest needs.
fn moves(at: usize, bytes: usize) -> Vec<(usize, Type)> {
    let mut out: Vec<(usize, Type)> = (0..bytes / 16).map(|i| (at + 16 * i, types::I8X16)).collect();
    let mut done = bytes / 16 * 16;
    for (size, ty) in [(8, types::I64), (4, types::I32), (2, types::I16), (1, types::I8)] {
        if bytes - done >= size {
            out.push((at + done, ty));
            done += size;
        }
    }
    out
}

/// Emits the copy of `rows` runs of `run` bytes, contiguous at `src`, to `dst_stride` bytes
/// apart from `dst`: the moves at immediate offsets, rows and the 16-byte moves of a row in
/// loops when there are many.
pub(crate) fn emit_copy_rows(b: &mut FunctionBuilder, src: Value, dst: Value, [rows, run]: [usize; 2], dst_stride: usize) {
    let raw = MemFlagsData::new().with_notrap();
    let mov = |b: &mut FunctionBuilder, (s, d): (Value, Value), (at, ty): (usize, Type), [s_off, d_off]: [usize; 2]| {
        let v = b.ins().load(ty, raw, s, (s_off + at) as i32);
        b.ins().store(raw, v, d, (d_off + at) as i32);
    };
    if rows == 0 || run == 0 {
        return;
    }
    let fits = |bytes: usize| i32::try_from(bytes).is_ok();
    let row = moves(0, run);
    if rows * row.len() <= UNROLLED_MOVES && fits(rows * run) && fits((rows - 1) * dst_stride + run) {
        for y in 0..rows {
            for &m in &row {
                mov(b, (src, dst), m, [y * run, y * dst_stride]);
            }
        }
        return;
    }
    // One row at `s`, `d`: its 16-byte moves unrolled or in a loop, then the rest.
    let copy_row = |b: &mut FunctionBuilder, s: Value, d: Value| {
        let chunks = run / 16;
        if chunks <= ROW_MOVES {
            for &m in &row {
                mov(b, (s, d), m, [0, 0]);
            }
            return;
        }
        let (zero, end) = (b.ins().iconst(types::I64, 0), b.ins().iconst(types::I64, chunks as i64));
        emit_loop(b, zero, end, |b, i| {
            let off = b.ins().imul_imm_s(i, 16);
            let (s, d) = (b.ins().iadd(s, off), b.ins().iadd(d, off));
            mov(b, (s, d), (0, types::I8X16), [0, 0]);
        });
        for m in moves(chunks * 16, run - chunks * 16) {
            mov(b, (s, d), m, [0, 0]);
        }
    };
    let (zero, end) = (b.ins().iconst(types::I64, 0), b.ins().iconst(types::I64, rows as i64));
    emit_loop(b, zero, end, |b, y| {
        let (s_off, d_off) = (b.ins().imul_imm_s(y, run as i64), b.ins().imul_imm_s(y, dst_stride as i64));
        let (s, d) = (b.ins().iadd(src, s_off), b.ins().iadd(dst, d_off));
        copy_row(b, s, d);
    });
}
