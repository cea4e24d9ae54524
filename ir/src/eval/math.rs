//! Transcendental functions of transformers (`erf`, `tanh`, `gelu`), defined by their operations
//! as [`super::exp`] is, so that a vectorized loop computes the same bits: multiplies and adds in
//! a fixed order, never a fused multiply-add, no table, no branch but clamps and selects.

use super::elementwise::exp;

/// The error function: `x` clamped to [−4, 4] (erf is ±1 in f32 beyond), then the rational
/// minimax approximation `x·P(x²) / Q(x²)` (±1 at ±4) of degrees 13/8 that Eigen and XLA use for f32, each
/// polynomial by Horner's rule. Within 5·10⁻⁷ of the true value (the worst near ±4).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const ALPHA: [f32; 7] =
        [-2.726_142_3e-10, 2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.954_600_1e-3, -1.609_603_3e-2];
    const BETA: [f32; 5] = [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2];
    let c = x.max(-4.0).min(4.0);
    let c2 = c * c;
    let mut p = ALPHA[0];
    for &a in &ALPHA[1..] {
        p = p * c2 + a;
    }
    let mut q = BETA[0];
    for &b in &BETA[1..] {
        q = q * c2 + b;
    }
    // erf(4) rounds to 1 in f32; the approximation stops a little short of it.
    let y = if c.abs() == 4.0 { 1.0f32.copysign(c) } else { c * p / q };
    if x.is_nan() { x } else { y }
}

/// The hyperbolic tangent: `t = exp(−2|x|)` with qc's [`exp`], `(1 − t) / (1 + t)` with the
/// sign of `x`. Within 10⁻⁷ of the true value.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let t = exp(-2.0 * x.abs());
    let y = (1.0 - t) / (1.0 + t);
    if x.is_nan() { x } else { y.copysign(x) }
}

/// GELU, exact form: `x · 0.5 · (1 + erf(x · 1/√2))`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU, tanh form: `x · 0.5 · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    x * 0.5 * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * (x * x * x))))
}

/// `a` to the power `b`: a square is `a · a`, a square root `sqrt`, else `powf`.
#[inline(always)]
pub fn pow(a: f32, b: f32) -> f32 {
    if b == 2.0 {
        a * a
    } else if b == 0.5 {
        a.sqrt()
    } else {
        a.powf(b)
    }
}

#[cfg(test)]
mod tests {
    use super::{erf, gelu, tanh};

    /// erf in f64: its Taylor series below 3, the continued fraction of erfc above.
    fn erf64(x: f64) -> f64 {
        let a = x.abs();
        let y = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0f64);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0f64;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        y.copysign(x)
    }

    #[test]
    fn erf_tanh_and_gelu_are_close_to_the_true_values() {
        let (mut worst_erf, mut worst_tanh, mut worst_gelu) = (0.0f64, 0.0f64, 0.0f64);
        let mut x = -9.0f32;
        while x <= 9.0 {
            let v = x as f64;
            worst_erf = worst_erf.max((erf(x) as f64 - erf64(v)).abs());
            worst_tanh = worst_tanh.max((tanh(x) as f64 - v.tanh()).abs());
            let g = v * 0.5 * (1.0 + erf64(v / 2f64.sqrt()));
            worst_gelu = worst_gelu.max((gelu(x) as f64 - g).abs() / g.abs().max(1.0));
            x += 0.000_37;
        }
        assert!(worst_erf < 5e-7, "erf is off by {worst_erf}");
        assert!(worst_tanh < 2e-7, "tanh is off by {worst_tanh}");
        assert!(worst_gelu < 2e-6, "gelu is off by {worst_gelu}");
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(f32::NAN).is_nan() && tanh(f32::NAN).is_nan());
        assert_eq!((erf(100.0), tanh(100.0), tanh(-100.0)), (1.0, 1.0, -1.0));
    }
}
