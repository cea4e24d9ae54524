//! `dead-code` — exact.
//!
//! Removes every op none of whose results is used by another op or returned, repeatedly, and
//! drops the weights that no remaining `const` refers to.
//!
//! ```text
//! %a = relu(%x) : tensor<4xf32>          (removed: %a is never used)
//! %b = sigmoid(%x) : tensor<4xf32>   →   %b = sigmoid(%x) : tensor<4xf32>
//! return %b                              return %b
//! ```
//!
//! Leaves alone: anything a returned value depends on. Unused function parameters stay (they
//! are part of the signature).

use crate::{Changed, Pass, PassContext, PassError};
use qc_ir::{ConstValue, Graph};
use std::collections::HashSet;

/// The `dead-code` pass.
pub struct DeadCode;

impl Pass for DeadCode {
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<Changed, PassError> {
        let mut changed = false;
        loop {
            let dead: Vec<_> = g.node_ids().filter(|&id| g.node(id).results.iter().all(|&r| g.use_count(r) == 0)).collect();
            if dead.is_empty() {
                break;
            }
            for id in dead {
                g.remove_node(id);
            }
            changed = true;
        }
        let referenced: HashSet<String> = g
            .node_ids()
            .filter_map(|id| match &g.node(id).value {
                Some(ConstValue::Weight(w)) => Some(w.clone()),
                _ => None,
            })
            .collect();
        let before = g.weights.len();
        g.weights.retain(|name| referenced.contains(name));
        Ok((changed || g.weights.len() != before).into())
    }
}
