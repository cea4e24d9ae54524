//! The reference evaluator: the meaning of every op, and the oracle every optimization is checked
//! against. It favours clarity over speed and computes f32 ops in plain f32 arithmetic without
//! fused multiply-add.

mod elementwise;
mod integer;
mod logic;
mod math;
mod nn;
mod quant;
mod shape_ops;

pub use elementwise::{broadcast_shape, exp, fused_activation, hard_sigmoid, hard_swish, sigmoid};
pub use integer::{mul_multiplier, weight_output_axis};
pub use math::{erf, gelu, gelu_tanh, pow, tanh};
pub use nn::{layer_norm_row, product};
pub use quant::{dequantize_value, dynamic_params, quantize_value};

use crate::attr::Attrs;
use crate::graph::{ConstValue, Graph, ValueId};
use crate::ops::OpKind;
use crate::tensor::Tensor;
use crate::types::{Dim, TensorType};
use ndarray::ArrayD;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// An evaluation failure, naming the value whose op failed.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

/// The most bytes one tensor may take when a model runs (4 GiB): a bigger one is refused before
/// anything is allocated.
pub const MAX_TENSOR_BYTES: u64 = 1 << 32;

/// Checks, before anything is allocated, that no value of `g` would take more than
/// [`MAX_TENSOR_BYTES`] with dynamic dims of size `batch`.
pub fn check_sizes(g: &Graph, batch: usize) -> Result<(), String> {
    for v in g.value_ids() {
        let ty = g.ty(v);
        let bytes_per = (crate::cost::storage_bits(ty.elem.storage()) / 8).max(1);
        let n = ty.dims.iter().try_fold(bytes_per, |a, d| a.checked_mul(d.fixed().unwrap_or(batch as u64)));
        if n.is_none_or(|n| n > MAX_TENSOR_BYTES) {
            let shown = n.map_or("more than 2^64".to_string(), |n| n.to_string());
            return Err(format!(
                "{} ({ty}) would take {shown} bytes at batch {batch}, more than the {MAX_TENSOR_BYTES} bytes qc allows one tensor",
                g.display_value(v)
            ));
        }
    }
    Ok(())
}

/// The batch the inputs give: the size of the first dynamic dim of a parameter, else 1.
fn input_batch(g: &Graph, inputs: &[Tensor]) -> usize {
    g.params()
        .iter()
        .zip(inputs)
        .find_map(|(&p, t)| g.ty(p).dims.iter().position(|d| d.fixed().is_none()).and_then(|i| t.shape().get(i).copied()))
        .unwrap_or(1)
}

