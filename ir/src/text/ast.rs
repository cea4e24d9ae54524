//! The syntax tree the grammar builds; [`super::parse`] resolves it into a [`Graph`](crate::Graph).

use crate::attr::Attr;
use crate::graph::{Loc, Span};
use crate::types::TensorType;

/// A node with the span of its text.
#[derive(Clone, Debug)]
pub struct Spanned<T> {
    /// The node.
    pub node: T,
    /// Its text.
    pub span: Span,
}

/// A literal inside `dense<[...]>` or an attribute list.
#[derive(Clone, Debug)]
pub enum Lit {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f32),
    /// `true` or `false`.
    Bool(bool),
    /// A string.
    Str(String),
}

/// What a `const` holds, as written.
#[derive(Clone, Debug)]
pub enum ConstLit {
    /// `@"name"`.
    Weight(String),
    /// `dense<[...]>`.
    Dense(Vec<Lit>),
}

/// One line of the body: `%a, %b = op(%x, ...) {attrs} : types loc(...)` or a `const`.
#[derive(Clone, Debug)]
pub struct Stmt {
    /// Defined names.
    pub results: Vec<Spanned<String>>,
    /// The op name.
    pub op: Spanned<String>,
    /// Operand names.
    pub operands: Vec<Spanned<String>>,
    /// Attributes as written.
    pub attrs: Vec<(Spanned<String>, Spanned<Attr>)>,
    /// Result types.
    pub types: Vec<Spanned<TensorType>>,
    /// The constant, for `const`.
    pub value: Option<Spanned<ConstLit>>,
    /// The location, if written.
    pub loc: Option<Loc>,
    /// The whole statement.
    pub span: Span,
}

/// A function as written.
#[derive(Clone, Debug)]
pub struct Func {
    /// Its name.
    pub name: Spanned<String>,
    /// Parameters: name and type.
    pub params: Vec<(Spanned<String>, Spanned<TensorType>)>,
    /// Declared result types.
    pub results: Vec<Spanned<TensorType>>,
    /// The body.
    pub stmts: Vec<Stmt>,
    /// Returned names.
    pub ret: Vec<Spanned<String>>,
    /// The `return` line.
    pub ret_span: Span,
}
