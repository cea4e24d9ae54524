//! Distillation from the unpruned model on the calibration samples, without labels: after the
//! layer-wise least squares ([`crate::reconstruct`]) have placed every layer, the pruned model's
//! weights and biases are fitted jointly, by Adam on mini-batches, so that its outputs match the
//! unpruned model's: Hinton's loss (KL divergence of the outputs softened by a temperature of 4)
//! for a classifier's `[N, C]` logits, mean squared error for any other output. The learning rate
//! decays from 3·10⁻³ to 0 along a cosine.
//!
//! A layer-wise fit sees each layer alone; this sees the whole model, so later layers make up
//! for what earlier ones lost. On the calibration samples alone a joint fit over-fits them, so
//! every step draws a fresh batch: for images (rank-4 input) each sample shifted by up to one
//! pixel each way (vacated pixels take the samples' minimum, their background), half of them
//! mixed with a second one, `λ·a + (1−λ)·b`. The targets are what the unpruned model computes
//! on the same batch — it is the teacher, not the labels. The student keeps its weights unless
//! the fit lowers the output error on the calibration samples themselves.

use crate::backprop::Net;
use crate::rewrite::add_const;
use crate::samples::batches;
use ndarray::{ArrayD, Axis, IxDyn};
use qc_ir::eval::evaluate;
use qc_ir::{ConstValue, Graph, Tensor};
use std::sync::Arc;

/// How distillation runs.
#[derive(Clone, Debug)]
pub struct DistillOptions {
    /// Adam steps (0: no distillation).
    pub steps: usize,
    /// Samples per step.
    pub batch: usize,
    /// The first learning rate; it decays to 0 along a cosine.
    pub lr: f32,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions { steps: 0, batch: 128, lr: 3e-3 }
    }
}

/// How well the student matched the teacher on the calibration samples before and after.
#[derive(Clone, Debug)]
pub struct Distilled {
    /// The calibration samples the loss is measured on.
    pub samples: usize,
    /// The loss on the calibration samples before.
    pub before: f64,
    /// And after.
    pub after: f64,
}

/// A small deterministic generator (an LCG), so that a compile is reproducible.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 7) as f32 / (1u64 << 24) as f32
    }
}

/// A fresh batch of `b` samples drawn from `x`: for images (rank 4), each sample shifted by up
/// to one pixel each way (vacated pixels take `background`); half of them mixed with a second
/// such sample, `λ·a + (1−λ)·b`, λ uniform in [0, 1].
fn draw(x: &ArrayD<f32>, b: usize, background: f32, rng: &mut Lcg) -> ArrayD<f32> {
    let n = x.shape()[0];
    let mut shape = x.shape().to_vec();
    shape[0] = b;
    let mut out = ArrayD::zeros(IxDyn(&shape));
    let image = x.ndim() == 4;
    let one = |rng: &mut Lcg| -> ArrayD<f32> {
        let s = x.index_axis(Axis(0), rng.below(n));
        if !image {
            return s.to_owned();
        }
        let (dy, dx) = (rng.below(3) as isize - 1, rng.below(3) as isize - 1);
        let (h, w) = (s.shape()[1] as isize, s.shape()[2] as isize);
        let mut t = ArrayD::from_elem(s.raw_dim(), background);
        for ((c, y, xx), v) in t.indexed_iter_mut().map(|(i, v)| ((i[0], i[1] as isize + dy, i[2] as isize + dx), v)) {
            if y >= 0 && y < h && xx >= 0 && xx < w {
                *v = s[[c, y as usize, xx as usize]];
            }
        }
        t
    };
    for mut row in out.axis_iter_mut(Axis(0)) {
        let a = one(rng);
        if rng.below(2) == 0 {
            row.assign(&a);
        } else {
            let (other, l) = (one(rng), rng.unit());
            ndarray::Zip::from(&mut row).and(&a).and(&other).for_each(|r, &a, &o| *r = l * a + (1.0 - l) * o);
        }
    }
    out
}

/// What `g` computes on `x`, through the evaluator, in the batches `g` accepts.
fn outputs(g: &Graph, x: &ArrayD<f32>) -> Result<ArrayD<f32>, String> {
    let mut parts = Vec::new();
    for b in batches(g, &Arc::new(Tensor::F32(x.clone())))? {
        let y = evaluate(g, &[b]).map_err(|e| e.to_string())?;
        parts.push(y[0].as_f32().ok_or("the output is not f32")?.clone());
    }
    ndarray::concatenate(Axis(0), &parts.iter().map(|p| p.view()).collect::<Vec<_>>()).map_err(|e| e.to_string())
}

