//! Early stopping on validation loss: the adapter of the lowest validation loss so far is
//! kept in `best-adapter/` (with its step and loss in `best.json`, published together), the
//! run stops once `train.patience` validations in a row have not beaten it, and that adapter
//! becomes the run's final one. "How many epochs" then has an answer the user does not guess.
//!
//! A resumed run stays bit-exact without any early-stopping state in the checkpoint: the
//! best adapter on disk is read only when its step is at or before the checkpoint's. A later
//! one was written by the killed session after its last checkpoint; replaying the same steps
//! writes it again, identically, and can stop no earlier than the killed session would have
//! (its running best is never lower than the killed session's, so its count of validations
//! without improvement is never higher).

use std::path::Path;

use bora_run::{RunDir, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, BEST_STATE_FILE};
use serde::{Deserialize, Serialize};

use crate::adapter::AdapterConfig;
use crate::checkpoint::{write_adapter_files, NamedTensor};
use crate::error::{io_err, Result, TrainError};
use crate::fsutil::{publish_dir, write_atomic};

/// The step and validation loss of the best adapter so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub step: u64,
    pub val_loss: f32,
}

/// Validations at multiples of `every` in `(best_step, step]`.
pub fn validations_since(best_step: u64, step: u64, every: u64) -> u64 {
    match every {
        0 => 0,
        every => (step / every).saturating_sub(best_step / every),
    }
}

/// The early-stopping state of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    /// Validations without improvement that stop the run; 0: never stop.
    pub patience: u64,
    /// `train.eval_every`.
    pub every: u64,
    pub best: Option<Best>,
}

impl EarlyStopping {
    /// The state of a run resumed after `step` (0 for a new run): the best adapter on disk
    /// if it was written at or before that step.
    pub fn resume(run: &RunDir, patience: u64, every: u64, step: u64) -> Result<Self> {
        let path = run.best_adapter_dir().join(BEST_STATE_FILE);
        let best = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let best: Best = serde_json::from_str(&text).map_err(|e| TrainError::Invalid {
                    path: path.clone(),
                    what: e.to_string(),
                })?;
                (best.step <= step && step > 0).then_some(best)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(EarlyStopping {
            patience,
            every,
            best,
        })
    }

    /// Records the validation loss after `step`; true when it is the lowest so far (ties
    /// keep the earlier adapter).
    pub fn observe(&mut self, step: u64, val_loss: f32) -> bool {
        let better = self.best.is_none_or(|b| val_loss < b.val_loss);
        if better {
            self.best = Some(Best { step, val_loss });
        }
        better
    }

    /// Whether the run stops after `step`: `patience` validations since the best.
    pub fn stops_after(&self, step: u64) -> bool {
        self.patience > 0
            && self
                .best
                .is_some_and(|b| validations_since(b.step, step, self.every) >= self.patience)
    }
}

/// Publishes `params` as the best adapter, with its step and loss.
pub fn save_best(
    run: &RunDir,
    config: &AdapterConfig,
    params: &[NamedTensor],
    best: Best,
) -> Result<()> {
    let state = serde_json::to_string(&best).map_err(|e| TrainError::Invalid {
        path: run.best_adapter_dir(),
        what: e.to_string(),
    })?;
    publish_dir(&run.best_adapter_dir(), |tmp| {
        write_adapter_files(tmp, config, params)?;
        write_atomic(&tmp.join(BEST_STATE_FILE), state.as_bytes())?;
        Ok(())
    })
}

/// Publishes the best adapter's files as the run's final adapter.
pub fn publish_best_as_final(run: &RunDir) -> Result<()> {
    let best = run.best_adapter_dir();
    publish_dir(&run.adapter_dir(), |tmp| {
        for file in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
            copy(&best.join(file), &tmp.join(file))?;
        }
        Ok(())
    })
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(io_err(from))?;
    write_atomic(to, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_loss_is_kept_and_patience_counts_validations_since_it() {
        let mut stop = EarlyStopping {
            patience: 2,
            every: 10,
            best: None,
        };
        let curve = [
            (10, 2.0),
            (20, 1.5),
            (30, 1.2),
            (40, 1.3),
            (50, 1.2),
            (60, 1.4),
        ];
        let mut improved = Vec::new();
        let mut stopped_at = None;
        for (step, loss) in curve {
            improved.push(stop.observe(step, loss));
            if stop.stops_after(step) {
                stopped_at = Some(step);
                break;
            }
        }
        // A tie (1.2 at step 50) does not replace the earlier best.
        assert_eq!(improved, [true, true, true, false, false]);
        assert_eq!(
            stop.best,
            Some(Best {
                step: 30,
                val_loss: 1.2
            })
        );
        assert_eq!(stopped_at, Some(50));
    }

    #[test]
    fn no_patience_never_stops_and_counts_need_an_interval() {
        let mut stop = EarlyStopping {
            patience: 0,
            every: 1,
            best: None,
        };
        stop.observe(1, 1.0);
        assert!(!stop.stops_after(100));
        assert_eq!(validations_since(5, 25, 10), 2);
        assert_eq!(validations_since(5, 25, 0), 0);
    }

    #[test]
    fn a_best_written_after_the_checkpoint_is_not_read_on_resume() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::at(tmp.path());
        std::fs::create_dir_all(run.best_adapter_dir()).unwrap();
        let best = Best {
            step: 40,
            val_loss: 0.5,
        };
        std::fs::write(
            run.best_adapter_dir().join(BEST_STATE_FILE),
            serde_json::to_string(&best).unwrap(),
        )
        .unwrap();
        assert_eq!(EarlyStopping::resume(&run, 3, 10, 30).unwrap().best, None);
        assert_eq!(
            EarlyStopping::resume(&run, 3, 10, 40).unwrap().best,
            Some(best)
        );
        // A new run (step 0) never reads a leftover.
        assert_eq!(EarlyStopping::resume(&run, 3, 10, 0).unwrap().best, None);
    }
}
