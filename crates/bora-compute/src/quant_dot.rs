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
//!
//! A decode step of several sequences multiplies each weight by several activation rows.
//! Widening a block's quants and converting its scales is about half of a one-row product's
//! instructions, so [`rows_dot`] does that once per block and applies the result to every
//! activation row (up to [`MAX_ROWS_512`] or [`MAX_ROWS_AVX2`] at a time, as many as the
//! registers hold). Each row's arithmetic is the same whatever the number of rows beside
//! it, so a sequence decoded alone or in a batch gets bit-identical logits.
//!
//! These kernels read weights in GGUF's row-major layout. Weights loaded to generate are
//! rearranged for the faster kernel of `quant_tiles`, which takes the activation rows
//! [`quantize_row`] makes here.

use bora_formats::quant::{
    dequantize_block_q4_0, dequantize_block_q4_1, dequantize_block_q4_k, dequantize_block_q6_k,
    dequantize_block_q8_0, GgmlType, QK,
};

use crate::simd::dot;
use crate::CpuPath;

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
    quantize_row_on(crate::cpu_path(), x, q, pairs, d, sums)
}

/// [`quantize_row`] on the kernels of `path`, which the CPU must support.
pub(crate) fn quantize_row_on(
    path: CpuPath,
    x: &[f32],
    q: &mut [i16],
    pairs: &mut [i16],
    d: &mut [f32],
    sums: &mut [f32],
) {
    assert!(path.supported(), "kernel path {path} on a CPU without it");
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the path's features (asserted above).
        CpuPath::Avx512 => unsafe { quantize_blocks_512(x, q, d, sums) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        CpuPath::Avx2 => unsafe { quantize_blocks_avx2(x, q, d, sums) },
        _ => quantize_blocks(x, q, d, sums),
    }
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

/// The per-block part of [`quantize_row`]. The maximum and the sum run over 8 lanes, then
/// across them, an order LLVM keeps in vector registers: the plain left-to-right sum was a
/// chain of 32 dependent adds per block, a tenth of a batched decode step.
#[inline(always)]
fn quantize_blocks(x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) {
    const L: usize = 8;
    for (((xb, qb), db), sb) in x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(QK))
        .zip(d.iter_mut())
        .zip(sums.iter_mut())
    {
        let (mut max, mut sum) = ([0f32; L], [0f32; L]);
        for part in xb.chunks_exact(L) {
            for i in 0..L {
                max[i] = max[i].max(part[i].abs());
                sum[i] += part[i];
            }
        }
        let amax = max.iter().fold(0f32, |a, &v| a.max(v));
        let scale = amax / 32767.0;
        let inv = if scale == 0.0 { 0.0 } else { 1.0 / scale };
        for (o, v) in qb.iter_mut().zip(xb) {
            *o = (v * inv).round() as i16;
        }
        *db = scale;
        *sb = ((sum[0] + sum[4]) + (sum[1] + sum[5])) + ((sum[2] + sum[6]) + (sum[3] + sum[7]));
    }
}

/// [`quantize_blocks`] in AVX2 intrinsics, a block per four registers: compiled from the
/// scalar loop, `round` and the conversion to i16 came out element by element. Rounds half
/// to even and saturates, as the AVX-512 version does.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_blocks_avx2(x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) {
    // SAFETY: the caller guarantees AVX2 and FMA; loads and stores cover whole blocks of QK
    // elements taken by `chunks_exact`.
    unsafe {
        use std::arch::x86_64::*;
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        for (((xb, qb), db), sb) in x
            .chunks_exact(QK)
            .zip(q.chunks_exact_mut(QK))
            .zip(d.iter_mut())
            .zip(sums.iter_mut())
        {
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
                _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
            let scale = amax / 32767.0;
            let inv = _mm256_set1_ps(if scale == 0.0 { 0.0 } else { 1.0 / scale });
            let i: [__m256i; 4] =
                std::array::from_fn(|k| _mm256_cvtps_epi32(_mm256_mul_ps(v[k], inv)));
            // `packs` works within 128-bit lanes; the permute puts the halves back in order.
            let order = |p: __m256i| _mm256_permute4x64_epi64::<0b11_01_10_00>(p);
            _mm256_storeu_si256(
                qb.as_mut_ptr() as *mut __m256i,
                order(_mm256_packs_epi32(i[0], i[1])),
            );
            _mm256_storeu_si256(
                qb.as_mut_ptr().add(16) as *mut __m256i,
                order(_mm256_packs_epi32(i[2], i[3])),
            );
            *db = scale;
            let s = _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3]));
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            *sb = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
        }
    }
}

