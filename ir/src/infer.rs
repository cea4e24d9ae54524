//! Shape and type rules: what each op's results look like, given its operands' types, its
//! attributes, and the values of operands that are inline constants.
//!
//! A rule may leave part of the answer open ([`TypeFact`] with `None`): the element type of an
//! integer kernel's result is whatever quantized type the IR declares, and a reshape to a
//! computed shape is known only once that shape is folded. The verifier checks what is known.

use crate::attr::Attrs;
use crate::ops::OpKind;
use crate::tensor::Tensor;
use crate::types::{Dim, ElemType, ScalarType, TensorType};

/// What the rule knows about one operand.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    /// Its type.
    pub ty: &'a TensorType,
    /// Its value, when it is an inline constant.
    pub value: Option<&'a Tensor>,
}

/// What a rule derives about one result.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeFact {
    /// The shape, when determined.
    pub dims: Option<Vec<Dim>>,
    /// The element type, when determined.
    pub elem: Option<ElemType>,
}

impl TypeFact {
    fn full(dims: Vec<Dim>, elem: ElemType) -> TypeFact {
        TypeFact { dims: Some(dims), elem: Some(elem) }
    }

    /// The complete type, when everything is determined.
    pub fn complete(&self) -> Option<TensorType> {
        Some(TensorType { dims: self.dims.clone()?, elem: self.elem.clone()? })
    }

    /// Whether `ty` agrees with everything this fact determines.
    pub fn admits(&self, ty: &TensorType) -> bool {
        self.dims.as_ref().is_none_or(|d| *d == ty.dims) && self.elem.as_ref().is_none_or(|e| *e == ty.elem)
    }
}

type R<T> = Result<T, String>;

const F32: ElemType = ElemType::Scalar(ScalarType::F32);

