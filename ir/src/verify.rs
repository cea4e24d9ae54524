//! The verifier: every graph a pass hands on must pass it. It checks arity, attributes,
//! quantization parameters, that every type agrees with the op's shape rule, constants against
//! the weights, and that the graph has no cycle. Errors name the value at fault and point at its
//! text when the graph was parsed.

use crate::attr::Attrs;
use crate::diag::Diagnostic;
use crate::graph::{ConstValue, Graph, NodeId, ValueDef, ValueId};
use crate::infer::{Operand, infer};
use crate::ops::OpKind;
use crate::types::{Dim, ElemType, TensorType};

/// What to check besides the graph itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Check that every `const @"name"` exists in the graph's weights with the declared type.
    pub check_weights: bool,
}

/// Checks an op's attributes against its schema: unknown names, wrong kinds, missing required
/// ones. On error returns the attribute at fault (if one) and a message.
pub fn check_attrs(kind: OpKind, attrs: &Attrs) -> Result<(), (Option<String>, String)> {
    for (k, v) in &attrs.0 {
        match kind.attr_spec(k) {
            None => {
                let known: Vec<&str> = kind.attrs().iter().map(|a| a.name).collect();
                let hint = if known.is_empty() { "it takes none".to_string() } else { format!("it takes {}", known.join(", ")) };
                return Err((Some(k.clone()), format!("{kind} has no attribute `{k}`; {hint}")));
            }
            Some(spec) if !v.fits(spec.kind) => {
                return Err((Some(k.clone()), format!("attribute `{k}` of {kind} must be {}, got `{v}`", spec.kind)));
            }
            Some(_) => {}
        }
    }
    if let Some(spec) = kind.attrs().iter().find(|s| s.required && attrs.get(s.name).is_none()) {
        return Err((None, format!("{kind} needs attribute `{}` ({})", spec.name, spec.kind)));
    }
    Ok(())
}

/// Checks a type on its own: quantization parameters and size.
pub fn check_type(ty: &TensorType) -> Result<(), String> {
    if ty.dims.iter().all(|d| d.fixed().is_some()) && ty.num_elements().is_none() {
        return Err(format!("{ty} has more than 2^40 elements"));
    }
    if let ElemType::Quant(q) = &ty.elem {
        let (lo, hi) = q.storage.quant_range().ok_or_else(|| format!("{} cannot store quantized values", q.storage))?;
        if q.scales.is_empty() || q.scales.len() != q.zero_points.len() {
            return Err(format!("{ty}: scales and zero points must be non-empty and as many"));
        }
        if let Some(s) = q.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("{ty}: scale {s} must be positive and finite"));
        }
        if let Some(z) = q.zero_points.iter().find(|&&z| z < lo || z > hi) {
            return Err(format!("{ty}: zero point {z} is outside [{lo}, {hi}]"));
        }
        match q.axis {
            None if q.scales.len() != 1 => return Err(format!("{ty}: per-tensor parameters need one scale")),
            Some(a) => match ty.dims.get(a) {
                None => return Err(format!("{ty}: quantization axis {a} is out of range")),
                Some(Dim::Fixed(n)) if *n != q.scales.len() as u64 => {
                    return Err(format!("{ty}: axis {a} has size {n} but there are {} scales", q.scales.len()));
                }
                _ => {}
            },
            None => {}
        }
    }
    Ok(())
}

struct Verifier<'g> {
    g: &'g Graph,
    errors: Vec<Diagnostic>,
}

