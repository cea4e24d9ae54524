//! Layer-wise reconstruction: re-fits a pruned layer's weights and bias by least squares so that,
//! on the calibration samples, its output matches what the unpruned model's same layer computes
//! from the unpruned model's own input — a closed-form, layer-by-layer distillation from the
//! unpruned teacher.
//!
//! For a layer with input patches `p` (im2col rows of the pruned input, plus a 1 for the bias)
//! and teacher outputs `y = W_t p_t + b_t` (restricted to the channels the layer keeps), the new
//! weights solve the ridge problem `min ‖P w − y‖² + λ‖w − w₀‖²`, where `w₀` are the pruned
//! weights as they are and `λ` is 10⁻³ of the mean diagonal of `PᵀP`: with few samples the fit
//! stays near `w₀` instead of overfitting. Only `PᵀP` and `Pᵀy` are accumulated, so memory does
//! not grow with the number of samples. The normal equations are solved by Cholesky in f64.
//! A depthwise conv is fitted per channel (its taps and bias from its own input channel).

use crate::backprop::{Window, each_tap};
use crate::rewrite::{add_const, const_value};
use ndarray::{ArrayD, IxDyn};
use qc_ir::eval::evaluate_observed;
use qc_ir::{ConstValue, Graph, NodeId, OpKind, ScalarType, Tensor, TensorType, ValueId};

/// How well a layer matched its teacher before and after the fit: `‖y − ŷ‖ / ‖y‖` on the samples.
#[derive(Clone, Debug)]
pub struct Fit {
    /// The layer's location name.
    pub layer: String,
    /// Relative error of the pruned weights as they were.
    pub before: f64,
    /// Relative error of the fitted weights.
    pub after: f64,
}

/// A layer's geometry: how input rows (patches) are formed.
struct Layer {
    kind: OpKind,
    /// Weight as `[O][K]` in patch order.
    w: Vec<f32>,
    b: Vec<f32>,
    o: usize,
    k: usize,
    /// Conv: its geometry.
    conv: Option<Window>,
}

fn layer(g: &Graph, n: NodeId) -> Result<Layer, String> {
    let node = g.node(n);
    let w = const_value(g, node.operands[1]).ok_or("the weight is not a constant")?;
    let wa = w.as_f32().ok_or("the weight is not f32")?;
    let shape = wa.shape().to_vec();
    let flat: Vec<f32> = wa.iter().copied().collect();
    let (o, k, wm, conv) = match node.kind {
        OpKind::Conv2d => {
            let win = Window::of(g, n, [shape[2], shape[3]]);
            (shape[0], shape[1] * shape[2] * shape[3], flat, Some(win))
        }
        OpKind::Gemm if node.attrs.bool("trans_b", false) => (shape[0], shape[1], flat, None),
        OpKind::Gemm | OpKind::MatMul => {
            let (k, o) = (shape[0], shape[1]);
            let mut t = vec![0.0; o * k];
            for i in 0..k {
                for j in 0..o {
                    t[j * k + i] = flat[i * o + j];
                }
            }
            (o, k, t, None)
        }
        other => return Err(format!("{other} is not a layer reconstruction handles")),
    };
    if node.kind == OpKind::Gemm && (node.attrs.float("alpha", 1.0) != 1.0 || node.attrs.float("beta", 1.0) != 1.0) {
        return Err("gemm with alpha or beta other than 1".into());
    }
    let b = match node.operands.get(2) {
        Some(&b) => {
            let t = const_value(g, b).ok_or("the bias is not a constant")?;
            let v: Vec<f32> = t.as_f32().ok_or("the bias is not f32")?.iter().copied().collect();
            if v.len() == o {
                v
            } else if v.len() == 1 {
                vec![v[0]; o]
            } else {
                return Err(format!("a bias of {} values for {o} outputs", v.len()));
            }
        }
        None => vec![0.0; o],
    };
    Ok(Layer { kind: node.kind, w: wm, b, o, k, conv })
}

/// The rows (patches) of input `x` for `l`, `k` values each, appended to `out`.
fn patches(l: &Layer, x: &ArrayD<f32>, out: &mut Vec<f32>) {
    match l.conv {
        None => out.extend(x.iter().copied()),
        Some(win) => {
            let s = x.shape();
            let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
            let [oh, ow] = win.out(h, w);
            let k = c * win.taps();
            let start = out.len();
            out.resize(start + n * oh * ow * k, 0.0);
            let xs = x.as_slice().expect("standard layout");
            each_tap([n, c, h, w], 0, c, &win, |row, col, at| out[start + row * k + col] = xs[at]);
        }
    }
}

