//! The decode layout of a quantized weight: rows interleaved 16 at a time, so that one
//! AVX-512 lane holds one weight row.
//!
//! The row-major kernels of [`crate::quant_dot`] dot one weight row at a time: each pair of
//! blocks costs every activation row two integer products plus a permute, a conversion and
//! an FMA to apply the block's scale, since the 16 lanes of a product span two blocks. With
//! 16 weight rows side by side, lane `j` accumulates weight row `j` over a whole block, so an
//! activation row pays one `vpdpwssd` per pair of elements (its two 16-bit activations
//! broadcast from memory) and the scale once per block for 16 rows. Per activation row that
//! is about half the instructions, which is what a decode step of many sequences pays for.
//!
//! The tiled bytes are the GGUF bytes rearranged, no bigger: for each tile of 16 rows and
//! each block, the 16 rows' f16 scales (`d`), then for Q4_1 their f16 minimums (`m`), then
//! the quants in 32-byte chunks: chunk `c` holds bytes `2c` and `2c + 1` of each row's
//! block quants (row `j` at bytes `2j`, `2j + 1`). For the 4-bit types byte `i` of a block
//! packs elements `i` (low nibble) and `i + 16` (high), so widening a chunk to 16 bits and
//! masking gives each row's elements `2c`, `2c + 1`, and shifting gives `2c + 16`,
//! `2c + 17`; Q8_0's chunk `c` is elements `2c`, `2c + 1` themselves.

use bora_formats::quant::{
    dequantize_block_q4_0, dequantize_block_q4_1, dequantize_block_q8_0, GgmlType, QK,
};

use crate::quant_dot::XRow;
use crate::simd::SyncPtr;
use crate::CpuPath;

/// Weight rows per tile: one per lane of a 512-bit register of f32.
pub(crate) const TILE_ROWS: usize = 16;

/// Bytes of a block's header (`d`, and `m` for Q4_1) in a GGUF block.
fn header_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_1 => 4,
        _ => 2,
    }
}

/// True when a `rows × cols` weight of `ty` can take the tiled layout and the kernel path
/// has a kernel for it: the classic 32-element types, whole tiles, AVX2 or wider.
pub(crate) fn available(ty: GgmlType, rows: usize) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
        && rows.is_multiple_of(TILE_ROWS)
        && rows > 0
        && kernel_available(crate::cpu_path())
}

/// True when `path` has a tile kernel: AVX-512 (with VNNI, else its AVX2 kernel) and AVX2.
fn kernel_available(path: CpuPath) -> bool {
    cfg!(target_arch = "x86_64") && path >= CpuPath::Avx2 && path.supported()
}

/// Rearranges `bytes` (GGUF rows of `row_bytes`, a multiple of 16 of them) into the tiled
/// layout.
pub(crate) fn tile(ty: GgmlType, bytes: &[u8], row_bytes: usize) -> Vec<u8> {
    let bb = ty.block_bytes();
    let (hb, nb) = (header_bytes(ty), row_bytes / bb);
    let mut out = vec![0u8; bytes.len()];
    for (t, tile) in out.chunks_exact_mut(TILE_ROWS * row_bytes).enumerate() {
        for (b, dst) in tile.chunks_exact_mut(TILE_ROWS * bb).enumerate() {
            let (headers, quants) = dst.split_at_mut(TILE_ROWS * hb);
            for j in 0..TILE_ROWS {
                let src = &bytes[(t * TILE_ROWS + j) * row_bytes + b * bb..][..bb];
                // d of every row, then m of every row.
                for (w, word) in src[..hb].chunks_exact(2).enumerate() {
                    headers[w * 2 * TILE_ROWS + 2 * j..][..2].copy_from_slice(word);
                }
                for (c, two) in src[hb..].chunks_exact(2).enumerate() {
                    quants[c * 2 * TILE_ROWS + 2 * j..][..2].copy_from_slice(two);
                }
            }
        }
        debug_assert_eq!(tile.len(), nb * TILE_ROWS * bb);
    }
    out
}

