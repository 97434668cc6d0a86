//! `bora train --on torch`: the same run, its steps taken by the PyTorch trainer
//! (`trainers/torch/trainer.py`, shipped inside the binary) in a Python environment bora
//! creates on first use with pinned versions.
//!
//! bora does everything but the steps, exactly as a CPU run does ([`crate::recipe`]'s
//! set-up): config, data validation, tokenization, packing, order, initial adapter. It writes
//! the micro-batches of every step in order into a job directory, runs the trainer on it,
//! mirrors each step's metrics into the run's sinks, turns the trainer's checkpoints into
//! bora checkpoints (adding the dropout RNG and data position the CPU loop would have saved,
//! so `--resume` works whichever way the run continues), and publishes the final adapter.
//! The run directory is the one a CPU run leaves.
//!
//! Where the trainer runs is a [`TrainerHost`]: a process on this machine ([`LocalTrainer`]),
//! or a remote job that the caller starts, follows and fetches files from (Hugging Face
//! Jobs, driven by `bora train --on hf-jobs`). Either way bora reads the trainer's stdout
//! protocol: one JSON line per step, checkpoint and the end, with output directories named
//! relative to the trainer's `--out`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use bora_data::{Batch, DataPosition, Loader};
use bora_formats::safetensors::{write_safetensors, Dtype, Safetensors, TensorData};
use bora_run::{MetricSink, Metrics};
use serde::Deserialize;
use serde_json::json;

use crate::checkpoint::{save_adapter, Checkpoint, NamedTensor, ParamSpec};
use crate::error::{io_err, Result, TrainError};
use crate::fsutil::write_atomic;
use crate::optim::AdamWState;
use crate::recipe::{
    closing_sinks, named_tensors, set_up_with, write_timing, Event, SetUp, Start, Summary,
};
use crate::rng::RngState;

/// The trainer and its pinned requirements, as committed in `trainers/torch/`.
pub const TRAINER_PY: &str = include_str!("../../../trainers/torch/trainer.py");
pub const REQUIREMENTS: &str = include_str!("../../../trainers/torch/requirements.txt");

/// Job directory name inside the run directory while the trainer runs.
const JOB_DIR: &str = ".torch-job";

/// Where the trainer runs.
#[derive(Debug, Clone)]
pub struct TorchEnv {
    /// The environment's Python interpreter.
    pub python: PathBuf,
    /// `float32`, `bfloat16` or `auto` (bf16 on a GPU, f32 on the CPU).
    pub dtype: String,
}

