//! Element-wise integer steps written so that the compiler vectorizes them, each equal to the
//! evaluator's scalar definition for every input (unit-tested here against it).

const LIMIT: f32 = 4_194_304.0;
const MAGIC: f32 = 12_582_912.0;

/// The output clamp as f32, within a byte's values whatever the caller passes, so that the
/// unchecked conversions below always see an integer in `[-128, 255]`.
fn byte_bounds(lo: i32, hi: i32) -> (f32, f32) {
    (lo.clamp(-128, 255) as f32, hi.clamp(-128, 255) as f32)
}

/// [`qc_ir::requant::requant_f32`] over a row of accumulators (`lo ≤ hi` within a byte's
/// range), written so that it vectorizes: the product is clamped to `±2^22` before rounding
/// (beyond that the output clamp gives `lo` or `hi` either way), where adding and subtracting
/// `1.5·2^23` rounds to nearest even exactly; a NaN product (a non-finite multiplier) becomes 0,
/// which gives the zero point as the evaluator's conversion of NaN to 0 does.
#[inline(always)]
pub fn requant_f32(acc: &[i32], mult: &[f32], zp: i32, lo: i32, hi: i32, out: &mut [u8]) {
    let (lo, hi) = byte_bounds(lo, hi);
    for ((o, &a), &m) in out.iter_mut().zip(acc).zip(mult) {
        let f = a as f32 * m;
        let f = if f.is_nan() { 0.0 } else { f.clamp(-LIMIT, LIMIT) };
        let r = ((f + MAGIC) - MAGIC + zp as f32).max(lo).min(hi);
        // SAFETY: `r` is not NaN (replaced above) and is an integer in [-128, 255].
        *o = unsafe { r.to_int_unchecked::<i32>() } as u8;
    }
}

/// [`qc_ir::eval::quantize_value`] over a slice: `clamp(rne(r / scale) + zp, lo, hi)`, with a
/// NaN quotient giving the zero point (`lo ≤ zp ≤ hi`, as every quantized type has). The quotient
/// is clamped to `±2^22` before rounding, as in [`requant_f32`].
pub fn quantize(x: &[f32], scale: f32, zp: i32, lo: i32, hi: i32, out: &mut [u8]) {
    let (lo, hi) = byte_bounds(lo, hi);
    for (o, &r) in out.iter_mut().zip(x) {
        let v = r / scale;
        let v = if v.is_nan() { 0.0 } else { v.clamp(-LIMIT, LIMIT) };
        let q = ((v + MAGIC) - MAGIC + zp as f32).max(lo).min(hi);
        // SAFETY: `q` is not NaN (replaced above) and is an integer in [-128, 255].
        *o = unsafe { q.to_int_unchecked::<i32>() } as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qc_ir::eval::quantize_value;

    #[test]
    fn lane_requant_equals_the_evaluator() {
        let accs = [0, 1, -1, 7, -7, 127, 128, 1 << 20, -(1 << 20), i32::MAX, i32::MIN, 123_456_789, -98_765];
        let mults = [1e-6f32, 0.003, 0.5, 0.75, 1.0, 1.5, 3.0e4, 2.0e9, f32::INFINITY, f32::NAN];
        for &m in &mults {
            for &zp in &[0, 3, 128, 255, -128] {
                for (lo, hi) in [(0, 255), (-128, 127), (zp.max(0), 255)] {
                    let mut out = vec![0u8; accs.len()];
                    requant_f32(&accs, &vec![m; accs.len()], zp, lo, hi, &mut out);
                    for (&a, &o) in accs.iter().zip(&out) {
                        let want = qc_ir::requant::requant_f32(a, m, zp, lo, hi) as u8;
                        assert_eq!(o, want, "acc {a} · {m} + {zp} in [{lo}, {hi}]");
                    }
                }
            }
        }
        // Halves round to even, as the evaluator.
        let mut out = [0u8; 4];
        requant_f32(&[1, 3, 5, 7], &[0.5; 4], 0, 0, 255, &mut out);
        assert_eq!(out, [0, 2, 2, 4]);
    }

    #[test]
    fn lane_quantize_equals_the_evaluator() {
        let xs =
            [0.0f32, -0.0, 0.5, 1.5, 2.5, -2.5, 1e-9, 3.0e7, -3.0e7, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.12345, -7.77];
        for &scale in &[1e-3f32, 0.0039, 0.5, 1.0, 1e9] {
            for (zp, lo, hi) in [(0, 0, 255), (128, 0, 255), (-3, -128, 127), (0, -128, 127)] {
                let mut out = vec![0u8; xs.len()];
                quantize(&xs, scale, zp, lo, hi, &mut out);
                for (&x, &o) in xs.iter().zip(&out) {
                    assert_eq!(o, quantize_value(x, scale, zp, lo, hi) as u8, "{x} / {scale} + {zp}");
                }
            }
        }
    }
}
