//! `CompiledModel`: a verified graph compiled for execution. Integer gemm, matmul and
//! convolution (groups = 1) run as JIT-compiled GEMM kernels specialized to their layer
//! ([`crate::conv`]); integer depthwise convolution, max pooling, global mean and same-shape add
//! run as Rust kernels on bytes ([`crate::depthwise`], [`crate::pool`], [`crate::add`]); 4-D
//! activations stay channels-last between those kernels ([`crate::layout`]); every other op runs
//! the reference evaluator's implementation. Results equal the evaluator's bit for bit (tested on
//! the corpus and by property tests per kernel).
//!
//! `run` takes `&self` and keeps its working values on its own stack frame, with convolution
//! scratch owned by the calling thread, so one model can run on many threads at once.
//!
//! Bounds: each kernel checks the length of what it reads against its compiled shape before it
//! touches it (the plan's only unsafe code is the JIT call, whose buffers `GemmKernel::run_rows`
//! checks); a wrong input is an error, never an out-of-bounds access.

use crate::add::AddQ;
use crate::conv::Conv;
use crate::depthwise::Depthwise;
use crate::gemm::{GemmKernel, GemmSpec, bytes_tensor, tensor_bytes};
use crate::layout::{Layout, convert};
use crate::pool::{GlobalMean, MaxPool};
use qc_ir::eval::{check_input, dequantize_value, eval_op_multi, quantize_value};
use qc_ir::{Attrs, ConstValue, Dim, ElemType, Graph, OpKind, Tensor, TensorType, ValueId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Why a model could not be compiled or run.
#[derive(Clone, Debug, PartialEq)]
pub struct CodegenError(pub String);

impl fmt::Display for CodegenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodegenError {}

type Slot = usize;

/// Per-tensor 8-bit quantization parameters for quantize and dequantize.
#[derive(Clone, Copy)]
struct Q8 {
    scale: f32,
    zp: i32,
    signed: bool,
}

impl Q8 {
    fn of(t: &TensorType) -> Option<Q8> {
        let q = t.elem.quant()?;
        if q.axis.is_some() || !matches!(q.storage, qc_ir::ScalarType::I8 | qc_ir::ScalarType::U8) {
            return None;
        }
        Some(Q8 { scale: q.scales[0], zp: q.zero_points[0], signed: q.storage == qc_ir::ScalarType::I8 })
    }

    fn value(self, b: u8) -> i32 {
        if self.signed { b as i8 as i32 } else { b as i32 }
    }
}

enum Step {
    Quantize {
        q: Q8,
        x: Slot,
        out: Slot,
    },
    Dequantize {
        q: Q8,
        x: Slot,
        out: Slot,
    },
    /// A convolution, depthwise convolution or pooling: NHWC in, NHWC out.
    Window {
        kernel: Box<dyn WindowKernel>,
        x: Slot,
        out: Slot,
    },
    /// `dims`: the result's dims after the batch.
    Mean {
        kernel: Box<GlobalMean>,
        dims: Vec<usize>,
        x: Slot,
        out: Slot,
    },
    Reshape {
        dims: Vec<Dim>,
        x: Slot,
        out: Slot,
    },
    Add {
        kernel: AddQ,
        a: Slot,
        b: Slot,
        out: Slot,
    },
    Gemm {
        kernel: GemmKernel,
        a: Slot,
        out: Slot,
    },
    Eval {
        kind: OpKind,
        attrs: Attrs,
        args: Vec<Slot>,
        arg_types: Vec<TensorType>,
        results: Vec<Slot>,
        result_types: Vec<TensorType>,
    },
}

/// A kernel over a sliding window of NHWC images (see [`crate::window`]).
pub(crate) trait WindowKernel: Send + Sync {
    /// Runs `batch` NHWC images; returns the NHWC output (length checked inside).
    fn run(&self, x: &[u8], batch: usize) -> Result<Vec<u8>, String>;
    /// The output's logical `[C, oh, ow]`.
    fn out_dims(&self) -> [usize; 3];
    /// Integer operations (2 · multiply-adds) for `batch` images; 0 for pooling.
    fn ops(&self, batch: usize) -> u64;
    /// Whether JIT-compiled code does the arithmetic.
    fn jit(&self) -> bool;
}

impl Step {
    fn jit(&self) -> bool {
        match self {
            Step::Gemm { .. } => true,
            Step::Window { kernel, .. } => kernel.jit(),
            _ => false,
        }
    }
}

/// A model compiled for execution.
pub struct CompiledModel {
    name: String,
    /// Each step with a label for profiles (`%value = op loc("...")`) and its location name.
    steps: Vec<((String, String), Step)>,
    consts: Vec<(Slot, Arc<Tensor>)>,
    slots: usize,
    inputs: Vec<(Slot, TensorType, String)>,
    outputs: Vec<(Slot, ElemType)>,
    kernels: usize,
    /// The largest value: (its name, bytes with every dynamic dim 1, how many dims are dynamic),
    /// checked against the batch before a run allocates anything.
    largest: Vec<(String, u64, u32)>,
}

fn err(msg: impl Into<String>) -> CodegenError {
    CodegenError(msg.into())
}

impl CompiledModel {
    /// Compiles a verified graph whose weights are loaded.
    pub fn compile(g: &Graph) -> Result<CompiledModel, CodegenError> {
        qc_ir::eval::check_sizes(g, 1).map_err(err)?;
        let largest = g
            .value_ids()
            .map(|v| {
                let ty = g.ty(v);
                let per = (qc_ir::cost::storage_bits(ty.elem.storage()) / 8).max(1);
                let fixed = ty.dims.iter().filter_map(|d| d.fixed()).fold(per, |a, d| a.saturating_mul(d));
                (g.display_value(v), fixed, ty.dims.iter().filter(|d| d.fixed().is_none()).count() as u32)
            })
            .collect();
        let order = g.canonical_order().map_err(|n| err(format!("the graph has a cycle through {n}")))?;
        let mut slot_of: HashMap<ValueId, Slot> = HashMap::new();
        let mut next = 0;
        let mut slot = |v: ValueId| -> Slot {
            *slot_of.entry(v).or_insert_with(|| {
                next += 1;
                next - 1
            })
        };
        let inputs = g.params().iter().map(|&p| (slot(p), g.ty(p).clone(), g.display_value(p))).collect();
        let mut consts = Vec::new();
        let mut values: HashMap<ValueId, Arc<Tensor>> = HashMap::new();
        let mut steps = Vec::new();
        let mut kernels = 0;
        for id in order {
            let node = g.node(id);
            let who = || format!("{} = {}", g.display_value(node.results[0]), node.kind);
            if let Some(value) = &node.value {
                let t = match value {
                    ConstValue::Dense(t) => Arc::new(t.clone()),
                    ConstValue::Weight(w) => {
                        g.weights.get(w).cloned().ok_or_else(|| err(format!("{}: weight \"{w}\" is not loaded", who())))?
                    }
                };
                let r = node.results[0];
                consts.push((slot(r), t.clone()));
                values.insert(r, t);
                continue;
            }
            let tys: Vec<&TensorType> = node.operands.iter().map(|&o| g.ty(o)).collect();
            let out_ty = g.ty(node.results[0]);
            let integer = tys.iter().all(|t| t.elem.quant().is_some()) && out_ty.elem.quant().is_some();
            let weight = node.operands.get(1).and_then(|w| values.get(w).cloned());
            let bias = node.operands.get(2).and_then(|b| values.get(b).cloned());
            let kernel_step = match (node.kind, integer, &weight) {
                (OpKind::Gemm | OpKind::MatMul, true, Some(w)) if tys[0].rank() == 2 && w.shape().len() == 2 => {
                    let spec = GemmSpec::from_node(node.kind, &node.attrs, &tys, w, bias.as_deref(), out_ty)
                        .map_err(|e| err(format!("{}: {e}", who())))?;
                    let kernel = GemmKernel::compile(&spec).map_err(|e| err(format!("{}: {e}", who())))?;
                    Some(Step::Gemm { kernel, a: slot(node.operands[0]), out: slot(node.results[0]) })
                }
                (OpKind::Conv2d, true, Some(w)) if node.attrs.int("groups", 1) == 1 => {
                    let kernel =
                        Conv::new(&node.attrs, &tys, w, bias.as_deref(), out_ty).map_err(|e| err(format!("{}: {e}", who())))?;
                    Some(Step::Window { kernel: Box::new(kernel), x: slot(node.operands[0]), out: slot(node.results[0]) })
                }
                (OpKind::Quantize, _, _) if tys[0].elem.is_f32() => {
                    Q8::of(out_ty).map(|q| Step::Quantize { q, x: slot(node.operands[0]), out: slot(node.results[0]) })
                }
                (OpKind::Dequantize, _, _) if out_ty.elem.is_f32() => {
                    Q8::of(tys[0]).map(|q| Step::Dequantize { q, x: slot(node.operands[0]), out: slot(node.results[0]) })
                }
                (OpKind::MaxPool, true, _) => MaxPool::new(&node.attrs, tys[0], out_ty).map(|kernel| Step::Window {
                    kernel: Box::new(kernel),
                    x: slot(node.operands[0]),
                    out: slot(node.results[0]),
                }),
                (OpKind::GlobalAvgPool | OpKind::ReduceMean, true, _) => {
                    let dims: Option<Vec<usize>> = out_ty.dims.iter().skip(1).map(|d| d.fixed().map(|n| n as usize)).collect();
                    GlobalMean::new(node.kind, &node.attrs, tys[0], out_ty).zip(dims).map(|(kernel, dims)| Step::Mean {
                        kernel: Box::new(kernel),
                        dims,
                        x: slot(node.operands[0]),
                        out: slot(node.results[0]),
                    })
                }
                (OpKind::Reshape | OpKind::Flatten | OpKind::Squeeze | OpKind::Unsqueeze, true, _)
                    if node.operands.len() == 1
                        && Q8::of(tys[0]).is_some()
                        && out_ty.dims.iter().filter(|d| **d == Dim::Dynamic).count() <= 1 =>
                {
                    Some(Step::Reshape { dims: out_ty.dims.clone(), x: slot(node.operands[0]), out: slot(node.results[0]) })
                }
                (OpKind::Conv2d, true, Some(w)) if node.attrs.int("groups", 1) > 1 => {
                    Depthwise::new(&node.attrs, &tys, w, bias.as_deref(), out_ty).map(|kernel| Step::Window {
                        kernel: Box::new(kernel),
                        x: slot(node.operands[0]),
                        out: slot(node.results[0]),
                    })
                }
                (OpKind::Add, true, _) => AddQ::new(&node.attrs, &tys, out_ty).map(|kernel| Step::Add {
                    kernel,
                    a: slot(node.operands[0]),
                    b: slot(node.operands[1]),
                    out: slot(node.results[0]),
                }),
                _ => None,
            };
            let loc = if node.loc.name.is_empty() { String::new() } else { format!(" loc(\"{}\")", node.loc.name) };
            let label = format!("{} = {}{loc}", g.display_value(node.results[0]), node.kind);
            let step = match kernel_step {
                Some(s) => {
                    kernels += usize::from(s.jit());
                    s
                }
                None => Step::Eval {
                    kind: node.kind,
                    attrs: node.attrs.clone(),
                    args: node.operands.iter().map(|&o| slot(o)).collect(),
                    arg_types: tys.iter().map(|&t| t.clone()).collect(),
                    results: node.results.iter().map(|&r| slot(r)).collect(),
                    result_types: node.results.iter().map(|&r| g.ty(r).clone()).collect(),
                },
            };
            steps.push(((label, node.loc.name.clone()), step));
        }
        let outputs = g.outputs().iter().map(|&o| (slot(o), g.ty(o).elem.clone())).collect();
        Ok(CompiledModel { name: g.name.clone(), steps, consts, slots: next, inputs, outputs, kernels, largest })
    }

    /// The dims of the first input (0 for a dynamic dim).
    pub fn input_dims(&self) -> Vec<usize> {
        self.inputs.first().map_or(Vec::new(), |(_, t, _)| t.dims.iter().map(|d| d.fixed().unwrap_or(0) as usize).collect())
    }

    /// How many ops run as JIT-compiled kernels.
    pub fn kernel_count(&self) -> usize {
        self.kernels
    }

    /// The ops that run on the evaluator's implementation rather than a kernel, as
    /// `%value = op loc("...")`.
    pub fn fallback_ops(&self) -> Vec<String> {
        self.steps.iter().filter(|(_, s)| matches!(s, Step::Eval { .. })).map(|((label, _), _)| label.clone()).collect()
    }

    /// Runs the model. Inputs are checked against the compiled types (a dynamic dim accepts any
    /// size); a wrong input is an error, never undefined behaviour.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, CodegenError> {
        let mut slots = self.load(inputs)?;
        for (_, step) in &self.steps {
            exec(step, &mut slots)?;
        }
        self.outputs.iter().map(|&(s, ref elem)| tensor(&slots, s, elem).map(|t| t.as_ref().clone())).collect()
    }

    /// Runs the model `runs` times and returns each step's median time and the integer
    /// operations (2 · multiply-adds) its kernel did, for `qc bench`.
    pub fn profile(&self, inputs: &[Tensor], runs: usize) -> Result<Vec<StepProfile>, CodegenError> {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); self.steps.len()];
        let mut ops = vec![0u64; self.steps.len()];
        for _ in 0..runs.max(1) {
            let mut slots = self.load(inputs)?;
            for (i, (_, step)) in self.steps.iter().enumerate() {
                let t = std::time::Instant::now();
                ops[i] = exec(step, &mut slots)?;
                times[i].push(t.elapsed().as_secs_f64());
            }
        }
        Ok(self
            .steps
            .iter()
            .zip(times)
            .zip(ops)
            .map(|((((label, loc), step), mut t), ops)| {
                t.sort_by(f64::total_cmp);
                StepProfile { label: label.clone(), loc: loc.clone(), jit: step.jit(), seconds: t[t.len() / 2], ops }
            })
            .collect())
    }

    /// The working values of one run: inputs (checked) and constants.
    fn load(&self, inputs: &[Tensor]) -> Result<Slots, CodegenError> {
        if inputs.len() != self.inputs.len() {
            return Err(err(format!("@{} takes {} inputs, got {}", self.name, self.inputs.len(), inputs.len())));
        }
        for ((_, ty, name), t) in self.inputs.iter().zip(inputs) {
            check_input(name, ty, t).map_err(err)?;
        }
        // Nothing bigger than qc allows one tensor, at this batch, before anything is allocated.
        let batch = self
            .inputs
            .iter()
            .zip(inputs)
            .find_map(|((_, ty, _), t)| ty.dims.iter().position(|d| d.fixed().is_none()).and_then(|i| t.shape().get(i).copied()))
            .unwrap_or(1) as u64;
        for (name, fixed, dynamic) in &self.largest {
            let bytes = (0..*dynamic).try_fold(*fixed, |a, _| a.checked_mul(batch));
            if bytes.is_none_or(|b| b > qc_ir::eval::MAX_TENSOR_BYTES) {
                return Err(err(format!(
                    "{name} would take more than the {} bytes qc allows one tensor at batch {batch}",
                    qc_ir::eval::MAX_TENSOR_BYTES
                )));
            }
        }
        let mut slots: Slots = vec![None; self.slots];
        for ((s, _, _), t) in self.inputs.iter().zip(inputs) {
            slots[*s] = Some(Val::T(Arc::new(t.clone())));
        }
        for (s, t) in &self.consts {
            slots[*s] = Some(Val::T(t.clone()));
        }
        Ok(slots)
    }
}

