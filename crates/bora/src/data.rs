//! `bora data check`: validate a dataset, tokenize it the way training will, and print what a
//! run on it would cost, before any training starts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use bora_data::{
    available_memory, length_stats, preflight, DataError, Encoder, FitReport, LengthStats,
    Overlong, Sample, StepShape,
};
use bora_model::CheckpointInfo;
use bora_tokenizer::Tokenizer;
use bora_train::{
    choose_defaults, load_base, measure_step, memory_by_use, model_shape, plan_data, train_memory,
    DataPlan, RunConfig, TrainError, Unset,
};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Validate a JSONL dataset and print token statistics, the step count and a memory/time
    /// preflight for the chosen settings.
    Check(Box<CheckArgs>),
    /// Make a dataset with a teacher model over an OpenAI-compatible chat API (Mistral's by
    /// default): train/val/test JSONL and synth.json in --out; rerun to continue.
    Synth(Box<crate::synth::SynthArgs>),
}

#[derive(Args)]
struct CheckArgs {
    /// JSONL with one `messages`, `prompt`/`completion` or `text` example per line.
    file: PathBuf,
    /// Run config TOML, as `bora train --config` reads it; the flags below override its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Model (`.gguf`, model directory or Hub id ORG/NAME[@REV]) whose tokenizer, chat
    /// format and shape to use [default: the config's, else the default model].
    #[arg(long, value_name = "PATH|ORG/NAME")]
    model: Option<PathBuf>,
    /// Validation JSONL (`data.eval`); without it --val-fraction holds out training examples.
    #[arg(long, value_name = "FILE")]
    val: Option<PathBuf>,
    /// `data.val_fraction`: share of the examples held out for validation (when no --val).
    #[arg(long, value_name = "F", conflicts_with = "val")]
    val_fraction: Option<f64>,
    /// `train.seq_len`
    #[arg(long)]
    seq_len: Option<usize>,
    /// `data.drop_overlong`: drop examples longer than --seq-len instead of truncating them.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    drop_overlong: Option<bool>,
    /// `train.packing`: several short examples in one sequence (on by default, as in train).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pack: Option<bool>,
    /// `train.epochs`
    #[arg(long)]
    epochs: Option<u64>,
    /// `train.max_steps` (0: run the epochs)
    #[arg(long)]
    max_steps: Option<u64>,
    /// `train.batch_size`
    #[arg(long)]
    batch_size: Option<usize>,
    /// `train.grad_accum`
    #[arg(long)]
    grad_accum: Option<u32>,
    /// `lora.rank`
    #[arg(long, visible_alias = "rank")]
    lora_rank: Option<usize>,
    /// `train.seed`
    #[arg(long)]
    seed: Option<u64>,
    /// QLoRA type of the base (`qlora.quant`): q8_0, q4_0 or q4_1.
    #[arg(long, value_name = "TYPE")]
    qlora: Option<String>,
    /// `train.eval_every`
    #[arg(long)]
    eval_every: Option<u64>,
    /// `train.recompute`
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    recompute: Option<bool>,
    /// Time the run from a matmul rate in GFLOP/s instead of measuring real steps.
    #[arg(long, value_name = "G")]
    gflops: Option<f64>,
    /// Training micro-batches timed on the real model for the time estimate (after one
    /// warm-up).
    #[arg(long, value_name = "N", default_value_t = 2)]
    measure_steps: usize,
    /// `data.skip_bad_lines`: leave bad lines out (and count them) instead of refusing the file.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    skip_bad_lines: Option<bool>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &DataArgs, default_model: &Path) -> Result<()> {
    match &args.command {
        DataCommand::Check(check_args) => check(check_args, default_model),
        DataCommand::Synth(synth_args) => crate::synth::run(synth_args),
    }
}

