//! The integer GEMM kernel: `out[m, n] = requant(bias[n] + Σ_k (a[m, k] − zp_a)(w[n, k] − zp_w[n]))`,
//! a Cranelift function specialized to one layer — N, K, the zero points, the weights, the bias
//! and the requantization constants are fixed when it is compiled; M (the batch) is an argument.
//!
//! This is the scalar path: exact, portable to every target Cranelift supports, and the reference
//! the vector paths are checked against.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx2_maddubs;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod quads;
pub(crate) mod simd;

use crate::emit::emit_loop;
use crate::jit::{Jit, JitCode};
use crate::target::Isa;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, types};
use cranelift_frontend::Variable;
use qc_ir::requant::{Requant, RequantMode, acc_scale, output_range};
use qc_ir::{Attrs, ElemType, OpKind, ScalarType, Tensor, TensorType};
use std::sync::Arc;

/// Everything a GEMM kernel is specialized to.
#[derive(Clone, Debug)]
pub struct GemmSpec {
    /// Output columns.
    pub n: usize,
    /// The reduction length.
    pub k: usize,
    /// The activations' zero point.
    pub zp_a: i32,
    /// Whether activations are stored as i8 (else u8).
    pub a_signed: bool,
    /// `w − zp_w`, row `n` holding column `n`'s K weights.
    pub weights: Vec<i32>,
    /// The i32 bias of each column.
    pub bias: Vec<i32>,
    /// Each column's requantization.
    pub requant: Vec<Requant>,
    /// The output zero point.
    pub zp_y: i32,
    /// The output clamp (the storage range, narrowed by a fused activation).
    pub lo: i32,
    /// See `lo`.
    pub hi: i32,
}

fn quant<'a>(t: &'a TensorType, what: &str) -> Result<&'a qc_ir::QuantParams, String> {
    t.elem.quant().ok_or_else(|| format!("{what} must be quantized, got {t}"))
}

impl GemmSpec {
    /// The kernel for an integer `gemm` or 2-D `matmul` node: its attributes, operand types,
    /// constant weight (and bias) and result type. Derived from the types with the same functions
    /// the evaluator uses.
    pub fn from_node(
        kind: OpKind,
        attrs: &Attrs,
        tys: &[&TensorType],
        weight: &Tensor,
        bias: Option<&Tensor>,
        out: &TensorType,
    ) -> Result<GemmSpec, String> {
        if !matches!(kind, OpKind::Gemm | OpKind::MatMul) || attrs.bool("trans_a", false) {
            return Err(format!("the GEMM kernel takes gemm (without trans_a) or matmul, not {kind}"));
        }
        if attrs.float("alpha", 1.0) != 1.0 || attrs.float("beta", 1.0) != 1.0 {
            return Err("an integer gemm needs alpha = beta = 1".into());
        }
        let (xq, wq, yq) = (quant(tys[0], "the input")?, quant(tys[1], "the weight")?, quant(out, "the result")?);
        if xq.axis.is_some() || yq.axis.is_some() {
            return Err("activations must be quantized per tensor".into());
        }
        if !matches!(yq.storage, ScalarType::I8 | ScalarType::U8) || !matches!(xq.storage, ScalarType::I8 | ScalarType::U8) {
            return Err("the GEMM kernel reads and writes 8-bit values".into());
        }
        let w = weight.to_i64_vec().ok_or("the weight must be integers")?;
        let shape = weight.shape();
        if shape.len() != 2 {
            return Err(format!("the weight must be 2-D, got {shape:?}"));
        }
        let trans_b = kind == OpKind::Gemm && attrs.bool("trans_b", false);
        let (n, k) = if trans_b { (shape[0], shape[1]) } else { (shape[1], shape[0]) };
        let w_axis = if trans_b { 0 } else { 1 };
        if wq.axis.is_some_and(|a| a != w_axis) {
            return Err("per-channel weight parameters must lie on the output axis".into());
        }
        let (s_x, zp_a) = xq.at(0);
        let (s_y, zp_y) = yq.at(0);
        let mode = RequantMode::of(attrs)?;
        let mut weights = vec![0i32; n * k];
        let mut requant = Vec::with_capacity(n);
        for c in 0..n {
            let (s_w, zp_w) = wq.at(c);
            for kk in 0..k {
                let v = if trans_b { w[c * k + kk] } else { w[kk * n + c] };
                weights[c * k + kk] = v as i32 - zp_w;
            }
            requant.push(Requant::new(mode, acc_scale(s_x, s_w), s_y)?);
        }
        let bias = match bias {
            Some(b) => b.to_i64_vec().ok_or("the bias must be integers")?.into_iter().map(|v| v as i32).collect(),
            None => vec![0; n],
        };
        if bias.len() != n {
            return Err(format!("the bias has {} values for {n} columns", bias.len()));
        }
        let (lo, hi) = output_range(yq, attrs);
        Ok(GemmSpec { n, k, zp_a, a_signed: xq.storage == ScalarType::I8, weights, bias, requant, zp_y, lo, hi })
    }

