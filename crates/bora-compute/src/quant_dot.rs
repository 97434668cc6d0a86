//! Matrix-vector products straight from quantized blocks, for decoding.
//!
//! Generating one token multiplies every weight by a single activation row, so the cost is
//! reading the weights; dequantizing them to f32 in memory first would triple the traffic.
//! Each weight block is instead expanded in registers and dotted with the activation row.
//!
//! ggml quantizes the activation row to 8 bits and dots in integers. On SmolLM2-135M (Q4_1)
//! that made a decoded token's logits differ from the same position's prefill logits by up
//! to 2% of max|logit| (small models have outlier channels that set each block's scale),
//! enough to flip near-tied greedy tokens against transformers. Dotting dequantized weights
//! with f32 activations is exact but measured 1.4–2.4× slower single-threaded here. bora
//! quantizes activations to 16 bits per block of 32 instead: `madd` of i16 pairs ran within
//! 1.1× of the 8-bit path on the classic formats (1.3× on K-quants), the decode-vs-prefill
//! difference fell to 0.02% of max|logit|, and 64-token greedy runs match transformers.
//!
//! Formats whose blocks add a minimum (`d·q + m`) need `Σx` per 32-element block; it is
//! computed in f32 once per activation row ([`quantize_row`]) and shared by every weight row.

use bora_formats::quant::{
    dequantize_block_q4_0, dequantize_block_q4_1, dequantize_block_q4_k, dequantize_block_q6_k,
    dequantize_block_q8_0, GgmlType, QK,
};

use crate::simd::dot;

/// One activation row: exact (`x`, for the portable kernel) and as 16-bit blocks of 32
/// (`q` with scales `d`), plus the exact sum of each block. `pairs` holds `q` again with
/// the halves of consecutive blocks interleaved (see [`quantize_row`]).
pub(crate) struct XRow<'a> {
    pub x: &'a [f32],
    pub q: &'a [i16],
    pub pairs: &'a [i16],
    pub d: &'a [f32],
    pub sums: &'a [f32],
}

/// Fills `q`, `d` (16-bit blocks of 32, scale `max|x|/32767`) and `sums` for row `x`, and
/// `pairs`: for blocks `2t`, `2t+1` (`a`, `b`), `a[0..16] b[0..16] a[16..32] b[16..32]`, and
/// a last unpaired block as it is. The AVX-512 Q4 kernel widens two blocks' nibbles into one
/// register, low nibbles (elements 0..16) of both blocks, then high nibbles; this layout
/// lets it load the matching activations with one plain load each.
pub(crate) fn quantize_row(
    x: &[f32],
    q: &mut [i16],
    pairs: &mut [i16],
    d: &mut [f32],
    sums: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { quantize_blocks_avx2(x, q, d, sums) };
    } else {
        quantize_blocks(x, q, d, sums);
    }
    #[cfg(not(target_arch = "x86_64"))]
    quantize_blocks(x, q, d, sums);
    const H: usize = QK / 2;
    let mut src = q.chunks_exact(2 * QK);
    let mut dst = pairs.chunks_exact_mut(2 * QK);
    for (s, o) in (&mut src).zip(&mut dst) {
        o[..H].copy_from_slice(&s[..H]);
        o[H..2 * H].copy_from_slice(&s[QK..QK + H]);
        o[2 * H..3 * H].copy_from_slice(&s[H..QK]);
        o[3 * H..].copy_from_slice(&s[QK + H..]);
    }
    let rest = src.remainder();
    dst.into_remainder()[..rest.len()].copy_from_slice(rest);
}

/// The per-block part of [`quantize_row`].
#[inline(always)]
fn quantize_blocks(x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) {
    for (((xb, qb), db), sb) in x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(QK))
        .zip(d.iter_mut())
        .zip(sums.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 32767.0;
        let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        for (o, v) in qb.iter_mut().zip(xb) {
            *o = (v * inv).round() as i16;
        }
        *db = scale;
        *sb = xb.iter().sum();
    }
}

/// [`quantize_blocks`] compiled with AVX2, where `round` is a few vector instructions
/// instead of a libm call per element.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_blocks_avx2(x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) {
    quantize_blocks(x, q, d, sums)
}

