//! The quick score `bora train` reports at the end of a run with validation examples: the
//! tuned model's (and the base's) generated answers on a sample of them, scored with the
//! metric their expected answers call for ([`Metric::infer`]). A loss says little about
//! whether the answers are right; this says "53%" before anyone publishes the model.

use std::path::{Path, PathBuf};

use bora_formats::atomic::write_file;
use bora_formats::quant::WeightType;
use bora_run::RunDir;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::eval::{evaluate_with, Decoding, EvalConfig, Progress};
use crate::metric::Metric;
use crate::task::expected_answers;

/// Validation examples the end-of-run score generates answers for: enough that 50% reads
/// as 36–64% (95% interval), few enough to take seconds on the default model.
pub const HELDOUT_SAMPLE: usize = 50;

/// `heldout.json`: the score, what it was computed on and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldoutScore {
    /// The inferred metric, as `bora eval --metric` spells it.
    pub metric: String,
    pub n: usize,
    /// Tuned model's fraction right, in [0, 1].
    pub score: f64,
    pub correct: usize,
    pub ci95: [f64; 2],
    pub base_score: f64,
    /// The validation file the examples came from.
    pub data: String,
}

impl HeldoutScore {
    /// `held-out exact match 53% on 50 examples (95% CI 39–66%; base 0%)`.
    pub fn line(&self) -> String {
        let what = match self.metric.split(':').next().unwrap_or_default() {
            "exact" => "exact match",
            "json" => "JSON match",
            "choice" => "choice accuracy",
            other => other,
        };
        format!(
            "held-out {what} {:.0}% on {} examples (95% CI {:.0}–{:.0}%; base {:.0}%)",
            100.0 * self.score,
            self.n,
            100.0 * self.ci95[0],
            100.0 * self.ci95[1],
            100.0 * self.base_score
        )
    }
}

/// What to score: the run's base and final adapter on its validation examples.
#[derive(Debug, Clone)]
pub struct Heldout {
    pub model: PathBuf,
    pub quantize: Option<WeightType>,
    pub adapter: PathBuf,
    pub data: PathBuf,
    /// The first this many examples (the split is already a seeded random draw).
    pub limit: usize,
}

/// Scores `heldout` and writes `heldout.json` into `run`. `None` when the examples have no
/// answer to score (`text` examples) or `limit` is 0.
pub fn score_heldout(
    run: &RunDir,
    heldout: &Heldout,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Option<HeldoutScore>> {
    let expected = expected_answers(&heldout.data)?;
    if expected.is_empty() || heldout.limit == 0 {
        return Ok(None);
    }
    let metric = Metric::infer(&expected);
    let longest = expected
        .iter()
        .map(|e| e.chars().count())
        .max()
        .unwrap_or(0);
    let config = EvalConfig {
        model: heldout.model.clone(),
        adapter: Some(heldout.adapter.clone()),
        data: heldout.data.clone(),
        metric,
        limit: Some(heldout.limit),
        max_tokens: answer_budget(longest),
        quantize: heldout.quantize,
    };
    let (results, _) = evaluate_with(&config, &Decoding::default(), on_progress)?;
    let tuned = results.tuned.ok_or_else(|| EvalError::Invalid {
        path: heldout.adapter.clone(),
        what: "the adapter was not evaluated".into(),
    })?;
    let score = HeldoutScore {
        metric: results.metric,
        n: results.n,
        score: tuned.score,
        correct: tuned.correct,
        ci95: tuned.ci95,
        base_score: results.base.score,
        data: heldout.data.display().to_string(),
    };
    write_heldout(&run.heldout_path(), &score)?;
    Ok(Some(score))
}

/// Tokens an answer may take: about two characters a token for the longest expected answer,
/// and room for a short preamble, so a model that rambles is cut off early.
fn answer_budget(longest_chars: usize) -> usize {
    (longest_chars / 2 + 16).min(512)
}

fn write_heldout(path: &Path, score: &HeldoutScore) -> Result<()> {
    let text = serde_json::to_string_pretty(score).map_err(|e| EvalError::Invalid {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    write_file(path, format!("{text}\n").as_bytes()).map_err(|e| EvalError::Invalid {
        path: path.to_path_buf(),
        what: e.to_string(),
    })
}