/// One step's share of a run.
#[derive(Clone, Debug)]
pub struct StepProfile {
    /// `%value = op loc("...")`.
    pub label: String,
    /// The op's source location name (empty when it has none).
    pub loc: String,
    /// Whether a JIT kernel runs it (else Rust code).
    pub jit: bool,
    /// Median seconds.
    pub seconds: f64,
    /// Integer operations (2 · multiply-adds) of a kernel; 0 for other steps.
    pub ops: u64,
}

/// A working value: a tensor, or the bytes of an 8-bit quantized tensor with its logical shape
/// and layout — what the kernels read and write, so that nothing is converted between two kernels.
#[derive(Clone)]
enum Val {
    T(Arc<Tensor>),
    B(Arc<Vec<u8>>, Vec<usize>, Layout),
}

type Slots = Vec<Option<Val>>;

fn val(slots: &Slots, s: Slot) -> Result<&Val, CodegenError> {
    slots[s].as_ref().ok_or_else(|| err("a value was read before it was computed"))
}

/// The bytes and logical shape of an 8-bit value, in `layout`.
fn bytes(slots: &Slots, s: Slot, layout: Layout) -> Result<(Arc<Vec<u8>>, Vec<usize>), CodegenError> {
    let (b, shape, from) = bytes_any(slots, s)?;
    Ok(match convert(&b, &shape, from, layout) {
        Some(c) => (Arc::new(c), shape),
        None => (b, shape),
    })
}

