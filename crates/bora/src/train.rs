//! `bora train`: resolve the run config (TOML file, then flags), build the metric sinks it
//! asks for, hand both to `bora_train::run`, and show its progress.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bora_eval::{score_heldout, Heldout, HeldoutScore, HELDOUT_SAMPLE};
use bora_hub::hub::Flavor;
use bora_hub::wandb::{Target, TrackedRun, WandbTracking};
use bora_jobs::{Account, HfJobsHost};
use bora_run::{MetricSink, RunDir, RunFiles};
use bora_train::{
    open_run_dir, run, run_torch, run_trainer, Event, ModelSection, NewRun, RunConfig, Start,
    Summary, TorchEnv, TrackingSection,
};
use clap::Args;

#[derive(Args)]
pub struct TrainArgs {
    /// Continue the run in this directory from its latest checkpoint; it must be the only
    /// option (the run's own config.toml says everything else).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = [
        "model", "data", "val", "out", "config", "set", "epochs", "max_steps", "lr",
        "batch_size", "grad_accum", "seq_len", "rank", "alpha", "dropout", "targets", "rslora",
        "seed", "qlora", "pack", "warmup_steps", "schedule", "weight_decay", "max_grad_norm",
        "checkpoint_every", "keep_checkpoints", "eval_every", "recompute", "skip_bad_lines",
        "val_fraction", "drop_overlong", "wandb", "wandb_offline", "wandb_registry", "auto",
        "patience", "lr_range_test",
    ])]
    resume: Option<PathBuf>,
    /// Base model (`model.path`): a `.gguf` file, a model directory, or a Hub id
    /// ORG/NAME[@REV] or ORG/NAME:FILE.gguf, whose commit the run records (`model.revision`).
    #[arg(long, value_name = "PATH|ORG/NAME")]
    model: Option<PathBuf>,
    /// Training JSONL (`data.train`).
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Validation JSONL (`data.eval`).
    #[arg(long, value_name = "FILE")]
    val: Option<PathBuf>,
    /// Run directory, e.g. runs/NAME; its last component is the run name.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run config TOML; flags override its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Set any config key by its dotted name, e.g. `--set optim.eps=1e-6` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// `train.epochs`
    #[arg(long)]
    epochs: Option<u64>,
    /// `train.max_steps` (0: run the epochs)
    #[arg(long)]
    max_steps: Option<u64>,
    /// `optim.lr`
    #[arg(long)]
    lr: Option<f64>,
    /// `train.batch_size`
    #[arg(long)]
    batch_size: Option<usize>,
    /// `train.grad_accum`
    #[arg(long)]
    grad_accum: Option<u32>,
    /// `train.seq_len`
    #[arg(long)]
    seq_len: Option<usize>,
    /// `lora.rank`
    #[arg(long)]
    rank: Option<usize>,
    /// `lora.alpha`
    #[arg(long)]
    alpha: Option<f64>,
    /// `lora.dropout`
    #[arg(long)]
    dropout: Option<f64>,
    /// `lora.targets`, comma-separated: q,k,v,o,gate,up,down
    #[arg(long, value_name = "LIST")]
    targets: Option<String>,
    /// `lora.rslora`
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    rslora: Option<bool>,
    /// `train.seed`
    #[arg(long)]
    seed: Option<u64>,
    /// QLoRA: quantize the base's linear weights on load (`qlora.quant`): NF4, Q8_0, Q4_0 or
    /// Q4_1.
    #[arg(long, value_name = "TYPE")]
    qlora: Option<String>,
    /// `train.packing`
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pack: Option<bool>,
    /// `optim.warmup_steps`
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// `optim.schedule`: constant, linear or cosine
    #[arg(long)]
    schedule: Option<String>,
    /// `optim.weight_decay`
    #[arg(long)]
    weight_decay: Option<f64>,
    /// `optim.max_grad_norm` (0 disables clipping)
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// `train.checkpoint_every`
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// `train.keep_checkpoints`
    #[arg(long)]
    keep_checkpoints: Option<usize>,
    /// `train.eval_every`
    #[arg(long)]
    eval_every: Option<u64>,
    /// `train.recompute`
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    recompute: Option<bool>,
    /// `data.skip_bad_lines`
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    skip_bad_lines: Option<bool>,
    /// `data.val_fraction` (without --val)
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Choose the learning rate with a short range test on the training data (unless --lr is
    /// given) and stop early on validation loss, keeping the best adapter: `--lr-range-test
    /// --patience 3`.
    #[arg(long)]
    auto: bool,
    /// `train.patience`: stop after this many validations without a lower validation loss
    /// and keep the best adapter (0: off).
    #[arg(long)]
    patience: Option<u64>,
    /// `train.lr_range_test`: pick the learning rate with a range test before the run.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    lr_range_test: Option<bool>,
    /// `data.drop_overlong`
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    drop_overlong: Option<bool>,
    /// Track the run in Weights & Biases (`tracking.wandb`): PROJECT or PROJECT/ENTITY. The
    /// key comes from WANDB_API_KEY or ~/.netrc, the server from WANDB_BASE_URL.
    #[arg(long, value_name = "PROJECT[/ENTITY]")]
    wandb: Option<String>,
    /// `tracking.wandb_offline`: send nothing to W&B and print the `wandb sync` command
    /// that uploads the run's TensorBoard files later.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    wandb_offline: Option<bool>,
    /// `tracking.wandb_registry`: link the final adapter, which a tracked run logs as a W&B
    /// `model` artifact, to this registry collection: COLLECTION (in the `model` registry)
    /// or REGISTRY/COLLECTION.
    #[arg(long, value_name = "[REGISTRY/]COLLECTION")]
    wandb_registry: Option<String>,
    /// Where the steps run: `cpu` (bora's kernels), `torch` (the PyTorch trainer on this
    /// machine's GPU, or its CPU in f32; its environment is created under the bora cache on
    /// first use, or BORA_TORCH_PYTHON names one), or `hf-jobs:FLAVOR` (the same trainer as a
    /// Hugging Face Job, e.g. hf-jobs:a10g-large; see docs/hf-jobs.md). The run directory is
    /// the same every way.
    #[arg(long, default_value = "cpu", value_name = "WHERE")]
    on: String,
    /// At the end, score generated answers on this many validation examples (`heldout.json`
    /// in the run directory; 0: no score). The metric is inferred from the expected answers:
    /// json, choice (a class list) or exact.
    #[arg(long, value_name = "N", default_value_t = HELDOUT_SAMPLE)]
    heldout: usize,
    /// With --on hf-jobs: return once the job is started; `bora jobs attach runs/NAME`
    /// follows it later (metrics, checkpoints, adapter).
    #[arg(long)]
    detach: bool,
}

