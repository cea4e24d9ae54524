//! Integer add of two same-shape per-tensor 8-bit tensors (a residual connection): the
//! evaluator's `clamp(rne((s_a(a − z_a) + s_b(b − z_b)) / s_y) + z_y)`, in f32, with its own
//! operations in its order. On ISA levels with AVX-512 (AVX2) it is computed sixteen (eight)
//! elements at a time with intrinsics (widen, subtract, convert, multiply, add, divide, round,
//! clamp, narrow);
//! on the others, `scalar` included, the result is a function of the two bytes alone,
//! computed once for all 256 × 256 pairs when the model is compiled and looked up.
//! Both are equal to the evaluator by construction (same f32 operations); the layout does not
//! matter as long as both operands share it.
//!
//! Bounds: operand lengths are checked equal before either loop; the table has 65 536 entries and
//! is indexed by two bytes; the vector loops load and store 16 (8) bytes through subslices of
//! exactly that length, bounds-checked by the slicing.

use crate::target::Isa;
use qc_ir::requant::{output_range, round_even};
use qc_ir::{Attrs, ScalarType, TensorType};

/// `s·(v − z)` of one operand's byte `v`, as the evaluator computes it: an i8 byte is read as
/// `(v ^ 0x80) − 128`, so `v as i8 − z = (v ^ flip) − shift` in exact integers.
#[derive(Clone, Copy)]
struct Real {
    s: f32,
    flip: u8,
    shift: i32,
}

impl Real {
    fn new(q: &qc_ir::QuantParams) -> Real {
        let (s, z) = q.at(0);
        let signed = q.storage == ScalarType::I8;
        Real { s, flip: if signed { 0x80 } else { 0 }, shift: if signed { z + 128 } else { z } }
    }

    #[inline(always)]
    fn of(self, v: u8) -> f32 {
        self.s * ((v ^ self.flip) as i32 - self.shift) as f32
    }
}

/// A compiled 8-bit add.
pub struct AddQ {
    a: Real,
    b: Real,
    sy: f32,
    zy: f32,
    lo: f32,
    hi: f32,
    /// `table[a · 256 + b]`, when the vector loop does not run.
    table: Option<Box<[u8]>>,
    /// Whether the vector loop may take sixteen elements at a time (the level has AVX-512).
    avx512: bool,
}

impl AddQ {
    /// The kernel of an 8-bit add of per-tensor quantized same-shape operands, or `None`.
    pub fn new(attrs: &Attrs, tys: &[&TensorType], out: &TensorType, isa: Isa) -> Option<AddQ> {
        let (aq, bq, yq) = (tys[0].elem.quant()?, tys[1].elem.quant()?, out.elem.quant()?);
        let eight = |q: &qc_ir::QuantParams| q.axis.is_none() && matches!(q.storage, ScalarType::I8 | ScalarType::U8);
        if !(eight(aq) && eight(bq) && eight(yq)) || tys[0].dims != tys[1].dims || tys[0].dims != out.dims {
            return None;
        }
        let (lo, hi) = output_range(yq, attrs);
        let (sy, zy) = yq.at(0);
        let mut add = AddQ {
            a: Real::new(aq),
            b: Real::new(bq),
            sy,
            zy: zy as f32,
            lo: lo as f32,
            hi: hi as f32,
            table: None,
            avx512: isa.avx512(),
        };
        if !vector_loop(isa) {
            let mut table = vec![0u8; 1 << 16].into_boxed_slice();
            for a in 0..=255u8 {
                for b in 0..=255u8 {
                    table[(a as usize) << 8 | b as usize] = add.one(a, b);
                }
            }
            add.table = Some(table);
        }
        Some(add)
    }

    /// One element, as the evaluator computes it.
    #[inline(always)]
    fn one(&self, a: u8, b: u8) -> u8 {
        let v = round_even((self.a.of(a) + self.b.of(b)) / self.sy) + self.zy;
        v.clamp(self.lo, self.hi) as i32 as u8
    }

