//! Runs on several threads ([`crate::CodegenOptions::threads`]): a batch is split into as many
//! parts as there are threads (at most one part per image); the first part runs on the calling
//! thread and the others on the model's own pool of `threads − 1` workers (rayon), which live as
//! long as the model, so that their arenas and buffers are kept between runs like the calling
//! thread's; the outputs are stacked in order.
//! A model takes threads only when its images are independent ([`images_apart`]), so every
//! image's output is what a one-thread run gives, bit for bit; a batch of one runs on the
//! calling thread.

use crate::CodegenError;
use crate::model::CompiledModel;
use qc_ir::{Dim, Graph, OpKind, Tensor};

/// Why the images of a batch are not independent in `g`, if they are not: an input or output
/// without the batch as its leading dim, a value with another dynamic dim or none, dynamic
/// quantization (one range for the whole batch), or an op along the batch axis.
pub(crate) fn images_apart(g: &Graph) -> Result<(), String> {
    let batch_led = |v| {
        let dims = &g.ty(v).dims;
        matches!(dims.first(), Some(Dim::Dynamic)) && dims[1..].iter().all(|d| d.fixed().is_some())
    };
    for &v in g.params().iter().chain(g.outputs()) {
        if !batch_led(v) {
            return Err(format!("{} does not lead with a dynamic batch dim", g.display_value(v)));
        }
    }
    if let Some(id) = g.node_ids().find(|&id| g.node(id).kind == OpKind::DynamicQuantize) {
        let v = g.display_value(g.node(id).results[0]);
        return Err(format!("{v} = dynamic_quantize: dynamic quantization takes one range for the whole batch"));
    }
    for id in g.node_ids() {
        let node = g.node(id);
        if node.value.is_some() {
            continue;
        }
        let what = || format!("{} = {}", g.display_value(node.results[0]), node.kind);
        let computed = node.operands.iter().filter(|&&o| g.producer(o).is_none_or(|p| g.node(p).value.is_none()));
        if let Some(&v) = computed.chain(&node.results).find(|&&v| !batch_led(v)) {
            return Err(format!("{}: {} does not lead with the batch", what(), g.display_value(v)));
        }
        let rank = node.operands.first().map_or(0, |&o| g.ty(o).rank()) as i64;
        let batch_axis = |a: i64| a == 0 || a == -rank;
        let along_batch = node.attrs.ints("axes").is_some_and(|a| a.iter().any(|&a| batch_axis(a)))
            || node.attrs.get("axis").is_some() && batch_axis(node.attrs.int("axis", 1))
            || node.attrs.ints("perm").is_some_and(|p| p.first().is_some_and(|&p| p != 0))
            || node.attrs.int("trans_a", 0) != 0;
        if along_batch {
            return Err(format!("{}: it works along the batch axis", what()));
        }
    }
    Ok(())
}

/// The pool of `threads − 1` workers of a model compiled for `threads` > 1.
pub(crate) fn pool(threads: usize) -> Result<Option<rayon::ThreadPool>, String> {
    if threads < 2 {
        return Ok(None);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads - 1)
        .thread_name(|i| format!("qc-run-{i}"))
        .build()
        .map(Some)
        .map_err(|e| format!("the run threads cannot be started: {e}"))
}

impl CompiledModel {
    /// `inputs` (batch `n` ≥ 2) in parts on up to `threads` threads.
    pub(crate) fn run_split(&self, inputs: &[Tensor], n: usize, threads: usize) -> Result<Vec<Tensor>, CodegenError> {
        let parts = threads.min(n);
        let bounds: Vec<(usize, usize)> = (0..parts).map(|i| (i * n / parts, (i + 1) * n / parts)).collect();
        let slice = |(a, b): (usize, usize)| -> Result<Vec<Tensor>, CodegenError> {
            inputs
                .iter()
                .map(|t| t.rows(a, b).ok_or_else(|| CodegenError::Run(format!("an input has fewer than {b} images"))))
                .collect()
        };
        let chunks = bounds.iter().map(|&b| slice(b)).collect::<Result<Vec<_>, _>>()?;
        let pool = self.pool.as_ref().ok_or_else(|| CodegenError::Run("the model has no worker threads".into()))?;
        let mut results: Vec<Option<Result<Vec<Tensor>, CodegenError>>> = (0..parts).map(|_| None).collect();
        let (first, rest) = results.split_first_mut().expect("at least two parts");
        pool.in_place_scope(|s| {
            for (slot, chunk) in rest.iter_mut().zip(&chunks[1..]) {
                s.spawn(move |_| *slot = Some(self.run_one(chunk)));
            }
            *first = Some(self.run_one(&chunks[0]));
        });
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(CodegenError::Run("a part of the batch was not run".into()))))
            .collect::<Result<Vec<_>, _>>()?;
        (0..results[0].len())
            .map(|o| {
                let parts: Vec<Tensor> = results.iter().map(|r| r[o].clone()).collect();
                Tensor::concat_rows(&parts).map_err(CodegenError::Run)
            })
            .collect()
    }
}
