//! What happens to gradients between backward and the optimizer: accumulation over
//! micro-batches, divergence checks and global-norm clipping.

use crate::error::{Result, TrainError};

/// Counts micro-batches into optimizer steps.
///
/// Backward is expected to produce gradients of the *summed* token loss of each micro-batch,
/// added into the same buffers. At the end of a window, [`AccumulatedStep::grad_scale`]
/// (one over the window's loss tokens) turns that sum into the mean over every token of the
/// window, so `grad_accum` micro-batches give exactly the gradient of one big batch, however
/// unevenly the loss tokens fall between them.
#[derive(Debug, Clone)]
pub struct GradAccumulation {
    micro_batches_per_step: u32,
    seen: u32,
    loss_sum: f64,
    tokens: u64,
}

/// One finished accumulation window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccumulatedStep {
    /// Mean token loss over the window.
    pub loss: f32,
    /// Loss tokens in the window.
    pub tokens: u64,
    /// Multiply the accumulated gradients by this before clipping and the update.
    pub grad_scale: f32,
}

impl GradAccumulation {
    pub fn new(micro_batches_per_step: u32) -> Self {
        Self {
            micro_batches_per_step: micro_batches_per_step.max(1),
            seen: 0,
            loss_sum: 0.0,
            tokens: 0,
        }
    }

    /// Records one micro-batch (its summed token loss and its number of loss tokens).
    /// Returns the finished window when this micro-batch completes one, else `None`.
    pub fn add(&mut self, loss_sum: f64, tokens: u64) -> Option<AccumulatedStep> {
        self.seen += 1;
        self.loss_sum += loss_sum;
        self.tokens += tokens;
        (self.seen == self.micro_batches_per_step).then(|| self.finish())
    }

    /// Closes a window early (the data ran out mid-window). `None` if it is empty.
    pub fn flush(&mut self) -> Option<AccumulatedStep> {
        (self.seen > 0).then(|| self.finish())
    }

    /// Micro-batches recorded in the open window.
    pub fn pending(&self) -> u32 {
        self.seen
    }

    fn finish(&mut self) -> AccumulatedStep {
        // A window whose examples are all masked out has no loss tokens; scaling by 1
        // leaves its zero gradients zero instead of dividing by zero.
        let denom = self.tokens.max(1) as f64;
        let step = AccumulatedStep {
            loss: (self.loss_sum / denom) as f32,
            tokens: self.tokens,
            grad_scale: (1.0 / denom) as f32,
        };
        self.seen = 0;
        self.loss_sum = 0.0;
        self.tokens = 0;
        step
    }
}

/// Multiplies every gradient by `scale`.
pub fn scale_grads(grads: &mut [&mut [f32]], scale: f32) {
    for g in grads.iter_mut().flat_map(|g| g.iter_mut()) {
        *g *= scale;
    }
}

/// The L2 norm of all gradients taken together, as torch's `clip_grad_norm_` reports it.
/// Accumulated in f64 so millions of squares do not lose the small ones.
pub fn global_grad_norm(grads: &[&[f32]]) -> f32 {
    let sum: f64 = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    sum.sqrt() as f32
}

/// torch's `clip_grad_norm_`: scales all gradients by `max_norm / (norm + 1e-6)` when that is
/// below 1, and returns the norm measured before clipping. A NaN or infinite norm leaves the
/// gradients untouched (torch would turn them all into NaN), so [`check_grads`] can still
/// name the tensor that diverged.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let shared: Vec<&[f32]> = grads.iter().map(|g| &**g).collect();
    let norm = global_grad_norm(&shared);
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        scale_grads(grads, coef);
    }
    norm
}

/// Fails on a NaN or infinite loss.
pub fn check_loss(step: u64, loss: f32) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(TrainError::NonFinite {
            step,
            what: "loss".into(),
            value: loss,
        })
    }
}