impl TorchEnv {
    /// `BORA_TORCH_PYTHON` when set (an existing environment with the requirements), else
    /// the environment under `cache_dir/torch-venv-HASH`, created with the pinned
    /// requirements the first time (a few GB of wheels; `log` hears what is going on).
    pub fn resolve(cache_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<Self> {
        if let Some(python) = std::env::var_os("BORA_TORCH_PYTHON") {
            return Ok(Self {
                python: PathBuf::from(python),
                dtype: "auto".into(),
            });
        }
        let hash = bora_run::crc32c(REQUIREMENTS.as_bytes());
        let venv = cache_dir.join(format!("torch-venv-{hash:08x}"));
        let python = venv.join("bin").join("python");
        let marker = venv.join("bora-requirements.txt");
        if python.exists() && marker.exists() {
            return Ok(Self {
                python,
                dtype: "auto".into(),
            });
        }
        log(&format!(
            "creating the torch environment in {} (pinned torch, transformers, peft, bitsandbytes; \
             a few GB, once)",
            venv.display()
        ));
        run_tool(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        let reqs = venv.join("requirements.txt");
        write_atomic(&reqs, REQUIREMENTS.as_bytes())?;
        run_tool(
            Command::new(&python)
                .args(["-m", "pip", "install", "--quiet", "-r"])
                .arg(&reqs),
        )?;
        write_atomic(&marker, REQUIREMENTS.as_bytes())?;
        Ok(Self {
            python,
            dtype: "auto".into(),
        })
    }
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().map_err(|e| TrainError::Trainer {
        what: format!("cannot run {shown}: {e} (is Python 3 with venv installed?)"),
    })?;
    if !status.success() {
        return Err(TrainError::Trainer {
            what: format!("{shown} failed ({status})"),
        });
    }
    Ok(())
}

/// Where the CPU loop would stand after a step: what a bora checkpoint of that step holds
/// besides the tensors.
struct StepState {
    rng: RngState,
    data: DataPosition,
}

/// Writes the job: `job.json`, the micro-batches of steps `first_step+1 ..= total_steps`
/// in the order the CPU loop draws them, the validation batches, the initial adapter (and
/// the optimizer moments when resuming). Returns the CPU loop's state at each checkpoint step.
fn write_job(
    s: &mut SetUp<()>,
    job: &Path,
    dtype: &str,
    access: ModelAccess,
) -> Result<HashMap<u64, StepState>> {
    let t = &s.config.train;
    // A job left by a run that stopped is stale: start from an empty directory.
    if job.exists() {
        std::fs::remove_dir_all(job).map_err(io_err(job))?;
    }
    std::fs::create_dir_all(job).map_err(io_err(job))?;
    let mut loader = Loader::new(&s.data.train, s.batches, s.position)?;
    let mut tensors = Vec::new();
    let mut micro_batches = Vec::new();
    let mut states = HashMap::new();
    let mut micro = 0usize;
    let mut checkpoint_steps = Vec::new();
    let mut eval_steps = Vec::new();
    for step in s.first_step + 1..=s.total_steps {
        for _ in 0..t.grad_accum {
            let batch = loader.next_batch();
            // The CPU loop draws one dropout seed per micro-batch; drawing it here keeps the
            // checkpoints' RNG state the one a CPU run would resume from.
            s.dropout_rng.next_u64();
            push_batch(&mut tensors, micro, &batch)?;
            micro += 1;
        }
        micro_batches.push(t.grad_accum);
        if (t.checkpoint_every > 0 && step % t.checkpoint_every == 0) || step == s.total_steps {
            checkpoint_steps.push(step);
            states.insert(
                step,
                StepState {
                    rng: s.dropout_rng.state(),
                    data: loader.position(),
                },
            );
        }
        if (t.eval_every > 0 && step % t.eval_every == 0) || step == s.total_steps {
            eval_steps.push(step);
        }
    }
    write_safetensors(job.join("batches.safetensors"), &tensors, None)?;
    let mut val_batches = 0;
    if !s.data.val.is_empty() {
        let mut val = Vec::new();
        let mut loader = Loader::new(&s.data.val, s.batches, DataPosition::default())?;
        for i in 0..loader.batches_in_epoch() {
            push_batch(&mut val, i, &loader.next_batch())?;
            val_batches += 1;
        }
        write_safetensors(job.join("val.safetensors"), &val, None)?;
    }
    save_adapter(
        &job.join("initial_adapter"),
        &s.config.adapter_config(),
        &named_tensors(&s.lora),
    )?;
    if s.first_step > 0 {
        let state = s.optimizer.state();
        let mut moments = Vec::new();
        for (p, (m, v)) in s
            .params
            .iter()
            .zip(state.exp_avg.iter().zip(&state.exp_avg_sq))
        {
            for (suffix, values) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let data = TensorData::from_f32(Dtype::F32, p.shape.clone(), values)?;
                moments.push((format!("{}.{suffix}", p.name), data));
            }
        }
        write_safetensors(job.join("initial_optimizer.safetensors"), &moments, None)?;
    }
    let (model, gguf_file, revision) = trainer_model(&s.config.model, access)?;
    let lrs: Vec<f64> = (0..s.total_steps).map(|i| s.schedule.lr(i)).collect();
    let o = &s.config.optim;
    let spec = json!({
        "model": model,
        "gguf_file": gguf_file,
        "revision": revision,
        "seed": t.seed,
        "first_step": s.first_step,
        "total_steps": s.total_steps,
        "grad_accum": t.grad_accum,
        "micro_batches": micro_batches,
        "lrs": lrs,
        "eval_steps": eval_steps,
        "checkpoint_steps": checkpoint_steps,
        "val_batches": val_batches,
        "max_grad_norm": o.max_grad_norm,
        "betas": o.betas,
        "eps": o.eps,
        "weight_decay": o.weight_decay,
        "qlora": if s.config.qlora.enabled { s.config.qlora.quant.as_str() } else { "" },
        "recompute": t.recompute,
        "sliding_window": sliding_window(s)?,
        "dtype": dtype,
        "config": s.config,
    });
    let path = job.join("job.json");
    let text = serde_json::to_string_pretty(&spec).map_err(|e| TrainError::Invalid {
        path: path.clone(),
        what: e.to_string(),
    })?;
    write_atomic(&path, text.as_bytes())?;
    write_atomic(&job.join("trainer.py"), TRAINER_PY.as_bytes())?;
    write_atomic(&job.join("requirements.txt"), REQUIREMENTS.as_bytes())?;
    Ok(states)
}

/// How the trainer finds the base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelAccess {
    /// The files on this machine (`model.path`, or the Hub snapshot bora downloaded).
    LocalFiles,
    /// The Hub id at the run's pinned commit: a remote machine downloads it itself.
    Hub,
}

