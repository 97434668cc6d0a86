//! The recipe: one LoRA fine-tuning run, top to bottom, like a torchtune recipe. Set up
//! (config, run directory, model, tokenizer, data, adapter, optimizer), train (accumulate,
//! clip, step, log, evaluate, checkpoint), clean up (final adapter, timing).
//!
//! Resuming is the same function: the set-up reads the latest checkpoint instead of
//! initializing, and because every source of randomness and order is saved there (adapter,
//! AdamW moments, the dropout RNG, the data position), the resumed run continues bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bora_data::{fit, load, split, Batch, BatchConfig, Encoder, Holdout, Loader, Overlong, Sample};
use bora_model::{LoadOptions, Lora, LoraSpec, Model, TrainBatch, Trainer};
use bora_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{save_adapter, Checkpoint, NamedTensor, ParamSpec};
use crate::config::RunConfig;
use crate::error::{Result, TrainError};
use crate::fsutil::write_atomic;
use crate::grad::{
    check_grads, check_loss, clip_grad_norm, global_grad_norm, scale_grads, GradAccumulation,
};
use crate::metrics::{JsonlSink, MetricSink, Metrics, TensorBoardSink};
use crate::optim::AdamW;
use crate::rng::{init_lora, Rng, Stream};
use crate::run::RunDir;
use crate::schedule::LrSchedule;

/// Written at the end of a run: how long training took, for eval reports.
pub const TIMING_FILE: &str = "timing.json";

/// How a run starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new run in `runs_root/config.name`.
    New {
        runs_root: PathBuf,
        config: Box<RunConfig>,
    },
    /// Continue the run in this directory from its latest checkpoint (or from the start when
    /// it was killed before its first checkpoint).
    Resume { dir: PathBuf },
}

/// What the loop reports to whoever shows progress.
#[derive(Debug)]
pub enum Event<'a> {
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
}

/// Where a run lives: a directory to create once the inputs are known good, or one that
/// already holds the run.
enum Place {
    New(PathBuf),
    Existing(RunDir),
}

/// `timing.json`: wall time spent training, summed over every session of a resumed run up
/// to its last checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub steps: u64,
    pub train_seconds: f64,
    pub seconds_per_step: f64,
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

/// Everything a run needs before its first step, fresh or from the last checkpoint; the
/// same for every place the steps run (`--on cpu|torch|hf-jobs`).
pub(crate) struct SetUp {
    pub config: RunConfig,
    pub model: Model,
    pub data: RunData,
    pub batches: BatchConfig,
    pub run_dir: RunDir,
    pub resuming: bool,
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
    // ---- Set up: the config, validated whole before any work.
    let (config, place) = match start {
        Start::New { runs_root, config } => {
            config.validate()?;
            (*config, Place::New(runs_root))
        }
        Start::Resume { dir } => {
            let (run_dir, config) = RunDir::open(dir)?;
            (config, Place::Existing(run_dir))
        }
    };
    let t = &config.train;
    let quantize = config.qlora.quantize()?;

    // ---- Model and tokenizer.
    let model_path = Path::new(&config.model.path);
    let model = Model::load(
        model_path,
        &LoadOptions {
            context: Some(t.seq_len),
            quantize,
            decode_layout: false,
        },
    )?;
    let tokenizer = Tokenizer::from_file(model_path)?;
    if tokenizer.vocab_size() > model.config.vocab_size {
        return Err(TrainError::Mismatch {
            what: format!(
                "{}: the tokenizer has {} tokens but the model only {} embeddings",
                model_path.display(),
                tokenizer.vocab_size(),
                model.config.vocab_size
            ),
        });
    }

    // ---- Data: train and validation samples, fitted to the sequence length.
    let data = load_data(&config, &tokenizer)?;
    let batches = BatchConfig {
        batch_size: t.batch_size,
        seq_len: t.seq_len,
        pack: t.packing,
        seed: t.seed,
        pad_id: tokenizer.eos_id().unwrap_or(0),
    };

    // ---- The run directory, made only once model and data are known good, so a run refused
    // for bad input leaves nothing behind.
    let (run_dir, resuming) = match place {
        Place::Existing(run_dir) => (run_dir, true),
        Place::New(runs_root) => {
            let run_dir = RunDir::create(&runs_root, &config)?;
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
            (run_dir, false)
        }
    };

    // Counted on epoch 0's plan, so a resumed run (in any epoch) computes the same total and
    // so the same LR schedule.
    let micro_per_epoch = Loader::plan(&data.train, &batches, 0)
        .len()
        .div_ceil(t.batch_size) as u64;
    let total_steps = config.total_steps(micro_per_epoch);
    let schedule = config.lr_schedule(total_steps);

