//! An evaluation as Weave's objects and calls, in the shapes and order the `weave` library
//! sends for `asyncio.run(evaluation.evaluate(model))` of each model (see the module doc of
//! [`super`]). bora generates and scores the answers itself; this records what happened, so
//! every call's times are laid out from the measured latencies, ending now.

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::ids::{timestamp, uuid7};
use super::{Project, WeaveClient};
use crate::wandb::{Result, WandbError};

/// One held-out example, as the dataset's row: the prompt and the answer expected.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRow {
    pub prompt: String,
    pub expected: String,
}

/// One model's answer to one row, with what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub answer: String,
    /// The scorer's output for the answer, a JSON object as a weave scorer returns one
    /// (`{"correct": true}` for a task metric); summarized as weave summarizes scores.
    pub score: Value,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// From the prompt's first token in to the answer's last token out.
    pub latency: Duration,
}

/// The scorer: one of bora's task metrics, or the judge model that compared the answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorerRecord {
    /// The object name; also the key of its scores in each row and in the summary.
    pub name: String,
    pub kind: ScorerKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScorerKind {
    /// A task metric (`exact`, `json`, `regex:...`).
    Metric(String),
    /// A judge model grading the two models' answers against each other.
    Judge {
        model: String,
        /// The rubric the judge was given, as sent.
        rubric: String,
        /// `pairwise`, or `pairwise+score` when each answer was also scored 1–10.
        mode: String,
    },
}

/// A model evaluated: the base alone or the base with an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    /// The object name (`base`, or the run's name for the tuned adapter).
    pub name: String,
    /// The name token counts are kept under, as an API's `model` field names it.
    pub model_id: String,
    pub base_model: String,
    pub adapter: Option<String>,
    /// The adapter's W&B artifact (`wandb-artifact:///ENTITY/PROJECT/NAME:VERSION`), which
    /// the W&B UI links to.
    pub artifact: Option<String>,
    /// One per test row, in the rows' order.
    pub predictions: Vec<Prediction>,
}

/// An evaluation: the rows, the scorer and the models evaluated on them.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRecord {
    /// The `Evaluation` object's name: the same name, rows and scorer give the same version,
    /// which is what puts evaluations side by side in the Weave UI.
    pub name: String,
    pub dataset: String,
    pub rows: Vec<TestRow>,
    pub scorer: ScorerRecord,
    pub models: Vec<ModelRecord>,
}

/// The refs of what was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvaluation {
    pub evaluation: String,
    pub dataset: String,
    pub scorer: String,
    pub models: Vec<String>,
    /// The `Evaluation.evaluate` call of each model.
    pub evaluate_calls: Vec<String>,
}

/// Calls sent per `calls/complete` request: a few hundred KiB at most, well under the
/// trace server's request limit.
const CALLS_PER_REQUEST: usize = 100;

const MODEL_CLASS: &str = "BoraModel";

/// The source of each op, shown by the Weave UI beside its calls. The work itself is
/// bora's (Rust); each text says what the op stood for.
const EVALUATE_SOURCE: &str = "# Recorded by `bora eval`: the model answered every row of the dataset with bora's\n# decoder, each answer was scored, and the scores were summarized.\nasync def evaluate(self, model) -> dict:\n    ...\n";
const PREDICT_AND_SCORE_SOURCE: &str = "# Recorded by `bora eval`: one row's answer and its scores.\nasync def predict_and_score(self, model, example: dict) -> dict:\n    ...\n";
const SUMMARIZE_SOURCE: &str = "# Recorded by `bora eval`: the mean of each numeric column and the count and\n# fraction of true verdicts, as weave's auto_summarize computes them.\nasync def summarize(self, eval_table) -> dict:\n    ...\n";
const PREDICT_SOURCE: &str = "# Recorded by `bora eval`: the answer bora generated for the prompt (the base model,\n# or the base with the LoRA adapter unmerged), with its token counts.\ndef predict(self, prompt: str) -> dict:\n    ...\n";
const SCORE_SOURCE: &str = "# Recorded by `bora eval`: bora's task metric applied to the answer and the expected\n# answer (`exact`, `contains`, `json`, `regex:...`, `choice:...`, `tool_call`).\ndef score(self, *, output: dict, expected: str) -> dict:\n    ...\n";
const JUDGE_SCORE_SOURCE: &str = "# Recorded by `bora eval --metric judge`: the judge model compared this answer with the\n# other model's, shown in both orders (base first, then tuned first), by the rubric.\n# win/tie/loss are this model's outcome over both orders (none when a verdict was\n# unreadable), winner names the better answer in each order, score is this answer's\n# 1-10 grade when the judge also scored.\ndef score(self, *, output: dict, expected: str) -> dict:\n    ...\n";
const SCORER_SUMMARIZE_SOURCE: &str = "# Recorded by `bora eval`: weave's auto_summarize of the score rows (the count and\n# fraction of true verdicts, the mean of numbers).\ndef summarize(self, score_rows: list) -> dict:\n    ...\n";