/// Infers the results of a `kind` op. Errors are sentences naming what is wrong.
pub fn infer(kind: OpKind, attrs: &Attrs, ops: &[Operand]) -> R<Vec<TypeFact>> {
    // Every rule below may index the operands its arity guarantees (callers such as the ONNX
    // importer reach here without the verifier's arity check).
    let (min, max) = kind.arity();
    if ops.len() < min || ops.len() > max {
        return Err(format!("{kind} takes {min} to {max} operands, got {}", ops.len()));
    }
    let one = |dims: Vec<Dim>, elem: Option<ElemType>| Ok(vec![TypeFact { dims: Some(dims), elem }]);
    let x = || ops[0].ty;
    match kind {
        OpKind::Const => Err("const has no rule; its type is declared".into()),
        OpKind::Conv2d => conv2d(attrs, ops),
        OpKind::ConvTranspose2d => conv_transpose2d(attrs, ops),
        OpKind::MatMul => {
            let elem = kernel_elem(&ops[..2])?;
            one(matmul_dims(&ops[0].ty.dims, &ops[1].ty.dims)?, elem)
        }
        OpKind::Gemm => gemm(attrs, ops),
        OpKind::Add | OpKind::Sub | OpKind::Mul | OpKind::Div => {
            check_activation(attrs)?;
            let elem = arith_elem(ops)?;
            one(broadcast(&ops[0].ty.dims, &ops[1].ty.dims)?, elem)
        }
        OpKind::Relu | OpKind::Clip | OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish => {
            let elem = match &x().elem {
                ElemType::Scalar(ScalarType::F32) => Some(F32),
                ElemType::Quant(_) if kind == OpKind::Relu => Some(x().elem.clone()),
                ElemType::Quant(_) => None,
                e => return Err(format!("{kind} needs an f32 or quantized operand, got {e}")),
            };
            one(x().dims.clone(), elem)
        }
        OpKind::BatchNorm => {
            float_operands(kind, ops)?;
            let c = channel_dim(x(), kind)?;
            for (i, o) in ops[1..].iter().enumerate() {
                expect_vector(o.ty, c, &["scale", "bias", "mean", "var"][i])?;
            }
            one(x().dims.clone(), Some(F32))
        }
        OpKind::MaxPool | OpKind::AvgPool => pool(kind, attrs, ops),
        OpKind::GlobalAvgPool => {
            rank_at_least(x(), 3, kind)?;
            let mut dims = x().dims.clone();
            dims[2..].fill(Dim::Fixed(1));
            one(dims, pass_or_declared(x()))
        }
        OpKind::ReduceMean => {
            let rank = x().rank();
            let axes = match attrs.ints("axes") {
                Some(a) if !a.is_empty() => normalize_axes(a, rank)?,
                _ => (0..rank).collect(),
            };
            let keep = attrs.bool("keepdims", true);
            let mut dims = Vec::new();
            for (i, d) in x().dims.iter().enumerate() {
                if !axes.contains(&i) {
                    dims.push(*d);
                } else if keep {
                    dims.push(Dim::Fixed(1));
                }
            }
            one(dims, pass_or_declared(x()))
        }
        OpKind::Flatten => {
            let rank = x().rank() as i64;
            let axis = attrs.int("axis", 1);
            let axis = if axis < 0 { axis + rank } else { axis };
            if axis < 0 || axis > rank {
                return Err(format!("flatten axis {} is out of range for rank {rank}", attrs.int("axis", 1)));
            }
            let (a, b) = x().dims.split_at(axis as usize);
            one(vec![product(a)?, product(b)?], Some(x().elem.clone()))
        }
        OpKind::Reshape => reshape(attrs, ops),
        OpKind::Transpose => {
            let rank = x().rank();
            let perm: Vec<usize> = match attrs.ints("perm") {
                Some(p) => p.iter().map(|&a| normalize_axis(a, rank)).collect::<R<_>>()?,
                None => (0..rank).rev().collect(),
            };
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..rank).collect::<Vec<_>>() {
                return Err(format!("perm {perm:?} is not a permutation of 0..{rank}"));
            }
            one(perm.iter().map(|&p| x().dims[p]).collect(), Some(x().elem.clone()))
        }
        OpKind::Concat => {
            let rank = x().rank();
            if rank == 0 {
                return Err("concat needs operands of rank 1 or more, got scalars".into());
            }
            let axis = normalize_axis(attrs.int("axis", 0), rank)?;
            let mut dims = x().dims.clone();
            for (i, o) in ops.iter().enumerate().skip(1) {
                if o.ty.rank() != rank {
                    return Err(format!("operand {i} has rank {}, operand 0 has rank {rank}", o.ty.rank()));
                }
                for (j, (a, b)) in dims.iter_mut().zip(&o.ty.dims).enumerate() {
                    if j == axis {
                        *a = match (*a, *b) {
                            (Dim::Fixed(p), Dim::Fixed(q)) => Dim::Fixed(p + q),
                            _ => Dim::Dynamic,
                        };
                    } else if let (Dim::Fixed(p), Dim::Fixed(q)) = (*a, *b)
                        && p != q
                    {
                        return Err(format!("operand {i} has size {q} in dim {j}, operand 0 has {p}"));
                    }
                }
            }
            let same = ops.iter().all(|o| o.ty.elem == x().elem);
            if !same && ops.iter().any(|o| o.ty.elem.quant().is_none()) {
                return Err("concat operands have different element types".into());
            }
            // Quantized operands may be requantized into the result's declared parameters.
            one(dims, (same && x().elem.quant().is_none()).then(|| x().elem.clone()))
        }
        OpKind::Slice => {
            let rank = x().rank();
            let starts = attrs.ints("starts").unwrap_or(&[]);
            let ends = attrs.ints("ends").unwrap_or(&[]);
            let axes: Vec<usize> = match attrs.ints("axes") {
                Some(a) => normalize_axes(a, rank)?,
                None => (0..starts.len()).collect(),
            };
            let steps = attrs.ints("steps").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; starts.len()]);
            if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                return Err("slice starts, ends, axes and steps must have the same length".into());
            }
            let mut dims = x().dims.clone();
            for (k, &axis) in axes.iter().enumerate() {
                if axis >= rank {
                    return Err(format!("slice axis {axis} is out of range for rank {rank}"));
                }
                if steps[k] == 0 {
                    return Err("slice step 0".into());
                }
                dims[axis] = match dims[axis] {
                    Dim::Fixed(d) => Dim::Fixed(slice_range(d as i64, starts[k], ends[k], steps[k]).1 as u64),
                    Dim::Dynamic => Dim::Dynamic,
                };
            }
            one(dims, Some(x().elem.clone()))
        }
        OpKind::Pad => {
            let rank = x().rank();
            let pads = attrs.ints("pads").unwrap_or(&[]);
            if pads.len() != 2 * rank {
                return Err(format!("pad needs {} pads for rank {rank}, got {}", 2 * rank, pads.len()));
            }
            if pads.iter().any(|&p| p < 0) {
                return Err("negative pads are not supported".into());
            }
            let mode = attrs.str("mode").unwrap_or("constant");
            if !["constant", "reflect", "edge"].contains(&mode) {
                return Err(format!("unknown pad mode \"{mode}\" (expected constant, reflect or edge)"));
            }
            let dims = x()
                .dims
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Fixed(n) => Dim::Fixed(n + (pads[i] + pads[i + rank]) as u64),
                    Dim::Dynamic => Dim::Dynamic,
                })
                .collect();
            one(dims, Some(x().elem.clone()))
        }
        OpKind::Resize => resize(attrs, ops),
        OpKind::Softmax => {
            float_operands(kind, ops)?;
            normalize_axis(attrs.int("axis", -1), x().rank())?;
            one(x().dims.clone(), Some(F32))
        }
        OpKind::Quantize => {
            if !x().elem.is_f32() {
                return Err(format!("quantize needs an f32 operand, got {}", x().elem));
            }
            one(x().dims.clone(), None)
        }
        OpKind::Stats => {
            if !x().elem.is_f32() {
                return Err(format!("stats records the range of an f32 value, got {}", x().elem));
            }
            let (lo, hi) = (attrs.float("min", 0.0), attrs.float("max", 0.0));
            if !(lo.is_finite() && hi.is_finite() && lo <= 0.0 && 0.0 <= hi) {
                return Err(format!("the calibrated range [{lo}, {hi}] must be finite and include 0"));
            }
            one(x().dims.clone(), Some(F32))
        }
        OpKind::Requantize => {
            if x().elem.quant().is_none() {
                return Err(format!("requantize needs a quantized operand, got {}", x().elem));
            }
            one(x().dims.clone(), None)
        }
        OpKind::Dequantize => {
            if x().elem.quant().is_none() {
                return Err(format!("dequantize needs a quantized operand, got {}", x().elem));
            }
            one(x().dims.clone(), Some(F32))
        }
        OpKind::Shape => one(vec![Dim::Fixed(x().rank() as u64)], Some(ScalarType::I64.into())),
        OpKind::Gather => {
            let rank = x().rank();
            if rank == 0 {
                return Err("gather needs an operand of rank 1 or more, got a scalar".into());
            }
            let axis = normalize_axis(attrs.int("axis", 0), rank)?;
            let idx = ops[1].ty;
            if !matches!(idx.elem, ElemType::Scalar(ScalarType::I64 | ScalarType::I32)) {
                return Err(format!("gather indices must be i64 or i32, got {}", idx.elem));
            }
            if let (Some(v), Dim::Fixed(d)) = (ops[1].value, x().dims[axis]) {
                let d = d as i64;
                if let Some(bad) = v.to_i64_vec().unwrap_or_default().into_iter().find(|&i| i < -d || i >= d) {
                    return Err(format!("gather index {bad} is out of range for size {d}"));
                }
            }
            let mut dims = x().dims[..axis].to_vec();
            dims.extend_from_slice(&idx.dims);
            dims.extend_from_slice(&x().dims[axis + 1..]);
            one(dims, Some(x().elem.clone()))
        }
        OpKind::DynamicQuantize => {
            if !x().elem.is_f32() {
                return Err(format!("dynamic_quantize needs an f32 operand, got {}", x().elem));
            }
            Ok(vec![
                TypeFact::full(x().dims.clone(), ScalarType::U8.into()),
                TypeFact::full(vec![], F32),
                TypeFact::full(vec![], ScalarType::U8.into()),
            ])
        }
        OpKind::MatMulInteger | OpKind::ConvInteger => {
            let int8 = |t: &TensorType| matches!(t.elem, ElemType::Scalar(ScalarType::U8 | ScalarType::I8));
            if let Some((i, o)) = ops.iter().enumerate().find(|(_, o)| !int8(o.ty)) {
                return Err(format!("matmul_integer operand {i} must be plain u8 or i8, got {}", o.ty));
            }
            for (i, z) in ops.iter().enumerate().skip(2) {
                if z.ty.rank() > 1 || z.ty.elem != ops[i - 2].ty.elem {
                    return Err(format!("zero point {} must be a scalar or vector of {}", i - 2, ops[i - 2].ty.elem));
                }
            }
            let dims = if kind == OpKind::MatMulInteger {
                matmul_dims(&ops[0].ty.dims, &ops[1].ty.dims)?
            } else {
                conv_dims(attrs, ops[0].ty, ops[1].ty)?
            };
            one(dims, Some(ScalarType::I32.into()))
        }
        OpKind::Cast => {
            let to = attrs.str("to").unwrap_or("");
            let Some(t) = ScalarType::from_name(to) else {
                return Err(format!("cast to unknown type \"{to}\""));
            };
            one(x().dims.clone(), Some(t.into()))
        }
        OpKind::Squeeze => {
            let rank = x().rank();
            let axes = match attrs.ints("axes") {
                Some(a) => normalize_axes(a, rank)?,
                None => (0..rank).filter(|&i| x().dims[i] == Dim::Fixed(1)).collect(),
            };
            for &a in &axes {
                if x().dims[a] != Dim::Fixed(1) {
                    return Err(format!("squeeze axis {a} has size {}, not 1", x().dims[a]));
                }
            }
            let dims = (0..rank).filter(|i| !axes.contains(i)).map(|i| x().dims[i]).collect();
            one(dims, Some(x().elem.clone()))
        }
        OpKind::Unsqueeze => {
            let out_rank = x().rank() + attrs.ints("axes").map_or(0, <[i64]>::len);
            let axes = normalize_axes(attrs.ints("axes").unwrap_or(&[]), out_rank)?;
            let mut rest = x().dims.iter();
            let dims =
                (0..out_rank).map(|i| if axes.contains(&i) { Dim::Fixed(1) } else { *rest.next().expect("counted") }).collect();
            one(dims, Some(x().elem.clone()))
        }
        OpKind::LayerNorm => {
            float_operands(kind, ops)?;
            let rank = x().rank();
            let axis = normalize_axis(attrs.int("axis", -1), rank)?;
            let norm = &x().dims[axis..];
            for (o, what) in ops[1..].iter().zip(["scale", "bias"]) {
                if broadcast(norm, &o.ty.dims).ok().as_deref() != Some(norm) {
                    return Err(format!("the layer_norm {what} {} does not broadcast to the normalized dims", o.ty));
                }
            }
            one(x().dims.clone(), Some(F32))
        }
        OpKind::Gelu => {
            float_operands(kind, ops)?;
            match attrs.str("approximate") {
                None | Some("none" | "tanh") => one(x().dims.clone(), Some(F32)),
                Some(other) => Err(format!("gelu approximate must be \"none\" or \"tanh\", got \"{other}\"")),
            }
        }
        OpKind::Erf | OpKind::Tanh | OpKind::Sqrt | OpKind::Exp => {
            float_operands(kind, ops)?;
            one(x().dims.clone(), Some(F32))
        }
        OpKind::Neg => match &x().elem {
            ElemType::Scalar(ScalarType::F32 | ScalarType::I64 | ScalarType::I32) => {
                one(x().dims.clone(), Some(x().elem.clone()))
            }
            e => Err(format!("neg needs an f32 or integer operand, got {e}")),
        },
        OpKind::Pow => {
            float_operands(kind, ops)?;
            one(broadcast(&ops[0].ty.dims, &ops[1].ty.dims)?, Some(F32))
        }
        OpKind::Where => {
            if ops[0].ty.elem != ElemType::Scalar(ScalarType::Bool) {
                return Err(format!("the condition of where must be bool, got {}", ops[0].ty.elem));
            }
            if ops[1].ty.elem != ops[2].ty.elem || ops[1].ty.elem.quant().is_some() {
                return Err(format!(
                    "where chooses between values of one plain type, got {} and {}",
                    ops[1].ty.elem, ops[2].ty.elem
                ));
            }
            let dims = broadcast(&broadcast(&ops[0].ty.dims, &ops[1].ty.dims)?, &ops[2].ty.dims)?;
            one(dims, Some(ops[1].ty.elem.clone()))
        }
        OpKind::Equal | OpKind::Less | OpKind::LessOrEqual | OpKind::Greater | OpKind::GreaterOrEqual => {
            let (a, b) = (&ops[0].ty.elem, &ops[1].ty.elem);
            if a != b || a.quant().is_some() {
                return Err(format!("{kind} compares values of one plain type, got {a} and {b}"));
            }
            one(broadcast(&ops[0].ty.dims, &ops[1].ty.dims)?, Some(ScalarType::Bool.into()))
        }
        OpKind::And | OpKind::Or | OpKind::Not => {
            let bool_ty = ElemType::Scalar(ScalarType::Bool);
            if let Some(o) = ops.iter().find(|o| o.ty.elem != bool_ty) {
                return Err(format!("{kind} needs bool operands, got {}", o.ty.elem));
            }
            let dims = match ops.get(1) {
                Some(b) => broadcast(&x().dims, &b.ty.dims)?,
                None => x().dims.clone(),
            };
            one(dims, Some(bool_ty))
        }
        OpKind::Expand => {
            let shape = attrs.ints("shape").unwrap_or(&[]);
            if let Some(bad) = shape.iter().find(|&&d| d < 0) {
                return Err(format!("expand shape holds {bad}"));
            }
            let to: Vec<Dim> = shape.iter().map(|&d| Dim::Fixed(d as u64)).collect();
            one(broadcast(&x().dims, &to)?, Some(x().elem.clone()))
        }
        OpKind::ReduceSum | OpKind::ReduceMax | OpKind::ReduceMin => {
            float_operands(kind, ops)?;
            let rank = x().rank();
            let axes = match attrs.ints("axes") {
                Some(a) if !a.is_empty() => normalize_axes(a, rank)?,
                _ => (0..rank).collect(),
            };
            let keep = attrs.bool("keepdims", true);
            let dims = (0..rank)
                .filter_map(|i| match (axes.contains(&i), keep) {
                    (false, _) => Some(x().dims[i]),
                    (true, true) => Some(Dim::Fixed(1)),
                    (true, false) => None,
                })
                .collect();
            one(dims, Some(F32))
        }
    }
}

