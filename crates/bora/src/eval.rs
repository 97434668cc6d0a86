//! `bora eval`: base vs tuned on held-out examples, through `bora_eval`; results and reports
//! in `runs/NAME/eval/` (or `--out`), scores also logged to the run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bora_eval::{
    add_deployed, evaluate_with, log_to_run, sample_rows, summary_json, tracking_summary,
    write_eval_dir_with_audio, Decoding, DeployedAnswer, EvalConfig, EvalResults, JudgeConfig,
    JudgeModel, Metric, Progress, RunInfo, SampleRow, SpokenSample, SAMPLE_COLUMNS,
};
use bora_hub::speech::{SpeechClient, SpeechError};
use bora_hub::wandb::{Table, WandbTracking};
use bora_model::SamplingParams;
use bora_run::{MetricSink, RunDir};
use bora_train::{open_run_dir, TrackingSection};
use clap::Args;

use crate::train::wandb_tracking;

/// The judge's verdict cache, beside the run's `eval/` (or in --out), kept across runs.
const JUDGE_CACHE: &str = "judge-cache.jsonl";

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
    /// With --run, the default is the run's own QLoRA type, the base the adapter was trained
    /// on.
    #[command(flatten)]
    quant: crate::generate::QuantArg,
    /// Test JSONL; each example's last assistant message is the expected answer.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// exact, json, contains, tool_call, regex:PATTERN (full match), choice:A,B,C, or
    /// judge[:MODEL] (a judge model compares base and tuned answers; exact match is shown
    /// beside it).
    #[arg(long, default_value = "exact")]
    metric: String,
    #[command(flatten)]
    judge: crate::judge::JudgeArgs,
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
    /// training tracked, else a new one): PROJECT or PROJECT/ENTITY. The run's adapter
    /// artifact, where one was logged, becomes an input of that run.
    #[arg(long, value_name = "PROJECT[/ENTITY]", requires = "run")]
    wandb: Option<String>,
    /// Send nothing to W&B; print the `wandb sync` command for the run's TensorBoard files,
    /// which hold the scores (the table stays in RUN/eval/samples.jsonl).
    #[arg(long, requires = "wandb")]
    wandb_offline: bool,
    /// Record the evaluation in W&B Weave, as the `weave` library records an Evaluation of
    /// two models: PROJECT or PROJECT/ENTITY (`weave.init` writes it ENTITY/PROJECT).
    #[arg(long, value_name = "PROJECT[/ENTITY]")]
    weave: Option<String>,
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
    /// Constrain every answer to valid JSON (constrained decoding), e.g. with `--metric json`.
    #[arg(long)]
    constrain_json: bool,
    /// Read the base and tuned answers of N examples aloud (those tuning fixed first) with
    /// ElevenLabs text to speech, as audio players in the HTML report (key from
    /// ELEVENLABS_API_KEY).
    #[arg(long, value_name = "N")]
    speak: Option<usize>,
    #[command(flatten)]
    voice: crate::speak::VoiceArgs,
    /// Also ask the model deployed to Amazon Bedrock (`bora deploy bedrock`) every prompt, and
    /// show its scores beside the local ones.
    #[command(flatten)]
    bedrock: crate::bedrock::BedrockModelArg,
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
            constrain_json: self.constrain_json,
        }
    }
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    let judge_model = crate::judge::judge_model(&args.metric);
    let metric: Metric = match judge_model {
        Some(_) => Metric::Exact,
        None => args.metric.parse()?,
    };
    let speech_client = match args.speak {
        Some(n) if n > 0 => Some((args.voice.client()?, n)),
        _ => None,
    };
    let speech = speech_client.as_ref().map(|(c, n)| (c, *n));
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("eval"));
    let judge = judge_model
        .map(|m| {
            let cache_dir = args.run.as_deref().unwrap_or(&out);
            crate::judge::setup(&args.judge, m, cache_dir.join(JUDGE_CACHE))
        })
        .transpose()?;
    let judge = judge.as_ref().map(|(m, c)| (m as &dyn JudgeModel, c));
    let weave = args
        .weave
        .as_deref()
        .map(crate::weave::connect)
        .transpose()?;
    let tracking = match (&args.run, &args.wandb) {
        (Some(run), Some(wandb)) => {
            let (_, config) = open_run_dir(run)?;
            let section = TrackingSection {
                wandb: wandb.clone(),
                wandb_offline: args.wandb_offline,
                wandb_registry: String::new(),
            };
            wandb_tracking(&section, &config)?
        }
        _ => None,
    };
    let deployed = match &args.bedrock.bedrock {
        Some(arn) => {
            let model = match (&args.run, &args.model) {
                (Some(run), _) => crate::download::run_model(&open_run_dir(run)?.1.model)?,
                (None, Some(model)) => crate::download::model_path(model)?,
                (None, None) => bail!("--model or --run is required"),
            };
            let params = bora_aws::InvokeParams {
                max_tokens: u32::try_from(args.max_tokens).unwrap_or(u32::MAX),
                temperature: args.temperature,
                top_p: args.top_p,
            };
            let answers = crate::bedrock::answers(
                &args.bedrock,
                arn,
                &model,
                &args.data,
                &metric,
                args.limit,
                &params,
            )?;
            Some((arn.as_str(), answers))
        }
        None => None,
    };
    let deployed = deployed.as_ref().map(|(arn, a)| (*arn, a.as_slice()));
    let (results, samples, report) = match &args.run {
        Some(run) => {
            let examples = Examples {
                data: &args.data,
                metric,
                limit: args.limit,
                max_tokens: args.max_tokens,
            };
            let evaluated = eval_run(
                run,
                &args.quant,
                examples,
                &args.decoding(),
                judge,
                deployed,
                speech,
            )?;
            if let Some(tracking) = tracking {
                track(tracking, run, &evaluated.0)?;
            }
            evaluated
        }
        None => {
            let model = crate::download::model_path(
                args.model
                    .as_deref()
                    .context("--model or --run is required")?,
            )?;
            let config = EvalConfig {
                quantize: args.quant.resolve(&model, None)?,
                model,
                adapter: args.adapter.clone(),
                data: args.data.clone(),
                metric,
                limit: args.limit,
                max_tokens: args.max_tokens,
            };
            let (mut results, mut samples) =
                evaluate_with(&config, &args.decoding(), &mut progress())?;
            if let Some((model, judge_config)) = judge {
                results.judge = Some(bora_eval::judge(&mut samples, model, judge_config)?);
            }
            if let Some((arn, answers)) = deployed {
                add_deployed(&mut results, &mut samples, &config.metric, arn, answers)?;
            }
            let (spoken, failure) = spoken(speech, &samples);
            let report = write_eval_dir_with_audio(&out, &results, &samples, None, &spoken)?;
            speech_outcome(failure, &report)?;
            (results, samples, report)
        }
    };
    if let Some(client) = &weave {
        let tuned = args.run.as_deref().or(args.adapter.as_deref());
        let tuned = tuned
            .and_then(Path::file_name)
            .map_or_else(|| "tuned".to_owned(), |n| n.to_string_lossy().into_owned());
        let names = crate::weave::EvalNames {
            data: &args.data,
            tuned: &tuned,
            run: args.run.as_deref(),
        };
        match crate::weave::record_eval(client, &results, &samples, &names) {
            Ok(()) => {}
            Err(e) if crate::weave::weave_unavailable(&e) => eprintln!(
                "warning: weave: the evaluation's traces were dropped, Weave did not take them \
                 ({e:#}); the evaluation itself is saved: {}",
                report.display()
            ),
            Err(e) => {
                return Err(e.context(format!(
                    "the evaluation itself is saved: {}",
                    report.display()
                )))
            }
        }
    }
    if args.json {
        println!("{}", summary_json(&results));
    } else {
        print_summary(&results);
        println!("report: {}", report.display());
    }
    Ok(())
}