/// True for the types [`row_dot`] handles.
pub(crate) fn has_dot_kernel(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K
    )
}

/// Portable kernel: decode each block with bora-formats' decoder, then an f32 dot.
fn row_dot_portable(ty: GgmlType, row: &[u8], xr: &XRow<'_>) -> f32 {
    fn blocks<const B: usize, const E: usize>(
        row: &[u8],
        x: &[f32],
        decode: fn(&[u8; B], &mut [f32; E]),
    ) -> f32 {
        let mut out = [0f32; E];
        let mut acc = 0f32;
        for (blk, xb) in row.chunks_exact(B).zip(x.chunks_exact(E)) {
            if let Ok(blk) = <&[u8; B]>::try_from(blk) {
                decode(blk, &mut out);
                acc += dot(&out, xb);
            }
        }
        acc
    }
    match ty {
        GgmlType::Q4_0 => blocks(row, xr.x, dequantize_block_q4_0),
        GgmlType::Q4_1 => blocks(row, xr.x, dequantize_block_q4_1),
        GgmlType::Q8_0 => blocks(row, xr.x, dequantize_block_q8_0),
        GgmlType::Q4_K => blocks(row, xr.x, dequantize_block_q4_k),
        GgmlType::Q6_K => blocks(row, xr.x, dequantize_block_q6_k),
        _ => unreachable!("row_dot called for {ty}, which has no dot kernel"),
    }
}

