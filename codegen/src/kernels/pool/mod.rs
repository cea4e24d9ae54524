//! 8-bit pooling on NHWC bytes: max pooling through a window table, and the global mean (global
//! average pooling, or reduce_mean over H and W) as one channel-wise sum per image and the
//! evaluator's requantization `requant(Σ(x − zp_x), s_x / (s_y·h·w))`. Both run Cranelift
//! kernels (`pool_simd.rs`); the Rust loops here run on the `scalar` ISA level, for the mean in q31
//! mode, and for its channels past the last multiple of 8.
//!
//! Bounds: window entries are `< h·w` or the padding marker (see [`Window`]); input lengths are
//! checked against `batch · h·w·c` before the loops; the loops here are safe Rust, the kernels'
//! bounds are in their module.

pub(crate) mod simd;

use crate::kernel::WindowKernel;
use crate::kernels::pool::simd::{GlobalMeanKernel, MaxPoolKernel, MeanSpec};
use crate::kernels::window::Window;
use crate::kernels::window::halo::Scratch;
use crate::target::Isa;
use qc_ir::requant::{Requant, RequantMode, q31};
use qc_ir::{Attrs, OpKind, ScalarType, TensorType};

/// Per-tensor 8-bit parameters `(scale, zero point, signed)`.
fn q8(t: &TensorType) -> Option<(f32, i32, bool)> {
    let q = t.elem.quant()?;
    if q.axis.is_some() || !matches!(q.storage, ScalarType::I8 | ScalarType::U8) {
        return None;
    }
    let (s, z) = q.at(0);
    Some((s, z, q.storage == ScalarType::I8))
}

/// The fixed `[C, H, W]` of a 4-D value.
fn chw(t: &TensorType) -> Option<[usize; 3]> {
    if t.rank() != 4 {
        return None;
    }
    Some([t.dims[1].fixed()? as usize, t.dims[2].fixed()? as usize, t.dims[3].fixed()? as usize])
}

/// 8-bit max pooling.
pub struct MaxPool {
    c: usize,
    window: Window,
    /// XOR-ed into signed bytes so that unsigned comparison orders them (`0x80` or 0).
    flip: u8,
    out_hw: [usize; 2],
    /// The compiled kernel (not on the `scalar` ISA level).
    kernel: Option<MaxPoolKernel>,
}

impl MaxPool {
    /// The kernel of an 8-bit max_pool, or `None`.
    pub fn new(attrs: &Attrs, x: &TensorType, out: &TensorType, isa: Isa) -> Option<MaxPool> {
        let (_, _, signed) = q8(x)?;
        if q8(out)? != q8(x)? {
            return None;
        }
        let [c, h, w] = chw(x)?;
        let [_, oh, ow] = chw(out)?;
        let k = attrs.ints("kernel_shape")?;
        if k.len() != 2 {
            return None;
        }
        let window = Window::new(attrs, (h, w), (k[0] as usize, k[1] as usize), (oh, ow))?;
        let kernel = isa.jit_kernels().then(|| MaxPoolKernel::compile(c, &window, signed).ok()).flatten();
        Some(MaxPool { c, window, flip: if signed { 0x80 } else { 0 }, out_hw: [oh, ow], kernel })
    }
}

impl WindowKernel for MaxPool {
    /// The output's logical dims `[C, oh, ow]`.
    fn out_dims(&self) -> [usize; 3] {
        [self.c, self.out_hw[0], self.out_hw[1]]
    }

    fn ops(&self, _batch: usize) -> u64 {
        0
    }

    fn scratch_len(&self) -> usize {
        self.kernel.as_ref().map_or(0, MaxPoolKernel::scratch_len)
    }

    /// Runs `batch` NHWC images; returns the NHWC output. Padded taps are skipped (the padding
    /// holds the lowest value, which never wins); a window entirely in the padding gives it.
    fn run(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Scratch<'_>) -> Result<(), String> {
        let (c, w) = (self.c, &self.window);
        let image = c * w.plane;
        if x.len() != batch * image {
            return Err(format!("a max_pool input has {} bytes, not {batch}·{image}", x.len()));
        }
        if y.len() != batch * w.positions * c {
            return Err(format!("a max_pool output has {} bytes, not {batch}·{}", y.len(), w.positions * c));
        }
        if let Some(kernel) = &self.kernel {
            for (img, dst) in x.chunks_exact(image).zip(y.chunks_exact_mut(w.positions * c)) {
                kernel.run_image(img, dst, scratch)?;
            }
            return Ok(());
        }
        for (img, dst) in x.chunks_exact(image).zip(y.chunks_exact_mut(w.positions * c)) {
            for (pos, out) in dst.chunks_exact_mut(c).enumerate() {
                out.fill(0);
                for &p in w.at(pos) {
                    let p = p as usize;
                    if p != w.plane {
                        for (o, &v) in out.iter_mut().zip(&img[p * c..(p + 1) * c]) {
                            *o = (*o).max(v ^ self.flip);
                        }
                    }
                }
                out.iter_mut().for_each(|o| *o ^= self.flip);
            }
        }
        Ok(())
    }