/// Decodes row `row` of a tiled weight (`row_bytes` per row) into `out`, through the same
/// block decoders as the GGUF layout, so the values are the same.
pub(crate) fn dequantize_row(
    ty: GgmlType,
    tiled: &[u8],
    row_bytes: usize,
    row: usize,
    out: &mut [f32],
) {
    let bb = ty.block_bytes();
    let hb = header_bytes(ty);
    let (t, j) = (row / TILE_ROWS, row % TILE_ROWS);
    let tile = &tiled[t * TILE_ROWS * row_bytes..][..TILE_ROWS * row_bytes];
    let mut block = [0u8; 34];
    for (src, dst) in tile
        .chunks_exact(TILE_ROWS * bb)
        .zip(out.chunks_exact_mut(QK))
    {
        let (headers, quants) = src.split_at(TILE_ROWS * hb);
        for w in 0..hb / 2 {
            block[2 * w..2 * w + 2].copy_from_slice(&headers[w * 2 * TILE_ROWS + 2 * j..][..2]);
        }
        for c in 0..(bb - hb) / 2 {
            block[hb + 2 * c..hb + 2 * c + 2]
                .copy_from_slice(&quants[c * 2 * TILE_ROWS + 2 * j..][..2]);
        }
        let dst: &mut [f32; QK] = dst.try_into().expect("chunks of QK");
        match ty {
            GgmlType::Q4_0 => dequantize_block_q4_0(block[..18].try_into().expect("18"), dst),
            GgmlType::Q4_1 => dequantize_block_q4_1(block[..20].try_into().expect("20"), dst),
            _ => dequantize_block_q8_0(block[..34].try_into().expect("34"), dst),
        }
    }
}

/// Activation rows the AVX-512 kernel takes at once: per row an i32 block accumulator and
/// an f32 total, 16 of the 32 registers at 8 rows.
const MAX_ROWS: usize = 8;

/// Activation rows the AVX2 kernel takes at once, against half a tile (8 weight rows, one
/// ymm register of lanes): 8 of the 16 registers hold the rows' accumulators at 4.
const MAX_ROWS_AVX2: usize = 4;

/// `y[r·n + row] = weight row · activation row r` for the rows of the tiles in `tiles`
/// (whole tiles of a weight of `n` rows, the first at row `row0`), every activation row of
/// `xs`; `+=` when `accumulate`. `y` points at `xs.len()·n` floats.
///
/// # Safety
/// `y` must be valid for those floats and no other thread may touch the rows written here
/// while this runs.
///
/// # Panics
/// When the kernel is not [`available`] or the shapes disagree.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tiles_dot(
    ty: GgmlType,
    tiles: &[u8],
    row_bytes: usize,
    xs: &[XRow<'_>],
    y: SyncPtr,
    n: usize,
    row0: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        tiles_dot_on(
            crate::cpu_path(),
            ty,
            tiles,
            row_bytes,
            xs,
            y,
            n,
            row0,
            accumulate,
        )
    }
}

