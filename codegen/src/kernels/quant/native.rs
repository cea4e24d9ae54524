//! Quantize and dequantize on 512-bit vectors for the AVX-512 levels, precompiled with
//! `std::arch` (Cranelift's x64 backend emits 128-bit vectors only; see ARCHITECTURE.md,
//! "Kernels past 128 bits"): sixteen values per step, the same f32 operations as the 128-bit
//! Cranelift kernels and the evaluator, lane by lane. Quantize divides (`vdivps`, whose 512-bit
//! form does four times the 128-bit one's values per instruction on Zen 4), rounds to nearest
//! even (`vrndscaleps`), adds the zero point, turns NaN into the zero point, clamps and narrows
//! (`vpmovdb`, truncating the integers, which lie in the storage's range); dequantize widens,
//! subtracts the zero point, converts and multiplies.
//!
//! Bounds: each function handles the first `16·⌊len/16⌋` elements of slices of equal length
//! (checked), every load and store through a sub-slice of exactly its width; the caller does the
//! rest.

use super::Q8;
use std::arch::x86_64::*;

/// Whether this CPU runs these kernels.
pub(crate) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
}

/// Quantizes the first `16·⌊len/16⌋` values of `x` into `out`; returns how many.
///
/// # Safety
/// The CPU has AVX-512 F and BW ([`available`]).
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn quantize(q: Q8, x: &[f32], out: &mut [u8]) -> usize {
    let n = x.len().min(out.len()) / 16 * 16;
    let (lo, hi) = q.range();
    let (scale, zp) = (_mm512_set1_ps(q.scale), _mm512_set1_ps(q.zp as f32));
    let (lo, hi) = (_mm512_set1_ps(lo as f32), _mm512_set1_ps(hi as f32));
    for (src, dst) in x[..n].chunks_exact(16).zip(out[..n].chunks_exact_mut(16)) {
        let src: &[f32; 16] = src.try_into().expect("16 values");
        // SAFETY: `src` is exactly 16 f32s.
        let v = unsafe { _mm512_loadu_ps(src.as_ptr()) };
        let v = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_div_ps(v, scale));
        let v = _mm512_add_ps(v, zp);
        // NaN gives the zero point; then the clamp (max, min: neither sees a NaN).
        let number = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v);
        let v = _mm512_min_ps(_mm512_max_ps(_mm512_mask_blend_ps(number, zp, v), lo), hi);
        let bytes = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v));
        let dst: &mut [u8; 16] = dst.try_into().expect("16 bytes");
        // SAFETY: `dst` is exactly 16 bytes.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), bytes) };
    }
    n
}

/// Dequantizes the first `16·⌊len/16⌋` bytes of `bytes` into `out`; returns how many.
///
/// # Safety
/// The CPU has AVX-512 F and BW ([`available`]).
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn dequantize(q: Q8, bytes: &[u8], out: &mut [f32]) -> usize {
    let n = bytes.len().min(out.len()) / 16 * 16;
    let (scale, zp) = (_mm512_set1_ps(q.scale), _mm512_set1_epi32(q.zp));
    for (src, dst) in bytes[..n].chunks_exact(16).zip(out[..n].chunks_exact_mut(16)) {
        let src: &[u8; 16] = src.try_into().expect("16 bytes");
        // SAFETY: `src` is exactly 16 bytes.
        let b = unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
        let wide = if q.signed { _mm512_cvtepi8_epi32(b) } else { _mm512_cvtepu8_epi32(b) };
        let v = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(_mm512_sub_epi32(wide, zp)));
        let dst: &mut [f32; 16] = dst.try_into().expect("16 values");
        // SAFETY: `dst` is exactly 16 f32s.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
    }
    n
}
