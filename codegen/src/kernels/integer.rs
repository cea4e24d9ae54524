//! The products of dynamically quantized layers, `matmul_integer` and `conv_integer` with a
//! constant weight: ONNX's `(x − x_zp)·(w − w_zp)` exactly in i32, on tensors (the 8-bit input
//! comes from `dynamic_quantize`, its zero point with it, known only when the model runs).
//!
//! The weight and its zero point are compiled into a GEMM writing i32 accumulators
//! ([`crate::kernels::gemm::Output::I32`]) that computes `Σ x·(w − w_zp)`; the input's zero point then
//! subtracts `x_zp·Σ_k (w − w_zp)` per column (wrapping, as the kernel adds: the evaluator's
//! `matmul_integer` truncates its exact i64 product to i32, which is the same value). A
//! convolution's padding reads the zero point (its patch rows are gathered with it), so padded
//! taps add nothing, as in the evaluator. Layers whose sums could leave i32 stay on the
//! evaluator (which refuses such a convolution result).
//!
//! Bounds: everything here is safe Rust over checked lengths; the kernels check theirs.

use crate::kernels::conv::Conv;
use crate::kernels::gemm::{GemmKernel, GemmSpec};
use crate::layout::transpose;
use qc_ir::{Attrs, ScalarType, Tensor, TensorType};

/// A compiled `matmul_integer` or `conv_integer`.
pub struct IntegerProduct {
    shape: Shape,
    /// `Σ_k (w − w_zp)` per output column.
    colsum: Vec<i32>,
    signed: bool,
}

enum Shape {
    /// `[.., K] × [K, N]`.
    MatMul { kernel: GemmKernel, k: usize, n: usize },
    /// `[B, C, h, w]` ⊛ `[O, C, kh, kw]` → `[B, O, oh, ow]`.
    Conv { conv: Conv, chw: [usize; 3], o: usize, out_hw: [usize; 2] },
}

/// The 8-bit storage of a plain integer tensor type: `Some(signed)`.
fn eight_bit(t: &TensorType) -> Option<bool> {
    match t.elem.storage() {
        ScalarType::U8 if t.elem.quant().is_none() => Some(false),
        ScalarType::I8 if t.elem.quant().is_none() => Some(true),
        _ => None,
    }
}

/// A constant weight zero point's values, one or one per output column (`n`); `[0]` without one;
/// `None` for another count.
fn zero_points(w_zp: Option<&Tensor>, n: usize) -> Result<Option<Vec<i64>>, String> {
    let zps = match w_zp {
        Some(z) => z.to_i64_vec().ok_or("the weight zero point must be integers")?,
        None => vec![0],
    };
    Ok((zps.len() == 1 || zps.len() == n).then_some(zps))
}

/// The kernel `Σ x·(w − w_zp)` of column-major weights (`[N][K]`) and their columns' sums;
/// `None` when `255·Σ|w − w_zp|` could leave i32 for a column (where the evaluator refuses a
/// convolution's result).
fn compile(
    weights: Vec<i64>,
    zps: &[i64],
    k: usize,
    signed: bool,
    isa: crate::target::Isa,
) -> Result<Option<(GemmKernel, Vec<i32>)>, String> {
    if k == 0 || weights.is_empty() {
        return Ok(None);
    }
    let n = weights.len() / k;
    let zp = |c: usize| zps[if zps.len() == 1 { 0 } else { c }];
    let weights: Vec<i32> = weights.iter().enumerate().map(|(i, &v)| (v - zp(i / k)) as i32).collect();
    if weights.chunks_exact(k).any(|col| 255 * col.iter().map(|&v| (v as i64).abs()).sum::<i64>() >= 1 << 31) {
        return Ok(None);
    }
    let colsum = weights.chunks_exact(k).map(|col| col.iter().sum()).collect();
    let spec = GemmSpec {
        n,
        k,
        zp_a: 0,
        a_signed: signed,
        weights,
        bias: vec![0; n],
        requant: vec![qc_ir::requant::Requant::F32(1.0); n],
        zp_y: 0,
        lo: 0,
        hi: 255,
    };
    Ok(Some((GemmKernel::compile_i32(&spec, isa)?, colsum)))
}

