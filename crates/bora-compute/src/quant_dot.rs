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
                        let (sc, mn) = if sub < 4 {
                            (scales[sub] & 63, scales[sub + 4] & 63)
                        } else {
                            (
                                (scales[sub + 4] & 0x0F) | ((scales[sub - 4] >> 6) << 4),
                                (scales[sub + 4] >> 4) | ((scales[sub] >> 6) << 4),
                            )
                        };
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_dot_avx2(ty: GgmlType, row: &[u8], x: &Q8Row<'_>) -> f32 {
    row_dot_body(ty, row, x)
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
    if crate::simd::has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { row_dot_avx2(ty, row, x) };
    }
    row_dot_body(ty, row, x)
}
