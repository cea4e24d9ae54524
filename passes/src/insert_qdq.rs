//! `insert-qdq` — approximating: this is where quantization error enters (each quantized value
//! moves by at most half a step, weights by half a step of their channel's scale).
//!
//! Replaces each `stats` op (from `calibrate`) next to an op with an integer form by a
//! quantize/dequantize pair whose parameters come from the calibrated range, and quantizes the
//! constant weights and biases of conv2d, gemm and matmul:
//!
//! - activations: `--activations u8` (default) or `i8`, asymmetric (default:
//!   `s = (hi − lo) / (qmax − qmin)`, `zp = rne(qmin − lo / s)`) or `--symmetric`
//!   (`s = max(|lo|, |hi|) / ((qmax − qmin) / 2)`, zp 0 for i8 and 128 for u8);
//! - weights: i8, symmetric, per output channel (`--per-tensor` for one scale),
//!   `s[c] = max|w[c]| / 127`, so that they lie in [-127, 127]; or 7-bit (`--weight-bits 7`, or
//!   per layer `--layer-weight-bits NAME=7`), `s[c] = max|w[c]| / 64`, in [-64, 64] — ONNX
//!   Runtime's `reduce_range`, which CPUs without VNNI multiply exactly with `vpmaddubsw`; or i4
//!   (`--weight-bits 4`), `s[c] = max|w[c]| / 7`, in [-7, 7] — two per byte in the weights file;
//! - biases: i32 with scale `f32(s_x · s_w[c])`, zero point 0; a channel whose bias would exceed
//!   2^30 has its weight scale raised until it does not.
//!
//! A scale below `f32::MIN_POSITIVE` (a zero-range tensor, an all-zero channel) becomes 1; an
//! activation whose calibrated range is zero is named in a note.
//!
//! ```text
//! %c.stats = stats(%c) {max = 6.0, min = 0.0}    →   %c.q = quantize(%c) : tensor<...x!q<u8, 0.023529412, 0>>
//!                                                    %c.dq = dequantize(%c.q) : tensor<...xf32>
//! ```
//!
//! Leaves alone: values next to no integer-capable op (their `stats` is dropped), values whose
//! calibrated range reaches 10³⁰ — an attention mask's stand-in for −∞, which would give every
//! real value the same step (a note names them) —, weights of ops
//! whose input is not quantized, and ops the user keeps in fp32 (`--keep-fp32 NAME`, by location
//! or result name: their weights stay f32 and they do not call for their neighbours' values to be
//! quantized). Run `fold-qdq` and `fuse-requant` after it.

use crate::fold_qdq::{commutes_with_quantize, dequantized};
use crate::fuse_requant::has_integer_form;
use crate::{Changed, Pass, PassContext, PassError, PassOptions};
use qc_ir::eval::weight_output_axis;
use qc_ir::requant::acc_scale;
use qc_ir::{ElemType, Graph, Loc, Node, NodeId, OpKind, QuantParams, ScalarType, ValueId};

/// The `insert-qdq` pass.
pub struct InsertQdq {
    activations: ScalarType,
    symmetric: bool,
    per_channel: bool,
    keep_fp32: Vec<String>,
    weight_bits: u8,
    layer_weight_bits: Vec<(String, u8)>,
}

impl InsertQdq {
    /// The pass with its options.
    pub fn new(opts: &PassOptions) -> InsertQdq {
        InsertQdq {
            activations: opts.activations,
            symmetric: opts.symmetric_activations,
            per_channel: !opts.per_tensor_weights,
            keep_fp32: opts.keep_fp32.clone(),
            weight_bits: opts.weight_bits,
            layer_weight_bits: opts.layer_weight_bits.clone(),
        }
    }
}

/// A scale that can be divided by: tiny ones (zero range) become 1.
fn usable(s: f32) -> f32 {
    if s.is_finite() && s >= f32::MIN_POSITIVE { s } else { 1.0 }
}

/// Activation parameters for the calibrated range `[lo, hi]` (which includes 0).
pub fn activation_params(lo: f32, hi: f32, storage: ScalarType, symmetric: bool) -> QuantParams {
    let (qmin, qmax) = storage.quant_range().expect("8-bit storage");
    let levels = (qmax - qmin) as f32;
    if symmetric {
        let s = usable(lo.abs().max(hi.abs()) / (levels / 2.0));
        let zp = if storage == ScalarType::U8 { 128 } else { 0 };
        QuantParams::per_tensor(storage, s, zp)
    } else {
        let s = usable((hi - lo) / levels);
        let zp = (qmin as f32 - lo / s).round_ties_even().clamp(qmin as f32, qmax as f32) as i32;
        QuantParams::per_tensor(storage, s, zp)
    }
}