/// The run config `bora train` would resolve from the same file and flags, and the settings
/// left for it to choose.
fn run_config(args: &CheckArgs, default_model: &Path) -> Result<(RunConfig, Unset)> {
    let mut config = match &args.config {
        Some(path) => RunConfig::load_unchecked(path)?,
        None => RunConfig::default(),
    };
    if let Some(model) = &args.model {
        config.model.path = model.display().to_string();
    } else if config.model.path.is_empty() {
        config.model.path = default_model.display().to_string();
    }
    config.data.train = args.file.clone();
    let mut overrides: Vec<(&str, String)> = Vec::new();
    let mut set = |key, value: Option<String>| overrides.extend(value.map(|v| (key, v)));
    set(
        "data.eval",
        args.val
            .as_ref()
            .map(|p| format!("{:?}", p.display().to_string())),
    );
    set(
        "data.val_fraction",
        args.val_fraction.map(|v| format!("{v:?}")),
    );
    set("train.seq_len", args.seq_len.map(|v| v.to_string()));
    set(
        "data.drop_overlong",
        args.drop_overlong.map(|v| v.to_string()),
    );
    set("train.packing", args.pack.map(|v| v.to_string()));
    set("train.epochs", args.epochs.map(|v| v.to_string()));
    set("train.max_steps", args.max_steps.map(|v| v.to_string()));
    set("train.batch_size", args.batch_size.map(|v| v.to_string()));
    set("train.grad_accum", args.grad_accum.map(|v| v.to_string()));
    set("lora.rank", args.lora_rank.map(|v| v.to_string()));
    set("train.seed", args.seed.map(|v| v.to_string()));
    set("train.eval_every", args.eval_every.map(|v| v.to_string()));
    set("train.recompute", args.recompute.map(|v| v.to_string()));
    set(
        "data.skip_bad_lines",
        args.skip_bad_lines.map(|v| v.to_string()),
    );
    if let Some(quant) = &args.qlora {
        set("qlora.enabled", Some("true".into()));
        set("qlora.quant", Some(format!("{:?}", quant.to_lowercase())));
    }
    for (key, value) in &overrides {
        config.apply_override(key, value)?;
    }
    config.validate()?;
    let mut given: Vec<String> = overrides.iter().map(|(k, _)| (*k).to_owned()).collect();
    if let Some(path) = &args.config {
        given.extend(RunConfig::keys_in_file(path)?);
    }
    if args.val.is_some() {
        given.push("data.val_fraction".into());
    }
    let unset = Unset::except(given.iter().map(String::as_str));
    Ok((config, unset))
}

