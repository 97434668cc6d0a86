//! The W&B client against a local server that records the exact requests.

mod wandb_server;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use bora_hub::wandb::{
    read_state, ApiKey, Client, RunSpec, Table, Target, WandbError, WandbRun, WandbSink, STATE_FILE,
};
use bora_run::{MetricSink, Metrics};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wandb_server::{Failure, FakeWandb, Request};

const KEY: &str = "local-test-key-0123456789";

fn client(server: &FakeWandb) -> Client {
    Client::new(&server.url, ApiKey::new(KEY)).unwrap()
}

fn metrics(step: u64) -> Metrics {
    Metrics {
        step,
        loss: 3.0 / step as f32,
        lr: 1e-3,
        grad_norm: 0.5,
        tokens_per_s: 250.0,
        processed_tokens_per_s: 300.0,
        val_loss: (step == 3).then_some(1.25),
    }
}

fn start(server: &FakeWandb, dir: &Path, target: &Target, new_id: &str) -> WandbRun {
    let config = json!({"name": "demo", "lora": {"rank": 4, "alpha": 8.0}, "train": {"seed": 3}});
    let spec = RunSpec {
        target,
        display_name: "demo",
        config: &config,
        new_id: new_id.to_owned(),
        run_dir: dir,
    };
    let mut run = WandbRun::start(client(server), &spec).unwrap();
    run.set_send_interval(Duration::from_secs(3600));
    run
}

fn file_stream_bodies(requests: &[Request]) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r.path().ends_with("/file_stream"))
        .map(Request::json)
        .collect()
}