/// Solves `a x = b` for symmetric positive definite `a` (`n × n`), in place in `b` (`n × m`).
pub(crate) fn cholesky_solve(mut a: Vec<f64>, n: usize, b: &mut [f64], m: usize) -> Result<(), String> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return Err("the normal equations are not positive definite".into());
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for c in 0..m {
        for i in 0..n {
            let mut s = b[i * m + c];
            for k in 0..i {
                s -= a[i * n + k] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = b[i * m + c];
            for k in i + 1..n {
                s -= a[k * n + i] * b[k * m + c];
            }
            b[i * m + c] = s / a[i * n + i];
        }
    }
    Ok(())
}

/// Captures value `v` of `g` on each batch.
fn capture(g: &Graph, v: ValueId, batches: &[Tensor]) -> Result<Vec<ArrayD<f32>>, String> {
    let mut out = Vec::new();
    for x in batches {
        let mut got = None;
        evaluate_observed(g, std::slice::from_ref(x), |id, t| {
            if id == v {
                got = t.as_f32().cloned();
            }
        })
        .map_err(|e| e.to_string())?;
        out.push(got.ok_or_else(|| format!("{} is not an f32 value the evaluator computes", g.display_value(v)))?);
    }
    Ok(out)
}

/// The least-squares statistics of one layer over the samples: `PᵀP` and `Pᵀy` (rows of `P`
/// being the student's input patches plus a 1 for the bias), and `Σ y²`.
pub(crate) struct Normal {
    /// Inputs per patch (the bias column excluded).
    pub k: usize,
    /// Outputs.
    pub o: usize,
    /// Input positions (axis 1) per patch column: each position spans `taps` consecutive columns.
    pub taps: usize,
    /// `(k+1) × (k+1)`.
    pub gram: Vec<f64>,
    /// `(k+1) × o`.
    pub rhs: Vec<f64>,
    /// `Σ y²` over every output.
    pub yy: f64,
}

/// Accumulates [`Normal`] for layer `n`: targets from the teacher's layer on the teacher's input
/// (its output channels `origin`), patches from the student's input.
pub(crate) fn normal_equations(
    teacher: &Graph,
    student: &Graph,
    n: NodeId,
    origin: &[usize],
    batches: &[Tensor],
) -> Result<Normal, String> {
    let (t, s) = (layer(teacher, n)?, layer(student, n)?);
    if origin.len() != s.o {
        return Err(format!("{} output channels, {} known origins", s.o, origin.len()));
    }
    let x = student.node(n).operands[0];
    let (xt, xs) = (capture(teacher, x, batches)?, capture(student, x, batches)?);
    let k1 = s.k + 1;
    let mut gram = vec![0f64; k1 * k1];
    let mut rhs = vec![0f64; k1 * s.o];
    let mut yy = 0f64;
    let (mut pt, mut ps) = (Vec::new(), Vec::new());
    let mut y = vec![0f64; s.o];
    let mut row = vec![0f64; k1];
    for (a, b) in xt.iter().zip(&xs) {
        pt.clear();
        ps.clear();
        patches(&t, a, &mut pt);
        patches(&s, b, &mut ps);
        for (rt, rs) in pt.chunks_exact(t.k).zip(ps.chunks_exact(s.k)) {
            for (c, &oc) in origin.iter().enumerate() {
                let w = &t.w[oc * t.k..(oc + 1) * t.k];
                y[c] = w.iter().zip(rt).map(|(&w, &p)| w as f64 * p as f64).sum::<f64>() + t.b[oc] as f64;
                yy += y[c] * y[c];
            }
            for (r, &p) in row.iter_mut().zip(rs) {
                *r = p as f64;
            }
            // matmul has no bias operand: its bias column stays 0.
            row[s.k] = if s.kind == OpKind::MatMul { 0.0 } else { 1.0 };
            accumulate(&row, &y, &mut gram, &mut rhs);
        }
    }
    let taps = s.conv.map_or(1, |w| w.taps());
    Ok(Normal { k: s.k, o: s.o, taps, gram, rhs, yy })
}

