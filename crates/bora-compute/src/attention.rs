//! Causal self-attention with grouped-query heads, an optional sliding window and packed
//! sequences, plus the KV-cache decode variant.
//!
//! Training never materializes the `[tokens, tokens]` score matrix: queries are taken in
//! blocks of [`BLOCK`] rows, whose scores against their visible keys are one small `gemm`,
//! masked and normalized in place, then multiplied by the values with a second `gemm`. Only
//! each row's log-sum-exp is saved; the backward recomputes the probabilities from `q`, `k`
//! and it (the flash-attention recipe), so a layer keeps `O(tokens·heads)` extra floats for
//! training instead of `O(tokens²·heads)`. Decoding, a few rows against a long cache,
//! streams over the keys with an online softmax instead.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::activation::{exp, exp_sum, multiversion, row_max, scale_row};
use crate::matmul::gemm_raw;
use crate::simd::{axpy_body, dot, dot_body, has_avx2, SyncPtr};

/// Query rows per block: large enough for `gemm` to be efficient, small enough that a
/// block's scores (`BLOCK × visible keys`) stay in L2.
const BLOCK: usize = 64;

/// From this many new rows on, a cached forward runs blocked: below it the per-block `gemm`
/// setup costs more than streaming rows through an online softmax.
const DECODE_BLOCKED_ROWS: usize = 8;

thread_local! {
    /// Per-thread room for a block's scores and their gradient. Grows to the largest block
    /// once, then is reused by every later call on that thread; tasks hold it only while
    /// running single-threaded `gemm`s, so no other task can run on the thread meanwhile.
    static BLOCK_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_block_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    BLOCK_SCRATCH.with(|cell| {
        let mut v = cell.borrow_mut();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        f(&mut v[..len])
    })
}

/// Head layout and masking of one attention call. Passed per call, so models whose layers
/// alternate sliding-window and full attention simply pass a different `window` per layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    pub n_heads: usize,
    /// Key/value heads; `n_heads` must be a multiple (query head `h` reads kv head
    /// `h / (n_heads / n_kv_heads)`).
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// A query at position `i` sees keys at `i − window < j ≤ i` (transformers'
    /// `sliding_window` semantics); `None` for full causal attention.
    pub window: Option<usize>,
    /// Multiplier of `q·k`, normally `1/sqrt(head_dim)`.
    pub scale: f32,
}

impl AttentionShape {
    fn check(&self) {
        assert!(
            self.n_heads > 0 && self.n_kv_heads > 0 && self.head_dim > 0,
            "attention: empty shape {self:?}"
        );
        assert_eq!(
            self.n_heads % self.n_kv_heads,
            0,
            "attention: n_heads must be a multiple of n_kv_heads"
        );
        assert_ne!(
            self.window,
            Some(0),
            "attention: a window of 0 sees nothing"
        );
        assert!(self.scale > 0.0, "attention: scale must be positive");
    }

    fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// First visible key for a query at `pos` whose sequence starts at `start`.
    fn first_key(&self, start: usize, pos: usize) -> usize {
        match self.window {
            Some(w) if pos + 1 > w => start.max(pos + 1 - w),
            _ => start,
        }
    }

    /// The keys query rows `i0..i1` of a block see together.
    fn block_keys(&self, seg_start: usize, i0: usize, i1: usize) -> Range<usize> {
        self.first_key(seg_start, i0)..i1
    }
}

/// Checks `segments` is a cumulative list of sequence starts `[0, …, tokens]`.
fn check_segments(segments: &[usize], tokens: usize) {
    assert!(
        segments.len() >= 2 && segments[0] == 0 && *segments.last().unwrap_or(&0) == tokens,
        "attention: segments must run from 0 to the token count {tokens}"
    );
    assert!(
        segments.windows(2).all(|w| w[0] < w[1]),
        "attention: segments must be strictly increasing"
    );
}

