//! Integer depthwise conv2d (`groups = C_in = C_out`) on NHWC bytes. Layers that requantize in
//! f32 run a Cranelift kernel specialized to the layer (`simd.rs`, x64) — on the AVX2 and
//! AVX-512 levels the 256- and 512-bit `std::arch` kernel of `native.rs` instead; the
//! others (`--requant q31`), and every layer on the `scalar` ISA level, run the Rust loop here: each
//! image is widened once to `x − zp_x` as i32, then every output pixel accumulates
//! `w[tap][c] · x[p][c]` over its in-bounds taps, a loop over contiguous channels that the
//! compiler vectorizes. Taps in the padding read `x = zp_x`, which adds 0, so they are skipped.
//!
//! Bounds: window entries are `< h·w` or the padding marker (see [`Window`]); the input length is
//! checked against `batch · h·w·c` before the loop; the Rust loop is safe Rust, the kernel's
//! bounds are in its module.

#[cfg(target_arch = "x86_64")]
mod native;
pub(crate) mod simd;

use crate::kernel::WindowKernel;
use crate::kernels::depthwise::simd::{DepthwiseKernel, DepthwiseSpec};
use crate::kernels::window::Window;
use crate::kernels::window::halo::Scratch;
use qc_ir::requant::{Requant, RequantMode, acc_scale, output_range};
use qc_ir::{Attrs, ScalarType, Tensor, TensorType};

/// A compiled depthwise convolution.
pub struct Depthwise {
    c: usize,
    window: Window,
    /// `w − zp_w`, `[taps][C]`.
    weights: Vec<i32>,
    bias: Vec<i32>,
    requant: Multipliers,
    zp_x: i32,
    x_signed: bool,
    zp_y: i32,
    lo: i32,
    hi: i32,
    out_hw: [usize; 2],
    /// The compiled kernel, where the layer has one.
    kernel: Option<DepthwiseKernel>,
    /// The precompiled `std::arch` kernel, on the AVX2 and AVX-512 levels.
    #[cfg(target_arch = "x86_64")]
    native: Option<native::NativeDepthwise>,
}

impl Depthwise {
    /// The kernel of an integer depthwise conv2d, or `None` when it is not one this kernel runs.
    pub fn new(
        attrs: &Attrs,
        tys: &[&TensorType],
        w: &Tensor,
        bias: Option<&Tensor>,
        out: &TensorType,
        isa: crate::target::Isa,
    ) -> Option<Depthwise> {
        let (x, wt) = (tys[0], tys[1]);
        if x.rank() != 4 || out.rank() != 4 || w.shape().len() != 4 {
            return None;
        }
        let dims: Vec<usize> = x.dims[1..].iter().map(|d| d.fixed().map(|n| n as usize)).collect::<Option<_>>()?;
        let (c, h, wd) = (dims[0], dims[1], dims[2]);
        let ws = w.shape();
        if attrs.int("groups", 1) as usize != c || ws[0] != c || ws[1] != 1 {
            return None;
        }
        let (kh, kw) = (ws[2], ws[3]);
        let (xq, wq, yq) = (x.elem.quant()?, wt.elem.quant()?, out.elem.quant()?);
        if xq.axis.is_some()
            || yq.axis.is_some()
            || wq.axis.is_some_and(|a| a != 0)
            || !matches!(yq.storage, ScalarType::I8 | ScalarType::U8)
        {
            return None;
        }
        let (oh, ow) = (out.dims[2].fixed()? as usize, out.dims[3].fixed()? as usize);
        let window = Window::new(attrs, (h, wd), (kh, kw), (oh, ow))?;
        let wv = w.to_i64_vec()?;
        let taps = kh * kw;
        let (s_x, zp_x) = xq.at(0);
        let (s_y, zp_y) = yq.at(0);
        let mode = RequantMode::of(attrs).ok()?;
        let mut weights = vec![0i32; taps * c];
        let mut requant = Vec::with_capacity(c);
        for ch in 0..c {
            let (s_w, zp_w) = wq.at(ch);
            for t in 0..taps {
                weights[t * c + ch] = wv[ch * taps + t] as i32 - zp_w;
            }
            requant.push(Requant::new(mode, acc_scale(s_x, s_w), s_y).ok()?);
        }
        let bias = match bias {
            Some(b) => b.to_i64_vec()?.into_iter().map(|v| v as i32).collect(),
            None => vec![0; c],
        };
        // The accumulators add in wrapping i32: take only layers where no input can make them
        // leave it (each `x − zp_x` is at most 255 in magnitude), as the GEMM does.
        let fits = (0..c).all(|ch| {
            let abs: i64 = (0..taps).map(|t| (weights[t * c + ch] as i64).abs()).sum();
            (bias[ch] as i64).abs() + 255 * abs < 1 << 31
        });
        if !fits {
            return None;
        }
        let (lo, hi) = output_range(yq, attrs);
        let requant = match requant.iter().map(|r| if let Requant::F32(m) = r { Some(*m) } else { None }).collect() {
            Some(m) => Multipliers::F32(m),
            None => Multipliers::Each(requant),
        };
        let spec = match &requant {
            Multipliers::F32(mult) if cfg!(target_arch = "x86_64") && isa.jit_kernels() => Some(DepthwiseSpec {
                c,
                window: &window,
                weights: &weights,
                bias: &bias,
                mult,
                zp_x,
                x_signed: xq.storage == ScalarType::I8,
                zp_y,
                lo,
                hi,
            }),
            _ => None,
        };
        // The AVX2 and AVX-512 levels run the `std::arch` kernel (512-bit vectors on the AVX-512
        // ones); `sse4.1`, or where it cannot be built, the Cranelift one.
        #[cfg(target_arch = "x86_64")]
        let native = spec.as_ref().filter(|_| isa.avx2()).and_then(|s| native::NativeDepthwise::new(s, isa.avx512()));
        #[cfg(not(target_arch = "x86_64"))]
        let native: Option<()> = None;
        let kernel = match &spec {
            Some(spec) if native.is_none() => DepthwiseKernel::compile(spec).ok(),
            _ => None,
        };
        Some(Depthwise {
            kernel,
            #[cfg(target_arch = "x86_64")]
            native,
            c,
            window,
            weights,
            bias,
            requant,
            zp_x,
            x_signed: xq.storage == ScalarType::I8,
            zp_y,
            lo,
            hi,
            out_hw: [oh, ow],
        })
    }

