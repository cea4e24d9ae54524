//! The QIR lexer (logos). Spans are byte offsets.

use crate::graph::Span;
use logos::Logos;

/// A lexing or parsing error with the span it refers to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyntaxError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
}

/// A QIR token.
#[derive(Logos, Clone, Copy, Debug, PartialEq)]
#[logos(error = SyntaxError)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
pub enum Token<'s> {
    /// `func`
    #[token("func")]
    Func,
    /// `return`
    #[token("return")]
    Return,
    /// `const`
    #[token("const")]
    Const,
    /// `dense`
    #[token("dense")]
    Dense,
    /// `loc`
    #[token("loc")]
    Loc,
    /// `tensor`
    #[token("tensor")]
    Tensor,
    /// `true`
    #[token("true")]
    True,
    /// `false`
    #[token("false")]
    False,
    /// `inf`
    #[token("inf")]
    Inf,
    /// `-inf`
    #[token("-inf")]
    NegInf,
    /// `nan`
    #[token("nan")]
    NaN,
    /// `!q`, which opens a quantized element type.
    #[token("!q")]
    QuantPrefix,
    /// `%name` (the name without `%`).
    #[regex(r"%[A-Za-z0-9_.$]+", |lex| &lex.slice()[1..])]
    ValueName(&'s str),
    /// `%"name"` (the quoted string, quotes included): a value name with other characters.
    #[regex(r#"%"([^"\\\n]|\\.)*""#, |lex| &lex.slice()[1..])]
    QuotedValueName(&'s str),
    /// `@name` (the name without `@`).
    #[regex(r"@[A-Za-z0-9_.$]+", |lex| &lex.slice()[1..])]
    SymbolName(&'s str),
    /// `@"name"` (the quoted string, quotes included).
    #[regex(r#"@"([^"\\\n]|\\.)*""#, |lex| &lex.slice()[1..])]
    QuotedSymbol(&'s str),
    /// `"text"` (quotes included).
    #[regex(r#""([^"\\\n]|\\.)*""#)]
    Str(&'s str),
    /// An identifier: op names, element types, attribute names.
    #[regex(r"[A-Za-z_][A-Za-z0-9_]*")]
    Ident(&'s str),
    /// An integer literal.
    #[regex(r"-?[0-9]+")]
    Int(&'s str),
    /// A float literal.
    #[regex(r"-?[0-9]+\.[0-9]+([eE][-+]?[0-9]+)?|-?[0-9]+[eE][-+]?[0-9]+")]
    Float(&'s str),
    /// The dims of a tensor type, each followed by `x`: `1x16x8x8x`, `?x10x`.
    #[regex(r"([0-9]+x|\?x)+")]
    Dims(&'s str),
    /// `(`
    #[token("(")]
    LParen,
    /// `)`
    #[token(")")]
    RParen,
    /// `{`
    #[token("{")]
    LBrace,
    /// `}`
    #[token("}")]
    RBrace,
    /// `[`
    #[token("[")]
    LBracket,
    /// `]`
    #[token("]")]
    RBracket,
    /// `<`
    #[token("<")]
    Lt,
    /// `>`
    #[token(">")]
    Gt,
    /// `,`
    #[token(",")]
    Comma,
    /// `:`
    #[token(":")]
    Colon,
    /// `=`
    #[token("=")]
    Eq,
    /// `->`
    #[token("->")]
    Arrow,
}

impl std::fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::ValueName(s) => write!(f, "%{s}"),
            Token::SymbolName(s) => write!(f, "@{s}"),
            Token::QuotedSymbol(s) => write!(f, "@{s}"),
            Token::QuotedValueName(s) => write!(f, "%{s}"),
            Token::Str(s) | Token::Ident(s) | Token::Int(s) | Token::Float(s) | Token::Dims(s) => f.write_str(s),
            t => f.write_str(match t {
                Token::Func => "func",
                Token::Return => "return",
                Token::Const => "const",
                Token::Dense => "dense",
                Token::Loc => "loc",
                Token::Tensor => "tensor",
                Token::True => "true",
                Token::False => "false",
                Token::Inf => "inf",
                Token::NegInf => "-inf",
                Token::NaN => "nan",
                Token::QuantPrefix => "!q",
                Token::LParen => "(",
                Token::RParen => ")",
                Token::LBrace => "{",
                Token::RBrace => "}",
                Token::LBracket => "[",
                Token::RBracket => "]",
                Token::Lt => "<",
                Token::Gt => ">",
                Token::Comma => ",",
                Token::Colon => ":",
                Token::Eq => "=",
                Token::Arrow => "->",
                _ => unreachable!("handled above"),
            }),
        }
    }
}

/// The token stream lalrpop reads: `(start, token, end)` or an error with its span.
pub fn tokens(src: &str) -> impl Iterator<Item = Result<(usize, Token<'_>, usize), SyntaxError>> + '_ {
    Token::lexer(src).spanned().map(|(tok, span)| match tok {
        Ok(t) => Ok((span.start, t, span.end)),
        Err(_) => {
            let text: String = src[span.clone()].chars().take(20).collect();
            Err(SyntaxError { message: format!("unexpected character sequence `{text}`"), span })
        }
    })
}

/// Removes the quotes of a string token and resolves its escapes.
pub fn unquote(s: &str) -> String {
    let inner = &s[1..s.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c) => out.push(c),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}
