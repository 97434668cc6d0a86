//! The Weave client against a local stand-in for W&B and the trace server, checked against
//! what the `weave` library sent for the same evaluation (`fixtures/weave_eval.json`, made by
//! `scripts/make_weave_fixtures.py`): the same requests with the same fields, refs and
//! digests, and an evaluation that can be rebuilt from what the server received.

mod weave_server;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use bora_hub::hub::Retry;
use bora_hub::wandb::{ApiKey, WandbError};
use bora_hub::weave::digest::{bytes_digest, table_digest, value_digest};
use bora_hub::weave::{
    record_evaluation, EvalRecord, ModelRecord, Prediction, RecordedEvaluation, ScorerKind,
    ScorerRecord, ServeTracer, TestRow, TracedRequest, WeaveClient,
};
use serde_json::{json, Value};
use weave_server::{multipart, Failure, FakeWeave, Request, ENTITY};

const KEY: &str = "weave-test-key-0123456789abcdef";
const PROJECT: &str = "bora-evals";

fn recording() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/weave_eval.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn recorded_requests(rec: &Value) -> Vec<Value> {
    rec["requests"].as_array().unwrap().clone()
}

fn connect(server: &FakeWeave) -> WeaveClient {
    WeaveClient::connect(
        &server.url,
        &server.trace_url(),
        ApiKey::new(KEY),
        PROJECT,
        None,
    )
    .unwrap()
}