    /// Whether no accumulator can leave i32, whatever the activations: for every column,
    /// `max(|b|, |b − zp_u·Σw|) + 255·Σ|w| < 2^31`, where `b − zp_u·Σw` is the bias with the
    /// zero-point term folded in (the vector paths' starting value, `zp_u` the zero point of the
    /// u8 form) and every activation term (`x − zp` or the u8 form) is at most 255 in magnitude.
    /// Then the kernels, which add in wrapping i32, never wrap, and the evaluator (which refuses
    /// an accumulator outside i32) never refuses. A layer that fails this runs on the evaluator.
    pub fn accumulators_fit(&self) -> bool {
        let zp_u = self.zp_a as i64 + if self.a_signed { 128 } else { 0 };
        (0..self.n).all(|c| {
            let w = &self.weights[c * self.k..(c + 1) * self.k];
            let (sum, abs) = w.iter().fold((0i64, 0i64), |(s, a), &v| (s + v as i64, a + (v as i64).abs()));
            let b = self.bias[c] as i64;
            b.abs().max((b - zp_u * sum).abs()) + 255 * abs < 1 << 31
        })
    }
}

/// The constant tables a kernel reads; their addresses are compiled into it.
pub(crate) struct Tables {
    pub(crate) weights: Box<[i32]>,
    pub(crate) bias: Box<[i32]>,
    pub(crate) mult: Box<[f32]>,
    pub(crate) m0: Box<[i64]>,
    pub(crate) round: Box<[i64]>,
    pub(crate) shift: Box<[i64]>,
    /// Weight panels: i8 (VNNI path) or little-endian i16 (SSE path) values.
    pub(crate) packed: Box<[u8]>,
    /// For block-sparse weights: the nonzero 4-k groups of each 16-column block, in order.
    pub(crate) groups: Box<[i64]>,
    /// For kernels reading rows in place ([`RowOffsets`]): each row's offset, then each group's.
    pub(crate) row_offsets: Box<[i64]>,
    pub(crate) group_offsets: Box<[i64]>,
}

/// Where a vector kernel reads its rows when they are not [`GemmKernel::row_stride`] bytes apart
/// in a matrix of their own: the 4 bytes of row `r`'s group `g` (k = 4g..4g + 4) lie at
/// `a + rows[r] + groups[g]`. A convolution reads its taps in place this way from an image with a
/// border of zero points (rows: where the output positions' windows start; groups: where each
/// kernel row's bytes lie from there), so no patch matrix is built. The number of rows is fixed
/// (and even); a kernel compiled with offsets runs through `GemmKernel::run_in_place`.
#[derive(Clone, Debug)]
pub struct RowOffsets {
    /// Each row's offset in the input.
    pub rows: Vec<usize>,
    /// Each group's offset from its row's.
    pub groups: Vec<usize>,
}

impl RowOffsets {
    /// The input bytes the rows reach: every group read lies below this.
    pub fn reach(&self) -> usize {
        self.rows.iter().max().unwrap_or(&0) + self.groups.iter().max().unwrap_or(&0) + 4
    }
}

/// Which code a kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// One multiply-add at a time: exact on every target, and the reference for the others.
    Scalar,
    /// 128-bit vectors, products widened to i16 and summed in pairs (`pmaddwd` on x64).
    Sse,
    /// 128-bit vectors, four u8 × i8 products summed per i32 lane by the dot-product tree the
    /// x64 backend turns into one `vpdpbusd` (AVX-512 VNNI / AVX-VNNI).
    Vnni,
    /// 256-bit `vpmaddwd`, precompiled with `std::arch` (see `avx2.rs`): the AVX2 and AVX-512 BW
    /// levels, for kernels writing bytes from rows of a matrix.
    Avx2,
    /// 256-bit `vpmaddubsw` (u8 × i8, twice `vpmaddwd`'s work), precompiled with `std::arch`
    /// (see `avx2_maddubs.rs`): the AVX2 and AVX-512 BW levels, for the same kernels where no
    /// pair of products can saturate (weights in [−64, 64], `--weight-bits 7`).
    Avx2Maddubs,
    /// 512-bit `vpdpbusd`, precompiled with `std::arch` (see `avx512.rs`): the AVX-512 VNNI
    /// level, for kernels writing bytes from rows of a matrix.
    Avx512,
}

