//! Lowering: each op of a verified graph to the kernel that runs it ([`Lowered`]), or to the
//! evaluator's implementation. Which kernel an op gets is instruction selection: the fused
//! dynamic-quantization tails (`dequant_chain.rs`) are chosen here too, not by a pass.

use crate::dequant_chain;
use crate::error::{CodegenError, err};
use crate::kernel::WindowKernel;
use crate::kernels::add::AddQ;
use crate::kernels::conv::Conv;
use crate::kernels::depthwise::Depthwise;
use crate::kernels::f32::{self as f32_kernels, F32Kernel};
use crate::kernels::gemm::{GemmKernel, GemmSpec};
use crate::kernels::integer::IntegerProduct;
use crate::kernels::lut::Lut;
use crate::kernels::mul::MulQ;
use crate::kernels::pool::{GlobalMean, MaxPool};
use crate::kernels::quant::{DequantizeKernel, Q8, QuantizeKernel};
use crate::target::Isa;
use qc_ir::{Attrs, ConstValue, Dim, Graph, NodeId, OpKind, Tensor, TensorType, ValueId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A fused integer product waiting for the add of its chain (see `dequant_chain`).
struct PendingChain {
    product: IntegerProduct,
    x: ValueId,
    zp: Option<ValueId>,
    scale: ValueId,
    /// A constant the scale is multiplied by in the step.
    factor: Option<ValueId>,
    bias: ValueId,
    attrs: Attrs,
    y: ValueId,
}

/// An op as lowered from the graph, on graph values.
pub(crate) enum Lowered {
    /// An integer product with its f32 tail (see `dequant_chain`).
    Dequantized {
        product: IntegerProduct,
        x: ValueId,
        zp: Option<ValueId>,
        scale: ValueId,
        factor: Option<Arc<Tensor>>,
        bias: Arc<Tensor>,
        /// The add's attributes (its fused activation).
        attrs: Attrs,
        y: ValueId,
    },
    /// `dynamic_quantize` on tensors: the data, scale and zero point.
    DynamicQuantize {
        x: ValueId,
        results: [ValueId; 3],
    },
    /// `matmul_integer` / `conv_integer` on tensors: input `x`, its zero point `zp`.
    Integer {
        product: IntegerProduct,
        x: ValueId,
        zp: Option<ValueId>,
        y: ValueId,
    },
    Quantize {
        q: Q8,
        kernel: Option<QuantizeKernel>,
        x: ValueId,
        y: ValueId,
    },
    Dequantize {
        q: Q8,
        kernel: Option<DequantizeKernel>,
        x: ValueId,
        y: ValueId,
    },
    Window {
        kernel: Box<dyn WindowKernel>,
        x: ValueId,
        y: ValueId,
    },
    Mean {
        kernel: Box<GlobalMean>,
        x: ValueId,
        y: ValueId,
    },
    Add {
        kernel: AddQ,
        a: ValueId,
        b: ValueId,
        y: ValueId,
    },
    Lut {
        kernel: Lut,
        x: ValueId,
        y: ValueId,
    },
    Mul {
        kernel: MulQ,
        a: ValueId,
        b: ValueId,
        y: ValueId,
    },
    /// A gemm, or a matmul whose input has dims between the batch and its rows' (a
    /// transformer's tokens): `rows` rows per image.
    Gemm {
        kernel: GemmKernel,
        a: ValueId,
        y: ValueId,
        rows: usize,
    },
    /// An f32 op on tensors (all its operands, constants included).
    F32 {
        kernel: Box<dyn F32Kernel>,
        args: Vec<ValueId>,
        y: ValueId,
    },
    /// Same bytes, other dims (NCHW order).
    Reshape {
        x: ValueId,
        y: ValueId,
    },
    Eval {
        kind: OpKind,
        attrs: Attrs,
        args: Vec<ValueId>,
        results: Vec<ValueId>,
    },
}

/// The mul that is the only use of activation `id`'s result and multiplies it by the
/// activation's own input (`x · sigmoid(x)`), and whether the activation is its first operand;
/// `None` when there is none or its result is not an 8-bit activation.
fn times_input(g: &Graph, id: NodeId, batched: &dyn Fn(&TensorType) -> bool) -> Option<(NodeId, bool)> {
    let node = g.node(id);
    let (x, f) = (*node.operands.first()?, node.results[0]);
    let [(mul, slot)] = g.uses(f)[..] else { return None };
    let m = g.node(mul);
    let ok = m.kind == OpKind::Mul
        && g.use_count(f) == 1
        && m.operands.len() == 2
        && m.results.len() == 1
        && m.operands[1 - slot] == x
        && batched(g.ty(m.results[0]))
        && g.ty(m.results[0]).dims == g.ty(x).dims;
    ok.then_some((mul, slot == 0))
}

/// The dims after the leading (batch) dim, when the leading dim is the batch (`batch_fixed`:
/// the batch is that fixed size; else it is dynamic) and the others are fixed.
pub(crate) fn per_image(ty: &TensorType, batch_fixed: Option<usize>) -> Option<Vec<usize>> {
    let lead = ty.dims.first()?;
    match (lead, batch_fixed) {
        (Dim::Dynamic, None) => {}
        (Dim::Fixed(n), Some(b)) if *n as usize == b => {}
        _ => return None,
    }
    ty.dims[1..].iter().map(|d| d.fixed().map(|n| n as usize)).collect()
}

/// Lowers every op of `g` to a kernel, or to the evaluator's implementation: the ops in
/// canonical order with their labels, the constants, and how many ops run JIT code.
#[allow(clippy::type_complexity)]
pub(crate) fn lower(
    g: &Graph,
    fixed_batch: Option<usize>,
    isa: Isa,
) -> Result<(Vec<((String, String), Lowered)>, Vec<(ValueId, Arc<Tensor>)>, usize), CodegenError> {
    let order = g.canonical_order().map_err(|n| err(format!("the graph has a cycle through {n}")))?;
    let mut consts = Vec::new();
    let mut values: HashMap<ValueId, Arc<Tensor>> = HashMap::new();
    let mut lowered = Vec::new();
    let mut kernels = 0;
    // Integer products whose f32 tail is fused into them (see `dequant_chain`): the cast and
    // multiply they absorb, and the fused step, waiting for the add where it runs.
    let mut absorbed: HashSet<NodeId> = HashSet::new();
    let mut pending: HashMap<NodeId, PendingChain> = HashMap::new();
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    for id in order {
        let node = g.node(id);
        if absorbed.contains(&id) {
            continue;
        }
        let who = || format!("{} = {}", g.display_value(node.results[0]), node.kind);
        if let Some(value) = &node.value {
            let t = match value {
                ConstValue::Dense(t) => Arc::new(t.clone()),
                ConstValue::Weight(w) => {
                    g.weights.get(w).cloned().ok_or_else(|| err(format!("{}: weight \"{w}\" is not loaded", who())))?
                }
            };
            consts.push((node.results[0], t.clone()));
            values.insert(node.results[0], t);
            continue;
        }
        let tys: Vec<&TensorType> = node.operands.iter().map(|&o| g.ty(o)).collect();
        let (y, out_ty) = (node.results[0], g.ty(node.results[0]));
        let integer = tys.iter().all(|t| t.elem.quant().is_some()) && out_ty.elem.quant().is_some();
        // Kernels write activations: batch-leading, otherwise fixed dims, 8-bit.
        let batched = |t: &TensorType| per_image(t, fixed_batch).is_some() && Q8::of(t).is_some();
        let activation_out = node.results.len() == 1 && batched(out_ty);
        let weight = node.operands.get(1).and_then(|w| values.get(w).cloned());
        let bias = node.operands.get(2).and_then(|b| values.get(b).cloned());
        let x = node.operands.first().copied();
        // A fused step runs at its add, whose bias constant has been seen by then.
        let fused = match pending.remove(&id) {
            Some(PendingChain { product, x, zp, scale, factor, bias, attrs, y }) => {
                let constant = |v: ValueId, what: &str| {
                    values.get(&v).cloned().ok_or_else(|| err(format!("{}: the {what} is not a constant", who())))
                };
                let bias = constant(bias, "bias")?;
                let factor = factor.map(|f| constant(f, "scale factor")).transpose()?;
                Some(Lowered::Dequantized { product, x, zp, scale, factor, bias, attrs, y })
            }
            None => None,
        };
        let kernel = match (node.kind, integer && activation_out, &weight, x) {
            _ if fused.is_some() => fused,
            (OpKind::Gemm | OpKind::MatMul, true, Some(w), Some(x))
                if (tys[0].rank() == 2 || (node.kind == OpKind::MatMul && tys[0].rank() > 2))
                    && w.shape().len() == 2
                    && per_image(tys[0], fixed_batch).is_some() =>
            {
                // Rows per image: the dims between the batch and the last.
                let per = per_image(tys[0], fixed_batch).expect("checked");
                let rows = per[..per.len().saturating_sub(1)].iter().product::<usize>();
                let spec = GemmSpec::from_node(node.kind, &node.attrs, &tys, w, bias.as_deref(), out_ty)
                    .map_err(|e| err(format!("{}: {e}", who())))?;
                match spec.accumulators_fit() {
                    true => Some(Lowered::Gemm {
                        kernel: GemmKernel::compile(&spec, isa).map_err(|e| err(format!("{}: {e}", who())))?,
                        a: x,
                        y,
                        rows,
                    }),
                    false => None,
                }
            }
            (OpKind::Conv2d, true, Some(w), Some(x)) if node.attrs.int("groups", 1) == 1 => {
                let kernel =
                    Conv::new(&node.attrs, &tys, w, bias.as_deref(), out_ty, isa).map_err(|e| err(format!("{}: {e}", who())))?;
                kernel.map(|kernel| Lowered::Window { kernel: Box::new(kernel), x, y })
            }
            (OpKind::Conv2d, true, Some(w), Some(x)) => Depthwise::new(&node.attrs, &tys, w, bias.as_deref(), out_ty, isa)
                .map(|kernel| Lowered::Window { kernel: Box::new(kernel), x, y }),
            (OpKind::MaxPool, true, _, Some(x)) => {
                MaxPool::new(&node.attrs, tys[0], out_ty, isa).map(|kernel| Lowered::Window { kernel: Box::new(kernel), x, y })
            }
            (OpKind::GlobalAvgPool | OpKind::ReduceMean, true, _, Some(x)) => {
                GlobalMean::new(node.kind, &node.attrs, tys[0], out_ty, isa).map(|kernel| Lowered::Mean {
                    kernel: Box::new(kernel),
                    x,
                    y,
                })
            }
            (OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish | OpKind::Clip, true, _, Some(x))
                if node.operands.len() == 1 && batched(tys[0]) =>
            {
                // With the mul of `x` by it when that can be one table; else the activation alone.
                let fused = times_input(g, id, &batched).and_then(|(mul, f_first)| {
                    let m = g.node(mul);
                    let kernel =
                        Lut::times_input(node.kind, &node.attrs, tys[0], out_ty, &m.attrs, f_first, g.ty(m.results[0]), isa)?;
                    absorbed.insert(mul);
                    Some(Lowered::Lut { kernel, x, y: m.results[0] })
                });
                fused
                    .or_else(|| Lut::new(node.kind, &node.attrs, tys[0], out_ty, isa).map(|kernel| Lowered::Lut { kernel, x, y }))
            }
            (OpKind::Add, true, _, Some(a)) => {
                AddQ::new(&node.attrs, &tys, out_ty, isa).map(|kernel| Lowered::Add { kernel, a, b: node.operands[1], y })
            }
            (OpKind::Mul, true, _, Some(a)) if batched(tys[0]) && batched(tys[1]) => {
                MulQ::new(&node.attrs, &tys, out_ty).map(|kernel| Lowered::Mul { kernel, a, b: node.operands[1], y })
            }
            (OpKind::Reshape | OpKind::Flatten | OpKind::Squeeze | OpKind::Unsqueeze, true, _, Some(x))
                if node.operands.len() == 1 && batched(tys[0]) && Q8::of(tys[0]) == Q8::of(out_ty) =>
            {
                Some(Lowered::Reshape { x, y })
            }
            (OpKind::Quantize, _, _, Some(x)) if tys[0].elem.is_f32() && activation_out => Q8::of(out_ty).map(|q| {
                Lowered::Quantize { q, kernel: isa.jit_kernels().then(|| QuantizeKernel::compile(q, isa).ok()).flatten(), x, y }
            }),
            (OpKind::Dequantize, _, _, Some(x)) if out_ty.elem.is_f32() && batched(tys[0]) => {
                Q8::of(tys[0]).map(|q| Lowered::Dequantize {
                    q,
                    kernel: isa.jit_kernels().then(|| DequantizeKernel::compile(q, isa).ok()).flatten(),
                    x,
                    y,
                })
            }
            (OpKind::DynamicQuantize, _, _, Some(x)) if tys[0].elem.is_f32() && node.results.len() == 3 => {
                Some(Lowered::DynamicQuantize { x, results: [node.results[0], node.results[1], node.results[2]] })
            }
            (OpKind::MatMulInteger | OpKind::ConvInteger, _, Some(w), Some(x)) => {
                // The weight's zero point must be a constant too (or absent).
                let w_zp = node.operands.get(3).map(|z| values.get(z).cloned());
                match w_zp {
                    Some(None) => None,
                    w_zp => {
                        let w_zp = w_zp.flatten();
                        let product = if node.kind == OpKind::MatMulInteger {
                            IntegerProduct::matmul(&tys, w, w_zp.as_deref(), isa)
                        } else {
                            IntegerProduct::conv(&node.attrs, &tys, w, w_zp.as_deref(), out_ty, isa)
                        };
                        let product = product.map_err(|e| err(format!("{}: {e}", who())))?;
                        let zp = node.operands.get(2).copied();
                        match (product, dequant_chain::find(g, id)) {
                            (Some(product), Some(chain)) => {
                                // Runs at the chain's add; the bias is a constant seen by then.
                                absorbed.extend(chain.inner);
                                // The scale's multiply joins the step unless it ran already.
                                let (scale, factor) = match chain.factor {
                                    Some((m, c)) if position.get(&m) > position.get(&id) => {
                                        absorbed.insert(m);
                                        (chain.scale, Some(c))
                                    }
                                    Some((m, _)) => (g.node(m).results[0], None),
                                    None => (chain.scale, None),
                                };
                                let add = g.node(chain.add);
                                let (attrs, y) = (add.attrs.clone(), add.results[0]);
                                pending.insert(
                                    chain.add,
                                    PendingChain { product, x, zp, scale, factor, bias: chain.bias, attrs, y },
                                );
                                continue;
                            }
                            (product, _) => product.map(|product| Lowered::Integer { product, x, zp, y }),
                        }
                    }
                }
            }
            _ if node.results.len() == 1 => {
                let consts: Vec<Option<&Tensor>> = node.operands.iter().map(|o| values.get(o).map(|t| t.as_ref())).collect();
                f32_kernels::select(node.kind, &node.attrs, &tys, &consts, out_ty, isa).map(|kernel| Lowered::F32 {
                    kernel,
                    args: node.operands.clone(),
                    y,
                })
            }
            _ => None,
        };
        let loc = if node.loc.name.is_empty() { String::new() } else { format!(" loc(\"{}\")", node.loc.name) };
        let label = format!("{} = {}{loc}", g.display_value(y), node.kind);
        let op = kernel.unwrap_or_else(|| Lowered::Eval {
            kind: node.kind,
            attrs: node.attrs.clone(),
            args: node.operands.clone(),
            results: node.results.clone(),
        });
        kernels += usize::from(match &op {
            Lowered::Gemm { .. } => true,
            Lowered::Window { kernel, .. } => kernel.jit(),
            Lowered::Quantize { kernel, .. } => kernel.is_some(),
            Lowered::Dequantize { kernel, .. } => kernel.is_some(),
            Lowered::Mean { kernel, .. } => kernel.jit(),
            Lowered::Integer { .. } | Lowered::Dequantized { .. } | Lowered::F32 { .. } => true,
            _ => false,
        });
        lowered.push(((label, node.loc.name.clone()), op));
    }
    Ok((lowered, consts, kernels))
}