/// [`tiles_dot`] on the kernel of `path`. Every path computes each lane the same way (exact
/// integer block sums, then the same two FMAs per block), so for the same activation rows
/// the AVX-512 and AVX2 kernels agree bit for bit.
///
/// # Safety
/// As [`tiles_dot`].
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_dot_on(
    path: CpuPath,
    ty: GgmlType,
    tiles: &[u8],
    row_bytes: usize,
    xs: &[XRow<'_>],
    y: SyncPtr,
    n: usize,
    row0: usize,
    accumulate: bool,
) {
    let rows = tiles.len() / row_bytes;
    assert!(kernel_available(path) && rows.is_multiple_of(TILE_ROWS));
    assert!(row0 + rows <= n);
    let nb = row_bytes / ty.block_bytes();
    for xr in xs {
        assert!(xr.q.len() >= nb * QK && xr.d.len() >= nb && xr.sums.len() >= nb);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU supports the path (asserted above) and VNNI where it is used; the
    // shapes were checked just above; the caller vouches for `y`.
    unsafe {
        if path == CpuPath::Avx512 && crate::cpu::has_avx512_vnni() {
            x86::tiles_dot(ty, tiles, row_bytes, nb, xs, y.get(), n, row0, accumulate)
        } else {
            x86_avx2::tiles_dot(ty, tiles, row_bytes, nb, xs, y.get(), n, row0, accumulate)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{XRow, MAX_ROWS, TILE_ROWS};
    use bora_formats::quant::{GgmlType, QK};

    const T_Q4_0: u8 = 0;
    const T_Q4_1: u8 = 1;
    const T_Q8_0: u8 = 2;

    /// # Safety
    /// As [`super::tiles_dot`] checks.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,fma")]
    pub(super) unsafe fn tiles_dot(
        ty: GgmlType,
        tiles: &[u8],
        row_bytes: usize,
        nb: usize,
        xs: &[XRow<'_>],
        y: *mut f32,
        n: usize,
        row0: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller guarantees the features this function enables and the bounds
        // `super::tiles_dot` checks: `tiles` holds whole tiles of `nb` blocks, `y` is valid for `n`
        // rows from `row0`.
        unsafe {
            macro_rules! each {
                ($t:ident) => {{
                    for (t, tile) in tiles.chunks_exact(TILE_ROWS * row_bytes).enumerate() {
                        let first = row0 + t * TILE_ROWS;
                        for (c, xc) in xs.chunks(MAX_ROWS).enumerate() {
                            macro_rules! run {
                                ($r:literal) => {{
                                    let acc = tile_dot::<$t, $r>(tile.as_ptr(), nb, xc);
                                    for (i, a) in acc.iter().enumerate() {
                                        let o = y.add((c * MAX_ROWS + i) * n + first);
                                        let v = if accumulate {
                                            _mm512_add_ps(_mm512_loadu_ps(o), *a)
                                        } else {
                                            *a
                                        };
                                        _mm512_storeu_ps(o, v);
                                    }
                                }};
                            }
                            match xc.len() {
                                1 => run!(1),
                                2 => run!(2),
                                3 => run!(3),
                                4 => run!(4),
                                5 => run!(5),
                                6 => run!(6),
                                7 => run!(7),
                                _ => run!(8),
                            }
                        }
                    }
                }};
            }
            match ty {
                GgmlType::Q4_0 => each!(T_Q4_0),
                GgmlType::Q4_1 => each!(T_Q4_1),
                _ => each!(T_Q8_0),
            }
        }
    }

    /// One tile (16 weight rows of `nb` blocks at `w`) against `R` activation rows: lane `j`
    /// of row `r`'s result is `Σ_b d_b·xd_b·Σ q·xq + Σ_b mins_b·sums_b` for weight row `j`,
    /// accumulated block by block in order.
    #[inline(always)]
    unsafe fn tile_dot<const T: u8, const R: usize>(
        w: *const u8,
        nb: usize,
        xs: &[XRow<'_>],
    ) -> [__m512; R] {
        // SAFETY: `w` points at one tile of `nb` blocks and each activation row at `nb` blocks'
        // quants (caller's contract); the caller's target features include AVX-512F/BW, VNNI, F16C
        // and FMA.
        unsafe {
            let (hb, bb) = match T {
                T_Q4_0 => (2, 18),
                T_Q4_1 => (4, 20),
                _ => (2, 34),
            };
            let q: [*const i32; R] = std::array::from_fn(|r| xs[r].q.as_ptr() as *const i32);
            let mut acc = [_mm512_setzero_ps(); R];
            let m4 = _mm512_set1_epi16(0x0F);
            for b in 0..nb {
                let blk = w.add(b * TILE_ROWS * bb);
                let quants = blk.add(TILE_ROWS * hb);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
                let mut isum = [_mm512_setzero_si512(); R];
                // Each activation row's pair of 16-bit values at element `e`, broadcast.
                let x2 = |r: usize, e: usize| {
                    _mm512_set1_epi32(q[r].add((b * QK + e) / 2).read_unaligned())
                };
                if T == T_Q8_0 {
                    for c in 0..QK / 2 {
                        let v = _mm512_cvtepi8_epi16(_mm256_loadu_si256(
                            quants.add(32 * c) as *const __m256i
                        ));
                        for (r, s) in isum.iter_mut().enumerate() {
                            *s = _mm512_dpwssd_epi32(*s, v, x2(r, 2 * c));
                        }
                    }
                } else {
                    for c in 0..QK / 4 {
                        let v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(
                            quants.add(32 * c) as *const __m256i
                        ));
                        let (lo, hi) = (_mm512_and_si512(v, m4), _mm512_srli_epi16(v, 4));
                        for (r, s) in isum.iter_mut().enumerate() {
                            *s = _mm512_dpwssd_epi32(*s, lo, x2(r, 2 * c));
                            *s = _mm512_dpwssd_epi32(*s, hi, x2(r, 2 * c + QK / 2));
                        }
                    }
                }
                let min = match T {
                    T_Q4_1 => _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i)),
                    _ => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                };
                for r in 0..R {
                    let s = _mm512_mul_ps(d, _mm512_set1_ps(*xs[r].d.as_ptr().add(b)));
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r]), s, acc[r]);
                    if T != T_Q8_0 {
                        let sum = _mm512_set1_ps(*xs[r].sums.as_ptr().add(b));
                        acc[r] = _mm512_fmadd_ps(min, sum, acc[r]);
                    }
                }
            }
            acc
        }
    }
}

