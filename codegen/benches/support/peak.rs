//! The machine's peak for each dot-instruction sequence qc's kernels are built on, measured on
//! this CPU in this run: a loop of twelve independent accumulator chains (so that throughput,
//! not latency, limits), each step one instruction group (where the group has no accumulating
//! operand, the chain's value is also its input, so the compiler cannot hoist the product):
//! - `vpdpbusd` on 512 bits (u8×i8, 64 multiply-adds; the avx512-vnni GEMM);
//! - `vpmaddubsw` + `vpmaddwd`(ones) + `vpaddd` on 256 bits (u8×i8, 32; ONNX Runtime's AVX2 kernel);
//! - `vpmaddwd` + `vpaddd` on 256 bits (exact i16, 16; the avx2 GEMM);
//! - `pmaddwd` + `paddd` on 128 bits (8; the portable JIT path);
//! - `vfmadd231ps` on 256 and 512 bits (f32, 8 and 16 multiply-adds).
//! Kernel benchmarks print their GOPS as a share of the best integer peak.

use std::arch::x86_64::*;
use std::hint::black_box;
use std::time::Instant;

/// Chains per loop step.
const CHAINS: usize = 12;
/// Loop steps per measurement.
const STEPS: usize = 4_000_000;

/// One instruction sequence's measured peak.
pub struct Peak {
    pub name: &'static str,
    /// Integer (or f32) operations per second, 2 per multiply-add, in G.
    pub gops: f64,
    pub integer: bool,
}

fn best_of(runs: usize, macs_per_step: usize, f: impl Fn() -> i64) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            2.0 * (STEPS * CHAINS * macs_per_step) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn vnni512() -> i64 {
    let (a, b) = (_mm512_set1_epi32(black_box(0x0101_0101)), _mm512_set1_epi32(black_box(0x0202_0202)));
    let mut acc = [_mm512_setzero_si512(); CHAINS];
    for _ in 0..STEPS {
        for x in acc.iter_mut() {
            *x = _mm512_dpbusd_epi32(*x, a, b);
        }
    }
    acc.iter().map(|&x| _mm512_reduce_add_epi32(x) as i64).sum()
}

#[target_feature(enable = "avx2")]
fn sum256(acc: &[__m256i; CHAINS]) -> i64 {
    let mut out = [0i32; 8];
    let s = acc.iter().fold(_mm256_setzero_si256(), |s, &x| _mm256_add_epi32(s, x));
    // SAFETY: `out` is exactly 8 i32s.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), s) };
    out.iter().map(|&v| v as i64).sum()
}

#[target_feature(enable = "avx2")]
fn maddubs256() -> i64 {
    let (b, ones) = (_mm256_set1_epi8(black_box(2)), _mm256_set1_epi16(1));
    let mut acc = [_mm256_set1_epi8(black_box(1)); CHAINS];
    for _ in 0..STEPS {
        for x in acc.iter_mut() {
            *x = _mm256_add_epi32(*x, _mm256_madd_epi16(_mm256_maddubs_epi16(*x, b), ones));
        }
    }
    sum256(&acc)
}

#[target_feature(enable = "avx2")]
fn maddwd256() -> i64 {
    let b = _mm256_set1_epi16(black_box(2));
    let mut acc = [_mm256_set1_epi16(black_box(1)); CHAINS];
    for _ in 0..STEPS {
        for x in acc.iter_mut() {
            *x = _mm256_add_epi32(*x, _mm256_madd_epi16(*x, b));
        }
    }
    sum256(&acc)
}

#[target_feature(enable = "sse4.1")]
fn maddwd128() -> i64 {
    let b = _mm_set1_epi16(black_box(2));
    let mut acc = [_mm_set1_epi16(black_box(1)); CHAINS];
    for _ in 0..STEPS {
        for x in acc.iter_mut() {
            *x = _mm_add_epi32(*x, _mm_madd_epi16(*x, b));
        }
    }
    acc.iter().map(|&x| _mm_extract_epi32::<0>(x) as i64).sum()
}

#[target_feature(enable = "avx2,fma")]
fn fma256() -> i64 {
    let (a, b) = (_mm256_set1_ps(black_box(1.0)), _mm256_set1_ps(black_box(1e-9)));
    let mut acc = [_mm256_setzero_ps(); CHAINS];
    for _ in 0..STEPS {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(a, b, *x);
        }
    }
    acc.iter().map(|&x| _mm256_cvtss_f32(x) as i64).sum()
}

#[target_feature(enable = "avx512f")]
fn fma512() -> i64 {
    let (a, b) = (_mm512_set1_ps(black_box(1.0)), _mm512_set1_ps(black_box(1e-9)));
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    for _ in 0..STEPS {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(a, b, *x);
        }
    }
    acc.iter().map(|&x| _mm512_reduce_add_ps(x) as i64).sum()
}

/// Every sequence this CPU runs, measured (best of 3).
pub fn measure() -> Vec<Peak> {
    let has = |f: &str| match f {
        "vnni512" => {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
        }
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        _ => is_x86_feature_detected!("sse4.1"),
    };
    let mut v = Vec::new();
    // SAFETY (each call below): the CPU has the features the function is compiled for
    // (checked by `has` just before the call).
    if has("vnni512") {
        v.push(Peak { name: "vpdpbusd zmm (avx512-vnni)", gops: best_of(3, 64, || unsafe { vnni512() }), integer: true });
    }
    if has("avx2") {
        v.push(Peak { name: "vpmaddubsw+vpmaddwd+vpaddd ymm", gops: best_of(3, 32, || unsafe { maddubs256() }), integer: true });
        v.push(Peak { name: "vpmaddwd+vpaddd ymm (avx2)", gops: best_of(3, 16, || unsafe { maddwd256() }), integer: true });
    }
    if has("sse4.1") {
        v.push(Peak { name: "pmaddwd+paddd xmm (sse4.1)", gops: best_of(3, 8, || unsafe { maddwd128() }), integer: true });
    }
    if has("fma") {
        v.push(Peak { name: "vfmadd231ps ymm (f32)", gops: best_of(3, 8, || unsafe { fma256() }), integer: false });
    }
    if has("avx512f") {
        v.push(Peak { name: "vfmadd231ps zmm (f32)", gops: best_of(3, 16, || unsafe { fma512() }), integer: false });
    }
    v
}