/// Whether `n` is one of the ops named in `keep` (by location or result name).
pub fn kept_fp32(g: &Graph, n: NodeId, keep: &[String]) -> bool {
    let node = g.node(n);
    keep.iter().any(|k| *k == node.loc.name || node.results.iter().any(|&r| g.value(r).name.as_deref() == Some(k.as_str())))
}

/// Ops with an integer form after fold-qdq and fuse-requant (kernels need a constant weight).
fn integer_capable(g: &Graph, n: NodeId, keep: &[String]) -> bool {
    let node = g.node(n);
    if kept_fp32(g, n, keep) {
        return false;
    }
    match node.kind {
        OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul => {
            node.operands.get(1).is_some_and(|&w| g.producer_of_kind(w, OpKind::Const).is_some())
        }
        k => has_integer_form(k) || commutes_with_quantize(k),
    }
}

/// Adds `dequantize(quantize(v))` with parameters `q`; returns the quantize node and the
/// dequantized value.
fn add_qdq(g: &mut Graph, v: ValueId, q: QuantParams, base: &str) -> ValueId {
    let qty = g.ty(v).with_elem(ElemType::Quant(q));
    let qn = g.add_node(Node::new(OpKind::Quantize, vec![v], Default::default(), Loc::default()), vec![qty]);
    let qv = g.node(qn).results[0];
    g.value_mut(qv).name = Some(g.unique_name(&format!("{base}.q")));
    let dty = g.ty(v).clone();
    let dn = g.add_node(Node::new(OpKind::Dequantize, vec![qv], Default::default(), Loc::default()), vec![dty]);
    let dv = g.node(dn).results[0];
    g.value_mut(dv).name = Some(g.unique_name(&format!("{base}.dq")));
    dv
}

fn base_name(g: &Graph, v: ValueId) -> String {
    g.value(v).name.clone().map(|n| n.trim_end_matches(".stats").to_string()).unwrap_or_else(|| format!("v{}", v.0))
}

/// Calibrated magnitudes from here on are masks' stand-ins for infinity, not data.
const STAND_IN_FOR_INFINITY: f32 = 1e30;

impl InsertQdq {
    fn activations(&self, g: &mut Graph, notes: &mut Vec<String>) -> bool {
        let stats: Vec<NodeId> = g.node_ids().filter(|&n| g.node(n).kind == OpKind::Stats).collect();
        let mut changed = false;
        for s in stats {
            let (v, r) = (g.node(s).operands[0], g.node(s).results[0]);
            let (lo, hi) = (g.node(s).attrs.float("min", 0.0), g.node(s).attrs.float("max", 0.0));
            let users = g.uses(r);
            // An activation read only by relu/clip is quantized after the activation, which
            // fuse-requant folds into the clamp of the op before it.
            let only_activation = !users.is_empty()
                && !g.is_output(r)
                && users.iter().all(|&(u, _)| matches!(g.node(u).kind, OpKind::Relu | OpKind::Clip))
                && g.producer(v).is_some_and(|p| g.node(p).kind.accepts_fused_activation());
            let next_to_integer = !only_activation
                && (g.producer(v).is_some_and(|p| integer_capable(g, p, &self.keep_fp32) && g.node(p).kind != OpKind::Stats)
                    || users.iter().any(|&(u, _)| integer_capable(g, u, &self.keep_fp32)));
            let base = base_name(g, r);
            g.remove_node(s);
            // A range reaching a stand-in for infinity (an attention mask: where(keep, 0, −3.4e38))
            // would give every real value one step; such a value stays f32.
            let infinite = lo.abs().max(hi.abs()) >= STAND_IN_FOR_INFINITY;
            if next_to_integer && infinite {
                notes.push(format!(
                    "{}: its calibrated range [{lo:e}, {hi:e}] reaches a stand-in for infinity (an attention mask); it stays f32",
                    g.display_value(v)
                ));
            }
            if next_to_integer && !infinite {
                if !(hi > lo) {
                    // A constant (or NaN) activation over the samples: the scale falls back to 1.
                    notes.push(format!(
                        "{}: every calibration sample gives it the same value ({lo}), a zero range; it is quantized with \
                         scale 1 — calibrate with samples that vary (an all-zero or constant set says nothing of the \
                         model's inputs)",
                        g.display_value(v)
                    ));
                }
                let q = activation_params(lo, hi, self.activations, self.symmetric);
                let dv = add_qdq(g, v, q, &base);
                g.replace_all_uses(r, dv);
            } else {
                g.replace_all_uses(r, v);
            }
            changed = true;
        }
        changed
    }

