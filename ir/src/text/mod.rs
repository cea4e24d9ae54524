//! The QIR text format: lexer, grammar, resolution of names into a [`Graph`], and the printer.

pub mod ast;
pub mod build_type;
pub mod lexer;
mod printer;

#[allow(missing_docs, clippy::all, unused_parens)]
mod grammar {
    include!(concat!(env!("OUT_DIR"), "/text/grammar.rs"));
}

pub use printer::print;

use crate::attr::Attrs;
use crate::diag::Diagnostic;
use crate::graph::{ConstValue, Graph, Node, ValueId};
use crate::ops::OpKind;
use crate::tensor::Tensor;
use crate::types::{ScalarType, TensorType};
use crate::verify::check_attrs;
use ast::{ConstLit, Lit, Spanned};
use lalrpop_util::ParseError;
use lexer::{SyntaxError, Token};
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;

/// Parses QIR text into a graph. Names are resolved (forward references are allowed, as in a
/// dataflow graph); types, shapes and cycles are left to [`crate::verify`].
pub fn parse(src: &str) -> Result<Graph, Vec<Diagnostic>> {
    let func = grammar::FuncParser::new().parse(lexer::tokens(src)).map_err(|e| vec![syntax_diagnostic(e, src.len())])?;
    Resolver::default().resolve(func)
}

fn syntax_diagnostic(e: ParseError<usize, Token<'_>, SyntaxError>, len: usize) -> Diagnostic {
    let expected = |exp: &[String]| -> String {
        // The quoted forms of names (`%"value"`, `@"symbol"`) go without saying next to the bare ones.
        let mut v: Vec<&str> = exp.iter().map(|s| s.as_str()).filter(|s| !s.contains("\\\"")).collect();
        v.sort_unstable();
        v.dedup();
        if v.len() > 8 {
            format!("expected one of {} or more", v[..8].join(", "))
        } else {
            format!("expected {}", v.join(" or "))
        }
    };
    match e {
        ParseError::InvalidToken { location } => Diagnostic::at("invalid token", Some(location..location + 1)),
        ParseError::UnrecognizedEof { location, expected: exp } => {
            Diagnostic::at("unexpected end of file", Some(location.min(len)..len)).with_label(expected(&exp))
        }
        ParseError::UnrecognizedToken { token: (l, t, r), expected: exp } => {
            Diagnostic::at(format!("unexpected `{t}`"), Some(l..r)).with_label(expected(&exp))
        }
        ParseError::ExtraToken { token: (l, t, r) } => Diagnostic::at(format!("unexpected `{t}` after the function"), Some(l..r)),
        ParseError::User { error } => Diagnostic::at(error.message, Some(error.span)),
    }
}

/// A value name as stored: purely numeric names (`%7`) are unnamed and print renumbered.
fn stored_name(name: &str) -> Option<String> {
    (!name.bytes().all(|b| b.is_ascii_digit())).then(|| name.to_string())
}

#[derive(Default)]
struct Resolver {
    names: HashMap<String, (ValueId, Spanned<String>)>,
    errors: Vec<Diagnostic>,
}

impl Resolver {
    fn define(&mut self, g: &mut Graph, name: &Spanned<String>, ty: TensorType) -> ValueId {
        let v = g.add_value(stored_name(&name.node), ty, Some(name.span.clone()));
        if let Some((_, first)) = self.names.get(&name.node) {
            let d = Diagnostic::at(format!("value %{} is defined twice", name.node), Some(name.span.clone()))
                .with_label("defined again here")
                .with_note(format!("first defined at byte {}", first.span.start));
            self.errors.push(d);
        } else {
            self.names.insert(name.node.clone(), (v, name.clone()));
        }
        v
    }

    fn lookup(&mut self, name: &Spanned<String>) -> Option<ValueId> {
        match self.names.get(&name.node) {
            Some((v, _)) => Some(*v),
            None => {
                self.errors.push(
                    Diagnostic::at(format!("use of undefined value %{}", name.node), Some(name.span.clone()))
                        .with_label("not defined anywhere in this function"),
                );
                None
            }
        }
    }