pub fn train(args: &TrainArgs) -> Result<()> {
    let weights_here = !args.on.starts_with("hf-jobs:");
    let (start, config, model_dir) = match &args.resume {
        Some(dir) => {
            let config = RunConfig::load(RunDir::at(dir).config_path())?;
            let model_dir = hub_model_dir(&config.model, weights_here)?;
            let start = Start::Resume {
                dir: dir.clone(),
                model_dir: model_dir.clone(),
            };
            (start, config, model_dir)
        }
        None => {
            let new_run = new_run(args)?;
            let (runs_root, mut config) = new_run.resolve()?;
            let model_dir = pin_hub_model(&mut config.model, weights_here)?;
            let start = Start::New {
                runs_root,
                config: Box::new(config.clone()),
                model_dir: model_dir.clone(),
                unset: new_run.unset()?,
            };
            (start, config, model_dir)
        }
    };
    let run_dir = match (&args.resume, &args.out) {
        (Some(dir), _) | (None, Some(dir)) => dir.clone(),
        (None, None) => bail!("--out runs/NAME is required for a new run (or --resume runs/NAME)"),
    };
    // A remote run is checked and priced before anything else happens.
    let remote = match args.on.strip_prefix("hf-jobs:") {
        Some(flavor) => {
            let flavor = Flavor::find(flavor).map_err(anyhow::Error::msg)?;
            let model_dir = model_dir.unwrap_or_else(|| PathBuf::from(&config.model.path));
            let estimate = bora_jobs::preflight(&config, &model_dir, &flavor)?;
            for line in estimate.lines() {
                eprintln!("{line}");
            }
            let account = Account::from_env(|k| std::env::var(k).ok())?;
            detach_on_interrupt(run_dir.clone(), flavor.name);
            Some(HfJobsHost::new(
                account,
                flavor,
                estimate.timeout_seconds,
                &config.name,
                args.detach,
                Box::new(|line| eprintln!("{line}")),
            ))
        }
        None if args.detach => bail!("--detach is for --on hf-jobs:FLAVOR"),
        None => None,
    };
    let sinks = sinks_for(&config, &run_dir)?;
    let mut progress = Progress::new();
    let mut on_event = |event: Event<'_>| progress.event(event);
    let summary = match (args.on.as_str(), remote) {
        (_, Some(mut host)) => match run_trainer(start, &mut host, sinks, &mut on_event)? {
            Some(summary) => summary,
            None => {
                println!(
                    "detached: `bora jobs attach {0}` follows the job into the run directory, \
                     `bora jobs cancel {0}` stops it",
                    run_dir.display()
                );
                return Ok(());
            }
        },
        ("cpu", None) => run(start, sinks, &mut on_event)?,
        ("torch", None) => {
            let cache = bora_formats::cache::bora_home();
            let env = TorchEnv::resolve(&cache, &mut |line| eprintln!("{line}"))?;
            run_torch(start, &env, sinks, &mut on_event)?
        }
        (other, None) => bail!("--on {other:?}: expected cpu, torch or hf-jobs:FLAVOR"),
    };
    print_summary(&summary);
    if let Some(score) = heldout_score(&summary.run_dir, args.heldout)? {
        println!("{}", score.line());
    }
    Ok(())
}