/// The streaming forward of decoding: for every (row, head) pair, attends to `keys(row)` of
/// `k`/`v`.
fn attend_streaming(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttentionShape,
    keys: impl Fn(usize) -> Range<usize> + Sync,
) {
    let (h, hd, kvw) = (
        shape.n_heads,
        shape.head_dim,
        shape.n_kv_heads * shape.head_dim,
    );
    let group = shape.group();
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let (row, head) = (idx / h, idx % h);
        let qr = &q[row * h * hd + head * hd..][..hd];
        let koff = (head / group) * hd;
        SCORES.with(|scores| {
            let scores = &mut scores.borrow_mut();
            let (k, v) = (&k[koff..], &v[koff..]);
            #[cfg(target_arch = "x86_64")]
            if let Some(f) = x86_512::attend_row_for(hd) {
                // SAFETY: `attend_row_for` returns a kernel only on the AVX-512 path.
                return unsafe { f(o, qr, k, v, kvw, keys(row), shape.scale, scores) };
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the kernel path is AVX2 or wider, which the CPU supports.
                return unsafe { attend_row_fma(o, qr, k, v, kvw, keys(row), shape.scale, scores) };
            }
            attend_row::<false>(o, qr, k, v, kvw, keys(row), shape.scale, scores)
        })
    });
}

thread_local! {
    /// One head's attention scores during decoding, reused across calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One query row of one head against rows `keys` of the cache (`k`, `v` start at the head's
/// column, rows `kvw` apart): all scores first, then the softmax with the final maximum and
/// one pass over the values. The online softmax this replaced rescaled the output whenever
/// the maximum grew and probed CPU features twice per key; the two passes here are
/// branch-free loops with the vector bodies inlined.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_row<const FMA: bool>(
    o: &mut [f32],
    qr: &[f32],
    k: &[f32],
    v: &[f32],
    kvw: usize,
    keys: Range<usize>,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let hd = qr.len();
    scores.clear();
    let mut m = f32::NEG_INFINITY;
    for j in keys.clone() {
        let s = dot_body::<FMA>(qr, &k[j * kvw..][..hd]) * scale;
        m = m.max(s);
        scores.push(s);
    }
    o.fill(0.0);
    let mut l = 0f32;
    for (j, s) in keys.zip(scores.iter()) {
        let p = (s - m).exp();
        l += p;
        axpy_body::<FMA>(o, p, &v[j * kvw..][..hd]);
    }
    let inv = 1.0 / l;
    for x in o.iter_mut() {
        *x *= inv;
    }
}

/// [`attend_row`] compiled with AVX2+FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_row_fma(
    o: &mut [f32],
    qr: &[f32],
    k: &[f32],
    v: &[f32],
    kvw: usize,
    keys: Range<usize>,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    attend_row::<true>(o, qr, k, v, kvw, keys, scale, scores)
}

/// AVX-512 decode attention for the common head sizes: with the head size a compile-time
/// multiple of 16, the output row and the query stay in registers for the whole pass over
/// the cache, where the generic body reloads and stores the output for every key.
#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Signature of [`attend_row`]'s specializations (same arguments as the generic one).
    pub(super) type AttendRow =
        unsafe fn(&mut [f32], &[f32], &[f32], &[f32], usize, Range<usize>, f32, &mut Vec<f32>);

    /// The specialization for head size `hd`, if there is one and the kernel path is
    /// AVX-512.
    pub(super) fn attend_row_for(hd: usize) -> Option<AttendRow> {
        if crate::cpu_path() != crate::CpuPath::Avx512 {
            return None;
        }
        match hd {
            32 => Some(attend_row::<2>),
            64 => Some(attend_row::<4>),
            128 => Some(attend_row::<8>),
            _ => None,
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F; `qr` and `o` hold `16·NV` floats.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn attend_row<const NV: usize>(
        o: &mut [f32],
        qr: &[f32],
        k: &[f32],
        v: &[f32],
        kvw: usize,
        keys: Range<usize>,
        scale: f32,
        scores: &mut Vec<f32>,
    ) {
        // SAFETY: the caller guarantees AVX-512F (this function's contract); the raw loads and
        // stores stay inside `qr` and `o` (16·NV floats, asserted) and the key/value rows, sliced
        // to `hd` floats by the checked indexing above each pointer.
        unsafe {
            let hd = 16 * NV;
            assert!(qr.len() == hd && o.len() == hd);
            let mut qv = [_mm512_setzero_ps(); NV];
            for (c, r) in qv.iter_mut().enumerate() {
                *r = _mm512_loadu_ps(qr.as_ptr().add(16 * c));
            }
            scores.clear();
            let mut m = f32::NEG_INFINITY;
            for j in keys.clone() {
                let kp = k[j * kvw..][..hd].as_ptr();
                let mut acc = _mm512_setzero_ps();
                for (c, q) in qv.iter().enumerate() {
                    acc = _mm512_fmadd_ps(*q, _mm512_loadu_ps(kp.add(16 * c)), acc);
                }
                let s = _mm512_reduce_add_ps(acc) * scale;
                m = m.max(s);
                scores.push(s);
            }
            let mut ov = [_mm512_setzero_ps(); NV];
            let mut l = 0f32;
            for (j, s) in keys.zip(scores.iter()) {
                let p = (s - m).exp();
                l += p;
                let vp = v[j * kvw..][..hd].as_ptr();
                let pv = _mm512_set1_ps(p);
                for (c, r) in ov.iter_mut().enumerate() {
                    *r = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vp.add(16 * c)), *r);
                }
            }
            let inv = _mm512_set1_ps(1.0 / l);
            for (c, r) in ov.iter().enumerate() {
                _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), _mm512_mul_ps(*r, inv));
            }
        }
    }
}