/// The rule's single complete result type, or an error when something is left open.
pub fn infer_type(kind: OpKind, attrs: &Attrs, ops: &[Operand]) -> R<TensorType> {
    let facts = infer(kind, attrs, ops)?;
    facts
        .first()
        .and_then(TypeFact::complete)
        .ok_or_else(|| format!("the result type of {kind} is not determined by its operands"))
}

/// `[start, count)` of an ONNX slice of a dim of size `d` (negative indices count from the end;
/// out-of-range ones are clamped). Returns (first index, element count).
pub fn slice_range(d: i64, start: i64, end: i64, step: i64) -> (i64, i64) {
    let norm = |i: i64| if i < 0 { i.saturating_add(d) } else { i };
    if step > 0 {
        let s = norm(start).clamp(0, d);
        let e = norm(end).clamp(0, d);
        (s, if e > s { (e - s + step - 1) / step } else { 0 })
    } else {
        let s = norm(start).clamp(-1, d - 1);
        let e = norm(end).clamp(-1, d - 1);
        (s, if s > e { (s - e + (-step) - 1) / (-step) } else { 0 })
    }
}

/// The output size of a window sweep (conv or pool) over one spatial dim.
pub fn window_out(input: u64, kernel: u64, stride: u64, pad_begin: u64, pad_end: u64, dilation: u64, ceil: bool) -> R<u64> {
    if stride == 0 || dilation == 0 || kernel == 0 {
        return Err("kernel, strides and dilations must be positive".into());
    }
    let span = dilation * (kernel - 1) + 1;
    let padded = input + pad_begin + pad_end;
    if padded < span {
        return Err(format!("window of {span} does not fit input {input} with pads {pad_begin}+{pad_end}"));
    }
    let num = padded - span;
    let mut out = if ceil { num.div_ceil(stride) + 1 } else { num / stride + 1 };
    if ceil && (out - 1) * stride >= input + pad_begin {
        out -= 1;
    }
    Ok(out)
}

