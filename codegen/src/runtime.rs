//! The run loop: this thread's arena and tensor slots, and each step's execution on them —
//! through [`Run::exec`], or as a direct call at batch 1 (see [`crate::direct`]).

use crate::dequant_chain;
use crate::direct::{Call, Calls, DirectFn};
use crate::error::{CodegenError, run_err};
use crate::kernels::gemm::{bytes_tensor, shaped, tensor_bytes};
use crate::kernels::window::halo::Scratch;
use crate::layout::{Layout, transpose};
use crate::model::CompiledModel;
use crate::steps::{Arg, Op};
use qc_ir::eval::{dequantize_value, eval_op_multi, quantize_value};
use qc_ir::{ElemType, Tensor, TensorType};

/// A thread's arena: activations, then the windowed kernels' buffers of the model that last ran.
pub(crate) struct ThreadArena {
    pub(crate) bytes: Vec<u8>,
    /// The model and batch whose kernels' buffers it holds, as the last run that ended well
    /// left them.
    pub(crate) owner: Option<(u64, usize)>,
}

thread_local! {
    /// A thread's arena, grown to the largest run it has seen and reused.
    pub(crate) static ARENA: std::cell::RefCell<ThreadArena> = const { std::cell::RefCell::new(ThreadArena { bytes: Vec::new(), owner: None }) };
    /// A thread's tensor slots (see [`Slots`]), empty between runs.
    pub(crate) static TENSORS: std::cell::RefCell<Vec<Option<Tensor>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Proof that [`Run::start_calls`] checked the arena for these calls and wrote their buffers'
/// borders; only it makes one.
pub(crate) struct Started<'c> {
    calls: &'c Calls,
}

/// One run's state: this thread's arena and the tensor slots, apart so that a step can read a
/// tensor while it writes the arena.
pub(crate) struct Run<'a> {
    pub(crate) arena: Arena<'a>,
    pub(crate) slots: Slots<'a>,
}

/// What a step reads (activations), writes (an activation) and keeps (its buffer) in the arena.
type StepIo<'a, const N: usize> = ([&'a [u8]; N], &'a mut [u8], Scratch<'a>);

/// This thread's arena at the run's batch.
pub(crate) struct Arena<'a> {
    pub(crate) model: &'a CompiledModel,
    /// The activations, then from `scratch_at` on the windowed kernels' buffers.
    pub(crate) bytes: &'a mut [u8],
    pub(crate) batch: usize,
    pub(crate) scratch_at: usize,
    /// Whether the kernels' buffers may hold anything (see [`Scratch`]).
    pub(crate) fresh: bool,
}

/// The tensor slots of a run.
pub(crate) struct Slots<'a> {
    pub(crate) model: &'a CompiledModel,
    /// The caller's inputs: tensor slots `0..inputs.len()`.
    pub(crate) inputs: &'a [Tensor],
    /// The tensors steps compute: slots from [`CompiledModel::first_computed`] on.
    pub(crate) tensors: &'a mut Vec<Option<Tensor>>,
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
    pub(crate) fn outputs(&mut self) -> Result<Vec<Tensor>, CodegenError> {
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
    pub(crate) fn calls(&mut self, calls: &Calls) -> Result<(), CodegenError> {
        let started = self.start_calls(calls)?;
        for i in 0..calls.calls.len() {
            self.call(&started, i)?;
            self.free_after(i);
        }
        Ok(())
    }

    /// Checks that the arena is the batch-1 arena that `calls` were made for, and writes the
    /// borders of their kernels' buffers when the buffers are fresh (the steps run by
    /// [`Run::exec`] write their own). The token it returns is what [`Run::call`] takes.
    pub(crate) fn start_calls<'c>(&mut self, calls: &'c Calls) -> Result<Started<'c>, CodegenError> {
        if self.arena.batch != 1 || self.arena.bytes.len() < calls.arena {
            return Err(run_err("direct calls need an arena at batch 1"));
        }
        if self.arena.fresh {
            calls.pad_buffers(self.arena.bytes);
        }
        Ok(Started { calls })
    }

    /// Runs call `i` of a batch-1 run that [`Run::start_calls`] started.
    #[inline(always)]
    pub(crate) fn call(&mut self, started: &Started<'_>, i: usize) -> Result<(), CodegenError> {
        let call = started.calls.calls.get(i).ok_or_else(|| run_err("no such direct call"))?;
        // What `start_calls` checked, again for this run (a token may outlive the run it was
        // made on): two comparisons, against the calls' out-of-bounds writes.
        if self.arena.batch != 1 || self.arena.bytes.len() < started.calls.arena {
            return Err(run_err("direct calls need an arena at batch 1"));
        }
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
                // these offsets inside the arena's first part (whose length is checked just
                // above), the result apart from both operands, so the shared and the
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
            // (checked just above), the input and output apart; the buffer's border was written
            // by `start_calls` when the buffers were fresh (a wrong border gives wrong bytes,
            // never an access outside the buffer); the kernels read and write nothing else but
            // their own tables.
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

    /// Drops the tensors that no step after step `i` reads.
    pub(crate) fn free_after(&mut self, i: usize) {
        for &slot in self.arena.model.frees.get(i).map_or(&[][..], Vec::as_slice) {
            if let Some(t) = self.slots.tensors.get_mut(slot) {
                *t = None;
            }
        }
    }

    /// Runs one step.
    pub(crate) fn exec(&mut self, op: &Op) -> Result<(), CodegenError> {
        let batch = self.arena.batch;
        match op {
            Op::Gemm { kernel, a, y, rows } => {
                let ([x], out) = self.arena.io([*a], *y)?;
                kernel.run(x, batch * rows, out).map_err(run_err)?;
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
            Op::Mul { kernel, a, b, y, layout } => {
                let ([a, b], out) = self.arena.io([*a, *b], *y)?;
                kernel.run(a, b, out, *layout).map_err(run_err)?;
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
                    (Some(a), None) => crate::kernels::quant::lanes::quantize(a, q.scale, q.zp, lo, hi, out),
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
                let [q, s, z] = crate::kernels::quant::lanes::dynamic_quantize(a);
                for (slot, t) in y.iter().zip([q, s, z]) {
                    self.slots.store(*slot, t)?;
                }
            }
            Op::F32 { kernel, args, y } => {
                let vals: Vec<std::borrow::Cow<'_, Tensor>> =
                    args.iter().map(|(a, t)| self.arg_tensor(*a, t)).collect::<Result<_, _>>()?;
                let refs: Vec<&Tensor> = vals.iter().map(|v| v.as_ref()).collect();
                let t = kernel.run(&refs).map_err(run_err)?;
                self.slots.store(*y, t)?;
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
    pub(crate) fn ops(&self, op: &Op) -> Result<u64, CodegenError> {
        let batch = self.arena.batch;
        let len = |(arg, _): &(Arg, TensorType)| match *arg {
            Arg::T(s) => self.slots.tensor(s).map(|t| t.len()),
            Arg::A(a) => Ok(self.arena.range(a).len()),
        };
        Ok(match op {
            Op::Gemm { kernel, rows, .. } => 2 * (batch * rows * kernel.columns() * kernel.depth()) as u64,
            Op::Window { kernel, .. } => kernel.ops(batch),
            Op::Integer { product, args, .. } | Op::Dequantized { product, args, .. } => product.ops(len(&args[0])?),
            Op::F32 { kernel, args, .. } => kernel.ops(match args.first() {
                Some(a) => len(a)?,
                None => 0,
            }),
            _ => 0,
        })
    }
}
