//! The recipe: one LoRA fine-tuning run, top to bottom, like a torchtune recipe. Set up
//! (config, run directory, model, tokenizer, data, adapter, optimizer), train (accumulate,
//! clip, step, log, evaluate, checkpoint), clean up (final adapter, timing).
//!
//! Resuming is the same function: the set-up reads the latest checkpoint instead of
//! initializing, and because every source of randomness and order is saved there (adapter,
//! AdamW moments, the dropout RNG, the data position), the resumed run continues bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bora_data::{available_memory, generation_memory, preflight, ModelShape, Preflight, StepShape};
use bora_data::{
    fit, load, split, Batch, BatchConfig, Encoder, FitReport, Holdout, Loader, Overlong, Sample,
};
use bora_formats::quant::WeightType;
use bora_model::{
    CheckpointInfo, LoadOptions, Lora, LoraSpec, Model, ModelConfig, TrainBatch, Trainer,
};
use bora_run::{MetricSink, Metrics, RunDir, Timing};
use bora_tokenizer::Tokenizer;
use serde::Serialize;

use crate::checkpoint::{save_adapter, Checkpoint, NamedTensor, ParamSpec};
use crate::config::RunConfig;
use crate::defaults::{choose_defaults, Choice, Unset};
use crate::early_stop::{publish_best_as_final, save_best, Best, EarlyStopping};
use crate::error::{Result, TrainError};
use crate::grad::{
    check_grads, check_loss, clip_grad_norm, global_grad_norm, scale_grads, GradAccumulation,
};
use crate::lr_range::{range_test, suggest_lr};
use crate::optim::AdamW;
use crate::rng::{init_lora, Rng, Stream};
use crate::run::{create_run_dir_noted, open_run_dir};
use crate::schedule::LrSchedule;

/// How a run starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new run in `runs_root/config.name`.
    New {
        runs_root: PathBuf,
        config: Box<RunConfig>,
        /// Where the files of a Hub id in `model.path` are (the caller resolves it); `None`
        /// when `model.path` is the model's path itself.
        model_dir: Option<PathBuf>,
        /// The settings the user left out, which bora chooses for this model and data
        /// ([`crate::choose_defaults`]); empty: `config` is taken as it is.
        unset: Unset,
    },
    /// Continue the run in this directory from its latest checkpoint (or from the start when
    /// it was killed before its first checkpoint).
    Resume {
        dir: PathBuf,
        model_dir: Option<PathBuf>,
    },
}