/// Reads a list attribute of `len` non-negative values, or `default` when absent.
pub fn ints_or(attrs: &Attrs, key: &str, len: usize, default: u64) -> R<Vec<u64>> {
    match attrs.ints(key) {
        None => Ok(vec![default; len]),
        Some(v) if v.len() == len && v.iter().all(|&x| x >= 0) => Ok(v.iter().map(|&x| x as u64).collect()),
        Some(v) => Err(format!("{key} must be {len} non-negative integers, got {v:?}")),
    }
}

fn conv2d(attrs: &Attrs, ops: &[Operand]) -> R<Vec<TypeFact>> {
    if let Some(b) = ops.get(2) {
        let o = ops[1].ty.dims.first().copied().unwrap_or(Dim::Dynamic);
        expect_vector(b.ty, o, "bias")?;
    }
    check_activation(attrs)?;
    Ok(vec![TypeFact { dims: Some(conv_dims(attrs, ops[0].ty, ops[1].ty)?), elem: kernel_elem(&ops[..2])? }])
}

/// The result dims of a 2-D convolution of `x` (NCHW) by `w` (OIHW).
fn conv_dims(attrs: &Attrs, x: &TensorType, w: &TensorType) -> R<Vec<Dim>> {
    rank_exactly(x, 4, "conv input")?;
    rank_exactly(w, 4, "conv weight")?;
    let groups = attrs.int("groups", 1);
    if groups < 1 {
        return Err(format!("groups must be positive, got {groups}"));
    }
    let g = groups as u64;
    let (strides, pads, dil) =
        (ints_or(attrs, "strides", 2, 1)?, ints_or(attrs, "pads", 4, 0)?, ints_or(attrs, "dilations", 2, 1)?);
    let wd = w.fixed_dims().ok_or("the conv weight must have fixed dims")?;
    let (o, ci, kh, kw) = (wd[0] as u64, wd[1] as u64, wd[2] as u64, wd[3] as u64);
    if let Dim::Fixed(c) = x.dims[1]
        && c != ci * g
    {
        return Err(format!("input has {c} channels but weight expects {ci} x {g} groups = {}", ci * g));
    }
    if o % g != 0 {
        return Err(format!("{o} output channels are not divisible by {g} groups"));
    }
    let mut dims = vec![x.dims[0], Dim::Fixed(o)];
    for i in 0..2 {
        dims.push(match x.dims[2 + i] {
            Dim::Fixed(n) => Dim::Fixed(window_out(n, [kh, kw][i], strides[i], pads[i], pads[i + 2], dil[i], false)?),
            Dim::Dynamic => Dim::Dynamic,
        });
    }
    Ok(dims)
}