/// Adds one row's `rowᵀrow` to `gram` and `rowᵀy` to `rhs`.
fn accumulate(row: &[f64], y: &[f64], gram: &mut [f64], rhs: &mut [f64]) {
    let (k1, o) = (row.len(), y.len());
    for i in 0..k1 {
        if row[i] == 0.0 {
            continue;
        }
        let ri = row[i];
        let g = &mut gram[i * k1..(i + 1) * k1];
        for j in 0..k1 {
            g[j] += ri * row[j];
        }
        let r = &mut rhs[i * o..(i + 1) * o];
        for c in 0..o {
            r[c] += ri * y[c];
        }
    }
}

/// The ridge added to the diagonal of `PᵀP`: 10⁻³ of its mean diagonal.
pub(crate) fn ridge(gram: &[f64], k1: usize) -> f64 {
    1e-3 * (0..k1).map(|i| gram[i * k1 + i]).sum::<f64>() / k1 as f64 + 1e-12
}

/// Re-fits layer `n` of `student` against the same layer of `teacher`. `origin[c]` is the
/// teacher channel of the student's output channel `c`. The node ids and the layer's input
/// value are the same in both graphs (pruning rewrites constants and types, not the dataflow).
/// With `keep_zeros`, weights that are 0 stay 0 (each output is fitted on its own support, for
/// sparsified layers).
pub fn refit(
    teacher: &Graph,
    student: &mut Graph,
    n: NodeId,
    origin: &[usize],
    batches: &[Tensor],
    keep_zeros: bool,
) -> Result<Fit, String> {
    let s = layer(student, n)?;
    let Normal { gram, rhs, yy, .. } = normal_equations(teacher, student, n, origin, batches)?;
    let k1 = s.k + 1;
    // w0 in [K+1][O] layout: the pruned weights as they are.
    let mut w0 = vec![0f64; k1 * s.o];
    for c in 0..s.o {
        for i in 0..s.k {
            w0[i * s.o + c] = s.w[c * s.k + i] as f64;
        }
        w0[s.k * s.o + c] = s.b[c] as f64;
    }
    // The relative error of all outputs, column `c` of `[K+1][O]` weights being output `c`'s.
    let residual = |w: &[f64]| -> f64 {
        let column = |m: &[f64], c: usize| -> Vec<f64> { (0..k1).map(|i| m[i * s.o + c]).collect() };
        let e: f64 = (0..s.o).map(|c| squared_error(&gram, &column(&rhs, c), 0.0, &column(w, c))).sum::<f64>() + yy;
        (e.max(0.0) / yy.max(f64::MIN_POSITIVE)).sqrt()
    };
    let lambda = ridge(&gram, k1);
    let mut sol = vec![0f64; k1 * s.o];
    if keep_zeros {
        // Each output on its own support: the nonzero weights and the bias.
        for c in 0..s.o {
            let support: Vec<usize> = (0..k1).filter(|&i| i == s.k || w0[i * s.o + c] != 0.0).collect();
            let m = support.len();
            let g = &gram;
            let a: Vec<f64> = support.iter().flat_map(|&i| support.iter().map(move |&j| g[i * k1 + j])).collect();
            let mut b: Vec<f64> = support.iter().map(|&i| rhs[i * s.o + c]).collect();
            let start: Vec<f64> = support.iter().map(|&i| w0[i * s.o + c]).collect();
            solve_toward(a, m, &mut b, &start, lambda)?;
            for (r, &i) in support.iter().enumerate() {
                sol[i * s.o + c] = b[r];
            }
        }
    } else {
        sol.clone_from(&rhs);
        solve_toward(gram.clone(), k1, &mut sol, &w0, lambda)?;
    }
    let fit = Fit { layer: student.node(n).loc.name.clone(), before: residual(&w0), after: residual(&sol) };
    if fit.after >= fit.before {
        return Ok(Fit { after: fit.before, ..fit });
    }
    write_back(student, n, &s, &sol)?;
    Ok(fit)
}

