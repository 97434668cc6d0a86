//! bora-run: the run directory every command after training reads, and the metric sinks
//! that fill it. [`RunDir`] names its files ([`layout`]); [`Metrics`] is what one optimizer
//! step reports; [`MetricSink`] is where it goes: [`RunFiles`] (`metrics.jsonl` through
//! [`JsonlSink`] and TensorBoard events through [`TensorBoardSink`]), and the W&B sink in
//! bora-hub. [`Timing`] is the training time reports show.
//!
//! It sits just above bora-formats, so training, evaluation, the Hub client and the CLI all
//! read and write runs through it without depending on each other.
#![forbid(unsafe_code)]

mod error;
mod events;
pub mod layout;
mod sink;
mod timing;

pub use error::{Result, RunError};
pub use events::{crc32c, masked_crc32c, wall_time, EventWriter};
pub use layout::{
    checkpoint_dir_name, parse_checkpoint_dir_name, RunDir, ADAPTER_CONFIG_FILE, ADAPTER_DIR,
    ADAPTER_WEIGHTS_FILE, BEST_ADAPTER_DIR, BEST_STATE_FILE, CHECKPOINTS_DIR, CONFIG_FILE,
    EVAL_DIR, EVENTS_PREFIX, HELDOUT_FILE, LATEST_FILE, METRICS_FILE, OPTIMIZER_FILE, TIMING_FILE,
    TRAINER_STATE_FILE, VAL_SPLIT_FILE,
};
pub use sink::{JsonlSink, MetricSink, Metrics, RunFiles, TensorBoardSink};
pub use timing::Timing;
