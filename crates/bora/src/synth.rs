//! `bora data synth`: a dataset from a teacher model, through `bora_synth` and the chat
//! client of `bora_hub`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bora_hub::chat::{list_price, ChatClient, Price, MISTRAL_BASE_URL, MISTRAL_KEY_ENV};
use bora_synth::{load_inputs, load_lines, load_seeds, Progress, SynthConfig};
use clap::Args;

#[derive(Args)]
pub struct SynthArgs {
    /// Markdown (or text) describing the task to the teacher.
    #[arg(long, value_name = "TASK.md")]
    task: PathBuf,
    /// Seed examples, JSONL in any of bora's dataset shapes (a few are shown per request).
    #[arg(long, value_name = "SEEDS.jsonl")]
    examples: PathBuf,
    /// Examples wanted (with --inputs: at most one per input).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Output directory: train.jsonl, val.jsonl, test.jsonl, synth.json and the answer log
    /// that a rerun continues from.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Inputs for the teacher to answer, one per line (or JSON lines with an "input");
    /// without it the teacher writes inputs too.
    #[arg(long, value_name = "FILE")]
    inputs: Option<PathBuf>,
    /// Topics to steer written inputs, one per line (one drawn per example).
    #[arg(long, value_name = "FILE", conflicts_with = "inputs")]
    topics: Option<PathBuf>,
    /// The teacher model.
    #[arg(long, default_value = "mistral-large-latest")]
    teacher: String,
    /// An OpenAI-compatible API (ending in /v1), e.g. http://127.0.0.1:8080/v1 for bora serve.
    #[arg(long, default_value = MISTRAL_BASE_URL)]
    base_url: String,
    /// The environment variable holding the API key.
    #[arg(long, default_value = MISTRAL_KEY_ENV)]
    api_key_env: String,
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    /// Longest teacher answer, in tokens.
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
    /// Requests in flight together.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Stop before the job (this and earlier runs of it) could spend more, in US$.
    #[arg(long, value_name = "USD")]
    max_cost: Option<f64>,
    /// The teacher's price in US$ per million tokens, input and output [default: bora's
    /// table for Mistral's models].
    #[arg(long, value_name = "IN,OUT")]
    price: Option<String>,
    /// Seed of the prompts (which seed examples and topic each request shows) and the split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of the kept examples in val.jsonl.
    #[arg(long, default_value_t = 0.1)]
    val: f64,
    /// Share of the kept examples in test.jsonl.
    #[arg(long, default_value_t = 0.1)]
    test: f64,
    /// Seconds one request may wait for its answer before it is retried.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print synth.json on stdout instead of a summary.
    #[arg(long)]
    json: bool,
}

fn price(args: &SynthArgs) -> Result<Option<Price>> {
    let Some(text) = &args.price else {
        let mistral = args.base_url.trim_end_matches('/') == MISTRAL_BASE_URL;
        return Ok(list_price(&args.teacher).filter(|_| mistral));
    };
    let parsed = text
        .split_once(',')
        .and_then(|(i, o)| Some((i.trim().parse::<f64>().ok()?, o.trim().parse::<f64>().ok()?)))
        .filter(|(i, o)| i.is_finite() && o.is_finite() && *i >= 0.0 && *o >= 0.0);
    let (input, output) = parsed.with_context(|| {
        format!("--price {text}: expected IN,OUT in US$ per million tokens, e.g. 0.5,1.5")
    })?;
    Ok(Some(Price { input, output }))
}

pub fn run(args: &SynthArgs) -> Result<()> {
    let task = std::fs::read_to_string(&args.task)
        .with_context(|| format!("reading {}", args.task.display()))?;
    let config = SynthConfig {
        task,
        seeds: load_seeds(&args.examples)?,
        inputs: args.inputs.as_deref().map(load_inputs).transpose()?,
        topics: args.topics.as_deref().map(load_lines).transpose()?,
        n: args.n,
        teacher: args.teacher.clone(),
        temperature: args.temperature,
        max_tokens: args.max_tokens,
        concurrency: args.concurrency,
        max_cost: args.max_cost,
        price: price(args)?,
        seed: args.seed,
        val_fraction: args.val,
        test_fraction: args.test,
        out: args.out.clone(),
    };
    let client = ChatClient::new(&args.base_url, &args.api_key_env, |k| std::env::var(k).ok())?
        .with_timeout(Duration::from_secs(args.timeout));
    let tty = std::io::stderr().is_terminal();
    let progress = move |p: Progress| match p {
        Progress::Answered {
            answered,
            planned,
            cost,
        } => {
            let cost = cost.map(|c| format!(", ${c:.4}")).unwrap_or_default();
            if tty {
                eprint!("\r\x1b[2Kanswered {answered} (at most {planned}){cost}");
            } else if answered % 25 == 0 {
                eprintln!("answered {answered} (at most {planned}){cost}");
            }
        }
    };
    let summary = bora_synth::run(&config, &client, &progress)?;
    if tty {
        eprintln!();
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    let dropped: Vec<String> = summary
        .dropped
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    println!(
        "kept {} of {} wanted: train {}, val {}, test {} in {}",
        summary.kept,
        summary.requested,
        summary.train,
        summary.val,
        summary.test,
        args.out.display()
    );
    if !dropped.is_empty() {
        println!("dropped: {}", dropped.join(", "));
    }
    let cost = summary
        .cost_usd
        .map(|c| format!("${c:.4}"))
        .unwrap_or_else(|| "unknown (no price: --price IN,OUT)".into());
    println!(
        "tokens: {} in, {} out; cost {cost}; {:.1} s",
        summary.tokens.prompt_tokens, summary.tokens.completion_tokens, summary.seconds
    );
    if summary.stopped_by_budget {
        println!("stopped before passing --max-cost; rerun with a higher one to continue");
    }
    if summary.failed_requests > 0 {
        println!(
            "{} requests failed after their retries; rerun the same command to ask again",
            summary.failed_requests
        );
    }
    Ok(())
}
