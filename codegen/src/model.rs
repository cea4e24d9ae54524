//! `CompiledModel`: a verified graph compiled for execution. Integer gemm, matmul and
//! convolution (groups = 1) run as JIT-compiled GEMM kernels specialized to their layer
//! ([`crate::conv`]); integer depthwise convolution as a JIT-compiled kernel of its own
//! ([`crate::depthwise`]), and so do max pooling and the global mean ([`crate::pool`]) and
//! per-tensor quantize and dequantize; `matmul_integer` and `conv_integer` (dynamic
//! quantization) as GEMMs writing i32 ([`crate::integer`]), with their f32 tail fused in when
//! they have one (`dequant_chain.rs`); same-shape add as a Rust vector loop ([`crate::add`]) and
//! 8-bit activations as a Rust table kernel ([`crate::lut`]); 4-D
//! activations stay channels-last between those kernels ([`crate::layout`]); every other op runs
//! the reference evaluator's implementation. Results equal the evaluator's bit for bit (tested on
//! the corpus and by property tests per kernel).
//!
//! Compiling lowers the graph to a list of steps over two kinds of values: 8-bit activations,
//! which live in one arena at offsets fixed by the memory plan ([`crate::plan`]), each with a
//! static layout (a layout change is a step of its own, inserted where a consumer needs the other
//! one), and tensors (inputs, weights, what the evaluator's fallbacks compute). A reshape of an
//! activation is no step at all: it names the same bytes.
//!
//! `run` takes `&self`; the arena, the tensor slots and convolution scratch belong to the calling
//! thread (reused from run to run, so a run allocates no activation memory once they have grown),
//! so one model can run on many threads at once. After the activations, the arena holds each
//! windowed kernel's own buffer (an image with its border, [`Scratch`]): the borders are written
//! when the arena last served another model or batch, or a run that failed, and kept otherwise.
//!
//! Bounds: the arena holds `size · batch` bytes of activations, then the kernels' buffers; every
//! activation's range is computed from the plan, checked to lie inside the first part and not to
//! overlap the step's output, and every buffer's to lie inside the second; each
//! kernel checks the lengths of what it reads and writes against its compiled shape before it
//! touches them; the only unsafe code is the call into JIT code, whose buffers
//! `GemmKernel::run_rows` checks. A wrong input is an error, never an out-of-bounds access.

use crate::add::AddQ;
use crate::conv::Conv;
use crate::depthwise::Depthwise;
use crate::dequant_chain;
use crate::direct::{Call, Calls, Direct, DirectFn, StepView};
use crate::gemm::{GemmKernel, GemmSpec, bytes_tensor, shaped, tensor_bytes};
use crate::halo::Scratch;
use crate::integer::IntegerProduct;
use crate::layout::{Layout, transpose};
use crate::lut::Lut;
use crate::plan::{Buffer, Plan, plan};
use crate::pool::{GlobalMean, MaxPool};
use crate::quant_simd::{DequantizeKernel, Q8, QuantizeKernel};
use qc_ir::eval::{check_input, dequantize_value, eval_op_multi, quantize_value};
use qc_ir::{Attrs, ConstValue, Dim, ElemType, Graph, NodeId, OpKind, Tensor, TensorType, ValueId};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// Why a model could not be compiled or run.
#[derive(Clone, Debug, PartialEq)]
pub enum CodegenError {
    /// The model cannot be compiled (a weight missing, a layer the kernels refuse, ...).
    Compile(String),
    /// A run got `got` inputs; the model takes `expected`.
    InputCount {
        /// What the model takes.
        expected: usize,
        /// What the run got.
        got: usize,
    },
    /// Input `name` does not have the model's type for it (element type, rank, a fixed dim) or
    /// holds NaN or an infinity.
    Input {
        /// The input, as the model names it.
        name: String,
        /// What is wrong, with the expected type.
        message: String,
    },
    /// A value would not fit the memory qc allows at this batch (checked before allocating).
    TooLarge(String),
    /// A step failed during the run (an op the evaluator refuses for these values).
    Run(String),
}