    /// The AVX2 loop: eight elements at a time with the scalar operations' vector forms (integer
    /// widening and subtraction, `cvtdq2ps`, `mulps`, `addps`, `divps`, `roundps` to nearest even —
    /// what `round_even` computes —, `addps`, then `maxps(lo, x)` and `minps(hi, x)`, which keep a
    /// NaN as `clamp` does; `cvttps2dq` of the integral result and its low byte, which is what
    /// `as i32 as u8` gives, NaN included), the tail element by element.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn each_avx2(&self, a: &[u8], b: &[u8], y: &mut [u8]) {
        use std::arch::x86_64::*;
        let n = y.len().min(a.len()).min(b.len());
        let real = |r: Real, bytes: &[u8]| {
            // SAFETY: the callers pass slices of exactly 8 bytes.
            let v = unsafe { _mm_loadu_si64(bytes.as_ptr()) };
            let v = _mm256_cvtepu8_epi32(_mm_xor_si128(v, _mm_set1_epi8(r.flip as i8)));
            _mm256_mul_ps(_mm256_set1_ps(r.s), _mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(r.shift))))
        };
        let (sy, zy, lo, hi) =
            (_mm256_set1_ps(self.sy), _mm256_set1_ps(self.zy), _mm256_set1_ps(self.lo), _mm256_set1_ps(self.hi));
        let low_bytes = _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            -1,
        );
        let mut i = 0;
        while i + 8 <= n {
            let sum = _mm256_add_ps(real(self.a, &a[i..i + 8]), real(self.b, &b[i..i + 8]));
            let v =
                _mm256_add_ps(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_div_ps(sum, sy)), zy);
            let v = _mm256_cvttps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, v)));
            // The low byte of each lane (0x80000000 for a NaN has the low byte 0, as `as i32` gives 0).
            let v = _mm256_shuffle_epi8(v, low_bytes);
            let bytes = _mm_unpacklo_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            // SAFETY: `y[i..i + 8]` is in bounds (checked by the slice).
            unsafe { _mm_storeu_si64(y[i..i + 8].as_mut_ptr(), bytes) };
            i += 8;
        }
        for ((o, &p), &q) in y[i..n].iter_mut().zip(&a[i..n]).zip(&b[i..n]) {
            *o = self.one(p, q);
        }
    }

    /// [`AddQ::each_avx2`] sixteen elements at a time with the AVX-512 forms of the same
    /// operations (`vrndscaleps` to nearest even; `vpmovdb`, the low byte of each lane), then the
    /// AVX2 loop for the rest.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2")]
    fn each_avx512(&self, a: &[u8], b: &[u8], y: &mut [u8]) {
        use std::arch::x86_64::*;
        let n = y.len().min(a.len()).min(b.len());
        let real = |r: Real, bytes: &[u8]| {
            // SAFETY: the callers pass slices of exactly 16 bytes.
            let v = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
            let v = _mm512_cvtepu8_epi32(_mm_xor_si128(v, _mm_set1_epi8(r.flip as i8)));
            _mm512_mul_ps(_mm512_set1_ps(r.s), _mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(r.shift))))
        };
        let (sy, zy, lo, hi) =
            (_mm512_set1_ps(self.sy), _mm512_set1_ps(self.zy), _mm512_set1_ps(self.lo), _mm512_set1_ps(self.hi));
        let mut i = 0;
        while i + 16 <= n {
            let sum = _mm512_add_ps(real(self.a, &a[i..i + 16]), real(self.b, &b[i..i + 16]));
            let v = _mm512_add_ps(
                _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_div_ps(sum, sy)),
                zy,
            );
            let v = _mm512_cvttps_epi32(_mm512_min_ps(hi, _mm512_max_ps(lo, v)));
            // SAFETY: `y[i..i + 16]` is in bounds (checked by the slice).
            unsafe { _mm_storeu_si128(y[i..i + 16].as_mut_ptr().cast(), _mm512_cvtepi32_epi8(v)) };
            i += 16;
        }
        self.each_avx2(&a[i..n], &b[i..n], &mut y[i..n]);
    }

    /// Which loop it runs: `avx512`, `avx2` or `table`.
    pub fn describe(&self) -> &'static str {
        match (&self.table, self.avx512) {
            (Some(_), _) => "table",
            (None, true) => "avx512",
            (None, false) => "avx2",
        }
    }

    /// Adds two operands of the same length and layout.
    pub fn run(&self, a: &[u8], b: &[u8], y: &mut [u8]) -> Result<(), String> {
        if a.len() != b.len() || a.len() != y.len() {
            return Err(format!("add operands have {} and {} bytes, its result {}", a.len(), b.len(), y.len()));
        }
        match &self.table {
            Some(table) => {
                for ((o, &p), &q) in y.iter_mut().zip(a).zip(b) {
                    *o = table[(p as usize) << 8 | q as usize];
                }
            }
            // SAFETY: the CPU has AVX-512 F (checked just before).
            #[cfg(target_arch = "x86_64")]
            None if self.avx512 && std::is_x86_feature_detected!("avx512f") => unsafe { self.each_avx512(a, b, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: there is no table only where `vector_loop` found AVX2.
            None => unsafe { self.each_avx2(a, b, y) },
            #[cfg(not(target_arch = "x86_64"))]
            None => unreachable!("a table is built where the vector loop does not run"),
        }
        Ok(())
    }
}

/// Whether adds run the vector loop: on levels with AVX2 (the CPU checked too, as the loop's
/// safety rests on it).
fn vector_loop(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa.avx2() && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 and AVX2 loops against the scalar operations on every pair of bytes (and a
    /// tail), for scales whose quotients often land on half-integers.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_vector_loops_equal_the_scalar_one_on_every_pair() {
        let a: Vec<u8> = (0..(1 << 16) + 7).map(|i| (i >> 8) as u8).collect();
        let b: Vec<u8> = (0..(1 << 16) + 7).map(|i| i as u8).collect();
        for (sa, sb, sy, zy, lo, hi) in
            [(1.0, 1.0, 2.0, 0, 0.0, 255.0), (0.1, 0.3, 0.2, 128, 0.0, 255.0), (0.013, 0.021, 0.0305, 7, 7.0, 255.0)]
        {
            for (flip, shift) in [(0u8, 0i32), (0x80, 128), (0, 17)] {
                let real = |s| Real { s, flip, shift };
                let add = AddQ { a: real(sa), b: real(sb), sy, zy: zy as f32, lo, hi, table: None, avx512: true };
                let want: Vec<u8> = a.iter().zip(&b).map(|(&p, &q)| add.one(p, q)).collect();
                let mut y = vec![0u8; a.len()];
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 is present (checked just before).
                    unsafe { add.each_avx2(&a, &b, &mut y) };
                    assert!(y == want, "AVX2: {sa} {sb} {sy}");
                }
                if std::is_x86_feature_detected!("avx512f") {
                    y.fill(0);
                    // SAFETY: AVX-512 F is present (checked just before).
                    unsafe { add.each_avx512(&a, &b, &mut y) };
                    assert!(y == want, "AVX-512: {sa} {sb} {sy}");
                }
            }
        }
    }
}