/// [`quantize_blocks`] in AVX-512 intrinsics, a block per pair of registers: compiled from
/// the scalar loop, the conversion to i16 (saturating, NaN to 0) came out element by
/// element, a tenth of a batched decode step. Rounds half to even where the scalar loop
/// rounds half away from zero, so ties quantize differently on other CPUs; on one machine
/// every row goes the same way.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_blocks_512(x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) {
    // SAFETY: the caller guarantees AVX-512F; loads and stores cover whole blocks of QK elements
    // taken by `chunks_exact`.
    unsafe {
        use std::arch::x86_64::*;
        for (((xb, qb), db), sb) in x
            .chunks_exact(QK)
            .zip(q.chunks_exact_mut(QK))
            .zip(d.iter_mut())
            .zip(sums.iter_mut())
        {
            let (a, b) = (
                _mm512_loadu_ps(xb.as_ptr()),
                _mm512_loadu_ps(xb.as_ptr().add(16)),
            );
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
            let scale = amax / 32767.0;
            let inv = _mm512_set1_ps(if scale == 0.0 { 0.0 } else { 1.0 / scale });
            let to_i16 = |v: __m512| {
                _mm512_cvtsepi32_epi16(_mm512_cvt_roundps_epi32::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(_mm512_mul_ps(v, inv)))
            };
            _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, to_i16(a));
            _mm256_storeu_si256(qb.as_mut_ptr().add(16) as *mut __m256i, to_i16(b));
            *db = scale;
            *sb = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
        }
    }
}

/// True for the types [`rows_dot`] handles.
pub(crate) fn has_dot_kernel(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K
    )
}

/// Activation rows the AVX-512 kernel takes at once: per row two accumulators and a
/// register of block scales. Widening a pair of Q4 blocks costs about as much as one row's
/// products with it, so most of the gain is had by 4 rows, and past 4 the registers run out
/// (8 rows spilled and ran 1.4× slower per row than 4).
const MAX_ROWS_512: usize = 4;

/// Activation rows the AVX2 kernel takes at once: two accumulators per row, 8 of the 16
/// vector registers at 4 rows.
const MAX_ROWS_AVX2: usize = 4;

/// Rows the portable kernel accumulates at once (a stack array per weight row).
const MAX_ROWS_PORTABLE: usize = 8;

/// Writes (or, with `accumulate`, adds) one weight row's dots with a chunk of activation
/// rows into their slots of `out`.
#[inline(always)]
fn store(out: &mut [f32], vals: &[f32], accumulate: bool) {
    for (o, v) in out.iter_mut().zip(vals) {
        *o = if accumulate { *o + v } else { *v };
    }
}

