//! `bias-correction` — approximating (it moves quantized outputs back toward fp32; each layer is
//! changed only when its output error on the calibration samples drops).
//!
//! Runs between `insert-qdq` and `fold-qdq`, on conv2d/gemm layers whose weight is
//! `dequantize(quantize(w))` with per-channel parameters. For each layer, in order:
//!
//! 1. **Weight correction**: per output channel, the quantized weights `w_q` get the spread of the
//!    originals: `ζ = ‖w − E[w]‖ / ‖w_q − E[w_q]‖` scales the channel's weight scale (the integers
//!    stay; `w_q ← ζ·w_q` exactly). The mean shift `u = E[w] − E[w_q]` cannot be added to symmetric
//!    int8 weights; what it does to the outputs is removed by step 2.
//! 2. **Empirical bias correction**: on the calibration samples, with the layer's own (quantized)
//!    input `x`, the mean output shift `E[y(x, w)] − E[y(x, ŵ)]` of each output channel (before any
//!    fused activation) is added to the f32 bias, which is then quantized with the new scales.
//!
//! The layer keeps the change only if its mean squared output error against `y(x, w) + b` drops by
//! more than 0.1 %; a model the correction cannot help (weights already on their grid) comes out
//! unchanged. Layers with per-tensor weight parameters are left alone.
//!
//! ```text
//! %w.q = quantize(%w) : ...!q<i8:axis0, [0.011, ...], 0>   %w.q = quantize(%w.bc) : ...!q<i8:axis0, [0.0112, ...], 0>
//! %b.q = quantize(%b) : ...!q<i32:axis0, [...], 0>      →   %b.q = quantize(%b.bc) : ...!q<i32:axis0, [...], 0>
//! ```

use crate::rewrite::{add_const, const_value};
use crate::samples::batches;
use crate::{Changed, Pass, PassContext, PassError, PassOptions};
use ndarray::{ArrayD, Axis};
use qc_ir::eval::{eval_op, evaluate_observed};
use qc_ir::requant::acc_scale;
use qc_ir::{Attrs, ElemType, Graph, Loc, Node, NodeId, OpKind, QuantParams, ScalarType, Tensor, TensorType, ValueId};
use std::sync::Arc;

/// The `bias-correction` pass.
pub struct BiasCorrection {
    samples: Option<Arc<Tensor>>,
}

impl BiasCorrection {
    /// The pass with its options.
    pub fn new(o: &PassOptions) -> BiasCorrection {
        BiasCorrection { samples: o.calibration.clone() }
    }
}

fn err(m: impl Into<String>) -> PassError {
    PassError::msg(m)
}

/// `v = dequantize(quantize(c))` with `c` a constant: (the quantize node, c).
fn qdq_of_const(g: &Graph, v: ValueId) -> Option<(NodeId, ValueId)> {
    let d = g.producer_of_kind(v, OpKind::Dequantize)?;
    let q = g.producer_of_kind(g.node(d).operands[0], OpKind::Quantize)?;
    let c = g.node(q).operands[0];
    g.producer_of_kind(c, OpKind::Const).map(|_| (q, c))
}

fn f32_ty(t: &TensorType) -> TensorType {
    t.with_elem(ScalarType::F32)
}

/// The layer's output without bias and activation.
fn product(g: &Graph, n: NodeId, x: &Tensor, w: &Tensor) -> Result<ArrayD<f32>, String> {
    let node = g.node(n);
    let mut attrs = node.attrs.clone();
    for k in ["activation", "clip_min", "clip_max", "requant"] {
        attrs.0.remove(k);
    }
    let (xt, wt, yt) = (f32_ty(g.ty(node.operands[0])), f32_ty(g.ty(node.operands[1])), f32_ty(g.ty(node.results[0])));
    let y = eval_op(node.kind, &attrs, &[x, w], &[&xt, &wt], &yt)?;
    y.as_f32().cloned().ok_or_else(|| "a float product".to_string())
}

/// Mean over everything but axis 1, per channel.
fn channel_means(y: &ArrayD<f32>) -> Vec<f64> {
    y.axis_iter(Axis(1)).map(|c| c.iter().map(|&v| v as f64).sum::<f64>() / c.len().max(1) as f64).collect()
}

/// `dequantize(quantize(t))` with parameters `q` (axis `q.axis`).
fn fake_quant(t: &Tensor, ty: &TensorType, q: &QuantParams) -> Result<Tensor, String> {
    let qt = ty.with_elem(ElemType::Quant(q.clone()));
    let ft = f32_ty(ty);
    let i = eval_op(OpKind::Quantize, &Attrs::new(), &[t], &[&ft], &qt)?;
    eval_op(OpKind::Dequantize, &Attrs::new(), &[&i], &[&qt], &ft)
}