/// The recorded evaluation, as bora would describe it: the same rows, answers, token counts
/// and verdicts as the script's models gave.
fn record_like_the_recording() -> EvalRecord {
    let rows = vec![
        ("What is the capital of France?", "Paris"),
        ("2 + 2 =", "4"),
        ("Opposite of hot?", "cold"),
    ];
    let answers = [
        (
            "base",
            "SmolLM2-135M-Instruct",
            [("Lyon", 12, 3), ("4", 7, 1), ("warm", 8, 2)],
        ),
        (
            "tuned",
            "SmolLM2-135M-Instruct+demo-adapter",
            [("Paris", 12, 2), ("4", 7, 1), ("cold", 8, 1)],
        ),
    ];
    let models = answers
        .iter()
        .map(|(name, id, preds)| ModelRecord {
            name: (*name).into(),
            model_id: (*id).into(),
            base_model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            adapter: (*name == "tuned").then(|| "runs/demo/adapter".into()),
            artifact: (*name == "tuned")
                .then(|| "wandb-artifact:///bora-team/bora-evals/demo-adapter:v0".into()),
            predictions: preds
                .iter()
                .zip(&rows)
                .map(|((answer, p, c), (_, expected))| Prediction {
                    answer: (*answer).into(),
                    score: json!({"correct": answer.eq_ignore_ascii_case(expected)}),
                    prompt_tokens: *p,
                    completion_tokens: *c,
                    latency: Duration::from_millis(40),
                })
                .collect(),
        })
        .collect();
    EvalRecord {
        name: "bora-eval".into(),
        dataset: "bora-test-rows".into(),
        rows: rows
            .iter()
            .map(|(p, e)| TestRow {
                prompt: (*p).into(),
                expected: (*e).into(),
            })
            .collect(),
        scorer: ScorerRecord {
            name: "exact_match".into(),
            kind: ScorerKind::Metric("exact_match".into()),
        },
        models,
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// `weave:///ENTITY/PROJECT/op/NAME:DIGEST` → `NAME`.
fn op_name(call: &Value) -> String {
    let op = call["op_name"].as_str().unwrap();
    let rest = op.split("/op/").nth(1).unwrap();
    rest.split(':').next().unwrap().to_owned()
}

/// The items of every `calls/complete` request, the starts and the ends.
fn calls_sent(requests: &[(String, Value)]) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let (mut complete, mut starts, mut ends) = (Vec::new(), Vec::new(), Vec::new());
    for (path, body) in requests {
        if path.ends_with("/calls/complete") {
            complete.extend(body["batch"].as_array().unwrap().iter().cloned());
        } else if path.ends_with("/call/start") {
            starts.push(body["start"].clone());
        } else if path.ends_with("/call/end") {
            ends.push(body["end"].clone());
        }
    }
    (complete, starts, ends)
}

fn json_requests(requests: &[Request]) -> Vec<(String, Value)> {
    requests
        .iter()
        .filter(|r| r.header("content-type") == Some("application/json"))
        .map(|r| (r.path().to_owned(), r.json()))
        .collect()
}

fn recorded_json(rec: &Value) -> Vec<(String, Value)> {
    recorded_requests(rec)
        .into_iter()
        .filter(|r| r["body"].is_object())
        .map(|r| (r["path"].as_str().unwrap().to_owned(), r["body"].clone()))
        .collect()
}

#[test]
fn digests_are_computed_as_weave_computes_them() {
    let rec = recording();
    let mut checked = HashMap::new();
    for r in recorded_requests(&rec) {
        let path = r["path"].as_str().unwrap();
        let answer = &r["answer"];
        if path.ends_with("/obj/create") {
            let val = &r["body"]["obj"]["val"];
            assert_eq!(value_digest(val), answer["digest"], "{val}");
            *checked.entry("objects").or_insert(0) += 1;
        } else if path.ends_with("/table/create") {
            let rows = r["body"]["table"]["rows"].as_array().unwrap();
            let digests: Vec<String> = rows.iter().map(value_digest).collect();
            assert_eq!(json!(digests), answer["row_digests"]);
            assert_eq!(
                table_digest(digests.iter().map(String::as_str)),
                answer["digest"]
            );
            *checked.entry("tables").or_insert(0) += 1;
        } else if path.ends_with("/file/create") {
            let digest = bytes_digest(r["file"].as_str().unwrap().as_bytes());
            assert_eq!(digest, answer["digest"]);
            assert_eq!(digest, r["form"]["expected_digest"]);
            *checked.entry("files").or_insert(0) += 1;
        }
    }
    // Floats (latencies, fractions, means) are among the hashed values.
    assert!(checked["objects"] >= 10 && checked["tables"] == 3 && checked["files"] >= 6);
}

#[test]
fn an_evaluation_of_two_models_is_sent_as_weave_sends_it() {
    let rec = recording();
    let server = FakeWeave::start();
    let client = connect(&server);
    assert_eq!(client.project().id(), format!("{ENTITY}/{PROJECT}"));
    let record = record_like_the_recording();
    let recorded = record_evaluation(&client, &record).unwrap();
    let requests = server.requests();

    // Set-up: what weave.init asks W&B, in the same order.
    let graphql_ops = |queries: Vec<String>| -> Vec<String> {
        queries
            .iter()
            .map(|q| q.split(['(', ' ', '{']).nth(1).unwrap().to_owned())
            .collect()
    };
    let ours: Vec<String> = requests
        .iter()
        .filter(|r| r.path() == "/graphql")
        .map(|r| r.json()["query"].as_str().unwrap().to_owned())
        .collect();
    let theirs: Vec<String> = recorded_requests(&rec)
        .iter()
        .filter(|r| r["path"] == "/graphql")
        .map(|r| r["body"]["query"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(graphql_ops(ours.clone()), graphql_ops(theirs[..3].to_vec()));
    assert_eq!(ours, theirs[..3].to_vec(), "the same GraphQL documents");

    // Headers: W&B's basic auth with the key, JSON both ways, the trace id on starts/ends.
    let basic = requests[0].header("authorization").unwrap().to_owned();
    let theirs_basic = rec["requests"][0]["headers"]["authorization"]
        .as_str()
        .unwrap();
    assert!(basic.starts_with("Basic ") && theirs_basic.starts_with("Basic "));
    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some(basic.as_str()),
            "{}",
            r.target
        );
        if r.path().ends_with("/call/start") || r.path().ends_with("/call/end") {
            assert_eq!(
                r.header("x-weave-trace-id"),
                r.json().as_object().unwrap().values().next().unwrap()["trace_id"].as_str()
            );
        }
    }

    // Every path weave used, and no other.
    let paths = |ps: Vec<String>| -> BTreeSet<String> { ps.into_iter().collect() };
    let ours_paths = paths(requests.iter().map(|r| r.path().to_owned()).collect());
    let theirs_paths = paths(
        recorded_requests(&rec)
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_owned())
            .collect(),
    );
    assert_eq!(ours_paths, theirs_paths);

    // Objects: the same classes with the same fields; the dataset is the same object, so
    // the same version and the same row refs as weave's.
    let objects = |reqs: &[(String, Value)]| -> HashMap<String, Value> {
        reqs.iter()
            .filter(|(p, _)| p.ends_with("/obj/create"))
            .map(|(_, b)| {
                (
                    b["obj"]["object_id"].as_str().unwrap().to_owned(),
                    b["obj"].clone(),
                )
            })
            .collect()
    };
    let ours_json = json_requests(&requests);
    let theirs_json = recorded_json(&rec);
    let (ours_objs, theirs_objs) = (objects(&ours_json), objects(&theirs_json));
    for (name, theirs) in &theirs_objs {
        if name == "bora.serve.chat" {
            continue;
        }
        let ours = ours_objs
            .get(name)
            .unwrap_or_else(|| panic!("no {name} object"));
        assert_eq!(keys(ours), keys(theirs), "{name}");
        assert_eq!(keys(&ours["val"]), keys(&theirs["val"]), "{name}");
        assert_eq!(ours["val"]["_type"], theirs["val"]["_type"], "{name}");
        assert_eq!(ours["val"]["_bases"], theirs["val"]["_bases"], "{name}");
    }
    assert_eq!(ours_objs["bora-test-rows"], theirs_objs["bora-test-rows"]);
    let their_dataset_digest = recorded_requests(&rec)
        .iter()
        .find(|r| r["body"]["obj"]["object_id"] == "bora-test-rows")
        .unwrap()["answer"]["digest"]
        .clone();
    assert_eq!(
        recorded.dataset,
        format!(
            "weave:///{ENTITY}/{PROJECT}/object/bora-test-rows:{}",
            their_dataset_digest.as_str().unwrap()
        )
    );
    assert_eq!(
        ours_objs["tuned"]["val"]["artifact"],
        theirs_objs["tuned"]["val"]["artifact"]
    );

    // Calls: per op, the same fields in the call, its inputs, output and summary.
    let (ours_calls, ours_starts, ours_ends) = calls_sent(&ours_json);
    let (theirs_calls, theirs_starts, theirs_ends) = calls_sent(&theirs_json);
    let by_op = |calls: &[Value]| -> HashMap<String, Vec<Value>> {
        let mut out: HashMap<String, Vec<Value>> = HashMap::new();
        for c in calls {
            out.entry(op_name(c)).or_default().push(c.clone());
        }
        out
    };
    let (ours_by_op, theirs_by_op) = (by_op(&ours_calls), by_op(&theirs_calls));
    let mut ops: Vec<&String> = theirs_by_op
        .keys()
        .filter(|o| *o != "bora.serve.chat")
        .collect();
    ops.sort();
    let mut our_ops: Vec<&String> = ours_by_op.keys().collect();
    our_ops.sort();
    assert_eq!(ops, our_ops);
    for op in ops {
        let (ours, theirs) = (&ours_by_op[op], &theirs_by_op[op]);
        assert_eq!(ours.len(), theirs.len(), "{op} calls");
        for (o, t) in ours.iter().zip(theirs) {
            assert_eq!(keys(o), keys(t), "{op}");
            for field in ["inputs", "output", "summary", "attributes"] {
                assert_eq!(keys(&o[field]), keys(&t[field]), "{op} {field}");
            }
            assert_eq!(
                keys(&o["summary"]["usage"]),
                keys(&t["summary"]["usage"]),
                "{op}"
            );
        }
    }
    assert_eq!(ours_starts.len(), 2);
    assert_eq!(ours_ends.len(), 2);
    for (o, t) in ours_starts.iter().zip(&theirs_starts) {
        assert_eq!(keys(o), keys(t));
        assert_eq!(keys(&o["inputs"]), keys(&t["inputs"]));
    }
    for (o, t) in ours_ends.iter().zip(&theirs_ends) {
        assert_eq!(keys(o), keys(t));
        // The summary as weave's Evaluation.summarize computed it from the same rows, but
        // for the latency, which is measured.
        let mut ours_out = o["output"].clone();
        let mut theirs_out = t["output"].clone();
        ours_out.as_object_mut().unwrap().remove("model_latency");
        theirs_out.as_object_mut().unwrap().remove("model_latency");
        assert_eq!(ours_out, theirs_out);
        assert_eq!(o["summary"], t["summary"]);
    }

    // Feedback: the scorer's verdicts on the predict calls.
    let feedback = |reqs: &[(String, Value)]| -> Vec<Value> {
        reqs.iter()
            .filter(|(p, _)| p.ends_with("/feedback/batch/create"))
            .flat_map(|(_, b)| b["batch"].as_array().unwrap().clone())
            .collect()
    };
    let (ours_fb, theirs_fb) = (feedback(&ours_json), feedback(&theirs_json));
    assert_eq!(ours_fb.len(), theirs_fb.len());
    assert_eq!(keys(&ours_fb[0]), keys(&theirs_fb[0]));
    assert_eq!(ours_fb[0]["feedback_type"], theirs_fb[0]["feedback_type"]);

    // Op files: the same form fields.
    let form = |fields: Vec<String>| -> BTreeSet<String> { fields.into_iter().collect() };
    let file_request = requests
        .iter()
        .find(|r| r.path().ends_with("/file/create"))
        .unwrap();
    let (fields, _) = multipart(file_request);
    let theirs_form = recorded_requests(&rec)
        .into_iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("/file/create"))
        .unwrap();
    assert_eq!(
        form(fields.keys().cloned().collect()),
        form(
            theirs_form["form"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        )
    );

    check_refs(&ours_json);
    rebuild_and_compare(&server, &recorded, &record);
}