fn check(args: &CheckArgs, default_model: &Path) -> Result<()> {
    let (mut config, unset) = run_config(args, default_model)?;
    let model = crate::download::model_path(Path::new(&config.model.path))?;
    let tok = Tokenizer::from_file(&model)
        .with_context(|| format!("loading the tokenizer of {}", model.display()))?;
    Encoder::new(&tok).with_context(|| format!("the chat format of {}", model.display()))?;
    let info = CheckpointInfo::open(&model)
        .with_context(|| format!("reading model {}", model.display()))?;

    // The settings `bora train` would choose, chosen the same way, so the two agree.
    let planned = if unset.is_empty() {
        plan_data(&config, &tok).map(|plan| (plan, Vec::new()))
    } else {
        choose_defaults(&mut config, &unset, &info, &tok, available_memory()?)
    };
    let (plan, choices) = match planned {
        Err(TrainError::Data(DataError::BadLines { path, errors })) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!(
                "{}: {} bad line(s); fix them or pass --skip-bad-lines",
                path.display(),
                errors.len()
            )
        }
        other => other?,
    };
    for line in &plan.skipped {
        eprintln!("skipped {line}");
    }
    for choice in &choices {
        eprintln!("{choice}");
    }
    let t = &config.train;
    let skipped = plan.skipped.len();
    let examples = plan.lengths.len();
    let stats = length_stats(&plan.lengths)
        .ok_or_else(|| DataError::Empty(args.file.display().to_string()))?;
    let overlong = if config.data.drop_overlong {
        Overlong::Drop
    } else {
        Overlong::Truncate
    };
    let fitted = FitReport {
        overlong: plan.train_fit.overlong + plan.val_fit.overlong,
        truncated: plan.train_fit.truncated + plan.val_fit.truncated,
        dropped: plan.train_fit.dropped + plan.val_fit.dropped,
    };
    let trained: usize = plan.train.iter().map(Sample::trained).sum();
    let tokens: usize = plan.train.iter().map(Sample::len).sum();
    let steps = plan.total_steps;
    let batches = plan.micro_per_epoch;
    let tokens_per_epoch = batches * (t.batch_size * t.seq_len) as u64;

    let pre_shape = model_shape(&info, config.qlora.quantize()?);
    let step = StepShape {
        batch_size: t.batch_size,
        seq_len: t.seq_len,
        lora_rank: config.lora.rank,
    };
    let memory = memory_by_use(&config, &info, info.inference_quant(), t.seq_len)?;
    let available = available_memory()?;
    let this_run = train_memory(&config, &info)?;
    let fits = available.is_none_or(|a| this_run.peak_bytes <= a);

    // Time: a few real micro-batches on the model (when it fits), else the FLOP count.
    let (gflops, timing) = match args.gflops {
        Some(g) => (g, None),
        None if fits => {
            let base = load_base(&config, &model)
                .with_context(|| format!("loading model {}", model.display()))?;
            let timing = measure_step(&config, &plan, &base, args.measure_steps)?;
            (measure_matmul_gflops(), Some(timing))
        }
        None => (measure_matmul_gflops(), None),
    };
    let pre = preflight(&pre_shape, &step, tokens_per_epoch, gflops);
    let run_seconds = match &timing {
        Some(timing) => timing.run_seconds(&config, &plan),
        None => {
            let slots = plan.micro_batches(&config) * (t.batch_size * t.seq_len) as u64;
            (pre.flops_per_token * slots) as f64 / (gflops * 1e9)
        }
    };
    let time_method = match &timing {
        Some(tm) => format!(
            "measured: {} training micro-batch(es) of {} × {} on this model, {:.2} s each, \
             {:.2} s per validation batch",
            args.measure_steps.max(1),
            t.batch_size,
            t.seq_len,
            tm.micro_batch_s,
            tm.val_batch_s
        ),
        None => format!(
            "4 × parameters × token slots (padding included) / {gflops:.0} GFLOP/s ({})",
            if args.gflops.is_some() {
                "stated with --gflops"
            } else {
                "f32 matmul measured on this machine"
            }
        ),
    };
    let method = format!(
        "estimate, not a measurement: frozen weights at their in-memory size; f32 activations \
         each layer saves for its explicit backward (attention keeps one log-sum-exp per head); \
         LoRA r{} on all 7 projections with gradients and AdamW moments; time {time_method}",
        config.lora.rank,
    );
    let available_text = available.map_or("unknown".to_string(), gib);
    let verdict = if fits {
        String::new()
    } else {
        format!(
            "this run will not fit: it needs about {} and {available_text} is available",
            gib(this_run.peak_bytes)
        )
    };

    if args.json {
        let object = json!({
            "file": args.file,
            "model": model,
            "examples": examples,
            "skipped_lines": skipped,
            "tokens": {"min": stats.min, "median": stats.median, "p95": stats.p95, "max": stats.max},
            "seq_len": t.seq_len,
            "overlong": {"count": fitted.overlong, "policy": overlong, "truncated": fitted.truncated, "dropped": fitted.dropped},
            "trained_tokens": trained,
            "total_tokens": tokens,
            "trained_share": trained as f64 / tokens.max(1) as f64,
            "train_examples": plan.train.len(),
            "val_examples": plan.val.len(),
            "epochs": t.epochs,
            "max_steps": t.max_steps,
            "batch_size": t.batch_size,
            "grad_accum": t.grad_accum,
            "pack": t.packing,
            "batches": batches,
            "steps": steps,
            "preflight": pre,
            "preflight_method": method,
            "timing": timing,
            "run_seconds": run_seconds,
            "memory": memory.iter().map(|(k, v)| json!({"use": k, "peak_bytes": v})).collect::<Vec<_>>(),
            "available_bytes": available,
            "fits": fits,
        });
        println!("{object}");
    } else {
        print_check(&args.file, &config, &plan, &stats, fitted);
        println!(
            "steps:      {steps} = {}, {batches} batches of {} × {} tokens per epoch{}, {} per step",
            if t.max_steps > 0 { format!("max_steps {}", t.max_steps) } else { format!("{} epoch(s)", t.epochs) },
            t.batch_size,
            t.seq_len,
            if t.packing { " (packed)" } else { "" },
            t.grad_accum
        );
        println!("preflight ({method}):");
        println!(
            "  peak memory ≈ {} = weights {} + LoRA state {} ({} parameters) + activations {} ({} per token) + workspace {} + runtime {}",
            gib(pre.peak_bytes),
            gib(pre.weight_bytes),
            gib(pre.lora_bytes),
            pre.lora_parameters,
            gib(pre.activation_bytes),
            kib(pre.activation_bytes_per_token),
            gib(pre.workspace_bytes),
            gib(pre.runtime_bytes)
        );
        println!("  memory by use (available here: {available_text}):");
        for (label, bytes) in &memory {
            let mark = if available.is_some_and(|a| *bytes > a) {
                "  (does not fit)"
            } else {
                ""
            };
            println!("    {label:<32} {}{mark}", gib(*bytes));
        }
        let per_epoch =
            run_seconds * plan.micro_per_epoch as f64 / plan.micro_batches(&config).max(1) as f64;
        println!(
            "  time ≈ {} for the run ({steps} steps), {} per epoch",
            duration(run_seconds),
            duration(per_epoch)
        );
    }
    if !fits {
        anyhow::bail!(
            "{verdict}; see `memory by use` for QLoRA, or lower train.batch_size or train.seq_len"
        );
    }
    Ok(())
}

