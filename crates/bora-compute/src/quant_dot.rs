//! Matrix-vector products straight from quantized blocks, for decoding.
//!
//! Generating one token multiplies every weight by a single activation row, so the cost is
//! reading the weights; dequantizing them to f32 first would triple the memory traffic. As
//! ggml does, the activation row is quantized once to 8-bit blocks of 32 (with one f32 scale
//! per block) and each weight block is dotted in integers; the block's scales (and, for
//! formats with a minimum, the activation block's sum) turn the integer sum back into f32.

use bora_formats::quant::{GgmlType, QK, QK_K};
use half::f16;

/// One activation row quantized to 8 bits per 32 elements: `qs[32·b..]` holds block `b`,
/// `d[b]` its scale and `s[b] = d[b]·Σ qs` (what the weight minimum multiplies).
pub(crate) struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// Quantizes `x` (a whole number of 32-blocks) into `qs`, `d`, `s`.
pub(crate) fn quantize_row_q8(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (((xb, qb), db), sb) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(d.iter_mut())
        .zip(s.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * inv).round() as i8;
            sum += *q as i32;
        }
        *db = scale;
        *sb = scale * sum as f32;
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
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

#[inline(always)]
fn isum<const N: usize>(a: &[i8], b: &[i8]) -> i32 {
    let (a, b) = (&a[..N], &b[..N]);
    let mut acc = 0i32;
    for i in 0..N {
        acc += a[i] as i32 * b[i] as i32;
    }
    acc
}

#[inline(always)]
fn unpack_nibbles(qs: &[u8], offset: i8) -> [i8; 32] {
    let mut out = [0i8; 32];
    for j in 0..16 {
        out[j] = (qs[j] & 0x0F) as i8 - offset;
        out[j + 16] = (qs[j] >> 4) as i8 - offset;
    }
    out
}