    // ---- Adapter, optimizer, RNG and data position: fresh, or from the last checkpoint.
    let spec = lora_spec(&config);
    let mut lora = Lora::zeros(&model.config, &spec);
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
            // PEFT's init: A uniform in ±1/√in, B zero (already), drawn in tensor order.
            let mut init = Rng::new(t.seed, Stream::Init);
            for (name, shape, values) in lora.tensors_mut() {
                if name.ends_with("lora_A.weight") {
                    let (a, _) = init_lora(&mut init, shape[0], shape[1], 0);
                    values.copy_from_slice(&a);
                }
            }
            (
                AdamW::new(config.adamw(), &sizes),
                Rng::new(t.seed, Stream::Dropout),
                bora_data::DataPosition::default(),
                0,
                0.0,
            )
        }
    };
    Ok(SetUp {
        config,
        model,
        data,
        batches,
        run_dir,
        resuming,
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

/// Runs (or resumes) a training run to its last step and writes `runs/NAME/adapter/`.
pub fn run(start: Start, on_event: &mut dyn FnMut(Event<'_>)) -> Result<Summary> {
    let SetUp {
        config,
        model,
        data,
        batches,
        run_dir,
        resuming,
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
        ..
    } = set_up(start)?;
    let t = &config.train;
    let mut loader = Loader::new(&data.train, batches, position)?;
    let mut trainer = Trainer::new(&model, &spec, t.batch_size, t.seq_len, t.recompute)?;
    let mut grads = Lora::zeros(&model.config, &spec);

    // ---- Metric sinks: a resumed run drops the lines of steps after its checkpoint.
    let mut sinks: Vec<Box<dyn MetricSink>> = vec![
        Box::new(if resuming {
            JsonlSink::resume(run_dir.metrics_path(), first_step)?
        } else {
            JsonlSink::create(run_dir.metrics_path())?
        }),
        Box::new(TensorBoardSink::create(run_dir.path())?),
    ];

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
    while step < total_steps {
        let started = Instant::now();
        grads.zero();
        // The summed token loss of each micro-batch accumulates into `grads`; the window is
        // scaled by 1/tokens at its end, so every trained token weighs the same however the
        // tokens fall into micro-batches.
        let mut window = GradAccumulation::new(t.grad_accum);
        let done = loop {
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
        let metrics = Metrics {
            step,
            loss: done.loss,
            lr,
            grad_norm,
            tokens_per_s: done.tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
            val_loss,
        };
        for sink in &mut sinks {
            sink.log(&metrics)?;
        }
        on_event(Event::Step(&metrics));
        last_loss = Some(done.loss);
        last_val_loss = val_loss.or(last_val_loss);

        let save_now =
            (t.checkpoint_every > 0 && step % t.checkpoint_every == 0) || step == total_steps;
        if save_now {
            for sink in &mut sinks {
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

    // ---- Clean up: the final adapter in PEFT layout, and the timing for reports.
    save_adapter(
        &run_dir.adapter_dir(),
        &config.adapter_config(),
        &named_tensors(&lora),
    )?;
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

/// Writes `timing.json` for `steps` steps trained in `elapsed` seconds.
pub(crate) fn write_timing(run_dir: &RunDir, steps: u64, elapsed: f64) -> Result<Timing> {
    let timing = Timing {
        steps,
        train_seconds: elapsed,
        seconds_per_step: elapsed / steps.max(1) as f64,
    };
    let timing_path = run_dir.path().join(TIMING_FILE);
    let json = serde_json::to_string_pretty(&timing).map_err(|e| TrainError::Invalid {
        path: timing_path.clone(),
        what: e.to_string(),
    })?;
    write_atomic(&timing_path, json.as_bytes())?;
    Ok(timing)
}

fn lora_spec(config: &RunConfig) -> LoraSpec {
    LoraSpec {
        rank: config.lora.rank,
        alpha: config.lora.alpha,
        dropout: config.lora.dropout as f32,
        rslora: config.lora.rslora,
        targets: config.lora.targets.clone(),
    }
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

pub(crate) struct RunData {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub skipped: Vec<String>,
}

/// Tokenizes the training file (and the validation file, or holds out `data.val_fraction`
/// of the training examples by a seeded draw) and fits every example to `train.seq_len`.
fn load_data(config: &RunConfig, tokenizer: &Tokenizer) -> Result<RunData> {
    let encoder = Encoder::new(tokenizer)?;
    let skip = config.data.skip_bad_lines;
    let overlong = if config.data.drop_overlong {
        Overlong::Drop
    } else {
        Overlong::Truncate
    };
    let train_file = load(&config.data.train, &encoder, skip)?;
    let mut skipped: Vec<String> = train_file.skipped.iter().map(ToString::to_string).collect();
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
    let seq_len = config.train.seq_len;
    let (train, _) = fit(train, seq_len, overlong);
    let (val, _) = fit(val, seq_len, overlong);
    if train.is_empty() {
        return Err(bora_data::DataError::Empty(config.data.train.display().to_string()).into());
    }
    Ok(RunData {
        train,
        val,
        skipped,
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
fn masked_targets(batch: &Batch) -> Vec<Option<u32>> {
    batch
        .targets
        .iter()
        .zip(&batch.loss_mask)
        .map(|(&id, &trained)| trained.then_some(id))
        .collect()
}

fn train_batch<'a>(batch: &'a Batch, targets: &'a [Option<u32>]) -> TrainBatch<'a> {
    TrainBatch {
        inputs: &batch.inputs,
        targets,
        positions: &batch.positions,
        segments: &batch.segments,
        batch_size: batch.batch_size,
        seq_len: batch.seq_len,
    }
}
