//! The run directory, the unit every command after training reads:
//!
//! ```text
//! runs/NAME/config.toml                      resolved config
//! runs/NAME/metrics.jsonl                    one JSON object per optimizer step (and eval lines)
//! runs/NAME/events.out.tfevents.*            TensorBoard
//! runs/NAME/checkpoints/step-N/, latest      resumable states
//! runs/NAME/adapter/                         the final adapter, PEFT layout
//! runs/NAME/timing.json                      training wall time, for reports
//! runs/NAME/eval/                            results and reports of `bora eval --run`
//! runs/NAME/val.jsonl                        the validation examples held out of the training file
//! runs/NAME/best-adapter/                    the adapter of the lowest validation loss (early stopping)
//! runs/NAME/heldout.json                     the generation score on the validation examples
//! ```

use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const ADAPTER_DIR: &str = "adapter";
pub const EVAL_DIR: &str = "eval";
/// Written at the end of a run: how long training took, for eval reports.
pub const TIMING_FILE: &str = "timing.json";
/// The validation examples a run held out of its training file, as the file's own lines, so
/// the held-out score and later evaluations read exactly what training never saw.
pub const VAL_SPLIT_FILE: &str = "val.jsonl";
/// Under early stopping: the adapter of the lowest validation loss so far, which becomes the
/// final adapter.
pub const BEST_ADAPTER_DIR: &str = "best-adapter";
/// In `best-adapter/`: the step and validation loss of the adapter there.
pub const BEST_STATE_FILE: &str = "best.json";
/// The generation score on (a sample of) the validation examples, written at the end of
/// `bora train`.
pub const HELDOUT_FILE: &str = "heldout.json";
/// The prefix TensorBoard (and `wandb sync --sync-tensorboard`) looks for.
pub const EVENTS_PREFIX: &str = "events.out.tfevents.";

/// In `checkpoints/`: the name of the newest complete checkpoint directory.
pub const LATEST_FILE: &str = "latest";
/// In `adapter/` and each checkpoint: the adapter as PEFT saves it.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// In each checkpoint: AdamW's moments and the trainer's step, RNG and data position.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";

/// The directory name of the checkpoint after `step` optimizer steps.
pub fn checkpoint_dir_name(step: u64) -> String {
    format!("step-{step}")
}

/// The step of a checkpoint directory name; `None` for any other name.
pub fn parse_checkpoint_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Paths inside one run directory. It does no I/O: creating a run (with its config) is
/// bora-train's, reading one is each reader's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR)
    }

    pub fn checkpoint_dir(&self, step: u64) -> PathBuf {
        self.checkpoints_dir().join(checkpoint_dir_name(step))
    }

    pub fn adapter_dir(&self) -> PathBuf {
        self.root.join(ADAPTER_DIR)
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.root.join(EVAL_DIR)
    }

    pub fn val_split_path(&self) -> PathBuf {
        self.root.join(VAL_SPLIT_FILE)
    }

    pub fn best_adapter_dir(&self) -> PathBuf {
        self.root.join(BEST_ADAPTER_DIR)
    }

    pub fn heldout_path(&self) -> PathBuf {
        self.root.join(HELDOUT_FILE)
    }

    pub fn timing_path(&self) -> PathBuf {
        self.root.join(TIMING_FILE)
    }

    /// Whether the run has its final adapter (training finished).
    pub fn has_adapter(&self) -> bool {
        self.adapter_dir().join(ADAPTER_CONFIG_FILE).is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_round_trip_and_reject_others() {
        assert_eq!(checkpoint_dir_name(12), "step-12");
        assert_eq!(parse_checkpoint_dir_name("step-12"), Some(12));
        for other in ["step-", "step-1a", "step--1", "latest", "step-+1"] {
            assert_eq!(parse_checkpoint_dir_name(other), None, "{other}");
        }
    }
}