/// Fails on the first NaN or infinite gradient element, naming its tensor and index.
pub fn check_grads(step: u64, grads: &[(&str, &[f32])]) -> Result<()> {
    for (name, g) in grads {
        if let Some((i, &value)) = g.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(TrainError::NonFinite {
                step,
                what: format!("gradient of `{name}` at element {i}"),
                value,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-token loss ½(w·x − y)² of a linear model: the summed loss of a batch and its
    /// gradient with respect to w, computed directly.
    fn sum_loss_and_grad(w: &[f32], batch: &[(Vec<f32>, f32)]) -> (f64, Vec<f32>) {
        let mut grad = vec![0.0f32; w.len()];
        let mut loss = 0.0f64;
        for (x, y) in batch {
            let r: f32 = w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() - y;
            loss += 0.5 * f64::from(r * r);
            for (g, xi) in grad.iter_mut().zip(x) {
                *g += r * xi;
            }
        }
        (loss, grad)
    }

    #[test]
    fn accumulated_window_equals_one_big_batch() {
        let mut rng = crate::Rng::new(5, crate::Stream::Data);
        let w: Vec<f32> = (0..4).map(|_| rng.uniform() - 0.5).collect();
        let tokens: Vec<(Vec<f32>, f32)> = (0..10)
            .map(|_| ((0..4).map(|_| rng.uniform()).collect(), rng.uniform()))
            .collect();
        // Uneven micro-batches: 1, 6 and 3 loss tokens.
        let micro = [&tokens[0..1], &tokens[1..7], &tokens[7..10]];
        let mut acc = GradAccumulation::new(3);
        let mut grad = vec![0.0f32; 4];
        let mut done = None;
        for (i, mb) in micro.iter().enumerate() {
            let (loss, g) = sum_loss_and_grad(&w, mb);
            for (a, b) in grad.iter_mut().zip(&g) {
                *a += b;
            }
            done = acc.add(loss, mb.len() as u64);
            assert_eq!(done.is_some(), i == 2);
        }
        let done = done.unwrap();
        scale_grads(&mut [&mut grad], done.grad_scale);

        let (big_loss, big_grad) = sum_loss_and_grad(&w, &tokens);
        assert_eq!(done.tokens, 10);
        assert!((f64::from(done.loss) - big_loss / 10.0).abs() < 1e-6);
        for (a, b) in grad.iter().zip(&big_grad) {
            assert!((a - b / 10.0).abs() < 1e-6, "{a} vs {}", b / 10.0);
        }
        assert_eq!(acc.pending(), 0);
        assert!(acc.flush().is_none());
        assert!(acc.add(1.0, 2).is_none());
        assert_eq!(acc.flush().map(|s| s.tokens), Some(2));
    }

    #[test]
    fn no_clipping_below_the_limit_and_nan_norm_leaves_grads() {
        let mut g = vec![0.3f32, -0.4];
        let norm = clip_grad_norm(&mut [&mut g], 10.0);
        assert!((norm - 0.5).abs() < 1e-7);
        assert_eq!(g, [0.3, -0.4]);
        let mut g = vec![f32::NAN, 1.0];
        assert!(clip_grad_norm(&mut [&mut g], 1.0).is_nan());
        assert_eq!(g[1], 1.0);
    }

    #[test]
    fn divergence_is_reported_with_its_location() {
        assert!(check_loss(3, 2.5).is_ok());
        let err = check_loss(3, f32::NAN).unwrap_err().to_string();
        assert!(
            err.contains("step 3") && err.contains("loss is NaN"),
            "{err}"
        );
        let good = [0.0f32; 3];
        let bad = [0.0, 1.0, f32::INFINITY];
        assert!(check_grads(1, &[("a", &good)]).is_ok());
        let err = check_grads(9, &[("a", &good), ("b.lora_B", &bad)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("step 9")
                && err.contains("`b.lora_B` at element 2")
                && err.contains("inf"),
            "{err}"
        );
    }
}
