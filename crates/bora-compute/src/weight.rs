//! Frozen weights, possibly quantized, and the products a LoRA step needs from them.
//!
//! A frozen weight is only ever multiplied: forward by `x · Wᵀ`, backward by `dy · W` to
//! pass the gradient on to earlier layers. Neither needs the weight in f32 all at once, so
//! quantized weights stay quantized in memory (borrowed straight from the GGUF memory map)
//! and are dequantized one tile of rows at a time into a reused scratch buffer that `gemm`
//! then consumes. With a few activation rows (decoding) the tile detour costs more than the
//! product itself, so those use the block-wise dot kernels of `quant_dot`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bora_formats::nf4::Nf4;
use bora_formats::quant::{dequantize, GgmlType, WeightType, QK};
use rayon::prelude::*;

use crate::arena::{MatScratch, Scratch};
use crate::error::ComputeError;
use crate::matmul::{gemm_f32, matmul_dx, matmul_xwt, Mat};
use crate::quant_dot::{has_dot_kernel, quantize_row, rows_dot, XRow};
use crate::quant_tiles::{self, tiles_dot};
use crate::simd::SyncPtr;
use crate::Result;

/// At most this many activation rows go through the block-wise dot kernels in training's
/// products ([`Scratch::new`](crate::Scratch::new)), which round activations to 16 bits;
/// more rows go through a tile dequantization and `gemm` in f32. Training batches must stay
/// exact (QLoRA's gradients equal f32 training's on the dequantized base), so the bound stays
/// small; inference takes more rows through the kernels ([`INFERENCE_DOT_ROWS`]).
pub const MATVEC_MAX_ROWS: usize = 12;

/// At most this many activation rows go through the row-major dot kernels in inference's
/// products ([`Scratch::for_inference`](crate::Scratch::for_inference)): a prompt's
/// prefill, a group of a decode step. Past it the f32 tiles, whose dequantization is paid
/// once per product however many rows, cost less than the kernels' work per row:
/// `decode_rows` example (GGUF layout), SmolLM2-135M's shapes, 2 threads, kernels against
/// tiles: 22 against 77 ms at 16 rows, 84 against 120 at 48, 107 against 116 at 64, 211
/// against 156 at 128. Weights in the decode layout take their kernel for any number of
/// rows, this many at a time.
pub const INFERENCE_DOT_ROWS: usize = 64;

/// Output rows per rayon task in the matrix-vector path: fine-grained, so a thread that is
/// preempted (other processes share these cores) delays only a small share of the rows.
const MATVEC_ROWS_PER_TASK: usize = 32;

/// Activation rows a matrix-vector task hands the dot kernels at once (they take 4 at a
/// time on x86-64, 8 in the portable kernel).
const ROWS_PER_PASS: usize = 8;

/// Floats per dequantized tile (1 MiB): big enough for `gemm` to run at full speed, small
/// enough to stay in L2 while it does.
const TILE_FLOATS: usize = 1 << 18;

/// Bytes a weight borrows without copying: a range of a shared owner such as a memory map
/// (`Arc<memmap2::Mmap>` implements `AsRef<[u8]>`) or a plain `Vec<u8>`. Cloning shares the
/// owner, so the model can hand the same mapped file to every weight.
#[derive(Clone)]
pub struct WeightBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl WeightBytes {
    /// Borrows `range` of `owner`; errors if the range is not inside it.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Result<Self> {
        let len = (*owner).as_ref().len();
        if range.start > range.end || range.end > len {
            return Err(ComputeError::ByteRange {
                start: range.start,
                end: range.end,
                len,
            });
        }
        Ok(Self {
            owner,
            start: range.start,
            len: range.end - range.start,
        })
    }

    /// Owns `bytes` (weights produced in memory, tests).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Self {
            owner: Arc::new(bytes),
            start: 0,
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }
}

impl fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WeightBytes({} bytes at {})", self.len, self.start)
    }
}

#[derive(Debug, Clone)]
enum Storage {
    F32(Arc<[f32]>),
    /// `decode`: loaded to generate ([`Weight::into_decode_layout`]), so every inference
    /// product takes the dot kernels; `tiled`: in the decode layout's tiles, else GGUF's
    /// rows (the kernel path has no tile kernel, or the type or shape no tiles).
    Quant {
        ty: GgmlType,
        bytes: WeightBytes,
        tiled: bool,
        decode: bool,
    },
    /// QLoRA's NF4 (bitsandbytes' layout); products go through f32 tiles.
    Nf4(Arc<Nf4>),
}