    /// [`Depthwise::image`] compiled for AVX2, where its channel loops become 8-lane vector code.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn image_avx2(&self, img: &[u8], xz: &mut [i32], acc: &mut [i32], dst: &mut [u8]) {
        self.image_any(img, xz, acc, dst)
    }

    /// [`Depthwise::image`], with small channel counts compiled for their size (the accumulators
    /// then stay in registers; measured slower than the general loop from 32 channels on).
    #[inline(always)]
    fn image_any(&self, img: &[u8], xz: &mut [i32], acc: &mut [i32], dst: &mut [u8]) {
        match self.c {
            8 => self.image_fixed::<8>(img, xz, dst),
            16 => self.image_fixed::<16>(img, xz, dst),
            _ => self.image(img, xz, acc, dst),
        }
    }

    /// [`Depthwise::image`] for `C` channels.
    #[inline(always)]
    fn image_fixed<const C: usize>(&self, img: &[u8], xz: &mut [i32], dst: &mut [u8]) {
        let w = &self.window;
        self.widen(img, xz);
        let bias: &[i32; C] = self.bias.as_slice().try_into().expect("C channels");
        for (pos, out) in dst.chunks_exact_mut(C).enumerate() {
            let mut acc = *bias;
            for (t, &p) in w.at(pos).iter().enumerate() {
                let p = p as usize;
                if p == w.plane {
                    continue;
                }
                let xs: &[i32; C] = xz[p * C..(p + 1) * C].try_into().expect("C channels");
                let ws: &[i32; C] = self.weights[t * C..(t + 1) * C].try_into().expect("C channels");
                for i in 0..C {
                    acc[i] = acc[i].wrapping_add(ws[i].wrapping_mul(xs[i]));
                }
            }
            self.requantize(&acc, out);
        }
    }

    /// `x − zp_x` as i32, for a whole image.
    #[inline(always)]
    fn widen(&self, img: &[u8], xz: &mut [i32]) {
        for (v, &b) in xz.iter_mut().zip(img) {
            *v = if self.x_signed { b as i8 as i32 } else { b as i32 } - self.zp_x;
        }
    }

    /// One pixel's accumulators to bytes.
    #[inline(always)]
    fn requantize(&self, acc: &[i32], out: &mut [u8]) {
        match &self.requant {
            Multipliers::F32(m) => crate::kernels::quant::lanes::requant_f32(acc, m, self.zp_y, self.lo, self.hi, out),
            Multipliers::Each(r) => {
                for ((o, &a), r) in out.iter_mut().zip(acc.iter()).zip(r) {
                    *o = r.apply(a, self.zp_y, self.lo, self.hi) as u8;
                }
            }
        }
    }

    /// One NHWC image (`img`, `h·w·c` bytes) into `dst` (`positions · c` bytes).
    #[inline(always)]
    fn image(&self, img: &[u8], xz: &mut [i32], acc: &mut [i32], dst: &mut [u8]) {
        let (c, w) = (self.c, &self.window);
        self.widen(img, xz);
        for (pos, out) in dst.chunks_exact_mut(c).enumerate() {
            acc.copy_from_slice(&self.bias);
            for (t, &p) in w.at(pos).iter().enumerate() {
                let p = p as usize;
                if p == w.plane {
                    continue;
                }
                let (xs, ws) = (&xz[p * c..(p + 1) * c], &self.weights[t * c..(t + 1) * c]);
                for ((a, &v), &k) in acc.iter_mut().zip(xs).zip(ws) {
                    *a = a.wrapping_add(k.wrapping_mul(v));
                }
            }
            self.requantize(acc, out);
        }
    }
}

