//! Learning-rate schedules with linear warmup, as transformers' `get_*_schedule_with_warmup`
//! define them, so a config ported from a transformers recipe trains with the same LRs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Warmup, then the base LR for ever.
    Constant,
    /// Warmup, then a straight line down to 0 at the last step.
    Linear,
    /// Warmup, then half a cosine down to 0 at the last step.
    Cosine,
}

/// The learning rate of every optimizer step of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: u64,
    /// Optimizer steps in the whole run (the decay reaches 0 here).
    pub total_steps: u64,
}

impl LrSchedule {
    /// The factor applied to `base_lr` for optimizer step `step` (0 for the first update).
    /// Like transformers, the first warmup step has factor 0.
    pub fn multiplier(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                let left = self.total_steps as f64 - step as f64;
                (left / decay_steps).max(0.0)
            }
            ScheduleKind::Cosine => {
                let progress = (step - self.warmup_steps) as f64 / decay_steps;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate for optimizer step `step`.
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.multiplier(step)
    }
}
