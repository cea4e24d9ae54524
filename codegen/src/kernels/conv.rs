//! Integer conv2d with `groups = 1` as one JIT GEMM over channels-last patches. The input is
//! NHWC, so a patch row is `kh·kw` runs of `c` contiguous bytes (the zero point where a tap falls
//! in the padding) and the GEMM's `[positions][O]` product is already the NHWC output. A k×k
//! convolution on the vector paths reads its patches in place: each image is copied into a border
//! of zero points ([`Halo`]) and the kernel reads every kernel row (`kw·C` contiguous bytes, its K
//! padded to 4 with zero weights) where it lies ([`RowOffsets`]), so no patch matrix is built. A
//! 1×1 convolution with stride 1 and no padding reads its input as the patch matrix, copying
//! nothing; the others, and the scalar path, gather patch rows.
//!
//! Bounds: the gather tables are built from the window (whose entries are `< h·w` or the padding
//! marker, see [`Window`]), so byte indices are `≤ h·w·c` (the last one the zero point after the
//! image) and runs lie inside `[0, h·w·c)` and inside a patch row; the input length is checked
//! against `batch · h·w·c` before the gather; patch rows are `GemmKernel::row_stride` bytes,
//! which the kernel checks again. The gather is safe Rust. In place, the kernel's offsets are built
//! from the halo's geometry, and `run_in_place` checks that the halo holds the bytes they reach.

use crate::direct::{Direct, DirectFn};
use crate::kernel::WindowKernel;
use crate::kernels::gemm::{GemmKernel, GemmSpec, RowOffsets};
use crate::kernels::window::halo::{Halo, Scratch};
use crate::kernels::window::{Geometry, Window};
use qc_ir::{Attr, Attrs, Dim, OpKind, Tensor, TensorType};

/// A compiled convolution.
pub struct Conv {
    pub(crate) kernel: GemmKernel,
    gather: Gather,
    /// Input bytes per image, `h·w·c`.
    image: usize,
    positions: usize,
    /// The multiply-adds per output, `kh·kw·C` (the kernel's K may be padded).
    depth: usize,
    pad_value: u8,
    out_hw: [usize; 2],
}

/// How one image's patch rows (`row_stride` bytes each) are filled.
enum Gather {
    /// Not at all: the kernel reads them in place from a copy of the image with a border.
    InPlace(Halo),
    /// The input is the patch matrix (1×1, stride 1, no padding, rows need no padding bytes).
    Direct,
    /// Per output position, runs of contiguous bytes (neighbouring taps of a kernel row merge
    /// into one run); a short run is copied in 16-byte moves (see [`SHORT`]).
    Runs(Runs),
}

/// Every position's runs: `starts[pos]..starts[pos + 1]` index `runs`.
struct Runs {
    runs: Vec<Run>,
    starts: Vec<u32>,
}

/// `row[dst..dst + len]` = `image[src..src + len]`, or the zero point when `src` is `None`.
#[derive(Clone, Copy)]
struct Run {
    dst: u32,
    src: Option<u32>,
    len: u32,
}

/// Where a convolution's GEMM reads in a [`Halo`], and the order of the K its weights take.
struct InPlace {
    halo: Halo,
    offsets: RowOffsets,
    /// The K of each kernel row: `kw·C` rounded up to 4 (the extra k have zero weights).
    row_len: usize,
}

impl InPlace {
    /// The halo of a convolution (`attrs`: strides, pads, dilations) of `[c, h, w]` images with a
    /// `kh × kw` kernel to `oh × ow`, and where its GEMM reads: a row per output position (its
    /// first tap) and a group per 4 k. Without dilation along x a kernel row's taps are `kw·C`
    /// contiguous bytes, read as `⌈kw·C/4⌉` groups (the k past `kw·C` meet zero weights); with
    /// it, each tap is read on its own, which needs C a multiple of 4. `None` for other
    /// convolutions, attributes that do not describe a 2-D window, or a halo too large.
    fn new(attrs: &Attrs, [c, h, w]: [usize; 3], k: [usize; 2], out: [usize; 2]) -> Option<InPlace> {
        let g = Geometry::new(attrs, [h, w], k, out)?;
        let ([kh, kw], [oh, ow], [s0, s1], [d0, d1]) = (g.k, g.out, g.strides, g.dilations);
        if d1 != 1 && c % 4 != 0 {
            return None;
        }
        let halo = Halo::new(c, &g)?;
        let row_len = if d1 == 1 { (kw * c).div_ceil(4) * 4 } else { kw * c };
        let halo_ref = &halo;
        let rows_at = (0..oh).flat_map(|oy| (0..ow).map(move |ox| halo_ref.pixel(oy * s0, ox * s1))).collect();
        let groups = (0..kh)
            .flat_map(|ky| (0..row_len / 4).map(move |g| (ky, 4 * g)))
            .map(|(ky, k)| if d1 == 1 { halo.pixel(ky * d0, 0) + k } else { halo.pixel(ky * d0, k / c * d1) + k % c })
            .collect();
        let offsets = RowOffsets { rows: rows_at, groups };
        let halo = halo.reaching(offsets.reach());
        Some(InPlace { halo, offsets, row_len })
    }