/// Every `weave:///` string sent is a well-formed ref to something in this project.
fn check_refs(requests: &[(String, Value)]) {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.starts_with("weave:") => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    for (_, body) in requests {
        walk(body, &mut refs);
    }
    assert!(refs.len() > 50);
    let prefix = format!("weave:///{ENTITY}/{PROJECT}/");
    for r in refs {
        let rest = r.strip_prefix(&prefix).unwrap_or_else(|| panic!("{r}"));
        let (kind, rest) = rest.split_once('/').unwrap();
        match kind {
            "object" | "op" => {
                let (name_digest, path) = rest.split_once('/').unwrap_or((rest, ""));
                let (name, digest) = name_digest.split_once(':').unwrap();
                assert!(!name.is_empty() && digest.len() == 43, "{r}");
                assert!(digest.chars().all(|c| c.is_ascii_alphanumeric()), "{r}");
                if !path.is_empty() {
                    let parts: Vec<&str> = path.split('/').collect();
                    assert!(parts.len().is_multiple_of(2), "{r}");
                    for pair in parts.chunks(2) {
                        assert!(["attr", "id", "key", "index"].contains(&pair[0]), "{r}");
                    }
                }
            }
            "table" => assert!(rest.len() == 64 && rest.chars().all(|c| c.is_ascii_hexdigit())),
            "call" => assert_eq!(rest.len(), 36, "{r}"),
            other => panic!("{other}: {r}"),
        }
    }
}