/// The temperature of the softened outputs of a classifier.
const TEMPERATURE: f32 = 4.0;

/// The loss of the student's output `y` against the teacher's `t`, and its gradient with respect
/// to `y`. For `[N, C]` outputs (a classifier's logits), Hinton's distillation loss,
/// `T²·KL(softmax(t/T) ‖ softmax(y/T))` averaged over the samples, whose gradient is
/// `T·(softmax(y/T) − softmax(t/T))/N`; for any other output, the mean squared error.
fn loss_and_gradient(y: &ArrayD<f32>, t: &ArrayD<f32>) -> (f64, ArrayD<f32>) {
    if y.ndim() != 2 {
        let scale = 2.0 / y.len() as f32;
        let loss = y.iter().zip(t).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum::<f64>() / y.len().max(1) as f64;
        return (loss, ndarray::Zip::from(y).and(t).map_collect(|&a, &b| scale * (a - b)));
    }
    // log softmax(r/T), in f64.
    let log_soft = |r: ndarray::ArrayViewD<f32>| -> Vec<f64> {
        let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: Vec<f64> = r.iter().map(|&v| (v as f64 - m) / TEMPERATURE as f64).collect();
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        z.into_iter().map(|v| v - lse).collect()
    };
    let rows = y.shape()[0].max(1);
    let tt = TEMPERATURE as f64;
    let mut loss = 0f64;
    let mut d = ArrayD::zeros(y.raw_dim());
    for i in 0..y.shape()[0] {
        let (lp, lq) = (log_soft(y.index_axis(Axis(0), i)), log_soft(t.index_axis(Axis(0), i)));
        loss += tt * tt * lq.iter().zip(&lp).map(|(q, p)| q.exp() * (q - p)).sum::<f64>();
        for (j, v) in d.index_axis_mut(Axis(0), i).iter_mut().enumerate() {
            *v = (tt * (lp[j].exp() - lq[j].exp()) / rows as f64) as f32;
        }
    }
    (loss / rows as f64, d)
}

/// The loss of `net` against `targets` over `x`, in chunks, averaged over the samples.
fn loss_on(net: &Net, x: &ArrayD<f32>, targets: &ArrayD<f32>) -> f64 {
    let mut sum = 0f64;
    for (xc, tc) in x.axis_chunks_iter(Axis(0), 256).zip(targets.axis_chunks_iter(Axis(0), 256)) {
        let t = net.forward(xc.to_owned());
        sum += loss_and_gradient(t.output(net), &tc.to_owned()).0 * xc.shape()[0] as f64;
    }
    sum / x.shape()[0].max(1) as f64
}