impl WindowKernel for Depthwise {
    /// The output's logical dims `[C, oh, ow]`.
    fn out_dims(&self) -> [usize; 3] {
        [self.c, self.out_hw[0], self.out_hw[1]]
    }

    /// Integer operations (2 · multiply-adds) for `batch` images.
    fn ops(&self, batch: usize) -> u64 {
        2 * (batch * self.c * self.window.positions * self.window.taps) as u64
    }

    fn scratch_len(&self) -> usize {
        self.kernel.as_ref().map_or(0, DepthwiseKernel::scratch_len)
    }

    /// Runs `batch` NHWC images; returns the NHWC output.
    fn run(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Scratch<'_>) -> Result<(), String> {
        let (c, w) = (self.c, &self.window);
        let image = c * w.plane;
        if x.len() != batch * image {
            return Err(format!("a depthwise convolution input has {} bytes, not {batch}·{image}", x.len()));
        }
        if y.len() != batch * w.positions * c {
            return Err(format!("a depthwise convolution output has {} bytes, not {batch}·{}", y.len(), w.positions * c));
        }
        if let Some(kernel) = &self.kernel {
            return kernel.run(x, batch, y, scratch);
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(native) = &self.native {
            return native.run(w, x, batch, y);
        }
        let mut xz = vec![0i32; image];
        let mut acc = vec![0i32; c];
        for (img, dst) in x.chunks_exact(image).zip(y.chunks_exact_mut(w.positions * c)) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { self.image_avx2(img, &mut xz, &mut acc, dst) };
                continue;
            }
            self.image_any(img, &mut xz, &mut acc, dst);
        }
        Ok(())
    }

    fn jit(&self) -> bool {
        self.kernel.is_some() || self.native()
    }

    fn describe(&self) -> String {
        match &self.kernel {
            Some(k) => format!("depthwise, {}", k.describe()),
            None if self.native() => format!("depthwise, {}", self.native_describe()),
            None => "depthwise, rust loop".into(),
        }
    }

    fn direct(&self) -> Option<crate::direct::Direct> {
        let (c, w) = (self.c, &self.window);
        self.kernel.as_ref().map(DepthwiseKernel::direct).filter(|d| d.input == c * w.plane && d.output == c * w.positions)
    }
}

impl Depthwise {
    /// Whether the precompiled `std::arch` kernel runs the layer.
    fn native(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.native.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// What the `std::arch` kernel multiplies with: `avx2 vpmaddwd` or `avx512 vpmaddwd`.
    fn native_describe(&self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        if let Some(n) = &self.native {
            return n.describe();
        }
        "none"
    }
}

/// Per-channel requantization: f32 multipliers, run lane by lane; or anything else, one by one.
enum Multipliers {
    F32(Vec<f32>),
    Each(Vec<Requant>),
}