    fn resolve(mut self, func: ast::Func) -> Result<Graph, Vec<Diagnostic>> {
        let mut g = Graph::new(func.name.node.clone());
        for (name, ty) in &func.params {
            let v = self.define(&mut g, name, ty.node.clone());
            g.push_param(v);
        }
        // Define every result first so that operands may refer forward.
        let mut results = Vec::with_capacity(func.stmts.len());
        for s in &func.stmts {
            if s.results.len() != s.types.len() {
                self.errors.push(Diagnostic::at(
                    format!("{} results are defined but {} types are given", s.results.len(), s.types.len()),
                    Some(s.span.clone()),
                ));
            }
            let rs: Vec<ValueId> =
                s.results.iter().zip(s.types.iter()).map(|(n, t)| self.define(&mut g, n, t.node.clone())).collect();
            results.push(rs);
        }
        for (s, rs) in func.stmts.iter().zip(results) {
            if let Some(node) = self.node(&g, s, rs) {
                g.insert_node(node);
            }
        }
        let outs: Vec<ValueId> = func.ret.iter().filter_map(|r| self.lookup(r)).collect();
        if self.errors.is_empty() {
            if outs.len() != func.results.len() {
                self.errors.push(Diagnostic::at(
                    format!("the function declares {} results but returns {}", func.results.len(), outs.len()),
                    Some(func.ret_span.clone()),
                ));
            }
            for ((o, decl), r) in outs.iter().zip(&func.results).zip(&func.ret) {
                if *g.ty(*o) != decl.node {
                    self.errors.push(
                        Diagnostic::at(
                            format!("%{} has type {} but the function declares {}", r.node, g.ty(*o), decl.node),
                            Some(r.span.clone()),
                        )
                        .with_label("returned here"),
                    );
                }
            }
        }
        g.set_outputs(outs);
        g.return_span = Some(func.ret_span);
        g.rebuild_edges();
        if self.errors.is_empty() { Ok(g) } else { Err(self.errors) }
    }

    fn node(&mut self, g: &Graph, s: &ast::Stmt, results: Vec<ValueId>) -> Option<Node> {
        let Some(kind) = OpKind::from_name(&s.op.node) else {
            let mut names: Vec<&str> = OpKind::ALL.iter().map(|k| k.name()).collect();
            names.sort_unstable();
            self.errors.push(
                Diagnostic::at(format!("unknown op `{}`", s.op.node), Some(s.op.span.clone()))
                    .with_note(format!("known ops: {}", names.join(", "))),
            );
            return None;
        };
        let operands: Vec<ValueId> = s.operands.iter().filter_map(|o| self.lookup(o)).collect();
        if operands.len() != s.operands.len() {
            return None;
        }
        let mut attrs = Attrs::new();
        for (k, v) in &s.attrs {
            if attrs.get(&k.node).is_some() {
                self.errors.push(Diagnostic::at(format!("attribute `{}` is given twice", k.node), Some(k.span.clone())));
            }
            attrs.set(&k.node, v.node.clone());
        }
        if let Err((key, msg)) = check_attrs(kind, &attrs) {
            let span = key.and_then(|key| s.attrs.iter().find(|(k, _)| k.node == key)).map(|(k, v)| k.span.start..v.span.end);
            self.errors.push(Diagnostic::at(msg, span.or_else(|| Some(s.span.clone()))));
            return None;
        }
        let mut node = Node::new(kind, operands, attrs, s.loc.clone().unwrap_or_default());
        node.results = results;
        node.span = Some(s.span.clone());
        if let Some(v) = &s.value {
            let ty = g.ty(node.results[0]).clone();
            node.value = Some(match &v.node {
                ConstLit::Weight(name) => ConstValue::Weight(name.clone()),
                ConstLit::Dense(lits) => match dense_tensor(lits, &ty) {
                    Ok(t) => ConstValue::Dense(t),
                    Err(msg) => {
                        self.errors.push(Diagnostic::at(msg, Some(v.span.clone())));
                        return None;
                    }
                },
            });
        }
        Some(node)
    }
}