impl Path {
    /// The path for `isa`: the 512-bit one on `avx512-vnni`, VNNI on `avx-vnni`, on `avx2` and
    /// `avx512bw` `vpmaddubsw` where no pair of weights can saturate and `vpmaddwd` otherwise,
    /// SSE (`pmaddwd`) on `sse4.1` — the vector paths where the layer allows them (f32
    /// requantization with finite multipliers; weights in i8 for the byte products, in i16 for
    /// `pmaddwd`/`vpmaddwd`), else scalar.
    pub fn choose(spec: &GemmSpec, isa: Isa) -> Path {
        let f32_mode = spec.requant.iter().all(|r| matches!(r, Requant::F32(m) if m.is_finite()));
        let fits = |lo: i32, hi: i32| spec.weights.iter().all(|w| (lo..=hi).contains(w));
        let wanted = match isa {
            Isa::Scalar => Path::Scalar,
            Isa::Avx512Vnni if cfg!(target_arch = "x86_64") => Path::Avx512,
            l if l.vnni() => Path::Vnni,
            l if l.avx2() && cfg!(target_arch = "x86_64") => Path::Avx2,
            _ => Path::Sse,
        };
        match wanted {
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 if f32_mode && fits(-128, 127) && avx2_maddubs::pairs_fit(spec) => Path::Avx2Maddubs,
            Path::Avx512 if f32_mode && fits(-128, 127) => Path::Avx512,
            Path::Vnni if f32_mode && fits(-128, 127) => Path::Vnni,
            Path::Avx2 if f32_mode && fits(-32768, 32767) => Path::Avx2,
            Path::Avx512 | Path::Vnni | Path::Sse if f32_mode && fits(-32768, 32767) => Path::Sse,
            _ => Path::Scalar,
        }
    }
}

impl Path {
    /// The path's name in descriptions: `scalar`, `pmaddwd`, `vnni`, `avx2 vpmaddwd`,
    /// `avx2 vpmaddubsw` or `avx512 vpdpbusd`.
    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Sse => "pmaddwd",
            Path::Vnni => "vnni",
            Path::Avx2 => "avx2 vpmaddwd",
            Path::Avx2Maddubs => "avx2 vpmaddubsw",
            Path::Avx512 => "avx512 vpdpbusd",
        }
    }
}

/// Where a native path's tiles go: requantized bytes, or the i32 accumulators themselves.
pub(crate) enum TileOut<'a> {
    Bytes(&'a mut [u8]),
    I32(&'a mut [i32]),
}

impl TileOut<'_> {
    /// The elements `range` of the output, as an output of their own.
    pub(crate) fn rows(&mut self, range: std::ops::Range<usize>) -> TileOut<'_> {
        match self {
            TileOut::Bytes(b) => TileOut::Bytes(&mut b[range]),
            TileOut::I32(v) => TileOut::I32(&mut v[range]),
        }
    }
}

/// What a kernel writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Requantized bytes, `out[m, n]` (the spec's requantization, zero point and clamp).
    Bytes,
    /// The i32 accumulators themselves, `bias[n] + Σ_k (a − zp_a)(w − zp_w)` (wrapping): the
    /// product of `matmul_integer` and `conv_integer`. The spec's requantization is not used.
    I32,
}

/// A compiled GEMM kernel.
pub struct GemmKernel {
    f: Entry,
    n: usize,
    k: usize,
    path: Path,
    output: Output,
    /// For a kernel reading rows in place: its number of rows and the input bytes they reach.
    offsets: Option<(usize, usize)>,
    /// The JIT paths' tables and code, which their function reads (none on the native path).
    _jit: Option<(Box<Tables>, Arc<JitCode>)>,
}

