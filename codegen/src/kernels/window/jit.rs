//! What the JIT window kernels (depthwise convolution, max pooling) share: a function
//! `f(image, out, buffer)` that copies the image into the kernel's buffer ([`Scratch`]), where
//! the padding pixel follows it, and loops over the output positions of a window table.
//!
//! Bounds: the table holds byte offsets `≤ plane·C` ([`Window::byte_offsets`]); a kernel body
//! reads at most `slack` bytes past `pixel + C` and writes only below `out + pos·C + C`, which
//! [`ImageFn::run_image`] makes safe by checking the lengths and sizing the copy.

use crate::emit::emit_loop;
use crate::jit::{Jit, JitCode};
use crate::kernels::window::Window;
use crate::kernels::window::halo::{Scratch, emit_copy_rows};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};
use cranelift_frontend::FunctionBuilder;
use std::sync::Arc;

/// A compiled window kernel's entry point, with the shapes its call is checked against.
pub(crate) struct ImageFn {
    /// `(image, out, buffer)`.
    f: unsafe extern "C" fn(*const u8, *mut u8, *mut u8),
    c: usize,
    plane: usize,
    positions: usize,
    pad: u8,
    slack: usize,
    _offsets: Box<[u32]>,
    _code: Arc<JitCode>,
}

/// Compiles `for pos in 0..positions { body(pixels, out_pos) }` over `window` for `c`-channel
/// images: `pixels[t]` is the address of tap `t`'s pixel in the padded image (the padding pixel
/// for taps in the padding), `out_pos` the address of the position's `c` output bytes. `pad` is
/// the padding pixel's byte, `slack` how far past a pixel's `c` bytes the body may read.
pub(crate) fn compile(
    window: &Window,
    c: usize,
    pad: u8,
    slack: usize,
    body: impl Fn(&mut FunctionBuilder, &[Value], Value),
) -> Result<ImageFn, String> {
    let (taps, positions) = (window.taps, window.positions);
    if c == 0 || taps == 0 {
        return Err("a window kernel needs channels and taps".into());
    }
    let offsets = window.byte_offsets(c)?;
    let ot = offsets.as_ptr() as i64;
    let mut jit = Jit::new()?;
    let ptr = jit.pointer_type();
    let image = window.plane * c;
    let id = jit.define(&[ptr, ptr, ptr], |b, args| {
        let (img, out, x) = (args[0], args[1], args[2]);
        emit_copy_rows(b, img, x, [1, image], 0);
        let raw = MemFlagsData::new().with_notrap();
        let zero = b.ins().iconst(types::I64, 0);
        let end = b.ins().iconst(types::I64, positions as i64);
        emit_loop(b, zero, end, |b, pos| {
            let row = b.ins().imul_imm_s(pos, 4 * taps as i64);
            let row = b.ins().iadd_imm_s(row, ot);
            let pixels: Vec<Value> = (0..taps)
                .map(|t| {
                    let off = b.ins().uload32(raw, row, 4 * t as i32);
                    b.ins().iadd(x, off)
                })
                .collect();
            let off = b.ins().imul_imm_s(pos, c as i64);
            let o_pos = b.ins().iadd(out, off);
            body(b, &pixels, o_pos);
        });
        b.ins().return_(&[]);
    })?;
    let code = Arc::new(jit.finish()?);
    let f = code.function(id)?;
    Ok(ImageFn { f, c, plane: window.plane, positions, pad, slack, _offsets: offsets, _code: code })
}

/// Emits `group(g, lanes)` for the groups of `width` channels of `c`: whole groups in a loop
/// (`lanes = width`), then the last, partial one (`lanes = c % width`).
pub(crate) fn emit_groups(b: &mut FunctionBuilder, c: usize, width: usize, group: impl Fn(&mut FunctionBuilder, Value, usize)) {
    let full = c / width;
    if full > 0 {
        let zero = b.ins().iconst(types::I64, 0);
        let end = b.ins().iconst(types::I64, full as i64);
        emit_loop(b, zero, end, |b, g| group(b, g, width));
    }
    if !c.is_multiple_of(width) {
        let g = b.ins().iconst(types::I64, full as i64);
        group(b, g, c % width);
    }
}

impl ImageFn {
    /// The bytes of the buffer [`ImageFn::run_image`] copies an image into.
    pub(crate) fn scratch_len(&self) -> usize {
        (self.plane + 1) * self.c + self.slack
    }

    /// Its function for a direct call on one image (see [`crate::direct`]).
    pub(crate) fn direct(&self) -> crate::direct::Direct {
        crate::direct::Direct {
            f: crate::direct::DirectFn::Window { f: self.f, pad: self.pad, buffer: self.scratch_len() },
            input: self.plane * self.c,
            output: self.positions * self.c,
        }
    }

    /// Runs one NHWC image (`plane · C` bytes) into `out` (`positions · C` bytes), through a copy
    /// of it in `scratch` followed by the padding pixel (written when the buffer is fresh).
    pub(crate) fn run_image(&self, img: &[u8], out: &mut [u8], scratch: &mut Scratch<'_>) -> Result<(), String> {
        let image = self.plane * self.c;
        if img.len() != image || out.len() != self.positions * self.c {
            return Err(format!(
                "a window kernel got {} input and {} output bytes for {image} and {}",
                img.len(),
                out.len(),
                self.positions * self.c
            ));
        }
        let padded = scratch.padded(self.scratch_len(), self.pad)?;
        // SAFETY: the kernel copies the `plane · C` bytes of `img` (its length) to the start of
        // `padded`, reads below `(plane + 1)·C + slack` bytes of `padded` (its length) and writes
        // below `positions · C` bytes of `out` (the bounds above; the lengths are checked), and
        // reads its own tables, which live as long as `self`'s owner.
        unsafe { (self.f)(img.as_ptr(), out.as_mut_ptr(), padded.as_mut_ptr()) };
        Ok(())
    }
}
