//! Convolution, matrix products, normalization, pooling, resize, softmax.

use crate::attr::Attrs;
use crate::infer::{ints_or, normalize_axis, window_out};
use crate::tensor::Tensor;
use ndarray::{Array2, ArrayD, Axis, Ix2, IxDyn};

/// Window geometry of a conv or pool over NCHW input.
struct Window {
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
    out: [usize; 2],
}

fn window(attrs: &Attrs, in_hw: [usize; 2], k: [usize; 2], ceil: bool) -> Result<Window, String> {
    let s = ints_or(attrs, "strides", 2, 1)?;
    let p = ints_or(attrs, "pads", 4, 0)?;
    let d = ints_or(attrs, "dilations", 2, 1)?;
    let mut out = [0; 2];
    for i in 0..2 {
        out[i] = window_out(in_hw[i] as u64, k[i] as u64, s[i], p[i], p[i + 2], d[i], ceil)? as usize;
    }
    Ok(Window {
        k,
        stride: [s[0] as usize, s[1] as usize],
        pad: [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize],
        dil: [d[0] as usize, d[1] as usize],
        out,
    })
}

impl Window {
    /// The input coordinate of kernel tap `k` for output position `o` along dim `i`, if inside.
    fn at(&self, i: usize, o: usize, k: usize, len: usize) -> Option<usize> {
        let pos = (o * self.stride[i] + k * self.dil[i]) as isize - self.pad[i] as isize;
        (pos >= 0 && (pos as usize) < len).then_some(pos as usize)
    }
}

fn dims4<T>(a: &ArrayD<T>) -> Result<[usize; 4], String> {
    let s = a.shape();
    if s.len() != 4 {
        return Err(format!("expected a rank-4 tensor, got shape {s:?}"));
    }
    Ok([s[0], s[1], s[2], s[3]])
}

/// 2-D convolution, NCHW input, OIHW weight, optional bias; in f32, or exactly in integers
/// (the caller has subtracted the zero points, so padding reads real zero).
///
/// Each output element is `Σ x·w` over (ic, ky, kx) in that order, skipping taps in the padding,
/// then `+ bias` — the definition, whatever the loop structure: outputs are computed a row at a
/// time for a block of [`OC_BLOCK`] output channels (one multiply of an input value by the block's
/// weights, which vectorizes), and large convolutions split their blocks over threads. The order
/// of the additions into each element never changes, so the result does not depend on either.
pub fn conv2d<T: ndarray::LinalgScalar + Send + Sync>(
    x: &ArrayD<T>,
    w: &ArrayD<T>,
    b: Option<&ArrayD<T>>,
    attrs: &Attrs,
) -> Result<ArrayD<T>, String> {
    let [n, c, h, wd] = dims4(x)?;
    let [o, ci, kh, kw] = dims4(w)?;
    let g = attrs.int("groups", 1).max(1) as usize;
    if ci * g != c || o % g != 0 {
        return Err(format!("conv2d: input has {c} channels, weight [{o}, {ci}, ..] with {g} groups"));
    }
    let win = window(attrs, [h, wd], [kh, kw], false)?;
    let [oh, ow] = win.out;
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let (xs, ws) = (x.as_slice().expect("standard"), w.as_slice().expect("standard"));
    let bias: Vec<T> = b.map_or(vec![T::zero(); o], |b| b.iter().copied().collect());
    let og = o / g;
    // For each kx, the outputs of a row whose tap lies inside the input row: xo in [lo, hi).
    let cols: Vec<(usize, usize)> = (0..kw)
        .map(|kx| {
            let lo = (0..ow).find(|&xo| win.at(1, xo, kx, wd).is_some()).unwrap_or(ow);
            let hi = (lo..ow).find(|&xo| win.at(1, xo, kx, wd).is_none()).unwrap_or(ow);
            (lo, hi)
        })
        .collect();
    let geometry = ConvGeometry { c, h, wd, ci, kh, kw, oh, ow, og, win: &win, cols: &cols };
    // The units of work: (image, first output channel of a block within one group).
    let block = if og >= OC_BLOCK / 2 { OC_BLOCK } else { 1 };
    let units: Vec<(usize, usize)> =
        (0..n).flat_map(|ni| (0..g).flat_map(move |grp| (0..og).step_by(block).map(move |j| (ni, grp * og + j)))).collect();
    let work = n * o * oh * ow * ci * kh * kw;
    let threads = if work >= 1 << 22 { std::thread::available_parallelism().map_or(1, |t| t.get()).min(units.len()) } else { 1 };
    let run = |part: &[(usize, usize)]| -> Vec<Vec<T>> {
        part.iter()
            .map(|&(ni, oc0)| {
                let nb = block.min(og - oc0 % og);
                geometry.block(xs, ws, ni, oc0, nb, block)
            })
            .collect()
    };
    let results: Vec<Vec<T>> = if threads > 1 {
        let chunk = units.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = units.chunks(chunk).map(|part| s.spawn(move || run(part))).collect();
            handles.into_iter().flat_map(|h| h.join().expect("a convolution thread panicked")).collect()
        })
    } else {
        run(&units)
    };
    let plane = oh * ow;
    let mut out = vec![T::zero(); n * o * plane];
    for (&(ni, oc0), planes) in units.iter().zip(results) {
        for (j, p) in planes.chunks_exact(plane).enumerate() {
            let oc = oc0 + j;
            for (dst, &v) in out[(ni * o + oc) * plane..][..plane].iter_mut().zip(p) {
                *dst = v + bias[oc];
            }
        }
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[n, o, oh, ow]), out).expect("sized"))
}