/// What `from_pretrained` gets: a directory or Hub id, the GGUF file inside it if any, and
/// the commit (for a Hub id).
fn trainer_model(
    model: &crate::ModelSection,
    access: ModelAccess,
) -> Result<(String, Option<String>, Option<String>)> {
    match access {
        ModelAccess::LocalFiles => {
            let path = Path::new(&model.path);
            let (dir, gguf) = match path.extension() {
                Some(e) if e == "gguf" => (
                    path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                    path.file_name().map(|n| n.to_string_lossy().into_owned()),
                ),
                _ => (path.to_path_buf(), None),
            };
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            Ok((dir.display().to_string(), gguf, None))
        }
        ModelAccess::Hub => {
            if model.revision.is_empty() {
                return Err(TrainError::Config {
                    key: "model.path".into(),
                    reason: format!(
                        "`{}` is a local path; a remote trainer downloads the base from the \
                         Hub, so give a Hub id (ORG/NAME or ORG/NAME:FILE.gguf)",
                        model.path
                    ),
                });
            }
            let (repo, gguf) = match model.path.split_once(':') {
                Some((repo, file)) => (repo.to_owned(), Some(file.to_owned())),
                None => (model.path.clone(), None),
            };
            Ok((repo, gguf, Some(model.revision.clone())))
        }
    }
}

/// The one sliding window the trainer applies, `None` where no layer's window is shorter
/// than a sequence; models whose layers differ (interleaved windows) are refused.
fn sliding_window(s: &SetUp<()>) -> Result<Option<usize>> {
    let seq = s.config.train.seq_len;
    let windows: Vec<Option<usize>> = s
        .model_config
        .layer_windows
        .iter()
        .map(|w| w.filter(|&w| w < seq))
        .collect();
    match windows.first() {
        Some(first) if windows.iter().any(|w| w != first) => Err(TrainError::Config {
            key: "train.seq_len".into(),
            reason: format!(
                "this model's layers have different sliding windows ({:?}) shorter than the \
                 sequence; the torch trainer applies one window: train on the CPU or set \
                 train.seq_len to at most the shortest window",
                s.model_config.layer_windows
            ),
        }),
        Some(first) => Ok(*first),
        None => Ok(None),
    }
}

fn push_batch(out: &mut Vec<(String, TensorData<'static>)>, i: usize, b: &Batch) -> Result<()> {
    let shape = vec![b.batch_size, b.seq_len];
    let mut segment = vec![0i32; b.inputs.len()];
    for (id, w) in b.segments.windows(2).enumerate() {
        for v in &mut segment[w[0]..w[1]] {
            *v = id as i32;
        }
    }
    let targets: Vec<i32> = b
        .targets
        .iter()
        .zip(&b.loss_mask)
        .map(|(&t, &m)| if m { t as i32 } else { -100 })
        .collect();
    let ints = |v: Vec<i32>| TensorData {
        dtype: Dtype::I32,
        shape: shape.clone(),
        data: v
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>()
            .into(),
    };
    out.push((
        format!("inputs.{i}"),
        ints(b.inputs.iter().map(|&x| x as i32).collect()),
    ));
    out.push((format!("targets.{i}"), ints(targets)));
    out.push((
        format!("positions.{i}"),
        ints(b.positions.iter().map(|&x| x as i32).collect()),
    ));
    out.push((format!("segments.{i}"), ints(segment)));
    Ok(())
}

/// One line of the trainer's stdout.
#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Line {
    Step(Metrics),
    /// `path` is relative to the trainer's output directory.
    Checkpoint {
        step: u64,
        path: String,
    },
    Memory {
        peak_bytes: u64,
    },
    Done {
        adapter: String,
    },
    Error {
        message: String,
    },
}

fn read_tensors(
    dir: &Path,
    file: &str,
    names: &[ParamSpec],
    suffix: &str,
) -> Result<Vec<Vec<f32>>> {
    let st = Safetensors::open(dir.join(file))?;
    names
        .iter()
        .map(|p| Ok(st.tensor_f32(&format!("{}{suffix}", p.name))?))
        .collect()
}

fn tensors_of(params: &[ParamSpec], values: Vec<Vec<f32>>) -> Vec<NamedTensor> {
    params
        .iter()
        .zip(values)
        .map(|(p, values)| NamedTensor {
            name: p.name.clone(),
            shape: p.shape.clone(),
            values,
        })
        .collect()
}

