//! `bora data check`: validate a dataset, tokenize it the way training will, and print what a
//! run on it would cost, before any training starts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use bora_data::{
    fit, length_stats, load, preflight, split, BatchConfig, DataError, Encoder, Holdout, Loader,
    ModelShape, Overlong, Sample, StepShape,
};
use bora_formats::gguf::GgufFile;
use bora_model::ModelConfig;
use bora_tokenizer::Tokenizer;
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
    Check(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// JSONL with one `messages`, `prompt`/`completion` or `text` example per line.
    file: PathBuf,
    /// Model (`.gguf`, model directory or Hub id ORG/NAME[@REV]) whose tokenizer, chat
    /// format and shape to use [default: the default model].
    #[arg(long, value_name = "PATH|ORG/NAME")]
    model: Option<PathBuf>,
    /// Validation JSONL; without it --val-fraction or --val-count hold out training examples.
    #[arg(long, value_name = "FILE")]
    val: Option<PathBuf>,
    /// Share of the examples held out for validation (when no --val file).
    #[arg(long, value_name = "F", conflicts_with_all = ["val", "val_count"])]
    val_fraction: Option<f64>,
    /// Number of examples held out for validation (when no --val file).
    #[arg(long, value_name = "N", conflicts_with = "val")]
    val_count: Option<usize>,
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Drop examples longer than --seq-len instead of truncating them.
    #[arg(long)]
    drop_overlong: bool,
    /// Pack several short examples into one sequence.
    #[arg(long)]
    pack: bool,
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Matmul throughput for the time estimate, in GFLOP/s [default: measured here].
    #[arg(long, value_name = "G")]
    gflops: Option<f64>,
    /// Leave bad lines out (and count them) instead of refusing the file.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &DataArgs, default_model: &Path) -> Result<()> {
    match &args.command {
        DataCommand::Check(check_args) => check(check_args, default_model),
    }
}

