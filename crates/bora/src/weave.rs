//! `--weave`: an evaluation recorded in W&B Weave (`bora eval`) and served requests traced
//! as Weave calls (`bora serve`), through `bora_hub::weave`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bora_eval::{AnswerUsage, EvalResults, SampleRow, GENERAL_RUBRIC};
use bora_hub::wandb::Target;
use bora_hub::weave::{
    record_evaluation, EvalRecord, ModelRecord, Prediction, ScorerRecord, TestRow, WeaveClient,
};

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
    let scorer = match &results.judge {
        Some(j) => ScorerRecord {
            name: format!("judge-{}", j.judge),
            metric: results.metric.clone(),
            judge: Some((
                j.judge.clone(),
                j.rubric
                    .clone()
                    .unwrap_or_else(|| GENERAL_RUBRIC.to_owned()),
            )),
        },
        None => ScorerRecord {
            name: results.metric.clone(),
            metric: results.metric.clone(),
            judge: None,
        },
    };
    let prediction = |answer: &str, score: f64, usage: Option<AnswerUsage>| {
        let usage = usage.unwrap_or_default();
        Prediction {
            answer: answer.to_owned(),
            correct: score >= 0.5,
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
            .map(|s| prediction(&s.base, s.base_score, s.base_usage))
            .collect(),
    }];
    if results.tuned.is_some() {
        models.push(ModelRecord {
            name: names.tuned.to_owned(),
            model_id: format!("{base_model}+{}", names.tuned),
            base_model,
            adapter: results.adapter.clone(),
            // The run directory does not record a W&B artifact of its adapter; once it does,
            // its `wandb-artifact:///ENTITY/PROJECT/NAME:VERSION` ref goes here.
            artifact: None,
            predictions: samples
                .iter()
                .map(|s| {
                    prediction(
                        s.tuned.as_deref().unwrap_or_default(),
                        s.tuned_score.unwrap_or(0.0),
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