/// Records `record` in the client's project: the ops, the dataset (a table and a
/// `Dataset`), the scorer, the `Evaluation`, then per model its object and its evaluate call
/// tree, the scores as call feedback, and the summary as the evaluate call's output.
pub fn record_evaluation(client: &WeaveClient, record: &EvalRecord) -> Result<RecordedEvaluation> {
    check_shape(record)?;
    let project = client.project().clone();
    let op = |name: &str, source: &str| -> Result<String> {
        let file = client.create_file("obj.py", source.as_bytes())?;
        let val = json!({
            "_type": "CustomWeaveType",
            "weave_type": {"type": "Op"},
            "files": {"obj.py": file},
        });
        let digest = create_object(client, name, val)?;
        Ok(project.object_ref("op", name, &digest))
    };
    let (scorer_class, score_source) = match &record.scorer.kind {
        ScorerKind::Metric(_) => ("BoraMetric", SCORE_SOURCE),
        ScorerKind::Judge { .. } => ("BoraJudge", JUDGE_SCORE_SOURCE),
    };
    let ops = Ops {
        evaluate: op("Evaluation.evaluate", EVALUATE_SOURCE)?,
        predict_and_score: op("Evaluation.predict_and_score", PREDICT_AND_SCORE_SOURCE)?,
        summarize: op("Evaluation.summarize", SUMMARIZE_SOURCE)?,
        predict: op(&format!("{MODEL_CLASS}.predict"), PREDICT_SOURCE)?,
        score: op(&format!("{scorer_class}.score"), score_source)?,
        scorer_summarize: op("Scorer.summarize", SCORER_SUMMARIZE_SOURCE)?,
    };

    let rows: Vec<Value> = record
        .rows
        .iter()
        .map(|r| json!({"prompt": r.prompt, "expected": r.expected}))
        .collect();
    let (table, row_digests) = create_table(client, rows)?;
    let dataset_name = super::object_name(&record.dataset);
    let dataset_digest = create_object(
        client,
        &dataset_name,
        json!({
            "_type": "Dataset", "name": dataset_name, "description": null,
            "rows": project.table_ref(&table),
            "_class_name": "Dataset", "_bases": ["Object", "BaseModel"],
        }),
    )?;
    let dataset = project.object_ref("object", &dataset_name, &dataset_digest);

    let scorer_name = super::object_name(&record.scorer.name);
    let mut scorer_val = json!({
        "_type": scorer_class, "name": scorer_name, "description": null, "column_map": null,
    });
    match &record.scorer.kind {
        ScorerKind::Metric(metric) => scorer_val["metric"] = json!(metric),
        ScorerKind::Judge {
            model,
            rubric,
            mode,
        } => {
            scorer_val["judge"] = json!(model);
            scorer_val["rubric"] = json!(rubric);
            scorer_val["mode"] = json!(mode);
        }
    }
    scorer_val["score"] = json!(ops.score);
    scorer_val["summarize"] = json!(ops.scorer_summarize);
    scorer_val["_class_name"] = json!(scorer_class);
    scorer_val["_bases"] = json!(["Scorer", "Object", "BaseModel"]);
    let scorer_digest = create_object(client, &scorer_name, scorer_val)?;
    let scorer = project.object_ref("object", &scorer_name, &scorer_digest);

    let evaluation_name = super::object_name(&record.name);
    let evaluation_digest = create_object(
        client,
        &evaluation_name,
        json!({
            "_type": "Evaluation", "name": evaluation_name, "description": null,
            "dataset": dataset, "scorers": [scorer], "preprocess_model_input": null,
            "trials": 1, "metadata": null, "evaluation_name": null,
            "evaluate": ops.evaluate, "predict_and_score": ops.predict_and_score,
            "summarize": ops.summarize,
            "_class_name": "Evaluation", "_bases": ["Object", "BaseModel"],
        }),
    )?;
    let evaluation = project.object_ref("object", &evaluation_name, &evaluation_digest);

    let total: Duration = record
        .models
        .iter()
        .flat_map(|m| &m.predictions)
        .map(|p| p.latency)
        .sum();
    let mut clock = SystemTime::now()
        .checked_sub(total)
        .unwrap_or_else(SystemTime::now);
    let shared = Shared {
        project: &project,
        ops: &ops,
        evaluation: &evaluation,
        dataset: &dataset,
        row_digests: &row_digests,
        scorer: &scorer,
        scorer_name: &scorer_name,
    };
    let mut models = Vec::new();
    let mut evaluate_calls = Vec::new();
    for model in &record.models {
        let (model_ref, call) = record_model(client, &shared, model, &mut clock)?;
        models.push(model_ref);
        evaluate_calls.push(call);
    }
    Ok(RecordedEvaluation {
        evaluation,
        dataset,
        scorer,
        models,
        evaluate_calls,
    })
}