impl fmt::Display for CodegenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodegenError::Compile(m) | CodegenError::TooLarge(m) | CodegenError::Run(m) => f.write_str(m),
            CodegenError::InputCount { expected, got } => write!(f, "the model takes {expected} inputs, got {got}"),
            CodegenError::Input { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for CodegenError {}

/// Whether ops other than the GEMM get JIT kernels: all but under `QC_ISA=scalar`, where their
/// Rust implementations run (the reference the kernels are tested against).
pub(crate) fn jit_enabled() -> bool {
    std::env::var("QC_ISA").as_deref() != Ok("scalar")
}

/// A kernel over a sliding window of NHWC images (see [`crate::window`]).
pub(crate) trait WindowKernel: Send + Sync {
    /// Runs `batch` NHWC images into `y` (lengths checked inside), with its buffer `scratch`
    /// ([`WindowKernel::scratch_len`] bytes, kept from run to run).
    fn run(&self, x: &[u8], batch: usize, y: &mut [u8], scratch: &mut Scratch<'_>) -> Result<(), String>;
    /// The bytes of the buffer it keeps in the arena from run to run (an image with its border).
    fn scratch_len(&self) -> usize {
        0
    }
    /// The output's logical `[C, oh, ow]`.
    fn out_dims(&self) -> [usize; 3];
    /// Integer operations (2 · multiply-adds) for `batch` images; 0 for pooling.
    fn ops(&self, batch: usize) -> u64;
    /// Whether JIT-compiled code does the arithmetic.
    fn jit(&self) -> bool;
    /// Its JIT function, when one call of it runs an image (see [`crate::direct`]).
    fn direct(&self) -> Option<Direct> {
        None
    }
}

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
enum Lowered {
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
    Gemm {
        kernel: GemmKernel,
        a: ValueId,
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

/// An 8-bit activation in the arena: its dims after the batch, layout, bytes per
/// image and the plan buffer that holds it (shared by a reshape and its input).
struct Activation {
    dims: Vec<usize>,
    layout: Layout,
    bytes: usize,
    buffer: usize,
}

/// Where a step reads a value from.
#[derive(Clone, Copy)]
enum Arg {
    /// A tensor slot.
    T(usize),
    /// An activation.
    A(usize),
}

/// One step of a run.
enum Op {
    Dequantized {
        product: IntegerProduct,
        /// The input, its zero point (if any) and the scale, with their types.
        args: Vec<(Arg, TensorType)>,
        has_zp: bool,
        factor: Option<Arc<Tensor>>,
        bias: Arc<Tensor>,
        attrs: Attrs,
        y: usize,
    },
    DynamicQuantize {
        x: Arg,
        x_ty: TensorType,
        /// Tensor slots of the data, scale and zero point.
        y: [usize; 3],
    },
    Integer {
        product: IntegerProduct,
        /// The input and its zero point (if any), with their types.
        args: Vec<(Arg, TensorType)>,
        y: usize,
    },
    Quantize {
        q: Q8,
        kernel: Option<QuantizeKernel>,
        x: usize,
        y: usize,
    },
    Dequantize {
        q: Q8,
        kernel: Option<DequantizeKernel>,
        x: usize,
        y: usize,
    },
    Window {
        kernel: Box<dyn WindowKernel>,
        x: usize,
        y: usize,
        /// Its buffer, in the arena's part after the activations.
        scratch: std::ops::Range<usize>,
    },
    Mean {
        kernel: Box<GlobalMean>,
        x: usize,
        y: usize,
    },
    Add {
        kernel: AddQ,
        a: usize,
        b: usize,
        y: usize,
    },
    Lut {
        kernel: Lut,
        x: usize,
        y: usize,
    },
    Gemm {
        kernel: GemmKernel,
        a: usize,
        y: usize,
    },
    /// A 4-D activation into the other layout.
    Convert {
        x: usize,
        y: usize,
    },
    /// A tensor's bytes into an activation (NCHW).
    Import {
        x: usize,
        y: usize,
    },
    Eval {
        kind: OpKind,
        attrs: Attrs,
        args: Vec<Arg>,
        arg_types: Vec<TensorType>,
        results: Vec<usize>,
        result_types: Vec<TensorType>,
    },
}

impl Op {
    fn jit(&self) -> bool {
        match self {
            Op::Gemm { .. } => true,
            Op::Window { kernel, .. } => kernel.jit(),
            Op::Quantize { kernel, .. } => kernel.is_some(),
            Op::Dequantize { kernel, .. } => kernel.is_some(),
            Op::Mean { kernel, .. } => kernel.jit(),
            Op::Integer { .. } | Op::Dequantized { .. } => true,
            _ => false,
        }
    }
}

/// The memory plan of a compiled model, per image (multiply by the batch).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Activations in the arena (reshapes share their input's bytes and are not counted).
    pub buffers: usize,
    /// Bytes of all of them, were each given its own memory.
    pub unshared: usize,
    /// The arena's bytes.
    pub arena: usize,
    /// The most bytes alive at once: no plan needs less.
    pub lower_bound: usize,
}

/// A model compiled for execution.
pub struct CompiledModel {
    name: String,
    /// Each step with a label for profiles (`%value = op loc("...")`) and its location name.
    ops: Vec<((String, String), Op)>,
    activations: Vec<Activation>,
    plan: Plan,
    /// Tensor slots: inputs first, then constants, then what steps compute.
    tensor_slots: usize,
    /// The bytes of the windowed kernels' buffers, after the activations in the arena.
    scratch: usize,
    /// A batch-1 run's steps as direct calls where they can be (see [`crate::direct`]).
    direct: Option<Calls>,
    /// This model among those compiled in the process: the arena notes whose buffers it holds.
    id: u64,
    consts: Vec<(usize, Arc<Tensor>)>,
    inputs: Vec<(TensorType, String)>,
    outputs: Vec<(Arg, ElemType)>,
    /// The batch: the first input's leading dim when it is fixed (else the run's).
    fixed_batch: Option<usize>,
    kernels: usize,
    /// The largest values, one per count of dynamic dims: (its name, bytes with every dynamic dim
    /// 1, how many dims are dynamic), checked against the batch before a run allocates anything.
    largest: Vec<(String, u64, u32)>,
}

fn err(msg: impl Into<String>) -> CodegenError {
    CodegenError::Compile(msg.into())
}

fn run_err(msg: impl Into<String>) -> CodegenError {
    CodegenError::Run(msg.into())
}

/// The dims after the leading (batch) dim, when the leading dim is the batch (`batch_fixed`:
/// the batch is that fixed size; else it is dynamic) and the others are fixed.
fn per_image(ty: &TensorType, batch_fixed: Option<usize>) -> Option<Vec<usize>> {
    let lead = ty.dims.first()?;
    match (lead, batch_fixed) {
        (Dim::Dynamic, None) => {}
        (Dim::Fixed(n), Some(b)) if *n as usize == b => {}
        _ => return None,
    }
    ty.dims[1..].iter().map(|d| d.fixed().map(|n| n as usize)).collect()
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
            // Values of fixed size were checked just above; only the batch can make one too big.
            .filter(|&(_, _, dynamic)| dynamic > 0)
            .fold(Vec::<(String, u64, u32)>::new(), |mut kept, (name, fixed, dynamic)| {
                // Of the values with as many dynamic dims, the largest is the first to be too big.
                match kept.iter_mut().find(|k| k.2 == dynamic) {
                    Some(k) if k.1 >= fixed => {}
                    Some(k) => *k = (name, fixed, dynamic),
                    None => kept.push((name, fixed, dynamic)),
                }
                kept
            });
        let fixed_batch = match g.params().first().map(|&p| g.ty(p).dims.first().cloned()) {
            Some(Some(Dim::Fixed(n))) => Some(n as usize),
            _ => None,
        };
        let (lowered, consts, kernels) = lower(g, fixed_batch)?;
        let mut b = Builder::new(g, fixed_batch);
        for (i, &p) in g.params().iter().enumerate() {
            b.tensor.insert(p, i);
        }
        b.tensor_slots = g.params().len();
        let mut const_slots = Vec::new();
        for (v, t) in consts {
            const_slots.push((b.tensor_slots, t));
            b.tensor.insert(v, b.tensor_slots);
            b.tensor_slots += 1;
        }
        for (label, op) in lowered {
            b.add(label, op)?;
        }
        let outputs = g
            .outputs()
            .iter()
            .map(|&o| {
                let arg = match b.tensor.get(&o) {
                    Some(&t) => Arg::T(t),
                    None => Arg::A(b.activation(o, Layout::Nchw)?),
                };
                b.read(arg, usize::MAX);
                Ok((arg, g.ty(o).elem.clone()))
            })
            .collect::<Result<_, CodegenError>>()?;
        let steps = b.ops.len();
        let buffers: Vec<Buffer> =
            b.lifetimes.iter().map(|&(bytes, first, last)| Buffer { bytes, first, last: last.min(steps) }).collect();
        let plan = plan(&buffers);
        let direct = direct_calls(&b.ops, &b.activations, &plan, b.scratch);
        Ok(CompiledModel {
            direct,
            name: g.name.clone(),
            ops: b.ops,
            activations: b.activations,
            plan,
            tensor_slots: b.tensor_slots,
            scratch: b.scratch,
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            consts: const_slots,
            inputs: g.params().iter().map(|&p| (g.ty(p).clone(), g.display_value(p))).collect(),
            outputs,
            fixed_batch,
            kernels,
            largest,
        })
    }

    /// The constant in tensor slot `slot`, if it holds one (their slots follow the inputs', in
    /// order).
    fn constant(&self, slot: usize) -> Option<&Arc<Tensor>> {
        self.consts.get(slot.checked_sub(self.inputs.len())?).filter(|(s, _)| *s == slot).map(|(_, t)| t)
    }

    /// The first tensor slot a run computes (inputs and constants come before).
    fn first_computed(&self) -> usize {
        self.inputs.len() + self.consts.len()
    }

    /// The dims of the first input (0 for a dynamic dim).
    pub fn input_dims(&self) -> Vec<usize> {
        self.inputs.first().map_or(Vec::new(), |(t, _)| t.dims.iter().map(|d| d.fixed().unwrap_or(0) as usize).collect())
    }

    /// How many ops run as JIT-compiled kernels.
    pub fn kernel_count(&self) -> usize {
        self.kernels
    }

    /// The ops that run on the evaluator's implementation rather than a kernel, as
    /// `%value = op loc("...")`.
    pub fn fallback_ops(&self) -> Vec<String> {
        self.ops.iter().filter(|(_, s)| matches!(s, Op::Eval { .. })).map(|((label, _), _)| label.clone()).collect()
    }

    /// The memory plan, per image.
    pub fn memory(&self) -> MemoryPlan {
        let mut seen = vec![false; self.plan.offsets.len()];
        let mut unshared = 0;
        for a in &self.activations {
            if !std::mem::replace(&mut seen[a.buffer], true) {
                unshared += a.bytes;
            }
        }
        MemoryPlan { buffers: self.plan.offsets.len(), unshared, arena: self.plan.size, lower_bound: self.plan.lower_bound }
    }

    /// Runs the model. Inputs are checked against the compiled types (a dynamic dim accepts any
    /// size); a wrong input is an error, never undefined behaviour.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, CodegenError> {
        self.with_run(inputs, |run| {
            match &self.direct {
                Some(calls) if run.arena.batch == 1 => run.calls(calls)?,
                _ => {
                    for (_, op) in &self.ops {
                        run.exec(op)?;
                    }
                }
            }
            run.outputs()
        })
    }

    /// Runs the model `runs` times and returns each step's median time and the integer
    /// operations (2 · multiply-adds) its kernel did, for `qc bench`.
    pub fn profile(&self, inputs: &[Tensor], runs: usize) -> Result<Vec<StepProfile>, CodegenError> {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); self.ops.len()];
        let mut ops = vec![0u64; self.ops.len()];
        for _ in 0..runs.max(1) {
            self.with_run(inputs, |run| {
                // Each step as `run` runs it: a batch-1 run's direct calls, else `Run::exec`.
                let calls = self.direct.as_ref().filter(|_| run.arena.batch == 1);
                if let Some(calls) = calls {
                    run.start_calls(calls)?;
                }
                for (i, (_, op)) in self.ops.iter().enumerate() {
                    let t = std::time::Instant::now();
                    match calls.and_then(|c| c.calls.get(i)) {
                        // SAFETY: `start_calls` returned `Ok` for these calls just above.
                        Some(call) => unsafe { run.call(call)? },
                        None => run.exec(op)?,
                    }
                    times[i].push(t.elapsed().as_secs_f64());
                    ops[i] = run.ops(op)?;
                }
                Ok(())
            })?;
        }
        Ok(self
            .ops
            .iter()
            .zip(times)
            .zip(ops)
            .map(|((((label, loc), op), mut t), ops)| {
                t.sort_by(f64::total_cmp);
                StepProfile { label: label.clone(), loc: loc.clone(), jit: op.jit(), seconds: t[t.len() / 2], ops }
            })
            .collect())
    }

    /// Checks the inputs, finds the batch, and calls `f` with this thread's arena sized for it.
    fn with_run<T>(&self, inputs: &[Tensor], f: impl FnOnce(&mut Run) -> Result<T, CodegenError>) -> Result<T, CodegenError> {
        if inputs.len() != self.inputs.len() {
            return Err(CodegenError::InputCount { expected: self.inputs.len(), got: inputs.len() });
        }
        for ((ty, name), t) in self.inputs.iter().zip(inputs) {
            check_input(name, ty, t).map_err(|message| CodegenError::Input { name: name.clone(), message })?;
        }
        // Nothing bigger than qc allows one tensor, at this batch, before anything is allocated.
        let dynamic = self
            .inputs
            .iter()
            .zip(inputs)
            .find_map(|((ty, _), t)| ty.dims.iter().position(|d| d.fixed().is_none()).and_then(|i| t.shape().get(i).copied()))
            .unwrap_or(1) as u64;
        for (name, fixed, dynamic_dims) in &self.largest {
            let bytes = (0..*dynamic_dims).try_fold(*fixed, |a, _| a.checked_mul(dynamic));
            if bytes.is_none_or(|b| b > qc_ir::eval::MAX_TENSOR_BYTES) {
                return Err(CodegenError::TooLarge(format!(
                    "{name} would take more than the {} bytes qc allows one tensor at batch {dynamic}",
                    qc_ir::eval::MAX_TENSOR_BYTES
                )));
            }
        }
        let batch = match (self.fixed_batch, inputs.first()) {
            (Some(n), _) => n,
            (None, Some(t)) => t.shape().first().copied().unwrap_or(1),
            (None, None) => 1,
        };
        let too_large =
            || CodegenError::TooLarge(format!("the activations of @{} do not fit memory at batch {batch}", self.name));
        let activations =
            self.plan.size.checked_mul(batch).filter(|&b| b as u64 <= qc_ir::eval::MAX_TENSOR_BYTES * 4).ok_or_else(too_large)?;
        // The kernels' buffers start on a cache line of their own.
        let scratch_at = activations.next_multiple_of(64);
        let arena_bytes = scratch_at.checked_add(self.scratch).ok_or_else(too_large)?;
        ARENA.with(|arena| {
            let mut arena = arena.borrow_mut();
            let ThreadArena { bytes: arena, owner } = &mut *arena;
            if arena.len() < arena_bytes {
                arena.resize(arena_bytes, 0);
            }
            // The kernels' buffers are as this model left them when the last run on this thread
            // that touched the arena was one of this model at this batch that ended well; else
            // they are fresh, and no run may trust them until this one has ended well.
            let fresh = *owner != Some((self.id, batch));
            *owner = None;
            // Inputs are read where the caller keeps them, constants where the model does
            // ([`CompiledModel::constant`]); the other slots are filled as the steps run.
            TENSORS.with_borrow_mut(|tensors| {
                tensors.clear();
                tensors.resize_with(self.tensor_slots - self.first_computed(), || None);
                let mut run = Run {
                    arena: Arena { model: self, bytes: &mut arena[..arena_bytes], batch, scratch_at, fresh },
                    slots: Slots { model: self, inputs, tensors },
                };
                let result = f(&mut run);
                tensors.clear();
                if result.is_ok() {
                    *owner = Some((self.id, batch));
                }
                result
            })
        })
    }
}

