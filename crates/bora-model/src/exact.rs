//! Few-row products with quantized weights and f32 activations.
//!
//! bora-compute's decode kernels quantize the activation row to 8 bits before the integer
//! dot (the ggml recipe): fast, but on SmolLM2-135M (Q4_1) it moves single-token logits by
//! up to ~5% of max|logit| against the fp32 reference, enough to flip near-tied greedy
//! choices. This path decodes each weight row to f32 instead and dots it with the f32
//! activations, so decoding agrees with prefill (and transformers) to f32 rounding. It still
//! reads the weights once per token, in their quantized form.

use bora_compute::Weight;
use rayon::prelude::*;

/// Output rows decoded per task: enough work to amortize scheduling, a small buffer.
const ROWS_PER_TASK: usize = 16;

/// `y[m, rows] = x[m, cols] · Wᵀ` (`+=` when `accumulate`), with `x` kept in f32.
pub(crate) fn forward(
    w: &Weight,
    y: &mut [f32],
    x: &[f32],
    m: usize,
    accumulate: bool,
    yt: &mut Vec<f32>,
) {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), m * k, "exact forward: x");
    assert_eq!(y.len(), m * n, "exact forward: y");
    // Results are produced per weight row (all m activation rows at once), i.e. transposed.
    yt.clear();
    yt.resize(n * m, 0.0);
    yt.par_chunks_mut(ROWS_PER_TASK * m)
        .enumerate()
        .for_each_init(
            || vec![0f32; ROWS_PER_TASK * k],
            |buf, (c, out)| {
                let r0 = c * ROWS_PER_TASK;
                let rows = out.len() / m;
                let wrows = &mut buf[..rows * k];
                w.dequantize_rows(r0..r0 + rows, wrows);
                for (wr, o) in wrows.chunks_exact(k).zip(out.chunks_exact_mut(m)) {
                    for (oi, xr) in o.iter_mut().zip(x.chunks_exact(k)) {
                        *oi = dot(wr, xr);
                    }
                }
            },
        );
    for (i, yr) in y.chunks_exact_mut(n).enumerate() {
        for (j, v) in yr.iter_mut().enumerate() {
            let r = yt[j * m + i];
            *v = if accumulate { *v + r } else { r };
        }
    }
}

/// Dot product with eight independent accumulators, so the compiler can vectorize it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_compute::{Scratch, WeightBytes};
    use bora_formats::quant::{quantize, GgmlType};

    #[test]
    fn matches_the_dequantized_gemm_path() {
        let (n, k) = (70, 96);
        let mut rng = crate::sample::Rng::new(3);
        let mut vals = |len: usize| {
            (0..len)
                .map(|_| rng.next_f64() as f32 * 2.0 - 1.0)
                .collect::<Vec<f32>>()
        };
        let wf = vals(n * k);
        let w = Weight::from_bytes(
            "w",
            GgmlType::Q4_1,
            n,
            k,
            WeightBytes::from_vec(quantize(GgmlType::Q4_1, &wf).unwrap()),
        )
        .unwrap();
        let mut deq = vec![0f32; n * k];
        w.dequantize_rows(0..n, &mut deq);
        for m in [1, 3] {
            let x = vals(m * k);
            let mut y = vals(m * n);
            let want: Vec<f64> = (0..m * n)
                .map(|idx| {
                    let (i, j) = (idx / n, idx % n);
                    y[idx] as f64
                        + (0..k)
                            .map(|t| x[i * k + t] as f64 * deq[j * k + t] as f64)
                            .sum::<f64>()
                })
                .collect();
            forward(&w, &mut y, &x, m, true, &mut Vec::new());
            for (g, w) in y.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-4, "{g} vs {w}");
            }
        }
        // The default (Q8-activation) kernel is the one this path exists to avoid; it differs.
        let x = vals(k);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        forward(&w, &mut a, &x, 1, false, &mut Vec::new());
        w.forward(&mut b, &x, 1, false, &mut Scratch::new());
        assert!(a.iter().zip(&b).any(|(p, q)| p != q));
    }
}