/// A kernel's compiled function.
enum Entry {
    /// `(a, out, m)`: `m` rows of a matrix, or in place.
    Rows(crate::jit::RowsFn),
    /// `(image, out, halo buffer)`: in place, after copying an image of this many bytes into the
    /// halo buffer ([`crate::kernels::window::halo::Halo::emit_copy_in`]).
    Copying(crate::jit::BufferFn, usize),
    /// The precompiled 256-bit path ([`Path::Avx2`]), on rows of a matrix.
    #[cfg(target_arch = "x86_64")]
    Native(Box<avx2::Avx2Gemm>),
    /// The precompiled 256-bit `vpmaddubsw` path ([`Path::Avx2Maddubs`]), on rows of a matrix.
    #[cfg(target_arch = "x86_64")]
    NativeMaddubs(Box<avx2_maddubs::Avx2MaddubsGemm>),
    /// The precompiled 512-bit path ([`Path::Avx512`]), on rows of a matrix.
    #[cfg(target_arch = "x86_64")]
    Native512(Box<avx512::Avx512Gemm>),
}

impl GemmKernel {
    /// Compiles the kernel on the path [`Path::choose`] picks for `isa`.
    pub fn compile(spec: &GemmSpec, isa: Isa) -> Result<GemmKernel, String> {
        GemmKernel::compile_on(spec, Path::choose(spec, isa))
    }

    /// Compiles the kernel on a given path.
    pub fn compile_on(spec: &GemmSpec, path: Path) -> Result<GemmKernel, String> {
        GemmKernel::compile_output(spec, path, Output::Bytes)
    }

    /// Compiles a kernel writing i32 accumulators ([`Output::I32`]) on the path [`Path::choose`]
    /// would pick for `isa` were the requantization f32 (it is not used).
    pub fn compile_i32(spec: &GemmSpec, isa: Isa) -> Result<GemmKernel, String> {
        let f32_spec = GemmSpec { requant: vec![Requant::F32(1.0); spec.n], ..spec.clone() };
        GemmKernel::compile_output(&f32_spec, Path::choose(&f32_spec, isa), Output::I32)
    }