/// Where one head's rows live: base offset of row 0 and the row stride.
#[derive(Clone, Copy)]
struct HeadView {
    base: usize,
    stride: usize,
}

impl HeadView {
    fn at(self, row: usize) -> usize {
        self.base + row * self.stride
    }
}

/// `dst[nq, nk] = a[rows…] · b[keys…]ᵀ` for one head: scores (`a = q`, `b = k`) or the
/// probability gradient (`a = dout`, `b = v`). `dst` is a dense block.
///
/// # Safety
/// Rows `r0..r0+nq` of `a` and `k0..k0+nk` of `b` with `hd` columns at the views must be in
/// bounds.
#[allow(clippy::too_many_arguments)]
unsafe fn block_abt(
    dst: &mut [f32],
    a: *const f32,
    av: HeadView,
    r0: usize,
    nq: usize,
    b: *const f32,
    bv: HeadView,
    k0: usize,
    nk: usize,
    hd: usize,
) {
    // SAFETY: the rows of `a` and `b` read are in bounds by this function's contract, and `dst` is
    // the dense nq×nk block gemm writes.
    unsafe {
        gemm_raw(
            nq,
            nk,
            hd,
            dst.as_mut_ptr(),
            (nk, 1),
            false,
            (a.add(av.at(r0)), av.stride, 1),
            (b.add(bv.at(k0)), 1, bv.stride),
            false,
        );
    }
}

/// Training/prefill forward over packed sequences.
///
/// `q` is `[tokens, n_heads·head_dim]`, `k`/`v` are `[tokens, n_kv_heads·head_dim]` (RoPE
/// already applied), `out` is like `q`. `segments` lists the cumulative sequence starts
/// `[0, len₀, len₀+len₁, …, tokens]`: attention never crosses from one sequence into
/// another, which is what makes packing several examples into one row safe. `lse`
/// (`[tokens, n_heads]`) receives what [`attention_backward`] needs.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    segments: &[usize],
    shape: &AttentionShape,
) {
    shape.check();
    let (h, hd, kvw) = (
        shape.n_heads,
        shape.head_dim,
        shape.n_kv_heads * shape.head_dim,
    );
    let tokens = q.len() / (h * hd);
    assert_eq!(q.len(), tokens * h * hd, "attention: q");
    assert_eq!(out.len(), q.len(), "attention: out");
    assert_eq!(k.len(), tokens * kvw, "attention: k");
    assert_eq!(v.len(), tokens * kvw, "attention: v");
    assert_eq!(lse.len(), tokens * h, "attention: lse");
    check_segments(segments, tokens);
    let (outp, lsep) = (SyncPtr(out.as_mut_ptr()), SyncPtr(lse.as_mut_ptr()));
    (0..segments.len() - 1).into_par_iter().for_each(|seg| {
        let rows = segments[seg]..segments[seg + 1];
        // SAFETY: segments are disjoint, so each call writes its own rows of out and lse;
        // lengths were checked above.
        unsafe {
            forward_blocks(
                outp,
                Some(lsep),
                q,
                k,
                v,
                shape,
                rows.clone(),
                0,
                rows.start,
            )
        };
    });
}