/// What the loop reports to whoever shows progress.
#[derive(Debug)]
pub enum Event<'a> {
    /// The settings bora chose for this run, each with its reason (a new run only).
    Chosen(&'a [Choice]),
    /// Set-up is done; training runs optimizer steps `first_step + 1 ..= total_steps`.
    Begin {
        first_step: u64,
        total_steps: u64,
        train_examples: usize,
        val_examples: usize,
        /// Bad lines left out under `data.skip_bad_lines`, as `FILE:LINE: field: what`.
        skipped_lines: &'a [String],
    },
    Step(&'a Metrics),
    Checkpoint {
        step: u64,
        dir: &'a Path,
    },
    /// Early stopping's outcome: the adapter of `best` became the final one; `stopped_at` is
    /// the step the run stopped after, `None` when it ran to its last step.
    BestKept {
        best: Best,
        stopped_at: Option<u64>,
    },
}

/// Where a run lives: a directory to create once the inputs are known good, or one that
/// already holds the run.
enum Place {
    New(PathBuf),
    Existing(RunDir),
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub adapter_dir: PathBuf,
    pub steps: u64,
    pub last_loss: Option<f32>,
    pub last_val_loss: Option<f32>,
    pub timing: Timing,
}

/// Runs (or resumes) a training run to its last step and writes `runs/NAME/adapter/`.
/// Every step's [`Metrics`] go to each of `sinks` (built by the caller: the run's own files,
/// W&B, ...), which are started once the run directory exists and closed at the end, with
/// whether the run succeeded.
pub fn run(
    start: Start,
    sinks: Vec<Box<dyn MetricSink>>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Summary> {
    closing_sinks(sinks, |sinks| train(start, sinks, on_event))
}

/// Runs `steps` with `sinks`, then closes every sink with whether it succeeded (a close
/// error counts only when the steps did not already fail).
pub(crate) fn closing_sinks<T>(
    mut sinks: Vec<Box<dyn MetricSink>>,
    steps: impl FnOnce(&mut [Box<dyn MetricSink>]) -> Result<T>,
) -> Result<T> {
    let result = steps(&mut sinks);
    for sink in &mut sinks {
        let closed = sink.close(result.is_ok());
        if result.is_ok() {
            closed?;
        }
    }
    result
}

/// Everything a run needs before its first step, fresh or from the last checkpoint; the
/// same wherever the steps run (`--on cpu|torch`).
pub(crate) struct SetUp<M = Model> {
    pub config: RunConfig,
    /// The settings bora chose (a new run with settings left out).
    pub choices: Vec<Choice>,
    /// The base as the steps need it: its weights for bora's own loop, nothing for a trainer
    /// that loads the base itself.
    pub model: M,
    pub model_config: ModelConfig,
    pub data: DataPlan,
    pub batches: BatchConfig,
    pub run_dir: RunDir,
    pub total_steps: u64,
    pub schedule: LrSchedule,
    pub spec: LoraSpec,
    pub lora: Lora,
    pub params: Vec<ParamSpec>,
    pub optimizer: AdamW,
    pub dropout_rng: Rng,
    pub position: bora_data::DataPosition,
    pub first_step: u64,
    pub elapsed: f64,
}

/// Validates the config, loads model, tokenizer and data, makes (or opens) the run
/// directory and initializes (or restores) the adapter, optimizer, RNG and data position.
pub(crate) fn set_up(start: Start) -> Result<SetUp> {
    set_up_with(start, |config, path, info| {
        check_memory(config, info)?;
        load_base(config, path)
    })
}

/// [`set_up`] with the base loaded by `load_base` (given the config, the model's path and
/// its header): a trainer that runs elsewhere needs the model's shape, not its weights.
/// The base a set-up holds: the weights for bora's own steps, or nothing (`()`) for a trainer
/// that loads the base itself. Only the former can run a learning-rate range test.
pub(crate) trait BaseWeights {
    /// Whether the weight files must be on this machine; without, the model's config
    /// suffices ([`CheckpointInfo::open_shape`]).
    const LOADED_HERE: bool;
    fn weights(&self) -> Option<&Model>;
}

impl BaseWeights for Model {
    const LOADED_HERE: bool = true;
    fn weights(&self) -> Option<&Model> {
        Some(self)
    }
}

impl BaseWeights for () {
    const LOADED_HERE: bool = false;
    fn weights(&self) -> Option<&Model> {
        None
    }
}

pub(crate) fn set_up_with<M: BaseWeights>(
    start: Start,
    load_base: impl FnOnce(&RunConfig, &Path, &CheckpointInfo) -> Result<M>,
) -> Result<SetUp<M>> {
    // ---- Set up: the config, validated whole before any work.
    let (mut config, place, model_dir, unset) = match start {
        Start::New {
            runs_root,
            config,
            model_dir,
            unset,
        } => {
            config.validate()?;
            (*config, Place::New(runs_root), model_dir, unset)
        }
        Start::Resume { dir, model_dir } => {
            let (run_dir, config) = open_run_dir(dir)?;
            (
                config,
                Place::Existing(run_dir),
                model_dir,
                Unset::default(),
            )
        }
    };

    // ---- Model and tokenizer; the settings left to bora, chosen for them and the data.
    let model_path = model_dir
        .as_deref()
        .unwrap_or(Path::new(&config.model.path))
        .to_path_buf();
    let info = if M::LOADED_HERE {
        CheckpointInfo::open(&model_path)?
    } else {
        CheckpointInfo::open_shape(&model_path)?
    };
    let tokenizer = Tokenizer::from_file(&model_path)?;
    let (data, choices) = if unset.is_empty() {
        (plan_data(&config, &tokenizer)?, Vec::new())
    } else {
        choose_defaults(&mut config, &unset, &info, &tokenizer, available_memory()?)?
    };
    let model = load_base(&config, &model_path, &info)?;
    let model_config = info.config;
    let mut choices = choices;
    if config.train.lr_range_test && unset.contains("optim.lr") {
        let Some(weights) = model.weights() else {
            return Err(TrainError::Config {
                key: "train.lr_range_test".into(),
                reason: "the learning-rate range test runs with --on cpu only; give --lr".into(),
            });
        };
        choices.retain(|c| c.key != "optim.lr");
        choices.push(choose_lr_by_range_test(&mut config, &data, weights)?);
    }
    if config.train.patience > 0 && matches!(place, Place::New(_)) {
        choices.push(early_stopping_note(&config, &data));
    }
    if tokenizer.vocab_size() > model_config.vocab_size {
        return Err(TrainError::Mismatch {
            what: format!(
                "{}: the tokenizer has {} tokens but the model only {} embeddings",
                model_path.display(),
                tokenizer.vocab_size(),
                model_config.vocab_size
            ),
        });
    }

    let batches = data.batches;
    let total_steps = data.total_steps;

    // ---- The run directory, made only once model and data are known good, so a run refused
    // for bad input leaves nothing behind.
    let (run_dir, resuming) = match place {
        Place::Existing(run_dir) => (run_dir, true),
        Place::New(runs_root) => {
            let notes: Vec<String> = choices.iter().map(ToString::to_string).collect();
            let run_dir = create_run_dir_noted(&runs_root, &config, &notes)?;
            if crate::latest_checkpoint(&run_dir.checkpoints_dir())?.is_some() {
                return Err(TrainError::Config {
                    key: "name".into(),
                    reason: format!(
                        "{} already holds checkpoints of this run; continue it with `bora train \
                         --resume {0}` or pick another name",
                        run_dir.path().display()
                    ),
                });
            }
            if config.data.eval_path().is_none() && !data.val.is_empty() {
                write_val_split(&run_dir, &config.data.train, &data.val)?;
            }
            (run_dir, false)
        }
    };

    let schedule = config.lr_schedule(total_steps);

    // ---- Adapter, optimizer, RNG and data position: fresh, or from the last checkpoint.
    let spec = lora_spec(&config);
    let mut lora = Lora::zeros(&model_config, &spec);
    let params: Vec<ParamSpec> = lora
        .tensors()
        .into_iter()
        .map(|(name, shape, _)| ParamSpec { name, shape })
        .collect();
    let sizes: Vec<usize> = params.iter().map(|p| p.shape.iter().product()).collect();
    let checkpoint = if resuming {
        Checkpoint::load_latest(&run_dir.checkpoints_dir(), &params)?
    } else {
        None
    };
    let (optimizer, dropout_rng, position, first_step, elapsed) = match checkpoint {
        Some(ckpt) => {
            if ckpt.adapter_config != config.adapter_config() {
                return Err(TrainError::Mismatch {
                    what: format!(
                        "{}: the latest checkpoint's adapter settings differ from the run's \
                         config.toml",
                        run_dir.path().display()
                    ),
                });
            }
            for ((_, _, dst), src) in lora.tensors_mut().into_iter().zip(&ckpt.params) {
                dst.copy_from_slice(&src.values);
            }
            (
                AdamW::with_state(config.adamw(), ckpt.optimizer),
                Rng::from_state(&ckpt.rng)?,
                ckpt.data,
                ckpt.step,
                ckpt.elapsed_s,
            )
        }
        None => {
            lora = fresh_lora(&config, &model_config, &spec);
            (
                AdamW::new(config.adamw(), &sizes),
                Rng::new(config.train.seed, Stream::Dropout),
                bora_data::DataPosition::default(),
                0,
                0.0,
            )
        }
    };
    Ok(SetUp {
        config,
        choices,
        model,
        model_config,
        data,
        batches,
        run_dir,
        total_steps,
        schedule,
        spec,
        lora,
        params,
        optimizer,
        dropout_rng,
        position,
        first_step,
        elapsed,
    })
}

fn train(
    start: Start,
    sinks: &mut [Box<dyn MetricSink>],
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Summary> {
    let SetUp {
        config,
        choices,
        model,
        model_config: _,
        data,
        batches,
        run_dir,
        total_steps,
        schedule,
        spec,
        mut lora,
        params,
        mut optimizer,
        mut dropout_rng,
        position,
        first_step,
        mut elapsed,
    } = set_up(start)?;
    let t = &config.train;
    let mut loader = Loader::new(&data.train, batches, position)?;
    let mut trainer = Trainer::new(&model, &spec, t.batch_size, t.seq_len, t.recompute)?;
    let mut grads = Lora::zeros(&model.config, &spec);

    // ---- Metric sinks: a resumed run continues them after its checkpoint's step.
    for sink in sinks.iter_mut() {
        sink.start(&run_dir, first_step)?;
    }

    if !choices.is_empty() {
        on_event(Event::Chosen(&choices));
    }
    on_event(Event::Begin {
        first_step,
        total_steps,
        train_examples: data.train.len(),
        val_examples: data.val.len(),
        skipped_lines: &data.skipped,
    });

    // ---- Train.
    let session = Instant::now();
    let elapsed_before = elapsed;
    let mut step = first_step;
    let (mut last_loss, mut last_val_loss) = (None, None);
    let early_stopping = t.patience > 0 && !data.val.is_empty();
    let mut stopping = EarlyStopping::resume(&run_dir, t.patience, t.eval_every, first_step)?;
    let stops_after = |stopping: &EarlyStopping, step| early_stopping && stopping.stops_after(step);
    while step < total_steps && !stops_after(&stopping, step) {
        let started = Instant::now();
        grads.zero();
        // The summed token loss of each micro-batch accumulates into `grads`; the window is
        // scaled by 1/tokens at its end, so every trained token weighs the same however the
        // tokens fall into micro-batches.
        let mut window = GradAccumulation::new(t.grad_accum);
        let mut micro_batches = 0u64;
        let done = loop {
            micro_batches += 1;
            let batch = loader.next_batch();
            let targets = masked_targets(&batch);
            let ce = trainer.forward_backward(
                &model,
                &lora,
                &train_batch(&batch, &targets),
                &mut grads,
                dropout_rng.next_u64(),
            )?;
            if let Some(done) = window.add(ce.loss_sum, ce.count as u64) {
                break done;
            }
        };
        step += 1;
        check_loss(step, done.loss)?;

        let mut grad_slices: Vec<&mut [f32]> =
            grads.tensors_mut().into_iter().map(|(_, _, g)| g).collect();
        scale_grads(&mut grad_slices, done.grad_scale);
        let grad_norm = if config.optim.max_grad_norm > 0.0 {
            clip_grad_norm(&mut grad_slices, config.optim.max_grad_norm as f32)
        } else {
            let shared: Vec<&[f32]> = grad_slices.iter().map(|g| &**g).collect();
            global_grad_norm(&shared)
        };
        if !grad_norm.is_finite() {
            let named: Vec<(&str, &[f32])> = params
                .iter()
                .zip(&grad_slices)
                .map(|(p, g)| (p.name.as_str(), &**g))
                .collect();
            check_grads(step, &named)?;
        }
        let lr = schedule.lr(step - 1);
        {
            let shared: Vec<&[f32]> = grad_slices.iter().map(|g| &**g).collect();
            let mut weights: Vec<&mut [f32]> =
                lora.tensors_mut().into_iter().map(|(_, _, w)| w).collect();
            optimizer.step(lr, &mut weights, &shared)?;
        }

        let eval_now = (t.eval_every > 0 && step % t.eval_every == 0) || step == total_steps;
        let val_loss = if eval_now && !data.val.is_empty() {
            Some(validation_loss(
                &mut trainer,
                &model,
                &lora,
                &data.val,
                batches,
            )?)
        } else {
            None
        };
        let step_s = started.elapsed().as_secs_f64().max(1e-9);
        let metrics = Metrics {
            step,
            loss: done.loss,
            lr,
            grad_norm,
            tokens_per_s: done.tokens as f64 / step_s,
            processed_tokens_per_s: (micro_batches * (t.batch_size * t.seq_len) as u64) as f64
                / step_s,
            val_loss,
        };
        for sink in sinks.iter_mut() {
            sink.log(&metrics)?;
        }
        on_event(Event::Step(&metrics));
        last_loss = Some(done.loss);
        last_val_loss = val_loss.or(last_val_loss);
        if let Some(val_loss) = val_loss.filter(|_| early_stopping) {
            if stopping.observe(step, val_loss) {
                let best = Best { step, val_loss };
                save_best(
                    &run_dir,
                    &config.adapter_config(),
                    &named_tensors(&lora),
                    best,
                )?;
            }
        }

        // A stopped run saves its state, so a resume sees that it stopped.
        let save_now = (t.checkpoint_every > 0 && step % t.checkpoint_every == 0)
            || step == total_steps
            || stops_after(&stopping, step);
        if save_now {
            for sink in sinks.iter_mut() {
                sink.flush()?;
            }
            elapsed = elapsed_before + session.elapsed().as_secs_f64();
            let ckpt = Checkpoint {
                step,
                adapter_config: config.adapter_config(),
                params: named_tensors(&lora),
                optimizer: optimizer.state().clone(),
                rng: dropout_rng.state(),
                data: loader.position(),
                elapsed_s: elapsed,
            };
            let dir = ckpt.save(&run_dir.checkpoints_dir(), t.keep_checkpoints)?;
            on_event(Event::Checkpoint { step, dir: &dir });
        }
    }

    // ---- Clean up: the final adapter in PEFT layout (under early stopping, the best one),
    // and the timing for reports.
    match stopping.best.filter(|_| early_stopping) {
        Some(best) => {
            publish_best_as_final(&run_dir)?;
            let stopped_at = (step < total_steps).then_some(step);
            on_event(Event::BestKept { best, stopped_at });
        }
        None => save_adapter(
            &run_dir.adapter_dir(),
            &config.adapter_config(),
            &named_tensors(&lora),
        )?,
    }
    let timing = write_timing(&run_dir, step, elapsed)?;
    Ok(Summary {
        run_dir: run_dir.path().to_path_buf(),
        adapter_dir: run_dir.adapter_dir(),
        steps: step,
        last_loss,
        last_val_loss,
        timing,
    })
}

/// What early stopping will do in this run, printed with the choices.
fn early_stopping_note(config: &RunConfig, data: &DataPlan) -> Choice {
    let t = &config.train;
    let reason = if data.val.is_empty() {
        "off: the run has no validation examples".to_string()
    } else {
        format!(
            "early stopping: stop after {} validations (every {} steps) without a lower \
             validation loss, keep the lowest one's adapter; --patience 0 to turn off",
            t.patience, t.eval_every
        )
    };
    Choice {
        key: "train.patience",
        value: t.patience.to_string(),
        reason,
    }
}

/// Sets `optim.lr` from a range test on the run's data; the rule's rate stays when the
/// curve suggests nothing.
fn choose_lr_by_range_test(
    config: &mut RunConfig,
    data: &DataPlan,
    model: &Model,
) -> Result<Choice> {
    let test = range_test(config, data, model)?;
    let cost = format!(
        "{} steps of 1 micro-batch, {:.0}s",
        test.losses.len(),
        test.seconds
    );
    let reason = match suggest_lr(&test.lrs, &test.losses) {
        Some(s) => {
            config.optim.lr = s.lr;
            format!("{}; {cost}; --lr to override", s.reason)
        }
        None => format!(
            "the range test's loss never fell ({cost}), so the rule's rate for the model and \
             adapter; --lr to override"
        ),
    };
    Ok(Choice {
        key: "optim.lr",
        value: format!("{:e}", config.optim.lr),
        reason,
    })
}

/// Writes the training file's lines that `val` holds (by line number) to the run's
/// `val.jsonl`, in file order.
fn write_val_split(run_dir: &RunDir, train: &Path, val: &[Sample]) -> Result<()> {
    let text = std::fs::read_to_string(train).map_err(crate::error::io_err(train))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for sample in val {
        if let Some(line) = sample.line.checked_sub(1).and_then(|i| lines.get(i)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    crate::fsutil::write_atomic(&run_dir.val_split_path(), out.as_bytes())?;
    Ok(())
}

/// The adapter a new run starts from: PEFT's init, A uniform in ±1/√in and B zero, drawn
/// in tensor order from `train.seed`.
pub(crate) fn fresh_lora(config: &RunConfig, model: &ModelConfig, spec: &LoraSpec) -> Lora {
    let mut lora = Lora::zeros(model, spec);
    let mut init = Rng::new(config.train.seed, Stream::Init);
    for (name, shape, values) in lora.tensors_mut() {
        if name.ends_with("lora_A.weight") {
            let (a, _) = init_lora(&mut init, shape[0], shape[1], 0);
            values.copy_from_slice(&a);
        }
    }
    lora
}

pub(crate) fn lora_spec(config: &RunConfig) -> LoraSpec {
    LoraSpec {
        rank: config.lora.rank,
        alpha: config.lora.alpha,
        dropout: config.lora.dropout as f32,
        rslora: config.lora.rslora,
        targets: config.lora.targets.clone(),
    }
}

/// How long the run's steps took, written for eval reports.
pub(crate) fn write_timing(run_dir: &RunDir, steps: u64, seconds: f64) -> Result<Timing> {
    let timing = Timing {
        steps,
        train_seconds: seconds,
        seconds_per_step: seconds / steps.max(1) as f64,
    };
    timing.write(run_dir)?;
    Ok(timing)
}

pub(crate) fn named_tensors(lora: &Lora) -> Vec<NamedTensor> {
    lora.tensors()
        .into_iter()
        .map(|(name, shape, values)| NamedTensor {
            name,
            shape,
            values: values.to_vec(),
        })
        .collect()
}

/// A run's data as its training loop sees it, and the optimizer steps it makes: what
/// `bora train` runs and what `bora data check` reports, computed by this one function so
/// the two cannot disagree.
#[derive(Debug, Clone)]
pub struct DataPlan {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    /// Bad lines left out under `data.skip_bad_lines`, as `FILE:LINE: field: what`.
    pub skipped: Vec<String>,
    /// Token count of every example of the training file, before the split and the fit.
    pub lengths: Vec<usize>,
    /// What fitting to `train.seq_len` did to the training and the validation examples.
    pub train_fit: FitReport,
    pub val_fit: FitReport,
    pub batches: BatchConfig,
    /// Micro-batches of epoch 0's plan (packing depends on each epoch's order; every epoch
    /// is counted as epoch 0, so a resumed run computes the same total and LR schedule).
    pub micro_per_epoch: u64,
    pub total_steps: u64,
}

impl DataPlan {
    /// Times the loop computes the validation loss: every `train.eval_every` steps and at the
    /// last step.
    pub fn evaluations(&self, config: &RunConfig) -> u64 {
        if self.val.is_empty() || self.total_steps == 0 {
            return 0;
        }
        let every = config.train.eval_every;
        // `is_multiple_of(0)` is false for a non-zero count: with eval_every 0, only the last.
        let periodic = self.total_steps.checked_div(every).unwrap_or(0);
        periodic + u64::from(!self.total_steps.is_multiple_of(every))
    }

    /// Training micro-batches of the whole run.
    pub fn micro_batches(&self, config: &RunConfig) -> u64 {
        if config.train.max_steps > 0 {
            config.train.max_steps * u64::from(config.train.grad_accum)
        } else {
            config.train.epochs * self.micro_per_epoch
        }
    }

    /// Micro-batches of one validation pass.
    pub fn val_batches(&self) -> u64 {
        Loader::plan(&self.val, &self.batches, 0)
            .len()
            .div_ceil(self.batches.batch_size) as u64
    }
}

/// The frozen base as the run trains on it: quantized as `qlora` says, RoPE tables for
/// `train.seq_len`.
pub fn load_base(config: &RunConfig, model_path: &Path) -> Result<Model> {
    Ok(Model::load(
        model_path,
        &LoadOptions {
            context: Some(config.train.seq_len),
            quantize: config.qlora.quantize()?,
            decode_layout: false,
        },
    )?)
}

/// The numbers of `info`'s model that memory and time depend on, its weights as loaded with
/// `quantize`.
pub fn model_shape(info: &CheckpointInfo, quantize: Option<WeightType>) -> ModelShape {
    let c = &info.config;
    ModelShape {
        hidden: c.hidden_size,
        intermediate: c.intermediate_size,
        layers: c.n_layers,
        heads: c.n_heads,
        kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        vocab: c.vocab_size,
        parameters: c.parameter_count(),
        weight_bytes: info.weight_bytes(quantize),
    }
}

/// Estimated peak memory of this run's training step (its base loaded as `qlora` says).
pub fn train_memory(config: &RunConfig, info: &CheckpointInfo) -> Result<Preflight> {
    let t = &config.train;
    let step = StepShape {
        batch_size: t.batch_size,
        seq_len: t.seq_len,
        lora_rank: config.lora.rank,
    };
    Ok(preflight(
        &model_shape(info, config.qlora.quantize()?),
        &step,
        0,
        1.0,
    ))
}

/// Estimated peak memory of each way to run `info`'s model: generating `context` tokens with
/// the base held as `generate_quant`, and `config`'s training step as LoRA on the base as
/// stored and as each QLoRA type (for an unquantized base).
pub fn memory_by_use(
    config: &RunConfig,
    info: &CheckpointInfo,
    generate_quant: Option<WeightType>,
    context: usize,
) -> Result<Vec<(String, u64)>> {
    let generate = generation_memory(&model_shape(info, generate_quant), context);
    let mut rows = vec![(format!("generate, {context} tokens"), generate.peak_bytes)];
    let mut ways = vec![("LoRA, base as stored", None)];
    if info.unquantized() {
        ways.extend(["nf4", "q8_0", "q4_0", "q4_1"].map(|q| (q, Some(q))));
    }
    let mut c = config.clone();
    for (label, quant) in ways {
        c.qlora.enabled = quant.is_some();
        if let Some(q) = quant {
            c.qlora.quant = q.into();
        }
        let label = match quant {
            Some(q) => format!("train, QLoRA {q}"),
            None => format!("train, {label}"),
        };
        rows.push((label, train_memory(&c, info)?.peak_bytes));
    }
    Ok(rows)
}

/// Refuses, before any weight is read, a run whose estimated peak is more than this
/// machine's available memory ([`available_memory`]): an out-of-memory kill an hour into a
/// run is worse than a refusal that names the numbers and the ways out.
pub fn check_memory(config: &RunConfig, info: &CheckpointInfo) -> Result<()> {
    let need = train_memory(config, info)?;
    let Some(available) = available_memory()? else {
        return Ok(());
    };
    if need.peak_bytes <= available {
        return Ok(());
    }
    let smaller = if info.unquantized() {
        "QLoRA (--qlora q4_0 keeps the base at a quarter of bf16), "
    } else {
        ""
    };
    Err(TrainError::Memory {
        need: need.peak_bytes,
        available,
        parts: format!(
            "weights {:.2} GiB, LoRA state {:.2} GiB, activations {:.2} GiB, workspace {:.2} GiB",
            gib(need.weight_bytes),
            gib(need.lora_bytes),
            gib(need.activation_bytes),
            gib(need.workspace_bytes)
        ),
        advice: format!(
            "use {smaller}a smaller train.batch_size or train.seq_len (with train.grad_accum \
             for the same tokens per step), or train.recompute; `bora data check` lists the \
             memory of each choice"
        ),
    })
}

pub(crate) fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Seconds of one training micro-batch and of one validation batch, measured on a run's own
/// model and data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepTiming {
    pub micro_batch_s: f64,
    pub val_batch_s: f64,
}

impl StepTiming {
    /// Wall time of the whole run: every micro-batch the steps consume, and every validation
    /// pass. The optimizer update on the LoRA parameters is left out (well under a percent
    /// of a step).
    pub fn run_seconds(&self, config: &RunConfig, plan: &DataPlan) -> f64 {
        plan.micro_batches(config) as f64 * self.micro_batch_s
            + (plan.evaluations(config) * plan.val_batches()) as f64 * self.val_batch_s
    }
}

/// Times `micro_batches` training micro-batches (after one untimed warm-up, which faults in
/// the weights and grows the buffers) and one validation batch of the run's first batches,
/// exactly as the loop computes them: a preflight measured on the real model, not a FLOP
/// count.
pub fn measure_step(
    config: &RunConfig,
    plan: &DataPlan,
    model: &Model,
    micro_batches: usize,
) -> Result<StepTiming> {
    let t = &config.train;
    let spec = lora_spec(config);
    let lora = Lora::zeros(&model.config, &spec);
    let mut grads = Lora::zeros(&model.config, &spec);
    let mut trainer = Trainer::new(model, &spec, t.batch_size, t.seq_len, t.recompute)?;
    let mut loader = Loader::new(
        &plan.train,
        plan.batches,
        bora_data::DataPosition::default(),
    )?;
    let mut micro = |trainer: &mut Trainer| -> Result<f64> {
        let batch = loader.next_batch();
        let targets = masked_targets(&batch);
        let started = Instant::now();
        trainer.forward_backward(model, &lora, &train_batch(&batch, &targets), &mut grads, 0)?;
        Ok(started.elapsed().as_secs_f64())
    };
    micro(&mut trainer)?;
    let micro_batches = micro_batches.max(1);
    let mut total = 0.0;
    for _ in 0..micro_batches {
        total += micro(&mut trainer)?;
    }
    let val_batch_s = if plan.val.is_empty() {
        0.0
    } else {
        let mut val = Loader::new(&plan.val, plan.batches, bora_data::DataPosition::default())?;
        let batch = val.next_batch();
        let targets = masked_targets(&batch);
        let started = Instant::now();
        trainer.loss(model, &lora, &train_batch(&batch, &targets))?;
        started.elapsed().as_secs_f64()
    };
    Ok(StepTiming {
        micro_batch_s: total / micro_batches as f64,
        val_batch_s,
    })
}

/// Tokenizes the training file (and the validation file, or holds out `data.val_fraction`
/// of the training examples by a seeded draw), fits every example to `train.seq_len` and
/// counts the run's optimizer steps.
pub fn plan_data(config: &RunConfig, tokenizer: &Tokenizer) -> Result<DataPlan> {
    let encoder = Encoder::new(tokenizer)?.for_seq_len(config.train.seq_len);
    let skip = config.data.skip_bad_lines;
    let overlong = if config.data.drop_overlong {
        Overlong::Drop
    } else {
        Overlong::Truncate
    };
    let train_file = load(&config.data.train, &encoder, skip)?;
    let mut skipped: Vec<String> = train_file.skipped.iter().map(ToString::to_string).collect();
    let lengths = train_file.samples.iter().map(Sample::len).collect();
    let (train, val) = match config.data.eval_path() {
        Some(path) => {
            let val_file = load(path, &encoder, skip)?;
            skipped.extend(val_file.skipped.iter().map(ToString::to_string));
            (train_file.samples, val_file.samples)
        }
        None => split(
            train_file.samples,
            Holdout::Fraction(config.data.val_fraction),
            config.train.seed,
        )?,
    };
    let t = &config.train;
    let (train, train_fit) = fit(train, t.seq_len, overlong);
    let (val, val_fit) = fit(val, t.seq_len, overlong);
    if train.is_empty() {
        return Err(bora_data::DataError::Empty(config.data.train.display().to_string()).into());
    }
    let batches = BatchConfig {
        batch_size: t.batch_size,
        seq_len: t.seq_len,
        pack: t.packing,
        seed: t.seed,
        pad_id: tokenizer.eos_id().unwrap_or(0),
    };
    let micro_per_epoch = Loader::plan(&train, &batches, 0)
        .len()
        .div_ceil(t.batch_size) as u64;
    Ok(DataPlan {
        train,
        val,
        skipped,
        lengths,
        train_fit,
        val_fit,
        batches,
        micro_per_epoch,
        total_steps: config.total_steps(micro_per_epoch),
    })
}

/// Mean token loss over every validation example (no dropout), in fixed batches.
fn validation_loss(
    trainer: &mut Trainer,
    model: &Model,
    lora: &Lora,
    val: &[Sample],
    batches: BatchConfig,
) -> Result<f32> {
    let mut loader = Loader::new(val, batches, bora_data::DataPosition::default())?;
    let (mut loss_sum, mut count) = (0.0f64, 0usize);
    for _ in 0..loader.batches_in_epoch() {
        let batch = loader.next_batch();
        let targets = masked_targets(&batch);
        let ce = trainer.loss(model, lora, &train_batch(&batch, &targets))?;
        loss_sum += ce.loss_sum;
        count += ce.count;
    }
    Ok((loss_sum / count.max(1) as f64) as f32)
}

/// The targets the loss sees: `None` where the loss mask is off (prompt tokens, padding).
pub(crate) fn masked_targets(batch: &Batch) -> Vec<Option<u32>> {
    batch
        .targets
        .iter()
        .zip(&batch.loss_mask)
        .map(|(&id, &trained)| trained.then_some(id))
        .collect()
}

pub(crate) fn train_batch<'a>(batch: &'a Batch, targets: &'a [Option<u32>]) -> TrainBatch<'a> {
    TrainBatch {
        inputs: &batch.inputs,
        targets,
        positions: &batch.positions,
        segments: &batch.segments,
        batch_size: batch.batch_size,
        seq_len: batch.seq_len,
    }
}
