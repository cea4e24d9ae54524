//! The f32 tail of a dynamically quantized layer, fused into its integer product: what
//! `quantize-dynamic` emits after `matmul_integer`/`conv_integer`,
//!
//! ```text
//! %acc = matmul_integer(%x.q, %w.q8, %x.zp)        %c = cast(%acc) {to = "f32"}
//! %m = mul(%c, %s)   (%s = x.scale · w.scale)      %y = add(%m, %b) {activation}
//! ```
//!
//! runs as one step computing `act(f32(acc)·s[ch] + b[ch])` per element — the evaluator's own
//! operations in its order (a cast, one f32 multiply, one f32 add, then the add's fused
//! activation), so the result is the same bit for bit — instead of four evaluator steps with a
//! tensor each. When `%s` is itself `mul(x.scale, w.scale)` of the run-time input scale and a
//! constant, used nowhere else, that product is computed in the step too (`s[ch] = x.scale ·
//! w.scale[ch]`, the evaluator's one f32 multiply per channel). This module finds such chains
//! from their structure; the product itself must still compile ([`crate::kernels::integer`]) for the
//! chain to be fused.

use crate::kernels::integer::IntegerProduct;
use qc_ir::{Attrs, Graph, NodeId, OpKind, ScalarType, Tensor, TensorType, ValueId};

/// A chain found in the graph.
pub(crate) struct Chain {
    /// The cast and the multiply, which run inside the fused step.
    pub(crate) inner: [NodeId; 2],
    /// The add, where the fused step runs (all its operands exist by then).
    pub(crate) add: NodeId,
    /// The per-channel (or single) scale, computed at run time — or, with `factor`, the run-time
    /// half of the scale.
    pub(crate) scale: ValueId,
    /// The multiply making the scale from `scale` and a constant per-channel (or single) factor.
    pub(crate) factor: Option<(NodeId, ValueId)>,
    /// The per-channel (or single) bias, a constant.
    pub(crate) bias: ValueId,
}

/// The single use of `v` (not a graph output), as (node, operand index).
fn only_use(g: &Graph, v: ValueId) -> Option<(NodeId, usize)> {
    match (g.use_count(v), g.uses(v).as_slice()) {
        (1, [u]) => Some(*u),
        _ => None,
    }
}

/// Whether `t` (f32, fixed dims) broadcasts over an output of `shape` along `axis` only: every
/// dim 1, except the one aligned with `axis`, which may be `shape[axis]`.
fn per_channel(t: &TensorType, shape: &[Option<u64>], axis: usize) -> bool {
    let dims: Option<Vec<u64>> = t.dims.iter().map(|d| d.fixed()).collect();
    let Some(dims) = dims else { return false };
    if t.elem.storage() != ScalarType::F32 || t.elem.quant().is_some() || dims.len() > shape.len() {
        return false;
    }
    let offset = shape.len() - dims.len();
    dims.iter().enumerate().all(|(j, &d)| d == 1 || (offset + j == axis && Some(d) == shape[axis]))
}

/// The chain that starts at `head` (a `matmul_integer` or `conv_integer`), if its result feeds
/// exactly the pattern above.
pub(crate) fn find(g: &Graph, head: NodeId) -> Option<Chain> {
    let node = g.node(head);
    let axis = match node.kind {
        OpKind::MatMulInteger => g.ty(node.results[0]).rank().checked_sub(1)?,
        OpKind::ConvInteger => 1,
        _ => return None,
    };
    let acc = node.results[0];
    let shape: Vec<Option<u64>> = g.ty(acc).dims.iter().map(|d| d.fixed()).collect();
    shape.get(axis)?.as_ref()?;
    let (cast, _) = only_use(g, acc)?;
    let cast_node = g.node(cast);
    if cast_node.kind != OpKind::Cast || cast_node.attrs.str("to") != Some("f32") {
        return None;
    }
    let (mul, i) = only_use(g, cast_node.results[0])?;
    let mul_node = g.node(mul);
    if mul_node.kind != OpKind::Mul || mul_node.operands.len() != 2 || mul_node.attrs.str("activation").is_some() {
        return None;
    }
    let scale = mul_node.operands[1 - i];
    let (add, j) = only_use(g, mul_node.results[0])?;
    let add_node = g.node(add);
    if add_node.kind != OpKind::Add || add_node.operands.len() != 2 {
        return None;
    }
    let bias = add_node.operands[1 - j];
    let bias_is_const = g.producer_of_kind(bias, OpKind::Const).is_some();
    let same_shape = |v: ValueId| g.ty(v).dims.iter().map(|d| d.fixed()).collect::<Vec<_>>() == shape;
    let f32_out = |v: ValueId| g.ty(v).elem.storage() == ScalarType::F32 && g.ty(v).elem.quant().is_none();
    let fits = bias_is_const
        && per_channel(g.ty(scale), &shape, axis)
        && per_channel(g.ty(bias), &shape, axis)
        && [cast_node.results[0], mul_node.results[0], add_node.results[0]].iter().all(|&v| same_shape(v) && f32_out(v));
    let factor = scale_factor(g, scale, &shape, axis);
    let (scale, factor) = match factor {
        Some((m, run_time, constant)) => (run_time, Some((m, constant))),
        None => (scale, None),
    };
    fits.then_some(Chain { inner: [cast, mul], add, scale, bias, factor })
}

