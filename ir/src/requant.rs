//! Requantization: the arithmetic that takes an i32 accumulator to the output's integers. It is
//! written once, here, and used by the passes, the evaluator and (later) the JIT, so that they
//! cannot disagree. Every constant is derived from the types; nothing is stored separately.
//!
//! - `f32` mode (ONNX Runtime's kernels): `M[c] = f32(f32(s_x·s_w[c]) / s_y)`,
//!   `y = clamp(round_half_even(f32(acc)·M[c]) + zp_y, lo, hi)`.
//! - `q31` mode (integer-only targets): `M = m0·2^-n`, `m0 ∈ [2^30, 2^31)`, one rounding in i64:
//!   `y = clamp(zp_y + ((acc·m0 + 2^(n-1)) >> n), lo, hi)`, `n ∈ [0, 62]`; `n > 62` yields `zp_y`;
//!   `M ≥ 2^31` is an error.

use crate::attr::Attrs;
use crate::types::QuantParams;

/// How an integer op requantizes, chosen per compile and recorded on the op as
/// `requant = "q31"` (absent means `f32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RequantMode {
    /// ONNX Runtime's f32 multiply.
    #[default]
    F32,
    /// A fixed-point multiplier and shift.
    Q31,
}

impl RequantMode {
    /// The mode an op's attributes select.
    pub fn of(attrs: &Attrs) -> Result<RequantMode, String> {
        match attrs.str("requant") {
            None | Some("f32") => Ok(RequantMode::F32),
            Some("q31") => Ok(RequantMode::Q31),
            Some(m) => Err(format!("unknown requant mode \"{m}\" (expected f32 or q31)")),
        }
    }

    /// The spelling in `--requant` and in the attribute.
    pub fn name(self) -> &'static str {
        match self {
            RequantMode::F32 => "f32",
            RequantMode::Q31 => "q31",
        }
    }
}

/// The scale of an accumulator of `x · w[c]`: `f32(s_x · s_w[c])`. An integer op's bias must
/// carry exactly this scale.
pub fn acc_scale(s_x: f32, s_w: f32) -> f32 {
    s_x * s_w
}

/// The f32-mode multiplier `f32(acc_scale / s_y)`.
pub fn multiplier_f32(acc_scale: f32, s_y: f32) -> f32 {
    acc_scale / s_y
}

/// A q31 multiplier: `M = m0 · 2^-n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Q31 {
    /// In `[2^30, 2^31)`.
    pub m0: i64,
    /// The right shift; above 62 the result is the zero point.
    pub n: u32,
}

/// Decomposes a positive multiplier for q31 requantization. `M ≥ 2^31` cannot be represented.
pub fn q31(m: f64) -> Result<Q31, String> {
    if !(m.is_finite() && m > 0.0) {
        return Err(format!("requantization multiplier {m} must be positive and finite"));
    }
    if m >= 2f64.powi(31) {
        return Err(format!("requantization multiplier {m} is 2^31 or more, which q31 cannot represent"));
    }
    // Find n with m · 2^n in [2^30, 2^31).
    let mut n: i32 = 30 - m.log2().floor() as i32;
    while m * 2f64.powi(n) >= 2f64.powi(31) {
        n -= 1;
    }
    while m * 2f64.powi(n) < 2f64.powi(30) {
        n += 1;
    }
    let mut m0 = (m * 2f64.powi(n)).round() as i64;
    if m0 == 1 << 31 {
        m0 = 1 << 30;
        n -= 1;
    }
    if n < 0 {
        return Err(format!("requantization multiplier {m} is 2^31 or more, which q31 cannot represent"));
    }
    Ok(Q31 { m0, n: n.min(63) as u32 })
}

/// f32-mode requantization of one accumulator.
pub fn requant_f32(acc: i32, m: f32, zp: i32, lo: i32, hi: i32) -> i32 {
    let v = round_even(acc as f32 * m);
    // Saturate in f32 before leaving it, so that huge values cannot wrap.
    let v = v.clamp(i32::MIN as f32 / 2.0, i32::MAX as f32 / 2.0) as i64 + zp as i64;
    v.clamp(lo as i64, hi as i64) as i32
}

/// `x.round_ties_even()`, without the `rintf` call it becomes on x86-64 targets without SSE4.1:
/// below 2^22 in magnitude, adding and subtracting 1.5·2^23 leaves the integer that the FPU's
/// default round-to-nearest-even picked; larger, NaN and infinite values take the library path.
#[inline]
pub fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 { (x + MAGIC) - MAGIC } else { x.round_ties_even() }
}

/// q31-mode requantization of one accumulator, with one rounding: adding `2^(n-1)` and then
/// shifting right (arithmetically) rounds halves toward +∞.
pub fn requant_q31(acc: i32, q: Q31, zp: i32, lo: i32, hi: i32) -> i32 {
    if q.n > 62 {
        return zp.clamp(lo, hi);
    }
    let prod = acc as i64 * q.m0;
    let v = if q.n == 0 { prod } else { (prod + (1i64 << (q.n - 1))) >> q.n };
    (v + zp as i64).clamp(lo as i64, hi as i64) as i32
}

/// One output channel's requantization, ready to apply.
#[derive(Clone, Copy, Debug)]
pub enum Requant {
    /// f32 mode: multiplier.
    F32(f32),
    /// q31 mode.
    Q31(Q31),
}

impl Requant {
    /// Builds the requantization from an accumulator scale to `s_y` in `mode`.
    pub fn new(mode: RequantMode, acc_scale: f32, s_y: f32) -> Result<Requant, String> {
        Ok(match mode {
            RequantMode::F32 => Requant::F32(multiplier_f32(acc_scale, s_y)),
            RequantMode::Q31 => Requant::Q31(q31(acc_scale as f64 / s_y as f64)?),
        })
    }

    /// Applies it.
    pub fn apply(self, acc: i32, zp: i32, lo: i32, hi: i32) -> i32 {
        match self {
            Requant::F32(m) => requant_f32(acc, m, zp, lo, hi),
            Requant::Q31(q) => requant_q31(acc, q, zp, lo, hi),
        }
    }
}

/// The output clamp `[lo, hi]` of a per-tensor quantized result, narrowed by a fused activation:
/// relu raises `lo` to `zp`; clip(a, b) gives `[max(qmin, zp + rne(a/s)), min(qmax, zp + rne(b/s))]`.
pub fn output_range(q: &QuantParams, attrs: &Attrs) -> (i32, i32) {
    let (qmin, qmax) = q.storage.quant_range().expect("quantized storage");
    let (s, zp) = q.at(0);
    match attrs.str("activation") {
        Some("relu") => (qmin.max(zp), qmax),
        Some("clip") => {
            let bound = |v: f32| (zp as f64 + (v / s).round_ties_even() as f64).clamp(i32::MIN as f64, i32::MAX as f64) as i32;
            let lo = attrs.get("clip_min").map_or(qmin, |_| qmin.max(bound(attrs.float("clip_min", 0.0))));
            let hi = attrs.get("clip_max").map_or(qmax, |_| qmax.min(bound(attrs.float("clip_max", 0.0))));
            (lo, hi.max(lo))
        }
        _ => (qmin, qmax),
    }
}
