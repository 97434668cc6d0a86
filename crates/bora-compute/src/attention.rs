//! Causal self-attention with grouped-query heads, an optional sliding window and packed
//! sequences, plus the KV-cache decode variant.
//!
//! The forward never materializes the `[tokens, tokens]` score matrix: each (row, head)
//! streams over its visible keys with an online softmax and saves only the row's
//! log-sum-exp. The backward recomputes the probabilities from `q`, `k` and that
//! log-sum-exp (the flash-attention recipe), so a layer keeps `O(tokens·heads)` extra floats
//! for training instead of `O(tokens²·heads)`.

use std::ops::Range;

use rayon::prelude::*;

use crate::simd::{axpy, dot, SyncPtr};

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

/// The online-softmax forward shared by training and decoding: for every (row, head) pair,
/// attends to `keys(row)` of `k`/`v` and writes the output and, when asked, the row's
/// log-sum-exp of scaled scores.
fn attend(
    out: &mut [f32],
    lse: Option<&mut [f32]>,
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
    let run = |idx: usize, o: &mut [f32]| -> f32 {
        let (row, head) = (idx / h, idx % h);
        let qr = &q[row * h * hd + head * hd..][..hd];
        let koff = (head / group) * hd;
        o.fill(0.0);
        let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
        for j in keys(row) {
            let s = dot(qr, &k[j * kvw + koff..][..hd]) * shape.scale;
            if s > m {
                let c = (m - s).exp();
                l *= c;
                for x in o.iter_mut() {
                    *x *= c;
                }
                m = s;
            }
            let p = (s - m).exp();
            l += p;
            axpy(o, p, &v[j * kvw + koff..][..hd]);
        }
        let inv = 1.0 / l;
        for x in o.iter_mut() {
            *x *= inv;
        }
        m + l.ln()
    };
    match lse {
        Some(lse) => out
            .par_chunks_mut(hd)
            .zip(lse.par_iter_mut())
            .enumerate()
            .for_each(|(idx, (o, s))| *s = run(idx, o)),
        None => out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
            run(idx, o);
        }),
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
    attend(out, Some(lse), q, k, v, shape, |row| {
        let start = segments[segments.partition_point(|&s| s <= row) - 1];
        shape.first_key(start, row)..row + 1
    });
}

/// Decode/prefill against a KV cache of one sequence: `q` holds `m` new rows at positions
/// `first_pos..first_pos+m`, whose keys and values the caller has already appended, so
/// `k_cache`/`v_cache` (`[cached, n_kv_heads·head_dim]`) hold at least `first_pos + m` rows.
/// No log-sum-exp is kept: generation has no backward.
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
    attend(out, None, q, k_cache, v_cache, shape, |row| {
        let pos = first_pos + row;
        shape.first_key(0, pos)..pos + 1
    });
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
        let rows = segments[seg]..segments[seg + 1];
        let koff = g * hd;
        // SAFETY: this task is the only one touching rows `rows` of kv-head column block `g`
        // in dk/dv and of query heads `g·group..(g+1)·group` in dq (tasks differ in segment
        // or kv head, and query heads belong to exactly one kv head); all indices are in
        // bounds by the length checks above.
        let dq_at = |row: usize, head: usize| unsafe {
            std::slice::from_raw_parts_mut(dqp.get().add(row * qw + head * hd), hd)
        };
        let dk_at = |row: usize| unsafe {
            std::slice::from_raw_parts_mut(dkp.get().add(row * kvw + koff), hd)
        };
        let dv_at = |row: usize| unsafe {
            std::slice::from_raw_parts_mut(dvp.get().add(row * kvw + koff), hd)
        };
        for row in rows.clone() {
            dk_at(row).fill(0.0);
            dv_at(row).fill(0.0);
        }
        for head in g * group..(g + 1) * group {
            for i in rows.clone() {
                let qi = &q[i * qw + head * hd..][..hd];
                let doi = &dout[i * qw + head * hd..][..hd];
                let delta = dot(doi, &out[i * qw + head * hd..][..hd]);
                let li = lse[i * h + head];
                let dqi = dq_at(i, head);
                dqi.fill(0.0);
                for j in shape.first_key(rows.start, i)..i + 1 {
                    let kj = &k[j * kvw + koff..][..hd];
                    let p = (dot(qi, kj) * shape.scale - li).exp();
                    let dp = dot(doi, &v[j * kvw + koff..][..hd]);
                    let ds = p * (dp - delta) * shape.scale;
                    axpy(dqi, ds, kj);
                    axpy(dk_at(j), ds, qi);
                    axpy(dv_at(j), p, doi);
                }
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
    fn decode_matches_the_dense_reference_on_the_last_rows() {
        let s = shape(Some(5));
        let t = 11;
        let q = rand_vec(t * 32, 4);
        let k = rand_vec(t * 16, 5);
        let v = rand_vec(t * 16, 6);
        let want = reference(&q, &k, &v, &[0, t], &s);
        let first = 8;
        let mut out = vec![0f32; (t - first) * 32];
        attention_decode(&mut out, &q[first * 32..], &k, &v, first, &s);
        assert_close(&out, &want[first * 32..], 1e-5, "decode out");
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