/// The held-out examples a run is evaluated on, and how its answers are scored.
pub struct Examples<'a> {
    pub data: &'a Path,
    pub metric: Metric,
    /// Only the first N examples.
    pub limit: Option<usize>,
    /// Most tokens an answer may have.
    pub max_tokens: usize,
}

/// The answers of `n` examples read aloud for the report. A speech failure leaves them out
/// and is returned, so the report is still written before it is told.
fn spoken(
    speech: Option<(&SpeechClient, usize)>,
    samples: &[SampleRow],
) -> (Vec<SpokenSample>, Option<SpeechError>) {
    let Some((client, n)) = speech else {
        return (Vec::new(), None);
    };
    eprintln!("reading {n} examples' answers aloud");
    match crate::speak::speak_samples(client, samples, n) {
        Ok(spoken) => (spoken, None),
        Err(e) => (Vec::new(), Some(e)),
    }
}

/// An error for a speech failure, once the evaluation it belonged to is safely written.
fn speech_outcome(failure: Option<SpeechError>, report: &Path) -> Result<()> {
    match failure {
        None => Ok(()),
        Some(e) => bail!(
            "speech failed: {e} (the evaluation is complete; its report, without audio, is {})",
            report.display()
        ),
    }
}

/// Evaluates a run's final adapter against its base model (and, given a deployed model's
/// name and answers, that model too), writes `RUN/eval/` (with the answers of `speech`'s
/// examples read aloud) and logs the scores to the run; returns the results, the samples and
/// the HTML report's path.
pub fn eval_run(
    run: &Path,
    quant: &crate::generate::QuantArg,
    examples: Examples<'_>,
    decoding: &Decoding,
    judge: Option<(&dyn JudgeModel, &JudgeConfig)>,
    deployed: Option<(&str, &[DeployedAnswer])>,
    speech: Option<(&SpeechClient, usize)>,
) -> Result<(EvalResults, Vec<SampleRow>, PathBuf)> {
    let Examples {
        data,
        metric,
        limit,
        max_tokens,
    } = examples;
    let (dir, config) = open_run_dir(run)?;
    let adapter = dir.adapter_dir();
    if !dir.has_adapter() {
        bail!(
            "{}: the run has no final adapter yet; finish it with `bora train --resume {}`",
            adapter.display(),
            run.display()
        );
    }
    let info = RunInfo::load(run)?;
    let model = crate::download::run_model(&config.model)?;
    let eval_config = EvalConfig {
        quantize: quant.resolve(&model, config.qlora.quantize()?)?,
        model,
        adapter: Some(adapter),
        data: data.to_path_buf(),
        metric,
        limit,
        max_tokens,
    };
    let (mut results, mut samples) = evaluate_with(&eval_config, decoding, &mut progress())?;
    if let Some((model, judge_config)) = judge {
        results.judge = Some(bora_eval::judge(&mut samples, model, judge_config)?);
    }
    if let Some((arn, answers)) = deployed {
        add_deployed(
            &mut results,
            &mut samples,
            &eval_config.metric,
            arn,
            answers,
        )?;
    }
    let (spoken, failure) = spoken(speech, &samples);
    let report =
        write_eval_dir_with_audio(&dir.eval_dir(), &results, &samples, Some(&info), &spoken)?;
    log_to_run(run, &results, info.last_step())?;
    speech_outcome(failure, &report)?;
    Ok((results, samples, report))
}