/// Blocked forward of one sequence: query rows `rows` of `q`/`out`, where row `i` sits at
/// index `i + pos_offset` of `k`/`v` and sees keys from `key_start` on (its sequence start).
///
/// # Safety
/// `out` (and `lse`, `[rows, n_heads]`) must be valid for the query rows, nothing else may
/// touch those rows meanwhile, and `k`/`v` must hold rows up to `rows.end + pos_offset`.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_blocks(
    out: SyncPtr,
    lse: Option<SyncPtr>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttentionShape,
    rows: Range<usize>,
    pos_offset: usize,
    key_start: usize,
) {
    let (h, hd, kvw) = (
        shape.n_heads,
        shape.head_dim,
        shape.n_kv_heads * shape.head_dim,
    );
    let group = shape.group();
    let blocks = rows.len().div_ceil(BLOCK);
    (0..h * blocks).into_par_iter().for_each(|task| {
        let (head, blk) = (task / blocks, task % blocks);
        let i0 = rows.start + blk * BLOCK;
        let i1 = (i0 + BLOCK).min(rows.end);
        let keys = shape.block_keys(key_start, i0 + pos_offset, i1 + pos_offset);
        let (nq, nk) = (i1 - i0, keys.len());
        let qv = HeadView {
            base: head * hd,
            stride: h * hd,
        };
        let kv = HeadView {
            base: (head / group) * hd,
            stride: kvw,
        };
        with_block_scratch(nq * nk, |p| {
            // SAFETY: in bounds per the function contract; this task alone writes rows
            // i0..i1 of head `head` in out and lse.
            unsafe {
                block_abt(
                    p,
                    q.as_ptr(),
                    qv,
                    i0,
                    nq,
                    k.as_ptr(),
                    kv,
                    keys.start,
                    nk,
                    hd,
                )
            };
            for (r, row) in p.chunks_mut(nk).enumerate() {
                let pos = i0 + r + pos_offset;
                let vis = shape.first_key(key_start, pos) - keys.start..pos + 1 - keys.start;
                let m = row_max(&row[vis.clone()]) * shape.scale;
                row[..vis.start].fill(0.0);
                row[vis.end..].fill(0.0);
                let l = exp_sum(&mut row[vis.clone()], shape.scale, m);
                scale_row(&mut row[vis], (1.0 / l) as f32);
                if let Some(lse) = lse {
                    // SAFETY: row i0+r, column `head` lies inside `lse`'s [rows, n_heads] (function
                    // contract), and only this task writes it.
                    unsafe { *lse.get().add((i0 + r) * h + head) = m + (l as f32).ln() };
                }
            }
            // SAFETY: rows i0..i1 of head `head` in `out` are in bounds and written by this task
            // alone (function contract); `p` is the dense nq×nk block and `v` holds keys `keys`.
            unsafe {
                gemm_raw(
                    nq,
                    hd,
                    nk,
                    out.get().add(qv.at(i0)),
                    (qv.stride, 1),
                    false,
                    (p.as_ptr(), nk, 1),
                    (v.as_ptr().add(kv.at(keys.start)), kv.stride, 1),
                    false,
                )
            };
        });
    });
}

/// Decode/prefill against a KV cache of one sequence: `q` holds `m` new rows at positions
/// `first_pos..first_pos+m`, whose keys and values the caller has already appended, so
/// `k_cache`/`v_cache` (`[cached, n_kv_heads·head_dim]`) hold at least `first_pos + m` rows.
/// No log-sum-exp is kept: generation has no backward. A long prefill (at least
/// [`DECODE_BLOCKED_ROWS`] rows) runs blocked like training; fewer rows stream over the cache.
pub fn attention_decode(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    first_pos: usize,
    shape: &AttentionShape,
) {
    shape.check();
    let (h, hd, kvw) = (
        shape.n_heads,
        shape.head_dim,
        shape.n_kv_heads * shape.head_dim,
    );
    let m = q.len() / (h * hd);
    assert_eq!(q.len(), m * h * hd, "attention_decode: q");
    assert_eq!(out.len(), q.len(), "attention_decode: out");
    assert_eq!(
        k_cache.len(),
        v_cache.len(),
        "attention_decode: k/v cache lengths differ"
    );
    assert!(
        k_cache.len() >= (first_pos + m) * kvw,
        "attention_decode: cache holds fewer than {} rows",
        first_pos + m
    );
    if m >= DECODE_BLOCKED_ROWS {
        // SAFETY: out holds exactly the m query rows; the cache covers rows up to
        // first_pos + m (checked above).
        unsafe {
            forward_blocks(
                SyncPtr(out.as_mut_ptr()),
                None,
                q,
                k_cache,
                v_cache,
                shape,
                0..m,
                first_pos,
                0,
            )
        };
        return;
    }
    attend_streaming(out, q, k_cache, v_cache, shape, |row| {
        let pos = first_pos + row;
        shape.first_key(0, pos)..pos + 1
    });
}

