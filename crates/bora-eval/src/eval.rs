//! One evaluation, top to bottom: check every input (metric, test file, model, adapter), then
//! generate with the base model and with the adapter on the same prompts, score, and summarize.

use std::path::PathBuf;
use std::time::Instant;

use bora_formats::quant::WeightType;
use std::sync::Arc;

use bora_model::{
    GenerateOptions, JsonSchema, LoadOptions, Lora, Model, SamplingParams, VocabIndex,
};
use bora_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::judge::Judged;
use crate::metric::{wilson, Metric, Z95};
use crate::runner::{run_side_constrained, JsonAnswers, SideOutput};
use crate::task::{load_items, EvalItem};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The base model (a `.gguf` file or a model directory).
    pub model: PathBuf,
    /// A PEFT adapter directory; `None` evaluates the base model alone.
    pub adapter: Option<PathBuf>,
    /// Test JSONL: every example ends with the expected assistant answer.
    pub data: PathBuf,
    pub metric: Metric,
    /// Evaluate only the first N examples.
    pub limit: Option<usize>,
    /// Longest answer generated.
    pub max_tokens: usize,
    /// Quantize the base on load as the run's QLoRA training did (`None`: as stored).
    pub quantize: Option<WeightType>,
}

/// How answers are generated: greedy by default, several examples decoded together.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoding {
    /// Examples in flight together (see [`run_side`]); whatever the size, every answer is
    /// bit-for-bit the one-at-a-time answer.
    pub batch_size: usize,
    /// Temperature 0 (the default) is greedy. A sampled run stays reproducible: each
    /// example's sampler is seeded from `seed` and the example's line ([`crate::example_seed`]).
    pub sampling: SamplingParams,
    /// Constrain every answer to be a JSON value (constrained decoding on the tokenizer's
    /// vocabulary), as `bora serve` does for `response_format`.
    pub constrain_json: bool,
}

impl Decoding {
    /// The default batch: a group of 4 or more rows for each thread of a machine with up to
    /// 4 cores (`Model::forward_decode` runs a step as one group per thread). Answers do not
    /// depend on it.
    pub const DEFAULT_BATCH: usize = 16;
}

impl Default for Decoding {
    fn default() -> Self {
        Decoding {
            batch_size: Decoding::DEFAULT_BATCH,
            sampling: SamplingParams::default(),
            constrain_json: false,
        }
    }
}

/// The score of one side with its 95% Wilson interval and answer NLL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideScore {
    /// Fraction of examples answered right, in [0, 1].
    pub score: f64,
    pub correct: usize,
    pub ci95: [f64; 2],
    /// Mean NLL (nats) per expected-answer token, teacher-forced through the chat format.
    pub nll: f64,
    pub ppl: f64,
}

/// `results.json`; its first four fields are the `--json` object of `bora eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    pub metric: String,
    pub n: usize,
    pub base: SideScore,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<SideScore>,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    pub data: String,
    pub eval_seconds: f64,
    /// How answers were drawn when not plainly greedy, so a sampled evaluation can be
    /// reproduced and is not mistaken for a greedy one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingRecord>,
    /// The judge's verdicts (`--metric judge`), beside the text metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<crate::judge::JudgeResults>,
    /// The deployed model's score ([`crate::add_deployed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<crate::deployed::DeployedScore>,
}

/// [`SamplingParams`] as `results.json` records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingRecord {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: u64,
}

impl SamplingRecord {
    /// `None` for the default (greedy, no penalty).
    fn of(p: &SamplingParams) -> Option<SamplingRecord> {
        (*p != SamplingParams::default()).then_some(SamplingRecord {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            seed: p.seed,
        })
    }
}

/// What one answer cost: its prompt and answer token counts and the seconds from the
/// prompt going in to the answer's last token (other examples of its batch decoded beside
/// it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub seconds: f64,
}

/// One line of `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    pub line: usize,
    pub prompt: String,
    pub expected: String,
    pub base: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<String>,
    pub base_score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_usage: Option<AnswerUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned_usage: Option<AnswerUsage>,
    /// The deployed model's answer and score ([`crate::add_deployed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_score: Option<f64>,
    /// The judge's verdict on this example, with `--metric judge` ([`crate::judge()`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judged>,
}

/// Progress of the two generation passes.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Inputs checked; `n` examples per side.
    Ready { n: usize },
    Item {
        side: Side,
        done: usize,
        total: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Base,
    Tuned,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Base => "base",
            Side::Tuned => "tuned",
        }
    }
}

