//! `CompiledModel`: a verified graph compiled for execution. Integer gemm, matmul and
//! convolution (groups = 1) run as JIT-compiled GEMM kernels specialized to their layer (a
//! convolution first gathers channels-last input patches, padding with the input's zero point);
//! integer depthwise convolution (row runs per tap) and same-shape add run as Rust kernels on bytes;
//! every other op runs the reference evaluator's implementation. Results equal the evaluator's
//! bit for bit (tested on the corpus).
//!
//! `run` takes `&self` and keeps its working values on its own stack frame, with convolution
//! scratch (patches, GEMM product) owned by the calling thread, so one model can run on many
//! threads at once.

use crate::gemm::{GemmKernel, GemmSpec, bytes_tensor, tensor_bytes};
use qc_ir::eval::{check_input, dequantize_value, eval_op_multi, quantize_value};
use qc_ir::{Attr, Attrs, ConstValue, Dim, ElemType, Graph, OpKind, Tensor, TensorType, ValueId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Add;
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

/// How a convolution's input patches are gathered into GEMM rows. Each image is first made
/// channels-last (`[h·w][c]`, with one more pixel of zero points for the padding), so a patch row
/// is `kh·kw` runs of `c` contiguous bytes; the weights are flattened in the same
/// `[kh][kw][c]` order. Computed once, when the model is compiled.
struct Im2col {
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    taps: usize,
    /// For every (output position, tap), the input pixel it reads, or `h·w` for the padding.
    pixels: Vec<u32>,
    pad_value: u8,
}

/// A depthwise integer convolution (one input channel per output channel), in Rust.
struct Depthwise {
    c: usize,
    plane: usize,
    positions: usize,
    taps: usize,
    /// The in-bounds part of every (tap, output row), as runs over contiguous outputs; padded
    /// taps are left out (they read `x = zp_x`, which adds 0).
    runs: Vec<TapRun>,
    /// The input step between neighbouring outputs of a run (the horizontal stride).
    step: usize,
    /// `w − zp_w`, `[C][taps]`.
    weights: Vec<i32>,
    bias: Vec<i32>,
    requant: Vec<qc_ir::requant::Requant>,
    zp_x: i32,
    x_signed: bool,
    zp_y: i32,
    lo: i32,
    hi: i32,
    out_dims: [usize; 3],
}

/// `acc[out..out + len] += w[tap] · x[src + i·step]`, one tap over part of one output row.
struct TapRun {
    tap: usize,
    out: usize,
    src: usize,
    len: usize,
}

/// An integer add of two same-shape per-tensor quantized tensors, in Rust:
/// `clamp(rne((s_a(a − z_a) + s_b(b − z_b)) / s_y) + z_y)` in f32, as the evaluator.
struct AddQ {
    a: (f32, i32, bool),
    b: (f32, i32, bool),
    y: (f32, i32),
    lo: i32,
    hi: i32,
}

/// Per-tensor 8-bit quantization parameters for the byte steps.
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

/// Max pooling over 8-bit planes through a window table (the padding reads the type's lowest
/// value, which never wins).
struct MaxPool8 {
    plane: usize,
    positions: usize,
    taps: usize,
    gather: Vec<u32>,
    signed: bool,
    out_dims: [usize; 2],
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
    MaxPool {
        spec: Box<MaxPool8>,
        x: Slot,
        out: Slot,
    },
    Reshape {
        dims: Vec<Dim>,
        x: Slot,
        out: Slot,
    },
    Depthwise {
        spec: Box<Depthwise>,
        x: Slot,
        out: Slot,
    },
    AddQ {
        spec: AddQ,
        a: Slot,
        b: Slot,
        out: Slot,
    },
    Gemm {
        kernel: GemmKernel,
        a: Slot,
        out: Slot,
    },
    Conv {
        kernel: GemmKernel,
        geometry: Im2col,
        x: Slot,
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
                    let (kernel, geometry) =
                        conv_kernel(&node.attrs, &tys, w, bias.as_deref(), out_ty).map_err(|e| err(format!("{}: {e}", who())))?;
                    Some(Step::Conv { kernel, geometry, x: slot(node.operands[0]), out: slot(node.results[0]) })
                }
                (OpKind::Quantize, _, _) if tys[0].elem.is_f32() => {
                    Q8::of(out_ty).map(|q| Step::Quantize { q, x: slot(node.operands[0]), out: slot(node.results[0]) })
                }
                (OpKind::Dequantize, _, _) if out_ty.elem.is_f32() => {
                    Q8::of(tys[0]).map(|q| Step::Dequantize { q, x: slot(node.operands[0]), out: slot(node.results[0]) })
                }
                (OpKind::MaxPool, true, _) => max_pool8(&node.attrs, tys[0], out_ty).map(|spec| Step::MaxPool {
                    spec: Box::new(spec),
                    x: slot(node.operands[0]),
                    out: slot(node.results[0]),
                }),
                (OpKind::Reshape | OpKind::Flatten | OpKind::Squeeze | OpKind::Unsqueeze, true, _)
                    if node.operands.len() == 1
                        && Q8::of(tys[0]).is_some()
                        && out_ty.dims.iter().filter(|d| **d == Dim::Dynamic).count() <= 1 =>
                {
                    Some(Step::Reshape { dims: out_ty.dims.clone(), x: slot(node.operands[0]), out: slot(node.results[0]) })
                }
                (OpKind::Conv2d, true, Some(w)) if node.attrs.int("groups", 1) > 1 => {
                    depthwise(&node.attrs, &tys, w, bias.as_deref(), out_ty).map(|spec| Step::Depthwise {
                        spec: Box::new(spec),
                        x: slot(node.operands[0]),
                        out: slot(node.results[0]),
                    })
                }
                (OpKind::Add, true, _) if tys[0].dims == tys[1].dims && tys[0].dims == out_ty.dims => {
                    add_q(&node.attrs, &tys, out_ty).map(|spec| Step::AddQ {
                        spec,
                        a: slot(node.operands[0]),
                        b: slot(node.operands[1]),
                        out: slot(node.results[0]),
                    })
                }
                _ => None,
            };
            let loc = if node.loc.name.is_empty() { String::new() } else { format!(" loc(\"{}\")", node.loc.name) };
            let label = format!("{} = {}{loc}", g.display_value(node.results[0]), node.kind);
            let step = match kernel_step {
                Some(s) => {
                    kernels += usize::from(matches!(s, Step::Gemm { .. } | Step::Conv { .. }));
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
                StepProfile {
                    label: label.clone(),
                    loc: loc.clone(),
                    jit: matches!(step, Step::Gemm { .. } | Step::Conv { .. }),
                    seconds: t[t.len() / 2],
                    ops,
                }
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

/// A working value: a tensor, or the bytes of an 8-bit quantized tensor with its shape — what the
/// kernels read and write, so that nothing is converted between two kernels.
#[derive(Clone)]
enum Val {
    T(Arc<Tensor>),
    B(Arc<Vec<u8>>, Vec<usize>),
}

type Slots = Vec<Option<Val>>;

fn val(slots: &Slots, s: Slot) -> Result<&Val, CodegenError> {
    slots[s].as_ref().ok_or_else(|| err("a value was read before it was computed"))
}

/// The bytes and shape of an 8-bit value.
fn bytes(slots: &Slots, s: Slot) -> Result<(Arc<Vec<u8>>, Vec<usize>), CodegenError> {
    match val(slots, s)? {
        Val::B(b, shape) => Ok((b.clone(), shape.clone())),
        Val::T(t) => Ok((Arc::new(tensor_bytes(t).ok_or_else(|| err("a kernel input is not 8-bit"))?), t.shape().to_vec())),
    }
}

/// A value as a tensor of element type `elem`.
fn tensor(slots: &Slots, s: Slot, elem: &ElemType) -> Result<Arc<Tensor>, CodegenError> {
    match val(slots, s)? {
        Val::T(t) => Ok(t.clone()),
        Val::B(b, shape) => Ok(Arc::new(bytes_tensor(b.as_ref().clone(), shape, elem))),
    }
}

/// Runs one step; returns the integer operations a kernel did.
fn exec(step: &Step, slots: &mut Slots) -> Result<u64, CodegenError> {
    Ok(match step {
        Step::Gemm { kernel, a, out, .. } => {
            let (x, shape) = bytes(slots, *a)?;
            let (m, n) = (shape[0], kernel.columns());
            let mut y = vec![0u8; m * n];
            kernel.run(&x, m, &mut y).map_err(err)?;
            slots[*out] = Some(Val::B(Arc::new(y), vec![m, n]));
            2 * (m * n * kernel.depth()) as u64
        }
        Step::Conv { kernel, geometry: g, x, out, .. } => {
            let (bytes, shape) = bytes(slots, *x)?;
            let batch = shape[0];
            let o = kernel.columns();
            let rows = g.oh * g.ow;
            let kk = g.c * g.taps;
            // Every image's patches in one matrix, so that one kernel call covers the batch.
            let image = g.c * g.h * g.w;
            if bytes.len() != batch * image {
                return Err(err("a convolution input does not have its compiled shape"));
            }
            let mut y = vec![0u8; batch * o * rows];
            CONV_SCRATCH.with(|scratch| -> Result<(), CodegenError> {
                let mut scratch = scratch.borrow_mut();
                let ConvScratch { hwc, patches, product } = &mut *scratch;
                let patches = grown(patches, batch * rows * kk);
                let hwc = grown(hwc, image + g.c);
                hwc[image..].fill(g.pad_value);
                for (img, dst) in bytes.chunks_exact(image).zip(patches.chunks_exact_mut(rows * kk)) {
                    im2col(img, g, hwc, dst);
                }
                let product = grown(product, batch * rows * o);
                kernel.run(patches, batch * rows, product).map_err(err)?;
                // [batch·rows, O] → [batch, O, rows] (NCHW).
                for (src, dst) in product.chunks_exact(rows * o).zip(y.chunks_exact_mut(o * rows)) {
                    transpose(src, rows, o, dst);
                }
                Ok(())
            })?;
            slots[*out] = Some(Val::B(Arc::new(y), vec![batch, o, g.oh, g.ow]));
            2 * (batch * rows * o * kk) as u64
        }
        Step::Quantize { q, x, out } => {
            let t = tensor(slots, *x, &ElemType::Scalar(qc_ir::ScalarType::F32))?;
            let a = t.as_f32().ok_or_else(|| err("quantize reads f32"))?;
            let (lo, hi) = if q.signed { (-128, 127) } else { (0, 255) };
            let y: Vec<u8> = a.iter().map(|&v| quantize_value(v, q.scale, q.zp, lo, hi) as u8).collect();
            slots[*out] = Some(Val::B(Arc::new(y), a.shape().to_vec()));
            0
        }
        Step::Dequantize { q, x, out } => {
            let (b, shape) = bytes(slots, *x)?;
            let y: Vec<f32> = b.iter().map(|&v| dequantize_value(q.value(v), q.scale, q.zp)).collect();
            let t = Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), y).map_err(|e| err(e.to_string()))?);
            slots[*out] = Some(Val::T(Arc::new(t)));
            0
        }
        Step::MaxPool { spec: m, x, out } => {
            let (b, shape) = bytes(slots, *x)?;
            let planes = b.len() / m.plane;
            let mut y = vec![0u8; planes * m.positions];
            // Compare as i16 (i8 or u8 values fit); the padding index reads the lowest value.
            let lowest = if m.signed { i8::MIN as i16 } else { 0 };
            let mut ext = vec![lowest; m.plane + 1];
            let mut best = vec![lowest; m.positions];
            for (plane, dst) in b.chunks_exact(m.plane).zip(y.chunks_exact_mut(m.positions)) {
                for (e, &v) in ext.iter_mut().zip(plane) {
                    *e = if m.signed { v as i8 as i16 } else { v as i16 };
                }
                best.fill(lowest);
                for t in 0..m.taps {
                    for (bv, &g) in best.iter_mut().zip(&m.gather[t * m.positions..(t + 1) * m.positions]) {
                        *bv = (*bv).max(ext[g as usize]);
                    }
                }
                for (o, &v) in dst.iter_mut().zip(&best) {
                    *o = v as u8;
                }
            }
            slots[*out] = Some(Val::B(Arc::new(y), vec![shape[0], shape[1], m.out_dims[0], m.out_dims[1]]));
            0
        }
        Step::Reshape { dims, x, out } => {
            let (b, _) = bytes(slots, *x)?;
            let fixed: usize = dims.iter().filter_map(|d| d.fixed()).map(|n| n as usize).product();
            if fixed == 0 || b.len() % fixed != 0 {
                return Err(err("a reshape does not divide its input"));
            }
            let shape: Vec<usize> = dims.iter().map(|d| d.fixed().map_or(b.len() / fixed, |n| n as usize)).collect();
            slots[*out] = Some(Val::B(b, shape));
            0
        }
        Step::Depthwise { spec: d, x, out, .. } => {
            let (bytes, shape) = bytes(slots, *x)?;
            let batch = shape[0];
            if bytes.len() != batch * d.c * d.plane {
                return Err(err("a convolution input does not have its compiled shape"));
            }
            let mut y = vec![0u8; batch * d.c * d.positions];
            // One channel plane widened to i32 minus the zero point.
            let mut xz = vec![0i32; d.plane];
            let mut acc = vec![0i32; d.positions];
            for (img, dst) in bytes.chunks_exact(d.c * d.plane).zip(y.chunks_exact_mut(d.c * d.positions)) {
                for ch in 0..d.c {
                    for (v, &b) in xz.iter_mut().zip(&img[ch * d.plane..(ch + 1) * d.plane]) {
                        *v = if d.x_signed { b as i8 as i32 } else { b as i32 } - d.zp_x;
                    }
                    acc.fill(d.bias[ch]);
                    let weights = &d.weights[ch * d.taps..(ch + 1) * d.taps];
                    for r in &d.runs {
                        let (w, acc) = (weights[r.tap], &mut acc[r.out..r.out + r.len]);
                        if d.step == 1 {
                            for (a, &v) in acc.iter_mut().zip(&xz[r.src..r.src + r.len]) {
                                *a = a.wrapping_add(w.wrapping_mul(v));
                            }
                        } else {
                            for (a, &v) in acc.iter_mut().zip(xz[r.src..].iter().step_by(d.step)) {
                                *a = a.wrapping_add(w.wrapping_mul(v));
                            }
                        }
                    }
                    let r = d.requant[ch];
                    for (o, &a) in dst[ch * d.positions..(ch + 1) * d.positions].iter_mut().zip(&acc) {
                        *o = r.apply(a, d.zp_y, d.lo, d.hi) as u8;
                    }
                }
            }
            slots[*out] = Some(Val::B(Arc::new(y), vec![batch, d.out_dims[0], d.out_dims[1], d.out_dims[2]]));
            2 * (batch * d.c * d.positions * d.taps) as u64
        }
        Step::AddQ { spec: q, a, b, out, .. } => {
            let ((ba, shape), (bb, _)) = (bytes(slots, *a)?, bytes(slots, *b)?);
            if ba.len() != bb.len() {
                return Err(err("add operands differ in size"));
            }
            // s·(v − z) for every byte value: the same f32 operations as element by element.
            let table = |(s, z, signed): (f32, i32, bool)| -> Vec<f32> {
                (0..=255u8).map(|v| s * (if signed { v as i8 as i32 } else { v as i32 } - z) as f32).collect()
            };
            let (ta, tb) = (table(q.a), table(q.b));
            let (sy, zy) = (q.y.0, q.y.1 as f32);
            let (lo, hi) = (q.lo as f32, q.hi as f32);
            let y: Vec<u8> = ba
                .iter()
                .zip(bb.iter())
                .map(|(&p, &r)| {
                    qc_ir::requant::round_even((ta[p as usize] + tb[r as usize]) / sy).add(zy).clamp(lo, hi) as i32 as u8
                })
                .collect();
            slots[*out] = Some(Val::B(Arc::new(y), shape));
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

/// The window of a convolution or pooling over one `h × w` plane: for every (tap, output
/// position), the index in the plane that the tap reads, or `h · w` where it falls in the padding.
/// Tap-major, so that kernels sweep all positions for one tap at a time.
/// A sliding window's `(strides, [top, left] pads, dilations)`, with ONNX's defaults.
fn window_geometry(attrs: &Attrs) -> Option<([isize; 2], [isize; 2], [isize; 2])> {
    let ints = |k: &str, n: usize, d: u64| qc_ir::infer::ints_or(attrs, k, n, d).ok();
    let (s, p, d) = (ints("strides", 2, 1)?, ints("pads", 4, 0)?, ints("dilations", 2, 1)?);
    Some(([s[0] as isize, s[1] as isize], [p[0] as isize, p[1] as isize], [d[0] as isize, d[1] as isize]))
}

fn window_taps(attrs: &Attrs, (h, w): (usize, usize), (kh, kw): (usize, usize), (oh, ow): (usize, usize)) -> Option<Vec<u32>> {
    let (s, p, dil) = window_geometry(attrs)?;
    let mut taps = vec![(h * w) as u32; kh * kw * oh * ow];
    for oy in 0..oh {
        let y0 = oy as isize * s[0] - p[0];
        for ox in 0..ow {
            let x0 = ox as isize * s[1] - p[1];
            for ky in 0..kh {
                let iy = y0 + ky as isize * dil[0];
                for kx in 0..kw {
                    let ix = x0 + kx as isize * dil[1];
                    if iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < w {
                        taps[(ky * kw + kx) * oh * ow + oy * ow + ox] = (iy as usize * w + ix as usize) as u32;
                    }
                }
            }
        }
    }
    Some(taps)
}

/// The Rust kernel of an integer depthwise conv2d (groups = C_in = C_out), or `None`.
fn depthwise(attrs: &Attrs, tys: &[&TensorType], w: &Tensor, bias: Option<&Tensor>, out: &TensorType) -> Option<Depthwise> {
    let (x, wt) = (tys[0], tys[1]);
    let dims: Vec<usize> = x.dims[1..].iter().map(|d| d.fixed().map(|n| n as usize)).collect::<Option<_>>()?;
    let (c, h, wd) = (dims[0], dims[1], dims[2]);
    let ws = w.shape();
    if x.rank() != 4 || attrs.int("groups", 1) as usize != c || ws[0] != c || ws[1] != 1 {
        return None;
    }
    let (kh, kw) = (ws[2], ws[3]);
    let (xq, wq, yq) = (x.elem.quant()?, wt.elem.quant()?, out.elem.quant()?);
    if xq.axis.is_some()
        || yq.axis.is_some()
        || wq.axis.is_some_and(|a| a != 0)
        || !matches!(yq.storage, qc_ir::ScalarType::I8 | qc_ir::ScalarType::U8)
    {
        return None;
    }
    let (oh, ow) = (out.dims[2].fixed()? as usize, out.dims[3].fixed()? as usize);
    let (st, pads, dil) = window_geometry(attrs)?;
    let mut runs = Vec::new();
    for ky in 0..kh as isize {
        for kx in 0..kw as isize {
            // Output columns whose input column `ox·s + kx·d − p` lies in [0, w).
            let first = kx * dil[1] - pads[1];
            let ox0 = if first >= 0 { 0 } else { (-first + st[1] - 1) / st[1] };
            let last = wd as isize - 1 - first;
            let ox1 = if last < 0 { 0 } else { (last / st[1] + 1).min(ow as isize) };
            if ox0 >= ox1 {
                continue;
            }
            for oy in 0..oh as isize {
                let iy = oy * st[0] + ky * dil[0] - pads[0];
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                runs.push(TapRun {
                    tap: (ky * kw as isize + kx) as usize,
                    out: (oy * ow as isize + ox0) as usize,
                    src: (iy * wd as isize + ox0 * st[1] + first) as usize,
                    len: (ox1 - ox0) as usize,
                });
            }
        }
    }
    let wv = w.to_i64_vec()?;
    let taps = kh * kw;
    let (s_x, zp_x) = xq.at(0);
    let (s_y, zp_y) = yq.at(0);
    let mode = qc_ir::requant::RequantMode::of(attrs).ok()?;
    let mut weights = Vec::with_capacity(c * taps);
    let mut requant = Vec::with_capacity(c);
    for ch in 0..c {
        let (s_w, zp_w) = wq.at(ch);
        weights.extend(wv[ch * taps..(ch + 1) * taps].iter().map(|&v| v as i32 - zp_w));
        requant.push(qc_ir::requant::Requant::new(mode, qc_ir::requant::acc_scale(s_x, s_w), s_y).ok()?);
    }
    let bias = match bias {
        Some(b) => b.to_i64_vec()?.into_iter().map(|v| v as i32).collect(),
        None => vec![0; c],
    };
    let (lo, hi) = qc_ir::requant::output_range(yq, attrs);
    Some(Depthwise {
        c,
        plane: h * wd,
        positions: oh * ow,
        taps,
        runs,
        step: st[1] as usize,
        weights,
        bias,
        requant,
        zp_x,
        x_signed: xq.storage == qc_ir::ScalarType::I8,
        zp_y,
        lo,
        hi,
        out_dims: [c, oh, ow],
    })
}

/// The byte kernel of an 8-bit max pooling, or `None`.
fn max_pool8(attrs: &Attrs, x: &TensorType, out: &TensorType) -> Option<MaxPool8> {
    let q = Q8::of(x)?;
    if x.rank() != 4 || Q8::of(out).is_none() {
        return None;
    }
    let (h, w) = (x.dims[2].fixed()? as usize, x.dims[3].fixed()? as usize);
    let (oh, ow) = (out.dims[2].fixed()? as usize, out.dims[3].fixed()? as usize);
    let k = attrs.ints("kernel_shape")?;
    let (kh, kw) = (k[0] as usize, k[1] as usize);
    let gather = window_taps(attrs, (h, w), (kh, kw), (oh, ow))?;
    Some(MaxPool8 { plane: h * w, positions: oh * ow, taps: kh * kw, gather, signed: q.signed, out_dims: [oh, ow] })
}

/// The Rust kernel of an integer add of same-shape operands, or `None`.
fn add_q(attrs: &Attrs, tys: &[&TensorType], out: &TensorType) -> Option<AddQ> {
    let (aq, bq, yq) = (tys[0].elem.quant()?, tys[1].elem.quant()?, out.elem.quant()?);
    if aq.axis.is_some()
        || bq.axis.is_some()
        || yq.axis.is_some()
        || !matches!(yq.storage, qc_ir::ScalarType::I8 | qc_ir::ScalarType::U8)
    {
        return None;
    }
    let (lo, hi) = qc_ir::requant::output_range(yq, attrs);
    let signed = |q: &qc_ir::QuantParams| q.storage == qc_ir::ScalarType::I8;
    Some(AddQ { a: (aq.at(0).0, aq.at(0).1, signed(aq)), b: (bq.at(0).0, bq.at(0).1, signed(bq)), y: yq.at(0), lo, hi })
}

/// The GEMM kernel of an integer conv2d (groups = 1): weights `[O, C·kh·kw]`, rows = output
/// positions.
fn conv_kernel(
    attrs: &Attrs,
    tys: &[&TensorType],
    w: &Tensor,
    bias: Option<&Tensor>,
    out: &TensorType,
) -> Result<(GemmKernel, Im2col), String> {
    let x = tys[0];
    if x.rank() != 4 {
        return Err(format!("a convolution input must be NCHW, got {x}"));
    }
    let d: Option<Vec<usize>> = x.dims[1..].iter().map(|d| d.fixed().map(|n| n as usize)).collect();
    let d = d.ok_or("convolution inputs need fixed channel and spatial dims")?;
    let (c, h, wd) = (d[0], d[1], d[2]);
    let ws = w.shape();
    let (o, kh, kw) = (ws[0], ws[2], ws[3]);
    let oh = out.dims[2].fixed().ok_or("fixed output dims")? as usize;
    let ow = out.dims[3].fixed().ok_or("fixed output dims")? as usize;
    let xq = x.elem.quant().ok_or("the input must be quantized")?;
    let zp = xq.at(0).1;
    // `[O, C, kh, kw]` → `[O, kh·kw·C]`, the order of the channels-last patch rows.
    let flat_w = match w {
        Tensor::I8(a) => Tensor::I8(
            a.view()
                .permuted_axes(ndarray::IxDyn(&[0, 2, 3, 1]))
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(ndarray::IxDyn(&[o, c * kh * kw]))
                .map_err(|e| e.to_string())?,
        ),
        _ => return Err("convolution weights must be i8".into()),
    };
    let wty = TensorType { dims: vec![Dim::Fixed(o as u64), Dim::Fixed((c * kh * kw) as u64)], elem: tys[1].elem.clone() };
    let xty = TensorType { dims: vec![Dim::Dynamic, Dim::Fixed((c * kh * kw) as u64)], elem: x.elem.clone() };
    let oty = TensorType { dims: vec![Dim::Dynamic, Dim::Fixed(o as u64)], elem: out.elem.clone() };
    let mut gemm_attrs = attrs.clone();
    for k in ["strides", "pads", "dilations", "groups"] {
        gemm_attrs.0.remove(k);
    }
    gemm_attrs.set("trans_b", Attr::Bool(true));
    let mut types = vec![&xty, &wty];
    if let Some(b) = tys.get(2) {
        types.push(b);
    }
    let spec = GemmSpec::from_node(OpKind::Gemm, &gemm_attrs, &types, &flat_w, bias, &oty)?;
    let kernel = GemmKernel::compile(&spec)?;
    let pad_value = if xq.storage == qc_ir::ScalarType::I8 { zp as i8 as u8 } else { zp as u8 };
    let (taps, positions) = (kh * kw, oh * ow);
    let window = window_taps(attrs, (h, wd), (kh, kw), (oh, ow)).ok_or("bad convolution attributes")?;
    let mut pixels = vec![0u32; positions * taps];
    for pos in 0..positions {
        for t in 0..taps {
            pixels[pos * taps + t] = window[t * positions + pos];
        }
    }
    let geometry = Im2col { c, h, w: wd, oh, ow, taps, pixels, pad_value };
    Ok((kernel, geometry))
}

/// A thread's reusable buffers for convolutions, so that a run does not allocate (and fault in)
/// fresh pages for every layer's patch matrix.
#[derive(Default)]
struct ConvScratch {
    /// One image channels-last, plus a pixel of zero points that the padding reads.
    hwc: Vec<u8>,
    patches: Vec<u8>,
    product: Vec<u8>,
}

thread_local! {
    static CONV_SCRATCH: std::cell::RefCell<ConvScratch> = std::cell::RefCell::default();
}

/// The first `n` bytes of `v`, growing it if needed (the contents are stale: callers overwrite).
fn grown(v: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if v.len() < n {
        v.resize(n, 0);
    }
    &mut v[..n]
}

/// Gathers one NCHW image's patches: `hwc` (`[h·w + 1][c]`, its last pixel already the zero
/// point) receives the image channels-last, then every (position, tap) copies one pixel's `c`
/// bytes.
fn im2col(img: &[u8], g: &Im2col, hwc: &mut [u8], out: &mut [u8]) {
    let (c, plane) = (g.c, g.h * g.w);
    if c == 1 {
        hwc[..plane].copy_from_slice(img);
        for (dst, &p) in out.iter_mut().zip(&g.pixels) {
            *dst = hwc[p as usize];
        }
        return;
    }
    transpose(img, c, plane, &mut hwc[..c * plane]);
    for (dst, &p) in out.chunks_exact_mut(c).zip(&g.pixels) {
        let p = p as usize * c;
        dst.copy_from_slice(&hwc[p..p + c]);
    }
}

/// `dst[c][r] = src[r][c]` for a `rows × cols` byte matrix, in tiles that stay in cache.
fn transpose(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let row = &src[r * cols..(r + 1) * cols];
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = row[c];
                }
            }
        }
    }
}