fn conv_transpose2d(attrs: &Attrs, ops: &[Operand]) -> R<Vec<TypeFact>> {
    let (x, w) = (ops[0].ty, ops[1].ty);
    float_operands(OpKind::ConvTranspose2d, ops)?;
    rank_exactly(x, 4, "conv_transpose2d input")?;
    rank_exactly(w, 4, "conv_transpose2d weight")?;
    let g = attrs.int("groups", 1);
    if g < 1 {
        return Err(format!("groups must be positive, got {g}"));
    }
    let g = g as u64;
    let (strides, pads, dil) =
        (ints_or(attrs, "strides", 2, 1)?, ints_or(attrs, "pads", 4, 0)?, ints_or(attrs, "dilations", 2, 1)?);
    let out_pad = ints_or(attrs, "output_padding", 2, 0)?;
    let wd = w.fixed_dims().ok_or("conv_transpose2d weight must have fixed dims")?;
    if let Dim::Fixed(c) = x.dims[1]
        && c != wd[0] as u64
    {
        return Err(format!("input has {c} channels but weight expects {}", wd[0]));
    }
    let o = wd[1] as u64 * g;
    if let Some(b) = ops.get(2) {
        expect_vector(b.ty, Dim::Fixed(o), "bias")?;
    }
    let mut dims = vec![x.dims[0], Dim::Fixed(o)];
    for i in 0..2 {
        dims.push(match x.dims[2 + i] {
            Dim::Fixed(n) => {
                let k = wd[2 + i] as i64;
                let full = (n as i64 - 1) * strides[i] as i64 + dil[i] as i64 * (k - 1) + 1 + out_pad[i] as i64;
                let v = full - pads[i] as i64 - pads[i + 2] as i64;
                if v <= 0 || n == 0 {
                    return Err(format!("conv_transpose2d output size {v} is not positive"));
                }
                Dim::Fixed(v as u64)
            }
            Dim::Dynamic => Dim::Dynamic,
        });
    }
    Ok(vec![TypeFact::full(dims, F32)])
}