/// The direct calls of a batch-1 run of `ops` (see [`crate::direct`]).
fn direct_calls(ops: &[((String, String), Op)], activations: &[Activation], plan: &Plan, buffers: usize) -> Option<Calls> {
    let range = |a: usize| {
        let act = &activations[a];
        let start = plan.offsets[act.buffer];
        start..start + act.bytes
    };
    let steps = ops.iter().map(|(_, op)| {
        let (direct, x, y, buffer) = match op {
            Op::Window { kernel, x, y, scratch } => (kernel.direct(), *x, *y, scratch.clone()),
            Op::Mean { kernel, x, y } => (kernel.direct(), *x, *y, 0..0),
            Op::Gemm { kernel, a, y } => (kernel.direct_rows(1), *a, *y, 0..0),
            Op::Add { a, b, y, .. } => return StepView::Add { a: range(*a), b: range(*b), y: range(*y) },
            _ => return StepView::Other,
        };
        match direct {
            Some(direct) => StepView::Kernel { direct, input: range(x), output: range(y), buffer },
            None => StepView::Other,
        }
    });
    crate::direct::calls(steps, plan.size, buffers)
}

/// A thread's arena: activations, then the windowed kernels' buffers of the model that last ran.
struct ThreadArena {
    bytes: Vec<u8>,
    /// The model and batch whose kernels' buffers it holds, as the last run that ended well
    /// left them.
    owner: Option<(u64, usize)>,
}