/// The AVX2 kernel: the tile is taken as two halves of 8 weight rows, one ymm lane per row.
/// The 16 bytes of a chunk that belong to a half widen to 16 i16 (each row's two quants) and
/// `madd` with the activation pair broadcast gives each row's i32 partial sum; AVX2 has no
/// `vpdpwssd`, so the `madd` and the add are two instructions.
#[cfg(target_arch = "x86_64")]
mod x86_avx2 {
    use std::arch::x86_64::*;

    use super::{XRow, MAX_ROWS_AVX2, TILE_ROWS};
    use bora_formats::quant::{GgmlType, QK};

    const T_Q4_0: u8 = 0;
    const T_Q4_1: u8 = 1;
    const T_Q8_0: u8 = 2;

    /// Weight rows per half tile: one per lane of a 256-bit register of f32.
    const HALF: usize = TILE_ROWS / 2;

    /// # Safety
    /// As [`super::tiles_dot`] checks; the CPU must support AVX2, FMA and F16C.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tiles_dot(
        ty: GgmlType,
        tiles: &[u8],
        row_bytes: usize,
        nb: usize,
        xs: &[XRow<'_>],
        y: *mut f32,
        n: usize,
        row0: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller guarantees AVX2, FMA and F16C and the bounds `super::tiles_dot`
        // checks: `tiles` holds whole tiles of `nb` blocks, `y` is valid for `n` rows from `row0`.
        unsafe {
            macro_rules! each {
                ($t:ident) => {{
                    for (t, tile) in tiles.chunks_exact(TILE_ROWS * row_bytes).enumerate() {
                        for h in 0..2 {
                            let first = row0 + t * TILE_ROWS + h * HALF;
                            for (c, xc) in xs.chunks(MAX_ROWS_AVX2).enumerate() {
                                macro_rules! run {
                                    ($r:literal) => {{
                                        let acc = half_dot::<$t, $r>(tile.as_ptr(), h, nb, xc);
                                        for (i, a) in acc.iter().enumerate() {
                                            let o = y.add((c * MAX_ROWS_AVX2 + i) * n + first);
                                            let v = if accumulate {
                                                _mm256_add_ps(_mm256_loadu_ps(o), *a)
                                            } else {
                                                *a
                                            };
                                            _mm256_storeu_ps(o, v);
                                        }
                                    }};
                                }
                                match xc.len() {
                                    1 => run!(1),
                                    2 => run!(2),
                                    3 => run!(3),
                                    _ => run!(4),
                                }
                            }
                        }
                    }
                }};
            }
            match ty {
                GgmlType::Q4_0 => each!(T_Q4_0),
                GgmlType::Q4_1 => each!(T_Q4_1),
                _ => each!(T_Q8_0),
            }
        }
    }