/// Fits `student`'s layer weights and biases to `teacher`'s outputs on the widened `samples`.
/// The new constants replace the old ones (named `<old>.distilled`); the student keeps its
/// weights if the fit does not lower the error.
pub fn distill(teacher: &Graph, student: &mut Graph, samples: &ArrayD<f32>, opts: &DistillOptions) -> Result<Distilled, String> {
    let mut net = Net::new(student)?;
    let oracle = Net::new(teacher)?;
    let mut rng = Lcg(0x5eed);
    let x = samples;
    let targets = outputs(teacher, x)?;
    let n = x.shape()[0];
    let background = x.iter().copied().fold(f32::INFINITY, f32::min);
    let before = loss_on(&net, x, &targets);
    let start: Vec<ArrayD<f32>> = net.params.iter().map(|p| p.data.clone()).collect();
    let mut m: Vec<ArrayD<f32>> = net.params.iter().map(|p| ArrayD::zeros(p.data.raw_dim())).collect();
    let mut v = m.clone();
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    for step in 0..opts.steps {
        let xb = draw(x, opts.batch.max(1), background, &mut rng);
        let teacher_tape = oracle.forward(xb.clone());
        let tb = teacher_tape.output(&oracle);
        let tape = net.forward(xb);
        let y = tape.output(&net);
        let grads = net.backward(&tape, vec![(net.output, loss_and_gradient(y, tb).1)]);
        let lr = opts.lr * 0.5 * (1.0 + (std::f32::consts::PI * step as f32 / opts.steps as f32).cos());
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (p, g) in grads.iter().enumerate() {
            ndarray::Zip::from(&mut net.params[p].data).and(&mut m[p]).and(&mut v[p]).and(g).for_each(|w, m, v, &g| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *w -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
            });
        }
    }
    let after = loss_on(&net, x, &targets);
    if !(after < before) {
        return Ok(Distilled { samples: n, before, after: before });
    }
    for (p, s) in net.params.iter().zip(&start) {
        if p.data == *s {
            continue;
        }
        let base = match student.producer(p.value).and_then(|c| student.node(c).value.clone()) {
            Some(ConstValue::Weight(name)) => format!("{name}.distilled"),
            _ => format!("{}.distilled", student.display_value(p.value).trim_start_matches('%')),
        };
        let ty = student.ty(p.value).clone();
        let loc = student.producer(p.value).map(|c| student.node(c).loc.clone()).unwrap_or_default();
        let nv = add_const(student, &base, Tensor::F32(p.data.clone()), ty, loc);
        for (user, i) in student.uses(p.value) {
            student.set_operand(user, i, nv);
        }
    }
    Ok(Distilled { samples: n, before, after })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    const MODEL: &str = r#"func @m(%x: tensor<?x1x6x6xf32>) -> tensor<?x4xf32> {
  %w = const @"w" : tensor<6x1x3x3xf32>
  %b = const @"b" : tensor<6xf32>
  %c = conv2d(%x, %w, %b) {pads = [1, 1, 1, 1]} : tensor<?x6x6x6xf32>
  %r = relu(%c) : tensor<?x6x6x6xf32>
  %m = reduce_mean(%r) {axes = [2, 3], keepdims = true} : tensor<?x6x1x1xf32>
  %f = flatten(%m) : tensor<?x6xf32>
  %wf = const @"wf" : tensor<4x6xf32>
  %y = gemm(%f, %wf) {trans_b = true} : tensor<?x4xf32>
  return %y
}"#;

    fn model(text: &str, seed: u64, noise: f32) -> Graph {
        let mut g = qc_ir::text::parse(text).expect("parses");
        let (mut s, mut t) = (1u64, seed);
        for (name, shape) in [("w", vec![6, 1, 3, 3]), ("b", vec![6]), ("wf", vec![4, 6])] {
            let n = shape.iter().product();
            let v = (0..n).map(|_| lcg(&mut s) + noise * lcg(&mut t)).collect();
            g.weights.insert(name.to_string(), Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), v).expect("sized")));
        }
        g
    }

    #[test]
    fn distillation_moves_a_perturbed_student_toward_its_teacher() {
        let teacher = model(MODEL, 2, 0.0);
        let mut student = model(MODEL, 3, 0.5);
        let mut seed = 9;
        let x =
            ArrayD::from_shape_vec(IxDyn(&[40, 1, 6, 6]), (0..40 * 36).map(|_| lcg(&mut seed).abs()).collect()).expect("sized");
        let d = distill(&teacher, &mut student, &x, &DistillOptions { steps: 300, ..Default::default() }).expect("distils");
        assert!(d.after < 0.2 * d.before, "{d:?}");
        // The graph now holds the fitted constants: the evaluator agrees with the reported loss.
        let y = qc_ir::eval::evaluate(&student, &[Tensor::F32(x.clone())]).expect("runs");
        let t = qc_ir::eval::evaluate(&teacher, &[Tensor::F32(x)]).expect("runs");
        let (loss, _) = loss_and_gradient(y[0].as_f32().expect("f32"), t[0].as_f32().expect("f32"));
        assert!((loss - d.after).abs() <= 1e-3 * d.before, "{loss} vs {d:?}");
        assert!(student.node_ids().any(|n| matches!(&student.node(n).value, Some(ConstValue::Weight(w)) if w == "w.distilled")));
    }

    #[test]
    fn an_op_without_a_gradient_is_named() {
        let text = MODEL.replace("%r = relu(%c)", "%r = sigmoid(%c)");
        let teacher = model(&text, 2, 0.0);
        let mut student = teacher.clone();
        let x = ArrayD::zeros(IxDyn(&[2, 1, 6, 6]));
        let e = distill(&teacher, &mut student, &x, &DistillOptions { steps: 1, ..Default::default() }).expect_err("no sigmoid");
        assert!(e.contains("sigmoid"), "{e}");
    }
}