fn print_summary(summary: &Summary) {
    println!(
        "trained {} steps in {:.1}s; adapter: {}",
        summary.steps,
        summary.timing.train_seconds,
        summary.adapter_dir.display()
    );
}

/// The run's own files, and W&B when its config asks for it (which logs the final adapter as
/// a `model` artifact when the run closes).
fn sinks_for(config: &RunConfig, run_dir: &Path) -> Result<Vec<Box<dyn MetricSink>>> {
    let registry = crate::wandb_models::registry(&config.tracking)?;
    let mut sinks: Vec<Box<dyn MetricSink>> = vec![Box::new(RunFiles::default())];
    if let Some(mut tracking) = wandb_tracking(&config.tracking, config)? {
        tracking.log_adapter_at_close(crate::wandb_models::adapter_request(
            run_dir,
            config,
            &config.tracking.wandb,
            registry,
        ));
        sinks.push(Box::new(tracking));
    }
    Ok(sinks)
}

/// The generation score on up to `limit` of the run's validation examples (its `--val` file
/// or the split it held out), written to `heldout.json`; `None` without validation examples.
fn heldout_score(run: &Path, limit: usize) -> Result<Option<HeldoutScore>> {
    let (dir, config) = open_run_dir(run)?;
    let data = match config.data.eval_path() {
        Some(path) => path.to_path_buf(),
        None if dir.val_split_path().is_file() => dir.val_split_path(),
        None => return Ok(None),
    };
    let model = crate::download::run_model(&config.model)?;
    let heldout = Heldout {
        quantize: config.qlora.quantize()?,
        model,
        adapter: dir.adapter_dir(),
        data,
        limit,
    };
    let mut quiet = |_| {};
    Ok(score_heldout(&dir, &heldout, &mut quiet)?)
}

/// `bora jobs attach RUN`: follows the run's job from the start of its log, mirroring what
/// the run directory lacks (steps, checkpoints) and downloading the adapter at the end.
pub fn attach(run_dir: &Path) -> Result<()> {
    let config = RunConfig::load(RunDir::at(run_dir).config_path())?;
    let model_dir = hub_model_dir(&config.model, false)?;
    let account = Account::from_env(|k| std::env::var(k).ok())?;
    let mut host = HfJobsHost::attach(
        account,
        run_dir,
        &config.name,
        Box::new(|line| eprintln!("{line}")),
    )?;
    let start = Start::Resume {
        dir: run_dir.to_path_buf(),
        model_dir,
    };
    let mut progress = Progress::new();
    let mut on_event = |event: Event<'_>| progress.event(event);
    match run_trainer(
        start,
        &mut host,
        sinks_for(&config, run_dir)?,
        &mut on_event,
    )? {
        Some(summary) => print_summary(&summary),
        None => bail!("{}: the job was not followed", run_dir.display()),
    }
    Ok(())
}