impl IntegerProduct {
    /// Which kernel computes the product.
    pub fn describe(&self) -> String {
        match &self.shape {
            Shape::MatMul { kernel, .. } => format!("gemm {}", kernel.path().name()),
            Shape::Conv { conv, .. } => {
                use crate::kernel::WindowKernel;
                conv.describe()
            }
        }
    }

    /// The product of a `matmul_integer(a, b[, a_zp[, b_zp]])` whose `b` (2-D) and `b_zp` are
    /// constants and whose `a_zp` is a scalar; `None` for any other.
    pub fn matmul(
        tys: &[&TensorType],
        b: &Tensor,
        b_zp: Option<&Tensor>,
        isa: crate::target::Isa,
    ) -> Result<Option<IntegerProduct>, String> {
        let Some(signed) = eight_bit(tys[0]) else { return Ok(None) };
        if tys.get(2).is_some_and(|z| z.dims.iter().any(|d| d.fixed() != Some(1))) || b.shape().len() != 2 {
            return Ok(None);
        }
        let (k, n) = (b.shape()[0], b.shape()[1]);
        let wv = b.to_i64_vec().ok_or("the weight must be integers")?;
        let Some(zps) = zero_points(b_zp, n)? else { return Ok(None) };
        // `[K, N]` → column-major `[N][K]`.
        let weights: Vec<i64> = (0..n * k).map(|i| wv[(i % k) * n + i / k]).collect();
        let Some((kernel, colsum)) = compile(weights, &zps, k, signed, isa)? else { return Ok(None) };
        Ok(Some(IntegerProduct { shape: Shape::MatMul { kernel, k, n }, colsum, signed }))
    }

    /// The product of a `conv_integer(x, w[, x_zp[, w_zp]])` (groups = 1) whose `w` and `w_zp`
    /// are constants and whose input has fixed channels and size; `None` for any other.
    pub fn conv(
        attrs: &Attrs,
        tys: &[&TensorType],
        w: &Tensor,
        w_zp: Option<&Tensor>,
        out: &TensorType,
        isa: crate::target::Isa,
    ) -> Result<Option<IntegerProduct>, String> {
        let (x, signed) = match eight_bit(tys[0]) {
            Some(signed) if tys[0].rank() == 4 && out.rank() == 4 && attrs.int("groups", 1) == 1 => (tys[0], signed),
            _ => return Ok(None),
        };
        let fixed = |t: &TensorType, i: usize| t.dims[i].fixed().map(|n| n as usize);
        let (Some(c), Some(h), Some(wd), Some(oh), Some(ow)) =
            (fixed(x, 1), fixed(x, 2), fixed(x, 3), fixed(out, 2), fixed(out, 3))
        else {
            return Ok(None);
        };
        let ws = w.shape();
        if ws.len() != 4 || ws[1] != c {
            return Err(format!("a conv_integer weight of shape {ws:?} for {c} input channels"));
        }
        let (o, kh, kw) = (ws[0], ws[2], ws[3]);
        let wv = w.to_i64_vec().ok_or("the weight must be integers")?;
        let Some(zps) = zero_points(w_zp, o)? else { return Ok(None) };
        // `[O, C, kh, kw]` → `[O][kh][kw][C]`, the order of the channels-last patch rows.
        let k = c * kh * kw;
        let mut weights = vec![0i64; o * k];
        for oc in 0..o {
            for ic in 0..c {
                for t in 0..kh * kw {
                    weights[oc * k + t * c + ic] = wv[(oc * c + ic) * kh * kw + t];
                }
            }
        }
        let Some((kernel, colsum)) = compile(weights, &zps, k, signed, isa)? else { return Ok(None) };
        let conv = Conv::assemble(attrs, kernel, [c, h, wd], [kh, kw], [oh, ow], 0)?;
        Ok(Some(IntegerProduct { shape: Shape::Conv { conv, chw: [c, h, wd], o, out_hw: [oh, ow] }, colsum, signed }))
    }