    /// Compiles the kernel on a given path, writing `output`.
    pub fn compile_output(spec: &GemmSpec, path: Path, output: Output) -> Result<GemmKernel, String> {
        match path {
            Path::Scalar => GemmKernel::compile_scalar(spec, output),
            Path::Sse | Path::Vnni => crate::kernels::gemm::simd::compile(spec, path, output, None),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => {
                let stride = crate::kernels::gemm::simd::row_stride(spec.k);
                let native = avx2::Avx2Gemm::new(spec, stride).ok_or("the AVX2 path takes f32 requantization and i16 weights")?;
                let f = Entry::Native(Box::new(native));
                Ok(GemmKernel { f, n: spec.n, k: spec.k, path, output, offsets: None, _jit: None })
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx2Maddubs => {
                let stride = crate::kernels::gemm::simd::row_stride(spec.k);
                let native = avx2_maddubs::Avx2MaddubsGemm::new(spec, stride)
                    .ok_or("the AVX2 vpmaddubsw path takes f32 requantization and i8 weights whose pairs cannot saturate")?;
                let f = Entry::NativeMaddubs(Box::new(native));
                Ok(GemmKernel { f, n: spec.n, k: spec.k, path, output, offsets: None, _jit: None })
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => {
                let stride = crate::kernels::gemm::simd::row_stride(spec.k);
                let native =
                    avx512::Avx512Gemm::new(spec, stride).ok_or("the AVX-512 path takes f32 requantization and i8 weights")?;
                if !avx512::Avx512Gemm::on_host() {
                    return Err("the AVX-512 VNNI path needs a CPU with AVX-512 VNNI".into());
                }
                let f = Entry::Native512(Box::new(native));
                Ok(GemmKernel { f, n: spec.n, k: spec.k, path, output, offsets: None, _jit: None })
            }
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx2 | Path::Avx512 => Err("the AVX2 and AVX-512 paths run on x86-64 only".into()),
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx2Maddubs => Err("the AVX2 vpmaddubsw path runs on x86-64 only".into()),
        }
    }

    /// A vector kernel writing requantized bytes and reading its rows where `offsets` says
    /// ([`RowOffsets`]); `None` on the scalar path, which reads rows from a matrix only.
    pub(crate) fn compile_offsets(
        spec: &GemmSpec,
        offsets: &RowOffsets,
        halo: &crate::kernels::window::halo::Halo,
        isa: Isa,
    ) -> Result<Option<GemmKernel>, String> {
        match Path::choose(spec, isa) {
            // The precompiled path reads rows of a matrix: the convolution gathers them.
            Path::Scalar | Path::Avx2 | Path::Avx2Maddubs | Path::Avx512 => Ok(None),
            path => crate::kernels::gemm::simd::compile(spec, path, Output::Bytes, Some((offsets, halo))).map(Some),
        }
    }

    /// What the kernel writes.
    pub fn output(&self) -> Output {
        self.output
    }

    /// Which path the kernel runs.
    pub fn path(&self) -> Path {
        self.path
    }

    /// The number of output columns.
    pub fn columns(&self) -> usize {
        self.n
    }

    /// The reduction length K.
    pub fn depth(&self) -> usize {
        self.k
    }

    /// Assembles a kernel from compiled parts (for the vector path's module); `copies`: the
    /// bytes of the image it copies in ([`Entry::Copying`]).
    pub(crate) fn from_parts(
        id: cranelift_module::FuncId,
        (n, k): (usize, usize),
        path: Path,
        output: Output,
        tables: Box<Tables>,
        code: Arc<JitCode>,
        copies: Option<usize>,
    ) -> Result<GemmKernel, String> {
        let f = match copies {
            Some(image) => Entry::Copying(code.function(id)?, image),
            None => Entry::Rows(code.function(id)?),
        };
        let offsets = (!tables.row_offsets.is_empty()).then(|| {
            let reach = RowOffsets {
                rows: tables.row_offsets.iter().map(|&r| r as usize).collect(),
                groups: tables.group_offsets.iter().map(|&g| g as usize).collect(),
            }
            .reach();
            (tables.row_offsets.len(), reach)
        });
        Ok(GemmKernel { f, n, k, path, output, offsets, _jit: Some((tables, code)) })
    }

    fn compile_scalar(spec: &GemmSpec, output: Output) -> Result<GemmKernel, String> {
        let (n, k) = (spec.n, spec.k);
        if spec.weights.len() != n * k || spec.bias.len() != n || spec.requant.len() != n || n == 0 || k == 0 {
            return Err("inconsistent GEMM kernel tables".into());
        }
        let mut mult = vec![0f32; n];
        let (mut m0, mut round, mut shift) = (vec![0i64; n], vec![0i64; n], vec![0i64; n]);
        let q31 = output == Output::Bytes && matches!(spec.requant[0], Requant::Q31(_));
        for (c, r) in spec.requant.iter().enumerate() {
            match *r {
                Requant::F32(m) if !q31 => mult[c] = m,
                Requant::Q31(q) if q31 => {
                    // n > 62 gives the zero point: a zero multiplier does that.
                    if q.n <= 62 {
                        m0[c] = q.m0;
                        shift[c] = q.n as i64;
                        round[c] = if q.n == 0 { 0 } else { 1 << (q.n - 1) };
                    }
                }
                _ => return Err("a kernel requantizes in one mode".into()),
            }
        }
        let tables = Box::new(Tables {
            weights: spec.weights.clone().into_boxed_slice(),
            bias: spec.bias.clone().into_boxed_slice(),
            mult: mult.into_boxed_slice(),
            m0: m0.into_boxed_slice(),
            round: round.into_boxed_slice(),
            shift: shift.into_boxed_slice(),
            packed: Box::new([]),
            groups: Box::new([]),
            row_offsets: Box::new([]),
            group_offsets: Box::new([]),
        });
        let addr = |p: *const u8| p as i64;
        let (wt, bt, mt) =
            (addr(tables.weights.as_ptr().cast()), addr(tables.bias.as_ptr().cast()), addr(tables.mult.as_ptr().cast()));
        let (m0t, rt, st) =
            (addr(tables.m0.as_ptr().cast()), addr(tables.round.as_ptr().cast()), addr(tables.shift.as_ptr().cast()));
        let out_bytes = if output == Output::I32 { 4 } else { 1 };
        let mut jit = Jit::new()?;
        let ptr = jit.pointer_type();
        let s = spec.clone();
        let id = jit.define(&[ptr, ptr, types::I64], |b, args| {
            let (a, out, m) = (args[0], args[1], args[2]);
            let flags = MemFlagsData::trusted();
            let zero = b.ins().iconst(types::I64, 0);
            let n_end = b.ins().iconst(types::I64, n as i64);
            let k_end = b.ins().iconst(types::I64, k as i64);
            emit_loop(b, zero, m, |b, i| {
                let a_row = {
                    let off = b.ins().imul_imm_s(i, k as i64);
                    b.ins().iadd(a, off)
                };
                let o_row = {
                    let off = b.ins().imul_imm_s(i, (n * out_bytes) as i64);
                    b.ins().iadd(out, off)
                };
                emit_loop(b, zero, n_end, |b, j| {
                    let acc_var: Variable = b.declare_var(types::I32);
                    let j4 = b.ins().imul_imm_s(j, 4);
                    let bias_addr = b.ins().iadd_imm_s(j4, bt);
                    let bias = b.ins().load(types::I32, flags, bias_addr, 0);
                    b.def_var(acc_var, bias);
                    let w_row = {
                        let off = b.ins().imul_imm_s(j, 4 * k as i64);
                        b.ins().iadd_imm_s(off, wt)
                    };
                    emit_loop(b, zero, k_end, |b, kk| {
                        let a_addr = b.ins().iadd(a_row, kk);
                        let av = if s.a_signed {
                            b.ins().sload8(types::I32, flags, a_addr, 0)
                        } else {
                            b.ins().uload8(types::I32, flags, a_addr, 0)
                        };
                        let av = b.ins().iadd_imm_s(av, -(s.zp_a as i64));
                        let k4 = b.ins().imul_imm_s(kk, 4);
                        let w_addr = b.ins().iadd(w_row, k4);
                        let wv = b.ins().load(types::I32, flags, w_addr, 0);
                        let p = b.ins().imul(av, wv);
                        let acc = b.use_var(acc_var);
                        let acc = b.ins().iadd(acc, p);
                        b.def_var(acc_var, acc);
                    });
                    let acc = b.use_var(acc_var);
                    if output == Output::I32 {
                        let o_addr = b.ins().iadd(o_row, j4);
                        b.ins().store(flags, acc, o_addr, 0);
                        return;
                    }
                    let v = if q31 {
                        let j8 = b.ins().imul_imm_s(j, 8);
                        let (m0a, ra, sa) = (b.ins().iadd_imm_s(j8, m0t), b.ins().iadd_imm_s(j8, rt), b.ins().iadd_imm_s(j8, st));
                        let (m0v, rv, sv) = (
                            b.ins().load(types::I64, flags, m0a, 0),
                            b.ins().load(types::I64, flags, ra, 0),
                            b.ins().load(types::I64, flags, sa, 0),
                        );
                        let wide = b.ins().sextend(types::I64, acc);
                        let prod = b.ins().imul(wide, m0v);
                        let prod = b.ins().iadd(prod, rv);
                        b.ins().sshr(prod, sv)
                    } else {
                        let ma = b.ins().iadd_imm_s(j4, mt);
                        let mv = b.ins().load(types::F32, flags, ma, 0);
                        let f = b.ins().fcvt_from_sint(types::F32, acc);
                        let f = b.ins().fmul(f, mv);
                        let f = b.ins().nearest(f);
                        let q = b.ins().fcvt_to_sint_sat(types::I32, f);
                        b.ins().sextend(types::I64, q)
                    };
                    let v = b.ins().iadd_imm_s(v, s.zp_y as i64);
                    let lo = b.ins().iconst(types::I64, s.lo as i64);
                    let hi = b.ins().iconst(types::I64, s.hi as i64);
                    let v = b.ins().smax(v, lo);
                    let v = b.ins().smin(v, hi);
                    let byte = b.ins().ireduce(types::I8, v);
                    let o_addr = b.ins().iadd(o_row, j);
                    b.ins().store(flags, byte, o_addr, 0);
                });
            });
            b.ins().return_(&[]);
        })?;
        let code = Arc::new(jit.finish()?);
        GemmKernel::from_parts(id, (n, k), Path::Scalar, output, tables, code, None)
    }

    /// Runs the kernel on `m` rows of activations (`m × k` bytes, i8 or u8 as compiled) into
    /// `m × n` output bytes. The lengths are checked, so the kernel never touches memory outside
    /// the two slices and its own tables.
    pub fn run(&self, a: &[u8], m: usize, out: &mut [u8]) -> Result<(), String> {
        self.with_rows(a, m, |rows| self.run_rows(rows, m, out))
    }

    /// [`GemmKernel::run`] for a kernel writing i32 accumulators ([`Output::I32`]).
    pub fn run_i32(&self, a: &[u8], m: usize, out: &mut [i32]) -> Result<(), String> {
        self.with_rows(a, m, |rows| self.run_rows_i32(rows, m, out))
    }

    /// Calls `f` with `m` rows of `a` (`m × k` bytes) laid out at [`GemmKernel::row_stride`].
    fn with_rows<T>(&self, a: &[u8], m: usize, f: impl FnOnce(&[u8]) -> Result<T, String>) -> Result<T, String> {
        if a.len() != m * self.k {
            return Err(format!("GEMM kernel {}x{}: {} input bytes for {m} rows", self.k, self.n, a.len()));
        }
        // The vector path reads rows in groups of 4 bytes: pad rows whose length is not a multiple.
        let stride = self.row_stride();
        if stride == self.k {
            return f(a);
        }
        let mut padded = vec![0u8; m * stride];
        for (dst, src) in padded.chunks_exact_mut(stride).zip(a.chunks_exact(self.k)) {
            dst[..self.k].copy_from_slice(src);
        }
        f(&padded)
    }

    /// The bytes per input row that [`GemmKernel::run_rows`] reads: `k`, rounded up to a multiple
    /// of 4 on the vector paths (the bytes past `k` meet zero weights, so any value will do).
    pub fn row_stride(&self) -> usize {
        if self.path == Path::Scalar { self.k } else { crate::kernels::gemm::simd::row_stride(self.k) }
    }

    /// Runs the kernel on `m` rows of [`GemmKernel::row_stride`] bytes, which callers that build
    /// their rows (convolution patches) lay out so that nothing is copied.
    pub fn run_rows(&self, a: &[u8], m: usize, out: &mut [u8]) -> Result<(), String> {
        if self.output != Output::Bytes {
            return Err("this GEMM kernel writes i32 accumulators".into());
        }
        #[cfg(target_arch = "x86_64")]
        match &self.f {
            Entry::Native(native) => return native.run(a, m, out),
            Entry::NativeMaddubs(native) => return native.run(a, m, out),
            Entry::Native512(native) => return native.run(a, m, out),
            Entry::Rows(_) | Entry::Copying(..) => {}
        }
        self.call(a, m, out.as_mut_ptr(), out.len())
    }

    /// [`GemmKernel::run_rows`] for a kernel writing i32 accumulators ([`Output::I32`]).
    pub fn run_rows_i32(&self, a: &[u8], m: usize, out: &mut [i32]) -> Result<(), String> {
        if self.output != Output::I32 {
            return Err("this GEMM kernel writes requantized bytes".into());
        }
        #[cfg(target_arch = "x86_64")]
        match &self.f {
            Entry::Native(native) => return native.run_i32(a, m, out),
            Entry::NativeMaddubs(native) => return native.run_i32(a, m, out),
            Entry::Native512(native) => return native.run_i32(a, m, out),
            _ => {}
        }
        self.call(a, m, out.as_mut_ptr().cast(), out.len())
    }

    /// Calls the kernel on `m` rows of `a` into `out`, which holds `out_len` elements of the
    /// kernel's output type.
    fn call(&self, a: &[u8], m: usize, out: *mut u8, out_len: usize) -> Result<(), String> {
        let Entry::Rows(f) = self.f else {
            return Err("this GEMM kernel reads its rows in place (run_in_place) or runs natively (run_rows)".into());
        };
        let stride = self.row_stride();
        if a.len() != m * stride || out_len != m * self.n {
            return Err(format!(
                "GEMM kernel {}x{}: {} input bytes and {out_len} outputs for {m} rows of {stride}",
                self.k,
                self.n,
                a.len(),
            ));
        }
        // SAFETY: the kernel reads m rows of `stride` bytes from `a`, which holds them; writes
        // m·n outputs of its output type to `out`, which holds them (both checked above); and
        // reads its own tables, which live as long as `self`.
        unsafe { f(a.as_ptr(), out, m as i64) };
        Ok(())
    }
}

impl GemmKernel {
    /// Its function for a direct call on `m` rows of a matrix of `k`-byte rows, writing bytes
    /// (see [`crate::direct`]): `None` for a kernel reading in place, writing i32, or whose rows
    /// need padding.
    pub(crate) fn direct_rows(&self, m: usize) -> Option<crate::direct::Direct> {
        let Entry::Rows(f) = self.f else { return None };
        (self.output == Output::Bytes && self.row_stride() == self.k && m > 0).then(|| crate::direct::Direct {
            f: crate::direct::DirectFn::Rows { f, m: m as i64 },
            input: m * self.k,
            output: m * self.n,
        })
    }

    /// Its function for a direct call on one image when it reads in place (see
    /// [`crate::direct`]): the function, the image's bytes, and the buffer bytes it reads.
    pub(crate) fn direct_in_place(&self) -> Option<(crate::jit::BufferFn, usize, usize)> {
        match (self.offsets, &self.f) {
            (Some((_, reach)), Entry::Copying(f, image)) => Some((*f, *image, reach)),
            _ => None,
        }
    }

    /// Runs a kernel compiled with [`RowOffsets`] on one image `img`, which it copies into the
    /// halo buffer `buf` (whose border is the padding) and reads its rows from there, writing its
    /// fixed number of rows of requantized bytes to `out`.
    pub(crate) fn run_in_place(&self, img: &[u8], buf: &mut [u8], out: &mut [u8]) -> Result<(), String> {
        let (Some((m, reach)), Entry::Copying(f, image)) = (self.offsets, &self.f) else {
            return Err("this GEMM kernel reads rows of a matrix (run_rows)".into());
        };
        if img.len() != *image || buf.len() < reach || out.len() != m * self.n {
            return Err(format!(
                "GEMM kernel {}x{}: an image of {} bytes (not {image}), a buffer of {} (it reads {reach}) and {} outputs for {m} rows",
                self.k,
                self.n,
                img.len(),
                buf.len(),
                out.len()
            ));
        }
        // SAFETY: the kernel reads the image's bytes, which `img` holds, and writes them inside
        // the halo's pixels, below its length, which `buf` has (`conv` builds the offsets within
        // the halo); reads 4-byte groups at `rows[r] + groups[g]` (or 16 bytes at
        // `rows[r] + groups[4c]`, four contiguous groups, see `gemm_simd`), all below `reach`
        // ≤ buf.len(); writes m·n outputs to `out`, which holds them (checked above); reads its
        // own tables, which live as long as `self`; and m is even (`gemm_simd::compile` checks).
        unsafe { f(img.as_ptr(), out.as_mut_ptr(), buf.as_mut_ptr()) };
        Ok(())
    }
}

/// The bytes of a quantized tensor as the kernels store them (i8 and u8 bit patterns).
pub fn tensor_bytes(t: &Tensor) -> Option<Vec<u8>> {
    match t {
        Tensor::I8(a) => Some(match a.as_slice() {
            Some(v) => v.iter().map(|&b| b as u8).collect(),
            None => a.iter().map(|&b| b as u8).collect(),
        }),
        Tensor::U8(a) => Some(a.as_slice().map_or_else(|| a.iter().copied().collect(), <[u8]>::to_vec)),
        _ => None,
    }
}

/// A tensor of the result type from kernel output bytes.
pub fn bytes_tensor(bytes: Vec<u8>, shape: &[usize], elem: &ElemType) -> Tensor {
    match elem.storage() {
        ScalarType::I8 => Tensor::I8(shaped(shape, bytes.into_iter().map(|v| v as i8).collect()).expect("sized")),
        _ => Tensor::U8(shaped(shape, bytes).expect("sized")),
    }
}

/// `v` as an array of shape `shape`, built through ndarray's fixed-rank shapes up to rank 4
/// (setting up a dynamic-rank shape costs several times more, and a batch-1 run's outputs are
/// small enough for that to show: the dequantize of 10 logits took 100 ns with it, 40–50 without).
pub(crate) fn shaped<T>(shape: &[usize], v: Vec<T>) -> Result<ndarray::ArrayD<T>, ndarray::ShapeError> {
    use ndarray::Array;
    match *shape {
        [a] => Array::from_shape_vec(a, v).map(|a| a.into_dyn()),
        [a, b] => Array::from_shape_vec((a, b), v).map(|a| a.into_dyn()),
        [a, b, c] => Array::from_shape_vec((a, b, c), v).map(|a| a.into_dyn()),
        [a, b, c, d] => Array::from_shape_vec((a, b, c, d), v).map(|a| a.into_dyn()),
        _ => Array::from_shape_vec(shape, v),
    }
}