/// Ctrl-C while a Hugging Face Job is followed: bora stops following and says how to reach
/// the job, which keeps running (it is billed until it ends or is cancelled).
fn detach_on_interrupt(run_dir: PathBuf, flavor: &'static str) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        if runtime.block_on(tokio::signal::ctrl_c()).is_ok() {
            let run = run_dir.display();
            eprintln!(
                "\ndetached: the job keeps running on Hugging Face. `bora jobs cancel {run}` \
                 stops it, `bora jobs attach {run}` follows it into the run directory again, \
                 and after it stopped `bora train --resume {run} --on hf-jobs:{flavor}` \
                 continues from the last checkpoint"
            );
            std::process::exit(130);
        }
    });
}

/// For a Hub id in `model.path`: its snapshot directory, fetched if needed, with the commit
/// recorded in `model.revision` so resume and eval load the same files. `None` for a path.
/// `weights_here` false (a run on Hugging Face Jobs, whose job downloads the weights) fetches
/// the config and tokenizer only.
fn pin_hub_model(model: &mut ModelSection, weights_here: bool) -> Result<Option<PathBuf>> {
    if model.path.is_empty() {
        return Ok(None);
    }
    let revision = (!model.revision.is_empty()).then_some(model.revision.clone());
    let located = if weights_here {
        crate::download::locate(&model.path, revision.as_deref())?
    } else {
        crate::download::locate_config(&model.path, revision.as_deref())?
    };
    Ok(located.hub.map(|hub| {
        model.path = hub.model.name();
        model.revision = hub.commit;
        located.path
    }))
}

/// A resumed run's Hub model, at the commit it started from (from the cache, no network).
fn hub_model_dir(model: &ModelSection, weights_here: bool) -> Result<Option<PathBuf>> {
    let mut pinned = model.clone();
    pin_hub_model(&mut pinned, weights_here)
}

/// Validations without improvement before `--auto` stops a run: with ten validations per
/// run, three tolerate the noise of a small validation set and still save a third of a run
/// that has stopped improving.
const AUTO_PATIENCE: u64 = 3;

/// The config file (or defaults), then every flag given, by the key it sets.
fn new_run(args: &TrainArgs) -> Result<NewRun> {
    let Some(out) = &args.out else {
        bail!("--out runs/NAME is required for a new run (or --resume runs/NAME)");
    };
    let mut r = NewRun::new(out);
    r.config_file = args.config.clone();
    r.model = args.model.clone();
    r.data = args.data.clone();
    r.val = args.val.clone();
    r.value("train.epochs", args.epochs);
    r.value("train.max_steps", args.max_steps);
    r.float("optim.lr", args.lr);
    r.value("train.batch_size", args.batch_size);
    r.value("train.grad_accum", args.grad_accum);
    r.value("train.seq_len", args.seq_len);
    r.value("lora.rank", args.rank);
    r.float("lora.alpha", args.alpha);
    r.float("lora.dropout", args.dropout);
    r.names("lora.targets", args.targets.as_deref());
    r.value("lora.rslora", args.rslora);
    r.value("train.seed", args.seed);
    if let Some(quant) = &args.qlora {
        r.value("qlora.enabled", Some(true));
        r.string("qlora.quant", Some(&quant.to_lowercase()));
    }
    r.value("train.packing", args.pack);
    r.value("optim.warmup_steps", args.warmup_steps);
    r.string("optim.schedule", args.schedule.as_deref());
    r.float("optim.weight_decay", args.weight_decay);
    r.float("optim.max_grad_norm", args.max_grad_norm);
    r.value("train.checkpoint_every", args.checkpoint_every);
    r.value("train.keep_checkpoints", args.keep_checkpoints);
    r.value("train.eval_every", args.eval_every);
    r.value("train.recompute", args.recompute);
    r.value("data.skip_bad_lines", args.skip_bad_lines);
    r.float("data.val_fraction", args.val_fraction);
    r.value("data.drop_overlong", args.drop_overlong);
    r.value(
        "train.patience",
        args.patience.or(args.auto.then_some(AUTO_PATIENCE)),
    );
    r.value(
        "train.lr_range_test",
        args.lr_range_test.or(args.auto.then_some(true)),
    );
    r.string("tracking.wandb", args.wandb.as_deref());
    r.value("tracking.wandb_offline", args.wandb_offline);
    r.string("tracking.wandb_registry", args.wandb_registry.as_deref());
    for item in &args.set {
        r.set(item)?;
    }
    Ok(r)
}