fn check(args: &CheckArgs, default_model: &Path) -> Result<()> {
    anyhow::ensure!(
        args.epochs > 0 && args.grad_accum > 0,
        "--epochs and --grad-accum must be at least 1"
    );
    let model = match &args.model {
        Some(m) => crate::download::model_path(m)?,
        None => default_model.to_path_buf(),
    };
    let model = model.as_path();
    let tok = Tokenizer::from_file(model)
        .with_context(|| format!("loading the tokenizer of {}", model.display()))?;
    let encoder =
        Encoder::new(&tok).with_context(|| format!("the chat format of {}", model.display()))?;
    let shape = model_shape(model)?;

    let train_file = load_reporting(&args.file, &encoder, args.skip_bad_lines)?;
    let val_file = match &args.val {
        Some(path) => Some(load_reporting(path, &encoder, args.skip_bad_lines)?),
        None => None,
    };
    let skipped = train_file.skipped.len() + val_file.as_ref().map_or(0, |d| d.skipped.len());
    let examples = train_file.samples.len();
    let lengths: Vec<usize> = train_file.samples.iter().map(Sample::len).collect();
    let stats =
        length_stats(&lengths).ok_or_else(|| DataError::Empty(args.file.display().to_string()))?;
    let overlong = if args.drop_overlong {
        Overlong::Drop
    } else {
        Overlong::Truncate
    };
    let (samples, fitted) = fit(train_file.samples, args.seq_len, overlong);
    let trained: usize = samples.iter().map(Sample::trained).sum();
    let tokens: usize = samples.iter().map(Sample::len).sum();

    let holdout = match (args.val_fraction, args.val_count) {
        (Some(f), _) => Holdout::Fraction(f),
        (None, Some(n)) => Holdout::Count(n),
        (None, None) => Holdout::Count(0),
    };
    let (train, val) = match &val_file {
        Some(v) => (samples, fit(v.samples.clone(), args.seq_len, overlong).0),
        None => split(samples, holdout, args.seed)?,
    };
    let config = BatchConfig {
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        pack: args.pack,
        seed: args.seed,
        pad_id: tok.eos_id().unwrap_or(0),
    };
    // Packing depends on each epoch's order, so each epoch is planned, not extrapolated.
    let batches: u64 = (0..args.epochs)
        .map(|epoch| {
            Loader::plan(&train, &config, epoch)
                .len()
                .div_ceil(args.batch_size) as u64
        })
        .sum();
    anyhow::ensure!(
        !train.is_empty(),
        "no training examples are left after fitting to --seq-len {} and the validation split",
        args.seq_len
    );
    let steps = batches.div_ceil(args.grad_accum as u64);
    let batches_per_epoch = batches / args.epochs;
    let tokens_per_epoch = batches_per_epoch * (args.batch_size * args.seq_len) as u64;
    let (gflops, measured) = match args.gflops {
        Some(g) => (g, false),
        None => (measure_matmul_gflops(), true),
    };
    let step = StepShape {
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        lora_rank: args.lora_rank,
    };
    let pre = preflight(&shape, &step, tokens_per_epoch, gflops);
    let method =
        format!(
        "estimate, not a measurement: frozen weights at their stored size; f32 activations each \
         layer saves for its explicit backward (attention keeps one log-sum-exp per head); LoRA \
         r{} on all 7 projections with gradients and AdamW moments; time = 4 × parameters × \
         token slots (padding included) / {gflops:.0} GFLOP/s ({}); a LoRA step skips the frozen \
         weight gradients that make a full fine-tune 6 × parameters × tokens",
        args.lora_rank,
        if measured { "f32 matmul measured on this machine" } else { "stated with --gflops" },
    );

    if args.json {
        let object = json!({
            "file": args.file,
            "model": model,
            "examples": examples,
            "skipped_lines": skipped,
            "tokens": {"min": stats.min, "median": stats.median, "p95": stats.p95, "max": stats.max},
            "seq_len": args.seq_len,
            "overlong": {"count": fitted.overlong, "policy": overlong, "truncated": fitted.truncated, "dropped": fitted.dropped},
            "trained_tokens": trained,
            "total_tokens": tokens,
            "trained_share": trained as f64 / tokens.max(1) as f64,
            "train_examples": train.len(),
            "val_examples": val.len(),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "grad_accum": args.grad_accum,
            "pack": args.pack,
            "batches": batches,
            "steps": steps,
            "preflight": pre,
            "preflight_method": method,
        });
        println!("{object}");
        return Ok(());
    }
    println!("{}: {examples} examples", args.file.display());
    if skipped > 0 {
        println!("skipped:    {skipped} bad line(s) (--skip-bad-lines)");
    }
    println!(
        "tokens:     min {}, median {}, p95 {}, max {} per example",
        stats.min, stats.median, stats.p95, stats.max
    );
    let action = match overlong {
        Overlong::Drop => "dropped".to_string(),
        Overlong::Truncate if fitted.dropped > 0 => format!(
            "truncated; {} of them dropped, no trained token left",
            fitted.dropped
        ),
        Overlong::Truncate => "truncated".into(),
    };
    println!(
        "over {}:   {} example(s), {action}",
        args.seq_len, fitted.overlong
    );
    println!(
        "trained:    {trained} of {tokens} tokens ({:.1}%)",
        100.0 * trained as f64 / tokens.max(1) as f64
    );
    let val_from = match &args.val {
        Some(path) => format!("from {}", path.display()),
        None => format!("held out with seed {}", args.seed),
    };
    println!(
        "split:      {} train, {} validation ({val_from})",
        train.len(),
        val.len()
    );
    println!(
        "steps:      {steps} = {} epoch(s), {batches} batches of {} × {} tokens{}, {} per step",
        args.epochs,
        args.batch_size,
        args.seq_len,
        if args.pack { " (packed)" } else { "" },
        args.grad_accum
    );
    println!("preflight ({method}):");
    println!(
        "  peak memory ≈ {} = weights {} + LoRA state {} ({} parameters) + activations {} ({} per token) + workspace {}",
        gib(pre.peak_bytes),
        gib(pre.weight_bytes),
        gib(pre.lora_bytes),
        pre.lora_parameters,
        gib(pre.activation_bytes),
        kib(pre.activation_bytes_per_token),
        gib(pre.workspace_bytes)
    );
    println!(
        "  time ≈ {} per epoch ({} token slots × {:.2} GFLOP per token at {gflops:.0} GFLOP/s)",
        duration(pre.seconds_per_epoch),
        pre.tokens_per_epoch,
        pre.flops_per_token as f64 / 1e9
    );
    Ok(())
}

/// Loads a dataset; bad lines go to stderr one per line, so editors can jump to them.
fn load_reporting(path: &Path, encoder: &Encoder, skip: bool) -> Result<bora_data::Dataset> {
    match load(path, encoder, skip) {
        Ok(data) => {
            for e in &data.skipped {
                eprintln!("skipped {e}");
            }
            Ok(data)
        }
        Err(DataError::BadLines { path, errors }) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!(
                "{}: {} bad line(s); fix them or pass --skip-bad-lines",
                path.display(),
                errors.len()
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// The architecture numbers of a `.gguf` file or a model directory, without loading weights.
fn model_shape(path: &Path) -> Result<ModelShape> {
    let (config, weight_bytes) = if path.is_file() {
        let gguf = GgufFile::open(path)?;
        let size = std::fs::metadata(path)?.len();
        (
            ModelConfig::from_gguf(&gguf)?,
            size.saturating_sub(gguf.data_offset()),
        )
    } else {
        let config = if path.join("config.json").is_file() {
            ModelConfig::from_hf_config(&path.join("config.json"))?
        } else {
            ModelConfig::from_params_json(&path.join("params.json"))?
        };
        let mut bytes = 0;
        for entry in std::fs::read_dir(path).with_context(|| format!("{}", path.display()))? {
            let entry = entry?;
            if entry.path().extension().is_some_and(|e| e == "safetensors") {
                bytes += entry.metadata()?.len();
            }
        }
        (config, bytes)
    };
    Ok(ModelShape {
        hidden: config.hidden_size,
        intermediate: config.intermediate_size,
        layers: config.n_layers,
        heads: config.n_heads,
        kv_heads: config.n_kv_heads,
        head_dim: config.head_dim,
        vocab: config.vocab_size,
        parameters: config.parameter_count(),
        weight_bytes,
    })
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