/// Evaluates a verified graph on `inputs` (one per parameter); returns one tensor per output.
pub fn evaluate(g: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, EvalError> {
    evaluate_observed(g, inputs, |_, _| {})
}

/// Like [`evaluate`], calling `observe` with every value as it is computed (inputs included).
pub fn evaluate_observed(
    g: &Graph,
    inputs: &[Tensor],
    mut observe: impl FnMut(ValueId, &Tensor),
) -> Result<Vec<Tensor>, EvalError> {
    check_inputs(g, inputs)?;
    check_sizes(g, input_batch(g, inputs)).map_err(EvalError)?;
    let order = g.topo_order().map_err(|n| EvalError(format!("the graph has a cycle through {n}")))?;
    // How many more times each value is read, so that dead tensors are dropped early.
    let mut remaining: HashMap<ValueId, usize> = HashMap::new();
    for &id in &order {
        for &o in &g.node(id).operands {
            *remaining.entry(o).or_default() += 1;
        }
    }
    for &o in g.outputs() {
        *remaining.entry(o).or_default() += 1;
    }
    let mut env: HashMap<ValueId, Arc<Tensor>> = HashMap::new();
    for (&p, t) in g.params().iter().zip(inputs) {
        observe(p, t);
        env.insert(p, Arc::new(t.clone()));
    }
    for id in order {
        let node = g.node(id);
        let who = || format!("{} = {}", g.display_value(node.results[0]), node.kind);
        let values: Vec<Arc<Tensor>> = match &node.value {
            Some(ConstValue::Weight(name)) => vec![
                g.weights.get(name).cloned().ok_or_else(|| EvalError(format!("{}: weight \"{name}\" is not loaded", who())))?,
            ],
            Some(ConstValue::Dense(t)) => vec![Arc::new(t.clone())],
            None => {
                let args: Vec<&Tensor> = node.operands.iter().map(|o| env[o].as_ref()).collect();
                let tys: Vec<&TensorType> = node.operands.iter().map(|&o| g.ty(o)).collect();
                let outs: Vec<&TensorType> = node.results.iter().map(|&r| g.ty(r)).collect();
                let ts = eval_op_multi(node.kind, &node.attrs, &args, &tys, &outs)
                    .map_err(|e| EvalError(format!("{}: {e}", who())))?;
                ts.into_iter().map(Arc::new).collect()
            }
        };
        for (&r, value) in node.results.iter().zip(&values) {
            if !value.matches(g.ty(r)) {
                return Err(EvalError(format!(
                    "{}: computed {} of shape {:?}, but the IR declares {}",
                    who(),
                    value.scalar_type(),
                    value.shape(),
                    g.ty(r)
                )));
            }
            observe(r, value);
        }
        for &o in &node.operands {
            let n = remaining.get_mut(&o).expect("counted");
            *n -= 1;
            if *n == 0 {
                env.remove(&o);
            }
        }
        for (&r, value) in node.results.iter().zip(values) {
            env.insert(r, value);
        }
    }
    Ok(g.outputs().iter().map(|o| env[o].as_ref().clone()).collect())
}

fn check_inputs(g: &Graph, inputs: &[Tensor]) -> Result<(), EvalError> {
    if inputs.len() != g.params().len() {
        return Err(EvalError(format!("@{} takes {} inputs, got {}", g.name, g.params().len(), inputs.len())));
    }
    for (&p, t) in g.params().iter().zip(inputs) {
        check_input(&g.display_value(p), g.ty(p), t).map_err(EvalError)?;
    }
    Ok(())
}

/// Checks one model input against its parameter `name` of type `ty`: element type, shape (a
/// dynamic dim accepts any size) and, for f32, that every value is finite.
pub fn check_input(name: &str, ty: &TensorType, t: &Tensor) -> Result<(), String> {
    if !t.matches(ty) {
        return Err(format!("input {name} must be {ty}, got {} of shape {:?}", t.scalar_type(), t.shape()));
    }
    if let Tensor::F32(a) = t
        && !all_finite(a)
        && let Some(i) = a.iter().position(|x| !x.is_finite())
    {
        return Err(format!("input {name} holds {} at flat index {i}", a.iter().nth(i).expect("found")));
    }
    Ok(())
}

/// Whether every value is finite: in blocks without early exit, which the compiler vectorizes.
fn all_finite(a: &ArrayD<f32>) -> bool {
    match a.as_slice().or_else(|| a.as_slice_memory_order()) {
        Some(s) => s.chunks(64).all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite())),
        None => a.iter().all(|x| x.is_finite()),
    }
}

fn f32_arg<'a>(kind: OpKind, t: &'a Tensor, i: usize) -> Result<&'a ArrayD<f32>, String> {
    t.as_f32()
        .ok_or_else(|| format!("operand {i} of {kind} is {}, and the evaluator computes this op on f32 only", t.scalar_type()))
}

/// Computes an op with several results (`outs` are their types).
pub fn eval_op_multi(
    kind: OpKind,
    attrs: &Attrs,
    args: &[&Tensor],
    tys: &[&TensorType],
    outs: &[&TensorType],
) -> Result<Vec<Tensor>, String> {
    match kind {
        OpKind::DynamicQuantize => {
            let (q, s, z) = quant::dynamic_quantize(f32_arg(kind, args[0], 0)?);
            Ok(vec![q, s, z])
        }
        _ => Ok(vec![eval_op(kind, attrs, args, tys, outs[0])?]),
    }
}

