//! `CompiledModel`: a verified graph compiled for execution. Integer gemm, matmul and
//! convolution (groups = 1) run as JIT-compiled GEMM kernels specialized to their layer
//! ([`crate::kernels::conv`]); integer depthwise convolution as a JIT-compiled kernel of its own
//! ([`crate::kernels::depthwise`]), and so do max pooling and the global mean ([`crate::kernels::pool`]) and
//! per-tensor quantize and dequantize; `matmul_integer` and `conv_integer` (dynamic
//! quantization) as GEMMs writing i32 ([`crate::kernels::integer`]), with their f32 tail fused in when
//! they have one (`dequant_chain.rs`); same-shape add as a Rust vector loop ([`crate::kernels::add`]) and
//! 8-bit activations as a Rust table kernel ([`crate::kernels::lut`]); 4-D
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
//! touches them. Unsafe code is confined to the calls into JIT code (each kernel's `run`, and
//! the direct calls of `runtime.rs` on offsets `direct.rs` checked at compile time), the
//! conversion of JIT code to functions (`jit.rs`) and the Rust intrinsics loops (`add.rs`,
//! `lanes.rs`, `depthwise.rs`). A wrong input is an error, never an out-of-bounds access.

use crate::direct::{Calls, StepView};
use crate::error::{CodegenError, err};
use crate::layout::Layout;
use crate::lower::lower;
use crate::plan::{Buffer, Plan, plan};
use crate::runtime::{ARENA, Arena, Run, Slots, TENSORS, ThreadArena};
use crate::steps::{Activation, Arg, Builder, Op};
use crate::target::CodegenOptions;
use qc_ir::eval::check_input;
use qc_ir::{Dim, ElemType, Graph, Tensor, TensorType};
use std::sync::Arc;

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
    pub(crate) name: String,
    /// Each step with a label for profiles (`%value = op loc("...")`) and its location name.
    pub(crate) ops: Vec<((String, String), Op)>,
    pub(crate) activations: Vec<Activation>,
    pub(crate) plan: Plan,
    /// Tensor slots: inputs first, then constants, then what steps compute.
    pub(crate) tensor_slots: usize,
    /// Per step: the computed tensor slots (numbered from [`CompiledModel::first_computed`]) no
    /// later step reads, dropped after it.
    pub(crate) frees: Vec<Vec<usize>>,
    /// The bytes of the windowed kernels' buffers, after the activations in the arena.
    pub(crate) scratch: usize,
    /// A batch-1 run's steps as direct calls where they can be (see [`crate::direct`]).
    pub(crate) direct: Option<Calls>,
    /// This model among those compiled in the process: the arena notes whose buffers it holds.
    pub(crate) id: u64,
    pub(crate) consts: Vec<(usize, Arc<Tensor>)>,
    pub(crate) inputs: Vec<(TensorType, String)>,
    pub(crate) outputs: Vec<(Arg, ElemType)>,
    /// The batch: the first input's leading dim when it is fixed (else the run's).
    pub(crate) fixed_batch: Option<usize>,
    pub(crate) kernels: usize,
    /// The largest values, one per count of dynamic dims: (its name, bytes with every dynamic dim
    /// 1, how many dims are dynamic), checked against the batch before a run allocates anything.
    pub(crate) largest: Vec<(String, u64, u32)>,
    /// The ISA level its kernels were built for.
    pub(crate) isa: crate::target::Isa,
    /// The threads a run splits its batch over, and the workers besides the caller's (see
    /// `threads.rs`).
    pub(crate) threads: usize,
    pub(crate) pool: Option<rayon::ThreadPool>,
}

impl CompiledModel {
    /// Compiles a verified graph whose weights are loaded, for the host's best ISA level.
    pub fn compile(g: &Graph) -> Result<CompiledModel, CodegenError> {
        CompiledModel::compile_with(g, &CodegenOptions::host())
    }