/// The most elements a `dense<...>` literal may expand to (a splat of one value included).
pub const DENSE_LIMIT: usize = 1 << 24;

/// Builds the tensor of a `dense<[...]>` literal of type `ty` (fixed dims; one literal per
/// element, or a single literal splatted).
fn dense_tensor(lits: &[Lit], ty: &TensorType) -> Result<Tensor, String> {
    let shape = ty.fixed_dims().ok_or_else(|| format!("a dense constant needs fixed dims, got {ty}"))?;
    // Even an empty array needs the product of its other dims to fit an isize.
    let nonzero =
        shape.iter().filter(|&&d| d != 0).try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= isize::MAX as usize);
    let nonzero = nonzero.ok_or_else(|| format!("the shape of a dense constant of type {ty} overflows"))?;
    let n = if shape.contains(&0) { 0 } else { nonzero };
    if n > DENSE_LIMIT {
        return Err(format!(
            "a dense constant of type {ty} has {n} elements; more than {DENSE_LIMIT} belong in the weights file"
        ));
    }
    if lits.len() != n && lits.len() != 1 {
        return Err(format!("dense constant of type {ty} needs {n} values, got {}", lits.len()));
    }
    let at = |i: usize| &lits[if lits.len() == 1 { 0 } else { i }];
    let ints = |lo: i64, hi: i64| -> Result<Vec<i64>, String> {
        (0..n)
            .map(|i| match at(i) {
                Lit::Int(v) if (lo..=hi).contains(v) => Ok(*v),
                Lit::Int(v) => Err(format!("value {v} does not fit {}", ty.elem)),
                _ => Err(format!("a dense constant of {} holds integers", ty.elem)),
            })
            .collect()
    };
    let sh = IxDyn(&shape);
    let arr = |v: Vec<i64>| ArrayD::from_shape_vec(sh.clone(), v).expect("count checked");
    Ok(match ty.elem.storage() {
        ScalarType::F32 | ScalarType::F16 => {
            let v: Result<Vec<f32>, String> = (0..n)
                .map(|i| match at(i) {
                    Lit::Float(x) => Ok(*x),
                    Lit::Int(x) => Ok(*x as f32),
                    _ => Err(format!("a dense constant of {} holds numbers", ty.elem)),
                })
                .collect();
            let t = Tensor::F32(ArrayD::from_shape_vec(sh.clone(), v?).expect("count checked"));
            if ty.elem.storage() == ScalarType::F16 { t.cast(ScalarType::F16) } else { t }
        }
        ScalarType::Bool => Tensor::Bool(
            ArrayD::from_shape_vec(
                sh.clone(),
                (0..n)
                    .map(|i| match at(i) {
                        Lit::Bool(b) => Ok(*b),
                        _ => Err("a dense constant of bool holds true or false".to_string()),
                    })
                    .collect::<Result<_, _>>()?,
            )
            .expect("count checked"),
        ),
        st => {
            let (lo, hi) = match st {
                ScalarType::I64 => (i64::MIN, i64::MAX),
                s => s.quant_range().map(|(a, b)| (a as i64, b as i64)).expect("integer type"),
            };
            let v = ints(lo, hi)?;
            Tensor::I64(arr(v)).cast(if st == ScalarType::I4 { ScalarType::I8 } else { st })
        }
    })
}

/// Parses a standalone tensor type (`tensor<1x3xf32>`), for tools and tests.
pub fn parse_type(src: &str) -> Result<TensorType, Diagnostic> {
    grammar::TypeParser::new().parse(lexer::tokens(src)).map_err(|e| syntax_diagnostic(e, src.len()))
}
