//! `bora train`: resolve the run config (TOML file, then flags), hand it to
//! `bora_train::run`, and show its progress.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bora_hub::wandb::{generate_run_id, Client, RunSpec, Target, WandbRun, WandbSink};
use bora_train::{
    run, run_torch, Event, MetricSink, Metrics, RunConfig, Start, TorchEnv, TrackingSection,
    CONFIG_FILE, METRICS_FILE,
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
        "val_fraction", "drop_overlong", "wandb", "wandb_offline",
    ])]
    resume: Option<PathBuf>,
    /// Base model: a `.gguf` file or a model directory (`model.path`).
    #[arg(long, value_name = "PATH")]
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
    /// Where the steps run: `cpu` (bora's kernels) or `torch` (the PyTorch trainer on this
    /// machine's GPU, or its CPU in f32; its environment is created under the bora cache on
    /// first use, or BORA_TORCH_PYTHON names one). The run directory is the same either way.
    #[arg(long, default_value = "cpu", value_name = "WHERE")]
    on: String,
}

pub fn train(args: &TrainArgs) -> Result<()> {
    let (start, config, run_dir) = match &args.resume {
        Some(dir) => {
            let config = RunConfig::load(dir.join(CONFIG_FILE))?;
            (Start::Resume { dir: dir.clone() }, config, dir.clone())
        }
        None => {
            let (runs_root, config) = resolve_config(args)?;
            let run_dir = runs_root.join(&config.name);
            let start = Start::New {
                runs_root,
                config: Box::new(config.clone()),
            };
            (start, config, run_dir)
        }
    };
    let mut tracking = WandbTracking::new(&config.tracking)?;
    let mut progress = Progress::new();
    let mut on_event = |event: Event<'_>| {
        if let Some(t) = tracking.as_mut() {
            t.event(&event, &config, &run_dir);
        }
        progress.event(event);
    };
    let result = match args.on.as_str() {
        "cpu" => run(start, &mut on_event),
        "torch" => {
            let cache = bora_formats::cache::bora_home();
            let env = TorchEnv::resolve(&cache, &mut |line| eprintln!("{line}"))?;
            run_torch(start, &env, &mut on_event)
        }
        other => bail!("--on {other:?}: expected cpu or torch"),
    };
    if let Some(t) = tracking {
        t.finish(i32::from(result.is_err()), &run_dir);
    }
    let summary = result?;
    println!(
        "trained {} steps in {:.1}s; adapter: {}",
        summary.steps,
        summary.timing.train_seconds,
        summary.adapter_dir.display()
    );
    Ok(())
}