/// [`evaluate_with`] greedily, [`Decoding::default`] rows at a time.
pub fn evaluate(
    config: &EvalConfig,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<(EvalResults, Vec<SampleRow>)> {
    evaluate_with(config, &Decoding::default(), on_progress)
}

/// Runs the evaluation. Every input is checked (decoding settings, metric and expected
/// answers, test file structure, model, adapter shapes against the model) before the first
/// token is generated.
pub fn evaluate_with(
    config: &EvalConfig,
    decoding: &Decoding,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<(EvalResults, Vec<SampleRow>)> {
    let start = Instant::now();
    decoding
        .sampling
        .validate()
        .map_err(|what| EvalError::Decoding { what })?;
    if decoding.batch_size == 0 {
        return Err(EvalError::Decoding {
            what: "the batch size must be at least 1".into(),
        });
    }
    let tok = Tokenizer::from_file(&config.model).map_err(|e| EvalError::Invalid {
        path: config.model.clone(),
        what: format!("cannot load the tokenizer: {e}"),
    })?;
    let items = load_items(&config.data, &tok, &config.metric, config.limit)?;
    let longest = items
        .iter()
        .map(|it| it.ids.len().max(it.prompt_ids.len() + config.max_tokens))
        .max()
        .unwrap_or(1);
    let model = Model::load(
        &config.model,
        &LoadOptions {
            context: Some(longest),
            quantize: config.quantize,
            decode_layout: true,
        },
    )?;
    if tok.vocab_size() > model.config.vocab_size {
        return Err(EvalError::Invalid {
            path: config.model.clone(),
            what: format!(
                "the tokenizer has {} tokens but the model only {} embeddings",
                tok.vocab_size(),
                model.config.vocab_size
            ),
        });
    }
    let adapter = config
        .adapter
        .as_deref()
        .map(|dir| {
            Lora::load_peft(dir, &model.config).map_err(|source| EvalError::Adapter {
                dir: dir.to_path_buf(),
                model: config.model.clone(),
                source: Box::new(source),
            })
        })
        .transpose()?;

    let mut stop_tokens = model.config.eos_token_ids.clone();
    stop_tokens.extend(tok.eos_id());
    let opts = GenerateOptions {
        max_tokens: config.max_tokens,
        sampling: decoding.sampling.clone(),
        stop_tokens,
        stop_strings: Vec::new(),
    };
    let json = decoding.constrain_json.then(|| JsonAnswers {
        vocab: Arc::new(VocabIndex::new(&tok)),
        schema: Arc::new(JsonSchema::any_value()),
    });
    on_progress(Progress::Ready { n: items.len() });
    let total = items.len();
    let mut side = |which: Side, lora: Option<&Lora>| {
        run_side_constrained(
            &model,
            lora,
            &tok,
            &items,
            &opts,
            json.as_ref(),
            decoding.batch_size,
            &mut |done| {
                on_progress(Progress::Item {
                    side: which,
                    done,
                    total,
                })
            },
        )
    };
    let base = side(Side::Base, None)?;
    let tuned = adapter
        .as_ref()
        .map(|a| side(Side::Tuned, Some(a)))
        .transpose()?;

    let metric = &config.metric;
    let scores = |out: &SideOutput| -> Vec<bool> {
        items
            .iter()
            .zip(&out.answers)
            .map(|(it, a)| metric.score(a, &it.expected))
            .collect()
    };
    let base_scores = scores(&base);
    let tuned_scores = tuned.as_ref().map(scores);
    let samples = sample_rows(
        &items,
        &base,
        &base_scores,
        tuned.as_ref(),
        tuned_scores.as_deref(),
    );
    let results = EvalResults {
        metric: metric.to_string(),
        n: items.len(),
        base: side_score(&base, &base_scores),
        tuned: tuned
            .as_ref()
            .zip(tuned_scores.as_deref())
            .map(|(o, s)| side_score(o, s)),
        model: config.model.display().to_string(),
        adapter: config.adapter.as_ref().map(|a| a.display().to_string()),
        data: config.data.display().to_string(),
        eval_seconds: start.elapsed().as_secs_f64(),
        sampling: SamplingRecord::of(&decoding.sampling),
        judge: None,
        deployed: None,
    };
    Ok((results, samples))
}

fn side_score(out: &SideOutput, scores: &[bool]) -> SideScore {
    let correct = scores.iter().filter(|&&s| s).count();
    let (lo, hi) = wilson(correct, scores.len(), Z95);
    SideScore {
        score: correct as f64 / scores.len().max(1) as f64,
        correct,
        ci95: [lo, hi],
        nll: out.nll,
        ppl: out.nll.exp(),
    }
}

fn sample_rows(
    items: &[EvalItem],
    base: &SideOutput,
    base_scores: &[bool],
    tuned: Option<&SideOutput>,
    tuned_scores: Option<&[bool]>,
) -> Vec<SampleRow> {
    let as_f = |b: bool| if b { 1.0 } else { 0.0 };
    items
        .iter()
        .enumerate()
        .map(|(i, it)| SampleRow {
            line: it.line,
            prompt: it.prompt.clone(),
            expected: it.expected.clone(),
            base: base.answers[i].clone(),
            tuned: tuned.map(|t| t.answers[i].clone()),
            base_score: as_f(base_scores[i]),
            tuned_score: tuned_scores.map(|s| as_f(s[i])),
            base_usage: Some(base.usage[i]),
            tuned_usage: tuned.map(|t| t.usage[i]),
            deployed: None,
            deployed_score: None,
            judge: None,
        })
        .collect()
}

/// The `--json` object: `{"metric", "n", "base": {"score"}, "tuned": {"score"}}`, and
/// `"deployed": {"score"}` with a deployed side.
pub fn summary_json(results: &EvalResults) -> serde_json::Value {
    let mut out = serde_json::json!({
        "metric": results.metric,
        "n": results.n,
        "base": {"score": results.base.score},
    });
    if let Some(t) = &results.tuned {
        out["tuned"] = serde_json::json!({"score": t.score});
    }
    if let Some(d) = &results.deployed {
        out["deployed"] = serde_json::json!({"score": d.score});
    }
    out
}