/// Where the trainer runs and how bora talks to it.
pub trait TrainerHost {
    /// `auto`, `float32` or `bfloat16` (see `trainers/torch/trainer.py`).
    fn dtype(&self) -> &str;
    fn model_access(&self) -> ModelAccess;
    /// Starts the trainer on the prepared job directory (or attaches to the one already
    /// running on it).
    fn start(&mut self, job: &Path) -> Result<()>;
    /// After [`TrainerHost::start`]: whether bora leaves the trainer running without
    /// following it (a remote job started with `--detach`).
    fn detached(&self) -> bool {
        false
    }
    /// The trainer's next stdout line; `None` once it has stopped.
    fn next_line(&mut self) -> Result<Option<String>>;
    /// The trainer's output directory `rel` (`checkpoints/step-N`, `adapter`) on this
    /// machine, holding at least `files`.
    fn fetch(&mut self, rel: &str, files: &[&str]) -> Result<PathBuf>;
    /// After the last line: why the trainer failed, or `None` when it succeeded.
    fn failure(&mut self) -> Result<Option<String>>;
}

/// The trainer as a process on this machine, its output inside the job directory.
pub struct LocalTrainer {
    env: TorchEnv,
    out: PathBuf,
    child: Option<std::process::Child>,
    lines: Option<std::io::Lines<BufReader<std::process::ChildStdout>>>,
}

impl LocalTrainer {
    pub fn new(env: TorchEnv) -> Self {
        Self {
            env,
            out: PathBuf::new(),
            child: None,
            lines: None,
        }
    }
}

impl TrainerHost for LocalTrainer {
    fn dtype(&self) -> &str {
        &self.env.dtype
    }

    fn model_access(&self) -> ModelAccess {
        ModelAccess::LocalFiles
    }

    fn start(&mut self, job: &Path) -> Result<()> {
        self.out = job.join("out");
        let mut child = Command::new(&self.env.python)
            .arg(job.join("trainer.py"))
            .arg("--job")
            .arg(job)
            .arg("--out")
            .arg(&self.out)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| TrainError::Trainer {
                what: format!("cannot start {}: {e}", self.env.python.display()),
            })?;
        let stdout = child.stdout.take().ok_or_else(|| TrainError::Trainer {
            what: "the trainer's output is not readable".into(),
        })?;
        self.lines = Some(BufReader::new(stdout).lines());
        self.child = Some(child);
        Ok(())
    }

    fn next_line(&mut self) -> Result<Option<String>> {
        match self.lines.as_mut().and_then(Iterator::next) {
            Some(line) => Ok(Some(line.map_err(io_err(&self.out))?)),
            None => Ok(None),
        }
    }

    fn fetch(&mut self, rel: &str, _files: &[&str]) -> Result<PathBuf> {
        Ok(self.out.join(rel))
    }

    fn failure(&mut self) -> Result<Option<String>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(Some("the trainer was never started".into()));
        };
        let status = child.wait().map_err(io_err(&self.out))?;
        Ok((!status.success()).then(|| format!("the torch trainer exited with {status}")))
    }
}