/// Dot of one quantized weight row (`row.len()` bytes of `ty`) with a Q8 activation row.
#[inline(always)]
fn row_dot_body(ty: GgmlType, row: &[u8], x: &Q8Row<'_>) -> f32 {
    let mut acc = 0f32;
    match ty {
        GgmlType::Q4_0 => {
            for (b, blk) in row.chunks_exact(18).enumerate() {
                let q = unpack_nibbles(&blk[2..], 8);
                acc += f16_at(blk, 0) * x.d[b] * isum::<32>(&q, &x.qs[b * QK..]) as f32;
            }
        }
        GgmlType::Q4_1 => {
            for (b, blk) in row.chunks_exact(20).enumerate() {
                let q = unpack_nibbles(&blk[4..], 0);
                acc += f16_at(blk, 0) * x.d[b] * isum::<32>(&q, &x.qs[b * QK..]) as f32
                    + f16_at(blk, 2) * x.s[b];
            }
        }
        GgmlType::Q8_0 => {
            for (b, blk) in row.chunks_exact(34).enumerate() {
                let mut q = [0i8; 32];
                for (o, &v) in q.iter_mut().zip(&blk[2..]) {
                    *o = v as i8;
                }
                acc += f16_at(blk, 0) * x.d[b] * isum::<32>(&q, &x.qs[b * QK..]) as f32;
            }
        }
        GgmlType::Q4_K => {
            for (sb, blk) in row.chunks_exact(144).enumerate() {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let scales = &blk[4..16];
                for (chunk, q32) in blk[16..].chunks_exact(32).enumerate() {
                    for (half, shift) in [(0usize, 0u8), (1, 4)] {
                        let sub = 2 * chunk + half;
                        let (sc, mn) = q4_k_scale_min(scales, sub);
                        let mut q = [0i8; 32];
                        for (o, &v) in q.iter_mut().zip(q32) {
                            *o = ((v >> shift) & 0x0F) as i8;
                        }
                        let b = sb * (QK_K / QK) + sub;
                        acc += d * sc as f32 * x.d[b] * isum::<32>(&q, &x.qs[b * QK..]) as f32
                            - dmin * mn as f32 * x.s[b];
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for (sb, blk) in row.chunks_exact(210).enumerate() {
                let (ql, rest) = blk.split_at(128);
                let (qh, rest) = rest.split_at(64);
                let (scales, dd) = rest.split_at(16);
                let d = f16_at(dd, 0);
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let mut q = [[0i8; 32]; 4];
                    for l in 0..32 {
                        q[0][l] = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
                        q[1][l] = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                        q[2][l] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                        q[3][l] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                    }
                    for (k, qk) in q.iter().enumerate() {
                        let b = sb * (QK_K / QK) + half * 4 + k;
                        let xq = &x.qs[b * QK..];
                        let sc = (half * 128 + 32 * k) / 16;
                        let s0 = scales[sc] as i8 as f32 * isum::<16>(qk, xq) as f32;
                        let s1 =
                            scales[sc + 1] as i8 as f32 * isum::<16>(&qk[16..], &xq[16..]) as f32;
                        acc += d * x.d[b] * (s0 + s1);
                    }
                }
            }
        }
        _ => unreachable!("row_dot called for {ty}, which has no integer dot kernel"),
    }
    acc
}

/// Hand-written AVX2 kernels, ggml's approach: unpack
/// a block to 32 bytes, `maddubs` it against the activation bytes (u8·i8 → i16 pairs),
/// widen to i32, and fold the block's combined scale in with one FMA. LLVM does not find
/// this sequence from the portable body, which was about 3× slower.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{row_dot_body, Q8Row};
    use bora_formats::quant::{GgmlType, QK, QK_K};

    #[inline(always)]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// The 32 nibbles of a Q4 block as bytes 0..16 (low nibbles) and 16..32 (high).
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let lo = _mm_loadu_si128(p as *const __m128i);
        let hi = _mm_srli_epi16(lo, 4);
        _mm256_and_si256(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(0x0F))
    }

    /// Σ u[i]·s[i] over 32 unsigned × signed bytes, as 8 f32 partial sums.
    #[inline(always)]
    unsafe fn dot_us(u: __m256i, s: __m256i) -> __m256 {
        let pairs = _mm256_maddubs_epi16(u, s);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `row` must be whole blocks of `ty` and `x`
    /// must cover as many 32-element blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn row_dot(ty: GgmlType, row: &[u8], x: &Q8Row<'_>) -> f32 {
        let bb = ty.block_bytes();
        let nb = row.len() / bb;
        let (qs, xd, xs) = (x.qs.as_ptr(), x.d.as_ptr(), x.s.as_ptr());
        assert!(x.qs.len() >= nb * QK && x.d.len() >= nb && x.s.len() >= nb);
        let w = row.as_ptr();
        // Two independent accumulators so consecutive blocks' FMAs do not wait on each
        // other's latency.
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut offset = [0f32; 2];
        match ty {
            GgmlType::Q4_0 => {
                // (q − 8)·d = q·d − 8d: the −8 moves into the activation-sum term.
                for b in 0..nb {
                    let blk = w.add(b * bb);
                    let d = f16_at(blk);
                    let xv = _mm256_loadu_si256(qs.add(b * QK) as *const __m256i);
                    let p = dot_us(nibbles(blk.add(2)), xv);
                    acc[b & 1] = _mm256_fmadd_ps(_mm256_set1_ps(d * *xd.add(b)), p, acc[b & 1]);
                    offset[b & 1] -= 8.0 * d * *xs.add(b);
                }
            }
            GgmlType::Q4_1 => {
                for b in 0..nb {
                    let blk = w.add(b * bb);
                    let xv = _mm256_loadu_si256(qs.add(b * QK) as *const __m256i);
                    let p = dot_us(nibbles(blk.add(4)), xv);
                    acc[b & 1] =
                        _mm256_fmadd_ps(_mm256_set1_ps(f16_at(blk) * *xd.add(b)), p, acc[b & 1]);
                    offset[b & 1] += f16_at(blk.add(2)) * *xs.add(b);
                }
            }
            GgmlType::Q8_0 => {
                for b in 0..nb {
                    let blk = w.add(b * bb);
                    let wv = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                    let xv = _mm256_loadu_si256(qs.add(b * QK) as *const __m256i);
                    // maddubs wants one unsigned operand: |w| times x carrying w's sign.
                    let p = dot_us(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
                    acc[b & 1] =
                        _mm256_fmadd_ps(_mm256_set1_ps(f16_at(blk) * *xd.add(b)), p, acc[b & 1]);
                }
            }
            GgmlType::Q4_K => {
                let mask = _mm256_set1_epi8(0x0F);
                for sb in 0..nb {
                    let blk = w.add(sb * bb);
                    let (d, dmin) = (f16_at(blk), f16_at(blk.add(2)));
                    let scales = std::slice::from_raw_parts(blk.add(4), 12);
                    for chunk in 0..4 {
                        let raw = _mm256_loadu_si256(blk.add(16 + 32 * chunk) as *const __m256i);
                        let halves = [
                            _mm256_and_si256(raw, mask),
                            _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask),
                        ];
                        for (half, q) in halves.into_iter().enumerate() {
                            let sub = 2 * chunk + half;
                            let (sc, mn) = super::q4_k_scale_min(scales, sub);
                            let b = sb * (QK_K / QK) + sub;
                            let xv = _mm256_loadu_si256(qs.add(b * QK) as *const __m256i);
                            let p = dot_us(q, xv);
                            acc[half] = _mm256_fmadd_ps(
                                _mm256_set1_ps(d * sc as f32 * *xd.add(b)),
                                p,
                                acc[half],
                            );
                            offset[half] -= dmin * mn as f32 * *xs.add(b);
                        }
                    }
                }
            }
            GgmlType::Q6_K => {
                // Six-bit quants are unsigned 0..63 here; the −32 is applied as a second
                // dot of the activation with 32s, per 16-element scale group.
                let (m4, m3, ones) = (
                    _mm256_set1_epi8(0x0F),
                    _mm256_set1_epi8(3),
                    _mm256_set1_epi16(1),
                );
                let thirty_two = _mm256_set1_epi8(32);
                for sb in 0..nb {
                    let blk = w.add(sb * bb);
                    let d = f16_at(blk.add(208));
                    for half in 0..2 {
                        let ql0 = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
                        let ql1 = _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
                        let qh = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
                        let high = |shift: i32| {
                            let h = match shift {
                                0 => qh,
                                2 => _mm256_srli_epi16(qh, 2),
                                4 => _mm256_srli_epi16(qh, 4),
                                _ => _mm256_srli_epi16(qh, 6),
                            };
                            _mm256_slli_epi16(_mm256_and_si256(h, m3), 4)
                        };
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
                            _mm256_or_si256(_mm256_and_si256(ql1, m4), high(2)),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                high(4),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                high(6),
                            ),
                        ];
                        for (kq, qk) in q.into_iter().enumerate() {
                            let b = sb * (QK_K / QK) + half * 4 + kq;
                            let xv = _mm256_loadu_si256(qs.add(b * QK) as *const __m256i);
                            let dq = _mm256_madd_epi16(_mm256_maddubs_epi16(qk, xv), ones);
                            let d32 = _mm256_madd_epi16(_mm256_maddubs_epi16(thirty_two, xv), ones);
                            // Lanes 0..4 hold elements 0..16, lanes 4..8 elements 16..32.
                            let sc = half * 8 + 2 * kq;
                            let s0 = *blk.add(192 + sc) as i8 as i32;
                            let s1 = *blk.add(192 + sc + 1) as i8 as i32;
                            let scv = _mm256_set_m128i(_mm_set1_epi32(s1), _mm_set1_epi32(s0));
                            let sum = _mm256_mullo_epi32(_mm256_sub_epi32(dq, d32), scv);
                            acc[kq & 1] = _mm256_fmadd_ps(
                                _mm256_set1_ps(d * *xd.add(b)),
                                _mm256_cvtepi32_ps(sum),
                                acc[kq & 1],
                            );
                        }
                    }
                }
            }
            _ => return row_dot_body(ty, row, x),
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) + offset[0] + offset[1]
    }
}