multiversion! {
    /// One row of the backward's recomputed probabilities and score gradients over its
    /// visible keys: `p = e^(s·scale − lse)` from the raw scores in `p`, and
    /// `ds = p·(dp − delta)·scale` from the probability gradient in `ds`.
    fn probability_gradient(p: &mut [f32], ds: &mut [f32], scale: f32, lse: f32, delta: f32) {
        let ds = &mut ds[..p.len()];
        for (pj, dj) in p.iter_mut().zip(ds.iter_mut()) {
            *pj = exp(*pj * scale - lse);
            *dj = *pj * (*dj - delta) * scale;
        }
    }
}

/// Backward of [`attention_forward`]: overwrites `dq`, `dk`, `dv` from `dout` and the saved
/// `out` and `lse`.
///
/// Work is split by (sequence, kv head): such a task owns the rows of `dk`/`dv` for its kv
/// head in its sequence and the `dq` rows of the query heads that read them, so tasks never
/// write the same element and no reduction across threads is needed.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    segments: &[usize],
    shape: &AttentionShape,
) {
    shape.check();
    let (h, hd, kvh) = (shape.n_heads, shape.head_dim, shape.n_kv_heads);
    let (qw, kvw) = (h * hd, kvh * hd);
    let tokens = q.len() / qw;
    assert_eq!(q.len(), tokens * qw, "attention: q");
    for (len, what) in [(dq.len(), "dq"), (dout.len(), "dout"), (out.len(), "out")] {
        assert_eq!(len, q.len(), "attention: {what}");
    }
    for (len, what) in [
        (k.len(), "k"),
        (v.len(), "v"),
        (dk.len(), "dk"),
        (dv.len(), "dv"),
    ] {
        assert_eq!(len, tokens * kvw, "attention: {what}");
    }
    assert_eq!(lse.len(), tokens * h, "attention: lse");
    check_segments(segments, tokens);
    let group = shape.group();
    let (dqp, dkp, dvp) = (
        SyncPtr(dq.as_mut_ptr()),
        SyncPtr(dk.as_mut_ptr()),
        SyncPtr(dv.as_mut_ptr()),
    );
    let n_seg = segments.len() - 1;
    (0..n_seg * kvh).into_par_iter().for_each(|task| {
        let (seg, g) = (task / kvh, task % kvh);
        let (start, end) = (segments[seg], segments[seg + 1]);
        let kv = HeadView {
            base: g * hd,
            stride: kvw,
        };
        // SAFETY (every raw access below): this task is the only one touching rows
        // start..end of kv-head column block `g` in dk/dv and of query heads
        // g·group..(g+1)·group in dq (tasks differ in segment or kv head, and each query
        // head belongs to exactly one kv head); all rows are in bounds by the length checks.
        for row in start..end {
            // SAFETY: as above: this task alone owns rows start..end of kv head `g` in dk and dv.
            unsafe {
                std::slice::from_raw_parts_mut(dkp.get().add(kv.at(row)), hd).fill(0.0);
                std::slice::from_raw_parts_mut(dvp.get().add(kv.at(row)), hd).fill(0.0);
            }
        }
        for head in g * group..(g + 1) * group {
            let qv = HeadView {
                base: head * hd,
                stride: qw,
            };
            for i0 in (start..end).step_by(BLOCK) {
                let i1 = (i0 + BLOCK).min(end);
                let keys = shape.block_keys(start, i0, i1);
                let (nq, nk) = (i1 - i0, keys.len());
                with_block_scratch(2 * nq * nk, |buf| {
                    let (p, ds) = buf.split_at_mut(nq * nk);
                    // SAFETY: as above: rows i0..i1 of query head `head` and keys `keys` of kv head
                    // `g` are in bounds.
                    unsafe {
                        block_abt(
                            p,
                            q.as_ptr(),
                            qv,
                            i0,
                            nq,
                            k.as_ptr(),
                            kv,
                            keys.start,
                            nk,
                            hd,
                        );
                        block_abt(
                            ds,
                            dout.as_ptr(),
                            qv,
                            i0,
                            nq,
                            v.as_ptr(),
                            kv,
                            keys.start,
                            nk,
                            hd,
                        );
                    }
                    for (r, (prow, dsrow)) in p.chunks_mut(nk).zip(ds.chunks_mut(nk)).enumerate() {
                        let i = i0 + r;
                        let vis = shape.first_key(start, i) - keys.start..i + 1 - keys.start;
                        let li = lse[i * h + head];
                        let delta = dot(&dout[qv.at(i)..][..hd], &out[qv.at(i)..][..hd]);
                        for row in [&mut *prow, &mut *dsrow] {
                            row[..vis.start].fill(0.0);
                            row[vis.end..].fill(0.0);
                        }
                        let (pv, dv) = (&mut prow[vis.clone()], &mut dsrow[vis]);
                        probability_gradient(pv, dv, shape.scale, li, delta);
                    }
                    // SAFETY: as above: this task alone writes these rows of dq, dk and dv, and
                    // every row read is in bounds.
                    unsafe {
                        let (ks, kst) = (k.as_ptr().add(kv.at(keys.start)), kv.stride);
                        gemm_raw(
                            nq,
                            hd,
                            nk,
                            dqp.get().add(qv.at(i0)),
                            (qw, 1),
                            false,
                            (ds.as_ptr(), nk, 1),
                            (ks, kst, 1),
                            false,
                        );
                        let dkd = dkp.get().add(kv.at(keys.start));
                        gemm_raw(
                            nk,
                            hd,
                            nq,
                            dkd,
                            (kst, 1),
                            true,
                            (ds.as_ptr(), 1, nk),
                            (q.as_ptr().add(qv.at(i0)), qw, 1),
                            false,
                        );
                        let dvd = dvp.get().add(kv.at(keys.start));
                        gemm_raw(
                            nk,
                            hd,
                            nq,
                            dvd,
                            (kst, 1),
                            true,
                            (p.as_ptr(), 1, nk),
                            (dout.as_ptr().add(qv.at(i0)), qw, 1),
                            false,
                        );
                    }
                });
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, check_grad, project, rand_vec};

    /// Dense reference: full score matrix, explicit mask, softmax, in f64.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        segments: &[usize],
        s: &AttentionShape,
    ) -> Vec<f64> {
        let (h, hd, kvh) = (s.n_heads, s.head_dim, s.n_kv_heads);
        let t = q.len() / (h * hd);
        let seg_of = |i: usize| {
            (0..segments.len() - 1)
                .find(|&g| segments[g] <= i && i < segments[g + 1])
                .unwrap()
        };
        let mut out = vec![0f64; q.len()];
        for head in 0..h {
            let g = head / (h / kvh);
            for i in 0..t {
                let mut scores = vec![f64::NEG_INFINITY; t];
                for (j, sc) in scores.iter_mut().enumerate() {
                    let visible =
                        j <= i && seg_of(j) == seg_of(i) && s.window.is_none_or(|w| i - j < w);
                    if visible {
                        *sc = (0..hd)
                            .map(|d| {
                                q[i * h * hd + head * hd + d] as f64
                                    * k[j * kvh * hd + g * hd + d] as f64
                            })
                            .sum::<f64>()
                            * s.scale as f64;
                    }
                }
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                for (j, sc) in scores.iter().enumerate() {
                    let p = (sc - m).exp() / z;
                    for d in 0..hd {
                        out[i * h * hd + head * hd + d] += p * v[j * kvh * hd + g * hd + d] as f64;
                    }
                }
            }
        }
        out
    }

    fn shape(window: Option<usize>) -> AttentionShape {
        AttentionShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
            window,
            scale: 1.0 / 8f32.sqrt(),
        }
    }

    #[test]
    fn forward_matches_dense_reference_with_gqa_window_and_packing() {
        for (window, segments) in [
            (None, vec![0, 13]),
            (Some(4), vec![0, 13]),
            (Some(3), vec![0, 5, 6, 13]),
        ] {
            let s = shape(window);
            let t = 13;
            let q = rand_vec(t * 32, 1);
            let k = rand_vec(t * 16, 2);
            let v = rand_vec(t * 16, 3);
            let mut out = vec![0f32; t * 32];
            let mut lse = vec![0f32; t * 4];
            attention_forward(&mut out, &mut lse, &q, &k, &v, &segments, &s);
            assert_close(
                &out,
                &reference(&q, &k, &v, &segments, &s),
                1e-5,
                "attention out",
            );
        }
    }

    #[test]
    fn several_query_blocks_match_the_dense_reference_and_finite_differences() {
        let s = shape(Some(BLOCK + 9));
        let segments = [0usize, BLOCK + 5, 2 * BLOCK + 40];
        let t = segments[2];
        let q = rand_vec(t * 32, 11);
        let k = rand_vec(t * 16, 12);
        let v = rand_vec(t * 16, 13);
        let mut out = vec![0f32; t * 32];
        let mut lse = vec![0f32; t * 4];
        attention_forward(&mut out, &mut lse, &q, &k, &v, &segments, &s);
        assert_close(
            &out,
            &reference(&q, &k, &v, &segments, &s),
            1e-5,
            "attention out",
        );
        let dout = rand_vec(t * 32, 14);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        attention_backward(
            &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &segments, &s,
        );
        let loss = |q: &[f32], k: &[f32], v: &[f32]| {
            let mut o = vec![0f32; t * 32];
            let mut l = vec![0f32; t * 4];
            attention_forward(&mut o, &mut l, q, k, v, &segments, &s);
            project(&o, &dout)
        };
        check_grad(&q, &dq, |x| loss(x, &k, &v), 1e-2, 3e-3, "dq");
        check_grad(&k, &dk, |x| loss(&q, x, &v), 1e-2, 3e-3, "dk");
        check_grad(&v, &dv, |x| loss(&q, &k, x), 1e-2, 3e-3, "dv");
    }

    #[test]
    fn streaming_decode_matches_the_dense_reference_for_each_head_size() {
        // 32/64/128 have AVX-512 specializations; 8 and 48 take the generic body.
        for hd in [8, 32, 48, 64, 128] {
            let s = AttentionShape {
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                ..shape(Some(30))
            };
            let t = 40;
            let (qw, kvw) = (s.n_heads * hd, s.n_kv_heads * hd);
            let q = rand_vec(t * qw, 7);
            let k = rand_vec(t * kvw, 8);
            let v = rand_vec(t * kvw, 9);
            let want = reference(&q, &k, &v, &[0, t], &s);
            let first = t - 2;
            let mut out = vec![0f32; (t - first) * qw];
            attention_decode(&mut out, &q[first * qw..], &k, &v, first, &s);
            assert_close(&out, &want[first * qw..], 1e-5, "decode out");
        }
    }

    #[test]
    fn decode_matches_the_dense_reference_on_the_last_rows() {
        let s = shape(Some(5));
        let t = BLOCK + 20;
        let q = rand_vec(t * 32, 4);
        let k = rand_vec(t * 16, 5);
        let v = rand_vec(t * 16, 6);
        let want = reference(&q, &k, &v, &[0, t], &s);
        // Few rows stream; many rows (a prefill) run blocked.
        for first in [t - 3, 0, 5] {
            let mut out = vec![0f32; (t - first) * 32];
            attention_decode(&mut out, &q[first * 32..], &k, &v, first, &s);
            assert_close(&out, &want[first * 32..], 1e-5, "decode out");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let s = shape(Some(4));
        let segments = [0usize, 6, 10];
        let t = 10;
        let q = rand_vec(t * 32, 7);
        let k = rand_vec(t * 16, 8);
        let v = rand_vec(t * 16, 9);
        let dout = rand_vec(t * 32, 10);
        let mut out = vec![0f32; t * 32];
        let mut lse = vec![0f32; t * 4];
        attention_forward(&mut out, &mut lse, &q, &k, &v, &segments, &s);
        let (mut dq, mut dk, mut dv) = (
            vec![9f32; q.len()],
            vec![9f32; k.len()],
            vec![9f32; v.len()],
        );
        attention_backward(
            &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &segments, &s,
        );
        let loss = |q: &[f32], k: &[f32], v: &[f32]| {
            let mut o = vec![0f32; t * 32];
            let mut l = vec![0f32; t * 4];
            attention_forward(&mut o, &mut l, q, k, v, &segments, &s);
            project(&o, &dout)
        };
        check_grad(&q, &dq, |x| loss(x, &k, &v), 1e-2, 3e-3, "dq");
        check_grad(&k, &dk, |x| loss(&q, x, &v), 1e-2, 3e-3, "dk");
        check_grad(&v, &dv, |x| loss(&q, &k, x), 1e-2, 3e-3, "dv");
    }
}
