//! `bora eval`: base vs tuned on held-out examples, through `bora_eval`; results and reports
//! in `runs/NAME/eval/` (or `--out`), scores also logged to the run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bora_eval::{
    eval_dir, evaluate_with, log_to_run, summary_json, write_eval_dir, Decoding, EvalConfig,
    EvalResults, Metric, Progress, RunInfo, SAMPLES_FILE,
};
use bora_hub::wandb::Table;
use bora_model::SamplingParams;
use bora_train::{RunDir, TrackingSection};
use clap::Args;
use serde_json::{Map, Value};

use crate::train::WandbTracking;

#[derive(Args)]
pub struct EvalArgs {
    /// A training run directory: its base model against its final adapter.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["model", "adapter"])]
    run: Option<PathBuf>,
    /// A base model (`.gguf`, model directory or Hub id ORG/NAME[@REV]) to evaluate without
    /// a run.
    #[arg(long, value_name = "PATH|ORG/NAME", required_unless_present = "run")]
    model: Option<PathBuf>,
    /// A PEFT adapter directory to compare with the base model (with --model).
    #[arg(long, value_name = "DIR", requires = "model")]
    adapter: Option<PathBuf>,
    /// Test JSONL; each example's last assistant message is the expected answer.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// exact, json, contains, regex:PATTERN (full match) or choice:A,B,C.
    #[arg(long, default_value = "exact")]
    metric: String,
    /// Evaluate only the first N examples.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Longest answer to generate, in tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Output directory with --model [default: eval].
    #[arg(long, value_name = "DIR", conflicts_with = "run")]
    out: Option<PathBuf>,
    /// Print exactly one JSON object: {"metric", "n", "base": {"score"}, "tuned": {"score"}}.
    #[arg(long)]
    json: bool,
    /// Add the scores and the per-example table to the run's Weights & Biases run (the one
    /// training tracked, else a new one): PROJECT or PROJECT/ENTITY.
    #[arg(long, value_name = "PROJECT[/ENTITY]", requires = "run")]
    wandb: Option<String>,
    /// Send nothing to W&B; print the `wandb sync` command for the run's TensorBoard files,
    /// which hold the scores (the table stays in RUN/eval/samples.jsonl).
    #[arg(long, requires = "wandb")]
    wandb_offline: bool,
    /// Examples in flight together (answers are exactly those of one at a time).
    #[arg(long, default_value_t = Decoding::DEFAULT_BATCH)]
    batch_size: usize,
    /// Sample answers at this temperature instead of greedily (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only from the most likely tokens whose probabilities add up to this.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of sampled answers; each example's sampler is seeded from it and the example's line.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl EvalArgs {
    fn decoding(&self) -> Decoding {
        Decoding {
            batch_size: self.batch_size,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
                ..SamplingParams::default()
            },
        }
    }
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    let metric: Metric = args.metric.parse()?;
    let tracking = WandbTracking::new(&TrackingSection {
        wandb: args.wandb.clone().unwrap_or_default(),
        wandb_offline: args.wandb_offline,
    })?;
    let (results, report) = match &args.run {
        Some(run) => {
            let evaluated = eval_run(
                run,
                &args.data,
                metric,
                args.limit,
                args.max_tokens,
                &args.decoding(),
            )?;
            if let Some(tracking) = tracking {
                track(tracking, run, &evaluated.0)?;
            }
            evaluated
        }
        None => {
            let config = EvalConfig {
                model: crate::download::model_path(
                    args.model
                        .as_deref()
                        .context("--model or --run is required")?,
                )?,
                adapter: args.adapter.clone(),
                data: args.data.clone(),
                metric,
                limit: args.limit,
                max_tokens: args.max_tokens,
                quantize: None,
            };
            let (results, samples) = evaluate_with(&config, &args.decoding(), &mut progress())?;
            let out = args.out.clone().unwrap_or_else(|| PathBuf::from("eval"));
            let report = write_eval_dir(&out, &results, &samples, None)?;
            (results, report)
        }
    };
    if args.json {
        println!("{}", summary_json(&results));
    } else {
        print_summary(&results);
        println!("report: {}", report.display());
    }
    Ok(())
}

