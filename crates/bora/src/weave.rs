//! `--weave`: an evaluation recorded in W&B Weave (`bora eval`) and served requests traced
//! as Weave calls (`bora serve`), through `bora_hub::weave`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bora_eval::{AnswerUsage, EvalResults, Judged, Outcome, SampleRow, GENERAL_RUBRIC};
use bora_hub::wandb::{read_artifacts, Target, WandbError};
use bora_hub::weave::{
    record_evaluation, EvalRecord, ModelRecord, Prediction, ScorerKind, ScorerRecord, TestRow,
    WeaveClient,
};
use serde_json::{json, Value};

/// Connects to the Weave project `--weave` names (PROJECT or PROJECT/ENTITY), creating it
/// when missing; called before any long work so a missing key or an unreachable server
/// stops the command before it starts.
pub fn connect(target: &str) -> Result<WeaveClient> {
    let target = Target::parse(target, "--weave")?;
    WeaveClient::from_env(&target).context("--weave asks for W&B Weave")
}

/// The names an evaluation is recorded under.
pub struct EvalNames<'a> {
    /// The test file: its name names the dataset.
    pub data: &'a Path,
    /// The tuned model's object name (the run's or the adapter directory's name).
    pub tuned: &'a str,
    /// The run evaluated: the W&B artifact its directory records for the adapter is the
    /// tuned model's `artifact`.
    pub run: Option<&'a Path>,
}

/// Records `results` and their `samples` as a Weave evaluation of the base model and, when
/// there is one, the tuned adapter; prints where to find it.
pub fn record_eval(
    client: &WeaveClient,
    results: &EvalResults,
    samples: &[SampleRow],
    names: &EvalNames<'_>,
) -> Result<()> {
    let file_name = |p: &str| {
        Path::new(p)
            .file_name()
            .map_or_else(|| p.to_owned(), |n| n.to_string_lossy().into_owned())
    };
    let base_model = file_name(&results.model);
    let dataset = names
        .data
        .file_stem()
        .map_or_else(|| "test".to_owned(), |s| s.to_string_lossy().into_owned());
    let judged = results.judge.is_some();
    let scorer = match &results.judge {
        Some(j) => ScorerRecord {
            name: format!("judge-{}", j.judge),
            kind: ScorerKind::Judge {
                model: j.judge.clone(),
                rubric: j
                    .rubric
                    .clone()
                    .unwrap_or_else(|| GENERAL_RUBRIC.to_owned()),
                mode: j.mode.clone(),
            },
        },
        None => ScorerRecord {
            name: results.metric.clone(),
            kind: ScorerKind::Metric(results.metric.clone()),
        },
    };
    // The scorer's output for one side's answer: the judge's verdict from that side, or the
    // task metric's.
    let score = |s: &SampleRow, tuned: bool| {
        if judged {
            judge_score(s.judge.as_ref(), tuned)
        } else {
            let score = if tuned {
                s.tuned_score.unwrap_or(0.0)
            } else {
                s.base_score
            };
            json!({"correct": score >= 0.5})
        }
    };
    let prediction = |answer: &str, score: Value, usage: Option<AnswerUsage>| {
        let usage = usage.unwrap_or_default();
        Prediction {
            answer: answer.to_owned(),
            score,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency: Duration::try_from_secs_f64(usage.seconds).unwrap_or_default(),
        }
    };
    let mut models = vec![ModelRecord {
        name: "base".into(),
        model_id: base_model.clone(),
        base_model: base_model.clone(),
        adapter: None,
        artifact: None,
        predictions: samples
            .iter()
            .map(|s| prediction(&s.base, score(s, false), s.base_usage))
            .collect(),
    }];
    if results.tuned.is_some() {
        let artifact = match names.run {
            Some(run) => read_artifacts(run)
                .context("reading the run's W&B artifacts")?
                .get("adapter")
                .and_then(|a| a.weave_ref()),
            None => None,
        };
        models.push(ModelRecord {
            name: names.tuned.to_owned(),
            model_id: format!("{base_model}+{}", names.tuned),
            base_model,
            adapter: results.adapter.clone(),
            artifact,
            predictions: samples
                .iter()
                .map(|s| {
                    prediction(
                        s.tuned.as_deref().unwrap_or_default(),
                        score(s, true),
                        s.tuned_usage,
                    )
                })
                .collect(),
        });
    }
    let record = EvalRecord {
        name: format!("bora-{dataset}-{}", scorer.name),
        dataset,
        rows: samples
            .iter()
            .map(|s| TestRow {
                prompt: s.prompt.clone(),
                expected: s.expected.clone(),
            })
            .collect(),
        scorer,
        models,
    };
    let recorded =
        record_evaluation(client, &record).context("recording the evaluation in W&B Weave")?;
    eprintln!(
        "weave: {} model(s) evaluated by {} in project {} (the Evaluations page compares them)",
        recorded.models.len(),
        recorded.evaluation,
        client.project().id()
    );
    Ok(())
}

/// One side's score from the judge's verdict on a row: `win`, `tie` and `loss` from that
/// side (none of them when the verdict was unreadable, so Weave's fractions are over the
/// valid rows, as bora's rates are), `valid`, the better answer in each order, the reasons,
/// and the side's 1–10 score when the judge scored.
fn judge_score(judged: Option<&Judged>, tuned: bool) -> Value {
    let Some(j) = judged else {
        return json!({"valid": false});
    };
    let outcome = if tuned {
        j.outcome
    } else {
        j.outcome.for_base()
    };
    let valid = outcome != Outcome::Invalid;
    let is = |o: Outcome| valid.then_some(outcome == o);
    let mut score = json!({
        "win": is(Outcome::Win), "tie": is(Outcome::Tie), "loss": is(Outcome::Loss),
        "valid": valid,
        "winner": {"base_first": j.base_first, "tuned_first": j.tuned_first},
        "reasons": j.reasons,
    });
    if let Some(s) = j.scores {
        score["score"] = json!(if tuned { s.tuned } else { s.base });
    }
    score
}

/// Whether recording failed because Weave did not answer in time or answered that it cannot
/// now (429, 5xx after the retries): then the traces are dropped and the evaluation, saved
/// already, stands. A refused key or a request Weave rejects is an error to fix.
pub fn weave_unavailable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<WandbError>()
        .is_some_and(WandbError::is_transient)
}