    /// Compiles a verified graph whose weights are loaded, for `options`' ISA level and threads;
    /// an error when this CPU cannot run that level, for 0 threads, or for more than one when
    /// the model's images are not independent (then a batch cannot be split).
    pub fn compile_with(g: &Graph, options: &CodegenOptions) -> Result<CompiledModel, CodegenError> {
        if !options.isa.on_host() {
            return Err(err(format!("this CPU cannot run ISA level {}", options.isa)));
        }
        if options.threads == 0 {
            return Err(err("a model runs on at least one thread"));
        }
        if options.threads > 1 {
            crate::threads::images_apart(g).map_err(|e| {
                err(format!("{} threads split a batch, but @{}'s images are not independent: {e}", options.threads, g.name))
            })?;
        }
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
        let (lowered, consts, kernels) = lower(g, fixed_batch, options.isa)?;
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
        // Computed tensors are dropped after the last step that reads them.
        let first_computed = g.params().len() + const_slots.len();
        let mut frees = vec![Vec::new(); steps];
        for (&slot, &last) in &b.slot_last_read {
            if slot >= first_computed && last < steps {
                frees[last].push(slot - first_computed);
            }
        }
        Ok(CompiledModel {
            direct,
            name: g.name.clone(),
            ops: b.ops,
            activations: b.activations,
            plan,
            tensor_slots: b.tensor_slots,
            frees,
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
            isa: options.isa,
            threads: options.threads,
            pool: crate::threads::pool(options.threads).map_err(err)?,
        })
    }

    /// The constant in tensor slot `slot`, if it holds one (their slots follow the inputs', in
    /// order).
    pub(crate) fn constant(&self, slot: usize) -> Option<&Arc<Tensor>> {
        self.consts.get(slot.checked_sub(self.inputs.len())?).filter(|(s, _)| *s == slot).map(|(_, t)| t)
    }

    /// The first tensor slot a run computes (inputs and constants come before).
    pub(crate) fn first_computed(&self) -> usize {
        self.inputs.len() + self.consts.len()
    }

    /// The dims of the first input (0 for a dynamic dim).
    pub fn input_dims(&self) -> Vec<usize> {
        self.inputs.first().map_or(Vec::new(), |(t, _)| t.dims.iter().map(|d| d.fixed().unwrap_or(0) as usize).collect())
    }

    /// The ISA level its kernels were built for.
    pub fn isa(&self) -> crate::target::Isa {
        self.isa
    }

    /// How many ops run as JIT-compiled kernels.
    pub fn kernel_count(&self) -> usize {
        self.kernels
    }

    /// Each step with the kernel and path that runs it, in order: `(label, description)`, e.g.
    /// `("%c1 = conv2d loc(\"conv1\")", "conv, taps in place, gemm vnni")`. What the codegen case
    /// files snapshot per ISA level.
    pub fn kernels(&self) -> Vec<(String, String)> {
        self.ops.iter().map(|((label, _), op)| (label.clone(), op.describe())).collect()
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
        match inputs.first().and_then(|t| t.shape().first()) {
            Some(&n) if self.threads > 1 && n > 1 && inputs.len() == self.inputs.len() => self.run_split(inputs, n, self.threads),
            _ => self.run_one(inputs),
        }
    }

    /// [`CompiledModel::run`] on the calling thread.
    pub(crate) fn run_one(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, CodegenError> {
        self.with_run(inputs, |run| {
            match &self.direct {
                Some(calls) if run.arena.batch == 1 => run.calls(calls)?,
                _ => {
                    for (i, (_, op)) in self.ops.iter().enumerate() {
                        run.exec(op)?;
                        run.free_after(i);
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
                let started = calls.map(|calls| run.start_calls(calls)).transpose()?;
                for (i, (_, op)) in self.ops.iter().enumerate() {
                    let t = std::time::Instant::now();
                    match &started {
                        Some(started) => run.call(started, i)?,
                        None => run.exec(op)?,
                    }
                    times[i].push(t.elapsed().as_secs_f64());
                    ops[i] = run.ops(op)?;
                    run.free_after(i);
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
                let (label, loc, kernel) = (label.clone(), loc.clone(), op.describe());
                StepProfile { label, loc, kernel, jit: op.jit(), seconds: t[t.len() / 2], ops }
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
            Op::Gemm { kernel, a, y, rows } => (kernel.direct_rows(*rows), *a, *y, 0..0),
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

/// One step's share of a run.
#[derive(Clone, Debug)]
pub struct StepProfile {
    /// `%value = op loc("...")`.
    pub label: String,
    /// The op's source location name (empty when it has none).
    pub loc: String,
    /// The kernel and path that run it, as [`CompiledModel::kernels`] describes them.
    pub kernel: String,
    /// Whether a JIT kernel runs it (else Rust code).
    pub jit: bool,
    /// Median seconds.
    pub seconds: f64,
    /// Integer operations (2 · multiply-adds) of a kernel; 0 for other steps.
    pub ops: u64,
}
