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
#[inline(always)]
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

/// [`qc_ir::eval`]'s `dynamic_quantize` (u8 data, scale, zero point): the range folded over the
/// values in memory order, the evaluator's own [`qc_ir::eval::dynamic_params`], then
/// [`quantize`] (AVX2 where the CPU has it).
pub fn dynamic_quantize(x: &ndarray::ArrayD<f32>) -> [qc_ir::Tensor; 3] {
    let standard = x.as_standard_layout();
    let v = standard.as_slice().expect("standard layout");
    let (lo, hi) = range(v);
    let (s, zp) = qc_ir::eval::dynamic_params(lo, hi);
    let mut q = vec![0u8; v.len()];
    #[cfg(target_arch = "x86_64")]
    if super::native::available() {
        let q8 = super::Q8 { scale: s, zp, signed: false };
        // SAFETY: the CPU has AVX-512 F and BW (checked just above).
        let done = unsafe { super::native::quantize(q8, v, &mut q) };
        quantize(&v[done..], s, zp, 0, 255, &mut q[done..]);
    } else if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { quantize_avx2(v, s, zp, &mut q) };
    } else {
        quantize(v, s, zp, 0, 255, &mut q);
    }
    #[cfg(not(target_arch = "x86_64"))]
    quantize(v, s, zp, 0, 255, &mut q);
    let scalar = ndarray::IxDyn(&[]);
    [
        qc_ir::Tensor::U8(ndarray::ArrayD::from_shape_vec(x.raw_dim(), q).expect("same length")),
        qc_ir::Tensor::F32(ndarray::ArrayD::from_elem(scalar.clone(), s)),
        qc_ir::Tensor::U8(ndarray::ArrayD::from_elem(scalar, zp as u8)),
    ]
}

/// The evaluator's `(min(0, x…), max(0, x…))` folded in 16 independent lanes, which vectorizes
/// (one serial fold is bound by the latency of `min`). The same values: `min`/`max` skip NaN and
/// are otherwise order-free, except for the sign of a zero, which `dynamic_params` cannot see.
fn range(v: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0f32; 16], [0f32; 16]);
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            lo[i] = lo[i].min(c[i]);
            hi[i] = hi[i].max(c[i]);
        }
    }
    let fold = |init: (f32, f32), xs: &[f32], ys: &[f32]| xs.iter().zip(ys).fold(init, |(l, h), (&a, &b)| (l.min(a), h.max(b)));
    let (lo, hi) = fold((0.0, 0.0), &lo, &hi);
    fold((lo, hi), tail, tail)
}

/// [`quantize`] to u8, compiled for AVX2 (8-lane division and rounding).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_avx2(x: &[f32], scale: f32, zp: i32, out: &mut [u8]) {
    quantize(x, scale, zp, 0, 255, out)
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

    #[test]
    fn lane_dynamic_quantize_equals_the_evaluator() {
        let attrs = qc_ir::Attrs::default();
        let ty = qc_ir::TensorType { dims: vec![qc_ir::Dim::Dynamic], elem: qc_ir::ElemType::Scalar(qc_ir::ScalarType::F32) };
        let outs = [
            qc_ir::TensorType { dims: vec![qc_ir::Dim::Dynamic], elem: qc_ir::ElemType::Scalar(qc_ir::ScalarType::U8) },
            qc_ir::TensorType { dims: vec![], elem: qc_ir::ElemType::Scalar(qc_ir::ScalarType::F32) },
            qc_ir::TensorType { dims: vec![], elem: qc_ir::ElemType::Scalar(qc_ir::ScalarType::U8) },
        ];
        let sets: Vec<Vec<f32>> = vec![
            vec![],
            vec![0.0; 5],
            vec![-3.0, -1.5, -0.25],
            vec![0.5, 7.25, 1e-7, 3.5],
            (0..100).map(|i| (i as f32 - 37.0) * 0.173).collect(),
            vec![-1.0, f32::NAN, 2.0, -0.0, 0.5],
            vec![1e30, -1e30, 3.0],
            // Across the 16 lanes of the range fold and its tail: NaN, -0, infinities.
            (0..37).map(|i| [(i as f32).sin() * 4.0, f32::NAN, -0.0][(i % 7 == 3) as usize + (i == 20) as usize * 2]).collect(),
            (0..40).map(|i| if i == 17 { f32::INFINITY } else { -(i as f32) }).collect(),
            (0..33).map(|i| if i == 32 { f32::NEG_INFINITY } else { i as f32 * 0.01 }).collect(),
        ];
        for v in sets {
            let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[v.len()]), v.clone()).unwrap();
            let got = dynamic_quantize(&x).to_vec();
            let want = qc_ir::eval::eval_op_multi(
                qc_ir::OpKind::DynamicQuantize,
                &attrs,
                &[&qc_ir::Tensor::F32(x)],
                &[&ty],
                &outs.iter().collect::<Vec<_>>(),
            )
            .unwrap();
            assert_eq!(got, want, "{v:?}");
        }
    }
}
