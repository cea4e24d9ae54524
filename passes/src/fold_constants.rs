//! `fold-constants` — exact.
//!
//! Evaluates, with the reference evaluator, every op whose operands are all constants, and
//! replaces it with a `const` holding the result (inline when small or integer, else a new weight
//! named after the op). `shape` of a value whose type has fixed dims folds without the value, so
//! shape arithmetic subgraphs (`shape → gather → concat → reshape`) fold completely, and a
//! `reshape` whose shape operand is constant takes it as its `shape` attribute.
//!
//! ```text
//! %s = shape(%x) : tensor<4xi64>                     %s = const dense<[1, 16, 4, 4]> : tensor<4xi64>
//! %n = gather(%s, %i) {axis = 0} : tensor<1xi64>  →  %n = const dense<[1]> : tensor<1xi64>
//! %r = reshape(%x, %t) : tensor<1x256xf32>            %r = reshape(%x) {shape = [1, 256]} : tensor<1x256xf32>
//! ```
//!
//! Leaves alone: ops with a non-constant operand, constants whose weights are not loaded, and
//! quantize/dequantize of constants (weights stay integers; `fold-qdq` decides). The replaced ops' operands stay until `dead-code` removes them.

use crate::rewrite::{const_value, origin_name, store_const};
use crate::{Changed, Pass, PassContext, PassError};
use qc_ir::eval::eval_op;
use qc_ir::{Attr, Graph, OpKind, Tensor, TensorType};

/// The `fold-constants` pass.
pub struct FoldConstants;

impl Pass for FoldConstants {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let order = g.topo_order().map_err(|n| PassError::msg(format!("the graph has a cycle through {n}")))?;
        let mut changed = false;
        for id in order {
            let node = g.node(id);
            let kind = node.kind;
            // Quantized constants stay quantized: Q/DQ of constants are fold-qdq's to decide.
            if matches!(
                kind,
                OpKind::Const | OpKind::Quantize | OpKind::Dequantize | OpKind::Requantize | OpKind::DynamicQuantize
            ) {
                continue;
            }
            let result = node.results[0];
            let folded: Option<Tensor> = if kind == OpKind::Shape {
                g.ty(node.operands[0]).fixed_dims().map(|d| Tensor::from_i64s(d.iter().map(|&n| n as i64).collect()))
            } else {
                let args: Option<Vec<_>> = node.operands.iter().map(|&o| const_value(g, o)).collect();
                match args {
                    Some(args) => {
                        let refs: Vec<&Tensor> = args.iter().map(|a| a.as_ref()).collect();
                        let tys: Vec<&TensorType> = node.operands.iter().map(|&o| g.ty(o)).collect();
                        let out = g.ty(result);
                        match eval_op(kind, &node.attrs, &refs, &tys, out) {
                            Ok(t) if t.matches(out) => Some(t),
                            // An op the evaluator cannot compute on constants is left for later stages.
                            _ => None,
                        }
                    }
                    None => None,
                }
            };
            if let Some(t) = folded {
                let base = format!("{}.folded", origin_name(g, result));
                let value = store_const(g, &base, t);
                let n = g.node_mut(id);
                n.kind = OpKind::Const;
                n.attrs = Default::default();
                n.value = Some(value);
                n.operands.clear();
                changed = true;
                continue;
            }
            if kind == OpKind::Reshape && g.node(id).operands.len() == 2 {
                let shape_operand = g.node(id).operands[1];
                if let Some(spec) = const_value(g, shape_operand).and_then(|t| t.to_i64_vec()) {
                    let n = g.node_mut(id);
                    n.operands.truncate(1);
                    n.attrs.set("shape", Attr::Ints(spec));
                    changed = true;
                }
            }
        }
        if changed {
            g.rebuild_edges();
        }
        Ok(changed.into())
    }
}