impl Verifier<'_> {
    fn at_node(&mut self, id: NodeId, msg: String) {
        let node = self.g.node(id);
        let who = node.results.first().map(|&r| self.g.display_value(r)).unwrap_or_else(|| node.kind.to_string());
        self.errors.push(Diagnostic::at(format!("{who}: {msg}"), node.span.clone()).with_label(format!("in this {}", node.kind)));
    }

    fn at_value(&mut self, v: ValueId, msg: String) {
        let span = self.g.value(v).span.clone();
        self.errors.push(Diagnostic::at(format!("{}: {msg}", self.g.display_value(v)), span));
    }

    fn node(&mut self, id: NodeId, opts: VerifyOptions) {
        let g = self.g;
        let node = g.node(id);
        let kind = node.kind;
        let (min, max) = kind.arity();
        if node.operands.len() < min || node.operands.len() > max {
            let want = if min == max {
                format!("{min}")
            } else if max == usize::MAX {
                format!("at least {min}")
            } else {
                format!("{min} to {max}")
            };
            self.at_node(id, format!("{kind} takes {want} operands, got {}", node.operands.len()));
            return;
        }
        if node.results.len() != kind.num_results() {
            self.at_node(id, format!("{kind} has {} results, got {}", kind.num_results(), node.results.len()));
            return;
        }
        if let Err((_, msg)) = check_attrs(kind, &node.attrs) {
            self.at_node(id, msg);
            return;
        }
        for &o in &node.operands {
            if g.value(o).def == ValueDef::Detached {
                self.at_node(id, format!("operand {} is not defined", g.display_value(o)));
                return;
            }
        }
        let declared = g.ty(node.results[0]);
        if kind == OpKind::Const {
            match &node.value {
                None => self.at_node(id, "const has no value".into()),
                Some(ConstValue::Dense(t)) => {
                    if !t.matches(declared) || declared.fixed_dims().is_none() {
                        self.at_node(
                            id,
                            format!("inline data of shape {:?} ({}) does not match {declared}", t.shape(), t.scalar_type()),
                        );
                    }
                }
                Some(ConstValue::Weight(name)) if opts.check_weights => match g.weights.get(name) {
                    None => self.at_node(id, format!("weight \"{name}\" is not in the weights file")),
                    Some(t) if !t.matches(declared) || declared.fixed_dims().is_none() => self.at_node(
                        id,
                        format!(
                            "weight \"{name}\" is {} of shape {:?} but the IR declares {declared}",
                            t.scalar_type(),
                            t.shape()
                        ),
                    ),
                    Some(_) => {}
                },
                Some(ConstValue::Weight(_)) => {}
            }
            return;
        }
        if node.value.is_some() {
            self.at_node(id, format!("{kind} cannot hold a constant value"));
        }
        let operands: Vec<Operand> = node
            .operands
            .iter()
            .map(|&o| Operand {
                ty: g.ty(o),
                value: g.producer(o).and_then(|p| match &g.node(p).value {
                    Some(ConstValue::Dense(t)) => Some(t),
                    _ => None,
                }),
            })
            .collect();
        match infer(kind, &node.attrs, &operands) {
            Err(msg) => self.at_node(id, msg),
            Ok(facts) => {
                for (fact, &r) in facts.iter().zip(&node.results) {
                    let declared = g.ty(r);
                    if !fact.admits(declared) {
                        let derived = match fact.complete() {
                            Some(t) => t.to_string(),
                            None => {
                                let dims =
                                    fact.dims.as_ref().map(|d| d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x"));
                                format!("shape {}", dims.unwrap_or_else(|| "?".into()))
                            }
                        };
                        self.at_node(id, format!("{kind} gives {derived} but the IR declares {declared}"));
                    }
                    if matches!(kind, OpKind::Quantize | OpKind::Requantize) && declared.elem.quant().is_none() {
                        self.at_node(id, format!("{kind} must produce a quantized type, not {declared}"));
                    }
                    if fact.elem.is_none()
                        && !matches!(kind, OpKind::Quantize | OpKind::Requantize)
                        && !(declared.elem.is_f32() || declared.elem.quant().is_some())
                    {
                        self.at_node(id, format!("an integer {kind} produces a quantized or f32 result, not {declared}"));
                    }
                }
            }
        }
    }
}

/// Verifies a graph; returns every error found.
pub fn verify(g: &Graph, opts: VerifyOptions) -> Result<(), Vec<Diagnostic>> {
    let mut v = Verifier { g, errors: Vec::new() };
    let mut used = std::collections::BTreeSet::new();
    for &p in g.params() {
        used.insert(p);
    }
    for id in g.node_ids() {
        used.extend(g.node(id).results.iter().copied());
    }
    for val in used {
        if let Err(msg) = check_type(g.ty(val)) {
            v.at_value(val, msg);
        }
    }
    for id in g.node_ids() {
        v.node(id, opts);
    }
    for &o in g.outputs() {
        if g.value(o).def == ValueDef::Detached {
            v.errors.push(Diagnostic::at(format!("returned value {} is not defined", g.display_value(o)), g.return_span.clone()));
        }
    }
    if g.outputs().is_empty() {
        v.errors.push(Diagnostic::at("the function returns nothing", g.return_span.clone()));
    }
    if let Err(n) = g.topo_order() {
        v.at_node(n, "this op is on a cycle: it depends on its own result".into());
    }
    v.errors.sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
    if v.errors.is_empty() { Ok(()) } else { Err(v.errors) }
}
