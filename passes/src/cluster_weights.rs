//! `cluster-weights` — approximating (weights move to their cluster's centroid; the top-1
//! agreement with the unclustered model on the calibration samples is reported when given).
//!
//! Deep Compression's weight sharing: the nonzero weights of each f32 conv2d/gemm/matmul layer
//! with a constant weight are clustered by 1-D k-means into `--clusters K` centroids (16 by
//! default), initialized linearly over [min, max] as Deep Compression found best, and each weight
//! becomes its centroid. Zeros (pruned weights) stay exactly zero and are not clustered. The layer
//! then holds at most K + 1 distinct values, which the compressed weights file stores as a
//! codebook and Huffman-coded indices (quantization after clustering keeps the values few).
//!
//! ```text
//! %w = const @"fc.weight" : tensor<64x128xf32>       %w = const @"fc.weight.shared" : tensor<64x128xf32>
//! %y = gemm(%x, %w) {trans_b = true} ...         →   %y = gemm(%x, %w.shared) {trans_b = true} ...
//! ```
//!
//! Leaves alone: layers with at most K distinct nonzero values already. Errors: K outside 2..=256.

use crate::channel_flow::{Rule, layer_names, rule};
use crate::rewrite::{add_const, const_value};
use crate::samples::{agreement, batches};
use crate::{Changed, Pass, PassContext, PassError, PassOptions};
use qc_ir::{ConstValue, Graph, NodeId, Tensor};
use std::sync::Arc;

/// The `cluster-weights` pass.
pub struct ClusterWeights {
    clusters: usize,
    samples: Option<Arc<Tensor>>,
}

impl ClusterWeights {
    /// The pass with its options.
    pub fn new(o: &PassOptions) -> ClusterWeights {
        ClusterWeights { clusters: o.clusters, samples: o.calibration.clone() }
    }
}

/// 1-D k-means of `values` into `k` centroids initialized linearly over their range; returns the
/// centroids (sorted) and each value's cluster.
pub fn kmeans_1d(values: &[f32], k: usize) -> (Vec<f32>, Vec<usize>) {
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let k = k.max(1);
    let mut c: Vec<f64> = (0..k).map(|i| lo as f64 + (hi as f64 - lo as f64) * (i as f64 + 0.5) / k as f64).collect();
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut assign = vec![0usize; values.len()];
    for _ in 0..100 {
        // Sorted values and sorted centroids: one sweep assigns each to its nearest centroid.
        let mut j = 0;
        for &i in &order {
            let v = values[i] as f64;
            while j + 1 < k && (c[j + 1] - v).abs() <= (c[j] - v).abs() {
                j += 1;
            }
            assign[i] = j;
        }
        let (mut sum, mut count) = (vec![0f64; k], vec![0usize; k]);
        for (i, &a) in assign.iter().enumerate() {
            sum[a] += values[i] as f64;
            count[a] += 1;
        }
        let mut moved = false;
        for j in 0..k {
            if count[j] > 0 {
                let m = sum[j] / count[j] as f64;
                moved |= (m - c[j]).abs() > 1e-12 * (1.0 + m.abs());
                c[j] = m;
            }
        }
        if !moved {
            break;
        }
    }
    (c.iter().map(|&v| v as f32).collect(), assign)
}

impl Pass for ClusterWeights {
    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<Changed, PassError> {
        let notes = &mut cx.notes;
        if !(2..=256).contains(&self.clusters) {
            return Err(PassError::msg(format!("--clusters must lie in 2..=256, got {}", self.clusters)));
        }
        let teacher = g.clone();
        let layers: Vec<NodeId> =
            g.topo_order().unwrap_or_default().into_iter().filter(|&n| matches!(rule(g, n), Rule::Layer { .. })).collect();
        let mut changed = false;
        for n in layers {
            let v = g.node(n).operands[1];
            let w = const_value(g, v).expect("a layer's weight is constant");
            let a = w.as_f32().expect("a layer's weight is f32");
            let nonzero: Vec<f32> = a.iter().copied().filter(|&x| x != 0.0).collect();
            let mut distinct: Vec<u32> = nonzero.iter().map(|x| x.to_bits()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() <= self.clusters {
                continue;
            }
            let (centroids, assign) = kmeans_1d(&nonzero, self.clusters);
            let mut it = assign.into_iter();
            let shared = a.mapv(|x| if x == 0.0 { 0.0 } else { centroids[it.next().expect("one per nonzero")] });
            let err: f64 = a.iter().zip(shared.iter()).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let name = layer_names(g, n).into_iter().next().unwrap_or_default();
            notes.push(format!(
                "{name}: {} weights into {} shared values, relative weight error {:.4}",
                a.len(),
                self.clusters,
                err / norm.max(1e-30)
            ));
            let base = match g.producer(v).and_then(|p| g.node(p).value.clone()) {
                Some(ConstValue::Weight(w)) => format!("{w}.shared"),
                _ => format!("{name}.weight.shared"),
            };
            let ty = g.ty(v).clone();
            let loc = g.node(n).loc.clone();
            let nv = add_const(g, &base, Tensor::F32(shared), ty, loc);
            g.set_operand(n, 1, nv);
            changed = true;
        }
        if changed && let Some(s) = &self.samples {
            let b = batches(g, s).map_err(|e| PassError::msg(e))?;
            let a = agreement(&teacher, g, &b).map_err(|e| PassError::msg(e))?;
            notes.push(format!("top-1 agreement with the unclustered model {:.2} % on the calibration samples", 100.0 * a));
        }
        Ok(changed.into())
    }
}
