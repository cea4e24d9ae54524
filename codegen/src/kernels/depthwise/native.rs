//! The depthwise convolution on AVX2 and AVX-512 CPUs, precompiled with `std::arch` (Cranelift's
//! x64 backend emits 128-bit vectors only; see ARCHITECTURE.md, "Kernels past 128 bits"): sixteen
//! channels per 256-bit vector, or thirty-two per 512-bit one (AVX-512 BW, for layers whose
//! channels it does not pad more than sixteen would), two taps per `vpmaddwd`, exact for any
//! 8-bit weights.
//!
//! Each image is first copied into a buffer of `C'` bytes per pixel (`C` rounded up to the group of
//! 16 or 32 channels; the
//! channels past `C` hold 0 and meet zero weights), made u8 (an i8 input flipped, `q ^ 0x80`),
//! with a border of pixels of the u8 zero point wide enough for every tap (a halo): so each tap
//! lies at a fixed offset from its output pixel's first input pixel, nothing branches on the
//! border, and a tap in the padding adds `zp_u·w`, which the accumulators' start
//! `b − zp_u·Σ w` takes back.
//!
//! Per output pixel and group of 16 channels, for each pair of taps: the two taps' 16 bytes are
//! widened to i16 (`vpmovzxbw`) and interleaved (`vpunpcklwd`/`vpunpckhwd`, within each 128-bit
//! lane), so one `vpmaddwd` against weights packed in the same order adds 8 channels × 2 taps
//! into i32 lanes (an odd last tap pairs with a zero weight). The interleave leaves the channels
//! of the two accumulators as `{0–3, 8–11}` and `{4–7, 12–15}` (with 32 channels, `{0–3, 8–11,
//! 16–19, 24–27}` and the rest); the bias starts and multipliers are packed in that order, and
//! the epilogue's `vpackssdw` (also within lanes) puts the results back in channel order. The
//! epilogue is the evaluator's f32 requantization, as the GEMMs'. The sums are exact (the layer's accumulators fit i32, which `Depthwise::new`
//! checks), so the result is the evaluator's, bit for bit.
//!
//! Bounds: `run` checks the input and output lengths; the halo's size is computed from the
//! window's geometry so that the last output pixel's last tap ends inside it, which `new` checks
//! (`reach ≤ halo bytes`), and the taps' loads read through a pointer at an offset below that
//! reach; the other loads and stores go through slices of exactly their width.

use crate::kernels::depthwise::simd::DepthwiseSpec;
use crate::kernels::window::{Geometry, Window};
use std::arch::x86_64::*;

/// Channels per group on AVX2 (one 256-bit vector of i16).
const G: usize = 16;
/// Channels per group on AVX-512 (one 512-bit vector of i16).
const G512: usize = 32;

thread_local! {
    /// A thread's haloed u8 copy of one image, reused across layers and runs.
    static HALO: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A depthwise layer packed for the AVX2 or the AVX-512 path.
pub(crate) struct NativeDepthwise {
    c: usize,
    /// Channels per group: 16 (AVX2) or 32 (AVX-512).
    group: usize,
    /// `C` rounded up to the group.
    cp: usize,
    /// The window it was packed for.
    geometry: Geometry,
    /// The halo's rows and columns (pixels).
    halo_hw: [usize; 2],
    /// Each tap's byte offset from its output pixel's first input pixel in the halo.
    offsets: Vec<usize>,
    /// Per group, per tap pair: the weights of the first accumulator's lanes, then of the
    /// second's, each channel's two taps adjacent (`[group][pair][2][group / 2 × 2]` i16).
    weights: Vec<i16>,
    /// Per group: the accumulators' starts, `b − zp_u·Σ w`, in the same two lane orders.
    start: Vec<i32>,
    /// Per group: the f32 multipliers, in the same two lane orders.
    mult: Vec<f32>,
    flip: u8,
    zp_u: u8,
    zp_y: i32,
    lo: i32,
    hi: i32,
}

/// Channel of lane `l` (0..group) of the two accumulators of a group, in the order the
/// interleave leaves them: in each 128-bit lane `j`, the first accumulator holds channels
/// `8j..8j + 4` and the second `8j + 4..8j + 8` (with 16 channels: lanes 0–7 are channels 0–3
/// and 8–11, lanes 8–15 channels 4–7 and 12–15).
fn lane_channel(l: usize, group: usize) -> usize {
    let (acc, j, i) = (l / (group / 2), l % (group / 2) / 4, l % 4);
    j * 8 + acc * 4 + i
}

/// Whether the CPU runs the 512-bit path.
fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
}

