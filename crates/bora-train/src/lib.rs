//! bora-train: everything around the LoRA step. [`run`] is the whole recipe, top to
//! bottom; a run is:
//!
//! 1. [`RunConfig::load`] a TOML file (validated whole, before any work) and make its
//!    [`RunDir`];
//! 2. init the adapter ([`init_lora`], from [`Rng`] seeded by `train.seed`) or resume it
//!    ([`Checkpoint::load_latest`]);
//! 3. for each micro-batch: forward/backward in bora-model, [`GradAccumulation::add`];
//!    at the end of a window scale, [`check_loss`], [`clip_grad_norm`], [`check_grads`]
//!    when the norm is not finite, [`AdamW::step`] at [`LrSchedule::lr`];
//! 4. log [`Metrics`] to every [`MetricSink`] ([`JsonlSink`], [`TensorBoardSink`]);
//! 5. every `checkpoint_every` steps, [`Checkpoint::save`]; at the end, [`save_adapter`].

mod adapter;
mod checkpoint;
mod config;
mod error;
mod fsutil;
mod grad;
mod metrics;
mod optim;
mod recipe;
mod rng;
mod run;
mod schedule;
mod torch;

pub use adapter::AdapterConfig;
pub use bora_data::DataPosition;
pub use bora_formats::names::LoraPart;
pub use bora_model::LoraTarget;
pub use checkpoint::{
    checkpoint_dir_name, latest_checkpoint, save_adapter, write_adapter_files, Checkpoint,
    NamedTensor, ParamSpec, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LATEST_FILE, OPTIMIZER_FILE,
    TRAINER_STATE_FILE,
};
pub use config::{
    DataSection, LoraSection, ModelSection, OptimSection, QloraSection, RunConfig, TrackingSection,
    TrainSection,
};
pub use error::{Result, TrainError};
pub use grad::{
    check_grads, check_loss, clip_grad_norm, global_grad_norm, scale_grads, AccumulatedStep,
    GradAccumulation,
};
pub use metrics::{
    crc32c, masked_crc32c, EventWriter, JsonlSink, MetricSink, Metrics, TensorBoardSink,
};
pub use optim::{AdamW, AdamWConfig, AdamWState};
pub use recipe::{run, Event, Start, Summary, Timing, TIMING_FILE};
pub use rng::{init_lora, kaiming_uniform_bound, Rng, RngState, Stream};
pub use run::{RunDir, ADAPTER_DIR, CHECKPOINTS_DIR, CONFIG_FILE, METRICS_FILE};
pub use schedule::{LrSchedule, ScheduleKind};
pub use torch::{run_torch, TorchEnv, REQUIREMENTS, TRAINER_PY};
