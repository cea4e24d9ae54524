//! What each layer costs: parameters, multiply-accumulates per sample and weight bytes, for the
//! reports of pruning and compression.

use crate::graph::Graph;
use crate::ops::OpKind;
use crate::types::{Dim, ScalarType};

/// The cost of one conv/gemm/matmul.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerCost {
    /// Its source location (the ONNX node name), else its result's name.
    pub name: String,
    /// The op.
    pub op: OpKind,
    /// Output channels (axis 1 of the result).
    pub channels: u64,
    /// Elements of its constant operands (weights and bias).
    pub params: u64,
    /// Multiply-accumulates per sample (the batch dim excluded).
    pub macs: u64,
    /// Bytes its constant operands take in storage (i4 counts half a byte).
    pub weight_bytes: u64,
}

/// Bits per stored element.
pub fn storage_bits(s: ScalarType) -> u64 {
    match s {
        ScalarType::F32 | ScalarType::I32 => 32,
        ScalarType::F16 => 16,
        ScalarType::I64 => 64,
        ScalarType::I8 | ScalarType::U8 | ScalarType::Bool => 8,
        ScalarType::I4 => 4,
    }
}

fn product(dims: &[Dim]) -> u64 {
    dims.iter().map(|d| d.fixed().unwrap_or(1)).product()
}

/// The cost of every conv2d, gemm and matmul of `g` (float or integer), in topological order.
pub fn layer_costs(g: &Graph) -> Vec<LayerCost> {
    let mut out = Vec::new();
    for n in g.topo_order().unwrap_or_default() {
        let node = g.node(n);
        let kind = match node.kind {
            OpKind::Conv2d | OpKind::ConvInteger => OpKind::Conv2d,
            OpKind::Gemm => OpKind::Gemm,
            OpKind::MatMul | OpKind::MatMulInteger => OpKind::MatMul,
            _ => continue,
        };
        let result = node.results[0];
        let y = &g.ty(result).dims;
        let w = &g.ty(node.operands[1]).dims;
        let per_output = match kind {
            OpKind::Conv2d => product(&w[1..]),
            OpKind::Gemm if node.attrs.bool("trans_b", false) => product(&w[1..2]),
            _ => product(&w[..1]),
        };
        let outputs = product(y.get(1..).unwrap_or(&[]));
        let (mut params, mut bits) = (0, 0);
        for &o in &node.operands[1..] {
            if g.producer_of_kind(o, OpKind::Const).is_some() {
                let t = g.ty(o);
                params += product(&t.dims);
                bits += product(&t.dims) * storage_bits(t.elem.storage());
            }
        }
        let name = if node.loc.name.is_empty() { g.display_value(result) } else { node.loc.name.clone() };
        out.push(LayerCost {
            name,
            op: kind,
            channels: y.get(1).and_then(|d| d.fixed()).unwrap_or(0),
            params,
            macs: outputs * per_output,
            weight_bytes: bits.div_ceil(8),
        });
    }
    out
}
