//! An NHWC image copied into a border of padding bytes wide enough for every tap of a window
//! ([`Halo`]), so that a kernel reads each tap in place at a fixed distance from its output
//! position instead of looking it up or branching on the border. The convolution's in-place GEMM
//! and the depthwise row kernel read their images this way.
//!
//! The buffer is the kernel's own region of the run's arena ([`Scratch`]), which keeps it from
//! run to run: its border is written when the region is fresh, and after that only the image is
//! copied in.
//!
//! Bounds: the buffer a kernel gets is [`Halo::len`] bytes: the `rows × cols` pixels and any
//! bytes past them that a kernel declared it reaches ([`Halo::reaching`]).

use crate::window::Geometry;

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

    /// Calls `f` with each of `batch` NHWC images of `x` in the halo buffer `scratch`, whose
    /// border is `pad`, and its index.
    pub(crate) fn each_image(
        &self,
        x: &[u8],
        batch: usize,
        pad: u8,
        scratch: &mut Scratch<'_>,
        mut f: impl FnMut(&[u8], usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let image = self.h * self.w * self.c;
        if x.len() != batch * image {
            return Err(format!("a windowed kernel's input has {} bytes, not {batch}·{image}", x.len()));
        }
        let buf = scratch.padded(self.len, pad)?;
        x.chunks_exact(image.max(1)).enumerate().try_for_each(|(i, img)| {
            self.copy_in(img, buf);
            f(buf, i)
        })
    }

    /// Copies the NHWC image `img` into `halo` (`len` long, its border already the padding).
    /// Rows are short (tens of bytes), so they are copied 16 and then 8 bytes at a time in line
    /// rather than by a call to `memcpy` each.
    fn copy_in(&self, img: &[u8], halo: &mut [u8]) {
        let run = self.w * self.c;
        for (y, src) in img.chunks_exact(run.max(1)).enumerate().take(self.h) {
            let at = self.pixel(self.top + y, self.left);
            let dst = &mut halo[at..at + run];
            let mut d16 = dst.chunks_exact_mut(16);
            let mut s16 = src.chunks_exact(16);
            for (d, s) in (&mut d16).zip(&mut s16) {
                d.copy_from_slice(s);
            }
            let (mut d8, mut s8) = (d16.into_remainder().chunks_exact_mut(8), s16.remainder().chunks_exact(8));
            for (d, s) in (&mut d8).zip(&mut s8) {
                d.copy_from_slice(s);
            }
            for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
                *d = *s;
            }
        }
    }
}