fn gemm(attrs: &Attrs, ops: &[Operand]) -> R<Vec<TypeFact>> {
    let (a, b) = (ops[0].ty, ops[1].ty);
    rank_exactly(a, 2, "gemm A")?;
    rank_exactly(b, 2, "gemm B")?;
    check_activation(attrs)?;
    let (m, ka) = if attrs.bool("trans_a", false) { (a.dims[1], a.dims[0]) } else { (a.dims[0], a.dims[1]) };
    let (kb, n) = if attrs.bool("trans_b", false) { (b.dims[1], b.dims[0]) } else { (b.dims[0], b.dims[1]) };
    if let (Dim::Fixed(p), Dim::Fixed(q)) = (ka, kb)
        && p != q
    {
        return Err(format!("gemm inner dims differ: A gives K = {p}, B gives K = {q}"));
    }
    if let Some(c) = ops.get(2) {
        let bc = broadcast(&c.ty.dims, &[m, n])?;
        if bc != [m, n] {
            return Err(format!("gemm C of shape {} does not broadcast to [{m}, {n}]", c.ty));
        }
    }
    Ok(vec![TypeFact { dims: Some(vec![m, n]), elem: kernel_elem(&ops[..2])? }])
}

fn pool(kind: OpKind, attrs: &Attrs, ops: &[Operand]) -> R<Vec<TypeFact>> {
    let x = ops[0].ty;
    rank_exactly(x, 4, &format!("{kind} input"))?;
    let k = ints_or(attrs, "kernel_shape", 2, 1)?;
    let (strides, pads, dil) =
        (ints_or(attrs, "strides", 2, 1)?, ints_or(attrs, "pads", 4, 0)?, ints_or(attrs, "dilations", 2, 1)?);
    if (0..2).any(|i| pads[i] >= k[i] || pads[i + 2] >= k[i]) {
        return Err(format!("pads {pads:?} must be smaller than the kernel {k:?}"));
    }
    let ceil = attrs.bool("ceil_mode", false);
    let mut dims = x.dims[..2].to_vec();
    for i in 0..2 {
        dims.push(match x.dims[2 + i] {
            Dim::Fixed(n) => Dim::Fixed(window_out(n, k[i], strides[i], pads[i], pads[i + 2], dil[i], ceil)?),
            Dim::Dynamic => Dim::Dynamic,
        });
    }
    let elem = if kind == OpKind::MaxPool { Some(x.elem.clone()) } else { pass_or_declared(x) };
    Ok(vec![TypeFact { dims: Some(dims), elem }])
}