/// Re-fits depthwise conv `n` of `student`, each channel on its own: its taps and bias, from the
/// student's input channel, toward what the teacher's channel `origin[c]` computes from the
/// teacher's input.
pub fn refit_depthwise(
    teacher: &Graph,
    student: &mut Graph,
    n: NodeId,
    origin: &[usize],
    batches: &[Tensor],
) -> Result<Fit, String> {
    let (t, s) = (layer(teacher, n)?, layer(student, n)?);
    if s.kind != OpKind::Conv2d || student.node(n).attrs.int("groups", 1) as usize != s.o || origin.len() != s.o {
        return Err("not a depthwise conv with a known channel origin".into());
    }
    let x = student.node(n).operands[0];
    let (xt, xs) = (capture(teacher, x, batches)?, capture(student, x, batches)?);
    let k1 = s.k + 1;
    let mut gram = vec![vec![0f64; k1 * k1]; s.o];
    let mut rhs = vec![vec![0f64; k1]; s.o];
    let mut yy = vec![0f64; s.o];
    let (mut pt, mut ps) = (Vec::new(), Vec::new());
    let mut row = vec![0f64; k1];
    row[s.k] = 1.0;
    for (a, b) in xt.iter().zip(&xs) {
        for (c, &oc) in origin.iter().enumerate() {
            pt.clear();
            ps.clear();
            patches(
                &t,
                &a.index_axis(ndarray::Axis(1), oc).insert_axis(ndarray::Axis(1)).as_standard_layout().into_owned(),
                &mut pt,
            );
            patches(
                &s,
                &b.index_axis(ndarray::Axis(1), c).insert_axis(ndarray::Axis(1)).as_standard_layout().into_owned(),
                &mut ps,
            );
            let w = &t.w[oc * t.k..(oc + 1) * t.k];
            for (rt, rs) in pt.chunks_exact(t.k).zip(ps.chunks_exact(s.k)) {
                let y = w.iter().zip(rt).map(|(&w, &p)| w as f64 * p as f64).sum::<f64>() + t.b[oc] as f64;
                yy[c] += y * y;
                for (r, &p) in row.iter_mut().zip(rs) {
                    *r = p as f64;
                }
                accumulate(&row, &[y], &mut gram[c], &mut rhs[c]);
            }
        }
    }
    let mut sol = vec![0f64; k1 * s.o];
    let (mut before, mut after, mut total) = (0f64, 0f64, 0f64);
    for c in 0..s.o {
        let mut w0: Vec<f64> = s.w[c * s.k..(c + 1) * s.k].iter().map(|&v| v as f64).collect();
        w0.push(s.b[c] as f64);
        let mut b = rhs[c].clone();
        solve_toward(gram[c].clone(), k1, &mut b, &w0, ridge(&gram[c], k1))?;
        let (e0, e1) = (squared_error(&gram[c], &rhs[c], yy[c], &w0), squared_error(&gram[c], &rhs[c], yy[c], &b));
        // A channel keeps its weights unless the fit is better for it.
        let w = if e1 < e0 { &b } else { &w0 };
        for i in 0..k1 {
            sol[i * s.o + c] = w[i];
        }
        before += e0;
        after += e0.min(e1);
        total += yy[c];
    }
    let rel = |e: f64| (e.max(0.0) / total.max(f64::MIN_POSITIVE)).sqrt();
    let fit = Fit { layer: student.node(n).loc.name.clone(), before: rel(before), after: rel(after) };
    if after < before {
        write_back(student, n, &s, &sol)?;
    }
    Ok(fit)
}

/// The ridge solution `(A + λI) x = b + λ·x₀` for `n × n` normal equations `a` and `m`
/// right-hand sides `b` (`n × m`, overwritten by `x`), pulled toward the start `x0` (`n × m`).
fn solve_toward(mut a: Vec<f64>, n: usize, b: &mut [f64], x0: &[f64], lambda: f64) -> Result<(), String> {
    let m = b.len() / n.max(1);
    for i in 0..n {
        a[i * n + i] += lambda;
    }
    for (b, &x) in b.iter_mut().zip(x0) {
        *b += lambda * x;
    }
    cholesky_solve(a, n, b, m)
}

/// `‖P w − y‖²` of one output from its statistics: `yy − 2 wᵀ(Pᵀy) + wᵀ(PᵀP)w`.
fn squared_error(gram: &[f64], rhs: &[f64], yy: f64, w: &[f64]) -> f64 {
    let k1 = w.len();
    let mut e = yy;
    for i in 0..k1 {
        let acc: f64 = (0..k1).map(|j| gram[i * k1 + j] * w[j]).sum();
        e += w[i] * acc - 2.0 * w[i] * rhs[i];
    }
    e
}