/// Rebuilds both evaluations from what the server holds and checks every row's prompt,
/// answer and verdict against what was recorded.
fn rebuild_and_compare(server: &FakeWeave, recorded: &RecordedEvaluation, record: &EvalRecord) {
    let calls = server.state().calls.clone();
    let children = |parent: &str| -> Vec<serde_json::Map<String, Value>> {
        let mut c: Vec<_> = calls
            .values()
            .filter(|c| c.get("parent_id").and_then(Value::as_str) == Some(parent))
            .cloned()
            .collect();
        c.sort_by_key(|c| c["started_at"].as_str().unwrap().to_owned());
        c
    };
    assert_eq!(recorded.evaluate_calls.len(), record.models.len());
    for (model, root_id) in record.models.iter().zip(&recorded.evaluate_calls) {
        let root = &calls[root_id];
        assert_eq!(op_name(&Value::Object(root.clone())), "Evaluation.evaluate");
        assert!(root.contains_key("ended_at") && root.contains_key("started_at"));
        assert_eq!(root["inputs"]["self"], recorded.evaluation.as_str());
        let (model_obj, _) = server
            .resolve(root["inputs"]["model"].as_str().unwrap())
            .unwrap();
        assert_eq!(model_obj["name"], model.name.as_str());
        let (evaluation, _) = server.resolve(&recorded.evaluation).unwrap();
        assert_eq!(evaluation["dataset"], recorded.dataset.as_str());
        assert_eq!(evaluation["scorers"], json!([recorded.scorer]));
        let rows: Vec<_> = children(root_id)
            .into_iter()
            .filter(|c| op_name(&Value::Object(c.clone())) == "Evaluation.predict_and_score")
            .collect();
        assert_eq!(rows.len(), record.rows.len());
        for (i, row_call) in rows.iter().enumerate() {
            let row = server
                .row(row_call["inputs"]["example"].as_str().unwrap())
                .unwrap();
            assert_eq!(row["prompt"], record.rows[i].prompt.as_str());
            let p = &model.predictions[i];
            assert_eq!(row_call["output"]["output"]["answer"], p.answer.as_str());
            assert_eq!(row_call["output"]["scores"]["exact_match"], p.score);
            let predict = children(row_call["id"].as_str().unwrap());
            assert_eq!(predict.len(), 2);
            let usage = &predict[0]["summary"]["usage"][model.model_id.as_str()];
            assert_eq!(usage["prompt_tokens"], p.prompt_tokens);
            assert_eq!(usage["completion_tokens"], p.completion_tokens);
        }
        let correct = model
            .predictions
            .iter()
            .filter(|p| p.score["correct"] == true)
            .count();
        assert_eq!(
            root["output"]["exact_match"]["correct"]["true_count"],
            correct
        );
    }
}

