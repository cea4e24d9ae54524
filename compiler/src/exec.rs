//! Running a model on a batch of inputs with the reference evaluator.

use qc_ir::eval::evaluate;
use qc_ir::{Dim, Graph, Tensor};

/// Runs `g` on the batch `x` (its first dim), `chunk` samples per evaluation: a model whose batch
/// dim is fixed runs in chunks of that size. Returns the batch of outputs.
pub fn run_batch(g: &Graph, x: &Tensor, chunk: usize) -> Result<Tensor, String> {
    if g.params().len() != 1 || g.outputs().len() != 1 {
        return Err(format!(
            "@{} has {} inputs and {} outputs; batches are run for one of each",
            g.name,
            g.params().len(),
            g.outputs().len()
        ));
    }
    let a = x.as_f32().ok_or_else(|| format!("the input batch must be f32, got {}", x.scalar_type()))?;
    let n = *a.shape().first().ok_or("the input batch has no batch dimension")?;
    let fixed = match g.ty(g.params()[0]).dims.first() {
        Some(Dim::Fixed(b)) => Some(*b as usize),
        _ => None,
    };
    let chunk = fixed.unwrap_or(chunk.max(1));
    if fixed.is_some() && n % chunk != 0 {
        return Err(format!("a batch of {n} does not split into the model's batches of {chunk}"));
    }
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let xi = Tensor::F32(a.slice_axis(ndarray::Axis(0), ndarray::Slice::from(start..end)).to_owned());
        let y = evaluate(g, &[xi]).map_err(|e| format!("samples {start}..{end}: {e}"))?.remove(0);
        outs.push(y.as_f32().ok_or_else(|| format!("the output is {}, not f32", y.scalar_type()))?.clone());
    }
    let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
    Ok(Tensor::F32(ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| e.to_string())?))
}

/// The index of the largest value of each row of a `[N, C]` batch.
pub fn argmax_rows(y: &Tensor) -> Vec<usize> {
    let a = y.as_f32().expect("f32 outputs");
    let c = a.shape().last().copied().unwrap_or(1).max(1);
    let v: Vec<f32> = a.iter().copied().collect();
    v.chunks(c).map(|r| r.iter().enumerate().fold(0, |b, (i, x)| if *x > r[b] { i } else { b })).collect()
}