fn reshape(attrs: &Attrs, ops: &[Operand]) -> R<Vec<TypeFact>> {
    let x = ops[0].ty;
    let spec: Vec<i64> = match (attrs.ints("shape"), ops.get(1)) {
        (Some(_), Some(_)) => return Err("reshape takes its shape from an attribute or an operand, not both".into()),
        (Some(s), None) => s.to_vec(),
        (None, Some(o)) => {
            if !matches!(o.ty.elem, ElemType::Scalar(ScalarType::I64)) || o.ty.rank() != 1 {
                return Err(format!("reshape shape operand must be a 1-D i64 tensor, got {}", o.ty));
            }
            match o.value {
                Some(v) => v.to_i64_vec().expect("i64"),
                // Known only at run time; the count is checked then.
                None => {
                    o.ty.dims[0].fixed().ok_or("reshape shape operand must have a fixed length")?;
                    return Ok(vec![TypeFact { dims: None, elem: Some(x.elem.clone()) }]);
                }
            }
        }
        (None, None) => return Err("reshape needs a `shape` attribute or a shape operand".into()),
    };
    let allowzero = attrs.bool("allowzero", false);
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(Dim::Fixed(1));
            }
            -1 => return Err("reshape shape has more than one -1".into()),
            0 if !allowzero => out.push(*x.dims.get(i).ok_or(format!("reshape shape copies dim {i} the input does not have"))?),
            s if s < 0 => return Err(format!("reshape shape has a negative size {s}")),
            s => out.push(Dim::Fixed(s as u64)),
        }
    }
    let fixed = |d: &[Dim]| d.iter().filter_map(|d| d.fixed()).try_fold(1u64, |a, b| a.checked_mul(b));
    let dyn_in = x.dims.iter().filter(|d| **d == Dim::Dynamic).count();
    let dyn_out = out.iter().filter(|d| **d == Dim::Dynamic).count();
    let (fin, fout) = (fixed(&x.dims).ok_or("shape overflows")?, fixed(&out).ok_or("shape overflows")?);
    if let Some(i) = infer_at {
        if dyn_in != dyn_out {
            out[i] = Dim::Dynamic;
        } else if fout == 0 || fin % fout != 0 {
            return Err(format!("cannot reshape {x} to {spec:?}: {fin} elements do not divide into {fout}"));
        } else {
            out[i] = Dim::Fixed(fin / fout);
        }
    } else if dyn_in == dyn_out && fin != fout {
        return Err(format!("cannot reshape {x} ({fin} elements) to {spec:?} ({fout} elements)"));
    }
    Ok(vec![TypeFact::full(out, x.elem.clone())])
}

fn resize(attrs: &Attrs, ops: &[Operand]) -> R<Vec<TypeFact>> {
    let x = ops[0].ty;
    float_operands(OpKind::Resize, ops)?;
    let mode = attrs.str("mode").unwrap_or("nearest");
    if !["nearest", "linear"].contains(&mode) {
        return Err(format!("unknown resize mode \"{mode}\" (expected nearest or linear)"));
    }
    let ctm = attrs.str("coordinate_transformation_mode").unwrap_or("half_pixel");
    if !["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"].contains(&ctm) {
        return Err(format!("unsupported coordinate_transformation_mode \"{ctm}\""));
    }
    let nm = attrs.str("nearest_mode").unwrap_or("round_prefer_floor");
    if !["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"].contains(&nm) {
        return Err(format!("unsupported nearest_mode \"{nm}\""));
    }
    let rank = x.rank();
    let dims = match (attrs.floats("scales"), attrs.ints("sizes")) {
        (Some(s), None) if s.len() == rank && s.iter().all(|v| *v > 0.0 && v.is_finite()) => x
            .dims
            .iter()
            .zip(s)
            .map(|(d, &sc)| match d {
                Dim::Fixed(n) => Dim::Fixed((*n as f64 * sc as f64).floor() as u64),
                Dim::Dynamic => Dim::Dynamic,
            })
            .collect(),
        (None, Some(s)) if s.len() == rank && s.iter().all(|v| *v > 0) => s.iter().map(|&v| Dim::Fixed(v as u64)).collect(),
        _ => return Err(format!("resize needs either `scales` ({rank} positive floats) or `sizes` ({rank} positive integers)")),
    };
    Ok(vec![TypeFact::full(dims, F32)])
}

/// Numpy broadcasting of two shapes.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> R<Vec<Dim>> {
    let n = a.len().max(b.len());
    let get = |s: &[Dim], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { Dim::Fixed(1) };
    (0..n)
        .map(|i| match (get(a, i), get(b, i)) {
            (Dim::Fixed(1), d) | (d, Dim::Fixed(1)) => Ok(d),
            (Dim::Fixed(p), Dim::Fixed(q)) if p == q => Ok(Dim::Fixed(p)),
            (Dim::Fixed(p), Dim::Fixed(q)) => Err(format!("shapes do not broadcast: {p} vs {q} in dim {i}")),
            _ => Ok(Dim::Dynamic),
        })
        .collect()
}