/// A frozen `[rows, cols]` matrix (torch `[out, in]`), in f32 or any supported ggml type.
#[derive(Debug, Clone)]
pub struct Weight {
    rows: usize,
    cols: usize,
    storage: Storage,
}

fn supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || has_dot_kernel(ty)
}

impl Weight {
    /// An f32 weight; `name` only labels errors.
    pub fn from_f32(
        name: &str,
        rows: usize,
        cols: usize,
        data: impl Into<Arc<[f32]>>,
    ) -> Result<Self> {
        let data = data.into();
        if Some(data.len()) != rows.checked_mul(cols) {
            return Err(ComputeError::WeightShape {
                name: name.to_string(),
                ty: GgmlType::F32,
                rows,
                cols,
                what: format!("{} values given", data.len()),
            });
        }
        Ok(Self {
            rows,
            cols,
            storage: Storage::F32(data),
        })
    }

    /// A weight stored as `ty` (rows of whole blocks, ggml layout), kept in that form.
    pub fn from_bytes(
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: WeightBytes,
    ) -> Result<Self> {
        let bad = |what: String| ComputeError::WeightShape {
            name: name.to_string(),
            ty,
            rows,
            cols,
            what,
        };
        if !supported(ty) {
            return Err(ComputeError::UnsupportedType {
                name: name.to_string(),
                ty,
            });
        }
        let row_bytes = ty.row_bytes(cols).map_err(|e| bad(e.to_string()))?;
        let need = row_bytes
            .checked_mul(rows)
            .ok_or_else(|| bad("size overflows".into()))?;
        if bytes.len != need {
            return Err(bad(format!("needs {need} bytes, got {}", bytes.len)));
        }
        Ok(Self {
            rows,
            cols,
            storage: Storage::Quant {
                ty,
                bytes,
                tiled: false,
                decode: false,
            },
        })
    }

    /// A weight quantized to NF4 (`nf4` holds `rows · cols` elements, row-major).
    pub fn from_nf4(name: &str, rows: usize, cols: usize, nf4: Nf4) -> Result<Self> {
        if Some(nf4.len()) != rows.checked_mul(cols) {
            return Err(ComputeError::WeightShape {
                name: name.to_string(),
                ty: GgmlType::F32,
                rows,
                cols,
                what: format!("the NF4 tensor holds {} values", nf4.len()),
            });
        }
        Ok(Self {
            rows,
            cols,
            storage: Storage::Nf4(Arc::new(nf4)),
        })
    }

    /// This weight loaded to generate: its inference products all take the dot kernels, so
    /// a row's product does not depend on the rows batched with it, and its rows are
    /// interleaved 16 at a time for the tile kernels where the type and the kernel path
    /// allow (Q4_0, Q4_1, Q8_0 on AVX2 or AVX-512; see `quant_tiles`). Other types and the
    /// portable path keep GGUF's rows. The values stay the same and so does the size, but
    /// tiled bytes are copied out of the file: for a model loaded to generate, not to be
    /// trained (the backward goes through a slower row-by-row decode of the tiles).
    pub fn into_decode_layout(self) -> Self {
        match &self.storage {
            Storage::Quant {
                ty,
                bytes,
                tiled: false,
                decode: false,
            } if has_dot_kernel(*ty) => {
                let (ty, tiled) = (*ty, quant_tiles::available(*ty, self.rows));
                let bytes = if tiled {
                    let row_bytes = bytes.len / self.rows;
                    WeightBytes::from_vec(quant_tiles::tile(ty, bytes.as_slice(), row_bytes))
                } else {
                    bytes.clone()
                };
                Self {
                    storage: Storage::Quant {
                        ty,
                        bytes,
                        tiled,
                        decode: true,
                    },
                    ..self
                }
            }
            _ => self,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn ty(&self) -> WeightType {
        match &self.storage {
            Storage::F32(_) => WeightType::Ggml(GgmlType::F32),
            Storage::Quant { ty, .. } => WeightType::Ggml(*ty),
            Storage::Nf4(_) => WeightType::Nf4,
        }
    }

    /// Bytes the values occupy in memory.
    pub fn size_bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(d) => 4 * d.len(),
            Storage::Quant { bytes, .. } => bytes.len,
            Storage::Nf4(q) => q.size_bytes(),
        }
    }