impl Pass for BiasCorrection {
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<Changed, PassError> {
        let notes = &mut cx.notes;
        let samples = self.samples.as_ref().ok_or_else(|| err("bias correction needs calibration samples (--calib X.npy)"))?;
        let batches = batches(g, samples).map_err(err)?;
        let layers: Vec<NodeId> = g
            .topo_order()
            .unwrap_or_default()
            .into_iter()
            .filter(|&n| {
                let node = g.node(n);
                // matmul has no bias operand to take the correction (fuse-matmul-add makes a gemm).
                matches!(node.kind, OpKind::Conv2d | OpKind::Gemm)
                    && g.ty(node.results[0]).elem.is_f32()
                    && node
                        .operands
                        .get(1)
                        .and_then(|&w| qdq_of_const(g, w))
                        .is_some_and(|(q, _)| g.ty(g.node(q).results[0]).elem.quant().is_some_and(|p| p.axis.is_some()))
                    && (node.kind == OpKind::Conv2d || g.ty(node.results[0]).rank() == 2)
            })
            .collect();
        let mut changed = false;
        for n in layers {
            let node = g.node(n).clone();
            let (wq_node, wc) = qdq_of_const(g, node.operands[1]).expect("selected");
            let wparams = g.ty(g.node(wq_node).results[0]).elem.quant().cloned().expect("selected");
            let axis = wparams.axis.expect("per channel");
            let w = const_value(g, wc).ok_or_else(|| err("weights are not loaded"))?;
            let wa = w.as_f32().ok_or_else(|| err("weights must be f32"))?.clone();
            let wty = g.ty(wc).clone();
            let w_q = fake_quant(&w, &wty, &wparams).map_err(err)?;
            let wqa = w_q.as_f32().expect("f32").clone();
            // 1. ζ per channel, folded into the scale; the integers stay.
            let mut zeta = vec![1f32; wparams.scales.len()];
            for (c, z) in zeta.iter_mut().enumerate() {
                let (a, b) = (wa.index_axis(Axis(axis), c), wqa.index_axis(Axis(axis), c));
                let (ma, mb) = (a.mean().unwrap_or(0.0), b.mean().unwrap_or(0.0));
                let na: f32 = a.iter().map(|v| (v - ma) * (v - ma)).sum::<f32>().sqrt();
                let nb: f32 = b.iter().map(|v| (v - mb) * (v - mb)).sum::<f32>().sqrt();
                if nb > 0.0 && na > 0.0 {
                    *z = (na / nb).clamp(0.5, 2.0);
                }
            }
            let mut new_params = wparams.clone();
            for (s, z) in new_params.scales.iter_mut().zip(&zeta) {
                *s *= z;
            }
            // ŵ = ζ·w_q = s'·q: quantizing it with the new scales gives back the same integers.
            let mut wh = wqa.clone();
            for (c, mut lane) in wh.axis_iter_mut(Axis(axis)).enumerate() {
                let s = new_params.scales[c];
                lane.mapv_inplace(|v| s * (v / wparams.scales[c]).round());
            }
            let w_hat = Tensor::F32(wh);
            // 2. The mean output shift on the calibration samples, with the layer's own input.
            let x = node.operands[0];
            let mut inputs = Vec::new();
            for b in &batches {
                let mut got = None;
                evaluate_observed(g, std::slice::from_ref(b), |v, t| {
                    if v == x {
                        got = Some(t.clone());
                    }
                })
                .map_err(|e| err(e.to_string()))?;
                inputs.push(got.ok_or_else(|| err("the layer's input was not computed"))?);
            }
            let channels = new_params.scales.len();
            let mut shift = vec![0f64; channels];
            let mut ys = Vec::new();
            for xb in &inputs {
                let (yf, yq, yh) = (
                    product(g, n, xb, &w).map_err(err)?,
                    product(g, n, xb, &w_q).map_err(err)?,
                    product(g, n, xb, &w_hat).map_err(err)?,
                );
                for (c, (mf, mh)) in channel_means(&yf).into_iter().zip(channel_means(&yh)).enumerate() {
                    shift[c] += (mf - mh) / inputs.len() as f64;
                }
                ys.push((yf, yq, yh));
            }
            // The f32 bias, quantized the old way and the new way.
            let s_x = g
                .producer_of_kind(x, OpKind::Dequantize)
                .and_then(|d| g.ty(g.node(d).operands[0]).elem.quant().map(|q| q.at(0).0))
                .ok_or_else(|| err("the layer's input is not dequantized"))?;
            let bias_const = node.operands.get(2).and_then(|&b| qdq_of_const(g, b));
            let b0: Vec<f32> = match bias_const {
                Some((_, bc)) => {
                    const_value(g, bc).and_then(|t| t.as_f32().map(|a| a.iter().copied().collect())).unwrap_or_default()
                }
                None => vec![0.0; channels],
            };
            if b0.len() != channels {
                continue;
            }
            let bparams = |scales: &[f32]| QuantParams {
                storage: ScalarType::I32,
                axis: Some(0),
                scales: scales.iter().map(|&s| acc_scale(s_x, s)).collect(),
                zero_points: vec![0; channels],
            };
            let bty = TensorType::new(&[channels as u64], ScalarType::F32);
            let vec_tensor = |v: Vec<f32>| Tensor::F32(ArrayD::from_shape_vec(ndarray::IxDyn(&[v.len()]), v).expect("sized"));
            let b_old = fake_quant(&vec_tensor(b0.clone()), &bty, &bparams(&wparams.scales)).map_err(err)?;
            let b1: Vec<f32> = b0.iter().zip(&shift).map(|(&b, &d)| b + d as f32).collect();
            let b_new = fake_quant(&vec_tensor(b1.clone()), &bty, &bparams(&new_params.scales)).map_err(err)?;
            let (bo, bn) = (b_old.as_f32().expect("f32").clone(), b_new.as_f32().expect("f32").clone());
            // Keep the change only if the layer's output error drops.
            let (mut e_old, mut e_new) = (0f64, 0f64);
            for (yf, yq, yh) in &ys {
                for (c, ((lf, lq), lh)) in yf.axis_iter(Axis(1)).zip(yq.axis_iter(Axis(1))).zip(yh.axis_iter(Axis(1))).enumerate()
                {
                    for ((f, q), h) in lf.iter().zip(lq.iter()).zip(lh.iter()) {
                        let want = (f + b0[c]) as f64;
                        e_old += (want - (q + bo[c]) as f64).powi(2);
                        e_new += (want - (h + bn[c]) as f64).powi(2);
                    }
                }
            }
            let name = if node.loc.name.is_empty() { g.display_value(node.results[0]) } else { node.loc.name.clone() };
            // A measurable gain (0.1 %), not rounding noise.
            if e_new >= e_old * (1.0 - 1e-3) {
                notes.push(format!("{name}: unchanged (the correction would not lower its output error)"));
                continue;
            }
            // Rewrite: the corrected weight and its new scales; the corrected bias, quantized alike.
            let base = crate::rewrite::origin_name(g, node.results[0]);
            let wv = add_const(g, &format!("{base}.weight.bc"), w_hat, wty.clone(), node.loc.clone());
            g.set_operand(wq_node, 0, wv);
            let wq_result = g.node(wq_node).results[0];
            g.value_mut(wq_result).ty = wty.with_elem(ElemType::Quant(new_params.clone()));
            let bv = add_const(g, &format!("{base}.bias.bc"), vec_tensor(b1), bty.clone(), node.loc.clone());
            let bq_ty = bty.with_elem(ElemType::Quant(bparams(&new_params.scales)));
            match bias_const {
                Some((bq_node, _)) => {
                    g.set_operand(bq_node, 0, bv);
                    let r = g.node(bq_node).results[0];
                    g.value_mut(r).ty = bq_ty;
                }
                None => {
                    let qn = g.add_node(Node::new(OpKind::Quantize, vec![bv], Attrs::new(), Loc::default()), vec![bq_ty]);
                    let qv = g.node(qn).results[0];
                    let dn = g.add_node(Node::new(OpKind::Dequantize, vec![qv], Attrs::new(), Loc::default()), vec![bty.clone()]);
                    let dv = g.node(dn).results[0];
                    g.node_mut(n).operands.push(dv);
                    g.rebuild_edges();
                }
            }
            let (zlo, zhi) = zeta.iter().fold((f32::INFINITY, 0f32), |(a, b), &z| (a.min(z), b.max(z)));
            let max_shift = shift.iter().fold(0f64, |m, d| m.max(d.abs()));
            notes.push(format!(
                "{name}: ζ in [{zlo:.4}, {zhi:.4}], largest mean shift {max_shift:.5}, output MSE {:.3e} → {:.3e}",
                e_old / ys.iter().map(|y| y.0.len()).sum::<usize>().max(1) as f64,
                e_new / ys.iter().map(|y| y.0.len()).sum::<usize>().max(1) as f64
            ));
            changed = true;
        }
        Ok(changed.into())
    }
}