/// The config file (or defaults), then every flag given, validated once complete.
fn resolve_config(args: &TrainArgs) -> Result<(PathBuf, RunConfig)> {
    let mut config = match &args.config {
        Some(path) => RunConfig::load_unchecked(path)?,
        None => RunConfig::default(),
    };
    // Paths are stored absolute so `--resume` works from any directory.
    if let Some(model) = &args.model {
        config.model.path = absolute_if_local(model).display().to_string();
    }
    if let Some(data) = &args.data {
        config.data.train = absolute_if_local(data);
    }
    if let Some(val) = &args.val {
        config.data.eval = absolute_if_local(val);
    }
    let Some(out) = &args.out else {
        bail!("--out runs/NAME is required for a new run (or --resume runs/NAME)");
    };
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: needs a directory name", out.display()))?;
    config.name = name.to_string_lossy().into_owned();
    let runs_root = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };

    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            overrides.push((key.to_owned(), v));
        }
    };
    let text = |v: &Option<String>| v.as_ref().map(|s| format!("{s:?}"));
    set("train.epochs", args.epochs.map(|v| v.to_string()));
    set("train.max_steps", args.max_steps.map(|v| v.to_string()));
    set("optim.lr", args.lr.map(toml_float));
    set("train.batch_size", args.batch_size.map(|v| v.to_string()));
    set("train.grad_accum", args.grad_accum.map(|v| v.to_string()));
    set("train.seq_len", args.seq_len.map(|v| v.to_string()));
    set("lora.rank", args.rank.map(|v| v.to_string()));
    set("lora.alpha", args.alpha.map(toml_float));
    set("lora.dropout", args.dropout.map(toml_float));
    set(
        "lora.targets",
        args.targets.as_ref().map(|list| {
            let items: Vec<String> = list
                .split(',')
                .map(|t| format!("{:?}", t.trim().to_lowercase()))
                .collect();
            format!("[{}]", items.join(", "))
        }),
    );
    set("lora.rslora", args.rslora.map(|v| v.to_string()));
    set("train.seed", args.seed.map(|v| v.to_string()));
    if let Some(quant) = &args.qlora {
        set("qlora.enabled", Some("true".into()));
        set("qlora.quant", Some(format!("{:?}", quant.to_lowercase())));
    }
    set("train.packing", args.pack.map(|v| v.to_string()));
    set(
        "optim.warmup_steps",
        args.warmup_steps.map(|v| v.to_string()),
    );
    set("optim.schedule", text(&args.schedule));
    set("optim.weight_decay", args.weight_decay.map(toml_float));
    set("optim.max_grad_norm", args.max_grad_norm.map(toml_float));
    set(
        "train.checkpoint_every",
        args.checkpoint_every.map(|v| v.to_string()),
    );
    set(
        "train.keep_checkpoints",
        args.keep_checkpoints.map(|v| v.to_string()),
    );
    set("train.eval_every", args.eval_every.map(|v| v.to_string()));
    set("train.recompute", args.recompute.map(|v| v.to_string()));
    set(
        "data.skip_bad_lines",
        args.skip_bad_lines.map(|v| v.to_string()),
    );
    set("data.val_fraction", args.val_fraction.map(toml_float));
    set(
        "data.drop_overlong",
        args.drop_overlong.map(|v| v.to_string()),
    );
    set("tracking.wandb", text(&args.wandb));
    set(
        "tracking.wandb_offline",
        args.wandb_offline.map(|v| v.to_string()),
    );
    for item in &args.set {
        let (key, value) = item
            .split_once('=')
            .with_context(|| format!("--set {item}: expected KEY=VALUE"))?;
        overrides.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    for (key, value) in &overrides {
        config.apply_override(key, value)?;
    }
    config.validate()?;
    Ok((runs_root, config))
}

/// A float as TOML reads it back as a float (`1` would be an integer).
fn toml_float(x: f64) -> String {
    let s = x.to_string();
    if s.contains(['.', 'e', 'E']) || !x.is_finite() {
        s
    } else {
        format!("{s}.0")
    }
}

