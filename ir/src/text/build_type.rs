//! Grammar actions that validate as they build: tensor types and list attributes.

use crate::attr::Attr;
use crate::graph::Span;
use crate::text::ast::Lit;
use crate::text::lexer::SyntaxError;
use crate::types::{Dim, ElemType, MAX_ELEMENTS, QuantParams, ScalarType, TensorType};

/// An element type as written, before validation.
#[derive(Clone, Debug)]
pub enum ElemSyntax {
    /// `f32`, `i8`, ...
    Scalar(String, Span),
    /// `!q<storage[:axisN], scales, zero_points>`.
    Quant {
        /// The storage type name.
        storage: String,
        /// `axisN`, if per axis.
        axis: Option<String>,
        /// Scales as written.
        scales: Vec<f32>,
        /// Zero points with their spans.
        zero_points: Vec<(i64, Span)>,
        /// The whole element type.
        span: Span,
    },
}

fn err(message: impl Into<String>, span: Span) -> SyntaxError {
    SyntaxError { message: message.into(), span }
}

/// Builds and checks a tensor type from its dims token (`1x16x8x8x`) and element type.
pub fn make_type(dims: &str, elem: ElemSyntax, span: Span) -> Result<TensorType, SyntaxError> {
    let mut out = Vec::new();
    let mut count: u64 = 1;
    for d in dims.split('x').filter(|d| !d.is_empty()) {
        if d == "?" {
            out.push(Dim::Dynamic);
            continue;
        }
        let n: u64 = d.parse().map_err(|_| err(format!("dimension `{d}` is too large"), span.clone()))?;
        // Zero dims are left out: even an empty array needs its other dims to multiply to a size.
        if n != 0 {
            count = count.saturating_mul(n);
        }
        out.push(Dim::Fixed(n));
    }
    if count > MAX_ELEMENTS {
        let message = if out.contains(&Dim::Fixed(0)) {
            format!("the dims of an empty tensor type other than 0 multiply to {count} or more, above the limit of 2^40")
        } else {
            format!("tensor type has {count} elements or more, above the limit of 2^40")
        };
        return Err(err(message, span));
    }
    let elem = match elem {
        ElemSyntax::Scalar(name, s) => ElemType::Scalar(ScalarType::from_name(&name).ok_or_else(|| {
            err(format!("unknown element type `{name}` (expected f32, f16, i64, i32, i8, u8, bool or i4, or !q<...>)"), s)
        })?),
        ElemSyntax::Quant { storage, axis, scales, zero_points, span } => {
            let st = ScalarType::from_name(&storage)
                .filter(|t| t.quant_range().is_some())
                .ok_or_else(|| err(format!("quantized storage must be i8, u8, i4 or i32, got `{storage}`"), span.clone()))?;
            let axis = match axis {
                None => None,
                Some(a) => Some(
                    a.strip_prefix("axis")
                        .and_then(|n| n.parse::<usize>().ok())
                        .ok_or_else(|| err(format!("expected `axisN`, found `{a}`"), span.clone()))?,
                ),
            };
            let (lo, hi) = st.quant_range().expect("filtered");
            let mut zps = Vec::with_capacity(zero_points.len());
            for (z, zspan) in zero_points {
                if z < lo as i64 || z > hi as i64 {
                    return Err(err(format!("zero point {z} is outside the {st} range [{lo}, {hi}]"), zspan));
                }
                zps.push(z as i32);
            }
            if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                return Err(err(format!("scale {s} must be positive and finite"), span));
            }
            if scales.is_empty() {
                return Err(err("a quantized type needs at least one scale", span));
            }
            match axis {
                None if scales.len() != 1 || zps.len() != 1 => {
                    return Err(err(
                        "per-tensor quantization takes one scale and one zero point; write `:axisN` for per-axis",
                        span,
                    ));
                }
                Some(_) if zps.len() == 1 => zps = vec![zps[0]; scales.len()],
                Some(_) if zps.len() != scales.len() => {
                    return Err(err(format!("{} scales but {} zero points", scales.len(), zps.len()), span));
                }
                _ => {}
            }
            if let Some(a) = axis {
                match out.get(a) {
                    None => return Err(err(format!("quantization axis {a} is out of range for rank {}", out.len()), span)),
                    Some(Dim::Fixed(n)) if *n != scales.len() as u64 => {
                        return Err(err(format!("axis {a} has size {n} but {} scales are given", scales.len()), span));
                    }
                    _ => {}
                }
            }
            ElemType::Quant(QuantParams { storage: st, axis, scales, zero_points: zps })
        }
    };
    Ok(TensorType { dims: out, elem })
}

/// Builds a list attribute: all integers, all floats (integers allowed among them), or all strings
/// are not accepted (QIR has no string lists).
pub fn make_list_attr(items: Vec<Lit>, span: Span) -> Result<Attr, SyntaxError> {
    if items.iter().all(|l| matches!(l, Lit::Int(_))) {
        return Ok(Attr::Ints(items.into_iter().map(|l| if let Lit::Int(i) = l { i } else { 0 }).collect()));
    }
    let mut v = Vec::with_capacity(items.len());
    for l in items {
        match l {
            Lit::Int(i) => v.push(i as f32),
            Lit::Float(x) => v.push(x),
            _ => return Err(err("a list attribute holds only numbers", span)),
        }
    }
    Ok(Attr::Floats(v))
}