    fn jit(&self) -> bool {
        self.kernel.is_some()
    }

    fn describe(&self) -> String {
        if self.kernel.is_some() { "max pool, jit" } else { "max pool, rust loop" }.into()
    }

    fn direct(&self) -> Option<crate::direct::Direct> {
        let (c, w) = (self.c, &self.window);
        self.kernel.as_ref().map(MaxPoolKernel::direct).filter(|d| d.input == c * w.plane && d.output == c * w.positions)
    }
}

/// The 8-bit mean over H and W of each channel.
pub struct GlobalMean {
    c: usize,
    plane: usize,
    zp_x: i32,
    signed: bool,
    requant: Requant,
    zp_y: i32,
    lo: i32,
    hi: i32,
    /// The compiled kernel for the whole groups of 8 channels (f32 requantization, not on the
    /// `scalar` ISA level).
    kernel: Option<GlobalMeanKernel>,
}

impl GlobalMean {
    /// The kernel of an 8-bit global_avg_pool, or reduce_mean over axes {2, 3}, or `None`.
    pub fn new(kind: OpKind, attrs: &Attrs, x: &TensorType, out: &TensorType, isa: Isa) -> Option<GlobalMean> {
        let ((s_x, zp_x, signed), (s_y, zp_y, out_signed)) = (q8(x)?, q8(out)?);
        let [c, h, w] = chw(x)?;
        match kind {
            OpKind::GlobalAvgPool => {}
            OpKind::ReduceMean => {
                let mut axes = qc_ir::infer::normalize_axes(attrs.ints("axes")?, 4).ok()?;
                axes.sort_unstable();
                if axes != [2, 3] {
                    return None;
                }
            }
            _ => return None,
        }
        let plane = h * w;
        // Every sum fits i32, as the evaluator requires.
        if plane == 0 || plane > (1 << 22) {
            return None;
        }
        let requant = match RequantMode::of(attrs).ok()? {
            RequantMode::F32 => Requant::F32(s_x / (s_y * plane as f32)),
            RequantMode::Q31 => Requant::Q31(q31(s_x as f64 / (s_y as f64 * plane as f64)).ok()?),
        };
        let (lo, hi) = if out_signed { (-128, 127) } else { (0, 255) };
        let kernel = match requant {
            Requant::F32(m) if isa.jit_kernels() => {
                GlobalMeanKernel::compile(&MeanSpec { c, plane, zp_x, signed, m, zp_y, lo, hi }).ok()
            }
            _ => None,
        };
        Some(GlobalMean { c, plane, zp_x, signed, requant, zp_y, lo, hi, kernel })
    }

    /// The channels.
    pub fn channels(&self) -> usize {
        self.c
    }

    /// Runs `batch` NHWC images; returns `[batch][C]`.
    pub fn run(&self, x: &[u8], batch: usize, y: &mut [u8]) -> Result<(), String> {
        let (c, image) = (self.c, self.c * self.plane);
        if x.len() != batch * image {
            return Err(format!("a mean's input has {} bytes, not {batch}·{image}", x.len()));
        }
        if y.len() != batch * c {
            return Err(format!("a mean's output has {} bytes, not {batch}·{c}", y.len()));
        }
        // The kernel does the whole groups of 8 channels; the loop below the rest.
        let first = match &self.kernel {
            Some(kernel) => {
                kernel.run(x, batch, y)?;
                c / 8 * 8
            }
            None => 0,
        };
        if first == c {
            return Ok(());
        }
        let mut sums = vec![0i32; c - first];
        for (img, dst) in x.chunks_exact(image).zip(y.chunks_exact_mut(c)) {
            sums.fill(0);
            for px in img.chunks_exact(c) {
                for (s, &b) in sums.iter_mut().zip(&px[first..]) {
                    *s += if self.signed { b as i8 as i32 } else { b as i32 };
                }
            }
            let bias = self.zp_x * self.plane as i32;
            for (o, &s) in dst[first..].iter_mut().zip(&sums) {
                *o = self.requant.apply(s - bias, self.zp_y, self.lo, self.hi) as u8;
            }
        }
        Ok(())
    }

    /// Whether JIT-compiled code does (most of) the work.
    pub fn jit(&self) -> bool {
        self.kernel.is_some()
    }

    /// Its JIT function for a direct call on one image, when it does all of the mean (see
    /// [`crate::direct`]).
    pub(crate) fn direct(&self) -> Option<crate::direct::Direct> {
        self.kernel.as_ref()?.direct().filter(|d| d.input == self.c * self.plane && d.output == self.c)
    }
}