fn absolute_if_local(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Weights & Biases for one command, as `[tracking]` asks: live through bora-hub's client, or
/// offline (the TensorBoard files, synced later). Tracking never stops the command: a W&B
/// failure is one warning, and `metrics.jsonl` and TensorBoard carry on.
pub(crate) struct WandbTracking {
    target: Target,
    offline: bool,
    /// Taken by `start`; `None` offline.
    client: Option<Client>,
    /// The live run, once started.
    sink: Option<WandbSink>,
    started: bool,
}

impl WandbTracking {
    /// Reads the API key now, so a run that asks for W&B without a key stops before any
    /// work rather than training untracked. `None` when W&B is off.
    pub(crate) fn new(tracking: &TrackingSection) -> Result<Option<Self>> {
        let Some((project, entity)) = tracking.wandb_target()? else {
            return Ok(None);
        };
        let client = if tracking.wandb_offline {
            None
        } else {
            Some(Client::from_env().context("--wandb asks for W&B tracking")?)
        };
        Ok(Some(Self {
            target: Target { project, entity },
            offline: tracking.wandb_offline,
            client,
            sink: None,
            started: false,
        }))
    }

    /// Creates the W&B run, or continues the one `run_dir` records.
    pub(crate) fn start(&mut self, config: &RunConfig, run_dir: &Path) {
        self.started = true;
        let Some(client) = self.client.take() else {
            return;
        };
        let config_json = match serde_json::to_value(config) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("warning: W&B tracking off: cannot encode the run config: {e}");
                return;
            }
        };
        let new_id = std::env::var("WANDB_RUN_ID")
            .ok()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| generate_run_id(config.train.seed));
        let spec = RunSpec {
            target: &self.target,
            display_name: &config.name,
            config: &config_json,
            new_id,
            run_dir,
        };
        match WandbRun::start(client, &spec) {
            Ok(run) => {
                eprintln!("W&B run: {}", run.url());
                self.sink = Some(WandbSink::new(run));
            }
            Err(e) => eprintln!(
                "warning: W&B tracking off: {e}; metrics are still written to metrics.jsonl \
                 and TensorBoard"
            ),
        }
    }

    /// The live sink, if any; `f` may fail it, which is reported here, once.
    pub(crate) fn with_sink(&mut self, f: impl FnOnce(&mut WandbSink)) {
        if let Some(sink) = self.sink.as_mut() {
            f(sink);
            if let Some(warning) = sink.take_warning() {
                eprintln!("warning: {warning}");
            }
        }
    }

    /// The W&B sink reports its failures through its warning, never as an error, so its
    /// `MetricSink` results carry nothing.
    fn event(&mut self, event: &Event<'_>, config: &RunConfig, run_dir: &Path) {
        match event {
            Event::Begin { first_step, .. } => {
                self.start(config, run_dir);
                if *first_step > 0 {
                    self.backfill(run_dir, *first_step);
                }
            }
            Event::Step(m) => self.with_sink(|s| {
                let _ = s.log(m);
            }),
            Event::Checkpoint { .. } => self.with_sink(|s| {
                let _ = s.flush();
            }),
        }
    }

    /// Sends the steps up to the checkpoint a resumed run starts from, as `metrics.jsonl`
    /// holds them: a session killed between two sends logged them only locally. The sink
    /// skips the steps W&B already has; the eval lines `bora eval` adds are not `Metrics`.
    fn backfill(&mut self, run_dir: &Path, up_to: u64) {
        let Ok(text) = std::fs::read_to_string(run_dir.join(METRICS_FILE)) else {
            return;
        };
        self.with_sink(|sink| {
            for line in text.lines() {
                if let Ok(m) = serde_json::from_str::<Metrics>(line) {
                    if m.step <= up_to {
                        let _ = sink.log(&m);
                    }
                }
            }
        });
    }

    /// Ends the W&B run with the command's exit code, or prints how to sync it later.
    pub(crate) fn finish(self, exit_code: i32, run_dir: &Path) {
        if let Some(sink) = self.sink {
            if let Some(warning) = sink.finish(exit_code) {
                eprintln!("warning: {warning}");
            }
        } else if self.started && self.offline {
            eprintln!(
                "W&B offline: nothing was sent; upload the run's TensorBoard files with\n  {}",
                self.target.sync_command(run_dir)
            );
        }
    }
}

/// A progress bar redrawn in place on a terminal, one log line per step otherwise (CI,
/// pipes, files).
struct Progress {
    terminal: bool,
    started: Instant,
    first_step: u64,
    total_steps: u64,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            first_step: 0,
            total_steps: 0,
        }
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
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
                self.first_step = first_step;
                self.total_steps = total_steps;
                self.started = Instant::now();
            }
            Event::Step(m) => {
                let done = (m.step - self.first_step) as f64;
                let per_step = self.started.elapsed().as_secs_f64() / done.max(1.0);
                let eta = per_step * self.total_steps.saturating_sub(m.step) as f64;
                let val = m
                    .val_loss
                    .map(|v| format!(" val_loss {v:.4}"))
                    .unwrap_or_default();
                if self.terminal {
                    const WIDTH: u64 = 30;
                    let filled = (m.step * WIDTH / self.total_steps.max(1)).min(WIDTH) as usize;
                    eprint!(
                        "\r\x1b[2K[{}{}] {}/{} loss {:.4}{val} {:.0} tok/s ETA {}",
                        "#".repeat(filled),
                        ".".repeat(WIDTH as usize - filled),
                        m.step,
                        self.total_steps,
                        m.loss,
                        m.tokens_per_s,
                        clock(eta)
                    );
                } else {
                    eprintln!(
                        "step {}/{} loss {:.4}{val} lr {:.3e} grad_norm {:.3} {:.0} tok/s ETA {}",
                        m.step,
                        self.total_steps,
                        m.loss,
                        m.lr,
                        m.grad_norm,
                        m.tokens_per_s,
                        clock(eta)
                    );
                }
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