    /// Integer operations (2 · multiply-adds) for an input of `x_len` elements.
    pub fn ops(&self, x_len: usize) -> u64 {
        match &self.shape {
            Shape::MatMul { k, n, .. } => 2 * (x_len / k * n * k) as u64,
            Shape::Conv { conv, chw: [c, h, w], .. } => {
                use crate::kernel::WindowKernel;
                conv.ops(x_len / (c * h * w))
            }
        }
    }

    /// The i32 product of `x` (8-bit integers) and the compiled weight, `x_zp` the input's zero
    /// point (a one-element tensor, or none for 0).
    pub fn run(&self, x: &Tensor, x_zp: Option<&Tensor>) -> Result<Tensor, String> {
        let (acc, shape) = self.products(x, x_zp)?;
        Ok(Tensor::I32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), acc).map_err(|e| e.to_string())?))
    }

    /// The output channels (columns).
    pub fn channels(&self) -> usize {
        self.colsum.len()
    }

    /// How the output's channels lie in logical order: runs of this many consecutive elements
    /// share a channel, and the channels repeat in order (`[.., N]`: 1; `[B, O, oh, ow]`: oh·ow).
    pub fn channel_run(&self) -> usize {
        match &self.shape {
            Shape::MatMul { .. } => 1,
            Shape::Conv { out_hw, .. } => out_hw[0] * out_hw[1],
        }
    }

    /// [`IntegerProduct::run`]'s values in logical order, and their shape.
    pub fn products(&self, x: &Tensor, x_zp: Option<&Tensor>) -> Result<(Vec<i32>, Vec<usize>), String> {
        let expected = if self.signed { ScalarType::I8 } else { ScalarType::U8 };
        if x.scalar_type() != expected {
            return Err(format!("an integer product reads {expected}, got {}", x.scalar_type()));
        }
        let bytes = crate::kernels::gemm::tensor_bytes(x).ok_or("an integer product reads 8-bit integers")?;
        let zp = match x_zp {
            Some(z) => match z.to_i64_vec().as_deref() {
                Some([v]) => *v as i32,
                _ => return Err("the input zero point must be one integer".into()),
            },
            None => 0,
        };
        let shape = x.shape();
        let (mut acc, out_shape) = match &self.shape {
            Shape::MatMul { kernel, k, n } => {
                if shape.last() != Some(k) {
                    return Err(format!("matmul_integer: an input of shape {shape:?} for K = {k}"));
                }
                let rows = bytes.len() / k;
                let mut acc = vec![0i32; rows * n];
                kernel.run_i32(&bytes, rows, &mut acc)?;
                let mut out_shape = shape.to_vec();
                *out_shape.last_mut().expect("rank ≥ 1") = *n;
                (acc, out_shape)
            }
            Shape::Conv { conv, chw, o, out_hw } => {
                if shape.len() != 4 || shape[1..] != chw[..] {
                    return Err(format!("conv_integer: an input of shape {shape:?} for {chw:?}"));
                }
                let (batch, image, positions) = (shape[0], chw[0] * chw[1] * chw[2], out_hw[0] * out_hw[1]);
                let mut nhwc = vec![0u8; bytes.len()];
                for (src, dst) in bytes.chunks_exact(image).zip(nhwc.chunks_exact_mut(image)) {
                    transpose(src, chw[0], chw[1] * chw[2], dst);
                }
                let pad = if self.signed { zp as i8 as u8 } else { zp as u8 };
                let mut acc = vec![0i32; batch * positions * o];
                conv.run_i32(&nhwc, batch, pad, &mut acc)?;
                (acc, vec![batch, *o, out_hw[0], out_hw[1]])
            }
        };
        let n = self.colsum.len();
        for row in acc.chunks_exact_mut(n) {
            for (v, &s) in row.iter_mut().zip(&self.colsum) {
                *v = v.wrapping_sub(zp.wrapping_mul(s));
            }
        }
        if let Shape::Conv { o, out_hw, .. } = &self.shape {
            // `[positions][O]` per image → `[O][positions]`.
            let positions = out_hw[0] * out_hw[1];
            let mut nchw = vec![0i32; acc.len()];
            for (src, dst) in acc.chunks_exact(positions * o).zip(nchw.chunks_exact_mut(positions * o)) {
                transpose(src, positions, *o, dst);
            }
            acc = nchw;
        }
        Ok((acc, out_shape))
    }
}
