//! The learning-rate range test (`train.lr_range_test`, `bora train --auto`): a few dozen
//! steps of a throwaway adapter on the run's own training batches, the learning rate growing
//! geometrically from [`RANGE_START`] to [`RANGE_END`], and the rate chosen from where the
//! loss curve bottoms out (Smith, 2017; fastai's `lr_find`). The run itself then starts from
//! a fresh adapter, so the test changes nothing but `optim.lr`.

use std::time::Instant;

use bora_data::{DataPosition, Loader};
use bora_model::{Lora, Model, Trainer};

use crate::config::RunConfig;
use crate::error::Result;
use crate::grad::{clip_grad_norm, scale_grads};
use crate::optim::AdamW;
use crate::recipe::{fresh_lora, lora_spec, masked_targets, train_batch, DataPlan};
use crate::rng::{Rng, Stream};

/// Steps of the test: one micro-batch each.
pub const RANGE_STEPS: usize = 36;
pub const RANGE_START: f64 = 1e-5;
pub const RANGE_END: f64 = 1e-1;
/// The test ends early once the smoothed loss is this many times its lowest: diverged.
const DIVERGED: f32 = 4.0;
/// Weight of the newest loss in the smoothed curve.
const SMOOTHING: f32 = 0.3;

/// One range test: the rate and loss of every step taken, and its cost.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeTest {
    pub lrs: Vec<f64>,
    pub losses: Vec<f32>,
    pub seconds: f64,
}

/// The rate a range test's curve suggests, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub lr: f64,
    pub reason: String,
}

/// The learning rate of step `i` of `n`.
pub fn range_lr(i: usize, n: usize) -> f64 {
    let t = i as f64 / (n.max(2) - 1) as f64;
    RANGE_START * (RANGE_END / RANGE_START).powf(t)
}

/// A tenth of the rate where the smoothed loss is lowest, the rule of the range test: the
/// lowest point is already at the edge of divergence, and a tenth of it is about where the
/// loss falls fastest. `None` when the curve never falls below its start by 10% (the test
/// learned nothing to judge by) so the caller keeps its rule's rate.
pub fn suggest_lr(lrs: &[f64], losses: &[f32]) -> Option<Suggestion> {
    let mut smoothed = Vec::with_capacity(losses.len());
    let mut average = 0.0f32;
    for (i, &loss) in losses.iter().enumerate() {
        if !loss.is_finite() {
            break;
        }
        average = SMOOTHING * loss + (1.0 - SMOOTHING) * average;
        // Bias correction, as Adam's: early averages are not pulled towards 0.
        smoothed.push(average / (1.0 - (1.0 - SMOOTHING).powi(i as i32 + 1)));
    }
    let (lowest, &min_loss) = smoothed
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))?;
    let start = *smoothed.first()?;
    if min_loss > 0.9 * start {
        return None;
    }
    let at = lrs[lowest];
    let lr: f64 = format!("{:.1e}", at / 10.0).parse().ok()?;
    let rose = smoothed.len() < losses.len() || lowest + 1 < smoothed.len();
    let shape = if rose {
        "then rose"
    } else {
        "still falling at the last rate tried"
    };
    Some(Suggestion {
        lr,
        reason: format!(
            "range test: smoothed loss fell from {start:.3} to {min_loss:.3} at lr {at:.1e} \
             ({shape}); a tenth of that"
        ),
    })
}