/// Portable kernel: decode each weight block once with bora-formats' decoder, then an f32
/// dot with each activation row's exact values.
fn rows_dot_portable(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    xs: &[XRow<'_>],
    out: &mut [f32],
    accumulate: bool,
) {
    fn run<const B: usize, const E: usize>(
        rows: &[u8],
        row_bytes: usize,
        xs: &[XRow<'_>],
        out: &mut [f32],
        accumulate: bool,
        decode: fn(&[u8; B], &mut [f32; E]),
    ) {
        let mut w = [0f32; E];
        let m = xs.len();
        for (c, xc) in xs.chunks(MAX_ROWS_PORTABLE).enumerate() {
            let r0 = c * MAX_ROWS_PORTABLE;
            for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(m)) {
                let mut acc = [0f32; MAX_ROWS_PORTABLE];
                for (b, blk) in row.chunks_exact(B).enumerate() {
                    if let Ok(blk) = <&[u8; B]>::try_from(blk) {
                        decode(blk, &mut w);
                        for (a, xr) in acc.iter_mut().zip(xc) {
                            *a += dot(&w, &xr.x[b * E..(b + 1) * E]);
                        }
                    }
                }
                store(&mut o[r0..r0 + xc.len()], &acc, accumulate);
            }
        }
    }
    match ty {
        GgmlType::Q4_0 => run(rows, row_bytes, xs, out, accumulate, dequantize_block_q4_0),
        GgmlType::Q4_1 => run(rows, row_bytes, xs, out, accumulate, dequantize_block_q4_1),
        GgmlType::Q8_0 => run(rows, row_bytes, xs, out, accumulate, dequantize_block_q8_0),
        GgmlType::Q4_K => run(rows, row_bytes, xs, out, accumulate, dequantize_block_q4_k),
        GgmlType::Q6_K => run(rows, row_bytes, xs, out, accumulate, dequantize_block_q6_k),
        _ => unreachable!("rows_dot called for {ty}, which has no dot kernel"),
    }
}

/// Type codes for the kernels' const parameter, so each type's loop is compiled on its own
/// and the type tests inside fold away.
#[cfg(target_arch = "x86_64")]
const T_Q4_0: u8 = 0;
#[cfg(target_arch = "x86_64")]
const T_Q4_1: u8 = 1;
#[cfg(target_arch = "x86_64")]
const T_Q8_0: u8 = 2;

/// Runs `$kernel!(R, w, nb, bb, chunk)` (a macro calling a kernel for `R` activation rows
/// on weight row `w` of `nb` blocks of `bb` bytes, returning `[f32; R]`) for every chunk of
/// at most `$max` activation rows and every weight row of `$rows`, with `R` the chunk's
/// length, and stores the results. Chunks are the outer loop: a chunk's activations (a few
/// KiB) then stay in L1 while the run of weight rows streams past; the other way round, 32
/// rows of 1536 activations (96 KiB) were fetched from L2 for every weight row and the
/// product ran 2× slower per row. Expanded inside each `#[target_feature]` function so the
/// kernels inline there.
#[cfg(target_arch = "x86_64")]
macro_rules! each_row_and_chunk {
    ($kernel:ident, $max:expr, $rows:expr, $row_bytes:expr, $bb:expr, $xs:expr, $out:expr,
     $accumulate:expr, [$($r:literal)*]) => {{
        let (nb, m) = ($row_bytes / $bb, $xs.len());
        for (c, xc) in $xs.chunks($max).enumerate() {
            let r0 = c * $max;
            for (j, o) in $out.chunks_exact_mut(m).enumerate() {
                let w = $rows.as_ptr().add(j * $row_bytes);
                let oc = &mut o[r0..r0 + xc.len()];
                match xc.len() {
                    $($r => store(oc, &$kernel!($r, w, nb, $bb, xc), $accumulate),)*
                    _ => unreachable!("chunks of at most {} rows", $max),
                }
            }
        }
    }};
}

/// Hand-written AVX2 kernels: widen a block's quants to i16 in registers, `madd` them with
/// the 16-bit activations (i16 pairs → i32), convert to f32, and apply the block's combined
/// scale with one FMA; the minimum goes through the activation block sums.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{q4_k_scale_min, store, XRow, MAX_ROWS_AVX2, T_Q4_0, T_Q4_1, T_Q8_0};
    use bora_formats::quant::{GgmlType, QK, QK_K};

    #[inline(always)]
    unsafe fn f16_at(p: *const u8) -> f32 {
        // SAFETY: `p` is valid for two bytes (caller's contract) and the caller's target features
        // include F16C.
        unsafe {
            let bits = u16::from_le_bytes([*p, *p.add(1)]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }
    }

    /// Σ w[i]·x[i] over 16 quants already widened to i16 and 16 activations at `x`, as 8
    /// i32 partial sums.
    #[inline(always)]
    unsafe fn madd16(w: __m256i, x: *const i16) -> __m256i {
        // SAFETY: `x` is valid for 16 i16 (caller's contract).
        unsafe { _mm256_madd_epi16(w, _mm256_loadu_si256(x as *const __m256i)) }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register operations only, of AVX, which the caller's target features provide.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// One weight row of a classic 32-element type against `R` activation rows: each block's
    /// quants are widened (two registers of i16) once and `madd`ed with every row. Per row,
    /// even and odd blocks go to separate accumulators so one block's FMA need not wait for
    /// the previous block's.
    #[inline(always)]
    unsafe fn dot_row<const T: u8, const R: usize>(
        w: *const u8,
        nb: usize,
        bb: usize,
        xs: &[XRow<'_>],
    ) -> [f32; R] {
        // SAFETY: `w` points at `nb` blocks of type `T` of `bb` bytes, and each activation row at
        // `nb` blocks' quants (caller's contract).
        unsafe {
            let q: [*const i16; R] = std::array::from_fn(|r| xs[r].q.as_ptr());
            let xd: [*const f32; R] = std::array::from_fn(|r| xs[r].d.as_ptr());
            let sums: [*const f32; R] = std::array::from_fn(|r| xs[r].sums.as_ptr());
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let mut offset = [[0f32; 2]; R];
            let m4 = _mm_set1_epi8(0x0F);
            for b in 0..nb {
                let blk = w.add(b * bb);
                let d = f16_at(blk);
                let (lo, hi) = if T == T_Q8_0 {
                    (
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(2) as *const __m128i)),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(18) as *const __m128i)),
                    )
                } else {
                    let qs = blk.add(if T == T_Q4_1 { 4 } else { 2 });
                    let v = _mm_loadu_si128(qs as *const __m128i);
                    (
                        _mm256_cvtepu8_epi16(_mm_and_si128(v, m4)),
                        _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), m4)),
                    )
                };
                // The block's additive term: `m` for Q4_1, `−8·d` for Q4_0 (quants are stored
                // +8), through the activation block sum.
                let min = match T {
                    T_Q4_1 => f16_at(blk.add(2)),
                    T_Q4_0 => -8.0 * d,
                    _ => 0.0,
                };
                for r in 0..R {
                    let xq = q[r].add(b * QK);
                    let p = _mm256_cvtepi32_ps(_mm256_add_epi32(
                        madd16(lo, xq),
                        madd16(hi, xq.add(16)),
                    ));
                    let s = _mm256_set1_ps(d * *xd[r].add(b));
                    acc[r][b & 1] = _mm256_fmadd_ps(s, p, acc[r][b & 1]);
                    if T != T_Q8_0 {
                        offset[r][b & 1] += min * *sums[r].add(b);
                    }
                }
            }
            std::array::from_fn(|r| {
                hsum(_mm256_add_ps(acc[r][0], acc[r][1])) + offset[r][0] + offset[r][1]
            })
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `rows` must hold `out.len() / xs.len()`
    /// rows of `row_bytes` bytes of whole `ty` blocks (one of the five dot types), and every
    /// row of `xs` must cover as many elements and 32-blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows_dot(
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        xs: &[XRow<'_>],
        out: &mut [f32],
        accumulate: bool,
    ) {
        // SAFETY: the caller guarantees AVX2, FMA and F16C; `rows` holds `out.len()` rows of
        // `row_bytes` bytes and each activation row covers them (function contract), so every block
        // pointer below stays inside.
        unsafe {
            let bb = ty.block_bytes();
            macro_rules! classic {
            ($t:ident) => {{
                macro_rules! kernel {
                    ($r:literal, $w:ident, $nb:ident, $bb:expr, $xc:ident) => {
                        dot_row::<$t, $r>($w, $nb, $bb, $xc)
                    };
                }
                each_row_and_chunk!(
                    kernel,
                    MAX_ROWS_AVX2,
                    rows,
                    row_bytes,
                    bb,
                    xs,
                    out,
                    accumulate,
                    [1 2 3 4]
                )
            }};
        }
            match ty {
                GgmlType::Q4_0 => classic!(T_Q4_0),
                GgmlType::Q4_1 => classic!(T_Q4_1),
                GgmlType::Q8_0 => classic!(T_Q8_0),
                _ => {
                    // K-quants: super-blocks of 256 with packed sub-block scales, one row at a time.
                    for (row, o) in rows
                        .chunks_exact(row_bytes)
                        .zip(out.chunks_exact_mut(xs.len()))
                    {
                        for (xr, o) in xs.iter().zip(o) {
                            let v = row_dot_k(ty, row, xr);
                            *o = if accumulate { *o + v } else { v };
                        }
                    }
                }
            }
        }
    }

    /// One K-quant weight row against one activation row.
    ///
    /// # Safety
    /// As [`rows_dot`], for `ty` Q4_K or Q6_K.
    #[inline(always)]
    unsafe fn row_dot_k(ty: GgmlType, row: &[u8], xr: &XRow<'_>) -> f32 {
        // SAFETY: `row` holds whole K-quant blocks of `ty` and `xr` their activations (the contract
        // of `rows_dot`); pointers below step through them block by block.
        unsafe {
            let bb = ty.block_bytes();
            let nb = row.len() / bb;
            let (w, q, xd, sums) = (row.as_ptr(), xr.q.as_ptr(), xr.d.as_ptr(), xr.sums.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut offset = [0f32; 2];
            match ty {
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
                                let lo =
                                    madd16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(qs)), xq);
                                let hi = madd16(
                                    _mm256_cvtepi8_epi16(_mm256_extracti128_si256(qs, 1)),
                                    xq.add(16),
                                );
                                let sc = half * 8 + 2 * kq;
                                let dx = d * *xd.add(b);
                                let s0 = dx * *blk.add(192 + sc) as i8 as f32;
                                let s1 = dx * *blk.add(192 + sc + 1) as i8 as f32;
                                acc[0] = _mm256_fmadd_ps(
                                    _mm256_set1_ps(s0),
                                    _mm256_cvtepi32_ps(lo),
                                    acc[0],
                                );
                                acc[1] = _mm256_fmadd_ps(
                                    _mm256_set1_ps(s1),
                                    _mm256_cvtepi32_ps(hi),
                                    acc[1],
                                );
                            }
                        }
                    }
                }
                _ => unreachable!("row_dot_k called for {ty}"),
            }
            hsum(_mm256_add_ps(acc[0], acc[1])) + offset[0] + offset[1]
        }
    }
}

