//! AdamW with decoupled weight decay, the update `torch.optim.AdamW` performs (its
//! single-tensor CPU path), so a run started in PyTorch and a run in bora move the same
//! parameters the same way.

use crate::error::{Result, TrainError};

/// The hyperparameters that stay fixed for a run; the learning rate changes per step and is
/// passed to [`AdamW::step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// Decay rates of the first and second moment running averages.
    pub betas: (f64, f64),
    /// Added to the root of the second moment so tiny gradients do not blow up the step.
    pub eps: f64,
    /// Decoupled decay: the parameter shrinks by `lr * weight_decay` before the Adam step,
    /// independently of the gradient (Loshchilov & Hutter), unlike L2 folded into the grad.
    pub weight_decay: f64,
}

/// Everything AdamW carries between steps; it is what a checkpoint must save for a resumed
/// run to continue bit-for-bit.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    /// Number of updates taken; drives bias correction.
    pub step: u64,
    /// First moment, one buffer per parameter tensor.
    pub exp_avg: Vec<Vec<f32>>,
    /// Second moment, one buffer per parameter tensor.
    pub exp_avg_sq: Vec<Vec<f32>>,
}

impl AdamWState {
    /// Zero moments for tensors of the given element counts.
    pub fn zeros(sizes: &[usize]) -> Self {
        Self {
            step: 0,
            exp_avg: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            exp_avg_sq: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
    state: AdamWState,
}

impl AdamW {
    /// A fresh optimizer for parameter tensors of the given element counts.
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        Self::with_state(config, AdamWState::zeros(sizes))
    }

    /// Resumes from a saved state.
    pub fn with_state(config: AdamWConfig, state: AdamWState) -> Self {
        Self { config, state }
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn state(&self) -> &AdamWState {
        &self.state
    }

    /// One update of every parameter tensor with its gradient at learning rate `lr`.
    ///
    /// Scalars are computed in f64 and rounded to f32 where torch hands a Python float to
    /// an f32 kernel, and the element arithmetic is ordered as torch's kernels order it, so
    /// results agree with PyTorch to rounding.
    pub fn step(&mut self, lr: f64, params: &mut [&mut [f32]], grads: &[&[f32]]) -> Result<()> {
        let n = self.state.exp_avg.len();
        if params.len() != n || grads.len() != n {
            return Err(TrainError::Mismatch {
                what: format!(
                    "AdamW holds state for {n} tensors but got {} parameters and {} gradients",
                    params.len(),
                    grads.len()
                ),
            });
        }
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let len = self.state.exp_avg[i].len();
            if p.len() != len || g.len() != len {
                return Err(TrainError::Mismatch {
                    what: format!(
                        "AdamW tensor {i}: state has {len} elements, parameter {}, gradient {}",
                        p.len(),
                        g.len()
                    ),
                });
            }
        }

        self.state.step += 1;
        let (beta1, beta2) = self.config.betas;
        let t = self.state.step as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2_sqrt = (1.0 - beta2.powf(t)).sqrt();
        let step_size = -(lr / bias_correction1) as f32;
        let decay = (1.0 - lr * self.config.weight_decay) as f32;
        let w1 = (1.0 - beta1) as f32;
        let b2 = beta2 as f32;
        let w2 = (1.0 - beta2) as f32;
        let bc2 = bias_correction2_sqrt as f32;
        let eps = self.config.eps as f32;

        let moments = self
            .state
            .exp_avg
            .iter_mut()
            .zip(&mut self.state.exp_avg_sq);
        for ((p, g), (m, v)) in params.iter_mut().zip(grads).zip(moments) {
            for (((p, &g), m), v) in p.iter_mut().zip(*g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p *= decay;
                *m = lerp(*m, g, w1);
                *v = *v * b2 + w2 * g * g;
                let denom = v.sqrt() / bc2 + eps;
                *p += step_size * *m / denom;
            }
        }
        Ok(())
    }
}

/// torch's CPU lerp: one fused multiply-add, in whichever of the two algebraically equal
/// forms keeps the result exact at its end of the weight range. Plain multiply-then-add
/// drifts from torch's moments by more than 1e-6 relative where they nearly cancel.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        weight.mul_add(end - start, start)
    } else {
        (weight - 1.0).mul_add(end - start, end)
    }
}
