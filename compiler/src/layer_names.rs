//! Checks the layer names a user passes (`--keep-fp32`, `--layer-weight-bits`,
//! `--calib-override`) against the model before anything runs: a name no op has would otherwise
//! be ignored in silence. An op answers to its location name and to its results' names, as the
//! passes match them.

use crate::QcError;
use qc_ir::{Graph, OpKind};
use qc_passes::PassOptions;

/// Names that many known names are listed at most.
const LISTED: usize = 12;

/// An error for the first name in `options` that no op of `g` has, with the closest known name
/// and some of the others.
pub fn check_layer_names(g: &Graph, options: &PassOptions) -> Result<(), QcError> {
    let mut known: Vec<String> = Vec::new();
    for n in g.node_ids() {
        let node = g.node(n);
        if node.kind == OpKind::Const {
            continue;
        }
        if !node.loc.name.is_empty() {
            known.push(node.loc.name.clone());
        }
        known.extend(node.results.iter().filter_map(|&r| g.value(r).name.clone()));
    }
    known.sort();
    known.dedup();
    let asked = options
        .keep_fp32
        .iter()
        .map(|n| ("--keep-fp32", n))
        .chain(options.layer_weight_bits.iter().map(|(n, _)| ("--layer-weight-bits", n)))
        .chain(options.calib_overrides.iter().map(|(n, _)| ("--calib-override", n)));
    for (flag, name) in asked {
        if known.binary_search(name).is_ok() {
            continue;
        }
        let closest = known
            .iter()
            .map(|k| (strsim::normalized_levenshtein(k, name), k))
            .filter(|(score, _)| *score >= 0.6)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        let shown: Vec<&str> = known.iter().take(LISTED).map(String::as_str).collect();
        let more = if known.len() > LISTED { format!(" and {} more", known.len() - LISTED) } else { String::new() };
        return Err(QcError::Usage(format!(
            "{flag}: the model has no layer named `{name}`{closest} (layers, by location or result name: {}{more})",
            shown.join(", ")
        )));
    }
    Ok(())
}
