//! Running a graph over a set of samples (`--calib X.npy`) in the batches it accepts.

use qc_ir::eval::evaluate;
use qc_ir::{Dim, Graph, Tensor};
use std::sync::Arc;

/// Samples per evaluation when the batch dim is dynamic.
const CHUNK: usize = 64;

/// Splits `samples` into batches `g` evaluates: chunks of 64 when its batch dim is dynamic, else
/// the model's batch size (a tail that does not fill one is left out). Checks the shape.
pub fn batches(g: &Graph, samples: &Arc<Tensor>) -> Result<Vec<Tensor>, String> {
    if g.params().len() != 1 {
        return Err(format!("samples feed one input; @{} has {}", g.name, g.params().len()));
    }
    let x = samples.as_f32().ok_or_else(|| format!("samples must be f32, got {}", samples.scalar_type()))?;
    let ty = g.ty(g.params()[0]);
    let fits =
        x.ndim() == ty.rank() && ty.dims.iter().zip(x.shape()).skip(1).all(|(d, &n)| d.fixed().is_none_or(|f| f as usize == n));
    if !fits || x.shape()[0] == 0 {
        return Err(format!("samples of shape {:?} do not fit the input {ty}", x.shape()));
    }
    let (n, chunk) = match ty.dims[0] {
        Dim::Fixed(b) => (x.shape()[0] / b as usize * b as usize, b as usize),
        Dim::Dynamic => (x.shape()[0], CHUNK),
    };
    Ok((0..n)
        .step_by(chunk)
        .map(|s| Tensor::F32(x.slice_axis(ndarray::Axis(0), ndarray::Slice::from(s..(s + chunk).min(n))).to_owned()))
        .collect())
}

/// The index of the largest value in each row of a `[N, C]` output.
pub fn argmax_rows(y: &Tensor) -> Vec<usize> {
    let Some(a) = y.as_f32() else { return Vec::new() };
    let c = a.shape().last().copied().unwrap_or(1).max(1);
    let v: Vec<f32> = a.iter().copied().collect();
    v.chunks(c).map(|r| r.iter().enumerate().fold(0, |b, (i, x)| if *x > r[b] { i } else { b })).collect()
}

/// The fraction of samples on which `a` and `b` pick the same top-1 class (first output).
pub fn agreement(a: &Graph, b: &Graph, batches: &[Tensor]) -> Result<f64, String> {
    let (mut same, mut all) = (0usize, 0usize);
    for x in batches {
        let ya = evaluate(a, std::slice::from_ref(x)).map_err(|e| e.to_string())?;
        let yb = evaluate(b, std::slice::from_ref(x)).map_err(|e| e.to_string())?;
        let (ta, tb) = (argmax_rows(&ya[0]), argmax_rows(&yb[0]));
        same += ta.iter().zip(&tb).filter(|(p, q)| p == q).count();
        all += ta.len();
    }
    Ok(if all == 0 { 1.0 } else { same as f64 / all as f64 })
}

/// Like [`batches`] for a model of any number of inputs: `first` feeds the first, `rest` the
/// others in order, each holding as many samples along its first dim; each batch holds one
/// tensor per input. Checks the shapes (and that f32 inputs get finite f32 samples).
pub fn input_batches(g: &Graph, first: &Arc<Tensor>, rest: &[Arc<Tensor>]) -> Result<Vec<Vec<Tensor>>, String> {
    let inputs: Vec<&Tensor> = std::iter::once(first.as_ref()).chain(rest.iter().map(|t| t.as_ref())).collect();
    if inputs.len() != g.params().len() {
        return Err(format!("@{} takes {} inputs, and samples were given for {}", g.name, g.params().len(), inputs.len()));
    }
    let n = first.shape().first().copied().unwrap_or(0);
    for (&p, t) in g.params().iter().zip(&inputs) {
        let ty = g.ty(p);
        let fits = t.shape().len() == ty.rank()
            && ty.dims.iter().zip(t.shape()).skip(1).all(|(d, &k)| d.fixed().is_none_or(|f| f as usize == k))
            && t.scalar_type() == ty.elem.storage();
        if !fits || t.shape().first() != Some(&n) || n == 0 {
            return Err(format!(
                "samples of {} {:?} do not fit the input {} {ty} (or differ in count from the first input's {n})",
                t.scalar_type(),
                t.shape(),
                g.display_value(p)
            ));
        }
    }
    let (n, chunk) = match g.ty(g.params()[0]).dims[0] {
        Dim::Fixed(b) => (n / b as usize * b as usize, b as usize),
        Dim::Dynamic => (n, CHUNK),
    };
    Ok((0..n).step_by(chunk).map(|s| inputs.iter().map(|t| t.rows(s, (s + chunk).min(n)).expect("counted")).collect()).collect())
}