/// Evaluates a run's final adapter against its base model, writes `RUN/eval/` and logs the
/// scores to the run; returns the results and the HTML report's path.
pub fn eval_run(
    run: &Path,
    data: &Path,
    metric: Metric,
    limit: Option<usize>,
    max_tokens: usize,
    decoding: &Decoding,
) -> Result<(EvalResults, PathBuf)> {
    let (dir, config) = RunDir::open(run)?;
    let adapter = dir.adapter_dir();
    if !adapter.join(bora_train::ADAPTER_CONFIG_FILE).is_file() {
        bail!(
            "{}: the run has no final adapter yet; finish it with `bora train --resume {}`",
            adapter.display(),
            run.display()
        );
    }
    let info = RunInfo::load(run)?;
    let eval_config = EvalConfig {
        model: crate::download::run_model(&config.model)?,
        adapter: Some(adapter),
        data: data.to_path_buf(),
        metric,
        limit,
        max_tokens,
        quantize: config.qlora.quantize()?,
    };
    let (results, samples) = evaluate_with(&eval_config, decoding, &mut progress())?;
    let report = write_eval_dir(&eval_dir(run), &results, &samples, Some(&info))?;
    log_to_run(run, &results, info.last_step())?;
    Ok((results, report))
}

/// Sends the results to W&B: every result field as a summary value under `eval/` (the
/// sides' fields as `eval/base/score`, the names TensorBoard shows), and the samples as the
/// table `eval/samples` at the run's last step.
fn track(mut tracking: WandbTracking, run: &Path, results: &EvalResults) -> Result<()> {
    let (_, config) = RunDir::open(run)?;
    let step = RunInfo::load(run)?.last_step();
    let mut summary = Map::new();
    if let Value::Object(fields) = serde_json::to_value(results)? {
        for (key, value) in fields {
            match value {
                Value::Object(side) => {
                    for (k, v) in side {
                        summary.insert(format!("eval/{key}/{k}"), v);
                    }
                }
                v => {
                    summary.insert(format!("eval/{key}"), v);
                }
            }
        }
    }
    let samples_path = eval_dir(run).join(SAMPLES_FILE);
    let text = std::fs::read_to_string(&samples_path)
        .with_context(|| format!("reading {}", samples_path.display()))?;
    const COLUMNS: [&str; 7] = [
        "line",
        "prompt",
        "expected",
        "base",
        "tuned",
        "base_score",
        "tuned_score",
    ];
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let sample: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}", samples_path.display(), i + 1))?;
        rows.push(
            COLUMNS
                .iter()
                .map(|c| sample.get(*c).cloned().unwrap_or(Value::Null))
                .collect::<Vec<Value>>(),
        );
    }
    tracking.start(&config, run);
    tracking.with_sink(|sink| {
        let table = Table {
            key: "eval/samples",
            step,
            columns: &COLUMNS,
            rows: &rows,
        };
        sink.log_results(&summary, Some(&table));
    });
    tracking.finish(0, run);
    Ok(())
}

fn print_summary(r: &EvalResults) {
    let sides = [("base", Some(&r.base)), ("tuned", r.tuned.as_ref())];
    for (name, s) in sides {
        if let Some(s) = s {
            println!(
                "{name:>5}: {} {:.1}% ({}/{}, 95% CI {:.1}–{:.1}%), answer NLL {:.3}",
                r.metric,
                100.0 * s.score,
                s.correct,
                r.n,
                100.0 * s.ci95[0],
                100.0 * s.ci95[1],
                s.nll
            );
        }
    }
}

/// Progress on stderr: a line that rewrites itself on a terminal, every 25 items otherwise.
fn progress() -> impl FnMut(Progress) {
    let tty = std::io::stderr().is_terminal();
    move |p| match p {
        Progress::Ready { n } => eprintln!("evaluating {n} examples"),
        Progress::Item { side, done, total } => {
            if tty {
                eprint!("\r\x1b[2K{} {done}/{total}", side.name());
                if done == total {
                    eprintln!();
                }
            } else if done % 25 == 0 || done == total {
                eprintln!("{} {done}/{total}", side.name());
            }
        }
    }
}
