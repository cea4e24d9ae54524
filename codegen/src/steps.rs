//! The step list: lowered ops on arena activations (with their layouts, and the layout changes
//! a consumer needs) and tensor slots, and every activation buffer's lifetime for the plan.

use crate::error::{CodegenError, err};
use crate::kernel::WindowKernel;
use crate::kernels::add::AddQ;
use crate::kernels::f32::F32Kernel;
use crate::kernels::gemm::GemmKernel;
use crate::kernels::integer::IntegerProduct;
use crate::kernels::lut::Lut;
use crate::kernels::mul::MulQ;
use crate::kernels::pool::GlobalMean;
use crate::kernels::quant::{DequantizeKernel, Q8, QuantizeKernel};
use crate::layout::Layout;
use crate::lower::{Lowered, per_image};
use qc_ir::{Attrs, Graph, OpKind, Tensor, TensorType, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// An 8-bit activation in the arena: its dims after the batch, layout, bytes per
/// image and the plan buffer that holds it (shared by a reshape and its input).
pub(crate) struct Activation {
    pub(crate) dims: Vec<usize>,
    pub(crate) layout: Layout,
    pub(crate) bytes: usize,
    pub(crate) buffer: usize,
}

/// Where a step reads a value from.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
    /// A tensor slot.
    T(usize),
    /// An activation.
    A(usize),
}

/// One step of a run.
pub(crate) enum Op {
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
    Mul {
        kernel: MulQ,
        a: usize,
        b: usize,
        y: usize,
        /// The layout of the result (and of the large operand of a gated mul).
        layout: Layout,
    },
    Gemm {
        kernel: GemmKernel,
        a: usize,
        y: usize,
        /// Rows per image.
        rows: usize,
    },
    F32 {
        kernel: Box<dyn F32Kernel>,
        args: Vec<(Arg, TensorType)>,
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
    pub(crate) fn jit(&self) -> bool {
        match self {
            Op::Gemm { .. } => true,
            Op::Window { kernel, .. } => kernel.jit(),
            Op::Quantize { kernel, .. } => kernel.is_some(),
            Op::Dequantize { kernel, .. } => kernel.is_some(),
            Op::Mean { kernel, .. } => kernel.jit(),
            Op::Integer { .. } | Op::Dequantized { .. } | Op::F32 { .. } => true,
            _ => false,
        }
    }

    /// Which kernel and path runs the step (see [`crate::CompiledModel::kernels`]).
    pub(crate) fn describe(&self) -> String {
        let jit = |on: bool| if on { "jit" } else { "rust loop" };
        match self {
            Op::Gemm { kernel, .. } => format!("gemm {}", kernel.path().name()),
            Op::Window { kernel, .. } => kernel.describe(),
            Op::Mean { kernel, .. } => format!("global mean, {}", jit(kernel.jit())),
            Op::Add { kernel, .. } => format!("add, {}", kernel.describe()),
            Op::Lut { kernel, .. } => kernel.describe(),
            Op::F32 { kernel, .. } => kernel.describe().into(),
            Op::Mul { kernel, .. } => kernel.describe().into(),
            Op::Quantize { kernel, .. } => format!("quantize, {}", jit(kernel.is_some())),
            Op::Dequantize { kernel, .. } => format!("dequantize, {}", jit(kernel.is_some())),
            Op::Integer { product, .. } => format!("integer product, {}", product.describe()),
            Op::Dequantized { product, .. } => format!("integer product with its f32 tail, {}", product.describe()),
            Op::DynamicQuantize { .. } => "dynamic quantize, rust loop".into(),
            Op::Convert { .. } => "layout change".into(),
            Op::Import { .. } => "tensor to bytes".into(),
            Op::Eval { .. } => "evaluator".into(),
        }
    }
}

/// Builds the step list: activations and their layouts, layout changes where a consumer needs
/// the other one, tensor slots, and every buffer's lifetime.
pub(crate) struct Builder<'g> {
    pub(crate) g: &'g Graph,
    pub(crate) fixed_batch: Option<usize>,
    pub(crate) ops: Vec<((String, String), Op)>,
    pub(crate) activations: Vec<Activation>,
    /// The activation holding a value in a layout.
    pub(crate) activation_of: HashMap<(ValueId, Layout), usize>,
    pub(crate) tensor: HashMap<ValueId, usize>,
    pub(crate) tensor_slots: usize,
    /// The windowed kernels' buffers so far, in bytes.
    pub(crate) scratch: usize,
    /// Per buffer: bytes per image, first step, last step.
    pub(crate) lifetimes: Vec<(usize, usize, usize)>,
    /// Per tensor slot read by a step: the last step that reads it (`usize::MAX`: an output).
    pub(crate) slot_last_read: HashMap<usize, usize>,
}

impl<'g> Builder<'g> {
    pub(crate) fn new(g: &'g Graph, fixed_batch: Option<usize>) -> Builder<'g> {
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
            slot_last_read: HashMap::new(),
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
    pub(crate) fn read(&mut self, arg: Arg, step: usize) {
        match arg {
            Arg::A(a) => {
                let life = &mut self.lifetimes[self.activations[a].buffer];
                life.2 = life.2.max(step);
            }
            Arg::T(t) => {
                let last = self.slot_last_read.entry(t).or_insert(step);
                *last = (*last).max(step);
            }
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
    pub(crate) fn activation(&mut self, v: ValueId, layout: Layout) -> Result<usize, CodegenError> {
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
                self.push(format!("{} → bytes", self.g.display_value(v)), Op::Import { x, y }, &[Arg::T(x)]);
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

    pub(crate) fn add(&mut self, (label, loc): (String, String), op: Lowered) -> Result<(), CodegenError> {
        let (op, args) = match op {
            Lowered::Quantize { q, kernel, x, y } => {
                let x = *self.tensor.get(&x).ok_or_else(|| err("quantize reads a value before it is computed"))?;
                (Op::Quantize { q, kernel, x, y: self.new_activation(y, Layout::Nchw, None)? }, vec![Arg::T(x)])
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
            Lowered::Mul { kernel, a, b, y } => {
                // The gate of a gated mul (`[c]` per image) is the same bytes in either layout.
                let large = [a, b][kernel.large_operand().unwrap_or(0)];
                let layout = self.present_layout(large);
                let (a, b) = (self.activation(a, layout)?, self.activation(b, layout)?);
                (Op::Mul { kernel, a, b, y: self.new_activation(y, layout, None)?, layout }, vec![Arg::A(a), Arg::A(b)])
            }
            Lowered::Gemm { kernel, a, y, rows } => {
                let a = self.activation(a, Layout::Nchw)?;
                (Op::Gemm { kernel, a, y: self.new_activation(y, Layout::Nchw, None)?, rows }, vec![Arg::A(a)])
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
            Lowered::F32 { kernel, args, y } => {
                let args = args
                    .iter()
                    .map(|&a| Ok((self.eval_arg(a)?, self.g.ty(a).clone())))
                    .collect::<Result<Vec<_>, CodegenError>>()?;
                let read = args.iter().map(|(a, _)| *a).collect();
                (Op::F32 { kernel, args, y: self.tensor_slot(y) }, read)
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