    /// The values, when the weight is held as f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::F32(d) => Some(d),
            Storage::Quant { .. } | Storage::Nf4(_) => None,
        }
    }

    /// Decodes rows `rows` into `out` (`rows.len() · cols` floats): embedding lookups, tiles.
    pub fn dequantize_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        assert!(
            rows.start <= rows.end && rows.end <= self.rows,
            "weight: rows {rows:?} of {}",
            self.rows
        );
        assert_eq!(
            out.len(),
            rows.len() * self.cols,
            "weight: dequantize_rows output"
        );
        match &self.storage {
            Storage::F32(d) => {
                out.copy_from_slice(&d[rows.start * self.cols..rows.end * self.cols])
            }
            Storage::Quant {
                ty,
                bytes,
                tiled: false,
                ..
            } => {
                let rb = bytes.len / self.rows.max(1);
                let src = &bytes.as_slice()[rows.start * rb..rows.end * rb];
                dequantize(*ty, src, out)
                    .expect("type and length were validated when the weight was built");
            }
            Storage::Quant {
                ty,
                bytes,
                tiled: true,
                ..
            } => {
                let rb = bytes.len / self.rows;
                for (row, o) in rows.zip(out.chunks_exact_mut(self.cols)) {
                    quant_tiles::dequantize_row(*ty, bytes.as_slice(), rb, row, o);
                }
            }
            Storage::Nf4(q) => q.dequantize(rows.start * self.cols, out),
        }
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ` (`+=` when `accumulate`).
    pub fn forward(
        &self,
        y: &mut [f32],
        x: &[f32],
        m: usize,
        accumulate: bool,
        scratch: &mut Scratch,
    ) {
        self.forward_in(y, x, m, accumulate, &mut scratch.mat)
    }

    pub(crate) fn forward_in(
        &self,
        y: &mut [f32],
        x: &[f32],
        m: usize,
        accumulate: bool,
        scratch: &mut MatScratch,
    ) {
        let (n, k) = (self.rows, self.cols);
        assert_eq!(x.len(), m * k, "weight forward: x");
        assert_eq!(y.len(), m * n, "weight forward: y");
        match &self.storage {
            Storage::F32(w) => return matmul_xwt(y, x, w, m, k, n, accumulate),
            Storage::Quant {
                ty,
                bytes,
                tiled,
                decode,
            } => {
                let (ty, bytes, tiled) = (*ty, bytes.as_slice(), *tiled);
                if *decode && scratch.inference {
                    // Every inference product takes the kernels, a bounded number of rows at a
                    // time (their 16-bit copies live in the scratch), so that a row's product is
                    // the same in a batch of any size as alone: past the bound, gemm's f32
                    // product would differ in the last bits. The tiled kernel costs about what
                    // gemm does per row, without the tiles' dequantization; the row-major
                    // kernels cost more past INFERENCE_DOT_ROWS rows (the layout of a kernel
                    // path without tiles).
                    for (y, x) in y
                        .chunks_mut(INFERENCE_DOT_ROWS * n)
                        .zip(x.chunks(INFERENCE_DOT_ROWS * k))
                    {
                        let rows = x.len() / k;
                        self.matvec(ty, bytes, tiled, y, x, rows, accumulate, scratch);
                    }
                    return;
                }
                let dot_rows = if scratch.inference {
                    INFERENCE_DOT_ROWS
                } else {
                    MATVEC_MAX_ROWS
                };
                if m <= dot_rows && has_dot_kernel(ty) {
                    return self.matvec(ty, bytes, tiled, y, x, m, accumulate, scratch);
                }
            }
            Storage::Nf4(_) => {}
        }
        let tile = (TILE_FLOATS / k.max(1)).clamp(1, n.max(1));
        let buf = scratch.floats(tile * k);
        for j0 in (0..n).step_by(tile) {
            let t = tile.min(n - j0);
            let w = &mut buf[..t * k];
            self.dequantize_tile(j0..j0 + t, w);
            gemm_f32(
                m,
                t,
                k,
                &mut y[j0..],
                n,
                1,
                accumulate,
                Mat {
                    data: x,
                    rs: k,
                    cs: 1,
                },
                Mat {
                    data: w,
                    rs: 1,
                    cs: k,
                },
                true,
            );
        }
    }

    /// Input gradient through the frozen weight: `dx[m, cols] = dy[m, rows] · W` (`+=` when
    /// `accumulate`).
    pub fn backward_dx(
        &self,
        dx: &mut [f32],
        dy: &[f32],
        m: usize,
        accumulate: bool,
        scratch: &mut Scratch,
    ) {
        self.backward_dx_in(dx, dy, m, accumulate, &mut scratch.mat)
    }

    pub(crate) fn backward_dx_in(
        &self,
        dx: &mut [f32],
        dy: &[f32],
        m: usize,
        accumulate: bool,
        scratch: &mut MatScratch,
    ) {
        let (n, k) = (self.rows, self.cols);
        assert_eq!(dx.len(), m * k, "weight backward: dx");
        assert_eq!(dy.len(), m * n, "weight backward: dy");
        if let Storage::F32(w) = &self.storage {
            return matmul_dx(dx, dy, w, m, n, k, accumulate);
        }
        if n == 0 {
            if !accumulate {
                dx.fill(0.0);
            }
            return;
        }
        let tile = (TILE_FLOATS / k.max(1)).clamp(1, n);
        let buf = scratch.floats(tile * k);
        for j0 in (0..n).step_by(tile) {
            let t = tile.min(n - j0);
            let w = &mut buf[..t * k];
            self.dequantize_tile(j0..j0 + t, w);
            gemm_f32(
                m,
                k,
                t,
                dx,
                k,
                1,
                accumulate || j0 > 0,
                Mat {
                    data: &dy[j0..],
                    rs: n,
                    cs: 1,
                },
                Mat {
                    data: w,
                    rs: k,
                    cs: 1,
                },
                true,
            );
        }
    }

    /// Dequantizes a tile of rows in parallel (one task per group of rows).
    fn dequantize_tile(&self, rows: Range<usize>, out: &mut [f32]) {
        let k = self.cols;
        let per_task = (4096 / k.max(1)).max(1);
        out.par_chunks_mut(per_task * k)
            .enumerate()
            .for_each(|(c, o)| {
                let r0 = rows.start + c * per_task;
                self.dequantize_rows(r0..r0 + o.len() / k, o);
            });
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ` through the block-wise dot kernels: every activation
    /// row is quantized once, then each task takes a run of weight rows (`tiled`: whole
    /// tiles of the decode layout) and dots each of them with all `m` activation rows while
    /// its blocks are in registers.
    #[allow(clippy::too_many_arguments)]
    fn matvec(
        &self,
        ty: GgmlType,
        bytes: &[u8],
        tiled: bool,
        y: &mut [f32],
        x: &[f32],
        m: usize,
        accumulate: bool,
        scratch: &mut MatScratch,
    ) {
        let (n, k) = (self.rows, self.cols);
        let rb = bytes.len() / n.max(1);
        let nb = k / QK;
        let (floats, ints) = scratch.with_i16(2 * m * nb, 2 * m * k);
        let (d, sums) = floats.split_at_mut(m * nb);
        let (q, pairs) = ints.split_at_mut(m * k);
        for ((((x, q), pairs), d), sums) in x
            .chunks_exact(k)
            .zip(q.chunks_exact_mut(k))
            .zip(pairs.chunks_exact_mut(k))
            .zip(d.chunks_exact_mut(nb))
            .zip(sums.chunks_exact_mut(nb))
        {
            quantize_row(x, q, pairs, d, sums);
        }
        let xs: Vec<XRow<'_>> = (0..m)
            .map(|r| XRow {
                x: &x[r * k..(r + 1) * k],
                q: &q[r * k..(r + 1) * k],
                pairs: &pairs[r * k..(r + 1) * k],
                d: &d[r * nb..(r + 1) * nb],
                sums: &sums[r * nb..(r + 1) * nb],
            })
            .collect();
        if tiled {
            let yp = SyncPtr(y.as_mut_ptr());
            return (0..n.div_ceil(MATVEC_ROWS_PER_TASK))
                .into_par_iter()
                .for_each(|c| {
                    let j0 = c * MATVEC_ROWS_PER_TASK;
                    let t = MATVEC_ROWS_PER_TASK.min(n - j0);
                    let rows = &bytes[j0 * rb..(j0 + t) * rb];
                    // SAFETY: y holds m·n floats (asserted by the caller) and this task alone
                    // writes columns j0..j0+t of every row.
                    unsafe { tiles_dot(ty, rows, rb, &xs, yp, n, j0, accumulate) };
                });
        }
        if m == 1 {
            // One row: the kernels' output layout is y's, so they write it directly.
            return y
                .par_chunks_mut(MATVEC_ROWS_PER_TASK)
                .enumerate()
                .for_each(|(c, out)| {
                    let j = c * MATVEC_ROWS_PER_TASK;
                    let rows = &bytes[j * rb..(j + out.len()) * rb];
                    rows_dot(ty, rows, rb, &xs, out, accumulate);
                });
        }
        let yp = SyncPtr(y.as_mut_ptr());
        (0..n.div_ceil(MATVEC_ROWS_PER_TASK))
            .into_par_iter()
            .for_each(|c| {
                let j0 = c * MATVEC_ROWS_PER_TASK;
                let t = MATVEC_ROWS_PER_TASK.min(n - j0);
                let rows = &bytes[j0 * rb..(j0 + t) * rb];
                // A small buffer, filled for a few activation rows at a time: zeroing one
                // for all of them on every task cost as much as a one-row product's work.
                let mut buf = [0f32; MATVEC_ROWS_PER_TASK * ROWS_PER_PASS];
                for (g, xg) in xs.chunks(ROWS_PER_PASS).enumerate() {
                    let out = &mut buf[..t * xg.len()];
                    rows_dot(ty, rows, rb, xg, out, false);
                    for (jj, vals) in out.chunks_exact(xg.len()).enumerate() {
                        for (i, v) in vals.iter().enumerate() {
                            let r = g * ROWS_PER_PASS + i;
                            // SAFETY: y holds m·n floats (asserted by the caller) and this
                            // task alone writes columns j0..j0+t of every row.
                            unsafe {
                                let o = yp.get().add(r * n + j0 + jj);
                                *o = if accumulate { *o + v } else { *v };
                            }
                        }
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_grad, project, quant_bytes, rand_vec};

    fn weight_of(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Weight {
        let bytes = quant_bytes(ty, rows, cols, seed);
        Weight::from_bytes("w", ty, rows, cols, WeightBytes::from_vec(bytes)).unwrap()
    }

    fn naive(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum();
            }
        }
        y
    }

    const TYPES: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];

    #[test]
    fn quantized_forward_matches_dequantize_then_naive_matmul() {
        let (k, n) = (512, 37);
        let mut scratch = Scratch::new();
        for ty in TYPES {
            let w = weight_of(ty, n, k, 1);
            let mut wf = vec![0f32; n * k];
            w.dequantize_rows(0..n, &mut wf);
            for m in [1, 3, MATVEC_MAX_ROWS + 1] {
                let x = rand_vec(m * k, 2 + m as u64);
                let want = naive(&x, &wf, m, k, n);
                let mut y = vec![0f32; m * n];
                w.forward(&mut y, &x, m, false, &mut scratch);
                // Errors are relative to Σ|w·x|, not to the (cancelling) result.
                for i in 0..m {
                    for j in 0..n {
                        let mag: f64 = (0..k)
                            .map(|t| (x[i * k + t] * wf[j * k + t]).abs() as f64)
                            .sum();
                        // The matrix-vector path rounds activations to 16 bits.
                        let tol = if m <= MATVEC_MAX_ROWS && ty.is_quantized() {
                            1e-4
                        } else {
                            1e-5
                        };
                        let got = y[i * n + j] as f64;
                        assert!(
                            (got - want[i * n + j]).abs() <= tol * mag + 1e-6,
                            "{ty} m={m}: {got} vs {}",
                            want[i * n + j]
                        );
                    }
                }
                let before = y.clone();
                w.forward(&mut y, &x, m, true, &mut scratch);
                for (a, b) in y.iter().zip(&before) {
                    assert!(
                        (a - 2.0 * b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{ty} accumulate"
                    );
                }
            }
        }
    }

    /// A decode step's product over many rows gives each row exactly what that row alone
    /// gives (the dot kernels' per-row arithmetic does not depend on the rows beside it), so a
    /// sequence decodes to the same tokens batched or alone; row counts cross the kernels'
    /// chunk sizes and leave tails, and weight rows are not a multiple of a task's run.
    /// The decode layout: the same values (dequantized rows), and inference products of any
    /// size, past the rows one kernel call takes, each row bit-identical to the row alone and
    /// within rounding of the GGUF layout's product. Forward only: the layout is not trained.
    #[test]
    fn decode_layout_products_equal_each_row_alone_and_the_gguf_layout() {
        let (k, n) = (256, 48);
        let mut scratch = Scratch::for_inference();
        for ty in TYPES.into_iter().filter(|&t| has_dot_kernel(t)) {
            let w = weight_of(ty, n, k, 11);
            let t = w.clone().into_decode_layout();
            let (mut a, mut b) = (vec![0f32; n * k], vec![0f32; n * k]);
            w.dequantize_rows(0..n, &mut a);
            t.dequantize_rows(0..n, &mut b);
            assert_eq!(a, b, "{ty}");
            let m = INFERENCE_DOT_ROWS + 3;
            let x = rand_vec(m * k, 12);
            let (mut y, mut plain) = (vec![0f32; m * n], vec![0f32; m * n]);
            t.forward(&mut y, &x, m, false, &mut scratch);
            w.forward(&mut plain, &x, m, false, &mut scratch);
            let mut alone = vec![0f32; n];
            for r in 0..m {
                t.forward(&mut alone, &x[r * k..(r + 1) * k], 1, false, &mut scratch);
                assert_eq!(&y[r * n..(r + 1) * n], &alone[..], "{ty} row {r}");
            }
            let top = plain.iter().fold(0f32, |m, v| m.max(v.abs()));
            let gap = y
                .iter()
                .zip(&plain)
                .fold(0f32, |g, (a, b)| g.max((a - b).abs()));
            assert!(gap <= 1e-3 * top, "{ty}: gap {gap} of {top}");
        }
    }

    #[test]
    fn many_row_products_equal_each_row_alone() {
        let (k, n) = (800, 70);
        let mut scratch = Scratch::new();
        for ty in TYPES.into_iter().filter(|&t| has_dot_kernel(t)) {
            let k = if ty.block_elems() > QK { 768 } else { k };
            let w = weight_of(ty, n, k, 7);
            for m in [2, 5, 9, MATVEC_MAX_ROWS] {
                let x = rand_vec(m * k, 8 + m as u64);
                let mut y = vec![0f32; m * n];
                w.forward(&mut y, &x, m, false, &mut scratch);
                let mut alone = vec![0f32; n];
                for r in 0..m {
                    w.forward(&mut alone, &x[r * k..(r + 1) * k], 1, false, &mut scratch);
                    assert!(
                        y[r * n..(r + 1) * n]
                            .iter()
                            .zip(&alone)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ty} m={m} row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantized_backward_matches_dequantize_then_naive_product() {
        let (k, n, m) = (256, 300, 5);
        let mut scratch = Scratch::new();
        for ty in TYPES {
            let w = weight_of(ty, n, k, 3);
            let mut wf = vec![0f32; n * k];
            w.dequantize_rows(0..n, &mut wf);
            let dy = rand_vec(m * n, 4);
            let mut dx = vec![1f32; m * k];
            w.backward_dx(&mut dx, &dy, m, true, &mut scratch);
            for i in 0..m {
                for t in 0..k {
                    let want = 1.0
                        + (0..n)
                            .map(|j| dy[i * n + j] as f64 * wf[j * k + t] as f64)
                            .sum::<f64>();
                    assert!(
                        (dx[i * k + t] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{ty}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantized_backward_is_the_gradient_of_the_forward() {
        // m above the matrix-vector threshold: the tile path is exact in x, so finite
        // differences are not blurred by activation quantization.
        let (k, n, m) = (256, 24, MATVEC_MAX_ROWS + 2);
        let mut scratch = Scratch::new();
        for ty in TYPES {
            let w = weight_of(ty, n, k, 7);
            let x = rand_vec(m * k, 8);
            let r = rand_vec(m * n, 9);
            let mut dx = vec![0f32; m * k];
            w.backward_dx(&mut dx, &r, m, false, &mut scratch);
            let mut y = vec![0f32; m * n];
            let mut s2 = Scratch::new();
            check_grad(
                &x,
                &dx,
                |xp| {
                    w.forward(&mut y, xp, m, false, &mut s2);
                    project(&y, &r)
                },
                1e-2,
                2e-3,
                "quantized dx",
            );
        }
    }

    /// NF4 weights: products of every size go through f32 tiles of the dequantized rows, so
    /// they equal the f32 products of those rows, and backward is forward's gradient.
    #[test]
    fn nf4_products_are_those_of_the_dequantized_weight() {
        let (k, n) = (192, 40);
        let w = Weight::from_nf4("w", n, k, Nf4::quantize(&rand_vec(n * k, 21)).unwrap()).unwrap();
        assert_eq!(w.ty(), WeightType::Nf4);
        assert_eq!(w.size_bytes(), n * k / 2 + n * k / 64 + 4 + 4);
        let mut wf = vec![0f32; n * k];
        w.dequantize_rows(0..n, &mut wf);
        let mut part = vec![0f32; 3 * k];
        w.dequantize_rows(5..8, &mut part);
        assert_eq!(part, wf[5 * k..8 * k]);
        let mut scratch = Scratch::new();
        for m in [1, MATVEC_MAX_ROWS + 3] {
            let x = rand_vec(m * k, 22);
            let want = naive(&x, &wf, m, k, n);
            let mut y = vec![0f32; m * n];
            w.forward(&mut y, &x, m, false, &mut scratch);
            for (g, w) in y.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()), "m={m}");
            }
            let r = rand_vec(m * n, 23);
            let mut dx = vec![0f32; m * k];
            w.backward_dx(&mut dx, &r, m, false, &mut scratch);
            let mut s2 = Scratch::new();
            check_grad(
                &x,
                &dx,
                |xp| {
                    w.forward(&mut y, xp, m, false, &mut s2);
                    project(&y, &r)
                },
                1e-2,
                2e-3,
                "nf4 dx",
            );
        }
        assert!(Weight::from_nf4("w", n, k + 64, Nf4::quantize(&wf).unwrap()).is_err());
    }

    #[test]
    fn tiles_smaller_than_the_matrix_cover_every_row() {
        // k large enough that a tile holds fewer rows than the matrix.
        let (k, n, m) = (TILE_FLOATS / 8, 20, MATVEC_MAX_ROWS + 2);
        let w = weight_of(GgmlType::Q8_0, n, k, 5);
        let mut wf = vec![0f32; n * k];
        w.dequantize_rows(0..n, &mut wf);
        let x = rand_vec(m * k, 6);
        let want = naive(&x, &wf, m, k, n);
        let mut y = vec![0f32; m * n];
        w.forward(&mut y, &x, m, false, &mut Scratch::new());
        for (g, w) in y.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 1e-3 * (1.0 + w.abs()));
        }
    }

    #[test]
    fn bad_shapes_and_types_are_errors() {
        let bytes = WeightBytes::from_vec(vec![0u8; 40]);
        assert!(Weight::from_bytes("w", GgmlType::Q4_1, 2, 32, bytes.clone()).is_ok());
        assert!(Weight::from_bytes("w", GgmlType::Q4_1, 3, 32, bytes.clone()).is_err());
        assert!(Weight::from_bytes("w", GgmlType::Q4_1, 1, 48, bytes.clone()).is_err());
        assert!(Weight::from_bytes("w", GgmlType::IQ2_XXS, 1, 256, bytes.clone()).is_err());
        assert!(Weight::from_f32("w", 2, 3, vec![0f32; 5]).is_err());
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(vec![0u8; 8]);
        assert!(WeightBytes::new(owner.clone(), 4..9).is_err());
        assert_eq!(WeightBytes::new(owner, 2..6).unwrap().as_slice().len(), 4);
    }
}