/// Hand-written AVX2 kernels: widen a block's quants to i16 in registers, `madd` them with
/// the 16-bit activations (i16 pairs → i32), convert to f32, and apply the block's combined
/// scale with one FMA; the minimum goes through the activation block sums.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{q4_k_scale_min, XRow};
    use bora_formats::quant::{GgmlType, QK, QK_K};

    #[inline(always)]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Σ w[i]·x[i] over 16 quants already widened to i16 and 16 activations at `x`, as 8
    /// i32 partial sums.
    #[inline(always)]
    unsafe fn madd16(w: __m256i, x: *const i16) -> __m256i {
        _mm256_madd_epi16(w, _mm256_loadu_si256(x as *const __m256i))
    }

    /// Σ over the 32 nibbles of a Q4 block (low nibbles are elements 0..16) times `x`.
    #[inline(always)]
    unsafe fn dot_nibbles(qs: *const u8, x: *const i16) -> __m256 {
        let v = _mm_loadu_si128(qs as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm256_cvtepu8_epi16(_mm_and_si128(v, m));
        let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), m));
        _mm256_cvtepi32_ps(_mm256_add_epi32(madd16(lo, x), madd16(hi, x.add(16))))
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `row` must be whole blocks of `ty` (one of
    /// the five dot types) and `xr` must cover as many elements and 32-blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn row_dot(ty: GgmlType, row: &[u8], xr: &XRow<'_>) -> f32 {
        let bb = ty.block_bytes();
        let nb = row.len() / bb;
        let n32 = nb * ty.block_elems() / QK;
        assert!(xr.q.len() >= n32 * QK && xr.d.len() >= n32 && xr.sums.len() >= n32);
        let (w, q, xd, sums) = (row.as_ptr(), xr.q.as_ptr(), xr.d.as_ptr(), xr.sums.as_ptr());
        // Two accumulators (even and odd blocks) so one block's FMA need not wait for the
        // previous block's.
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut offset = [0f32; 2];
        match ty {
            GgmlType::Q4_0 => {
                // (q − 8)·d: the −8 goes through the block sum of x.
                for b in 0..nb {
                    let blk = w.add(b * bb);
                    let d = f16_at(blk);
                    let p = dot_nibbles(blk.add(2), q.add(b * QK));
                    acc[b & 1] = _mm256_fmadd_ps(_mm256_set1_ps(d * *xd.add(b)), p, acc[b & 1]);
                    offset[b & 1] -= 8.0 * d * *sums.add(b);
                }
            }
            GgmlType::Q4_1 => {
                for b in 0..nb {
                    let blk = w.add(b * bb);
                    let p = dot_nibbles(blk.add(4), q.add(b * QK));
                    acc[b & 1] =
                        _mm256_fmadd_ps(_mm256_set1_ps(f16_at(blk) * *xd.add(b)), p, acc[b & 1]);
                    offset[b & 1] += f16_at(blk.add(2)) * *sums.add(b);
                }
            }
            GgmlType::Q8_0 => {
                for b in 0..nb {
                    let blk = w.add(b * bb);
                    let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(2) as *const __m128i));
                    let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(18) as *const __m128i));
                    let xq = q.add(b * QK);
                    let p = _mm256_cvtepi32_ps(_mm256_add_epi32(
                        madd16(w0, xq),
                        madd16(w1, xq.add(16)),
                    ));
                    acc[b & 1] =
                        _mm256_fmadd_ps(_mm256_set1_ps(f16_at(blk) * *xd.add(b)), p, acc[b & 1]);
                }
            }
            GgmlType::Q4_K => {
                let m = _mm_set1_epi8(0x0F);
                for sb in 0..nb {
                    let blk = w.add(sb * bb);
                    let (d, dmin) = (f16_at(blk), f16_at(blk.add(2)));
                    let scales = std::slice::from_raw_parts(blk.add(4), 12);
                    for chunk in 0..4 {
                        let qs = blk.add(16 + 32 * chunk);
                        let v0 = _mm_loadu_si128(qs as *const __m128i);
                        let v1 = _mm_loadu_si128(qs.add(16) as *const __m128i);
                        for half in 0..2 {
                            let (a, c) = if half == 0 {
                                (_mm_and_si128(v0, m), _mm_and_si128(v1, m))
                            } else {
                                (
                                    _mm_and_si128(_mm_srli_epi16(v0, 4), m),
                                    _mm_and_si128(_mm_srli_epi16(v1, 4), m),
                                )
                            };
                            let sub = 2 * chunk + half;
                            let (sc, mn) = q4_k_scale_min(scales, sub);
                            let b = sb * (QK_K / QK) + sub;
                            let xq = q.add(b * QK);
                            let p = _mm256_add_epi32(
                                madd16(_mm256_cvtepu8_epi16(a), xq),
                                madd16(_mm256_cvtepu8_epi16(c), xq.add(16)),
                            );
                            let s = d * sc as f32 * *xd.add(b);
                            acc[half] = _mm256_fmadd_ps(
                                _mm256_set1_ps(s),
                                _mm256_cvtepi32_ps(p),
                                acc[half],
                            );
                            offset[half] -= dmin * mn as f32 * *sums.add(b);
                        }
                    }
                }
            }
            GgmlType::Q6_K => {
                let (m4, m3, thirty_two) = (
                    _mm256_set1_epi8(0x0F),
                    _mm256_set1_epi8(3),
                    _mm256_set1_epi8(32),
                );
                for sb in 0..nb {
                    let blk = w.add(sb * bb);
                    let d = f16_at(blk.add(208));
                    for half in 0..2 {
                        let ql0 = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
                        let ql1 = _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
                        let qh = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
                        let high = |h: __m256i| _mm256_slli_epi16(_mm256_and_si256(h, m3), 4);
                        let groups = [
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), high(qh)),
                            _mm256_or_si256(
                                _mm256_and_si256(ql1, m4),
                                high(_mm256_srli_epi16(qh, 2)),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                high(_mm256_srli_epi16(qh, 4)),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                high(_mm256_srli_epi16(qh, 6)),
                            ),
                        ];
                        for (kq, g) in groups.into_iter().enumerate() {
                            // Element l of group kq sits at 128·half + 32·kq + l: one activation
                            // block, whose two 16-element halves have their own scales.
                            let qs = _mm256_sub_epi8(g, thirty_two);
                            let b = sb * (QK_K / QK) + half * 4 + kq;
                            let xq = q.add(b * QK);
                            let lo = madd16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(qs)), xq);
                            let hi = madd16(
                                _mm256_cvtepi8_epi16(_mm256_extracti128_si256(qs, 1)),
                                xq.add(16),
                            );
                            let sc = half * 8 + 2 * kq;
                            let dx = d * *xd.add(b);
                            let s0 = dx * *blk.add(192 + sc) as i8 as f32;
                            let s1 = dx * *blk.add(192 + sc + 1) as i8 as f32;
                            acc[0] =
                                _mm256_fmadd_ps(_mm256_set1_ps(s0), _mm256_cvtepi32_ps(lo), acc[0]);
                            acc[1] =
                                _mm256_fmadd_ps(_mm256_set1_ps(s1), _mm256_cvtepi32_ps(hi), acc[1]);
                        }
                    }
                }
            }
            _ => return super::row_dot_portable(ty, row, xr),
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) + offset[0] + offset[1]
    }
}