#[test]
fn a_failing_server_is_retried_then_reported_without_the_key() {
    let server = FakeWeave::start();
    let client = connect(&server);
    let quick = Retry::default().with_sleep(|_| {});
    let client = client.with_limits(Duration::from_secs(5), quick);
    server.fail_from(0, Failure::Status(503));
    let before = server.requests().len();
    let err = record_evaluation(&client, &record_like_the_recording()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("503"), "{text}");
    assert!(!text.contains(KEY) && !format!("{err:?}").contains(KEY));
    assert_eq!(
        server.requests().len() - before,
        6,
        "six attempts, then the error"
    );
}

#[test]
fn a_rejected_key_is_not_retried() {
    let server = FakeWeave::start();
    let client = connect(&server);
    server.fail_from(0, Failure::Status(401));
    let before = server.requests().len();
    let err = record_evaluation(&client, &record_like_the_recording()).unwrap_err();
    assert!(
        matches!(err, WandbError::Status { status: 401, .. }),
        "{err}"
    );
    assert!(!err.to_string().contains(KEY));
    assert_eq!(server.requests().len() - before, 1);
}

#[test]
fn a_hanging_server_costs_one_timeout() {
    let server = FakeWeave::start();
    let client = connect(&server).with_limits(Duration::from_millis(500), Retry::default());
    server.fail_from(0, Failure::Hang);
    let before = server.requests().len();
    let err = record_evaluation(&client, &record_like_the_recording()).unwrap_err();
    assert!(matches!(err, WandbError::Transport { .. }), "{err}");
    assert_eq!(
        server.requests().len() - before,
        1,
        "a timeout is not retried"
    );
}