/// Stores the solution (`[K+1][O]`) as the layer's new weight and bias.
fn write_back(g: &mut Graph, n: NodeId, l: &Layer, sol: &[f64]) -> Result<(), String> {
    let node = g.node(n).clone();
    let w = node.operands[1];
    let wshape = g.ty(w).fixed_dims().ok_or("the weight's shape is not fixed")?;
    let mut data = vec![0f32; l.o * l.k];
    for c in 0..l.o {
        for i in 0..l.k {
            let v = sol[i * l.o + c] as f32;
            match l.kind {
                OpKind::Conv2d => data[c * l.k + i] = v,
                OpKind::Gemm if node.attrs.bool("trans_b", false) => data[c * l.k + i] = v,
                _ => data[i * l.o + c] = v,
            }
        }
    }
    let weight_name = |g: &Graph, v: ValueId, role: &str| match g.producer(v).and_then(|p| g.node(p).value.clone()) {
        Some(ConstValue::Weight(name)) => format!("{name}.fit"),
        _ => format!("{}.{role}.fit", node.loc.name),
    };
    let base = weight_name(g, w, "weight");
    let t = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&wshape), data).expect("sized"));
    let wty = g.ty(w).clone();
    let nw = add_const(g, &base, t, wty, node.loc.clone());
    g.set_operand(n, 1, nw);
    let bias: Vec<f32> = (0..l.o).map(|c| sol[l.k * l.o + c] as f32).collect();
    if l.kind == OpKind::MatMul {
        return Ok(()); // no bias operand (its column was held at 0)
    }
    let (bshape, base) = match node.operands.get(2) {
        Some(&b) => (g.ty(b).fixed_dims().ok_or("the bias's shape is not fixed")?, weight_name(g, b, "bias")),
        None => (vec![l.o], format!("{}.bias.fit", node.loc.name)),
    };
    let t = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&bshape), bias).map_err(|e| e.to_string())?);
    let bty = TensorType::new(&bshape.iter().map(|&d| d as u64).collect::<Vec<_>>(), ScalarType::F32);
    let nb = add_const(g, &base, t, bty, node.loc.clone());
    match node.operands.get(2) {
        Some(_) => g.set_operand(n, 2, nb),
        None => {
            g.node_mut(n).operands.push(nb);
            g.rebuild_edges();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn with_weights(text: &str, seed: u64) -> Graph {
        let mut g = qc_ir::text::parse(text).expect("parses");
        let mut s = seed;
        for (name, shape) in [("w", vec![4, 1, 3, 3]), ("b", vec![4])] {
            let n = shape.iter().product();
            let t = ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|_| lcg(&mut s)).collect()).expect("sized");
            g.weights.insert(name.to_string(), Tensor::F32(t));
        }
        g
    }

    #[test]
    fn a_depthwise_refit_recovers_the_teachers_channels() {
        let text = r#"func @dw(%x: tensor<?x4x5x5xf32>) -> tensor<?x4x5x5xf32> {
  %w = const @"w" : tensor<4x1x3x3xf32>
  %b = const @"b" : tensor<4xf32>
  %y = conv2d(%x, %w, %b) {groups = 4, pads = [1, 1, 1, 1]} : tensor<?x4x5x5xf32> loc("dw")
  return %y
}"#;
        let teacher = with_weights(text, 1);
        let mut student = with_weights(text, 2);
        let mut seed = 3;
        let x = ArrayD::from_shape_vec(IxDyn(&[6, 4, 5, 5]), (0..600).map(|_| lcg(&mut seed)).collect()).expect("sized");
        let batches = [Tensor::F32(x)];
        let n = student.node_ids().find(|&n| student.node(n).kind == OpKind::Conv2d).expect("the conv");
        let fit = refit_depthwise(&teacher, &mut student, n, &[0, 1, 2, 3], &batches).expect("fits");
        // Same inputs, so each channel's taps can match exactly (the ridge pulls a little toward
        // the student's own weights).
        assert!(fit.before > 0.5 && fit.after < 0.01, "{fit:?}");
        let (a, b) =
            (qc_ir::eval::evaluate(&teacher, &batches).expect("runs"), qc_ir::eval::evaluate(&student, &batches).expect("runs"));
        let (a, b) = (a[0].as_f32().expect("f32"), b[0].as_f32().expect("f32"));
        let err = a.iter().zip(b.iter()).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(err < 0.05, "max |teacher − student| {err}");
    }
}