thread_local! {
    /// A thread's arena, grown to the largest run it has seen and reused.
    static ARENA: std::cell::RefCell<ThreadArena> = const { std::cell::RefCell::new(ThreadArena { bytes: Vec::new(), owner: None }) };
    /// A thread's tensor slots (see [`Slots`]), empty between runs.
    static TENSORS: std::cell::RefCell<Vec<Option<Tensor>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Lowers every op of `g` to a kernel, or to the evaluator's implementation: the ops in
/// canonical order with their labels, the constants, and how many ops run JIT code.
#[allow(clippy::type_complexity)]
fn lower(
    g: &Graph,
    fixed_batch: Option<usize>,
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
            (OpKind::Gemm | OpKind::MatMul, true, Some(w), Some(x)) if tys[0].rank() == 2 && w.shape().len() == 2 => {
                let spec = GemmSpec::from_node(node.kind, &node.attrs, &tys, w, bias.as_deref(), out_ty)
                    .map_err(|e| err(format!("{}: {e}", who())))?;
                match spec.accumulators_fit() {
                    true => Some(Lowered::Gemm {
                        kernel: GemmKernel::compile(&spec).map_err(|e| err(format!("{}: {e}", who())))?,
                        a: x,
                        y,
                    }),
                    false => None,
                }
            }
            (OpKind::Conv2d, true, Some(w), Some(x)) if node.attrs.int("groups", 1) == 1 => {
                let kernel =
                    Conv::new(&node.attrs, &tys, w, bias.as_deref(), out_ty).map_err(|e| err(format!("{}: {e}", who())))?;
                kernel.map(|kernel| Lowered::Window { kernel: Box::new(kernel), x, y })
            }
            (OpKind::Conv2d, true, Some(w), Some(x)) => Depthwise::new(&node.attrs, &tys, w, bias.as_deref(), out_ty)
                .map(|kernel| Lowered::Window { kernel: Box::new(kernel), x, y }),
            (OpKind::MaxPool, true, _, Some(x)) => {
                MaxPool::new(&node.attrs, tys[0], out_ty).map(|kernel| Lowered::Window { kernel: Box::new(kernel), x, y })
            }
            (OpKind::GlobalAvgPool | OpKind::ReduceMean, true, _, Some(x)) => {
                GlobalMean::new(node.kind, &node.attrs, tys[0], out_ty).map(|kernel| Lowered::Mean {
                    kernel: Box::new(kernel),
                    x,
                    y,
                })
            }
            (OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish | OpKind::Clip, true, _, Some(x))
                if node.operands.len() == 1 && batched(tys[0]) =>
            {
                Lut::new(node.kind, &node.attrs, tys[0], out_ty).map(|kernel| Lowered::Lut { kernel, x, y })
            }
            (OpKind::Add, true, _, Some(a)) => {
                AddQ::new(&node.attrs, &tys, out_ty).map(|kernel| Lowered::Add { kernel, a, b: node.operands[1], y })
            }
            (OpKind::Reshape | OpKind::Flatten | OpKind::Squeeze | OpKind::Unsqueeze, true, _, Some(x))
                if node.operands.len() == 1 && batched(tys[0]) && Q8::of(tys[0]) == Q8::of(out_ty) =>
            {
                Some(Lowered::Reshape { x, y })
            }
            (OpKind::Quantize, _, _, Some(x)) if tys[0].elem.is_f32() && activation_out => Q8::of(out_ty)
                .map(|q| Lowered::Quantize { q, kernel: jit_enabled().then(|| QuantizeKernel::compile(q).ok()).flatten(), x, y }),
            (OpKind::Dequantize, _, _, Some(x)) if out_ty.elem.is_f32() && batched(tys[0]) => Q8::of(tys[0]).map(|q| {
                Lowered::Dequantize { q, kernel: jit_enabled().then(|| DequantizeKernel::compile(q).ok()).flatten(), x, y }
            }),
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
                            IntegerProduct::matmul(&tys, w, w_zp.as_deref())
                        } else {
                            IntegerProduct::conv(&node.attrs, &tys, w, w_zp.as_deref(), out_ty)
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
            Lowered::Integer { .. } | Lowered::Dequantized { .. } => true,
            _ => false,
        });
        lowered.push(((label, node.loc.name.clone()), op));
    }
    Ok((lowered, consts, kernels))
}