impl NativeDepthwise {
    /// Packs the layer, for 512-bit vectors when `avx512` allows and the channels fill them as
    /// well as 256-bit ones; `None` when the CPU has no AVX2 or a weight leaves i16.
    pub(crate) fn new(s: &DepthwiseSpec<'_>, avx512: bool) -> Option<NativeDepthwise> {
        let (c, taps) = (s.c, s.window.taps);
        if !std::is_x86_feature_detected!("avx2") || c == 0 || taps == 0 || s.weights.len() != taps * c {
            return None;
        }
        let group = if avx512 && has_avx512() && c.div_ceil(G512) * G512 == c.div_ceil(G) * G { G512 } else { G };
        if s.bias.len() != c || s.mult.len() != c || s.weights.iter().any(|&w| i16::try_from(w).is_err()) {
            return None;
        }
        let (cp, pairs) = (c.div_ceil(group) * group, taps.div_ceil(2));
        let g = s.window.geometry;
        let span = |i: usize| (g.out[i] - 1) * g.strides[i] + (g.k[i] - 1) * g.dilations[i] + 1;
        if g.out.contains(&0) || g.k.contains(&0) {
            return None;
        }
        let halo_hw = [0, 1].map(|i| span(i).max(g.pads[i] + g.hw[i]));
        let offsets: Vec<usize> =
            (0..taps).map(|t| ((t / g.k[1]) * g.dilations[0] * halo_hw[1] + (t % g.k[1]) * g.dilations[1]) * cp).collect();
        // The last output pixel's farthest tap ends inside the halo.
        let last = ((g.out[0] - 1) * g.strides[0] * halo_hw[1] + (g.out[1] - 1) * g.strides[1]) * cp;
        let reach = last + offsets.iter().max()? + cp;
        if reach > halo_hw[0] * halo_hw[1] * cp {
            return None;
        }
        let zp_u = s.zp_x + if s.x_signed { 128 } else { 0 };
        let w = |t: usize, ch: usize| if t < taps && ch < c { s.weights[t * c + ch] } else { 0 };
        let mut weights = vec![0i16; cp * pairs * 2];
        let (mut start, mut mult) = (vec![0i32; cp], vec![0f32; cp]);
        let half = group / 2;
        for g in 0..cp / group {
            for l in 0..group {
                let ch = g * group + lane_channel(l, group);
                for p in 0..pairs {
                    let base = ((g * pairs + p) * 2 + l / half) * group + (l % half) * 2;
                    weights[base] = w(2 * p, ch) as i16;
                    weights[base + 1] = w(2 * p + 1, ch) as i16;
                }
                if ch < c {
                    let wsum: i64 = (0..taps).map(|t| w(t, ch) as i64).sum();
                    start[g * group + l] = (s.bias[ch] as i64 - zp_u as i64 * wsum) as i32;
                    mult[g * group + l] = s.mult[ch];
                }
            }
        }
        Some(NativeDepthwise {
            c,
            group,
            cp,
            geometry: g,
            halo_hw,
            offsets,
            weights,
            start,
            mult,
            flip: if s.x_signed { 0x80 } else { 0 },
            zp_u: zp_u as u8,
            zp_y: s.zp_y,
            lo: s.lo,
            hi: s.hi,
        })
    }

