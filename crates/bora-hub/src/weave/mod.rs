//! A Weave client: records an evaluation as W&B Weave's own objects and calls, the way the
//! `weave` Python library records an `Evaluation.evaluate` of two models, and traces served
//! requests as Weave calls.
//!
//! Weave keeps versioned objects (`/obj/create`, each named by the digest of its value),
//! tables of rows (`/table/create`), op source files (`/file/create`) and calls (a tree of
//! `/v2/{entity}/{project}/call/start`, `calls/complete` and `call/end`). An evaluation is
//! an `Evaluation` object (the dataset and scorers by ref) and, per model, an
//! `Evaluation.evaluate` call whose children are one `Evaluation.predict_and_score` call per
//! row (each with the model's `predict` and the scorer's `score` call) and an
//! `Evaluation.summarize` call; the evaluate call's output is the summary. Two evaluations
//! of the same `Evaluation` object are what the Weave UI compares side by side.
//!
//! Objects are referred to as `weave:///ENTITY/PROJECT/object/NAME:DIGEST` (ops with `op`
//! instead of `object`, tables as `weave:///ENTITY/PROJECT/table/DIGEST`, a dataset row as
//! the dataset's ref followed by `/attr/rows/id/ROW_DIGEST`). The server computes digests
//! and answers them; [`digest`] computes them as weave does, for op files (sent with their
//! digest, as weave sends them) and for tests.
//!
//! - `client`: the HTTP side (GraphQL at set-up, the trace server's endpoints);
//! - `eval`: an evaluation as objects and calls;
//! - `tracer`: served requests as calls, sent by a background thread that never blocks a
//!   response;
//! - `digest`, `ids`: digests, call ids and timestamps as weave computes them.

mod client;
pub mod digest;
mod eval;
mod ids;
mod tracer;

pub use client::{trace_server_url, WeaveClient};
pub use eval::{
    record_evaluation, EvalRecord, ModelRecord, Prediction, RecordedEvaluation, ScorerKind,
    ScorerRecord, TestRow,
};
pub use ids::{timestamp, uuid7};
pub use tracer::{ServeTracer, TracedRequest, TRACE_QUEUE};

/// W&B's cloud trace server, which weave uses with W&B's cloud API.
pub const DEFAULT_TRACE_SERVER_URL: &str = "https://trace.wandb.ai";

/// A Weave project: a W&B entity (user or team) and project name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub entity: String,
    pub name: String,
}

impl Project {
    /// `ENTITY/PROJECT`, the `project_id` of every trace server request.
    pub fn id(&self) -> String {
        format!("{}/{}", self.entity, self.name)
    }

    /// `weave:///ENTITY/PROJECT/KIND/NAME:DIGEST`, KIND `object` or `op`.
    pub fn object_ref(&self, kind: &str, name: &str, digest: &str) -> String {
        format!("weave:///{}/{kind}/{name}:{digest}", self.id())
    }

    /// `weave:///ENTITY/PROJECT/table/DIGEST`.
    pub fn table_ref(&self, digest: &str) -> String {
        format!("weave:///{}/table/{digest}", self.id())
    }

    /// `weave:///ENTITY/PROJECT/call/ID`.
    pub fn call_ref(&self, id: &str) -> String {
        format!("weave:///{}/call/{id}", self.id())
    }
}

/// An object name Weave accepts, as weave's `sanitize_object_name` makes it: each run of
/// characters other than word characters and `.` becomes `-`, each run of two or more of
/// `.`, `_` and `-` becomes one `-`, `-` and `_` are stripped from the ends, and at most 128
/// characters are kept.
pub fn object_name(name: &str) -> String {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    let mut dashed = String::new();
    for c in name.chars() {
        if word(c) {
            dashed.push(c);
        } else if !dashed.ends_with('-') {
            dashed.push('-');
        }
    }
    let mut out = String::new();
    let mut run = String::new();
    for c in dashed.chars().chain(std::iter::once('\0')) {
        if matches!(c, '.' | '_' | '-') {
            run.push(c);
            continue;
        }
        match run.chars().count() {
            0 => {}
            1 => out.push_str(&run),
            _ => out.push('-'),
        }
        run.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    let out: String = out
        .trim_matches(|c| c == '-' || c == '_')
        .chars()
        .take(128)
        .collect();
    if out.is_empty() {
        "object".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_sanitized_as_weave_does() {
        assert_eq!(object_name("exact_match"), "exact_match");
        assert_eq!(object_name("regex:^[A-D]$"), "regex-A-D");
        assert_eq!(object_name("test.jsonl"), "test.jsonl");
        assert_eq!(object_name("a  b__c..d"), "a-b-c-d");
        assert_eq!(object_name("_x_"), "x");
        assert_eq!(object_name("::"), "object");
    }
}