/// Builds the step list: activations and their layouts, layout changes where a consumer needs
/// the other one, tensor slots, and every buffer's lifetime.
struct Builder<'g> {
    g: &'g Graph,
    fixed_batch: Option<usize>,
    ops: Vec<((String, String), Op)>,
    activations: Vec<Activation>,
    /// The activation holding a value in a layout.
    activation_of: HashMap<(ValueId, Layout), usize>,
    tensor: HashMap<ValueId, usize>,
    tensor_slots: usize,
    /// The windowed kernels' buffers so far, in bytes.
    scratch: usize,
    /// Per buffer: bytes per image, first step, last step.
    lifetimes: Vec<(usize, usize, usize)>,
}

impl<'g> Builder<'g> {
    fn new(g: &'g Graph, fixed_batch: Option<usize>) -> Builder<'g> {
        Builder {
            g,
            fixed_batch,
            ops: Vec::new(),
            activations: Vec::new(),
            activation_of: HashMap::new(),
            tensor: HashMap::new(),
            tensor_slots: 0,
            scratch: 0,
            lifetimes: Vec::new(),
        }
    }

    /// A new activation of value `v`'s type, written by the next step (or aliasing `buffer`).
    fn new_activation(&mut self, v: ValueId, layout: Layout, buffer: Option<usize>) -> Result<usize, CodegenError> {
        let ty = self.g.ty(v);
        let dims = per_image(ty, self.fixed_batch)
            .ok_or_else(|| err(format!("{} is not a batch of fixed-size images", self.g.display_value(v))))?;
        let bytes = dims.iter().product();
        let buffer = buffer.unwrap_or_else(|| {
            self.lifetimes.push((bytes, self.ops.len(), self.ops.len()));
            self.lifetimes.len() - 1
        });
        self.activations.push(Activation { dims, layout, bytes, buffer });
        self.activation_of.insert((v, layout), self.activations.len() - 1);
        Ok(self.activations.len() - 1)
    }

    /// Notes that step `step` reads `arg`.
    fn read(&mut self, arg: Arg, step: usize) {
        if let Arg::A(a) = arg {
            let life = &mut self.lifetimes[self.activations[a].buffer];
            life.2 = life.2.max(step);
        }
    }

    /// Whether two layouts of a value are the same bytes.
    fn same_bytes(&self, a: usize) -> bool {
        let d = &self.activations[a].dims;
        d.len() != 3 || d[0] == 1 || d[1] * d[2] == 1
    }

    /// The layout `v` already has (channels-last first), else NCHW: where an elementwise kernel
    /// reads it without a conversion.
    fn present_layout(&self, v: ValueId) -> Layout {
        [Layout::Nhwc, Layout::Nchw].into_iter().find(|&l| self.activation_of.contains_key(&(v, l))).unwrap_or(Layout::Nchw)
    }

    /// The activation of value `v` in `layout`, adding the steps that make it (a tensor's bytes
    /// copied in, a layout change) when needed.
    fn activation(&mut self, v: ValueId, layout: Layout) -> Result<usize, CodegenError> {
        if let Some(&a) = self.activation_of.get(&(v, layout)) {
            return Ok(a);
        }
        let other = match layout {
            Layout::Nchw => Layout::Nhwc,
            Layout::Nhwc => Layout::Nchw,
        };
        let from = match self.activation_of.get(&(v, other)) {
            Some(&a) => a,
            None => {
                let &x = self
                    .tensor
                    .get(&v)
                    .ok_or_else(|| err(format!("{} is read before it is computed", self.g.display_value(v))))?;
                let y = self.new_activation(v, Layout::Nchw, None)?;
                self.push(format!("{} → bytes", self.g.display_value(v)), Op::Import { x, y }, &[]);
                if layout == Layout::Nchw {
                    return Ok(y);
                }
                y
            }
        };
        if self.same_bytes(from) {
            let buffer = self.activations[from].buffer;
            let a = self.new_activation(v, layout, Some(buffer))?;
            return Ok(a);
        }
        let y = self.new_activation(v, layout, None)?;
        let label = format!("{} → {}", self.g.display_value(v), if layout == Layout::Nhwc { "NHWC" } else { "NCHW" });
        self.push(label, Op::Convert { x: from, y }, &[Arg::A(from)]);
        Ok(y)
    }

    /// Appends a step that reads `args`.
    fn push(&mut self, label: String, op: Op, args: &[Arg]) {
        let step = self.ops.len();
        for &a in args {
            self.read(a, step);
        }
        self.ops.push(((label, String::new()), op));
    }

    fn tensor_slot(&mut self, v: ValueId) -> usize {
        let slot = self.tensor_slots;
        self.tensor.insert(v, slot);
        self.tensor_slots += 1;
        slot
    }

    /// A value as a step argument that the evaluator reads: a tensor slot, or an NCHW activation.
    fn eval_arg(&mut self, v: ValueId) -> Result<Arg, CodegenError> {
        match self.tensor.get(&v) {
            Some(&t) => Ok(Arg::T(t)),
            None => Ok(Arg::A(self.activation(v, Layout::Nchw)?)),
        }
    }

    fn add(&mut self, (label, loc): (String, String), op: Lowered) -> Result<(), CodegenError> {
        let (op, args) = match op {
            Lowered::Quantize { q, kernel, x, y } => {
                let x = *self.tensor.get(&x).ok_or_else(|| err("quantize reads a value before it is computed"))?;
                (Op::Quantize { q, kernel, x, y: self.new_activation(y, Layout::Nchw, None)? }, vec![])
            }
            Lowered::Dequantize { q, kernel, x, y } => {
                let x = self.activation(x, Layout::Nchw)?;
                (Op::Dequantize { q, kernel, x, y: self.tensor_slot(y) }, vec![Arg::A(x)])
            }
            Lowered::Window { kernel, x, y } => {
                let x = self.activation(x, Layout::Nhwc)?;
                let y = self.new_activation(y, Layout::Nhwc, None)?;
                if self.activations[y].dims != kernel.out_dims() {
                    return Err(err(format!("{label}: the kernel computes {:?}, not the result's dims", kernel.out_dims())));
                }
                // Each buffer on a cache line of its own.
                let at = self.scratch.next_multiple_of(64);
                let scratch = at..at + kernel.scratch_len();
                self.scratch = scratch.end;
                (Op::Window { kernel, x, y, scratch }, vec![Arg::A(x)])
            }
            Lowered::Mean { kernel, x, y } => {
                let x = self.activation(x, Layout::Nhwc)?;
                // `[batch][C]` is the same bytes in either layout.
                (Op::Mean { kernel, x, y: self.new_activation(y, Layout::Nchw, None)? }, vec![Arg::A(x)])
            }
            Lowered::Lut { kernel, x, y } => {
                let layout = self.present_layout(x);
                let x = self.activation(x, layout)?;
                (Op::Lut { kernel, x, y: self.new_activation(y, layout, None)? }, vec![Arg::A(x)])
            }
            Lowered::Add { kernel, a, b, y } => {
                let layout = self.present_layout(a);
                let (a, b) = (self.activation(a, layout)?, self.activation(b, layout)?);
                (Op::Add { kernel, a, b, y: self.new_activation(y, layout, None)? }, vec![Arg::A(a), Arg::A(b)])
            }
            Lowered::Gemm { kernel, a, y } => {
                let a = self.activation(a, Layout::Nchw)?;
                (Op::Gemm { kernel, a, y: self.new_activation(y, Layout::Nchw, None)? }, vec![Arg::A(a)])
            }
            Lowered::Reshape { x, y } => {
                let x = self.activation(x, Layout::Nchw)?;
                let buffer = self.activations[x].buffer;
                self.new_activation(y, Layout::Nchw, Some(buffer))?;
                return Ok(());
            }
            Lowered::Dequantized { product, x, zp, scale, factor, bias, attrs, y } => {
                let args = std::iter::once(x)
                    .chain(zp)
                    .chain([scale])
                    .map(|a| Ok((self.eval_arg(a)?, self.g.ty(a).clone())))
                    .collect::<Result<Vec<_>, CodegenError>>()?;
                let read = args.iter().map(|(a, _)| *a).collect();
                (Op::Dequantized { product, args, has_zp: zp.is_some(), factor, bias, attrs, y: self.tensor_slot(y) }, read)
            }
            Lowered::DynamicQuantize { x, results } => {
                let (arg, x_ty) = (self.eval_arg(x)?, self.g.ty(x).clone());
                (Op::DynamicQuantize { x: arg, x_ty, y: results.map(|r| self.tensor_slot(r)) }, vec![arg])
            }
            Lowered::Integer { product, x, zp, y } => {
                let args = std::iter::once(x).chain(zp).map(|a| Ok((self.eval_arg(a)?, self.g.ty(a).clone()))).collect::<Result<
                    Vec<_>,
                    CodegenError,
                >>(
                )?;
                let read = args.iter().map(|(a, _)| *a).collect();
                (Op::Integer { product, args, y: self.tensor_slot(y) }, read)
            }
            Lowered::Eval { kind, attrs, args, results } => {
                let arg_types = args.iter().map(|&a| self.g.ty(a).clone()).collect();
                let args = args.iter().map(|&a| self.eval_arg(a)).collect::<Result<Vec<_>, _>>()?;
                let result_types = results.iter().map(|&r| self.g.ty(r).clone()).collect();
                let results = results.iter().map(|&r| self.tensor_slot(r)).collect();
                let read = args.clone();
                (Op::Eval { kind, attrs, args, arg_types, results, result_types }, read)
            }
        };
        self.push(label, op, &args);
        self.ops.last_mut().expect("pushed").0.1 = loc;
        Ok(())
    }
}

/// One run's state: this thread's arena and the tensor slots, apart so that a step can read a
/// tensor while it writes the arena.
struct Run<'a> {
    arena: Arena<'a>,
    slots: Slots<'a>,
}