    /// `weights` (`[N][kh][kw·C]`, as [`GemmSpec::weights`]) in this layout's K order, each
    /// kernel row padded with zeros to `row_len`.
    fn weights(&self, weights: &[i32], n: usize, kh: usize) -> Vec<i32> {
        let k = weights.len() / n;
        let row = k / kh;
        let mut out = vec![0; n * kh * self.row_len];
        for (src, dst) in weights.chunks_exact(row).zip(out.chunks_exact_mut(self.row_len)) {
            dst[..row].copy_from_slice(src);
        }
        out
    }
}

impl Gather {
    fn new(window: &Window, c: usize, stride: usize) -> Gather {
        if window.taps == 1
            && window.positions == window.plane
            && stride == c
            && (0..window.plane).all(|p| window.at(p)[0] as usize == p)
        {
            return Gather::Direct;
        }
        Gather::Runs(Gather::runs(window, c, stride))
    }

    /// The runs of every position's patch row.
    fn runs(window: &Window, c: usize, stride: usize) -> Runs {
        let (mut runs, mut starts) = (Vec::new(), vec![0u32]);
        for pos in 0..window.positions {
            let first = runs.len();
            let taps = window.at(pos).iter().map(|&p| (p as usize != window.plane).then_some(p * c as u32));
            for (t, src) in taps.chain(std::iter::once(None)).enumerate() {
                let (dst, len) = ((t * c) as u32, if t == window.taps { (stride - t * c) as u32 } else { c as u32 });
                if len == 0 {
                    continue;
                }
                match runs[first..].last_mut() {
                    Some(Run { dst: d, src: Some(s), len: l }) if src == Some(*s + *l) && *d + *l == dst => *l += len,
                    Some(Run { dst: d, src: None, len: l }) if src.is_none() && *d + *l == dst => *l += len,
                    _ => runs.push(Run { dst, src, len }),
                }
            }
            starts.push(runs.len() as u32);
        }
        Runs { runs, starts }
    }
}

/// Runs of up to four times this many bytes are copied in moves of this many (rounded up), where
/// the image has the bytes to read: the bytes written past the run are written again by the runs
/// and rows after it (the rows are filled in order), or lie in the row's tail past K (which meets
/// zero weights) or in the block's slack. Few-channel layers (an RGB stem: runs of 9 or 21 bytes)
/// then copy a row in a few moves, without a call to `memcpy` per run.
const SHORT: usize = 16;