/// When `scale` is `mul(r, c)` (either order) of a run-time value `r` and a constant `c`, both
/// per channel, used only by the chain: (the multiply, `r`, `c`).
fn scale_factor(g: &Graph, scale: ValueId, shape: &[Option<u64>], axis: usize) -> Option<(NodeId, ValueId, ValueId)> {
    let m = g.producer_of_kind(scale, OpKind::Mul)?;
    let node = g.node(m);
    only_use(g, scale)?;
    if node.operands.len() != 2 || node.attrs.str("activation").is_some() {
        return None;
    }
    let is_const = |v: ValueId| g.producer_of_kind(v, OpKind::Const).is_some();
    let (r, c) = match (is_const(node.operands[0]), is_const(node.operands[1])) {
        (false, true) => (node.operands[0], node.operands[1]),
        (true, false) => (node.operands[1], node.operands[0]),
        _ => return None,
    };
    (per_channel(g.ty(r), shape, axis) && per_channel(g.ty(c), shape, axis)).then_some((m, r, c))
}

/// `t`'s values, one per channel (a single value repeated), borrowed where `t` already holds them
/// in order.
fn channel_values<'t>(t: &'t Tensor, channels: usize, what: &str) -> Result<std::borrow::Cow<'t, [f32]>, String> {
    let a = t.as_f32().ok_or_else(|| format!("the {what} must be f32"))?;
    match (a.len(), a.as_slice()) {
        (1, _) => Ok(vec![a.iter().next().copied().unwrap_or_default(); channels].into()),
        (n, Some(v)) if n == channels => Ok(v.into()),
        (n, None) if n == channels => Ok(a.iter().copied().collect::<Vec<f32>>().into()),
        (n, _) => Err(format!("the {what} has {n} values for {channels} channels")),
    }
}

/// Runs a fused chain: the product of `x` (zero point `zp`), then `act(f32(acc)·s[ch] +
/// bias[ch])` with the add's `attrs`, where `s[ch] = scale[ch]` or, with a factor,
/// `scale[ch] · factor[ch]`; each of `scale`, `factor` and `bias` holds one value or one per
/// channel.
pub(crate) fn run(
    product: &IntegerProduct,
    x: &Tensor,
    zp: Option<&Tensor>,
    scale: &Tensor,
    factor: Option<&Tensor>,
    bias: &Tensor,
    attrs: &Attrs,
) -> Result<Tensor, String> {
    let (acc, shape) = product.products(x, zp)?;
    let channels = product.channels();
    let (mut s, b) = (channel_values(scale, channels, "scale")?, channel_values(bias, channels, "bias")?);
    if let Some(f) = factor {
        for (s, f) in s.to_mut().iter_mut().zip(channel_values(f, channels, "scale factor")?.iter()) {
            *s *= f;
        }
    }
    let run = product.channel_run();
    let mut v = vec![0f32; acc.len()];
    for (out, acc) in v.chunks_mut(run * s.len()).zip(acc.chunks(run * s.len())) {
        if run == 1 {
            // A row of channels: one pass the compiler vectorizes.
            for (((o, &a), &s), &b) in out.iter_mut().zip(acc).zip(s.iter()).zip(b.iter()) {
                *o = a as f32 * s + b;
            }
            continue;
        }
        for (ch, (out, acc)) in out.chunks_mut(run).zip(acc.chunks(run)).enumerate() {
            let (s, b) = (s[ch], b[ch]);
            for (o, &a) in out.iter_mut().zip(acc) {
                *o = a as f32 * s + b;
            }
        }
    }
    let y = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), v).map_err(|e| e.to_string())?;
    Ok(Tensor::F32(qc_ir::eval::fused_activation(y, attrs)))
}