/// Sends the results to W&B: the summary values and the samples as the table
/// `eval/samples` at the run's last step.
fn track(mut tracking: WandbTracking, run: &Path, results: &EvalResults) -> Result<()> {
    let dir = RunDir::at(run);
    let step = RunInfo::load(run)?.last_step();
    let summary = tracking_summary(results);
    let rows = sample_rows(&dir.eval_dir())?;
    tracking.start(&dir, 0)?;
    tracking.use_recorded_artifact("adapter");
    let table = Table {
        key: "eval/samples",
        step,
        columns: &SAMPLE_COLUMNS,
        rows: &rows,
    };
    tracking.log_results(&summary, Some(&table));
    tracking.close(true)?;
    Ok(())
}

fn print_summary(r: &EvalResults) {
    if let Some(j) = &r.judge {
        println!(
            "judge {}: tuned wins {:.1}% (95% CI {:.1}–{:.1}%), ties {:.1}%, loses {:.1}% of {} examples ({} invalid)",
            j.judge,
            100.0 * j.win.rate,
            100.0 * j.win.ci95[0],
            100.0 * j.win.ci95[1],
            100.0 * j.tie.rate,
            100.0 * j.loss.rate,
            j.valid,
            j.invalid
        );
    }
    let local = |name, s: &bora_eval::SideScore| {
        let nll = format!("answer NLL {:.3}", s.nll);
        (name, s.score, s.correct, s.ci95, nll)
    };
    let mut rows = vec![local("base", &r.base)];
    rows.extend(r.tuned.as_ref().map(|t| local("tuned", t)));
    rows.extend(
        r.deployed
            .as_ref()
            .map(|d| ("deployed", d.score, d.correct, d.ci95, d.model.clone())),
    );
    for (name, score, correct, ci95, detail) in rows {
        println!(
            "{name:>5}: {} {:.1}% ({correct}/{}, 95% CI {:.1}–{:.1}%), {detail}",
            r.metric,
            100.0 * score,
            r.n,
            100.0 * ci95[0],
            100.0 * ci95[1],
        );
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