    /// What it multiplies with: `avx2 vpmaddwd` or `avx512 vpmaddwd`.
    pub(crate) fn describe(&self) -> &'static str {
        if self.group == G512 { "avx512 vpmaddwd" } else { "avx2 vpmaddwd" }
    }

    /// `batch` NHWC images (`plane · C` bytes each) into `y` (`positions · C` bytes each), through
    /// `w`, the window the layer was packed for.
    pub(crate) fn run(&self, w: &Window, x: &[u8], batch: usize, y: &mut [u8]) -> Result<(), String> {
        let (image, out) = (w.plane * self.c, w.positions * self.c);
        if w.geometry != self.geometry {
            return Err("native depthwise: run with another window than it was packed for".into());
        }
        if x.len() != batch * image || y.len() != batch * out {
            return Err(format!("native depthwise: {} input and {} output bytes for {batch} images", x.len(), y.len()));
        }
        if !std::is_x86_feature_detected!("avx2") || (self.group == G512 && !has_avx512()) {
            return Err("the native depthwise path runs on a CPU without the vectors it was packed for".into());
        }
        HALO.with_borrow_mut(|buf| {
            buf.resize(self.halo_hw[0] * self.halo_hw[1] * self.cp, 0);
            for (img, dst) in x.chunks_exact(image).zip(y.chunks_exact_mut(out)) {
                self.copy_in(img, buf);
                // SAFETY: AVX2, and AVX-512 F/BW for groups of 32, are present (checked above);
                // `buf` holds the whole halo.
                unsafe {
                    match (self.group, self.offsets.len()) {
                        (G512, 9) => self.image512::<9>(buf, dst),
                        (G512, 25) => self.image512::<25>(buf, dst),
                        (G512, _) => self.image512::<0>(buf, dst),
                        (_, 9) => self.image::<9>(buf, dst),
                        (_, 25) => self.image::<25>(buf, dst),
                        _ => self.image::<0>(buf, dst),
                    }
                }
            }
        });
        Ok(())
    }

    /// One image into the halo: `C'` u8 bytes per pixel, the border the zero point (the channels
    /// past `C` 0).
    fn copy_in(&self, img: &[u8], buf: &mut [u8]) {
        let (c, cp, g) = (self.c, self.cp, &self.geometry);
        let [hh, hw] = self.halo_hw;
        debug_assert!(buf.len() == hh * hw * cp);
        let mut zero_pixel = vec![0u8; cp];
        zero_pixel[..c].fill(self.zp_u);
        let [top, left] = g.pads;
        for (r, row) in buf.chunks_exact_mut(hw * cp).enumerate().take(hh) {
            if !(top..top + g.hw[0]).contains(&r) {
                row.chunks_exact_mut(cp).for_each(|px| px.copy_from_slice(&zero_pixel));
                continue;
            }
            let (head, rest) = row.split_at_mut(left * cp);
            let (inner, tail) = rest.split_at_mut(g.hw[1] * cp);
            head.chunks_exact_mut(cp).chain(tail.chunks_exact_mut(cp)).for_each(|px| px.copy_from_slice(&zero_pixel));
            let src = &img[(r - top) * g.hw[1] * c..][..g.hw[1] * c];
            if c == cp {
                // One run of bytes (a loop the compiler vectorizes).
                for (d, &s) in inner.iter_mut().zip(src) {
                    *d = s ^ self.flip;
                }
            } else {
                for (px, src) in inner.chunks_exact_mut(cp).zip(src.chunks_exact(c)) {
                    for (d, &s) in px.iter_mut().zip(src) {
                        *d = s ^ self.flip;
                    }
                    px[c..].fill(0);
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    /// One image from the halo `buf` into `dst`; `T` is the number of taps when it is fixed for
    /// the compiler to unroll the taps (3×3 and 5×5 windows), else 0.
    ///
    /// # Safety
    /// `buf` holds the halo (`halo_hw[0] · halo_hw[1] · C'` bytes), which `new` checked every tap
    /// of every output pixel to lie in.
    unsafe fn image<const T: usize>(&self, buf: &[u8], dst: &mut [u8]) {
        let (c, cp) = (self.c, self.cp);
        let g = &self.geometry;
        debug_assert!(buf.len() >= self.halo_hw[0] * self.halo_hw[1] * cp);
        let taps = if T == 0 { self.offsets.as_slice() } else { &self.offsets[..T] };
        let pairs = taps.len().div_ceil(2);
        let base = buf.as_ptr();
        let load_i32 = |s: &[i32]| -> __m256i {
            let s: &[i32; 8] = s[..8].try_into().expect("8 lanes");
            // SAFETY: `s` is exactly 8 i32s.
            unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
        };
        let load_i16 = |s: &[i16]| -> __m256i {
            let s: &[i16; G] = s[..G].try_into().expect("16 lanes");
            // SAFETY: `s` is exactly 16 i16s.
            unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
        };
        let (lo, hi) = (_mm256_set1_ps((self.lo - self.zp_y) as f32), _mm256_set1_ps((self.hi - self.zp_y) as f32));
        let zp = _mm256_set1_epi32(self.zp_y);
        let unsigned = self.lo >= 0;
        for (pos, out) in dst.chunks_exact_mut(c).enumerate() {
            let (oy, ox) = (pos / g.out[1], pos % g.out[1]);
            let px = (oy * g.strides[0] * self.halo_hw[1] + ox * g.strides[1]) * cp;
            // 16 bytes at `px + ch0 + taps[t]`, widened to i16.
            let load16 = |t: usize, ch0: usize| -> __m256i {
                // SAFETY: `px + taps[t] + ch0 + 16 ≤ reach ≤ buf.len()` (see `new`), for every
                // output pixel, tap and group.
                unsafe { _mm256_cvtepu8_epi16(_mm_loadu_si128(base.add(px + taps[t] + ch0).cast())) }
            };
            for grp in 0..cp / G {
                let ch0 = grp * G;
                let mut acc = [load_i32(&self.start[ch0..]), load_i32(&self.start[ch0 + 8..])];
                let wg = &self.weights[grp * pairs * 2 * G..][..pairs * 2 * G];
                for (p, wp) in wg.chunks_exact(2 * G).enumerate() {
                    let x0 = load16(2 * p, ch0);
                    let x1 = if 2 * p + 1 < taps.len() { load16(2 * p + 1, ch0) } else { _mm256_setzero_si256() };
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), load_i16(wp)));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), load_i16(&wp[G..])));
                }
                let mut q = [_mm256_setzero_si256(); 2];
                for (h, q) in q.iter_mut().enumerate() {
                    let s: &[f32; 8] = self.mult[ch0 + 8 * h..][..8].try_into().expect("8 lanes");
                    // SAFETY: `s` is exactly 8 f32s.
                    let m = unsafe { _mm256_loadu_ps(s.as_ptr()) };
                    let f = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[h]), m), lo), hi);
                    let f = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
                    *q = _mm256_add_epi32(_mm256_cvtps_epi32(f), zp);
                }
                // Within each half: channels 0–3 and 4–7 (8–11 and 12–15), in order; the values
                // lie in [lo, hi], so neither pack saturates.
                let words = _mm256_packs_epi32(q[0], q[1]);
                let (w0, w1) = (_mm256_castsi256_si128(words), _mm256_extracti128_si256::<1>(words));
                let bytes = if unsigned { _mm_packus_epi16(w0, w1) } else { _mm_packs_epi16(w0, w1) };
                let dst = &mut out[ch0..(ch0 + G).min(c)];
                if let Ok(dst) = <&mut [u8; G]>::try_from(&mut *dst) {
                    // SAFETY: `dst` is exactly 16 bytes.
                    unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), bytes) };
                } else {
                    let mut tile = [0u8; G];
                    // SAFETY: `tile` is exactly 16 bytes.
                    unsafe { _mm_storeu_si128(tile.as_mut_ptr().cast(), bytes) };
                    dst.copy_from_slice(&tile[..dst.len()]);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    /// [`Self::image`] on 512-bit vectors: groups of 32 channels.
    ///
    /// # Safety
    /// As [`Self::image`]; the CPU has AVX-512 F and BW.
    unsafe fn image512<const T: usize>(&self, buf: &[u8], dst: &mut [u8]) {
        let (c, cp) = (self.c, self.cp);
        let g = &self.geometry;
        debug_assert!(self.group == G512 && buf.len() >= self.halo_hw[0] * self.halo_hw[1] * cp);
        let taps = if T == 0 { self.offsets.as_slice() } else { &self.offsets[..T] };
        let pairs = taps.len().div_ceil(2);
        let base = buf.as_ptr();
        let load_i32 = |s: &[i32]| -> __m512i {
            let s: &[i32; 16] = s[..16].try_into().expect("16 lanes");
            // SAFETY: `s` is exactly 16 i32s.
            unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
        };
        let load_i16 = |s: &[i16]| -> __m512i {
            let s: &[i16; G512] = s[..G512].try_into().expect("32 lanes");
            // SAFETY: `s` is exactly 32 i16s.
            unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
        };
        let (lo, hi) = (_mm512_set1_ps((self.lo - self.zp_y) as f32), _mm512_set1_ps((self.hi - self.zp_y) as f32));
        let zp = _mm512_set1_epi32(self.zp_y);
        let unsigned = self.lo >= 0;
        for (pos, out) in dst.chunks_exact_mut(c).enumerate() {
            let (oy, ox) = (pos / g.out[1], pos % g.out[1]);
            let px = (oy * g.strides[0] * self.halo_hw[1] + ox * g.strides[1]) * cp;
            // 32 bytes at `px + ch0 + taps[t]`, widened to i16.
            let load32 = |t: usize, ch0: usize| -> __m512i {
                // SAFETY: `px + taps[t] + ch0 + 32 ≤ reach ≤ buf.len()` (see `new`, with `cp` a
                // multiple of 32), for every output pixel, tap and group.
                unsafe { _mm512_cvtepu8_epi16(_mm256_loadu_si256(base.add(px + taps[t] + ch0).cast())) }
            };
            for grp in 0..cp / G512 {
                let ch0 = grp * G512;
                let mut acc = [load_i32(&self.start[ch0..]), load_i32(&self.start[ch0 + 16..])];
                let wg = &self.weights[grp * pairs * 2 * G512..][..pairs * 2 * G512];
                for (p, wp) in wg.chunks_exact(2 * G512).enumerate() {
                    let x0 = load32(2 * p, ch0);
                    let x1 = if 2 * p + 1 < taps.len() { load32(2 * p + 1, ch0) } else { _mm512_setzero_si512() };
                    acc[0] = _mm512_add_epi32(acc[0], _mm512_madd_epi16(_mm512_unpacklo_epi16(x0, x1), load_i16(wp)));
                    acc[1] = _mm512_add_epi32(acc[1], _mm512_madd_epi16(_mm512_unpackhi_epi16(x0, x1), load_i16(&wp[G512..])));
                }
                let mut q = [_mm512_setzero_si512(); 2];
                for (h, q) in q.iter_mut().enumerate() {
                    let s: &[f32; 16] = self.mult[ch0 + 16 * h..][..16].try_into().expect("16 lanes");
                    // SAFETY: `s` is exactly 16 f32s.
                    let m = unsafe { _mm512_loadu_ps(s.as_ptr()) };
                    let f = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[h]), m), lo), hi);
                    let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(f);
                    *q = _mm512_add_epi32(r, zp);
                }
                // Within each 128-bit lane: 4 channels of each accumulator, in order; the values
                // lie in [lo, hi], so neither narrowing saturates.
                let words = _mm512_packs_epi32(q[0], q[1]);
                let bytes = if unsigned { _mm512_cvtusepi16_epi8(words) } else { _mm512_cvtsepi16_epi8(words) };
                let dst = &mut out[ch0..(ch0 + G512).min(c)];
                if let Ok(dst) = <&mut [u8; G512]>::try_from(&mut *dst) {
                    // SAFETY: `dst` is exactly 32 bytes.
                    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), bytes) };
                } else {
                    let mut tile = [0u8; G512];
                    // SAFETY: `tile` is exactly 32 bytes.
                    unsafe { _mm256_storeu_si256(tile.as_mut_ptr().cast(), bytes) };
                    dst.copy_from_slice(&tile[..dst.len()]);
                }
            }
        }
    }
}