/// Runs the range test of `config` on `plan`'s training batches, from the adapter the run
/// itself starts with, and stops early once the loss diverges.
pub fn range_test(config: &RunConfig, plan: &DataPlan, model: &Model) -> Result<RangeTest> {
    let started = Instant::now();
    let t = &config.train;
    let spec = lora_spec(config);
    let mut lora = fresh_lora(config, &model.config, &spec);
    let mut grads = Lora::zeros(&model.config, &spec);
    let sizes: Vec<usize> = lora
        .tensors()
        .into_iter()
        .map(|(_, shape, _)| shape.iter().product())
        .collect();
    let mut optimizer = AdamW::new(config.adamw(), &sizes);
    let mut trainer = Trainer::new(model, &spec, t.batch_size, t.seq_len, t.recompute)?;
    let mut loader = Loader::new(&plan.train, plan.batches, DataPosition::default())?;
    let mut dropout = Rng::new(t.seed, Stream::Dropout);
    let (mut lrs, mut losses) = (Vec::new(), Vec::new());
    let mut lowest = f32::INFINITY;
    for i in 0..RANGE_STEPS {
        let lr = range_lr(i, RANGE_STEPS);
        grads.zero();
        let batch = loader.next_batch();
        let targets = masked_targets(&batch);
        let ce = trainer.forward_backward(
            model,
            &lora,
            &train_batch(&batch, &targets),
            &mut grads,
            dropout.next_u64(),
        )?;
        let loss = (ce.loss_sum / ce.count.max(1) as f64) as f32;
        lrs.push(lr);
        losses.push(loss);
        lowest = lowest.min(loss);
        if !loss.is_finite() || loss > DIVERGED * lowest {
            break;
        }
        let mut slices: Vec<&mut [f32]> =
            grads.tensors_mut().into_iter().map(|(_, _, g)| g).collect();
        scale_grads(&mut slices, 1.0 / ce.count.max(1) as f32);
        if config.optim.max_grad_norm > 0.0 {
            clip_grad_norm(&mut slices, config.optim.max_grad_norm as f32);
        }
        let shared: Vec<&[f32]> = slices.iter().map(|g| &**g).collect();
        let mut weights: Vec<&mut [f32]> =
            lora.tensors_mut().into_iter().map(|(_, _, w)| w).collect();
        optimizer.step(lr, &mut weights, &shared)?;
    }
    Ok(RangeTest {
        lrs,
        losses,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textbook curve: flat while the rate is too small, falling, lowest, then diverging.
    fn curve(n: usize, bottom_at: f64) -> (Vec<f64>, Vec<f32>) {
        let lrs: Vec<f64> = (0..n).map(|i| range_lr(i, n)).collect();
        let losses = lrs
            .iter()
            .map(|&lr| {
                let x = (lr / bottom_at).log10() as f32;
                if x < 0.0 {
                    // From 3.0 at the smallest rates down to 0.5 at the bottom.
                    0.5 + 2.5 / (1.0 + (3.0 * (x + 1.0)).exp())
                } else {
                    0.5 + 4.0 * x * x
                }
            })
            .collect();
        (lrs, losses)
    }

    #[test]
    fn the_rate_is_a_tenth_of_the_smoothed_minimum() {
        let (lrs, losses) = curve(RANGE_STEPS, 2e-2);
        let s = suggest_lr(&lrs, &losses).unwrap();
        // Smoothing lags the curve by a step or two: the lowest smoothed point is at or
        // just after the true bottom, never before it.
        assert!((1.5e-3..=4e-3).contains(&s.lr), "{s:?}");
        assert!(s.reason.contains("range test"), "{}", s.reason);
    }

    #[test]
    fn a_curve_that_never_falls_suggests_nothing() {
        let lrs: Vec<f64> = (0..10).map(|i| range_lr(i, 10)).collect();
        let flat = vec![2.0f32; 10];
        assert_eq!(suggest_lr(&lrs, &flat), None);
        let rising: Vec<f32> = (0..10).map(|i| 2.0 + i as f32).collect();
        assert_eq!(suggest_lr(&lrs, &rising), None);
        assert_eq!(suggest_lr(&[], &[]), None);
    }

    #[test]
    fn a_non_finite_loss_ends_the_curve() {
        let (lrs, mut losses) = curve(RANGE_STEPS, 1e-2);
        let cut = losses.len() - 5;
        losses[cut] = f32::NAN;
        let s = suggest_lr(&lrs, &losses).unwrap();
        assert!(s.lr < 2e-3, "{s:?}");
    }

    #[test]
    fn rates_grow_geometrically_from_start_to_end() {
        assert_eq!(range_lr(0, 36), RANGE_START);
        assert!((range_lr(35, 36) - RANGE_END).abs() < 1e-12);
        let ratio = range_lr(1, 36) / range_lr(0, 36);
        assert!((range_lr(21, 36) / range_lr(20, 36) - ratio).abs() < 1e-9);
    }
}
