//! Cross-entropy over the vocabulary, computed chunk by chunk.
//!
//! A batch of 4×2048 tokens against a 131k vocabulary would need 4 GiB of f32 logits, and
//! the same again for their gradient. Only rows that carry a target matter (prompt tokens
//! are masked), and each row's gradient w.r.t. the hidden state needs only that row's
//! logits, so the loss gathers `chunk_rows` target rows at a time, computes their logits,
//! turns them into `softmax − onehot` in place, multiplies back through the output weight,
//! and scatters the hidden-state gradient. Peak extra memory is `chunk_rows × vocab`.

use rayon::prelude::*;

use crate::activation::{exp_sum, row_max, scale_row};
use crate::arena::Scratch;
use crate::error::ComputeError;
use crate::weight::Weight;
use crate::Result;

/// Summed loss over the rows that had a target, and how many there were; the caller
/// divides (per batch, or across accumulated micro-batches).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropy {
    pub loss_sum: f64,
    pub count: usize,
}

/// One row's loss, `logsumexp(row) − row[target]`, turning the logits into its gradient
/// `scale·(softmax(row) − onehot(target))` in place with one pass of exponentials.
fn softmax_cross_entropy_row(row: &mut [f32], target: usize, scale: f32) -> f64 {
    let max = row_max(row);
    let picked = row[target];
    let sum = exp_sum(row, 1.0, max);
    scale_row(row, (scale as f64 / sum) as f32);
    row[target] -= scale;
    max as f64 + sum.ln() - picked as f64
}