fn print_check(
    file: &Path,
    config: &RunConfig,
    plan: &DataPlan,
    stats: &LengthStats,
    fitted: FitReport,
) {
    let t = &config.train;
    let trained: usize = plan.train.iter().map(Sample::trained).sum();
    let tokens: usize = plan.train.iter().map(Sample::len).sum();
    println!("{}: {} examples", file.display(), plan.lengths.len());
    if !plan.skipped.is_empty() {
        println!(
            "skipped:    {} bad line(s) (--skip-bad-lines)",
            plan.skipped.len()
        );
    }
    println!(
        "tokens:     min {}, median {}, p95 {}, max {} per example",
        stats.min, stats.median, stats.p95, stats.max
    );
    let action = if config.data.drop_overlong {
        "dropped".to_string()
    } else if fitted.dropped > 0 {
        format!(
            "truncated; {} of them dropped, no trained token left",
            fitted.dropped
        )
    } else {
        "truncated".into()
    };
    println!(
        "over {}:   {} example(s), {action}",
        t.seq_len, fitted.overlong
    );
    println!(
        "trained:    {trained} of {tokens} tokens ({:.1}%)",
        100.0 * trained as f64 / tokens.max(1) as f64
    );
    let val_from = match config.data.eval_path() {
        Some(path) => format!("from {}", path.display()),
        None => format!("held out with seed {}", t.seed),
    };
    println!(
        "split:      {} train, {} validation ({val_from})",
        plan.train.len(),
        plan.val.len()
    );
}

/// Best of a few 512³ f32 matmuls through bora's own kernel: the rate the training step's
/// matmuls will see on this machine, measured in well under a second.
fn measure_matmul_gflops() -> f64 {
    const N: usize = 512;
    let x: Vec<f32> = (0..N * N).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..N * N).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut y = vec![0.0f32; N * N];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        bora_compute::matmul_xwt(&mut y, &x, &w, N, N, N, false);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (N * N * N) as f64 / best.max(1e-9) / 1e9
}

fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.0} MiB", b / (1024.0 * 1024.0))
    }
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn duration(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.0} s")
    } else if seconds < 7200.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}