/// AVX-512 kernels for the classic 32-element formats, which are what small models decode
/// through (SmolLM2's Q4_1 layers and Q8_0 head). One 512-bit register holds a whole block
/// widened to i16, so a block is one `madd`; and the per-block f16 scales, which the AVX2
/// kernel converts one at a time in scalar code, are converted 16 blocks at once. The
/// integer block sums are the same as the AVX2 kernel's, only the f32 accumulation order
/// differs.
#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use std::arch::x86_64::*;

    use super::XRow;
    use bora_formats::quant::{GgmlType, QK};

    /// True when [`rows_dot`] may run for `ty`.
    pub(super) fn usable(ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("f16c")
            && std::is_x86_feature_detected!("fma")
    }

    /// Blocks of 32 whose scales are converted together: one register of f32.
    const GROUP: usize = 16;

    /// Widens the 32 nibbles at `qs` (low nibbles are elements 0..16) to i16.
    #[inline(always)]
    unsafe fn nibbles_i16(qs: *const u8) -> __m512i {
        let v = _mm_loadu_si128(qs as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(v, m);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
        _mm512_cvtepu8_epi16(_mm256_set_m128i(hi, lo))
    }

    /// One row: `Σ_b s_b·Σ w·xq + Σ_b mins_b·sums_b`, with `s_b = d_b·xd_b` and `mins_b`
    /// the block's additive term (`m` for Q4_1, `−8·d` for Q4_0, none for Q8_0).
    #[inline(always)]
    unsafe fn row(ty: GgmlType, bb: usize, w: *const u8, nb: usize, xr: &XRow<'_>) -> f32 {
        let (q, xd, sums) = (xr.q.as_ptr(), xr.d.as_ptr(), xr.sums.as_ptr());
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut off = _mm512_setzero_ps();
        let offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(bb as i32),
        );
        let mut b0 = 0;
        while b0 < nb {
            let cnt = (nb - b0).min(GROUP);
            let mask: __mmask16 = if cnt == GROUP { !0 } else { (1 << cnt) - 1 };
            // The two f16 words at the start of each block (d, then m for Q4_1), gathered
            // straight into a register: assembling them in a stack array and loading that
            // stalls on store forwarding.
            let words = _mm512_mask_i32gather_epi32::<1>(
                _mm512_setzero_si512(),
                mask,
                offsets,
                w.add(b0 * bb) as *const i32,
            );
            let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words));
            let scale = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(mask, xd.add(b0)));
            let bsum = _mm512_maskz_loadu_ps(mask, sums.add(b0));
            match ty {
                GgmlType::Q4_1 => {
                    let m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(words, 16)));
                    off = _mm512_fmadd_ps(m, bsum, off);
                }
                GgmlType::Q4_0 => {
                    off = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(-8.0)), bsum, off);
                }
                _ => {}
            }
            let block = |i: usize| {
                let b = b0 + i;
                let blk = w.add(b * bb);
                let wq = match ty {
                    GgmlType::Q4_0 => nibbles_i16(blk.add(2)),
                    GgmlType::Q4_1 => nibbles_i16(blk.add(4)),
                    _ => _mm512_cvtepi8_epi16(_mm256_loadu_si256(blk.add(2) as *const __m256i)),
                };
                let xq = _mm512_loadu_si512(q.add(b * QK) as *const __m512i);
                // Lane i of the 16 scales, broadcast without leaving the registers.
                (
                    _mm512_permutexvar_ps(_mm512_set1_epi32(i as i32), scale),
                    _mm512_cvtepi32_ps(_mm512_madd_epi16(wq, xq)),
                )
            };
            let mut i = 0;
            if matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1) {
                // Two blocks per register: their 2×16 nibble bytes widened at once, low
                // nibbles masked and high ones shifted down in place, dotted with the
                // interleaved activations; lanes 0..8 then hold block i, 8..16 block i+1.
                let qoff = if ty == GgmlType::Q4_1 { 4 } else { 2 };
                let m4 = _mm512_set1_epi16(0x0F);
                let mut idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
                let two = _mm512_set1_epi32(2);
                while i + 1 < cnt {
                    let b = b0 + i;
                    let qa = _mm_loadu_si128(w.add(b * bb + qoff) as *const __m128i);
                    let qb = _mm_loadu_si128(w.add((b + 1) * bb + qoff) as *const __m128i);
                    let v = _mm512_cvtepu8_epi16(_mm256_set_m128i(qb, qa));
                    let xp = xr.pairs.as_ptr().add(b * QK);
                    let lo = _mm512_madd_epi16(
                        _mm512_and_si512(v, m4),
                        _mm512_loadu_si512(xp as *const __m512i),
                    );
                    let hi = _mm512_madd_epi16(
                        _mm512_srli_epi16(v, 4),
                        _mm512_loadu_si512(xp.add(QK) as *const __m512i),
                    );
                    let p = _mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi));
                    let s = _mm512_permutexvar_ps(idx, scale);
                    if i & 2 == 0 {
                        acc0 = _mm512_fmadd_ps(s, p, acc0);
                    } else {
                        acc1 = _mm512_fmadd_ps(s, p, acc1);
                    }
                    idx = _mm512_add_epi32(idx, two);
                    i += 2;
                }
            }
            // Even and odd blocks go to separate accumulators (held in registers, not an
            // indexed array, which would chain every FMA through a store and a load), so one
            // block's FMA need not wait for the previous block's.
            while i + 1 < cnt {
                let (s0, p0) = block(i);
                let (s1, p1) = block(i + 1);
                acc0 = _mm512_fmadd_ps(s0, p0, acc0);
                acc1 = _mm512_fmadd_ps(s1, p1, acc1);
                i += 2;
            }
            if i < cnt {
                let (s0, p0) = block(i);
                acc0 = _mm512_fmadd_ps(s0, p0, acc0);
            }
            b0 += cnt;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), off))
    }

    /// # Safety
    /// The CPU must pass [`usable`] for `ty`; `rows` must hold `out.len()` rows of
    /// `row_bytes` bytes of whole `ty` blocks, and `xr` must cover as many 32-blocks.
    #[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
    pub(super) unsafe fn rows_dot(
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        xr: &XRow<'_>,
        out: &mut [f32],
        accumulate: bool,
    ) {
        let bb = ty.block_bytes();
        let nb = row_bytes / bb;
        assert!(rows.len() >= out.len() * row_bytes);
        assert!(xr.q.len() >= nb * QK && xr.pairs.len() >= nb * QK);
        assert!(xr.d.len() >= nb && xr.sums.len() >= nb);
        let w = rows.as_ptr();
        macro_rules! each_row {
            ($ty:expr) => {
                for (j, o) in out.iter_mut().enumerate() {
                    let v = row($ty, bb, w.add(j * row_bytes), nb, xr);
                    *o = if accumulate { *o + v } else { v };
                }
            };
        }
        // One loop per type, so the type tests inside `row` fold away.
        match ty {
            GgmlType::Q4_0 => each_row!(GgmlType::Q4_0),
            GgmlType::Q4_1 => each_row!(GgmlType::Q4_1),
            _ => each_row!(GgmlType::Q8_0),
        }
    }
}