/// The W&B sink `tracking` asks for, if any, for the run `config`; its messages go to
/// stderr. A missing API key is an error here, before any work.
pub(crate) fn wandb_tracking(
    tracking: &TrackingSection,
    config: &RunConfig,
) -> Result<Option<WandbTracking>> {
    let Some((project, entity)) = tracking.wandb_target()? else {
        return Ok(None);
    };
    let run = TrackedRun {
        name: config.name.clone(),
        config: serde_json::to_value(config)?,
        seed: config.train.seed,
    };
    let tracking = WandbTracking::new(
        Target { project, entity },
        tracking.wandb_offline,
        run,
        Box::new(|line| eprintln!("{line}")),
    )
    .context("--wandb asks for W&B tracking")?;
    Ok(Some(tracking))
}

/// A progress bar redrawn in place on a terminal, one log line per step otherwise (CI,
/// pipes, files).
struct Progress {
    terminal: bool,
    total_steps: u64,
    /// When the latest steps ended (at most [`RECENT_STEPS`] + 1), the set-up's end first.
    recent: VecDeque<Instant>,
}

/// Steps the ETA is averaged over: enough to smooth a validation or checkpoint step, few
/// enough to follow a machine that gets busier.
const RECENT_STEPS: usize = 20;

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            total_steps: 0,
            recent: VecDeque::from([Instant::now()]),
        }
    }

    /// Seconds per step over the recent steps, validation and checkpoints included.
    fn step_seconds(&self) -> f64 {
        match (self.recent.front(), self.recent.back()) {
            (Some(first), Some(last)) if self.recent.len() > 1 => {
                last.duration_since(*first).as_secs_f64() / (self.recent.len() - 1) as f64
            }
            _ => 0.0,
        }
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Chosen(choices) => {
                for choice in choices {
                    eprintln!("{choice}");
                }
            }
            Event::Begin {
                first_step,
                total_steps,
                train_examples,
                val_examples,
                skipped_lines,
            } => {
                for line in skipped_lines {
                    eprintln!("skipped {line}");
                }
                eprintln!(
                    "training on {train_examples} examples ({val_examples} for validation): \
                     steps {}..={total_steps}",
                    first_step + 1
                );
                self.total_steps = total_steps;
                self.recent = VecDeque::from([Instant::now()]);
            }
            Event::Step(m) => {
                self.recent.push_back(Instant::now());
                if self.recent.len() > RECENT_STEPS + 1 {
                    self.recent.pop_front();
                }
                let per_step = self.step_seconds();
                let eta = per_step * self.total_steps.saturating_sub(m.step) as f64;
                let rates = format!(
                    "tok/s {:.0} processed, {:.0} trained",
                    m.processed_tokens_per_s, m.tokens_per_s
                );
                let val = m
                    .val_loss
                    .map(|v| format!(" val_loss {v:.4}"))
                    .unwrap_or_default();
                if self.terminal {
                    const WIDTH: u64 = 30;
                    let filled = (m.step * WIDTH / self.total_steps.max(1)).min(WIDTH) as usize;
                    eprint!(
                        "\r\x1b[2K[{}{}] {}/{} loss {:.4}{val} {rates} ETA {}",
                        "#".repeat(filled),
                        ".".repeat(WIDTH as usize - filled),
                        m.step,
                        self.total_steps,
                        m.loss,
                        clock(eta)
                    );
                } else {
                    eprintln!(
                        "step {}/{} loss {:.4}{val} lr {:.3e} grad_norm {:.3} {rates} ETA {}",
                        m.step,
                        self.total_steps,
                        m.loss,
                        m.lr,
                        m.grad_norm,
                        clock(eta)
                    );
                }
            }
            Event::BestKept { best, stopped_at } => {
                let clear = if self.terminal { "\r\x1b[2K" } else { "" };
                let stopped = stopped_at
                    .map(|s| format!("stopped early after step {s}; "))
                    .unwrap_or_default();
                eprintln!(
                    "{clear}{stopped}final adapter: step {} (lowest validation loss {:.4})",
                    best.step, best.val_loss
                );
            }
            Event::Checkpoint { step, dir } => {
                let clear = if self.terminal { "\r\x1b[2K" } else { "" };
                eprintln!("{clear}step {step}: checkpoint {}", dir.display());
            }
        }
    }
}

/// Seconds as `1h02m03s`, `4m05s` or `6s`.
fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
    }
}