/// True for the types [`row_dot`] handles.
pub(crate) fn has_dot_kernel(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K
    )
}

/// Dot of one quantized weight row with a Q8 activation row; `ty` must satisfy
/// [`has_dot_kernel`].
pub(crate) fn row_dot(ty: GgmlType, row: &[u8], x: &Q8Row<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx2() && std::is_x86_feature_detected!("f16c") {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above); callers pass
        // whole blocks and an activation row of the matching length.
        return unsafe { x86::row_dot(ty, row, x) };
    }
    row_dot_body(ty, row, x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::quant_bytes;
    use crate::testutil::rand_vec;
    use bora_formats::quant::dequantize;

    /// The dispatched kernel (AVX2 on x86-64) against the portable one and against
    /// dequantize + f64 dot on the dequantized activation.
    #[test]
    fn dispatched_dot_matches_portable_dot_and_dequantized_reference() {
        let k = 512;
        let x = rand_vec(k, 1);
        let (mut qs, mut d, mut s) = (vec![0i8; k], vec![0f32; k / QK], vec![0f32; k / QK]);
        quantize_row_q8(&x, &mut qs, &mut d, &mut s);
        let xq = Q8Row {
            qs: &qs,
            d: &d,
            s: &s,
        };
        let xdeq: Vec<f64> = (0..k).map(|i| qs[i] as f64 * d[i / QK] as f64).collect();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            for seed in 0..4 {
                let row = quant_bytes(ty, 1, k, 10 + seed);
                let mut w = vec![0f32; k];
                dequantize(ty, &row, &mut w).unwrap();
                let want: f64 = w.iter().zip(&xdeq).map(|(a, b)| *a as f64 * b).sum();
                let mag: f64 = w
                    .iter()
                    .zip(&xdeq)
                    .map(|(a, b)| (*a as f64 * b).abs())
                    .sum();
                let fast = row_dot(ty, &row, &xq) as f64;
                let portable = row_dot_body(ty, &row, &xq) as f64;
                assert!((fast - want).abs() <= 1e-5 * mag, "{ty}: {fast} vs {want}");
                assert!(
                    (portable - want).abs() <= 1e-5 * mag,
                    "{ty}: {portable} vs {want}"
                );
            }
        }
    }
}
