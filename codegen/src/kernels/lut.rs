//! 8-bit activations without an integer form (sigmoid, hard_sigmoid, hard_swish, clip on
//! quantized values) as one table lookup per element: the evaluator dequantizes, applies the f32
//! function and quantizes, a function of the byte alone for per-tensor parameters, so the table
//! is the evaluator's own result on all 256 bytes, computed when the model is compiled — equal to
//! it by construction. The layout does not matter.
//!
//! A mul of a value by such an activation of itself (SiLU, `x · sigmoid(x)`; `x · hard_sigmoid(x)`)
//! is a function of `x`'s byte too: [`Lut::times_input`] composes the activation's table with the
//! evaluator's mul on the 256 pairs it meets, so the pair runs as one lookup.
//!
//! On the AVX-512 levels, where the CPU has AVX-512 VBMI, the lookup takes 64 bytes at a time:
//! two `vpermi2b` pick from the table's low and high halves by the low seven bits, and the high
//! bit chooses between them (the same table, so the same bytes).
//!
//! Bounds: the table has 256 entries, indexed by a byte; lengths are checked equal; the VBMI loop
//! loads and stores through 64-byte slices of them and finishes the tail byte by byte.

use crate::kernels::quant::Q8;
use crate::target::Isa;
use qc_ir::{Attrs, Dim, OpKind, Tensor, TensorType};

/// A compiled lookup-table activation.
pub struct Lut {
    table: Box<[u8; 256]>,
    /// The activation's op, and whether the table includes the mul by its input.
    kind: OpKind,
    times_input: bool,
    /// Whether the lookup runs 64 bytes at a time (AVX-512 VBMI).
    vbmi: bool,
}

impl Lut {
    /// The table of an 8-bit per-tensor `kind` from `x` to `out`, or `None`.
    pub fn new(kind: OpKind, attrs: &Attrs, x: &TensorType, out: &TensorType, isa: Isa) -> Option<Lut> {
        if !matches!(kind, OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish | OpKind::Clip) {
            return None;
        }
        let (qx, _) = (Q8::of(x)?, Q8::of(out)?);
        let bytes: Vec<i32> = (0..=255u8).map(|b| qx.value(b)).collect();
        let all = Tensor::I32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[256]), bytes).ok()?).cast(x.elem.storage());
        let flat = |t: &TensorType| TensorType { dims: vec![Dim::Fixed(256)], elem: t.elem.clone() };
        let y = qc_ir::eval::eval_op(kind, attrs, &[&all], &[&flat(x)], &flat(out)).ok()?;
        Some(Lut { table: table_of(&y)?, kind, times_input: false, vbmi: vbmi(isa) })
    }

    /// The table of `mul(x, f(x))` (or `mul(f(x), x)` when `f_first`) for the 8-bit per-tensor
    /// activation `kind` from `x` to `f_out`, the mul (with its attributes) into `out`: the
    /// evaluator's mul of each byte of `x` with the activation's byte for it.
    #[allow(clippy::too_many_arguments)]
    pub fn times_input(
        kind: OpKind,
        attrs: &Attrs,
        x: &TensorType,
        f_out: &TensorType,
        mul_attrs: &Attrs,
        f_first: bool,
        out: &TensorType,
        isa: Isa,
    ) -> Option<Lut> {
        let f = Lut::new(kind, attrs, x, f_out, isa)?;
        Q8::of(out)?;
        let qx = Q8::of(x)?;
        let qf = Q8::of(f_out)?;
        let xs: Vec<i32> = (0..=255u8).map(|b| qx.value(b)).collect();
        let fs: Vec<i32> = f.table.iter().map(|&b| qf.value(b)).collect();
        let tensor = |v: Vec<i32>, t: &TensorType| {
            Some(Tensor::I32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[256]), v).ok()?).cast(t.elem.storage()))
        };
        let (xs, fs) = (tensor(xs, x)?, tensor(fs, f_out)?);
        let flat = |t: &TensorType| TensorType { dims: vec![Dim::Fixed(256)], elem: t.elem.clone() };
        let (args, tys) = match f_first {
            true => ([&fs, &xs], [&flat(f_out), &flat(x)]),
            false => ([&xs, &fs], [&flat(x), &flat(f_out)]),
        };
        let y = qc_ir::eval::eval_op(OpKind::Mul, mul_attrs, &args, &tys, &flat(out)).ok()?;
        Some(Lut { table: table_of(&y)?, kind, times_input: true, vbmi: f.vbmi })
    }

    /// What it runs: `lookup table`, or `x · sigmoid(x), one lookup table`, and `, vbmi` for
    /// the 64-byte loop.
    pub fn describe(&self) -> String {
        let vbmi = if self.vbmi { ", vbmi" } else { "" };
        match self.times_input {
            true => format!("x · {}(x), one lookup table{vbmi}", self.kind),
            false => format!("lookup table{vbmi}"),
        }
    }

    /// Maps `x` into `y` (of the same length).
    pub fn run(&self, x: &[u8], y: &mut [u8]) -> Result<(), String> {
        if x.len() != y.len() {
            return Err(format!("a lookup reads {} bytes into {}", x.len(), y.len()));
        }
        #[cfg(target_arch = "x86_64")]
        if self.vbmi && vbmi_on_host() {
            // SAFETY: AVX-512 F, BW and VBMI are present (checked just above).
            unsafe { self.run_vbmi(x, y) };
            return Ok(());
        }
        for (o, &b) in y.iter_mut().zip(x) {
            *o = self.table[b as usize];
        }
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    fn run_vbmi(&self, x: &[u8], y: &mut [u8]) {
        use std::arch::x86_64::*;
        let quarter = |i: usize| -> __m512i {
            let t: &[u8; 64] = self.table[i * 64..][..64].try_into().expect("64 bytes");
            // SAFETY: `t` is exactly 64 bytes.
            unsafe { _mm512_loadu_si512(t.as_ptr().cast()) }
        };
        let (t0, t1, t2, t3) = (quarter(0), quarter(1), quarter(2), quarter(3));
        let mut xs = x.chunks_exact(64);
        let mut ys = y.chunks_exact_mut(64);
        for (xc, yc) in (&mut xs).zip(&mut ys) {
            let xc: &[u8; 64] = xc.try_into().expect("64 bytes");
            let yc: &mut [u8; 64] = yc.try_into().expect("64 bytes");
            // SAFETY: `xc` and `yc` are exactly 64 bytes each.
            let v = unsafe { _mm512_loadu_si512(xc.as_ptr().cast()) };
            let low = _mm512_permutex2var_epi8(t0, v, t1);
            let high = _mm512_permutex2var_epi8(t2, v, t3);
            let r = _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), low, high);
            // SAFETY: as above.
            unsafe { _mm512_storeu_si512(yc.as_mut_ptr().cast(), r) };
        }
        for (o, &b) in ys.into_remainder().iter_mut().zip(xs.remainder()) {
            *o = self.table[b as usize];
        }
    }
}

/// The 256 bytes of an evaluator result on all 256 inputs.
fn table_of(y: &Tensor) -> Option<Box<[u8; 256]>> {
    crate::kernels::gemm::tensor_bytes(y)?.into_boxed_slice().try_into().ok()
}

/// Whether the 64-byte lookup may run: an AVX-512 level, on a CPU with AVX-512 VBMI.
fn vbmi(isa: Isa) -> bool {
    isa.avx512() && vbmi_on_host()
}

/// Whether this CPU has AVX-512 F, BW and VBMI.
fn vbmi_on_host() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vbmi")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