/// The 6-bit (scale, min) of sub-block `j` of a Q4_K super-block's packed `scales[12]`.
#[inline(always)]
fn q4_k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Dot of one quantized weight row with an f32 activation row; `ty` must satisfy
/// [`has_dot_kernel`].
pub(crate) fn row_dot(ty: GgmlType, row: &[u8], xr: &XRow<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() && std::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above); callers pass
        // whole blocks and an activation row of the matching length.
        return unsafe { x86::row_dot(ty, row, xr) };
    }
    row_dot_portable(ty, row, xr)
}

/// Dots `out.len()` consecutive weight rows (`row_bytes` each, starting at `rows`) with one
/// activation row, writing (or, with `accumulate`, adding) one value per row. A matrix-vector
/// product calls this once per run of rows, so the type dispatch, the feature probe and the
/// bounds checks are paid per run rather than per row.
pub(crate) fn rows_dot(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    xr: &XRow<'_>,
    out: &mut [f32],
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if x86_512::usable(ty) {
        // SAFETY: the CPU features were probed just above; `rows` holds whole blocks of
        // `ty` for every output row and `xr` matches their length (asserted inside).
        return unsafe { x86_512::rows_dot(ty, rows, row_bytes, xr, out, accumulate) };
    }
    for (j, o) in out.iter_mut().enumerate() {
        let v = row_dot(ty, &rows[j * row_bytes..(j + 1) * row_bytes], xr);
        *o = if accumulate { *o + v } else { v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{quant_bytes, rand_vec};
    use bora_formats::quant::dequantize;

    /// The dispatched kernel (AVX2 on x86-64: 16-bit activations) and the portable one
    /// (exact f32) against dequantize + an f64 dot.
    #[test]
    fn dispatched_and_portable_dots_match_the_dequantized_reference() {
        // 24 and 25 blocks of 32: a full group of 16 scales and a part group, with and
        // without an unpaired last block; the K-quants need whole super-blocks of 256.
        for k in [768, 800] {
            check_dots(k);
        }
    }

    fn check_dots(k: usize) {
        // Blocks with an outlier, as in small models' activations, next to plain ones.
        let mut x = rand_vec(k, 1);
        x[5] = 40.0;
        x[300] = -25.0;
        let (mut q, mut pairs) = (vec![0i16; k], vec![0i16; k]);
        let (mut d, mut sums) = (vec![0f32; k / QK], vec![0f32; k / QK]);
        quantize_row(&x, &mut q, &mut pairs, &mut d, &mut sums);
        let xr = XRow {
            x: &x,
            q: &q,
            pairs: &pairs,
            d: &d,
            sums: &sums,
        };
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            if !k.is_multiple_of(ty.block_elems()) {
                continue;
            }
            for seed in 0..4 {
                let row = quant_bytes(ty, 1, k, 10 + seed);
                let mut w = vec![0f32; k];
                dequantize(ty, &row, &mut w).unwrap();
                let want: f64 = w.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                // 16-bit activations: each element off by at most half a step of its block.
                let bound: f64 = (0..k)
                    .map(|i| (w[i] as f64).abs() * d[i / QK] as f64 * 0.5)
                    .sum::<f64>()
                    + 1e-6
                        * w.iter()
                            .zip(&x)
                            .map(|(a, b)| (*a as f64 * *b as f64).abs())
                            .sum::<f64>();
                let fast = row_dot(ty, &row, &xr) as f64;
                let portable = row_dot_portable(ty, &row, &xr) as f64;
                assert!(
                    (fast - want).abs() <= bound,
                    "{ty}: {fast} vs {want} (bound {bound})"
                );
                // The run kernel (AVX-512 where available), alone and as the third of three
                // rows, written and accumulated.
                let mut rows = quant_bytes(ty, 2, k, 20 + seed);
                rows.extend_from_slice(&row);
                let rb = row.len();
                let mut out = [0f32; 3];
                rows_dot(ty, &row, rb, &xr, &mut out[..1], false);
                let alone = out[0] as f64;
                assert!(
                    (alone - want).abs() <= bound,
                    "{ty} run: {alone} vs {want} (bound {bound})"
                );
                out = [1.0; 3];
                rows_dot(ty, &rows, rb, &xr, &mut out, true);
                assert!(
                    (out[2] as f64 - 1.0 - want).abs() <= bound + 1e-6,
                    "{ty} run of 3: {} vs {want} (bound {bound})",
                    out[2] - 1.0
                );
                for j in 0..2 {
                    let single = row_dot(ty, &rows[j * rb..(j + 1) * rb], &xr);
                    assert!(
                        (out[j] - 1.0 - single).abs() <= 1e-4 * (1.0 + single.abs()),
                        "{ty} run row {j}"
                    );
                }
                assert!(
                    (portable - want).abs() <= 1e-6 * want.abs().max(1.0) * k as f64,
                    "{ty}: {portable} vs {want}"
                );
            }
        }
    }
}
