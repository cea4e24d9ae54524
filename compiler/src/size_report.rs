//! The size report (`qc size`): weight bytes per layer and in total at each compression stage —
//! fp32, int8, pruned, clustered, Huffman-coded — with the ratio to fp32 and, when labelled test
//! data is given, each stage's test errors.

use crate::packed_weights::Packed;
use qc_ir::cost::layer_costs;
use qc_ir::{ConstValue, Graph, OpKind};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write;

/// One stage of compression.
#[derive(Clone, Debug)]
pub struct Stage {
    /// `fp32`, `int8`, ...
    pub name: String,
    /// Bytes per layer (its weight and bias), by layer name.
    pub layers: Vec<(String, u64)>,
    /// Bytes of every weight the model refers to.
    pub total: u64,
    /// Test errors, when measured.
    pub errors: Option<usize>,
}

/// The names of the weights each layer's constant operands refer to.
fn layer_weights(g: &Graph) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for n in g.topo_order().unwrap_or_default() {
        let node = g.node(n);
        if !matches!(node.kind, OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul | OpKind::ConvInteger | OpKind::MatMulInteger) {
            continue;
        }
        let names = node.operands[1..]
            .iter()
            .filter_map(|&v| g.producer(v))
            .filter_map(|p| match &g.node(p).value {
                Some(ConstValue::Weight(w)) => Some(w.clone()),
                _ => None,
            })
            .collect();
        let name = if node.loc.name.is_empty() { g.display_value(node.results[0]) } else { node.loc.name.clone() };
        out.push((name, names));
    }
    out
}

/// A stage from a graph as it is stored (weights at their storage type).
pub fn stage(name: &str, g: &Graph, errors: Option<usize>) -> Stage {
    let layers = layer_costs(g).into_iter().map(|c| (c.name, c.weight_bytes)).collect();
    let total = crate::model::referenced_weights(g)
        .iter()
        .filter_map(|w| g.weights.get(w))
        .map(|t| t.len() as u64 * qc_ir::cost::storage_bits(t.scalar_type()) / 8)
        .sum();
    Stage { name: name.into(), layers, total, errors }
}

/// The Huffman stage: `g`'s weights as [`crate::packed_weights::pack`] coded them (file bytes).
pub fn packed_stage(g: &Graph, packed: &[Packed], file_bytes: u64, errors: Option<usize>) -> Stage {
    let by_name: HashMap<&str, usize> = packed.iter().map(|p| (p.name.as_str(), p.packed_bytes)).collect();
    let layers = layer_weights(g)
        .into_iter()
        .map(|(layer, ws)| (layer, ws.iter().map(|w| by_name.get(w.as_str()).copied().unwrap_or(0) as u64).sum()))
        .collect();
    Stage { name: "huffman".into(), layers, total: file_bytes, errors }
}

/// The table a person reads.
pub fn summary(stages: &[Stage]) -> String {
    let base = stages.first().map_or(1, |s| s.total.max(1));
    let mut s = format!("{:<24}", "layer");
    for st in stages {
        write!(s, " {:>12}", st.name).expect("String");
    }
    s.push('\n');
    if let Some(first) = stages.first() {
        for (layer, _) in &first.layers {
            write!(s, "{layer:<24}").expect("String");
            for st in stages {
                match st.layers.iter().find(|(n, _)| n == layer) {
                    Some((_, b)) => write!(s, " {b:>12}").expect("String"),
                    None => write!(s, " {:>12}", "-").expect("String"),
                }
            }
            s.push('\n');
        }
    }
    write!(s, "{:<24}", "total bytes").expect("String");
    for st in stages {
        write!(s, " {:>12}", st.total).expect("String");
    }
    write!(s, "\n{:<24}", "fp32 / stage").expect("String");
    for st in stages {
        write!(s, " {:>11.2}x", base as f64 / st.total.max(1) as f64).expect("String");
    }
    if stages.iter().any(|st| st.errors.is_some()) {
        write!(s, "\n{:<24}", "test errors").expect("String");
        for st in stages {
            match st.errors {
                Some(e) => write!(s, " {e:>12}").expect("String"),
                None => write!(s, " {:>12}", "-").expect("String"),
            }
        }
    }
    s.push('\n');
    s
}

/// The report as JSON.
pub fn to_json(stages: &[Stage]) -> Value {
    let base = stages.first().map_or(1, |s| s.total.max(1));
    Value::Array(
        stages
            .iter()
            .map(|st| {
                let layers: Vec<Value> = st.layers.iter().map(|(n, b)| json!({"layer": n, "bytes": b})).collect();
                json!({"stage": st.name, "bytes": st.total, "ratio_to_fp32": base as f64 / st.total.max(1) as f64,
                       "test_errors": st.errors, "layers": layers})
            })
            .collect(),
    )
}
