//! The canonical printer. `parse(print(g))` is `g`, and printing is deterministic: ops in
//! topological order (insertion order where dependencies allow), attributes sorted by name,
//! unnamed values numbered in order of definition, floats in their shortest exact form.

use crate::attr::write_quoted;
use crate::graph::{ConstValue, Graph, Loc, ValueId};
use crate::tensor::Tensor;
use crate::types::format_f32;
use std::collections::HashMap;
use std::fmt::Write;

fn is_bare(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.$".contains(&b))
}

struct Names<'g> {
    g: &'g Graph,
    numbers: HashMap<ValueId, usize>,
}

impl Names<'_> {
    fn get(&mut self, v: ValueId) -> String {
        match &self.g.value(v).name {
            Some(n) if is_bare(n) => format!("%{n}"),
            Some(n) => {
                let mut out = String::from("%");
                write_quoted(&mut out, n).expect("String");
                out
            }
            None => {
                let next = self.numbers.len();
                format!("%{}", self.numbers.entry(v).or_insert(next))
            }
        }
    }
}

fn write_loc(out: &mut String, loc: &Loc) {
    if loc.is_empty() {
        return;
    }
    out.push_str(" loc(");
    write_quoted(out, &loc.name).expect("String");
    if !loc.fused.is_empty() {
        out.push_str(", fused = [");
        for (i, f) in loc.fused.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_quoted(out, f).expect("String");
        }
        out.push(']');
    }
    out.push(')');
}

fn write_dense(out: &mut String, t: &Tensor) {
    out.push_str("dense<[");
    let items: Vec<String> = match t {
        Tensor::F32(a) => a.iter().map(|x| format_f32(*x)).collect(),
        Tensor::F16(a) => a.iter().map(|x| format_f32(x.to_f32())).collect(),
        Tensor::Bool(a) => a.iter().map(|b| b.to_string()).collect(),
        other => other.to_i64_vec().expect("integer tensor").iter().map(|i| i.to_string()).collect(),
    };
    out.push_str(&items.join(", "));
    out.push_str("]>");
}

/// Prints a graph as canonical QIR text.
pub fn print(g: &Graph) -> String {
    let mut names = Names { g, numbers: HashMap::new() };
    let mut out = String::new();
    out.push_str("func @");
    if is_bare(&g.name) {
        out.push_str(&g.name);
    } else {
        write_quoted(&mut out, &g.name).expect("String");
    }
    out.push('(');
    for (i, &p) in g.params().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let n = names.get(p);
        write!(out, "{n}: {}", g.ty(p)).expect("String");
    }
    out.push_str(") -> ");
    let outs = g.outputs();
    if outs.len() == 1 {
        write!(out, "{}", g.ty(outs[0])).expect("String");
    } else {
        let tys: Vec<String> = outs.iter().map(|&o| g.ty(o).to_string()).collect();
        write!(out, "({})", tys.join(", ")).expect("String");
    }
    out.push_str(" {\n");
    let order = g.canonical_order().unwrap_or_else(|_| g.node_ids().collect());
    for id in order {
        let node = g.node(id);
        out.push_str("  ");
        let rs: Vec<String> = node.results.iter().map(|&r| names.get(r)).collect();
        out.push_str(&rs.join(", "));
        out.push_str(" = ");
        match &node.value {
            Some(ConstValue::Weight(w)) => {
                out.push_str("const @");
                write_quoted(&mut out, w).expect("String");
            }
            Some(ConstValue::Dense(t)) => {
                out.push_str("const ");
                write_dense(&mut out, t);
            }
            None => {
                out.push_str(node.kind.name());
                out.push('(');
                let os: Vec<String> = node.operands.iter().map(|&o| names.get(o)).collect();
                out.push_str(&os.join(", "));
                out.push(')');
                if !node.attrs.is_empty() {
                    out.push_str(" {");
                    for (i, (k, v)) in node.attrs.0.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        write!(out, "{k} = {v}").expect("String");
                    }
                    out.push('}');
                }
            }
        }
        out.push_str(" : ");
        if node.results.len() == 1 {
            write!(out, "{}", g.ty(node.results[0])).expect("String");
        } else {
            let tys: Vec<String> = node.results.iter().map(|&r| g.ty(r).to_string()).collect();
            write!(out, "({})", tys.join(", ")).expect("String");
        }
        write_loc(&mut out, &node.loc);
        out.push('\n');
    }
    out.push_str("  return");
    for (i, &o) in outs.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        let n = names.get(o);
        out.push_str(&n);
    }
    out.push_str("\n}\n");
    out
}
