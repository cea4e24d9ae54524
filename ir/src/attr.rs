//! Op attributes: `{ key = value, ... }`.

use crate::types::format_f32;
use std::collections::BTreeMap;
use std::fmt;

/// An attribute value.
#[derive(Clone, Debug)]
pub enum Attr {
    /// An integer: `axis = 1`.
    Int(i64),
    /// A float: `epsilon = 1e-5`.
    Float(f32),
    /// A boolean: `trans_b = true`.
    Bool(bool),
    /// A string: `mode = "nearest"`.
    Str(String),
    /// A list of integers: `pads = [1, 1, 1, 1]` (also the empty list `[]`).
    Ints(Vec<i64>),
    /// A list of floats: `scales = [1.0, 2.0]`.
    Floats(Vec<f32>),
}

impl PartialEq for Attr {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Attr::Int(a), Attr::Int(b)) => a == b,
            (Attr::Float(a), Attr::Float(b)) => a.to_bits() == b.to_bits(),
            (Attr::Bool(a), Attr::Bool(b)) => a == b,
            (Attr::Str(a), Attr::Str(b)) => a == b,
            (Attr::Ints(a), Attr::Ints(b)) => a == b,
            (Attr::Floats(a), Attr::Floats(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            // An empty list reads back as `Ints`.
            (Attr::Ints(a), Attr::Floats(b)) | (Attr::Floats(b), Attr::Ints(a)) => a.is_empty() && b.is_empty(),
            _ => false,
        }
    }
}

/// The kind of an attribute, for schemas and error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrKind {
    /// [`Attr::Int`].
    Int,
    /// [`Attr::Float`] (an integer literal is not accepted).
    Float,
    /// [`Attr::Bool`].
    Bool,
    /// [`Attr::Str`].
    Str,
    /// [`Attr::Ints`].
    Ints,
    /// [`Attr::Floats`].
    Floats,
}

impl Attr {
    /// This value's kind.
    pub fn kind(&self) -> AttrKind {
        match self {
            Attr::Int(_) => AttrKind::Int,
            Attr::Float(_) => AttrKind::Float,
            Attr::Bool(_) => AttrKind::Bool,
            Attr::Str(_) => AttrKind::Str,
            Attr::Ints(_) => AttrKind::Ints,
            Attr::Floats(_) => AttrKind::Floats,
        }
    }

    /// Whether this value may stand where `kind` is expected (an empty list is any list).
    pub fn fits(&self, kind: AttrKind) -> bool {
        match (self, kind) {
            (Attr::Ints(v), AttrKind::Floats) => v.is_empty(),
            (Attr::Floats(v), AttrKind::Ints) => v.is_empty(),
            _ => self.kind() == kind,
        }
    }
}

impl fmt::Display for AttrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttrKind::Int => "an integer",
            AttrKind::Float => "a float",
            AttrKind::Bool => "a boolean",
            AttrKind::Str => "a string",
            AttrKind::Ints => "a list of integers",
            AttrKind::Floats => "a list of floats",
        })
    }
}

/// Writes a string literal with `"` and `\` escaped.
pub fn write_quoted(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T>(f: &mut fmt::Formatter<'_>, v: &[T], g: impl Fn(&T) -> String) -> fmt::Result {
            f.write_str("[")?;
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                f.write_str(&g(x))?;
            }
            f.write_str("]")
        }
        match self {
            Attr::Int(i) => write!(f, "{i}"),
            Attr::Float(x) => f.write_str(&format_f32(*x)),
            Attr::Bool(b) => write!(f, "{b}"),
            Attr::Str(s) => write_quoted(f, s),
            Attr::Ints(v) => list(f, v, |x| x.to_string()),
            Attr::Floats(v) => list(f, v, |x| format_f32(*x)),
        }
    }
}

/// An op's attributes, kept sorted by name so that printing is canonical.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attrs(pub BTreeMap<String, Attr>);

impl Attrs {
    /// No attributes.
    pub fn new() -> Attrs {
        Attrs::default()
    }

    /// Sets `key` to `value`, builder style.
    pub fn with(mut self, key: &str, value: Attr) -> Attrs {
        self.0.insert(key.to_string(), value);
        self
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: Attr) {
        self.0.insert(key.to_string(), value);
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&Attr> {
        self.0.get(key)
    }

    /// Integer `key`, or `default`.
    pub fn int(&self, key: &str, default: i64) -> i64 {
        match self.0.get(key) {
            Some(Attr::Int(i)) => *i,
            _ => default,
        }
    }

    /// Float `key`, or `default`.
    pub fn float(&self, key: &str, default: f32) -> f32 {
        match self.0.get(key) {
            Some(Attr::Float(x)) => *x,
            _ => default,
        }
    }

    /// Boolean `key`, or `default`.
    pub fn bool(&self, key: &str, default: bool) -> bool {
        match self.0.get(key) {
            Some(Attr::Bool(b)) => *b,
            _ => default,
        }
    }

    /// String `key`, if present.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.0.get(key) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// Integer list `key`, if present.
    pub fn ints(&self, key: &str) -> Option<&[i64]> {
        match self.0.get(key) {
            Some(Attr::Ints(v)) => Some(v),
            Some(Attr::Floats(v)) if v.is_empty() => Some(&[]),
            _ => None,
        }
    }

    /// Float list `key`, if present.
    pub fn floats(&self, key: &str) -> Option<&[f32]> {
        match self.0.get(key) {
            Some(Attr::Floats(v)) => Some(v),
            Some(Attr::Ints(v)) if v.is_empty() => Some(&[]),
            _ => None,
        }
    }

    /// Whether there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
