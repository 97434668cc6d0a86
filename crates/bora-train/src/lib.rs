//! bora-train: everything around the LoRA step. [`run`] is the whole recipe, top to
//! bottom; a run is:
//!
//! 1. [`RunConfig::load`] a TOML file (validated whole, before any work) and make its
//!    run directory ([`create_run_dir`], laid out by [`bora_run::RunDir`]);
//! 2. init the adapter ([`init_lora`], from [`Rng`] seeded by `train.seed`) or resume it
//!    ([`Checkpoint::load_latest`]);
//! 3. for each micro-batch: forward/backward in bora-model, [`GradAccumulation::add`];
//!    at the end of a window scale, [`check_loss`], [`clip_grad_norm`], [`check_grads`]
//!    when the norm is not finite, [`AdamW::step`] at [`LrSchedule::lr`];
//! 4. log [`Metrics`] to every [`MetricSink`] the caller passed in (`metrics.jsonl` and
//!    TensorBoard through [`bora_run::RunFiles`], W&B through bora-hub);
//! 5. every `checkpoint_every` steps, [`Checkpoint::save`]; at the end, [`save_adapter`].
#![forbid(unsafe_code)]

mod adapter;
mod checkpoint;
mod config;
mod defaults;
mod early_stop;
mod error;
mod fsutil;
mod gpu;
mod grad;
mod lr_range;
mod optim;
mod recipe;
mod resolve;
mod rng;
mod run;
mod schedule;
mod torch;

pub use adapter::AdapterConfig;
pub use bora_data::DataPosition;
pub use bora_formats::names::LoraPart;
pub use bora_model::LoraTarget;
pub use bora_run::{
    checkpoint_dir_name, crc32c, masked_crc32c, EventWriter, JsonlSink, MetricSink, Metrics,
    RunDir, TensorBoardSink, Timing, ADAPTER_CONFIG_FILE, ADAPTER_DIR, ADAPTER_WEIGHTS_FILE,
    CHECKPOINTS_DIR, CONFIG_FILE, LATEST_FILE, METRICS_FILE, OPTIMIZER_FILE, TIMING_FILE,
    TRAINER_STATE_FILE,
};
pub use checkpoint::{
    latest_checkpoint, save_adapter, write_adapter_files, Checkpoint, NamedTensor, ParamSpec,
};
pub use config::{
    DataSection, LoraSection, ModelSection, OptimSection, QloraSection, RunConfig, TrackingSection,
    TrainSection,
};
pub use defaults::{choose_defaults, Choice, Unset, ADAPTIVE_KEYS};
pub use early_stop::{validations_since, Best, EarlyStopping};
pub use error::{Result, TrainError};
pub use gpu::{gpu_flops_per_token, gpu_train_memory, GpuMemory, GPU_RUNTIME_BYTES};
pub use grad::{
    check_grads, check_loss, clip_grad_norm, global_grad_norm, scale_grads, AccumulatedStep,
    GradAccumulation,
};
pub use lr_range::{range_lr, suggest_lr, Suggestion, RANGE_END, RANGE_START, RANGE_STEPS};
pub use optim::{AdamW, AdamWConfig, AdamWState};
pub use recipe::{
    check_memory, load_base, measure_step, memory_by_use, model_shape, plan_data, run,
    train_memory, DataPlan, Event, Start, StepTiming, Summary,
};
pub use resolve::NewRun;
pub use rng::{init_lora, kaiming_uniform_bound, Rng, RngState, Stream};
pub use run::{create_run_dir, create_run_dir_noted, open_run_dir};
pub use schedule::{LrSchedule, ScheduleKind};
pub use torch::{
    run_torch, run_trainer, LocalTrainer, ModelAccess, TorchEnv, TrainerHost, REQUIREMENTS,
    TRAINER_PY,
};
