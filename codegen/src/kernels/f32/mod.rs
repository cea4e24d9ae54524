//! Compiled f32 kernels: what a model keeps in f32 (an fp32 model, the ops around an int8
//! model's boundaries, what `--keep-fp32` keeps) runs on these rather than on the evaluator.
//! Each reproduces the evaluator's definition of its op bit for bit: the same operations in the
//! same order for every element (the evaluator defines the orders that matter — sums in index
//! order, products in `k` order, a multiply then an add, qc's own `exp`), so the loops are Rust
//! over the tensors' slices, compiled a second time for AVX2 where the CPU has it (the compiler
//! vectorizes them without changing a result: no fused multiply-add, no reassociation).
//!
//! They read and write tensors (NCHW), not the arena's 8-bit activations.

pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod movement;
pub mod pool;
pub mod reduce;
pub mod reshape;

use crate::target::Isa;
use qc_ir::{Attrs, OpKind, Tensor, TensorType};

/// A compiled f32 op.
pub trait F32Kernel: Send + Sync {
    /// The op's result from its operands (all of them, constants included, in order).
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String>;
    /// What it runs (for `CompiledModel::kernels`).
    fn describe(&self) -> &'static str;
    /// Floating-point operations (2 · multiply-adds) for a first operand of `len` elements; 0
    /// for kernels without a product.
    fn ops(&self, _len: usize) -> u64 {
        0
    }
}

/// The kernel of an f32 op `kind` with operand types `tys`, the operands that are constants
/// (`consts`, by position) and result type `out`, or `None` when no kernel covers it (it then
/// runs on the evaluator).
pub fn select(
    kind: OpKind,
    attrs: &Attrs,
    tys: &[&TensorType],
    consts: &[Option<&Tensor>],
    out: &TensorType,
    isa: Isa,
) -> Option<Box<dyn F32Kernel>> {
    // A lookup in an f32 table (an embedding) by integer indices.
    if kind == OpKind::Gather && tys[0].elem.is_f32() && out.elem.is_f32() {
        return Some(Box::new(movement::Gather::new(attrs, tys)?));
    }
    if !tys.iter().all(|t| t.elem.is_f32()) || !out.elem.is_f32() {
        return None;
    }
    let avx2 = isa.avx2() && avx2();
    let c = |i: usize| consts.get(i).copied().flatten();
    Some(match kind {
        OpKind::Conv2d => Box::new(conv::ConvF32::new(attrs, tys[0], c(1)?, c(2), out, isa)?),
        OpKind::MatMul if c(1).is_none() => Box::new(gemm::BatchedMatMul::new(attrs, tys, avx2)?),
        OpKind::Gemm | OpKind::MatMul => Box::new(gemm::GemmF32::new(kind, attrs, tys, c(1)?, c(2), avx2)?),
        OpKind::LayerNorm if tys.len() == 2 || c(2).is_some() => {
            Box::new(reduce::LayerNorm::new(attrs, tys[0], c(1)?, c(2), avx2)?)
        }
        OpKind::Relu
        | OpKind::Clip
        | OpKind::Sigmoid
        | OpKind::HardSigmoid
        | OpKind::HardSwish
        | OpKind::Gelu
        | OpKind::Erf
        | OpKind::Tanh
        | OpKind::Sqrt
        | OpKind::Exp
        | OpKind::Neg
            if tys.len() == 1 =>
        {
            Box::new(elementwise::Unary::new(kind, attrs, avx2))
        }
        OpKind::Add | OpKind::Sub | OpKind::Mul | OpKind::Div | OpKind::Pow if tys.len() == 2 => {
            Box::new(elementwise::Binary::new(kind, attrs, avx2)?)
        }
        OpKind::BatchNorm => Box::new(elementwise::BatchNorm::new(attrs, tys[0], [c(1)?, c(2)?, c(3)?, c(4)?], avx2)?),
        OpKind::GlobalAvgPool | OpKind::ReduceMean => Box::new(reduce::Mean::new(kind, attrs, tys[0], avx2)?),
        OpKind::Softmax => Box::new(reduce::Softmax::new(attrs, tys[0], avx2)?),
        OpKind::MaxPool | OpKind::AvgPool => Box::new(pool::Pool::new(kind, attrs, tys[0], out, avx2)?),
        OpKind::Reshape | OpKind::Flatten | OpKind::Squeeze | OpKind::Unsqueeze => Box::new(reshape::Reshape::new(out)?),
        OpKind::Concat => Box::new(movement::Concat::new(attrs, tys)?),
        OpKind::Transpose => Box::new(movement::Transpose::new(attrs, tys[0])?),
        OpKind::Slice => Box::new(movement::Slice::new(attrs, tys[0])?),
        OpKind::Expand => Box::new(movement::Expand::new(attrs)?),
        _ => return None,
    })
}