/// What a step reads (activations), writes (an activation) and keeps (its buffer) in the arena.
type StepIo<'a, const N: usize> = ([&'a [u8]; N], &'a mut [u8], Scratch<'a>);

/// This thread's arena at the run's batch.
struct Arena<'a> {
    model: &'a CompiledModel,
    /// The activations, then from `scratch_at` on the windowed kernels' buffers.
    bytes: &'a mut [u8],
    batch: usize,
    scratch_at: usize,
    /// Whether the kernels' buffers may hold anything (see [`Scratch`]).
    fresh: bool,
}

/// The tensor slots of a run.
struct Slots<'a> {
    model: &'a CompiledModel,
    /// The caller's inputs: tensor slots `0..inputs.len()`.
    inputs: &'a [Tensor],
    /// The tensors steps compute: slots from [`CompiledModel::first_computed`] on.
    tensors: &'a mut Vec<Option<Tensor>>,
}

impl<'a> Arena<'a> {
    /// The byte range of activation `a` in the arena.
    fn range(&self, a: usize) -> std::ops::Range<usize> {
        let act = &self.model.activations[a];
        let start = self.model.plan.offsets[act.buffer] * self.batch;
        start..start + act.bytes * self.batch
    }

    /// The bytes of activation `a`.
    fn bytes(&self, a: usize) -> Result<&[u8], CodegenError> {
        self.bytes.get(self.range(a)).ok_or_else(|| run_err("an activation lies outside the arena"))
    }

    /// The logical shape of activation `a` at this batch, held without a heap allocation for up
    /// to 4 dims (read it with `slice()`).
    fn shape(&self, a: usize) -> ndarray::IxDyn {
        use ndarray::Dimension;
        let dims = &self.model.activations[a].dims;
        let mut d = ndarray::IxDyn::zeros(dims.len() + 1);
        d.slice_mut()[0] = self.batch;
        d.slice_mut()[1..].copy_from_slice(dims);
        d
    }

    /// The activations `ins` to read and `out` to write, as slices of the arena; an error (a bug
    /// in the plan) when one lies outside the arena or an input overlaps the output.
    #[inline(always)]
    fn io<const N: usize>(&mut self, ins: [usize; N], out: usize) -> Result<([&[u8]; N], &mut [u8]), CodegenError> {
        let (views, out, _) = self.io_scratch(ins, out, 0..0)?;
        Ok((views, out))
    }

    /// [`Arena::io`], and the kernel buffer at `scratch` in the arena's part after the
    /// activations. Inlined: returned through memory, its slices were read back in 16-byte
    /// halves of what it had stored in 8-byte ones, which stalled every step (1.5 % of a batch-1
    /// run of the pruned digits_resdw, in `perf annotate`).
    #[inline(always)]
    fn io_scratch<const N: usize>(
        &mut self,
        ins: [usize; N],
        out: usize,
        scratch: std::ops::Range<usize>,
    ) -> Result<StepIo<'_, N>, CodegenError> {
        let o = self.range(out);
        let ranges = ins.map(|a| self.range(a));
        let (fresh, at) = (self.fresh, self.scratch_at.min(self.bytes.len()));
        let (bytes, buffers) = self.bytes.split_at_mut(at);
        let scratch = Scratch {
            bytes: buffers.get_mut(scratch).ok_or_else(|| run_err("a kernel's buffer lies outside the arena"))?,
            fresh,
        };
        if o.end > bytes.len() || ranges.iter().any(|r| r.end > bytes.len()) {
            return Err(run_err("an activation lies outside the arena"));
        }
        let (left, rest) = bytes.split_at_mut(o.start);
        let (mid, right) = rest.split_at_mut(o.len());
        let (left, right): (&[u8], &[u8]) = (left, right);
        let mut views: [&[u8]; N] = [&[]; N];
        for (v, r) in views.iter_mut().zip(ranges) {
            *v = if r.end <= o.start {
                &left[r]
            } else if r.start >= o.end {
                &right[r.start - o.end..r.end - o.end]
            } else {
                return Err(run_err("an input of a step overlaps its output in the arena"));
            };
        }
        Ok((views, mid, scratch))
    }

    /// Activation `a` as a tensor of element type `elem` (NCHW here).
    fn tensor(&self, a: usize, elem: &ElemType) -> Result<Tensor, CodegenError> {
        Ok(bytes_tensor(self.bytes(a)?.to_vec(), ndarray::Dimension::slice(&self.shape(a)), elem))
    }
}