/// Numpy `matmul` shapes (1-D operands are promoted and the promoted dim dropped).
pub fn matmul_dims(a: &[Dim], b: &[Dim]) -> R<Vec<Dim>> {
    if a.is_empty() || b.is_empty() {
        return Err("matmul operands must have rank at least 1".into());
    }
    let a2: Vec<Dim> = if a.len() == 1 { vec![Dim::Fixed(1), a[0]] } else { a.to_vec() };
    let b2: Vec<Dim> = if b.len() == 1 { vec![b[0], Dim::Fixed(1)] } else { b.to_vec() };
    let (m, ka) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if let (Dim::Fixed(p), Dim::Fixed(q)) = (ka, kb)
        && p != q
    {
        return Err(format!("matmul inner dims differ: {p} vs {q}"));
    }
    let mut dims = broadcast(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
    if a.len() > 1 {
        dims.push(m);
    }
    if b.len() > 1 {
        dims.push(n);
    }
    Ok(dims)
}

/// Resolves a possibly negative axis.
pub fn normalize_axis(axis: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

/// Resolves a list of possibly negative axes; duplicates are an error.
pub fn normalize_axes(axes: &[i64], rank: usize) -> R<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = normalize_axis(a, rank)?;
        if out.contains(&n) {
            return Err(format!("axis {a} is repeated"));
        }
        out.push(n);
    }
    Ok(out)
}

fn product(dims: &[Dim]) -> R<Dim> {
    let mut n: u64 = 1;
    for d in dims {
        match d {
            Dim::Fixed(k) => n = n.checked_mul(*k).ok_or("shape overflows")?,
            Dim::Dynamic => return Ok(Dim::Dynamic),
        }
    }
    Ok(Dim::Fixed(n))
}

fn rank_exactly(t: &TensorType, rank: usize, what: &str) -> R<()> {
    if t.rank() != rank {
        return Err(format!("{what} must have rank {rank}, got {t}"));
    }
    Ok(())
}

fn rank_at_least(t: &TensorType, rank: usize, kind: OpKind) -> R<()> {
    if t.rank() < rank {
        return Err(format!("{kind} input must have rank at least {rank}, got {t}"));
    }
    Ok(())
}

fn channel_dim(t: &TensorType, kind: OpKind) -> R<Dim> {
    rank_at_least(t, 2, kind)?;
    Ok(t.dims[1])
}

fn expect_vector(t: &TensorType, len: Dim, what: &str) -> R<()> {
    if t.rank() != 1 || (len != Dim::Dynamic && t.dims[0] != len) {
        return Err(format!("{what} must be a vector of {len} elements, got {t}"));
    }
    Ok(())
}

fn float_operands(kind: OpKind, ops: &[Operand]) -> R<()> {
    match ops.iter().position(|o| !o.ty.elem.is_f32()) {
        Some(i) => Err(format!("{kind} needs f32 operands; operand {i} is {}", ops[i].ty)),
        None => Ok(()),
    }
}

fn check_activation(attrs: &Attrs) -> R<()> {
    match attrs.str("activation") {
        None | Some("relu") | Some("clip") => Ok(()),
        Some(a) => Err(format!("unknown fused activation \"{a}\" (expected relu or clip)")),
    }
}

/// f32 in, f32 out; quantized in, the declared type out.
fn kernel_elem(ops: &[Operand]) -> R<Option<ElemType>> {
    if ops.iter().all(|o| o.ty.elem.is_f32()) {
        Ok(Some(F32))
    } else if ops.iter().all(|o| o.ty.elem.quant().is_some()) {
        Ok(None)
    } else {
        let bad = ops.iter().find(|o| !o.ty.elem.is_f32() && o.ty.elem.quant().is_none()).map(|o| o.ty);
        match bad {
            Some(t) => Err(format!("operands must be f32 or quantized, got {t}")),
            None => Err("operands mix f32 and quantized types; dequantize first".into()),
        }
    }
}

/// Elementwise arithmetic: same scalar type in and out (f32, or integers for shape arithmetic);
/// quantized operands give the declared type.
fn arith_elem(ops: &[Operand]) -> R<Option<ElemType>> {
    let (a, b) = (&ops[0].ty.elem, &ops[1].ty.elem);
    match (a, b) {
        (ElemType::Quant(_), ElemType::Quant(_)) => Ok(None),
        (ElemType::Scalar(p), ElemType::Scalar(q)) if p == q && *p != ScalarType::Bool => Ok(Some(a.clone())),
        _ => Err(format!("operand types differ or are not arithmetic: {a} and {b}")),
    }
}

fn pass_or_declared(x: &TensorType) -> Option<ElemType> {
    x.elem.is_f32().then_some(F32)
}