/// Declares `fn NAME(avx2: bool, args…)`: the body, compiled twice — for the baseline, and for
/// AVX2, which runs when `avx2` (which [`select`] sets only where the CPU has AVX2). The compiler
/// vectorizes the body's loops 8 lanes at a time in the second copy.
macro_rules! twin {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name(avx2: bool, $($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn with_avx2($($arg: $ty),*) {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: `avx2` is true only where the CPU has AVX2 (`select` checked it).
                return unsafe { with_avx2($($arg),*) };
            }
            let _ = avx2;
            body($($arg),*)
        }
    };
}
pub(crate) use twin;

/// Whether this CPU has AVX2.
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` as an f32 slice in standard layout (borrowed when it already is).
pub(crate) fn slice(x: &Tensor) -> Result<std::borrow::Cow<'_, [f32]>, String> {
    let a = x.as_f32().ok_or("an f32 kernel reads f32")?;
    Ok(match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().copied().collect()),
    })
}

/// A tensor of `shape` from `data`.
pub(crate) fn tensor(shape: &[usize], data: Vec<f32>) -> Result<Tensor, String> {
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), data).map(Tensor::F32).map_err(|e| e.to_string())
}

/// The fused activation of `attrs` (set by `fuse-activation`) as bounds: `relu` is
/// `max(v, 0)`, `clip` is `min(max(v, lo), hi)`; `None` without one, an error for another.
pub(crate) fn fused(attrs: &Attrs) -> Option<Option<(f32, f32)>> {
    match attrs.str("activation") {
        None => Some(None),
        Some("relu") => Some(Some((0.0, f32::INFINITY))),
        Some("clip") => Some(Some((attrs.float("clip_min", f32::NEG_INFINITY), attrs.float("clip_max", f32::INFINITY)))),
        Some(_) => None,
    }
}

/// Applies [`fused`]'s bounds as the evaluator does (`relu` as `max(v, 0)` alone).
#[inline(always)]
pub(crate) fn activate(y: &mut [f32], act: Option<(f32, f32)>) {
    match act {
        None => {}
        Some((lo, f32::INFINITY)) if lo == 0.0 => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Some((lo, hi)) => y.iter_mut().for_each(|v| *v = v.max(lo).min(hi)),
    }
}

/// A 2-D window over an `h × w` plane (kernel, strides, dilations, leading pads, output size),
/// with the range of output columns each kernel column reads inside the row: what the f32
/// convolution and pooling loops walk.
pub(crate) struct Window {
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) k: [usize; 2],
    pub(crate) stride: [usize; 2],
    pub(crate) dil: [usize; 2],
    pub(crate) pad: [usize; 2],
    pub(crate) out: [usize; 2],
    /// Per kx: the outputs of a row whose tap lies inside the input row, `[lo, hi)`.
    pub(crate) cols: Vec<(usize, usize)>,
}

impl Window {
    pub(crate) fn new(
        [h, w]: [usize; 2],
        k: [usize; 2],
        stride: [usize; 2],
        dil: [usize; 2],
        pad: [usize; 2],
        out: [usize; 2],
    ) -> Window {
        let cols = (0..k[1])
            .map(|kx| {
                let col = |x: usize| (x * stride[1] + kx * dil[1]).wrapping_sub(pad[1]);
                let lo = (0..out[1]).find(|&x| col(x) < w).unwrap_or(out[1]);
                (lo, (lo..out[1]).find(|&x| col(x) >= w).unwrap_or(out[1]))
            })
            .collect();
        Window { h, w, k, stride, dil, pad, out, cols }
    }
}