/// Loss of `hidden` (`[tokens, d]`, after the final norm) against `targets` through the
/// output weight `[vocab, d]` (tied embeddings or `lm_head`, possibly quantized).
///
/// `targets[t] = None` masks token t. When `dh` is given it is overwritten with
/// `grad_scale · ∂loss_sum/∂hidden` (zero on masked rows); pass `grad_scale = 1/count` for a
/// mean. Generation needs only logits of the last row: that is [`Weight::forward`].
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_chunked(
    mut dh: Option<&mut [f32]>,
    hidden: &[f32],
    weight: &Weight,
    targets: &[Option<u32>],
    grad_scale: f32,
    chunk_rows: usize,
    scratch: &mut Scratch,
) -> Result<CrossEntropy> {
    let (vocab, d) = (weight.rows(), weight.cols());
    let tokens = targets.len();
    assert_eq!(
        hidden.len(),
        tokens * d,
        "cross_entropy: hidden must be [targets, weight cols]"
    );
    assert!(chunk_rows > 0, "cross_entropy: chunk_rows must be positive");
    for (position, t) in targets.iter().enumerate() {
        if let Some(token) = *t {
            if token as usize >= vocab {
                return Err(ComputeError::Target {
                    position,
                    token,
                    vocab,
                });
            }
        }
    }
    if let Some(dh) = dh.as_deref_mut() {
        assert_eq!(dh.len(), hidden.len(), "cross_entropy: dh");
        dh.fill(0.0);
    }
    let active: Vec<usize> = (0..tokens).filter(|&t| targets[t].is_some()).collect();
    let c = chunk_rows.min(active.len().max(1));
    let (buf, mat) = scratch.split(c * vocab + 2 * c * d);
    let (logits, rest) = buf.split_at_mut(c * vocab);
    let (h, g) = rest.split_at_mut(c * d);
    let mut total = 0f64;
    for rows in active.chunks(c) {
        let n = rows.len();
        for (i, &t) in rows.iter().enumerate() {
            h[i * d..(i + 1) * d].copy_from_slice(&hidden[t * d..(t + 1) * d]);
        }
        let logits = &mut logits[..n * vocab];
        weight.forward_in(logits, &h[..n * d], n, false, mat);
        total += logits
            .par_chunks_mut(vocab)
            .zip(rows.par_iter())
            .map(|(row, &t)| {
                softmax_cross_entropy_row(row, targets[t].unwrap_or(0) as usize, grad_scale)
            })
            .sum::<f64>();
        if let Some(dh) = dh.as_deref_mut() {
            weight.backward_dx_in(&mut g[..n * d], logits, n, false, mat);
            for (i, &t) in rows.iter().enumerate() {
                dh[t * d..(t + 1) * d].copy_from_slice(&g[i * d..(i + 1) * d]);
            }
        }
    }
    Ok(CrossEntropy {
        loss_sum: total,
        count: active.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{check_grad, rand_vec};
    use crate::weight::WeightBytes;
    use bora_formats::quant::{quantize, GgmlType};

    fn reference_loss(
        hidden: &[f32],
        w: &[f32],
        targets: &[Option<u32>],
        vocab: usize,
        d: usize,
    ) -> f64 {
        let mut total = 0f64;
        for (t, target) in targets.iter().enumerate() {
            let Some(target) = target else { continue };
            let logits: Vec<f64> = (0..vocab)
                .map(|v| {
                    (0..d)
                        .map(|i| hidden[t * d + i] as f64 * w[v * d + i] as f64)
                        .sum()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
            total += lse - logits[*target as usize];
        }
        total
    }

    #[test]
    fn chunked_loss_matches_dense_reference_and_finite_differences() {
        let (tokens, d, vocab) = (9, 32, 50);
        let hidden: Vec<f32> = rand_vec(tokens * d, 1).iter().map(|v| 2.0 * v).collect();
        let wv = rand_vec(vocab * d, 2);
        let targets: Vec<Option<u32>> = (0..tokens)
            .map(|t| (t % 3 != 1).then_some((t * 7 % vocab) as u32))
            .collect();
        let want = reference_loss(&hidden, &wv, &targets, vocab, d);
        let w = Weight::from_f32("out", vocab, d, wv.clone()).unwrap();
        let mut scratch = Scratch::new();
        for chunk in [1, 2, 4, 100] {
            let mut dh = vec![7f32; hidden.len()];
            let ce = cross_entropy_chunked(
                Some(&mut dh),
                &hidden,
                &w,
                &targets,
                0.5,
                chunk,
                &mut scratch,
            )
            .unwrap();
            assert_eq!(ce.count, 6);
            assert!(
                (ce.loss_sum - want).abs() < 1e-4 * want.abs(),
                "chunk {chunk}: {} vs {want}",
                ce.loss_sum
            );
            for t in (0..tokens).filter(|t| targets[*t].is_none()) {
                assert!(dh[t * d..(t + 1) * d].iter().all(|&v| v == 0.0));
            }
            let mut s2 = Scratch::new();
            check_grad(
                &hidden,
                &dh,
                |hp| {
                    0.5 * cross_entropy_chunked(None, hp, &w, &targets, 1.0, chunk, &mut s2)
                        .unwrap()
                        .loss_sum
                },
                1e-2,
                2e-3,
                "cross-entropy dh",
            );
        }
    }

    #[test]
    fn quantized_output_weight_matches_its_dequantized_values() {
        let (tokens, d, vocab) = (6, 64, 40);
        let hidden = rand_vec(tokens * d, 3);
        let bytes = quantize(GgmlType::Q8_0, &rand_vec(vocab * d, 4)).unwrap();
        let w = Weight::from_bytes(
            "tok",
            GgmlType::Q8_0,
            vocab,
            d,
            WeightBytes::from_vec(bytes),
        )
        .unwrap();
        let mut wf = vec![0f32; vocab * d];
        w.dequantize_rows(0..vocab, &mut wf);
        let targets: Vec<Option<u32>> = (0..tokens).map(|t| Some(t as u32 * 5)).collect();
        let want = reference_loss(&hidden, &wf, &targets, vocab, d);
        let ce = cross_entropy_chunked(None, &hidden, &w, &targets, 1.0, 6, &mut Scratch::new())
            .unwrap();
        assert!((ce.loss_sum - want).abs() < 1e-4 * want.abs());
    }

    #[test]
    fn out_of_vocabulary_target_is_an_error() {
        let w = Weight::from_f32("out", 4, 2, vec![0f32; 8]).unwrap();
        let r = cross_entropy_chunked(None, &[0.0; 2], &w, &[Some(4)], 1.0, 8, &mut Scratch::new());
        assert!(matches!(
            r,
            Err(ComputeError::Target {
                position: 0,
                token: 4,
                vocab: 4
            })
        ));
    }
}