thread_local! {
    /// A thread's patch matrix, reused across layers and runs.
    static PATCHES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Conv {
    /// Compiles an integer conv2d (groups = 1): weights `[O, C, kh, kw]` become a GEMM over
    /// `[kh][kw][C]` patch rows.
    /// `None` when its accumulators could leave i32 ([`GemmSpec::accumulators_fit`]).
    pub fn new(
        attrs: &Attrs,
        tys: &[&TensorType],
        w: &Tensor,
        bias: Option<&Tensor>,
        out: &TensorType,
        isa: crate::target::Isa,
    ) -> Result<Option<Conv>, String> {
        let x = tys[0];
        if x.rank() != 4 || out.rank() != 4 || w.shape().len() != 4 {
            return Err(format!("a convolution input must be NCHW, got {x}"));
        }
        let d: Option<Vec<usize>> = x.dims[1..].iter().map(|d| d.fixed().map(|n| n as usize)).collect();
        let d = d.ok_or("convolution inputs need fixed channel and spatial dims")?;
        let (c, h, wd) = (d[0], d[1], d[2]);
        let ws = w.shape();
        let (o, kh, kw) = (ws[0], ws[2], ws[3]);
        let oh = out.dims[2].fixed().ok_or("fixed output dims")? as usize;
        let ow = out.dims[3].fixed().ok_or("fixed output dims")? as usize;
        let xq = x.elem.quant().ok_or("the input must be quantized")?;
        let zp = xq.at(0).1;
        // `[O, C, kh, kw]` → `[O, kh·kw·C]`, the order of the channels-last patch rows.
        let flat_w = match w {
            Tensor::I8(a) => Tensor::I8(
                a.view()
                    .permuted_axes(ndarray::IxDyn(&[0, 2, 3, 1]))
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order(ndarray::IxDyn(&[o, c * kh * kw]))
                    .map_err(|e| e.to_string())?,
            ),
            _ => return Err("convolution weights must be i8".into()),
        };
        let k = (c * kh * kw) as u64;
        let wty = TensorType { dims: vec![Dim::Fixed(o as u64), Dim::Fixed(k)], elem: tys[1].elem.clone() };
        let xty = TensorType { dims: vec![Dim::Dynamic, Dim::Fixed(k)], elem: x.elem.clone() };
        let oty = TensorType { dims: vec![Dim::Dynamic, Dim::Fixed(o as u64)], elem: out.elem.clone() };
        let mut gemm_attrs = attrs.clone();
        for k in ["strides", "pads", "dilations", "groups"] {
            gemm_attrs.0.remove(k);
        }
        gemm_attrs.set("trans_b", Attr::Bool(true));
        let mut types = vec![&xty, &wty];
        if let Some(b) = tys.get(2) {
            types.push(b);
        }
        let spec = GemmSpec::from_node(OpKind::Gemm, &gemm_attrs, &types, &flat_w, bias, &oty)?;
        if !spec.accumulators_fit() {
            return Ok(None);
        }
        let pad_value = if xq.storage == qc_ir::ScalarType::I8 { zp as i8 as u8 } else { zp as u8 };
        // k×k kernels read their taps in place; the rest from patch rows.
        if kh * kw > 1 && (oh * ow) % 2 == 0 {
            if let Some(place) = InPlace::new(attrs, [c, h, wd], [kh, kw], [oh, ow]) {
                let weights = place.weights(&spec.weights, spec.n, kh);
                let spec = GemmSpec { k: weights.len() / spec.n, weights, ..spec.clone() };
                if let Some(kernel) = GemmKernel::compile_offsets(&spec, &place.offsets, &place.halo, isa)? {
                    let (image, positions) = (c * h * wd, oh * ow);
                    let gather = Gather::InPlace(place.halo);
                    let depth = c * kh * kw;
                    return Ok(Some(Conv { kernel, gather, image, positions, depth, pad_value, out_hw: [oh, ow] }));
                }
            }
        }
        let kernel = GemmKernel::compile(&spec, isa)?;
        Conv::assemble(attrs, kernel, [c, h, wd], [kh, kw], [oh, ow], pad_value).map(Some)
    }

    /// A convolution of a compiled kernel (whose rows are `[kh][kw][C]` patches) over the window
    /// of `attrs`, `pad_value` filling the taps in the padding.
    pub(crate) fn assemble(
        attrs: &Attrs,
        kernel: GemmKernel,
        [c, h, wd]: [usize; 3],
        [kh, kw]: [usize; 2],
        [oh, ow]: [usize; 2],
        pad_value: u8,
    ) -> Result<Conv, String> {
        let window = Window::new(attrs, (h, wd), (kh, kw), (oh, ow)).ok_or("bad convolution attributes")?;
        let gather = Gather::new(&window, c, kernel.row_stride());
        let (image, positions, depth) = (c * window.plane, window.positions, kernel.depth());
        Ok(Conv { kernel, gather, image, positions, depth, pad_value, out_hw: [oh, ow] })
    }

    /// The product of `batch` NHWC images (`x`) as i32 accumulators, `[batch·positions][O]`, for
    /// a kernel writing them, with `pad` as the padding byte (see [`crate::kernels::integer`]).
    pub fn run_i32(&self, x: &[u8], batch: usize, pad: u8, y: &mut [i32]) -> Result<(), String> {
        let n = self.kernel.columns();
        if y.len() != batch * self.positions * n {
            return Err(format!("a convolution output has {} accumulators, not {batch}·{}", y.len(), self.positions * n));
        }
        self.with_patches(x, batch, pad, |rows, r0, m| self.kernel.run_rows_i32(rows, m, &mut y[r0 * n..(r0 + m) * n]))
    }

    /// Calls `f(patches, first, m)` with the patch rows `first..first + m` of `batch` NHWC
    /// images (`x`), `pad` filling the taps in the padding: all of them at once when the input
    /// is the patch matrix, else a block at a time, gathered into a buffer small enough to stay
    /// in cache while the GEMM reads it.
    fn with_patches(
        &self,
        x: &[u8],
        batch: usize,
        pad: u8,
        mut f: impl FnMut(&[u8], usize, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let image = self.image;
        if x.len() != batch * image {
            return Err(format!("a convolution input has {} bytes, not {batch}·{image}", x.len()));
        }
        let stride = self.kernel.row_stride();
        match self.gather {
            Gather::Direct => return f(x, 0, batch * self.positions),
            Gather::InPlace(_) => return Err("this convolution reads its patches in place".into()),
            Gather::Runs(_) => {}
        }
        // Rows per block: about 48 KiB of patches, a multiple of 8 (the GEMM's tile height).
        let block = ((48 << 10) / stride.max(1)).clamp(8, 1 << 12) / 8 * 8;
        PATCHES.with(|patches| {
            let mut patches = patches.borrow_mut();
            let len = block.min(self.positions) * stride + SHORT;
            if patches.len() < len {
                patches.resize(len, 0);
            }
            let Gather::Runs(Runs { runs, starts }) = &self.gather else { unreachable!("handled above") };
            for (i, img) in x.chunks_exact(image).enumerate() {
                for p0 in (0..self.positions).step_by(block) {
                    let m = block.min(self.positions - p0);
                    let dst = &mut patches[..m * stride + SHORT];
                    for (r0, span) in (0..m).map(|r| r * stride).zip(starts[p0..].windows(2)) {
                        for r in &runs[span[0] as usize..span[1] as usize] {
                            let (d, len) = (r0 + r.dst as usize, r.len as usize);
                            match r.src.map(|s| s as usize) {
                                Some(s) if len <= 4 * SHORT && s + len.next_multiple_of(SHORT) <= img.len() => {
                                    for o in (0..len).step_by(SHORT) {
                                        let src: &[u8; SHORT] = img[s + o..s + o + SHORT].try_into().expect("16 bytes");
                                        let to: &mut [u8; SHORT] = (&mut dst[d + o..d + o + SHORT]).try_into().expect("16 bytes");
                                        *to = *src;
                                    }
                                }
                                Some(s) => dst[d..d + len].copy_from_slice(&img[s..s + len]),
                                None if len <= SHORT => dst[d..d + SHORT].fill(pad),
                                None => dst[d..d + len].fill(pad),
                            }
                        }
                    }
                    let dst = &dst[..m * stride];
                    f(dst, i * self.positions + p0, m)?;
                }
            }
            Ok(())
        })
    }
}

impl WindowKernel for Conv {
    /// The output's logical dims `[O, oh, ow]`.
    fn out_dims(&self) -> [usize; 3] {
        [self.kernel.columns(), self.out_hw[0], self.out_hw[1]]
    }

    /// Integer operations (2 · multiply-adds) for `batch` images.
    fn ops(&self, batch: usize) -> u64 {
        2 * (batch * self.positions * self.kernel.columns() * self.depth) as u64
    }

    /// Runs `batch` NHWC images; returns the NHWC output.
    fn run(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Scratch<'_>) -> Result<(), String> {
        if let Gather::InPlace(halo) = &self.gather {
            let per_image = self.positions * self.kernel.columns();
            if y.len() != batch * per_image {
                return Err(format!("a convolution output has {} bytes, not {batch}·{per_image}", y.len()));
            }
            return halo.each_image(x, batch, self.pad_value, scratch, |img, buf, i| {
                self.kernel.run_in_place(img, buf, &mut y[i * per_image..(i + 1) * per_image])
            });
        }
        let n = self.kernel.columns();
        if y.len() != batch * self.positions * n {
            return Err(format!("a convolution output has {} bytes, not {batch}·{}", y.len(), self.positions * n));
        }
        self.with_patches(x, batch, self.pad_value, |rows, r0, m| self.kernel.run_rows(rows, m, &mut y[r0 * n..(r0 + m) * n]))
    }

    fn jit(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let how = match &self.gather {
            Gather::InPlace(_) => "taps in place",
            Gather::Direct => "1x1, rows in place",
            Gather::Runs(_) => "patches by runs",
        };
        format!("conv, {how}, gemm {}", self.kernel.path().name())
    }

    fn direct(&self) -> Option<Direct> {
        let output = self.positions * self.kernel.columns();
        match &self.gather {
            Gather::InPlace(halo) => {
                let (f, image, reach) = self.kernel.direct_in_place()?;
                (image == self.image).then(|| Direct {
                    f: DirectFn::Window { f, pad: self.pad_value, buffer: halo.len().max(reach) },
                    input: image,
                    output,
                })
            }
            Gather::Direct => self.kernel.direct_rows(self.positions).filter(|d| d.input == self.image && d.output == output),
            Gather::Runs(_) => None,
        }
    }

    /// The halo buffer of a convolution that reads its patches in place.
    fn scratch_len(&self) -> usize {
        match &self.gather {
            Gather::InPlace(halo) => halo.len(),
            _ => 0,
        }
    }
}