    fn weights(&self, g: &mut Graph, notes: &mut Vec<String>) -> Result<bool, PassError> {
        let kernels: Vec<NodeId> =
            g.node_ids().filter(|&n| matches!(g.node(n).kind, OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul)).collect();
        let mut changed = false;
        for k in kernels {
            if kept_fp32(g, k, &self.keep_fp32) {
                continue;
            }
            let node = g.node(k).clone();
            let (x, w) = (node.operands[0], node.operands[1]);
            let Some(xq) = dequantized(g, x).and_then(|q| g.ty(q).elem.quant().cloned()) else { continue };
            let Some(wt) = crate::rewrite::const_value(g, w) else { continue };
            let Some(wa) = wt.as_f32() else { continue };
            let axis = weight_output_axis(node.kind, &node.attrs, wa.ndim());
            let n = wa.shape()[axis];
            let bits = self
                .layer_weight_bits
                .iter()
                .find(|(name, _)| kept_fp32(g, k, std::slice::from_ref(name)))
                .map_or(self.weight_bits, |(_, b)| *b);
            let (storage, qmax) = match bits {
                4 => (ScalarType::I4, 7.0),
                7 => (ScalarType::I8, 64.0),
                _ => (ScalarType::I8, 127.0),
            };
            let mut scales: Vec<f32> = (0..n)
                .map(|c| usable(wa.index_axis(ndarray::Axis(axis), c).iter().fold(0f32, |m, v| m.max(v.abs())) / qmax))
                .collect();
            if !self.per_channel {
                let s = usable(scales.iter().fold(0f32, |m, &v| m.max(v)));
                scales = vec![s; n];
            }
            let s_x = xq.at(0).0;
            let bias = node.operands.get(2).copied().and_then(|b| crate::rewrite::const_f32(g, b).map(|d| (b, d)));
            if let Some((_, bdata)) = &bias {
                // Keep |bias_q| ≤ 2^30 so that accumulators have room.
                for c in 0..n.min(bdata.len()) {
                    let limit = (1u32 << 30) as f32;
                    if (bdata[c] / acc_scale(s_x, scales[c])).abs() > limit {
                        let raised = bdata[c].abs() / (limit * s_x) * 1.0001;
                        notes.push(format!(
                            "{}: the bias of channel {c} would exceed 2^30 as i32; its weight scale was raised from {:?} to {raised:?}",
                            g.display_value(node.results[0]),
                            scales[c]
                        ));
                        scales[c] = raised;
                    }
                }
            }
            let wq = if self.per_channel {
                QuantParams { storage, axis: Some(axis), scales: scales.clone(), zero_points: vec![0; n] }
            } else {
                QuantParams::per_tensor(storage, scales[0], 0)
            };
            let wbase = base_name(g, w);
            let wd = add_qdq(g, w, wq, &wbase);
            g.set_operand(k, 1, wd);
            if let Some((b, _)) = bias {
                let bscales: Vec<f32> = scales.iter().map(|&s| acc_scale(s_x, s)).collect();
                let bq = QuantParams { storage: ScalarType::I32, axis: Some(0), scales: bscales, zero_points: vec![0; n] };
                let bq = if g.ty(b).rank() == 1 && g.ty(b).dims[0] == qc_ir::Dim::Fixed(n as u64) {
                    bq
                } else {
                    return Err(PassError::msg(format!(
                        "the bias of {} is not a vector of {n}",
                        g.display_value(node.results[0])
                    )));
                };
                let bbase = base_name(g, b);
                let bd = add_qdq(g, b, bq, &bbase);
                g.set_operand(k, 2, bd);
            }
            changed = true;
        }
        Ok(changed)
    }
}

impl Pass for InsertQdq {
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<Changed, PassError> {
        let a = self.activations(g, &mut cx.notes);
        let w = self.weights(g, &mut cx.notes)?;
        g.rebuild_edges();
        Ok((a || w).into())
    }
}