/// Computes one op. `tys` are the operand types and `out` the result type (quantization
/// parameters live there).
pub fn eval_op(kind: OpKind, attrs: &Attrs, args: &[&Tensor], tys: &[&TensorType], out: &TensorType) -> Result<Tensor, String> {
    let quantized = tys.iter().any(|t| t.elem.quant().is_some()) || out.elem.quant().is_some();
    if quantized {
        match kind {
            OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul => return integer::kernel(kind, attrs, args, tys, out),
            OpKind::Add if tys.iter().all(|t| t.elem.quant().is_some()) => return integer::add(attrs, args, tys, out),
            OpKind::Mul if tys.iter().all(|t| t.elem.quant().is_some()) => return integer::mul(args, tys, out),
            OpKind::AvgPool | OpKind::GlobalAvgPool | OpKind::ReduceMean => return integer::mean(kind, attrs, args, tys, out),
            OpKind::Concat if tys.iter().any(|t| t.elem != out.elem) => {
                return integer::concat(args, tys, out, attrs.int("axis", 0));
            }
            OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish | OpKind::Clip => {
                return integer::lookup(kind, attrs, args[0], tys[0], out);
            }
            OpKind::Requantize => return integer::requantize(args[0], tys[0], out),
            OpKind::Add
            | OpKind::Sub
            | OpKind::Mul
            | OpKind::Div
            | OpKind::ConvTranspose2d
            | OpKind::BatchNorm
            | OpKind::Resize
            | OpKind::Softmax => {
                return Err(format!("{kind} has no integer form; dequantize its operands first"));
            }
            _ => {}
        }
    }
    let f = |i: usize| f32_arg(kind, args[i], i);
    let out_dims = || -> Vec<usize> { out.dims.iter().map(|d| d.fixed().unwrap_or(0) as usize).collect() };
    Ok(match kind {
        OpKind::Const => return Err("const is evaluated from its value".into()),
        OpKind::Conv2d => Tensor::F32(elementwise::fused_activation(
            nn::conv2d(f(0)?, f(1)?, args.get(2).map(|_| f(2)).transpose()?, attrs)?,
            attrs,
        )),
        OpKind::ConvTranspose2d => {
            Tensor::F32(nn::conv_transpose2d(f(0)?, f(1)?, args.get(2).map(|_| f(2)).transpose()?, attrs)?)
        }
        OpKind::MatMul => Tensor::F32(elementwise::fused_activation(nn::matmul(f(0)?, f(1)?)?, attrs)),
        OpKind::Gemm => Tensor::F32(elementwise::fused_activation(
            nn::gemm(f(0)?, f(1)?, args.get(2).map(|_| f(2)).transpose()?, attrs)?,
            attrs,
        )),
        OpKind::Add | OpKind::Sub | OpKind::Mul | OpKind::Div => match elementwise::binary(kind, args[0], args[1])? {
            Tensor::F32(y) => Tensor::F32(elementwise::fused_activation(y, attrs)),
            other => other,
        },
        OpKind::Relu if quantized => {
            let zp = tys[0].elem.quant().map(|q| q.zero_points[0]).unwrap_or(0);
            if tys[0].elem.quant().is_some_and(|q| q.axis.is_some()) {
                return Err("relu on per-axis quantized values is not supported".into());
            }
            quant::relu_q(args[0], zp)
        }
        OpKind::Relu | OpKind::Clip | OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish => {
            Tensor::F32(elementwise::unary(kind, f(0)?, attrs))
        }
        OpKind::BatchNorm => Tensor::F32(nn::batch_norm(f(0)?, f(1)?, f(2)?, f(3)?, f(4)?, attrs.float("epsilon", 1e-5))),
        OpKind::MaxPool => nn::max_pool(args[0], attrs)?,
        OpKind::AvgPool => Tensor::F32(nn::avg_pool(f(0)?, attrs)?),
        OpKind::GlobalAvgPool => {
            let rank = f(0)?.ndim();
            Tensor::F32(shape_ops::reduce_mean(f(0)?, &(2..rank).collect::<Vec<_>>(), true))
        }
        OpKind::ReduceMean => {
            let rank = f(0)?.ndim();
            let axes = match attrs.ints("axes") {
                Some(a) if !a.is_empty() => crate::infer::normalize_axes(a, rank)?,
                _ => (0..rank).collect(),
            };
            Tensor::F32(shape_ops::reduce_mean(f(0)?, &axes, attrs.bool("keepdims", true)))
        }
        OpKind::Flatten => {
            let s = args[0].shape();
            let axis = attrs.int("axis", 1);
            let axis = if axis < 0 { (axis + s.len() as i64) as usize } else { axis as usize };
            let a: usize = s[..axis].iter().product();
            let b: usize = s[axis..].iter().product();
            shape_ops::reshape(args[0], &[a, b])?
        }
        OpKind::Reshape => {
            let spec = match (attrs.ints("shape"), args.get(1)) {
                (Some(s), _) => s.to_vec(),
                (None, Some(t)) => t.to_i64_vec().ok_or("the shape operand must be integers")?,
                (None, None) => return Err("reshape has no shape".into()),
            };
            let dims = shape_ops::resolve_reshape(args[0].shape(), &spec, attrs.bool("allowzero", false))?;
            shape_ops::reshape(args[0], &dims)?
        }
        OpKind::Transpose => {
            let rank = args[0].shape().len();
            let perm = match attrs.ints("perm") {
                Some(p) => crate::infer::normalize_axes(p, rank)?,
                None => (0..rank).rev().collect(),
            };
            shape_ops::transpose(args[0], &perm)
        }
        OpKind::Concat => shape_ops::concat(args, attrs.int("axis", 0))?,
        OpKind::Slice => shape_ops::slice(args[0], attrs)?,
        OpKind::Pad => shape_ops::pad(args[0], attrs, tys[0])?,
        OpKind::Resize => Tensor::F32(nn::resize(f(0)?, attrs, &out_dims())?),
        OpKind::Softmax => Tensor::F32(nn::softmax(f(0)?, attrs.int("axis", -1))?),
        OpKind::Quantize => quant::quantize(f(0)?, out)?,
        OpKind::Requantize => return Err("requantize needs a quantized operand".into()),
        OpKind::Stats => args[0].clone(),
        OpKind::Dequantize => Tensor::F32(quant::dequantize(args[0], tys[0])?),
        OpKind::Shape => Tensor::from_i64s(args[0].shape().iter().map(|&d| d as i64).collect()),
        OpKind::Gather => shape_ops::gather(args[0], args[1], attrs.int("axis", 0))?,
        OpKind::Cast => args[0].cast(out.elem.storage()),
        OpKind::DynamicQuantize => return Err("dynamic_quantize has three results".into()),
        OpKind::MatMulInteger => quant::matmul_integer(args)?,
        OpKind::ConvInteger => quant::conv_integer(args, attrs)?,
        OpKind::LayerNorm => Tensor::F32(nn::layer_norm(
            f(0)?,
            f(1)?,
            args.get(2).map(|_| f(2)).transpose()?,
            attrs.int("axis", -1),
            attrs.float("epsilon", 1e-5),
        )?),
        OpKind::Gelu => Tensor::F32(match attrs.str("approximate") {
            Some("tanh") => f(0)?.mapv(math::gelu_tanh),
            _ => f(0)?.mapv(math::gelu),
        }),
        OpKind::Erf => Tensor::F32(f(0)?.mapv(math::erf)),
        OpKind::Tanh => Tensor::F32(f(0)?.mapv(math::tanh)),
        OpKind::Sqrt => Tensor::F32(f(0)?.mapv(f32::sqrt)),
        OpKind::Exp => Tensor::F32(f(0)?.mapv(elementwise::exp)),
        OpKind::Neg => match args[0] {
            Tensor::I64(a) => Tensor::I64(a.mapv(i64::wrapping_neg)),
            Tensor::I32(a) => Tensor::I32(a.mapv(i32::wrapping_neg)),
            _ => Tensor::F32(f(0)?.mapv(|v| -v)),
        },
        OpKind::Pow => Tensor::F32(elementwise::zip_broadcast(f(0)?, f(1)?, math::pow)?),
        OpKind::Where => logic::where_(args[0], args[1], args[2])?,
        OpKind::Equal | OpKind::Less | OpKind::LessOrEqual | OpKind::Greater | OpKind::GreaterOrEqual => {
            logic::comparison(kind, args[0], args[1])?
        }
        OpKind::And | OpKind::Or | OpKind::Not => logic::logical(kind, args)?,
        OpKind::Expand => logic::expand(args[0], attrs.ints("shape").unwrap_or(&[]))?,
        OpKind::ReduceSum | OpKind::ReduceMax | OpKind::ReduceMin => {
            let rank = f(0)?.ndim();
            let axes = match attrs.ints("axes") {
                Some(a) if !a.is_empty() => crate::infer::normalize_axes(a, rank)?,
                _ => (0..rank).collect(),
            };
            Tensor::F32(shape_ops::reduce(kind, f(0)?, &axes, attrs.bool("keepdims", true)))
        }
        OpKind::Squeeze | OpKind::Unsqueeze => {
            let dims: Vec<usize> = out
                .dims
                .iter()
                .zip(shape_ops::squeeze_dims(kind, args[0].shape(), attrs)?)
                .map(|(d, n)| match d {
                    Dim::Fixed(f) => *f as usize,
                    Dim::Dynamic => n,
                })
                .collect();
            shape_ops::reshape(args[0], &dims)?
        }
    })
}