fn history_lines(body: &Value) -> Vec<Value> {
    body.pointer("/files/wandb-history.jsonl/content")
        .and_then(Value::as_array)
        .map(|c| {
            c.iter()
                .map(|l| serde_json::from_str(l.as_str().unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn summary(body: &Value) -> Value {
    let file = body.pointer("/files/wandb-summary.json").unwrap();
    assert_eq!(file["offset"], 0);
    let content = file["content"].as_array().unwrap();
    assert_eq!(content.len(), 1);
    serde_json::from_str(content[0].as_str().unwrap()).unwrap()
}

/// Upsert, two batched history flushes, a table and the finish, request by request.
#[test]
fn a_run_sends_the_requests_wandb_core_sends() {
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let target = Target {
        project: "proj".into(),
        entity: Some("team".into()),
    };
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut run = start(&server, tmp.path(), &target, "abc12345");
    assert_eq!(server.requests().len(), 1, "only the upsert before any log");
    for step in 1..=2 {
        run.log(step, &bora_hub::wandb::metrics_row(&metrics(step)))
            .unwrap();
    }
    assert_eq!(server.requests().len(), 1, "lines wait for the interval");
    run.flush().unwrap();
    run.log(3, &bora_hub::wandb::metrics_row(&metrics(3)))
        .unwrap();
    run.flush().unwrap();
    let columns = ["prompt", "expected", "tuned_score"];
    let rows = vec![
        vec![json!("2+2"), json!("4"), json!(1.0)],
        vec![json!("3+3"), json!("6"), json!(0.0)],
    ];
    run.log_table(&Table {
        key: "eval/samples",
        step: 3,
        columns: &columns,
        rows: &rows,
    })
    .unwrap();
    run.finish(0).unwrap();

    let requests = server.requests();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("api:{KEY}"))
    );
    for r in &requests {
        if r.path().starts_with("/upload/") {
            continue;
        }
        assert_eq!(
            r.header("authorization"),
            Some(auth.as_str()),
            "{}",
            r.path()
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let methods: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path()))
        .collect();
    let stream = "/files/team/proj/abc12345/file_stream";
    assert_eq!(
        methods[..5],
        [
            ("POST", "/graphql"),
            ("POST", stream),
            ("POST", stream),
            ("POST", "/graphql"),
            ("PUT", methods[4].1),
        ]
    );
    assert_eq!(methods[5], ("POST", stream));
    assert_eq!(requests.len(), 6);

    // The upsert: operation, variables, and the config as a JSON string of {"k": {"value"}}.
    let upsert = requests[0].json();
    assert_eq!(upsert["operationName"], "UpsertBucket");
    assert!(upsert["query"]
        .as_str()
        .unwrap()
        .contains("upsertBucket(input:"));
    let vars = &upsert["variables"];
    assert_eq!(vars["name"], "abc12345");
    assert_eq!(vars["project"], "proj");
    assert_eq!(vars["entity"], "team");
    assert_eq!(vars["displayName"], "demo");
    let config: Value = serde_json::from_str(vars["config"].as_str().unwrap()).unwrap();
    assert_eq!(
        config,
        json!({"name": {"value": "demo"}, "lora": {"value": {"rank": 4, "alpha": 8.0}},
               "train": {"value": {"seed": 3}}})
    );

    // History: offsets follow the lines already sent; each line has _step/_runtime/_timestamp.
    let bodies = file_stream_bodies(&requests);
    assert_eq!(bodies[0]["files"]["wandb-history.jsonl"]["offset"], 0);
    assert_eq!(bodies[1]["files"]["wandb-history.jsonl"]["offset"], 2);
    let lines: Vec<Value> = bodies[..2].iter().flat_map(history_lines).collect();
    assert_eq!(lines.len(), 3);
    let mut runtime = 0.0;
    for (i, line) in lines.iter().enumerate() {
        let m = metrics(i as u64 + 1);
        assert_eq!(line["_step"], json!(m.step));
        assert_eq!(line["train/loss"].as_f64().unwrap() as f32, m.loss);
        assert_eq!(line["train/lr"], json!(1e-3));
        assert!(line["_runtime"].as_f64().unwrap() >= runtime);
        runtime = line["_runtime"].as_f64().unwrap();
        let ts = line["_timestamp"].as_f64().unwrap();
        assert!(ts >= before && ts < before + 600.0, "{ts}");
    }
    assert_eq!(lines[2]["val/loss"], json!(1.25));
    assert!(lines[1].get("val/loss").is_none());
    assert_eq!(server.history("team", "proj", "abc12345"), lines);
    assert!(server.offset_errors().is_empty());

    // The summary is the latest value of every key.
    let s = summary(&bodies[1]);
    assert_eq!(s["_step"], 3);
    assert_eq!(s["train/loss"], lines[2]["train/loss"]);
    assert_eq!(s["val/loss"], json!(1.25));

    // The table: CreateRunFiles, the PUT of {"columns", "data"}, then a table-file summary
    // entry and the path announced as uploaded in the finishing request.
    let create = requests[3].json();
    assert_eq!(create["operationName"], "CreateRunFiles");
    let path = create["variables"]["files"][0].as_str().unwrap().to_owned();
    assert_eq!(
        create["variables"],
        json!({"entity": "team", "project": "proj", "run": "abc12345", "files": [path]})
    );
    let uploaded = server.upload(&path).unwrap();
    let table: Value = serde_json::from_slice(&uploaded).unwrap();
    assert_eq!(table, json!({"columns": columns, "data": rows}));
    assert_eq!(requests[4].header("content-type"), Some("application/json"));
    let sha: String = Sha256::digest(&uploaded)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        path,
        format!("media/table/eval/samples_3_{}.table.json", &sha[..20])
    );
    let last = &bodies[2];
    assert_eq!(last["complete"], true);
    assert_eq!(last["exitcode"], 0);
    assert_eq!(last["uploaded"], json!([path]));
    assert!(last.pointer("/files/wandb-history.jsonl").is_none());
    let s = summary(last);
    assert_eq!(
        s["eval/samples"],
        json!({"_type": "table-file", "path": path, "sha256": sha, "size": uploaded.len(),
               "ncols": 3, "nrows": 2, "log_mode": "IMMUTABLE"})
    );
    assert_eq!(s["_step"], 3, "the summary keeps the training keys");

    let state = read_state(&tmp.path().join(STATE_FILE)).unwrap().unwrap();
    assert_eq!(
        (
            state.id.as_str(),
            state.entity.as_str(),
            state.project.as_str()
        ),
        ("abc12345", "team", "proj")
    );
}

/// A zero interval sends each row as it is logged; without an entity the server's default
/// entity names the file_stream URL.
#[test]
fn rows_go_out_when_the_interval_has_passed() {
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let target = Target {
        project: "p".into(),
        entity: None,
    };
    let mut run = start(&server, tmp.path(), &target, "id000001");
    run.set_send_interval(Duration::ZERO);
    for step in 1..=3 {
        run.log(step, &bora_hub::wandb::metrics_row(&metrics(step)))
            .unwrap();
    }
    let requests = server.requests();
    assert_eq!(requests[0].json()["variables"]["entity"], Value::Null);
    let bodies = file_stream_bodies(&requests);
    assert_eq!(bodies.len(), 3);
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(body["files"]["wandb-history.jsonl"]["offset"], i);
        assert_eq!(history_lines(body).len(), 1);
    }
    assert!(requests[1]
        .path()
        .starts_with("/files/default-team/p/id000001/"));
    assert_eq!(run.state().entity, "default-team");
}

/// A second session on the same run directory continues the same W&B run: the stored id,
/// the server's history count as offset, steps already sent skipped, runtime growing.
#[test]
fn a_resumed_run_continues_the_same_wandb_run() {
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let target = Target {
        project: "proj".into(),
        entity: None,
    };
    let mut run = start(&server, tmp.path(), &target, "first001");
    for step in 1..=3 {
        run.log(step, &bora_hub::wandb::metrics_row(&metrics(step)))
            .unwrap();
    }
    run.flush().unwrap();
    drop(run);
    let runtime_before = server.summary("default-team", "proj", "first001")["_runtime"]
        .as_f64()
        .unwrap();

    let mut run = start(&server, tmp.path(), &target, "second01");
    let requests = server.requests();
    let status = requests[requests.len() - 2].json();
    assert_eq!(status["operationName"], "RunResumeStatus");
    assert_eq!(
        status["variables"],
        json!({"project": "proj", "entity": "default-team", "name": "first001"})
    );
    let upsert = requests.last().unwrap().json();
    assert_eq!(upsert["variables"]["name"], "first001");
    assert_eq!(upsert["variables"]["entity"], "default-team");
    assert_eq!(run.progress().history_lines, 3);
    assert_eq!(run.progress().last_step, Some(3));
    // The checkpoint was at step 1: steps 2 and 3 come again and are already on W&B.
    for step in 2..=5 {
        run.log(step, &bora_hub::wandb::metrics_row(&metrics(step)))
            .unwrap();
    }
    run.finish(0).unwrap();
    let bodies = file_stream_bodies(&server.requests());
    let last = bodies.last().unwrap();
    assert_eq!(last["files"]["wandb-history.jsonl"]["offset"], 3);
    let lines = history_lines(last);
    let steps: Vec<u64> = lines.iter().map(|l| l["_step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [4, 5]);
    assert!(lines[0]["_runtime"].as_f64().unwrap() >= runtime_before);
    // The summary sent back still has what only the first session set.
    assert_eq!(summary(last)["val/loss"], json!(1.25));
    let all = server.history("default-team", "proj", "first001");
    let steps: Vec<u64> = all.iter().map(|l| l["_step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5]);
    assert!(server.offset_errors().is_empty());

    // A different project is a different run.
    let other = Target {
        project: "elsewhere".into(),
        entity: None,
    };
    let run = start(&server, tmp.path(), &other, "third001");
    assert_eq!(run.state().id, "third001");
}

fn sink_survives(failure: Failure) {
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let target = Target {
        project: "proj".into(),
        entity: Some("team".into()),
    };
    let mut run = start(&server, tmp.path(), &target, "fail0001");
    run.set_send_interval(Duration::ZERO);
    let mut sink = WandbSink::new(run);
    sink.log(&metrics(1)).unwrap();
    assert!(sink.take_warning().is_none());
    server.fail_from(2, failure);
    for step in 2..=5 {
        sink.log(&metrics(step)).unwrap();
        sink.flush().unwrap();
    }
    let warning = sink.take_warning().expect("one warning");
    assert!(warning.contains("W&B tracking stopped"), "{warning}");
    assert!(warning.contains("file_stream"), "{warning}");
    assert!(!warning.contains(KEY));
    assert!(sink.take_warning().is_none(), "warned once");
    assert!(!sink.is_live());
    assert_eq!(sink.finish(1), None);
    assert_eq!(server.requests().len(), 3, "no request after the failure");
}

#[test]
fn the_sink_warns_once_and_stops_on_a_server_error() {
    sink_survives(Failure::Status500);
}

#[test]
fn the_sink_warns_once_and_stops_on_a_closed_connection() {
    sink_survives(Failure::Close);
}

/// A failed upsert is an error for the caller to report (the CLI warns and trains on), and
/// a run id that is no URL segment never leaves the machine.
#[test]
fn a_failed_upsert_and_a_bad_run_id_are_errors() {
    let server = FakeWandb::start();
    server.fail_from(0, Failure::Status500);
    let tmp = tempfile::tempdir().unwrap();
    let target = Target {
        project: "proj".into(),
        entity: None,
    };
    let config = json!({});
    let spec = RunSpec {
        target: &target,
        display_name: "x",
        config: &config,
        new_id: "abcdefgh".into(),
        run_dir: tmp.path(),
    };
    let err = WandbRun::start(client(&server), &spec).unwrap_err();
    assert!(
        matches!(err, WandbError::Status { status: 500, .. }),
        "{err}"
    );
    let bad = RunSpec {
        new_id: "../etc".into(),
        ..spec
    };
    assert!(matches!(
        WandbRun::start(client(&server), &bad).unwrap_err(),
        WandbError::RunId { .. }
    ));
}