    /// Half `h` of one tile (8 weight rows of `nb` blocks at `w`) against `R` activation
    /// rows: lane `j` of row `r`'s result is weight row `8h + j`'s dot, accumulated as the
    /// AVX-512 kernel does.
    #[inline(always)]
    unsafe fn half_dot<const T: u8, const R: usize>(
        w: *const u8,
        h: usize,
        nb: usize,
        xs: &[XRow<'_>],
    ) -> [__m256; R] {
        // SAFETY: `w` points at half `h` of a tile of `nb` blocks and each activation row at `nb`
        // blocks' quants (caller's contract); the caller's target features include AVX2, FMA and
        // F16C.
        unsafe {
            let (hb, bb) = match T {
                T_Q4_0 => (2, 18),
                T_Q4_1 => (4, 20),
                _ => (2, 34),
            };
            let q: [*const i32; R] = std::array::from_fn(|r| xs[r].q.as_ptr() as *const i32);
            let mut acc = [_mm256_setzero_ps(); R];
            let m4 = _mm256_set1_epi16(0x0F);
            for b in 0..nb {
                let blk = w.add(b * TILE_ROWS * bb);
                let quants = blk.add(TILE_ROWS * hb + 2 * HALF * h);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(2 * HALF * h) as *const __m128i));
                let mut isum = [_mm256_setzero_si256(); R];
                // Each activation row's pair of 16-bit values at element `e`, broadcast.
                let x2 = |r: usize, e: usize| {
                    _mm256_set1_epi32(q[r].add((b * QK + e) / 2).read_unaligned())
                };
                let chunk =
                    |c: usize| _mm_loadu_si128(quants.add(2 * TILE_ROWS * c) as *const __m128i);
                if T == T_Q8_0 {
                    for c in 0..QK / 2 {
                        let v = _mm256_cvtepi8_epi16(chunk(c));
                        for (r, s) in isum.iter_mut().enumerate() {
                            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(v, x2(r, 2 * c)));
                        }
                    }
                } else {
                    for c in 0..QK / 4 {
                        let v = _mm256_cvtepu8_epi16(chunk(c));
                        let (lo, hi) = (_mm256_and_si256(v, m4), _mm256_srli_epi16(v, 4));
                        for (r, s) in isum.iter_mut().enumerate() {
                            let p = _mm256_add_epi32(
                                _mm256_madd_epi16(lo, x2(r, 2 * c)),
                                _mm256_madd_epi16(hi, x2(r, 2 * c + QK / 2)),
                            );
                            *s = _mm256_add_epi32(*s, p);
                        }
                    }
                }
                let min = match T {
                    T_Q4_1 => _mm256_cvtph_ps(_mm_loadu_si128(
                        blk.add(2 * TILE_ROWS + 2 * HALF * h) as *const __m128i,
                    )),
                    _ => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
                };
                for r in 0..R {
                    let s = _mm256_mul_ps(d, _mm256_set1_ps(*xs[r].d.as_ptr().add(b)));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), s, acc[r]);
                    if T != T_Q8_0 {
                        let sum = _mm256_set1_ps(*xs[r].sums.as_ptr().add(b));
                        acc[r] = _mm256_fmadd_ps(min, sum, acc[r]);
                    }
                }
            }
            acc
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant_dot::quantize_row_on;
    use crate::testutil::{quant_bytes, rand_vec};
    use bora_formats::quant::dequantize;

    const TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];

    #[test]
    fn tiled_rows_decode_to_the_gguf_rows() {
        let (rows, cols) = (32, 96);
        for ty in TYPES {
            let bytes = quant_bytes(ty, rows, cols, 3);
            let rb = bytes.len() / rows;
            let tiled = tile(ty, &bytes, rb);
            assert_eq!(tiled.len(), bytes.len());
            for r in 0..rows {
                let (mut want, mut got) = (vec![0f32; cols], vec![0f32; cols]);
                dequantize(ty, &bytes[r * rb..(r + 1) * rb], &mut want).unwrap();
                dequantize_row(ty, &tiled, rb, r, &mut got);
                assert_eq!(got, want, "{ty} row {r}");
            }
        }
    }

    /// Every tile kernel this CPU runs: against dequantize + an f64 dot, within the 16-bit
    /// activations' rounding, each row of a many-row product bit-identical to that row
    /// alone, and the kernels bit-identical to each other on the same activation rows.
    #[test]
    fn tile_products_match_single_rows_and_the_f64_reference() {
        let paths: Vec<CpuPath> = CpuPath::supported_paths()
            .into_iter()
            .filter(|&p| kernel_available(p))
            .collect();
        let (n, k) = (32, 800);
        let nb = k / QK;
        for (ty, path) in TYPES
            .into_iter()
            .flat_map(|ty| paths.iter().map(move |&p| (ty, p)))
        {
            let bytes = quant_bytes(ty, n, k, 7);
            let rb = bytes.len() / n;
            let tiled = tile(ty, &bytes, rb);
            let mut wf = vec![0f32; n * k];
            dequantize(ty, &bytes, &mut wf).unwrap();
            for m in [1, 3, 8, 11] {
                let x: Vec<Vec<f32>> = (0..m)
                    .map(|r| {
                        let mut x = rand_vec(k, 100 + r as u64);
                        x[(5 + 37 * r) % k] = 40.0;
                        x
                    })
                    .collect();
                let mut q = vec![vec![0i16; k]; m];
                let mut pairs = vec![vec![0i16; k]; m];
                let mut d = vec![vec![0f32; nb]; m];
                let mut sums = vec![vec![0f32; nb]; m];
                for r in 0..m {
                    quantize_row_on(
                        path,
                        &x[r],
                        &mut q[r],
                        &mut pairs[r],
                        &mut d[r],
                        &mut sums[r],
                    );
                }
                let xs: Vec<XRow<'_>> = (0..m)
                    .map(|r| XRow {
                        x: &x[r],
                        q: &q[r],
                        pairs: &pairs[r],
                        d: &d[r],
                        sums: &sums[r],
                    })
                    .collect();
                let run_on = |kernel, xs: &[XRow<'_>], y: &mut [f32], accumulate: bool| {
                    assert_eq!(y.len(), xs.len() * n);
                    // SAFETY: `y` holds the rows' n floats each, on this thread alone.
                    unsafe {
                        tiles_dot_on(
                            kernel,
                            ty,
                            &tiled,
                            rb,
                            xs,
                            SyncPtr(y.as_mut_ptr()),
                            n,
                            0,
                            accumulate,
                        )
                    }
                };
                let run = |xs: &[XRow<'_>], y: &mut [f32], accumulate: bool| {
                    run_on(path, xs, y, accumulate)
                };
                let mut y = vec![0f32; m * n];
                run(&xs, &mut y, false);
                for &other in &paths {
                    let mut o = vec![0f32; m * n];
                    run_on(other, &xs, &mut o, false);
                    assert_eq!(o, y, "{ty} m={m}: {other} kernel vs {path}");
                }
                let mut acc = y.clone();
                run(&xs, &mut acc, true);
                for r in 0..m {
                    let mut alone = vec![0f32; n];
                    run(&xs[r..r + 1], &mut alone, false);
                    assert_eq!(
                        &y[r * n..(r + 1) * n],
                        &alone[..],
                        "{path} {ty} m={m} row {r}"
                    );
                    for j in 0..n {
                        let exact: f64 = wf[j * k..(j + 1) * k]
                            .iter()
                            .zip(&x[r])
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum();
                        let scale: f64 = wf[j * k..(j + 1) * k]
                            .iter()
                            .zip(&x[r])
                            .map(|(&a, &b)| (a as f64 * b as f64).abs())
                            .sum();
                        let got = y[r * n + j] as f64;
                        assert!(
                            (got - exact).abs() <= 1e-4 * scale + 1e-6,
                            "{path} {ty} m={m} row {r} col {j}: {got} vs {exact}"
                        );
                        assert_eq!(acc[r * n + j], y[r * n + j] + y[r * n + j]);
                    }
                }
            }
        }
    }
}