/// AVX-512 kernels for the classic 32-element formats, which are what small models decode
/// through (SmolLM2's Q4_1 layers and Q8_0 head). One 512-bit register holds a whole block
/// widened to i16, so a block is one `madd` per activation row; the per-block f16 scales,
/// which the AVX2 kernel converts one at a time in scalar code, are converted 16 blocks at
/// once. The integer block sums are the same as the AVX2 kernel's, only the f32
/// accumulation order differs.
#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use std::arch::x86_64::*;

    use super::{store, XRow, MAX_ROWS_512, T_Q4_0, T_Q4_1, T_Q8_0};
    use bora_formats::quant::{GgmlType, QK};

    /// True when [`rows_dot`] has a kernel for `ty` (the K-quants take the AVX2 one).
    pub(super) fn usable(ty: GgmlType) -> bool {
        matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
    }

    /// Blocks of 32 whose scales are converted together: one register of f32.
    const GROUP: usize = 16;

    /// Widens the 32 nibbles at `qs` (low nibbles are elements 0..16) to i16.
    #[inline(always)]
    unsafe fn nibbles_i16(qs: *const u8) -> __m512i {
        // SAFETY: `qs` is valid for 16 bytes (the 32 nibbles of one block; caller's contract).
        unsafe {
            let v = _mm_loadu_si128(qs as *const __m128i);
            let m = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(v, m);
            let hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
            _mm512_cvtepu8_epi16(_mm256_set_m128i(hi, lo))
        }
    }

    /// Bytes of a block of type code `T`.
    const fn block_bytes<const T: u8>() -> usize {
        match T {
            T_Q4_0 => 18,
            T_Q4_1 => 20,
            _ => 34,
        }
    }

    /// Word permutes that pick a group's 16 block headers out of its bytes.
    const HEADER_PERMUTES: usize = 5;

    /// Pulls the headers of a group of up to 16 consecutive blocks into one register: lane
    /// `i` gets block `i`'s first f16 word (`d`) and lane `16 + i` its second (`m` for Q4_1).
    /// The group's bytes are loaded whole (masked at its end when the group is short) and
    /// the words picked with two-register word permutes, each covering 128 bytes: a gather
    /// of the 16 headers took a sixth of the kernel's time on Zen 5.
    struct Headers {
        /// Each lane's word within the 64-word window of the permute that picks it.
        idx: __m512i,
        /// Per permute, the lanes whose word lies in its window.
        lanes: [__mmask32; HEADER_PERMUTES],
    }

    impl Headers {
        #[inline(always)]
        unsafe fn new<const T: u8>() -> Self {
            // SAFETY: only register operations of AVX-512F/BW, which the caller's target features
            // provide.
            unsafe {
                let word = |lane: usize| block_bytes::<T>() / 2 * (lane % 16) + lane / 16;
                Headers {
                    idx: {
                        let at: [i16; 32] = std::array::from_fn(|lane| (word(lane) % 64) as i16);
                        _mm512_loadu_si512(at.as_ptr() as *const __m512i)
                    },
                    lanes: std::array::from_fn(|p| {
                        (0..32)
                            .filter(|&lane| word(lane) / 64 == p)
                            .fold(0, |m, lane| m | 1 << lane)
                    }),
                }
            }
        }

        /// The headers of the `cnt` blocks of type `T` starting at `p`; lanes of blocks past
        /// `cnt` are unspecified. Full groups (the common case) take the branch whose loads
        /// are all unmasked but the last, their masks known at compile time.
        #[inline(always)]
        unsafe fn words<const T: u8>(&self, p: *const u8, cnt: usize) -> __m512i {
            // SAFETY: `p` is valid for `cnt` blocks of type `T` (caller's contract).
            unsafe {
                if cnt == GROUP {
                    self.picked::<T>(p, GROUP * block_bytes::<T>())
                } else {
                    self.picked::<T>(p, cnt * block_bytes::<T>())
                }
            }
        }

        #[inline(always)]
        unsafe fn picked<const T: u8>(&self, p: *const u8, len: usize) -> __m512i {
            // SAFETY: `p` is valid for `len` bytes (caller's contract); the masked loads read no
            // further.
            unsafe {
                let load = |k: usize| {
                    let valid = len.saturating_sub(64 * k).min(64);
                    let mask: __mmask64 = if valid == 64 { !0 } else { (1 << valid) - 1 };
                    _mm512_maskz_loadu_epi8(mask, p.add(64 * k) as *const i8)
                };
                let permutes = (GROUP * block_bytes::<T>() / 2 + 1).div_ceil(64);
                let mut out = _mm512_setzero_si512();
                for j in 0..permutes {
                    if len > 128 * j {
                        let picked =
                            _mm512_permutex2var_epi16(load(2 * j), self.idx, load(2 * j + 1));
                        out = _mm512_mask_mov_epi16(out, self.lanes[j], picked);
                    }
                }
                out
            }
        }
    }

    /// One weight row against `R` activation rows: per row `Σ_b s_b·Σ w·xq + Σ_b mins_b·sums_b`,
    /// with `s_b = d_b·xd_b` and `mins_b` the block's additive term (`m` for Q4_1, `−8·d` for
    /// Q4_0, none for Q8_0). The block scales are picked ([`Headers`]) and converted, and the quants
    /// widened, once for all rows.
    #[inline(always)]
    unsafe fn dot_row<const T: u8, const R: usize, const VNNI: bool>(
        w: *const u8,
        nb: usize,
        headers: &Headers,
        xs: &[XRow<'_>],
    ) -> [f32; R] {
        // SAFETY: the caller guarantees the target features and that `w` points at `nb` blocks of
        // type `T` and each activation row at `nb` blocks' quants.
        unsafe {
            let bb = block_bytes::<T>();
            let q: [*const i16; R] = std::array::from_fn(|r| xs[r].q.as_ptr());
            let pairs: [*const i16; R] = std::array::from_fn(|r| xs[r].pairs.as_ptr());
            let xd: [*const f32; R] = std::array::from_fn(|r| xs[r].d.as_ptr());
            let sums: [*const f32; R] = std::array::from_fn(|r| xs[r].sums.as_ptr());
            // Two accumulators per row (held in registers, not memory, once the loops over `R`
            // unroll), so one block's FMA need not wait for the previous block's.
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            let mut b0 = 0;
            while b0 < nb {
                let cnt = (nb - b0).min(GROUP);
                let mask: __mmask16 = if cnt == GROUP { !0 } else { (1 << cnt) - 1 };
                let words = headers.words::<T>(w.add(b0 * bb), cnt);
                let d = _mm512_cvtph_ps(_mm512_castsi512_si256(words));
                let min = match T {
                    T_Q4_1 => _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(words)),
                    _ => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                };
                let mut scale = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    scale[r] = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(mask, xd[r].add(b0)));
                    if T != T_Q8_0 {
                        let bsum = _mm512_maskz_loadu_ps(mask, sums[r].add(b0));
                        acc0[r] = _mm512_fmadd_ps(min, bsum, acc0[r]);
                    }
                }
                let mut i = 0;
                if T != T_Q8_0 {
                    // Two blocks per register: their 2×16 nibble bytes widened at once, low
                    // nibbles masked and high ones shifted down in place, dotted with the
                    // interleaved activations; lanes 0..8 then hold block i, 8..16 block i+1.
                    let qoff = if T == T_Q4_1 { 4 } else { 2 };
                    let m4 = _mm512_set1_epi16(0x0F);
                    let first = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
                    macro_rules! pair {
                        ($i:expr, $acc:ident) => {{
                            let b = b0 + $i;
                            let qa = _mm_loadu_si128(w.add(b * bb + qoff) as *const __m128i);
                            let qb = _mm_loadu_si128(w.add((b + 1) * bb + qoff) as *const __m128i);
                            let v = _mm512_cvtepu8_epi16(_mm256_set_m128i(qb, qa));
                            let (lo, hi) = (_mm512_and_si512(v, m4), _mm512_srli_epi16(v, 4));
                            let idx = _mm512_add_epi32(first, _mm512_set1_epi32($i as i32));
                            for r in 0..R {
                                let xp = pairs[r].add(b * QK);
                                let (xlo, xhi) = (
                                    _mm512_loadu_si512(xp as *const __m512i),
                                    _mm512_loadu_si512(xp.add(QK) as *const __m512i),
                                );
                                // The same i32 sums either way; VNNI fuses the second `madd` and
                                // the add.
                                let p = if VNNI {
                                    _mm512_dpwssd_epi32(_mm512_madd_epi16(lo, xlo), hi, xhi)
                                } else {
                                    _mm512_add_epi32(
                                        _mm512_madd_epi16(lo, xlo),
                                        _mm512_madd_epi16(hi, xhi),
                                    )
                                };
                                let s = _mm512_permutexvar_ps(idx, scale[r]);
                                $acc[r] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), $acc[r]);
                            }
                        }};
                    }
                    // Pairs alternate between the two accumulators, unrolled so the choice is
                    // made at compile time.
                    while i + 3 < cnt {
                        pair!(i, acc0);
                        pair!(i + 2, acc1);
                        i += 4;
                    }
                    if i + 1 < cnt {
                        pair!(i, acc0);
                        i += 2;
                    }
                }
                // Single blocks: every Q8_0 block, and a last unpaired Q4 block; even blocks to
                // one accumulator, odd ones to the other.
                macro_rules! single {
                    ($i:expr, $acc:ident) => {{
                        let b = b0 + $i;
                        let blk = w.add(b * bb);
                        let wq = match T {
                            T_Q4_0 => nibbles_i16(blk.add(2)),
                            T_Q4_1 => nibbles_i16(blk.add(4)),
                            _ => _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                                blk.add(2) as *const __m256i
                            )),
                        };
                        // Lane i of the 16 scales, broadcast without leaving the registers.
                        let lane = _mm512_set1_epi32($i as i32);
                        for r in 0..R {
                            let xq = _mm512_loadu_si512(q[r].add(b * QK) as *const __m512i);
                            let p = _mm512_cvtepi32_ps(_mm512_madd_epi16(wq, xq));
                            let s = _mm512_permutexvar_ps(lane, scale[r]);
                            $acc[r] = _mm512_fmadd_ps(s, p, $acc[r]);
                        }
                    }};
                }
                while i + 1 < cnt {
                    single!(i, acc0);
                    single!(i + 1, acc1);
                    i += 2;
                }
                if i < cnt {
                    single!(i, acc0);
                }
                b0 += cnt;
            }
            std::array::from_fn(|r| _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r])))
        }
    }

    /// # Safety
    /// The CPU must support AVX-512 F and BW, F16C and FMA, and AVX512-VNNI when `VNNI`; `ty`
    /// must pass [`usable`]; `rows` must hold
    /// `out.len() / xs.len()` rows of `row_bytes` bytes of whole `ty` blocks, and every row
    /// of `xs` must cover as many 32-blocks.
    #[inline(always)]
    unsafe fn rows_dot_with<const VNNI: bool>(
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        xs: &[XRow<'_>],
        out: &mut [f32],
        accumulate: bool,
    ) {
        // SAFETY: the caller runs this inside a function enabling AVX-512F/BW, F16C and FMA (VNNI
        // too when `VNNI`), and `rows` holds whole rows of `row_bytes` bytes, so every block
        // pointer below stays inside it.
        unsafe {
            let bb = ty.block_bytes();
            macro_rules! classic {
            ($t:ident) => {{
                let headers = Headers::new::<$t>();
                macro_rules! kernel {
                    ($r:literal, $w:ident, $nb:ident, $bb:expr, $xc:ident) => {
                        dot_row::<$t, $r, VNNI>($w, $nb, &headers, $xc)
                    };
                }
                each_row_and_chunk!(
                    kernel,
                    MAX_ROWS_512,
                    rows,
                    row_bytes,
                    bb,
                    xs,
                    out,
                    accumulate,
                    [1 2 3 4]
                )
            }};
        }
            match ty {
                GgmlType::Q4_0 => classic!(T_Q4_0),
                GgmlType::Q4_1 => classic!(T_Q4_1),
                _ => classic!(T_Q8_0),
            }
        }
    }

    /// # Safety
    /// As [`rows_dot_with`] without VNNI.
    #[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
    pub(super) unsafe fn rows_dot(
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        xs: &[XRow<'_>],
        out: &mut [f32],
        accumulate: bool,
    ) {
        // SAFETY: the caller guarantees the features this function enables and the bounds of
        // `rows_dot_with`.
        unsafe { rows_dot_with::<false>(ty, rows, row_bytes, xs, out, accumulate) }
    }

    /// # Safety
    /// As [`rows_dot_with`] with VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
    pub(super) unsafe fn rows_dot_vnni(
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        xs: &[XRow<'_>],
        out: &mut [f32],
        accumulate: bool,
    ) {
        // SAFETY: the caller guarantees the features this function enables and the bounds of
        // `rows_dot_with`.
        unsafe { rows_dot_with::<true>(ty, rows, row_bytes, xs, out, accumulate) }
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

/// Dots `out.len() / xs.len()` consecutive weight rows (`row_bytes` each, starting at
/// `rows`) with every activation row of `xs`, writing (or, with `accumulate`, adding)
/// `out[j·xs.len() + r]` = weight row `j` · activation row `r`; `ty` must satisfy
/// [`has_dot_kernel`]. A matrix product calls this once per run of weight rows, so the type
/// dispatch, the feature probe and the bounds checks are paid per run rather than per row.
pub(crate) fn rows_dot(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    xs: &[XRow<'_>],
    out: &mut [f32],
    accumulate: bool,
) {
    if xs.is_empty() {
        return;
    }
    let n = out.len() / xs.len();
    assert_eq!(n * xs.len(), out.len(), "rows_dot: output of whole rows");
    assert!(rows.len() >= n * row_bytes, "rows_dot: weight rows");
    let blocks = row_bytes / ty.block_bytes() * ty.block_elems() / QK;
    for xr in xs {
        assert!(
            xr.x.len() >= blocks * QK
                && xr.q.len() >= blocks * QK
                && xr.pairs.len() >= blocks * QK
                && xr.d.len() >= blocks
                && xr.sums.len() >= blocks,
            "rows_dot: activation row shorter than the weight row"
        );
    }
    rows_dot_on(crate::cpu_path(), ty, rows, row_bytes, xs, out, accumulate)
}

/// [`rows_dot`] on the kernels of `path`, which the CPU must support; the shapes must pass
/// [`rows_dot`]'s checks.
fn rows_dot_on(
    path: CpuPath,
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    xs: &[XRow<'_>],
    out: &mut [f32],
    accumulate: bool,
) {
    assert!(path.supported(), "kernel path {path} on a CPU without it");
    #[cfg(target_arch = "x86_64")]
    match path {
        CpuPath::Avx512 if x86_512::usable(ty) => {
            // SAFETY: the CPU supports the path's features (asserted above) and VNNI where
            // it is used; `rows` holds whole blocks of `ty` for every output row and every
            // activation row covers them (the caller's checks).
            return unsafe {
                if crate::cpu::has_avx512_vnni() {
                    x86_512::rows_dot_vnni(ty, rows, row_bytes, xs, out, accumulate)
                } else {
                    x86_512::rows_dot(ty, rows, row_bytes, xs, out, accumulate)
                }
            };
        }
        CpuPath::Avx512 | CpuPath::Avx2 => {
            // SAFETY: as above, for AVX2, FMA and F16C (part of both paths).
            return unsafe { x86::rows_dot(ty, rows, row_bytes, xs, out, accumulate) };
        }
        CpuPath::Portable => {}
    }
    rows_dot_portable(ty, rows, row_bytes, xs, out, accumulate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{quant_bytes, rand_vec};
    use bora_formats::quant::dequantize;

    /// Activation rows quantized for the kernels, owning their buffers.
    struct Rows {
        x: Vec<Vec<f32>>,
        q: Vec<Vec<i16>>,
        pairs: Vec<Vec<i16>>,
        d: Vec<Vec<f32>>,
        sums: Vec<Vec<f32>>,
    }

    impl Rows {
        /// `m` random rows of `k`, with outliers as in small models' activations next to
        /// plain blocks.
        fn new(path: CpuPath, m: usize, k: usize, seed: u64) -> Self {
            let mut rows = Rows {
                x: vec![],
                q: vec![],
                pairs: vec![],
                d: vec![],
                sums: vec![],
            };
            for r in 0..m {
                let mut x = rand_vec(k, seed + r as u64);
                x[(5 + 37 * r) % k] = 40.0;
                x[(300 + 11 * r) % k] = -25.0;
                let (mut q, mut pairs) = (vec![0i16; k], vec![0i16; k]);
                let (mut d, mut sums) = (vec![0f32; k / QK], vec![0f32; k / QK]);
                quantize_row_on(path, &x, &mut q, &mut pairs, &mut d, &mut sums);
                rows.x.push(x);
                rows.q.push(q);
                rows.pairs.push(pairs);
                rows.d.push(d);
                rows.sums.push(sums);
            }
            rows
        }

        fn views(&self) -> Vec<XRow<'_>> {
            (0..self.x.len())
                .map(|r| XRow {
                    x: &self.x[r],
                    q: &self.q[r],
                    pairs: &self.pairs[r],
                    d: &self.d[r],
                    sums: &self.sums[r],
                })
                .collect()
        }
    }

    /// Every kernel path this CPU can run, and whether its activations are rounded to 16
    /// bits (all but the portable kernel, which dots exact f32 activations).
    fn paths() -> Vec<(CpuPath, bool)> {
        CpuPath::supported_paths()
            .into_iter()
            .map(|p| (p, p != CpuPath::Portable))
            .collect()
    }
    /// Each kernel, for every type and for row counts below, at and past its chunk sizes
    /// (1…17), against dequantize + an f64 dot; and each row of a multi-row product
    /// bit-identical to the same kernel's product of that row alone, written and
    /// accumulated.
    #[test]
    fn multi_row_dots_match_single_rows_and_the_f64_reference() {
        // 24 and 25 blocks of 32: a full group of 16 scales and a part group, with and
        // without an unpaired last block; the K-quants need whole super-blocks of 256.
        for k in [768, 800] {
            for m in [1, 2, 3, 4, 5, 7, 8, 9, 13, 17] {
                check_dots(k, m);
            }
        }
    }

    fn check_dots(k: usize, m: usize) {
        for (path, rounded) in paths() {
            let acts = Rows::new(path, m, k, 100 * m as u64 + k as u64);
            let xs = acts.views();
            let n = 3;
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
                let rows = quant_bytes(ty, n, k, 10 + m as u64);
                let rb = rows.len() / n;
                let mut w = vec![0f32; n * k];
                dequantize(ty, &rows, &mut w).unwrap();
                {
                    let kernel = |ty, rows: &[u8], rb, xs: &[XRow<'_>], out: &mut [f32], acc| {
                        rows_dot_on(path, ty, rows, rb, xs, out, acc)
                    };
                    let name = path.name();
                    let mut out = vec![0f32; n * m];
                    kernel(ty, &rows, rb, &xs, &mut out, false);
                    let mut acc = vec![1f32; n * m];
                    kernel(ty, &rows, rb, &xs, &mut acc, true);
                    for j in 0..n {
                        let wj = &w[j * k..(j + 1) * k];
                        for r in 0..m {
                            let x = &acts.x[r];
                            let want: f64 =
                                wj.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let mag: f64 = wj
                                .iter()
                                .zip(x)
                                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                                .sum();
                            // 16-bit activations: each element off by at most half a step of its
                            // block; exact activations: f32 rounding only.
                            let bound = if rounded {
                                (0..k)
                                    .map(|i| (wj[i] as f64).abs() * acts.d[r][i / QK] as f64 * 0.5)
                                    .sum::<f64>()
                                    + 1e-6 * mag
                            } else {
                                1e-6 * mag * k as f64
                            };
                            let got = out[j * m + r];
                            assert!(
                            (got as f64 - want).abs() <= bound,
                            "{name} {ty} k={k} m={m} [{j},{r}]: {got} vs {want} (bound {bound})"
                        );
                            let mut alone = [0f32];
                            kernel(
                                ty,
                                &rows[j * rb..(j + 1) * rb],
                                rb,
                                &xs[r..r + 1],
                                &mut alone,
                                false,
                            );
                            assert_eq!(
                                got.to_bits(),
                                alone[0].to_bits(),
                                "{name} {ty} k={k} m={m} [{j},{r}]: batched {got} vs alone {}",
                                alone[0]
                            );
                            assert_eq!(acc[j * m + r], 1.0 + got, "{name} {ty} accumulate");
                        }
                    }
                }
            }
        }
    }

    /// Each path's activation rounding against the portable loop: the same scales, every
    /// 16-bit value within one step (ties may round differently) and the block sums within
    /// f32 rounding, on rows with outliers, zeros, ties and saturating values.
    #[test]
    fn every_path_quantizes_activations_like_the_portable_loop() {
        let k = 8 * QK;
        let mut x = rand_vec(k, 5);
        x[3] = 40.0;
        x[QK..2 * QK].fill(0.0);
        for (i, v) in x[2 * QK..3 * QK].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 0.5;
        }
        x[3 * QK] = -1e30;
        let quantize = |path| {
            let (mut q, mut pairs) = (vec![0i16; k], vec![0i16; k]);
            let (mut d, mut sums) = (vec![0f32; k / QK], vec![0f32; k / QK]);
            quantize_row_on(path, &x, &mut q, &mut pairs, &mut d, &mut sums);
            (q, pairs, d, sums)
        };
        let want = quantize(CpuPath::Portable);
        for path in CpuPath::supported_paths() {
            let got = quantize(path);
            assert_eq!(got.2, want.2, "{path} scales");
            for (i, (a, b)) in got.0.iter().zip(&want.0).enumerate() {
                assert!(
                    (*a as i32 - *b as i32).abs() <= 1,
                    "{path} q[{i}]: {a} vs {b}"
                );
            }
            for (b, (s, t)) in got.3.iter().zip(&want.3).enumerate() {
                let mag: f32 = x[b * QK..(b + 1) * QK].iter().map(|v| v.abs()).sum();
                assert!((s - t).abs() <= 1e-6 * mag, "{path} sum[{b}]: {s} vs {t}");
            }
            // `pairs` is `q` rearranged, whatever the path.
            let mut pairs = vec![0i16; k];
            for t in 0..k / (2 * QK) {
                let (a, b) = (&got.0[2 * t * QK..], &got.0[(2 * t + 1) * QK..]);
                let o = &mut pairs[2 * t * QK..];
                o[..16].copy_from_slice(&a[..16]);
                o[16..32].copy_from_slice(&b[..16]);
                o[32..48].copy_from_slice(&a[16..32]);
                o[48..64].copy_from_slice(&b[16..32]);
            }
            assert_eq!(got.1, pairs, "{path} pairs");
        }
    }
}