/// The bytes, logical shape and layout of an 8-bit value, as they are.
fn bytes_any(slots: &Slots, s: Slot) -> Result<(Arc<Vec<u8>>, Vec<usize>, Layout), CodegenError> {
    match val(slots, s)? {
        Val::B(b, shape, layout) => Ok((b.clone(), shape.clone(), *layout)),
        Val::T(t) => {
            Ok((Arc::new(tensor_bytes(t).ok_or_else(|| err("a kernel input is not 8-bit"))?), t.shape().to_vec(), Layout::Nchw))
        }
    }
}

/// A value as a tensor of element type `elem` (NCHW).
fn tensor(slots: &Slots, s: Slot, elem: &ElemType) -> Result<Arc<Tensor>, CodegenError> {
    match val(slots, s)? {
        Val::T(t) => Ok(t.clone()),
        Val::B(..) => {
            let (b, shape) = bytes(slots, s, Layout::Nchw)?;
            Ok(Arc::new(bytes_tensor(Arc::unwrap_or_clone(b), &shape, elem)))
        }
    }
}

/// The batch of a kernel input of logical shape `shape`.
fn batch_of(shape: &[usize]) -> usize {
    shape.first().copied().unwrap_or(1)
}

/// Runs one step; returns the integer operations a kernel did.
fn exec(step: &Step, slots: &mut Slots) -> Result<u64, CodegenError> {
    Ok(match step {
        Step::Gemm { kernel, a, out, .. } => {
            let (x, shape) = bytes(slots, *a, Layout::Nchw)?;
            let (m, n) = (shape[0], kernel.columns());
            let mut y = vec![0u8; m * n];
            kernel.run(&x, m, &mut y).map_err(err)?;
            slots[*out] = Some(Val::B(Arc::new(y), vec![m, n], Layout::Nchw));
            2 * (m * n * kernel.depth()) as u64
        }
        Step::Window { kernel, x, out } => {
            let (x, shape) = bytes(slots, *x, Layout::Nhwc)?;
            let batch = batch_of(&shape);
            let y = kernel.run(&x, batch).map_err(err)?;
            let [c, oh, ow] = kernel.out_dims();
            slots[*out] = Some(Val::B(Arc::new(y), vec![batch, c, oh, ow], Layout::Nhwc));
            kernel.ops(batch)
        }
        Step::Mean { kernel, dims, x, out } => {
            let (x, shape) = bytes(slots, *x, Layout::Nhwc)?;
            let batch = batch_of(&shape);
            let y = kernel.run(&x, batch).map_err(err)?;
            // `[batch][C]` is the same bytes in either layout.
            let shape = std::iter::once(batch).chain(dims.iter().copied()).collect();
            slots[*out] = Some(Val::B(Arc::new(y), shape, Layout::Nchw));
            0
        }
        Step::Add { kernel, a, b, out } => {
            let (ba, shape, layout) = bytes_any(slots, *a)?;
            let (bb, _) = bytes(slots, *b, layout)?;
            let y = kernel.run(&ba, &bb).map_err(err)?;
            slots[*out] = Some(Val::B(Arc::new(y), shape, layout));
            0
        }
        Step::Quantize { q, x, out } => {
            let t = tensor(slots, *x, &ElemType::Scalar(qc_ir::ScalarType::F32))?;
            let a = t.as_f32().ok_or_else(|| err("quantize reads f32"))?;
            let (lo, hi) = if q.signed { (-128, 127) } else { (0, 255) };
            let mut y = vec![0u8; a.len()];
            match a.as_slice() {
                Some(a) => crate::lanes::quantize(a, q.scale, q.zp, lo, hi, &mut y),
                None => y.iter_mut().zip(a.iter()).for_each(|(o, &v)| *o = quantize_value(v, q.scale, q.zp, lo, hi) as u8),
            }
            slots[*out] = Some(Val::B(Arc::new(y), a.shape().to_vec(), Layout::Nchw));
            0
        }
        Step::Dequantize { q, x, out } => {
            let (b, shape) = bytes(slots, *x, Layout::Nchw)?;
            let y: Vec<f32> = b.iter().map(|&v| dequantize_value(q.value(v), q.scale, q.zp)).collect();
            let t = Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), y).map_err(|e| err(e.to_string()))?);
            slots[*out] = Some(Val::T(Arc::new(t)));
            0
        }
        Step::Reshape { dims, x, out } => {
            let (b, _) = bytes(slots, *x, Layout::Nchw)?;
            let fixed: usize = dims.iter().filter_map(|d| d.fixed()).map(|n| n as usize).product();
            if fixed == 0 || b.len() % fixed != 0 {
                return Err(err("a reshape does not divide its input"));
            }
            let shape: Vec<usize> = dims.iter().map(|d| d.fixed().map_or(b.len() / fixed, |n| n as usize)).collect();
            slots[*out] = Some(Val::B(b, shape, Layout::Nchw));
            0
        }
        Step::Eval { kind, attrs, args, arg_types, results, result_types } => {
            let vals: Vec<Arc<Tensor>> =
                args.iter().zip(arg_types).map(|(&s, t)| tensor(slots, s, &t.elem)).collect::<Result<_, _>>()?;
            let refs: Vec<&Tensor> = vals.iter().map(|v| v.as_ref()).collect();
            let tys: Vec<&TensorType> = arg_types.iter().collect();
            let outs: Vec<&TensorType> = result_types.iter().collect();
            let ts = eval_op_multi(*kind, attrs, &refs, &tys, &outs).map_err(|e| err(format!("{kind}: {e}")))?;
            for (&s, t) in results.iter().zip(ts) {
                slots[s] = Some(Val::T(Arc::new(t)));
            }
            0
        }
    })
}
