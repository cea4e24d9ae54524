//! The requantization arithmetic against hand-computed cases and an exact rational reference.

use proptest::prelude::*;
use qc_ir::requant::{Q31, Requant, RequantMode, output_range, q31, requant_f32, requant_q31, round_even};
use qc_ir::{Attr, Attrs, QuantParams, ScalarType};

#[test]
fn f32_mode_rounds_half_to_even_and_saturates() {
    assert_eq!(requant_f32(5, 0.5, 0, -128, 127), 2); // 2.5 → 2
    assert_eq!(requant_f32(7, 0.5, 0, -128, 127), 4); // 3.5 → 4
    assert_eq!(requant_f32(-5, 0.5, 0, -128, 127), -2); // -2.5 → -2
    assert_eq!(requant_f32(-5, 0.5, -3, -128, 127), -5);
    assert_eq!(requant_f32(1_000_000, 0.5, 0, -128, 127), 127);
    assert_eq!(requant_f32(i32::MIN, 1.0, 0, 0, 255), 0);
    assert_eq!(requant_f32(i32::MAX, 3.0, 10, 0, 255), 255); // M ≥ 1
    assert_eq!(requant_f32(1 << 30, 1e-12, 7, -128, 127), 7); // a tiny multiplier gives zp
}

#[test]
fn round_even_is_round_ties_even() {
    // Every half between −2^23 and 2^23 in steps of 0.5, the magic-number boundary, and beyond.
    let mut xs: Vec<f32> = (-16_777_216i32..=16_777_216).step_by(7).map(|i| i as f32 * 0.5).collect();
    xs.extend([
        4_194_303.5,
        4_194_304.0,
        4_194_304.5,
        -4_194_303.5,
        -4_194_304.5,
        8_388_607.5,
        1e30,
        -1e30,
        0.49999997,
        -0.5,
        2.5,
    ]);
    xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE, f32::MAX]);
    for x in xs {
        assert_eq!(round_even(x), x.round_ties_even(), "{x}");
    }
    assert!(round_even(f32::NAN).is_nan());
}

proptest! {
    #[test]
    fn round_even_matches_on_any_f32(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        prop_assume!(!x.is_nan());
        prop_assert_eq!(round_even(x), x.round_ties_even());
    }
}

#[test]
fn q31_decomposition() {
    assert_eq!(q31(0.5).unwrap(), Q31 { m0: 1 << 30, n: 31 });
    assert_eq!(q31(1.0).unwrap(), Q31 { m0: 1 << 30, n: 30 });
    let big = q31(3.0).unwrap(); // M ≥ 1: a shift below 31
    assert_eq!((big.m0, big.n), (3 << 29, 29));
    let huge = q31(2f64.powi(30) * 1.5).unwrap(); // shift 0
    assert_eq!((huge.m0, huge.n), (3 << 29, 0));
    assert!(q31(2f64.powi(31)).unwrap_err().contains("2^31 or more"));
    assert!(q31(0.0).is_err());
    assert!(q31(f64::NAN).is_err());
    // A multiplier so small that the shift passes 62 yields the zero point.
    let tiny = q31(1e-30).unwrap();
    assert!(tiny.n > 62);
    assert_eq!(requant_q31(i32::MAX, tiny, -7, -128, 127), -7);
    // m0 rounding up to 2^31 renormalizes.
    let edge = q31(1.0 - 1e-12).unwrap();
    assert_eq!((edge.m0, edge.n), (1 << 30, 30));
}

#[test]
fn q31_mode_rounds_once_half_up() {
    let half = q31(0.5).unwrap();
    assert_eq!(requant_q31(5, half, 0, -128, 127), 3); // 2.5 → 3
    assert_eq!(requant_q31(-5, half, 0, -128, 127), -2); // -2.5 → -2 (toward +∞)
    assert_eq!(requant_q31(-7, half, -10, -128, 127), -13);
    assert_eq!(requant_q31(100_000, half, 0, -128, 127), 127);
    let one = q31(1.0).unwrap();
    assert_eq!(requant_q31(-300, one, 0, -128, 127), -128);
}

#[test]
fn activation_narrows_the_output_range() {
    let q = QuantParams::per_tensor(ScalarType::I8, 0.1, -20);
    assert_eq!(output_range(&q, &Attrs::new()), (-128, 127));
    assert_eq!(output_range(&q, &Attrs::new().with("activation", Attr::Str("relu".into()))), (-20, 127));
    let clip = Attrs::new()
        .with("activation", Attr::Str("clip".into()))
        .with("clip_min", Attr::Float(0.0))
        .with("clip_max", Attr::Float(6.0));
    assert_eq!(output_range(&q, &clip), (-20, 40));
    let u = QuantParams::per_tensor(ScalarType::U8, 0.01, 0);
    assert_eq!(output_range(&u, &clip), (0, 255));
}

#[test]
fn requant_mode_attribute() {
    assert_eq!(RequantMode::of(&Attrs::new()).unwrap(), RequantMode::F32);
    assert_eq!(RequantMode::of(&Attrs::new().with("requant", Attr::Str("q31".into()))).unwrap(), RequantMode::Q31);
    assert!(RequantMode::of(&Attrs::new().with("requant", Attr::Str("q15".into()))).is_err());
    let r = Requant::new(RequantMode::Q31, 0.001, 0.1).unwrap();
    assert_eq!(r.apply(150, 0, -128, 127), 2); // 1.5 → 2
}

/// The exact result of one rounding of `acc · m0 / 2^n` (ties toward +∞) plus zp, clamped, in i128.
fn reference(acc: i32, q: Q31, zp: i32, lo: i32, hi: i32) -> i32 {
    if q.n > 62 {
        return zp.clamp(lo, hi);
    }
    let num = acc as i128 * q.m0 as i128;
    let den = 1i128 << q.n;
    let floor = num.div_euclid(den);
    let rem = num.rem_euclid(den);
    let rounded = if 2 * rem >= den { floor + 1 } else { floor };
    (rounded + zp as i128).clamp(lo as i128, hi as i128) as i32
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if std::env::var("QC_SLOW").is_ok() { 100_000 } else { 2_000 }))]

    #[test]
    fn q31_matches_exact_rational_rounding(acc in any::<i32>(), e in -40i32..30, frac in 1.0f64..2.0, zp in -128i32..=127) {
        let m = frac * 2f64.powi(e);
        let q = q31(m).unwrap();
        prop_assert!(q.n > 62 || (1i64 << 30..1i64 << 31).contains(&q.m0));
        prop_assert_eq!(requant_q31(acc, q, zp, -128, 127), reference(acc, q, zp, -128, 127));
    }

    #[test]
    fn q31_is_close_to_the_real_multiplier(acc in -(1i32 << 20)..(1 << 20), e in -20i32..0, frac in 1.0f64..2.0) {
        let m = frac * 2f64.powi(e);
        let q = q31(m).unwrap();
        let exact = acc as f64 * m;
        let got = requant_q31(acc, q, 0, i32::MIN, i32::MAX) as f64;
        prop_assert!((got - exact).abs() <= 0.5 + 1e-6 * exact.abs().max(1.0), "{} vs {}", got, exact);
    }
}