/// Runs (or resumes) a training run with the torch trainer on this machine; the same run
/// directory, metrics and events as [`crate::run`].
pub fn run_torch(
    start: Start,
    env: &TorchEnv,
    sinks: Vec<Box<dyn MetricSink>>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Summary> {
    run_trainer(start, &mut LocalTrainer::new(env.clone()), sinks, on_event)?.ok_or_else(|| {
        TrainError::Trainer {
            what: "the local trainer stopped being followed".into(),
        }
    })
}

/// Runs (or resumes, or follows again) a training run with the torch trainer wherever `host`
/// runs it; `None` when the host left the trainer running ([`TrainerHost::detached`]).
/// Steps and checkpoints the run directory already has (a job followed again from the
/// start of its log) are not mirrored twice.
pub fn run_trainer(
    start: Start,
    host: &mut dyn TrainerHost,
    sinks: Vec<Box<dyn MetricSink>>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Option<Summary>> {
    closing_sinks(sinks, |sinks| train_torch(start, host, sinks, on_event))
}

fn train_torch(
    start: Start,
    host: &mut dyn TrainerHost,
    sinks: &mut [Box<dyn MetricSink>],
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Option<Summary>> {
    // The trainer loads the base itself: bora needs its shape, not its weights.
    let mut s = set_up_with(start, |_, _, _| Ok(()))?;
    if s.config.train.patience > 0 {
        return Err(TrainError::Config {
            key: "train.patience".into(),
            reason: "early stopping runs with --on cpu only; set it to 0 for --on torch".into(),
        });
    }
    let job = s.run_dir.path().join(JOB_DIR);
    let dtype = host.dtype().to_owned();
    let states = write_job(&mut s, &job, &dtype, host.model_access())?;
    let run_dir = s.run_dir.path().to_path_buf();
    for sink in sinks.iter_mut() {
        sink.start(&s.run_dir, s.first_step)?;
    }
    if !s.choices.is_empty() {
        on_event(Event::Chosen(&s.choices));
    }
    on_event(Event::Begin {
        first_step: s.first_step,
        total_steps: s.total_steps,
        train_examples: s.data.train.len(),
        val_examples: s.data.val.len(),
        skipped_lines: &s.data.skipped,
    });
    host.start(&job)?;
    if host.detached() {
        return Ok(None);
    }
    let session = Instant::now();
    let (mut step, mut last_loss, mut last_val_loss, mut adapter) =
        (s.first_step, None, None, None);
    while let Some(line) = host.next_line()? {
        // Anything that is not an event (a library's warning) is passed on as is.
        let Ok(event) = serde_json::from_str::<Line>(&line) else {
            eprintln!("{line}");
            continue;
        };
        match event {
            Line::Step(m) if m.step <= s.first_step => {}
            Line::Checkpoint { step, .. } if step <= s.first_step => {}
            Line::Step(m) => {
                for sink in sinks.iter_mut() {
                    sink.log(&m)?;
                }
                on_event(Event::Step(&m));
                step = m.step;
                last_loss = Some(m.loss);
                last_val_loss = m.val_loss.or(last_val_loss);
            }
            Line::Checkpoint { step, path } => {
                for sink in sinks.iter_mut() {
                    sink.flush()?;
                }
                let state = states.get(&step).ok_or_else(|| TrainError::Trainer {
                    what: format!("the trainer saved step {step}, which is no checkpoint step"),
                })?;
                let path =
                    host.fetch(&path, &[crate::ADAPTER_WEIGHTS_FILE, crate::OPTIMIZER_FILE])?;
                let params = read_tensors(&path, crate::ADAPTER_WEIGHTS_FILE, &s.params, "")?;
                let exp_avg = read_tensors(&path, crate::OPTIMIZER_FILE, &s.params, ".exp_avg")?;
                let exp_avg_sq =
                    read_tensors(&path, crate::OPTIMIZER_FILE, &s.params, ".exp_avg_sq")?;
                let ckpt = Checkpoint {
                    step,
                    adapter_config: s.config.adapter_config(),
                    params: tensors_of(&s.params, params),
                    optimizer: AdamWState {
                        step,
                        exp_avg,
                        exp_avg_sq,
                    },
                    rng: state.rng.clone(),
                    data: state.data,
                    elapsed_s: s.elapsed + session.elapsed().as_secs_f64(),
                };
                let dir = ckpt.save(
                    &s.run_dir.checkpoints_dir(),
                    s.config.train.keep_checkpoints,
                )?;
                on_event(Event::Checkpoint { step, dir: &dir });
            }
            Line::Memory { peak_bytes } => {
                eprintln!(
                    "torch trainer: peak GPU memory {:.2} GiB",
                    peak_bytes as f64 / (1u64 << 30) as f64
                )
            }
            Line::Done { adapter: path } => adapter = Some(path),
            Line::Error { message } => return Err(TrainError::Trainer { what: message }),
        }
    }
    let failure = host.failure()?;
    let adapter = match (failure, adapter) {
        (None, Some(path)) => path,
        (why, _) => {
            return Err(TrainError::Trainer {
                what: format!(
                    "{} at step {step}; its log is above, and `bora train --resume {}` \
                     continues from the last checkpoint",
                    why.unwrap_or_else(|| "the trainer stopped without its adapter".into()),
                    run_dir.display()
                ),
            })
        }
    };
    let adapter = host.fetch(&adapter, &[crate::ADAPTER_WEIGHTS_FILE])?;
    let values = read_tensors(&adapter, crate::ADAPTER_WEIGHTS_FILE, &s.params, "")?;
    save_adapter(
        &s.run_dir.adapter_dir(),
        &s.config.adapter_config(),
        &tensors_of(&s.params, values),
    )?;
    let timing = write_timing(
        &s.run_dir,
        step,
        s.elapsed + session.elapsed().as_secs_f64(),
    )?;
    std::fs::remove_dir_all(&job).map_err(io_err(&job))?;
    Ok(Some(Summary {
        run_dir: run_dir.clone(),
        adapter_dir: s.run_dir.adapter_dir(),
        steps: step,
        last_loss,
        last_val_loss,
        timing,
    }))
}