fn traced(i: usize) -> TracedRequest {
    let now = SystemTime::now();
    TracedRequest {
        chat: true,
        request: json!({"model": "tuned", "messages": [{"role": "user", "content": format!("q{i}")}]}),
        response: json!({
            "id": format!("chatcmpl-{i}"), "object": "chat.completion", "model": "tuned",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
        }),
        started: now,
        ended: now + Duration::from_millis(30),
    }
}

#[test]
fn served_requests_become_calls_shaped_as_weave_traces_an_op() {
    let rec = recording();
    let server = FakeWeave::start();
    let (url, trace_url) = (server.url.clone(), server.trace_url());
    let tracer = ServeTracer::start(
        move || WeaveClient::connect(&url, &trace_url, ApiKey::new(KEY), PROJECT, None),
        16,
        |line| panic!("{line}"),
    );
    for i in 0..3 {
        tracer.trace(traced(i));
    }
    let (sent, dropped, failed) = tracer.finish(Duration::from_secs(30));
    assert_eq!((sent, dropped, failed), (3, 0, 0));
    let (ours, _, _) = calls_sent(&json_requests(&server.requests()));
    let (theirs, _, _) = calls_sent(&recorded_json(&rec));
    let theirs = theirs
        .iter()
        .find(|c| op_name(c) == "bora.serve.chat")
        .unwrap();
    assert_eq!(ours.len(), 3);
    for call in &ours {
        assert_eq!(op_name(call), "bora.serve.chat");
        assert_eq!(keys(call), keys(theirs));
        assert_eq!(call["summary"], theirs["summary"]);
        assert_eq!(call["output"]["choices"], theirs["output"]["choices"]);
        assert!(call["parent_id"].is_null());
    }
    let ours_inputs: Vec<&Value> = ours.iter().map(|c| &c["inputs"]["messages"]).collect();
    assert_eq!(ours_inputs[2][0]["content"], "q2");
}

#[test]
fn a_hanging_trace_server_drops_and_counts_instead_of_waiting() {
    let server = FakeWeave::start();
    let (url, trace_url) = (server.url.clone(), server.trace_url());
    // server_info and the two ops (file and object each) are answered, then every call
    // batch hangs.
    server.fail_from(5, Failure::Hang);
    let tracer = ServeTracer::start(
        move || WeaveClient::connect(&url, &trace_url, ApiKey::new(KEY), PROJECT, None),
        4,
        |_| {},
    );
    for i in 0..100 {
        tracer.trace(traced(i));
    }
    let (sent, dropped, _) = tracer.counts();
    assert_eq!(sent, 0);
    // At most the queue and one batch in flight are held; the rest are dropped.
    assert!(dropped >= 100 - 4 - 64, "{dropped} dropped");
    let (_, dropped_after, _) = tracer.finish(Duration::from_millis(200));
    assert!(dropped_after >= dropped);
}

#[test]
fn an_unreachable_weave_turns_tracing_off_with_one_report() {
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = reports.clone();
    let tracer = ServeTracer::start(
        || {
            WeaveClient::connect(
                "http://127.0.0.1:9",
                "http://127.0.0.1:9/traces",
                ApiKey::new(KEY),
                PROJECT,
                None,
            )
        },
        4,
        move |line| sink.lock().unwrap().push(line),
    );
    tracer.finish(Duration::from_secs(30));
    tracer.trace(traced(0));
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].contains("Weave tracing is off") && !reports[0].contains(KEY));
    assert_eq!(tracer.counts().1, 1);
}