/// Output channels computed together by [`conv2d`].
const OC_BLOCK: usize = 8;

/// What [`conv2d`]'s blocks share.
struct ConvGeometry<'a> {
    c: usize,
    h: usize,
    wd: usize,
    ci: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    og: usize,
    win: &'a Window,
    cols: &'a [(usize, usize)],
}

impl ConvGeometry<'_> {
    /// The sums (without bias) of `nb` output channels from `oc0` (one group) of image `ni`:
    /// `nb` planes, computed `width` channels at a time (`width` is 1 or [`OC_BLOCK`]).
    fn block<T: ndarray::LinalgScalar>(&self, xs: &[T], ws: &[T], ni: usize, oc0: usize, nb: usize, width: usize) -> Vec<T> {
        let &ConvGeometry { c, h, wd, ci, kh, kw, oh, ow, og, win, cols } = self;
        let grp = oc0 / og;
        let (sx, dx, px) = (win.stride[1], win.dil[1], win.pad[1]);
        let mut planes = vec![T::zero(); nb * oh * ow];
        if width == 1 {
            // One channel: the row is the vector.
            let oc = oc0;
            for y in 0..oh {
                let row = &mut planes[y * ow..][..ow];
                for ic in 0..ci {
                    for ky in 0..kh {
                        let Some(iy) = win.at(0, y, ky, h) else { continue };
                        let input = &xs[((ni * c + grp * ci + ic) * h + iy) * wd..][..wd];
                        for (kx, &(lo, hi)) in cols.iter().enumerate() {
                            let wv = ws[((oc * ci + ic) * kh + ky) * kw + kx];
                            let first = lo * sx + kx * dx - px;
                            for (i, acc) in row[lo..hi].iter_mut().enumerate() {
                                *acc = *acc + input[first + i * sx] * wv;
                            }
                        }
                    }
                }
            }
            return planes;
        }
        // The block's weights, [ic][ky][kx][OC_BLOCK], zero beyond `nb`.
        let mut wt = vec![[T::zero(); OC_BLOCK]; ci * kh * kw];
        for (j, oc) in (oc0..oc0 + nb).enumerate() {
            for (t, &v) in ws[oc * ci * kh * kw..][..ci * kh * kw].iter().enumerate() {
                wt[t][j] = v;
            }
        }
        let mut acc = vec![[T::zero(); OC_BLOCK]; ow];
        for y in 0..oh {
            acc.fill([T::zero(); OC_BLOCK]);
            for ic in 0..ci {
                for ky in 0..kh {
                    let Some(iy) = win.at(0, y, ky, h) else { continue };
                    let input = &xs[((ni * c + grp * ci + ic) * h + iy) * wd..][..wd];
                    for (kx, &(lo, hi)) in cols.iter().enumerate() {
                        let wv = wt[(ic * kh + ky) * kw + kx];
                        let first = lo * sx + kx * dx - px;
                        for (i, a) in acc[lo..hi].iter_mut().enumerate() {
                            let v = input[first + i * sx];
                            for (s, &k) in a.iter_mut().zip(&wv) {
                                *s = *s + v * k;
                            }
                        }
                    }
                }
            }
            for (j, plane) in planes.chunks_exact_mut(oh * ow).enumerate() {
                for (dst, a) in plane[y * ow..][..ow].iter_mut().zip(&acc) {
                    *dst = a[j];
                }
            }
        }
        planes
    }
}