impl Slots<'_> {
    /// The tensor in `slot`: an input, a constant or what a step computed.
    fn tensor(&self, slot: usize) -> Result<&Tensor, CodegenError> {
        if let Some(t) = self.inputs.get(slot) {
            return Ok(t);
        }
        if let Some(t) = self.model.constant(slot) {
            return Ok(t);
        }
        let i = slot.checked_sub(self.model.first_computed());
        i.and_then(|i| self.tensors.get(i)?.as_ref()).ok_or_else(|| run_err("a value was read before it was computed"))
    }

    /// Stores what a step computed into `slot`.
    fn store(&mut self, slot: usize, t: Tensor) -> Result<(), CodegenError> {
        let i = slot.checked_sub(self.model.first_computed());
        let cell = i.and_then(|i| self.tensors.get_mut(i)).ok_or_else(|| run_err("a step writes an input or a constant"))?;
        *cell = Some(t);
        Ok(())
    }
}

impl Run<'_> {
    /// An argument as a tensor of type `ty` (activations are NCHW here).
    fn arg_tensor(&self, arg: Arg, ty: &TensorType) -> Result<std::borrow::Cow<'_, Tensor>, CodegenError> {
        match arg {
            Arg::T(s) => self.slots.tensor(s).map(std::borrow::Cow::Borrowed),
            Arg::A(a) => self.arena.tensor(a, &ty.elem).map(std::borrow::Cow::Owned),
        }
    }

    /// The model's outputs, ending the run: a tensor a step computed is moved out unless a later
    /// output returns it again.
    fn outputs(&mut self) -> Result<Vec<Tensor>, CodegenError> {
        let outputs = &self.slots.model.outputs;
        let first = self.slots.model.first_computed();
        let mut out = Vec::with_capacity(outputs.len());
        for (i, (arg, elem)) in outputs.iter().enumerate() {
            out.push(match *arg {
                Arg::T(s) => {
                    let again = outputs[i + 1..].iter().any(|(a, _)| matches!(a, Arg::T(t) if *t == s));
                    match s.checked_sub(first).and_then(|j| self.slots.tensors.get_mut(j)) {
                        Some(cell) if !again => cell.take().ok_or_else(|| run_err("an output was never computed"))?,
                        _ => self.slots.tensor(s)?.clone(),
                    }
                }
                Arg::A(a) => self.arena.tensor(a, elem)?,
            });
        }
        Ok(out)
    }

    /// Runs a batch-1 run's steps: direct calls of their kernels, the other steps by
    /// [`Run::exec`].
    fn calls(&mut self, calls: &Calls) -> Result<(), CodegenError> {
        self.start_calls(calls)?;
        for call in &calls.calls {
            // SAFETY: `start_calls` has just returned `Ok` for the calls `call` is one of.
            unsafe { self.call(call)? };
        }
        Ok(())
    }

    /// Checks that the arena is the batch-1 arena that `calls` were made for, and writes the
    /// borders of their kernels' buffers when the buffers are fresh (the steps run by
    /// [`Run::exec`] write their own).
    fn start_calls(&mut self, calls: &Calls) -> Result<(), CodegenError> {
        if self.arena.batch != 1 || self.arena.bytes.len() < calls.arena {
            return Err(run_err("direct calls need an arena at batch 1"));
        }
        if self.arena.fresh {
            calls.pad_buffers(self.arena.bytes);
        }
        Ok(())
    }

    /// Runs one step of a batch-1 run.
    ///
    /// # Safety
    /// [`Run::start_calls`] has returned `Ok` on this run for the [`Calls`] that `call` is one of.
    #[inline(always)]
    unsafe fn call(&mut self, call: &Call) -> Result<(), CodegenError> {
        match *call {
            Call::Exec(i) => {
                let (_, op) = self.arena.model.ops.get(i).ok_or_else(|| run_err("a direct call names no step"))?;
                self.exec(op)?
            }
            Call::Add(i, [a, b, y], len) => {
                let Some((_, Op::Add { kernel, .. })) = self.arena.model.ops.get(i) else {
                    return Err(run_err("a direct add names no add"));
                };
                let base = self.arena.bytes.as_mut_ptr();
                // SAFETY: `direct::calls` made this call only for `len`-byte operands and result at
                // these offsets inside the arena's first part (whose length `start_calls` checked,
                // the caller's promise), the result apart from both operands, so the shared and the
                // exclusive slices do not overlap; nothing else refers to the arena while they live.
                let (a, b, y) = unsafe {
                    (
                        std::slice::from_raw_parts(base.add(a), len),
                        std::slice::from_raw_parts(base.add(b), len),
                        std::slice::from_raw_parts_mut(base.add(y), len),
                    )
                };
                kernel.run(a, b, y).map_err(run_err)?;
            }
            // SAFETY: `direct::calls` made this call only for a kernel whose input, output and
            // buffer are the bytes at these offsets of an arena of `calls.arena` bytes at batch 1
            // (which `start_calls` checked, the caller's promise), the input and output apart; the
            // buffer's border was written by `start_calls` when the buffers were fresh, else is as
            // the last good run of this model at batch 1 left it; the kernels read and write
            // nothing else but their own tables.
            Call::Kernel(f, [x, y, s]) => unsafe {
                let base = self.arena.bytes.as_mut_ptr();
                match f {
                    DirectFn::Window { f, .. } => f(base.add(x), base.add(y), base.add(s)),
                    DirectFn::Rows { f, m } => f(base.add(x), base.add(y), m),
                }
            },
        }
        Ok(())
    }

    /// Runs one step.
    fn exec(&mut self, op: &Op) -> Result<(), CodegenError> {
        let batch = self.arena.batch;
        match op {
            Op::Gemm { kernel, a, y } => {
                let ([x], out) = self.arena.io([*a], *y)?;
                kernel.run(x, batch, out).map_err(run_err)?;
            }
            Op::Window { kernel, x, y, scratch } => {
                let ([x], out, mut scratch) = self.arena.io_scratch([*x], *y, scratch.clone())?;
                kernel.run(x, batch, out, &mut scratch).map_err(run_err)?;
            }
            Op::Mean { kernel, x, y } => {
                let ([x], out) = self.arena.io([*x], *y)?;
                kernel.run(x, batch, out).map_err(run_err)?;
            }
            Op::Add { kernel, a, b, y } => {
                let ([a, b], out) = self.arena.io([*a, *b], *y)?;
                kernel.run(a, b, out).map_err(run_err)?;
            }
            Op::Lut { kernel, x, y } => {
                let ([x], out) = self.arena.io([*x], *y)?;
                kernel.run(x, out).map_err(run_err)?;
            }
            Op::Convert { x, y } => {
                let (c, plane) = {
                    let d = &self.arena.model.activations[*x].dims;
                    (d[0], d[1] * d[2])
                };
                let to = self.arena.model.activations[*y].layout;
                let ([src], dst) = self.arena.io([*x], *y)?;
                let image = c * plane;
                for (s, d) in src.chunks_exact(image).zip(dst.chunks_exact_mut(image)) {
                    match to {
                        Layout::Nhwc => transpose(s, c, plane, d),
                        Layout::Nchw => transpose(s, plane, c, d),
                    }
                }
            }
            Op::Import { x, y } => {
                let t = self.slots.tensor(*x)?;
                let bytes = tensor_bytes(t).ok_or_else(|| run_err("a kernel input is not 8-bit"))?;
                let ([], out) = self.arena.io([], *y)?;
                if bytes.len() != out.len() {
                    return Err(run_err(format!("a kernel input has {} bytes, not {}", bytes.len(), out.len())));
                }
                out.copy_from_slice(&bytes);
            }
            Op::Quantize { q, kernel, x, y } => {
                let a = self.slots.tensor(*x)?.as_f32().ok_or_else(|| run_err("quantize reads f32"))?;
                let (lo, hi) = q.range();
                let ([], out) = self.arena.io([], *y)?;
                if a.len() != out.len() {
                    return Err(run_err(format!("quantize reads {} values into {} bytes", a.len(), out.len())));
                }
                match (a.as_slice(), kernel) {
                    (Some(a), Some(kernel)) => kernel.run(a, out).map_err(run_err)?,
                    (Some(a), None) => crate::lanes::quantize(a, q.scale, q.zp, lo, hi, out),
                    (None, _) => {
                        out.iter_mut().zip(a.iter()).for_each(|(o, &v)| *o = quantize_value(v, q.scale, q.zp, lo, hi) as u8)
                    }
                }
            }
            Op::Dequantize { q, kernel, x, y } => {
                let bytes = self.arena.bytes(*x)?;
                let v: Vec<f32> = match kernel {
                    Some(kernel) if bytes.len() >= 16 => {
                        let mut v = vec![0f32; bytes.len()];
                        kernel.run(bytes, &mut v).map_err(run_err)?;
                        v
                    }
                    _ => bytes.iter().map(|&b| dequantize_value(q.value(b), q.scale, q.zp)).collect(),
                };
                let shape = self.arena.shape(*x);
                let t = Tensor::F32(shaped(ndarray::Dimension::slice(&shape), v).map_err(|e| run_err(e.to_string()))?);
                self.slots.store(*y, t)?;
            }
            Op::Dequantized { product, args, has_zp, factor, bias, attrs, y } => {
                let vals: Vec<std::borrow::Cow<'_, Tensor>> =
                    args.iter().map(|(a, t)| self.arg_tensor(*a, t)).collect::<Result<_, _>>()?;
                let zp = if *has_zp { Some(vals[1].as_ref()) } else { None };
                let y_t = dequant_chain::run(product, &vals[0], zp, &vals[vals.len() - 1], factor.as_deref(), bias, attrs)
                    .map_err(run_err)?;
                self.slots.store(*y, y_t)?;
            }
            Op::DynamicQuantize { x, x_ty, y } => {
                let x = self.arg_tensor(*x, x_ty)?;
                let a = x.as_f32().ok_or_else(|| run_err("dynamic_quantize reads f32"))?;
                let [q, s, z] = crate::lanes::dynamic_quantize(a);
                for (slot, t) in y.iter().zip([q, s, z]) {
                    self.slots.store(*slot, t)?;
                }
            }
            Op::Integer { product, args, y } => {
                let vals: Vec<std::borrow::Cow<'_, Tensor>> =
                    args.iter().map(|(a, t)| self.arg_tensor(*a, t)).collect::<Result<_, _>>()?;
                let t = product.run(&vals[0], vals.get(1).map(|v| v.as_ref())).map_err(run_err)?;
                self.slots.store(*y, t)?;
            }
            Op::Eval { kind, attrs, args, arg_types, results, result_types } => {
                let vals: Vec<std::borrow::Cow<'_, Tensor>> =
                    args.iter().zip(arg_types).map(|(&a, t)| self.arg_tensor(a, t)).collect::<Result<_, _>>()?;
                let refs: Vec<&Tensor> = vals.iter().map(|v| v.as_ref()).collect();
                let tys: Vec<&TensorType> = arg_types.iter().collect();
                let outs: Vec<&TensorType> = result_types.iter().collect();
                let ts = eval_op_multi(*kind, attrs, &refs, &tys, &outs).map_err(|e| run_err(format!("{kind}: {e}")))?;
                for (&s, t) in results.iter().zip(ts) {
                    self.slots.store(s, t)?;
                }
            }
        }
        Ok(())
    }

    /// The integer operations (2 · multiply-adds) step `op` does at this batch; 0 for steps
    /// without a product.
    fn ops(&self, op: &Op) -> Result<u64, CodegenError> {
        let batch = self.arena.batch;
        let len = |(arg, _): &(Arg, TensorType)| match *arg {
            Arg::T(s) => self.slots.tensor(s).map(|t| t.len()),
            Arg::A(a) => Ok(self.arena.range(a).len()),
        };
        Ok(match op {
            Op::Gemm { kernel, .. } => 2 * (batch * kernel.columns() * kernel.depth()) as u64,
            Op::Window { kernel, .. } => kernel.ops(batch),
            Op::Integer { product, args, .. } | Op::Dequantized { product, args, .. } => product.ops(len(&args[0])?),
            _ => 0,
        })
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