/// Every model has one prediction per row, and there is at least one row.
fn check_shape(record: &EvalRecord) -> Result<()> {
    let bad = |message: String| WandbError::Response {
        what: "Weave evaluation",
        message,
    };
    if record.rows.is_empty() {
        return Err(bad("the evaluation has no rows".into()));
    }
    for m in &record.models {
        if m.predictions.len() != record.rows.len() {
            return Err(bad(format!(
                "model {}: {} predictions for {} rows",
                m.name,
                m.predictions.len(),
                record.rows.len()
            )));
        }
    }
    Ok(())
}

struct Ops {
    evaluate: String,
    predict_and_score: String,
    summarize: String,
    predict: String,
    score: String,
    scorer_summarize: String,
}

/// What every model's evaluation refers to.
struct Shared<'a> {
    project: &'a Project,
    ops: &'a Ops,
    evaluation: &'a str,
    dataset: &'a str,
    row_digests: &'a [String],
    scorer: &'a str,
    scorer_name: &'a str,
}

/// One model's object and evaluate call tree; returns the model's ref and the call's id.
fn record_model(
    client: &WeaveClient,
    shared: &Shared,
    model: &ModelRecord,
    clock: &mut SystemTime,
) -> Result<(String, String)> {
    let project = shared.project;
    let name = super::object_name(&model.name);
    let model_digest = create_object(
        client,
        &name,
        json!({
            "_type": MODEL_CLASS, "name": name, "description": null,
            "base_model": model.base_model, "adapter": model.adapter,
            "artifact": model.artifact, "predict": shared.ops.predict,
            "_class_name": MODEL_CLASS, "_bases": ["Model", "Object", "BaseModel"],
        }),
    )?;
    let model_ref = project.object_ref("object", &name, &model_digest);

    let started = *clock;
    let trace = uuid7(started);
    let root = uuid7(started);
    let date = &timestamp(started)[..10];
    let start = json!({"start": {
        "project_id": project.id(), "id": root, "op_name": shared.ops.evaluate,
        "display_name": format!("eval-{date}-{name}"), "trace_id": trace,
        "parent_id": null, "thread_id": null, "turn_id": null,
        "started_at": timestamp(started), "attributes": attributes(false, false),
        "inputs": {"self": shared.evaluation, "model": model_ref},
        "otel_dump": null, "wb_user_id": null, "wb_run_id": null, "wb_run_step": null,
    }});
    let v2 = format!("/v2/{}/{}", project.entity, project.name);
    client.post(
        "call/start",
        &format!("{v2}/call/start"),
        &start,
        Some(&trace),
    )?;

    let score_key = shared.scorer_name;
    let mut calls = Vec::new();
    let mut feedback = Vec::new();
    let mut result_rows = Vec::new();
    for (i, p) in model.predictions.iter().enumerate() {
        let row_ref = format!("{}/attr/rows/id/{}", shared.dataset, shared.row_digests[i]);
        let total_tokens = p.prompt_tokens + p.completion_tokens;
        let output = json!({
            "model": model.model_id, "answer": p.answer,
            "usage": {"prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens,
                      "total_tokens": total_tokens},
        });
        let usage = json!({model.model_id.as_str(): {
            "requests": 1, "prompt_tokens": p.prompt_tokens,
            "completion_tokens": p.completion_tokens, "total_tokens": total_tokens,
        }});
        let verdict = p.score.clone();
        let row_start = *clock;
        let row_end = row_start + p.latency;
        *clock = row_end;
        let (pas, predict, score) = (uuid7(row_start), uuid7(row_start), uuid7(row_end));
        let call = |id: &str, parent: &str, op: &str, times: (SystemTime, SystemTime)| CallItem {
            project,
            id: id.to_owned(),
            trace: trace.clone(),
            parent: Some(parent.to_owned()),
            op: op.to_owned(),
            times,
        };
        let score_row = json!({
            "output": output, "scores": {score_key: verdict},
            "model_latency": p.latency.as_secs_f64(),
        });
        calls.push(
            call(
                &pas,
                &root,
                &shared.ops.predict_and_score,
                (row_start, row_end),
            )
            .json(
                attributes(true, false),
                json!({"self": shared.evaluation, "model": model_ref, "example": row_ref}),
                score_row.clone(),
                json!({"usage": usage, "status_counts": {"success": 3, "error": 0}}),
            ),
        );
        calls.push(
            call(&predict, &pas, &shared.ops.predict, (row_start, row_end)).json(
                attributes(true, false),
                json!({"self": model_ref, "prompt": format!("{row_ref}/key/prompt")}),
                output.clone(),
                json!({"usage": usage, "status_counts": {"success": 1, "error": 0}}),
            ),
        );
        calls.push(
            call(&score, &pas, &shared.ops.score, (row_end, row_end)).json(
                attributes(true, true),
                json!({"self": shared.scorer, "output": output,
                   "expected": format!("{row_ref}/key/expected")}),
                verdict.clone(),
                json!({"status_counts": {"success": 1, "error": 0}}),
            ),
        );
        feedback.push(json!({
            "project_id": project.id(), "weave_ref": project.call_ref(&predict),
            "feedback_type": format!("wandb.runnable.{score_key}"),
            "payload": {"output": verdict}, "runnable_ref": shared.scorer,
            "call_ref": project.call_ref(&score),
            "scorer_tags": [], "scorer_tag_reasons": {}, "scorer_tag_confidences": {},
            "scorer_ratings": {}, "scorer_rating_reasons": {}, "scorer_rating_confidences": {},
            "span_agent_name": "", "span_agent_version": "", "span_status_code": "UNSET",
            "span_conversation_id": "", "span_trace_id": "", "scorer_trace_id": "",
            "id": uuid7(row_end),
        }));
        result_rows.push(score_row);
    }
    send_calls(client, &v2, &calls)?;

    let (results_table, result_digests) = create_table(client, result_rows)?;
    let results_digest = create_object(
        client,
        "EvaluationResults",
        json!({
            "_type": "EvaluationResults", "name": null, "description": null,
            "rows": project.table_ref(&results_table),
            "_class_name": "EvaluationResults", "_bases": ["Object", "BaseModel"],
        }),
    )?;
    let results = project.object_ref("object", "EvaluationResults", &results_digest);
    let summary = summarize(model, score_key);
    let verdicts = summary[score_key].clone();
    let summarize_id = uuid7(*clock);
    let scorer_summarize_id = uuid7(*clock);
    let now = *clock;
    let summarize_call = CallItem {
        project,
        id: summarize_id.clone(),
        trace: trace.clone(),
        parent: Some(root.clone()),
        op: shared.ops.summarize.clone(),
        times: (now, now),
    };
    let scorer_summarize_call = CallItem {
        project,
        id: scorer_summarize_id,
        trace: trace.clone(),
        parent: Some(summarize_id),
        op: shared.ops.scorer_summarize.clone(),
        times: (now, now),
    };
    let score_rows: Vec<String> = result_digests
        .iter()
        .map(|d| format!("{results}/attr/rows/id/{d}/key/scores/key/{score_key}"))
        .collect();
    send_calls(
        client,
        &v2,
        &[
            summarize_call.json(
                attributes(true, false),
                json!({"self": shared.evaluation, "eval_table": results}),
                summary.clone(),
                json!({"status_counts": {"success": 2, "error": 0}}),
            ),
            scorer_summarize_call.json(
                attributes(true, false),
                json!({"self": shared.scorer, "score_rows": score_rows}),
                verdicts,
                json!({"status_counts": {"success": 1, "error": 0}}),
            ),
        ],
    )?;
    client.post(
        "feedback/batch/create",
        "/feedback/batch/create",
        &json!({"batch": feedback}),
        None,
    )?;

    let n = model.predictions.len() as u64;
    let sum = |f: fn(&Prediction) -> u64| model.predictions.iter().map(f).sum::<u64>();
    let (prompt, completion) = (sum(|p| p.prompt_tokens), sum(|p| p.completion_tokens));
    let end = json!({"end": {
        "project_id": project.id(), "id": root, "trace_id": trace, "is_eval": true,
        "ended_at": timestamp(*clock), "started_at": timestamp(started), "exception": null,
        "output": summary,
        "summary": {
            "usage": {model.model_id.as_str(): {
                "requests": n, "prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }},
            "status_counts": {"success": 3 * n + 3, "error": 0},
        },
        "wb_run_step_end": null,
    }});
    client.post("call/end", &format!("{v2}/call/end"), &end, Some(&trace))?;
    Ok((model_ref, root))
}

/// The evaluate call's output, as weave's `Evaluation.summarize` computes it from the rows:
/// the mean of each token count and of the latency, and the scorer's summary of its scores
/// (the answer text, a string, has no summary).
fn summarize(model: &ModelRecord, score_key: &str) -> Value {
    let n = model.predictions.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Prediction) -> f64| -> f64 {
        model.predictions.iter().map(f).sum::<f64>() / n
    };
    let scores: Vec<Value> = model.predictions.iter().map(|p| p.score.clone()).collect();
    json!({
        "output": {"usage": {
            "prompt_tokens": {"mean": mean(&|p| p.prompt_tokens as f64)},
            "completion_tokens": {"mean": mean(&|p| p.completion_tokens as f64)},
            "total_tokens": {"mean": mean(&|p| (p.prompt_tokens + p.completion_tokens) as f64)},
        }},
        score_key: auto_summarize(&scores),
        "model_latency": {"mean": mean(&|p| p.latency.as_secs_f64())},
    })
}

/// weave's `auto_summarize`: over the non-null values of a column, the count and fraction
/// of `true` for booleans, the mean for numbers, and per key (nested) for objects; other
/// values (strings, lists) and columns of nulls have no summary (`null`). As weave does, a
/// key's summary that has the key itself in it is merged into its parent.
fn auto_summarize(values: &[Value]) -> Value {
    let present: Vec<&Value> = values.iter().filter(|v| !v.is_null()).collect();
    let Some(first) = present.first() else {
        return Value::Null;
    };
    match first {
        Value::Bool(_) => {
            let count = present.iter().filter(|v| v.as_bool() == Some(true)).count();
            json!({"true_count": count, "true_fraction": count as f64 / present.len() as f64})
        }
        Value::Number(_) => {
            let sum: f64 = present.iter().filter_map(|v| v.as_f64()).sum();
            json!({"mean": sum / present.len() as f64})
        }
        Value::Object(_) => {
            let mut keys: Vec<&String> = Vec::new();
            for object in present.iter().filter_map(|v| v.as_object()) {
                for key in object.keys() {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
            let mut out = Map::new();
            for key in keys {
                let column: Vec<Value> = present
                    .iter()
                    .filter_map(|v| v.as_object())
                    .map(|o| o.get(key).cloned().unwrap_or(Value::Null))
                    .collect();
                match auto_summarize(&column) {
                    Value::Null => {}
                    Value::Object(summary) if summary.contains_key(key) => out.extend(summary),
                    summary => {
                        out.insert(key.clone(), summary);
                    }
                }
            }
            if out.is_empty() {
                Value::Null
            } else {
                Value::Object(out)
            }
        }
        _ => Value::Null,
    }
}

/// The `attributes` weave gives a call: who wrote it and, inside an evaluation, the
/// evaluation marker; scorers' calls are marked as such.
pub(super) fn attributes(in_evaluation: bool, scorer: bool) -> Value {
    let mut weave = Map::new();
    if scorer {
        weave.insert("kind".into(), json!("scorer"));
    }
    weave.insert(
        "client_version".into(),
        json!(concat!("bora ", env!("CARGO_PKG_VERSION"))),
    );
    weave.insert("source".into(), json!("bora"));
    weave.insert("os_name".into(), json!(std::env::consts::OS));
    let mut out = json!({"weave": weave});
    if in_evaluation {
        out["_weave_eval_meta"] = json!({"declarative": true});
    }
    out
}

/// A finished call, as one item of a `calls/complete` batch.
pub(super) struct CallItem<'a> {
    pub project: &'a Project,
    pub id: String,
    pub trace: String,
    pub parent: Option<String>,
    pub op: String,
    pub times: (SystemTime, SystemTime),
}

impl CallItem<'_> {
    pub fn json(&self, attributes: Value, inputs: Value, output: Value, summary: Value) -> Value {
        json!({
            "project_id": self.project.id(), "id": self.id, "trace_id": self.trace,
            "op_name": self.op, "started_at": timestamp(self.times.0),
            "ended_at": timestamp(self.times.1), "display_name": null,
            "parent_id": self.parent, "thread_id": null, "turn_id": null,
            "attributes": attributes, "inputs": inputs, "output": output, "summary": summary,
            "otel_dump": null, "exception": null, "wb_user_id": null, "wb_run_id": null,
            "wb_run_step": null, "wb_run_step_end": null,
        })
    }
}

/// Sends finished calls, [`CALLS_PER_REQUEST`] to a request.
pub(super) fn send_calls(client: &WeaveClient, v2: &str, calls: &[Value]) -> Result<()> {
    for chunk in calls.chunks(CALLS_PER_REQUEST) {
        client.post(
            "calls/complete",
            &format!("{v2}/calls/complete"),
            &json!({"batch": chunk}),
            None,
        )?;
    }
    Ok(())
}

/// `/obj/create`; returns the digest the server gave the object.
pub(super) fn create_object(client: &WeaveClient, name: &str, val: Value) -> Result<String> {
    let body = json!({"obj": {
        "project_id": client.project().id(), "object_id": name, "val": val,
        "builtin_object_class": null, "expected_digest": null, "wb_user_id": null,
    }});
    let answer = client.post("obj/create", "/obj/create", &body, None)?;
    digest_field(&answer, "digest", "obj/create")
}

/// `/table/create`; returns the table's digest and its rows' digests.
fn create_table(client: &WeaveClient, rows: Vec<Value>) -> Result<(String, Vec<String>)> {
    let n = rows.len();
    let body = json!({"table": {
        "project_id": client.project().id(), "rows": rows, "expected_digest": null,
    }});
    let answer = client.post("table/create", "/table/create", &body, None)?;
    let table = digest_field(&answer, "digest", "table/create")?;
    let row_digests: Vec<String> = answer
        .get("row_digests")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if row_digests.len() != n || row_digests.iter().any(|d| !is_digest(d)) {
        return Err(WandbError::Response {
            what: "table/create",
            message: format!("expected {n} row digests, the answer has {answer}"),
        });
    }
    Ok((table, row_digests))
}

/// A digest goes into refs (URL paths): only letters and digits are accepted.
fn is_digest(d: &str) -> bool {
    !d.is_empty() && d.len() <= 128 && d.chars().all(|c| c.is_ascii_alphanumeric())
}

fn digest_field(answer: &Value, field: &str, what: &'static str) -> Result<String> {
    match answer.get(field).and_then(Value::as_str) {
        Some(d) if is_digest(d) => Ok(d.to_owned()),
        _ => Err(WandbError::Response {
            what,
            message: format!("the answer has no usable `{field}`: {answer}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_summarized_as_weave_summarizes_them() {
        let rows = [
            json!({"win": true, "loss": false, "score": 8, "winner": {"base_first": "tuned"}}),
            json!({"win": false, "loss": true, "score": 3, "winner": {"base_first": "base"}}),
            json!({"win": null, "loss": null, "valid": false}),
        ];
        let summary = auto_summarize(&rows);
        // Nulls leave the count; strings have no summary; a bool column counts its trues.
        assert_eq!(
            summary["win"],
            json!({"true_count": 1, "true_fraction": 0.5})
        );
        assert_eq!(summary["score"], json!({"mean": 5.5}));
        assert_eq!(
            summary["valid"],
            json!({"true_count": 0, "true_fraction": 0.0})
        );
        assert!(summary.get("winner").is_none(), "{summary}");
        // A key whose summary holds the key itself is merged into its parent.
        let nested = [
            json!({"correct": {"correct": true}}),
            json!({"correct": {"correct": false}}),
        ];
        assert_eq!(
            auto_summarize(&nested),
            json!({"correct": {"true_count": 1, "true_fraction": 0.5}})
        );
        assert_eq!(auto_summarize(&[Value::Null]), Value::Null);
    }
}