/// 2-D transposed convolution, weight `[C_in, C_out/groups, kH, kW]`.
pub fn conv_transpose2d(x: &ArrayD<f32>, w: &ArrayD<f32>, b: Option<&ArrayD<f32>>, attrs: &Attrs) -> Result<ArrayD<f32>, String> {
    let [n, c, h, wd] = dims4(x)?;
    let [wc, og, kh, kw] = dims4(w)?;
    let g = attrs.int("groups", 1).max(1) as usize;
    if wc != c || c % g != 0 {
        return Err(format!("conv_transpose2d: input has {c} channels, weight has {wc}"));
    }
    let s = ints_or(attrs, "strides", 2, 1)?;
    let p = ints_or(attrs, "pads", 4, 0)?;
    let d = ints_or(attrs, "dilations", 2, 1)?;
    let op = ints_or(attrs, "output_padding", 2, 0)?;
    let size = |i: usize, len: usize, k: usize| -> isize {
        ((len as isize - 1) * s[i] as isize + d[i] as isize * (k as isize - 1) + 1 + op[i] as isize)
            - p[i] as isize
            - p[i + 2] as isize
    };
    let (oh, ow) = (size(0, h, kh), size(1, wd, kw));
    if oh <= 0 || ow <= 0 {
        return Err("conv_transpose2d output is empty".into());
    }
    let (oh, ow) = (oh as usize, ow as usize);
    let o = og * g;
    let cg = c / g;
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[n, o, oh, ow]));
    for ni in 0..n {
        for ic in 0..c {
            let grp = ic / cg;
            for y in 0..h {
                for xi in 0..wd {
                    let v = x[[ni, ic, y, xi]];
                    for oc in 0..og {
                        for ky in 0..kh {
                            let oy = (y * s[0] as usize + ky * d[0] as usize) as isize - p[0] as isize;
                            if oy < 0 || oy >= oh as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ox = (xi * s[1] as usize + kx * d[1] as usize) as isize - p[1] as isize;
                                if ox < 0 || ox >= ow as isize {
                                    continue;
                                }
                                out[[ni, grp * og + oc, oy as usize, ox as usize]] += v * w[[ic, oc, ky, kx]];
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(b) = b {
        for oc in 0..o {
            out.index_axis_mut(Axis(1), oc).mapv_inplace(|v| v + b[oc]);
        }
    }
    Ok(out)
}

fn as2<T: Clone>(a: &ArrayD<T>) -> Array2<T> {
    a.view().into_dimensionality::<Ix2>().expect("rank 2").to_owned()
}

/// Numpy `matmul`, in f32 or (exactly) in integers.
pub fn matmul<T: ndarray::LinalgScalar>(a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>, String> {
    let a2 = if a.ndim() == 1 { a.view().insert_axis(Axis(0)).to_owned() } else { a.clone() };
    let b2 = if b.ndim() == 1 { b.view().insert_axis(Axis(1)).to_owned() } else { b.clone() };
    let (ra, rb) = (a2.ndim(), b2.ndim());
    let (m, k) = (a2.shape()[ra - 2], a2.shape()[ra - 1]);
    let (k2, n) = (b2.shape()[rb - 2], b2.shape()[rb - 1]);
    if k != k2 {
        return Err(format!("matmul inner dims differ: {k} vs {k2}"));
    }
    let batch = super::elementwise::broadcast_shape(&a2.shape()[..ra - 2], &b2.shape()[..rb - 2])?;
    let mut ash = batch.clone();
    ash.extend([m, k]);
    let mut bsh = batch.clone();
    bsh.extend([k, n]);
    let av = a2.broadcast(IxDyn(&ash)).ok_or("broadcast")?.as_standard_layout().into_owned();
    let bv = b2.broadcast(IxDyn(&bsh)).ok_or("broadcast")?.as_standard_layout().into_owned();
    let nb: usize = batch.iter().product();
    let av = av.into_shape_with_order(IxDyn(&[nb, m, k])).map_err(|e| e.to_string())?;
    let bv = bv.into_shape_with_order(IxDyn(&[nb, k, n])).map_err(|e| e.to_string())?;
    let (av, bv) = (av.as_slice().expect("standard layout"), bv.as_slice().expect("standard layout"));
    let mut out = vec![T::zero(); nb * m * n];
    for i in 0..nb {
        product(&av[i * m * k..][..m * k], &bv[i * k * n..][..k * n], k, n, &mut out[i * m * n..][..m * n]);
    }
    let mut shape = batch;
    if a.ndim() > 1 {
        shape.push(m);
    }
    if b.ndim() > 1 {
        shape.push(n);
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("sized"))
}

/// `y[i][j] = Σ_k a[i][k]·b[k][j]` for row-major `a` (`[m][k]`) and `b` (`[k][n]`) into `y`
/// (`[m][n]`, zero): each element's sum starts at 0 and takes its products in `k` order, a
/// multiply and then an add (the definition the compiled f32 products reproduce). The loop runs
/// `i, k, j`, so the inner loop is a vector update of a row.
pub fn product<T: ndarray::LinalgScalar>(a: &[T], b: &[T], k: usize, n: usize, y: &mut [T]) {
    for (row, a_row) in y.chunks_exact_mut(n.max(1)).zip(a.chunks_exact(k.max(1))) {
        for (&aik, b_row) in a_row.iter().zip(b.chunks_exact(n.max(1))) {
            for (o, &bkj) in row.iter_mut().zip(b_row) {
                *o = *o + aik * bkj;
            }
        }
    }
}

/// `alpha * op(A) op(B) + beta * C`, the product as [`product`] defines it.
pub fn gemm(a: &ArrayD<f32>, b: &ArrayD<f32>, c: Option<&ArrayD<f32>>, attrs: &Attrs) -> Result<ArrayD<f32>, String> {
    if a.ndim() != 2 || b.ndim() != 2 {
        return Err("gemm operands must be 2-D".into());
    }
    let a2 = if attrs.bool("trans_a", false) { as2(a).reversed_axes() } else { as2(a) };
    let b2 = if attrs.bool("trans_b", false) { as2(b).reversed_axes() } else { as2(b) };
    if a2.ncols() != b2.nrows() {
        return Err(format!("gemm inner dims differ: {} vs {}", a2.ncols(), b2.nrows()));
    }
    let (alpha, beta) = (attrs.float("alpha", 1.0), attrs.float("beta", 1.0));
    let (m, k, n) = (a2.nrows(), a2.ncols(), b2.ncols());
    let (a2, b2) = (a2.as_standard_layout(), b2.as_standard_layout());
    let mut y = vec![0.0f32; m * n];
    product(a2.as_slice().expect("standard layout"), b2.as_slice().expect("standard layout"), k, n, &mut y);
    let mut y = ArrayD::from_shape_vec(IxDyn(&[m, n]), y).expect("sized");
    if alpha != 1.0 {
        y.mapv_inplace(|v| v * alpha);
    }
    if let Some(c) = c {
        let shape = y.shape().to_vec();
        let cb = c.broadcast(IxDyn(&shape)).ok_or("gemm C does not broadcast")?;
        ndarray::Zip::from(&mut y).and(&cb).for_each(|v, &cv| *v += beta * cv);
    }
    Ok(y)
}

/// Inference batch norm over axis 1: `(x - mean) / sqrt(var + eps) * scale + bias`.
pub fn batch_norm(
    x: &ArrayD<f32>,
    scale: &ArrayD<f32>,
    bias: &ArrayD<f32>,
    mean: &ArrayD<f32>,
    var: &ArrayD<f32>,
    eps: f32,
) -> ArrayD<f32> {
    let mut y = x.clone();
    for c in 0..x.shape()[1] {
        let inv = 1.0 / (var[c] + eps).sqrt();
        let (s, b, m) = (scale[c], bias[c], mean[c]);
        y.index_axis_mut(Axis(1), c).mapv_inplace(|v| (v - m) * inv * s + b);
    }
    y
}

fn pool_geometry(attrs: &Attrs, shape: &[usize]) -> Result<Window, String> {
    if shape.len() != 4 {
        return Err(format!("pooling expects NCHW input, got shape {shape:?}"));
    }
    let k = ints_or(attrs, "kernel_shape", 2, 1)?;
    window(attrs, [shape[2], shape[3]], [k[0] as usize, k[1] as usize], attrs.bool("ceil_mode", false))
}

/// Max pooling; padding never wins. Works on f32 and on integers (quantized values).
pub fn max_pool(x: &Tensor, attrs: &Attrs) -> Result<Tensor, String> {
    Ok(match x {
        Tensor::F32(a) => Tensor::F32(max_pool_of(a, attrs, f32::NEG_INFINITY)?),
        Tensor::I8(a) => Tensor::I8(max_pool_of(a, attrs, i8::MIN)?),
        Tensor::U8(a) => Tensor::U8(max_pool_of(a, attrs, u8::MIN)?),
        Tensor::I32(a) => Tensor::I32(max_pool_of(a, attrs, i32::MIN)?),
        other => return Err(format!("max_pool on {} is not supported", other.scalar_type())),
    })
}

/// Max pooling of one element type; `lowest` is what the padding reads (it never wins).
fn max_pool_of<T: Copy + PartialOrd>(x: &ArrayD<T>, attrs: &Attrs, lowest: T) -> Result<ArrayD<T>, String> {
    let [n, c, h, w] = dims4(x)?;
    let win = pool_geometry(attrs, x.shape())?;
    let [oh, ow] = win.out;
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let mut out = Vec::with_capacity(n * c * oh * ow);
    for plane in xs.chunks_exact(h * w) {
        for y in 0..oh {
            for xo in 0..ow {
                let mut m = lowest;
                for ky in 0..win.k[0] {
                    let Some(iy) = win.at(0, y, ky, h) else { continue };
                    for kx in 0..win.k[1] {
                        let Some(ix) = win.at(1, xo, kx, w) else { continue };
                        let v = plane[iy * w + ix];
                        if v > m {
                            m = v;
                        }
                    }
                }
                out.push(m);
            }
        }
    }
    Ok(ArrayD::from_shape_vec(IxDyn(&[n, c, oh, ow]), out).expect("sized"))
}

/// Average pooling; `count_include_pad` counts padded positions (not those past the padding).
pub fn avg_pool(x: &ArrayD<f32>, attrs: &Attrs) -> Result<ArrayD<f32>, String> {
    let (sums, counts) = window_sums(x, attrs)?;
    Ok(ndarray::Zip::from(&sums).and(&counts).map_collect(|&s, &n| if n == 0 { 0.0 } else { s / n as f32 }))
}

/// The sums of every average-pooling window and the number of positions each counts.
pub fn window_sums<T: ndarray::LinalgScalar>(x: &ArrayD<T>, attrs: &Attrs) -> Result<(ArrayD<T>, ArrayD<usize>), String> {
    let [n, c, h, w] = dims4(x)?;
    let win = pool_geometry(attrs, x.shape())?;
    let include_pad = attrs.bool("count_include_pad", false);
    let [oh, ow] = win.out;
    let mut sums = ArrayD::<T>::zeros(IxDyn(&[n, c, oh, ow]));
    let mut counts = ArrayD::<usize>::zeros(IxDyn(&[n, c, oh, ow]));
    let padded = |i: usize, o: usize, k: usize, len: usize| {
        let pos = (o * win.stride[i] + k * win.dil[i]) as isize - win.pad[i] as isize;
        pos >= -(win.pad[i] as isize) && pos < (len + win.pad[i + 2]) as isize
    };
    for ni in 0..n {
        for ci in 0..c {
            for y in 0..oh {
                for xo in 0..ow {
                    let (mut sum, mut count) = (T::zero(), 0usize);
                    for ky in 0..win.k[0] {
                        for kx in 0..win.k[1] {
                            match (win.at(0, y, ky, h), win.at(1, xo, kx, w)) {
                                (Some(iy), Some(ix)) => {
                                    sum = sum + x[[ni, ci, iy, ix]];
                                    count += 1;
                                }
                                _ if include_pad && padded(0, y, ky, h) && padded(1, xo, kx, w) => count += 1,
                                _ => {}
                            }
                        }
                    }
                    sums[[ni, ci, y, xo]] = sum;
                    counts[[ni, ci, y, xo]] = count;
                }
            }
        }
    }
    Ok((sums, counts))
}

/// The source coordinate of output index `o` along one axis.
fn source_coord(mode: &str, o: usize, in_len: usize, out_len: usize, scale: f32) -> f32 {
    let o = o as f32;
    match mode {
        "asymmetric" => o / scale,
        "align_corners" => {
            if out_len <= 1 {
                0.0
            } else {
                o * (in_len as f32 - 1.0) / (out_len as f32 - 1.0)
            }
        }
        "pytorch_half_pixel" if out_len <= 1 => 0.0,
        _ => (o + 0.5) / scale - 0.5,
    }
}

fn nearest_index(mode: &str, c: f32, in_len: usize) -> usize {
    let i = match mode {
        "floor" => c.floor(),
        "ceil" => c.ceil(),
        "round_prefer_ceil" => (c + 0.5).floor(),
        // round_prefer_floor: halves go down.
        _ => {
            if c.fract() == 0.5 {
                c.floor()
            } else {
                c.round()
            }
        }
    };
    (i.max(0.0) as usize).min(in_len - 1)
}

/// Resize to `out_shape`, one axis at a time (nearest, or linear = separable bilinear).
pub fn resize(x: &ArrayD<f32>, attrs: &Attrs, out_shape: &[usize]) -> Result<ArrayD<f32>, String> {
    let mode = attrs.str("mode").unwrap_or("nearest");
    let ctm = attrs.str("coordinate_transformation_mode").unwrap_or("half_pixel");
    let nm = attrs.str("nearest_mode").unwrap_or("round_prefer_floor");
    let scales = attrs.floats("scales");
    let mut cur = x.clone();
    for axis in 0..x.ndim() {
        let in_len = x.shape()[axis];
        let out_len = if let Some(s) = scales { (in_len as f64 * s[axis] as f64).floor() as usize } else { out_shape[axis] };
        let scale = scales.map_or(out_len as f32 / in_len as f32, |s| s[axis]);
        if out_len == in_len && scale == 1.0 {
            continue;
        }
        if in_len == 0 {
            return Err("cannot resize an empty axis".into());
        }
        let mut shape = cur.shape().to_vec();
        shape[axis] = out_len;
        let mut next = ArrayD::<f32>::zeros(IxDyn(&shape));
        for o in 0..out_len {
            let c = source_coord(ctm, o, in_len, out_len, scale);
            let mut dst = next.index_axis_mut(Axis(axis), o);
            if mode == "nearest" {
                dst.assign(&cur.index_axis(Axis(axis), nearest_index(nm, c, in_len)));
            } else {
                let c = c.clamp(0.0, (in_len - 1) as f32);
                let (i0, frac) = (c.floor() as usize, c - c.floor());
                let i1 = (i0 + 1).min(in_len - 1);
                let (a, b) = (cur.index_axis(Axis(axis), i0), cur.index_axis(Axis(axis), i1));
                ndarray::Zip::from(&mut dst).and(&a).and(&b).for_each(|d, &p, &q| *d = p * (1.0 - frac) + q * frac);
            }
        }
        cur = next;
    }
    Ok(cur)
}

/// Softmax along `axis`: per lane `e = exp(v − max)` (qc's [`super::elementwise::exp`]), their
/// sum in index order, then `e / sum`.
pub fn softmax(x: &ArrayD<f32>, axis: i64) -> Result<ArrayD<f32>, String> {
    let axis = Axis(normalize_axis(axis, x.ndim())?);
    let mut y = x.clone();
    for mut lane in y.lanes_mut(axis) {
        let m = lane.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        lane.mapv_inplace(|v| super::elementwise::exp(v - m));
        let s = lane.fold(0.0f32, |a, &b| a + b);
        lane.mapv_inplace(|v| v / s);
    }
    Ok(y)
}

/// Layer normalization of one row `x` (the normalized dims, flattened): `mean = Σx / n` and
/// `var = Σ(x − mean)² / n`, each sum in index order; then `(x − mean) · (1 / sqrt(var + eps))
/// · scale + bias` per element. `scale` and `bias` hold one value per element of the row.
#[inline(always)]
pub fn layer_norm_row(x: &[f32], scale: &[f32], bias: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    let n = x.len() as f32;
    let mean = x.iter().fold(0.0f32, |a, &v| a + v) / n;
    let var = x.iter().fold(0.0f32, |a, &v| a + (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    match bias {
        Some(b) => {
            for (((o, &v), &s), &b) in y.iter_mut().zip(x).zip(scale).zip(b) {
                *o = (v - mean) * inv * s + b;
            }
        }
        None => {
            for ((o, &v), &s) in y.iter_mut().zip(x).zip(scale) {
                *o = (v - mean) * inv * s;
            }
        }
    }
}

/// `layer_norm` over the dims from `axis` on (see [`layer_norm_row`]); `scale` and `bias`
/// broadcast to those dims.
pub fn layer_norm(
    x: &ArrayD<f32>,
    scale: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
    axis: i64,
    eps: f32,
) -> Result<ArrayD<f32>, String> {
    let axis = normalize_axis(axis, x.ndim())?;
    let norm = &x.shape()[axis..];
    let row: usize = norm.iter().product();
    let spread = |t: &ArrayD<f32>, what: &str| -> Result<Vec<f32>, String> {
        let v = t.broadcast(IxDyn(norm)).ok_or_else(|| format!("the layer_norm {what} does not broadcast to {norm:?}"))?;
        Ok(v.iter().copied().collect())
    };
    let scale = spread(scale, "scale")?;
    let bias = bias.map(|b| spread(b, "bias")).transpose()?;
    let xs = x.as_standard_layout();
    let mut y = vec![0.0f32; x.len()];
    if row > 0 {
        for (src, dst) in xs.as_slice().expect("standard layout").chunks_exact(row).zip(y.chunks_exact_mut(row)) {
            layer_norm_row(src, &scale, bias.as_deref(), eps, dst);
        }
    }
    ArrayD::from_shape_vec(x.raw_dim(), y).map_err(|e| e.to_string())
}
