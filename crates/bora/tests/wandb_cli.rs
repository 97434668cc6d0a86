//! `bora train` and `bora eval` with `--wandb`, on the tiny Llama fixture, against a local
//! stand-in for W&B's API that records the requests (`bora-hub/tests/wandb_server`).

mod common;
#[path = "../../bora-hub/tests/wandb_server/mod.rs"]
mod wandb_server;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, bora, model_dir, write_chats};
use serde_json::{json, Value};
use wandb_server::{Failure, FakeWandb, Request};

const KEY: &str = "cli-test-key-abcdef";

/// bora with a clean W&B environment: no key unless given, `HOME` without a netrc.
fn command(args: &[&str], home: &Path, server: Option<&FakeWandb>, key: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("WANDB_API_KEY")
        .env_remove("WANDB_BASE_URL")
        .env_remove("WANDB_RUN_ID")
        .env_remove("NETRC")
        .env("HOME", home);
    if let Some(server) = server {
        cmd.env("WANDB_BASE_URL", &server.url);
    }
    if key {
        cmd.env("WANDB_API_KEY", KEY);
    }
    cmd
}

fn bora_env(args: &[&str], home: &Path, server: Option<&FakeWandb>, key: bool) -> Output {
    command(args, home, server, key).output().unwrap()
}

fn train_args<'a>(model: &'a str, data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        steps,
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--rank",
        "4",
        "--lr",
        "0.01",
        "--checkpoint-every",
        "3",
        "--eval-every",
        "3",
        "--val-fraction",
        "0.2",
        "--seed",
        "1",
    ]
}

struct Setup {
    tmp: tempfile::TempDir,
    model: String,
    data: String,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("data.jsonl");
    write_chats(&data, 24);
    Setup {
        model: model.to_str().unwrap().to_owned(),
        data: data.to_str().unwrap().to_owned(),
        tmp,
    }
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn file_streams(requests: &[Request]) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r.path().ends_with("/file_stream"))
        .map(Request::json)
        .collect()
}

fn operation(r: &Request) -> Option<String> {
    (r.path() == "/graphql").then(|| r.json()["operationName"].as_str().unwrap().to_owned())
}

/// Every file under `dir`, by `/`-separated relative path.
fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), format!("{name}/")));
            } else {
                out.insert(name, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// No file under `dir` holds the key.
fn assert_no_key_under(dir: &Path) {
    for (name, bytes) in dir_files(dir) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(KEY),
            "{name} holds the key"
        );
    }
}

fn steps(history: &[Value]) -> Vec<u64> {
    history
        .iter()
        .map(|l| l["_step"].as_u64().unwrap())
        .collect()
}

/// Training streams every step to one W&B run with the resolved config; `bora eval --run`
/// adds its scores and per-example table to that same run.
#[test]
fn train_and_eval_go_to_one_wandb_run() {
    let s = setup();
    let server = FakeWandb::start();
    let run = s.tmp.path().join("runs/tiny");
    let mut args = train_args(&s.model, &s.data, run.to_str().unwrap(), "6");
    args.extend(["--wandb", "proj/team"]);
    let out = bora_env(&args, s.tmp.path(), Some(&server), true);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(!err.contains(KEY));
    assert!(
        err.contains(&format!("W&B run: {}/team/proj/runs/", server.url)),
        "{err}"
    );

    let requests = server.requests();
    let auth = requests[0].header("authorization").unwrap().to_owned();
    assert!(auth.starts_with("Basic "));
    // Storage upload URLs are presigned: they get no key.
    assert!(requests
        .iter()
        .filter(|r| !r.path().starts_with("/storage/"))
        .all(|r| r.header("authorization") == Some(auth.as_str())));
    assert!(requests
        .iter()
        .filter(|r| r.path().starts_with("/storage/"))
        .all(|r| r.header("authorization").is_none()));
    assert_eq!(operation(&requests[0]).as_deref(), Some("UpsertBucket"));
    let vars = &requests[0].json()["variables"];
    assert_eq!(vars["displayName"], "tiny");
    assert_eq!(
        (vars["project"].as_str(), vars["entity"].as_str()),
        (Some("proj"), Some("team"))
    );
    let id = vars["name"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 8);
    let config: Value = serde_json::from_str(vars["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["name"]["value"], "tiny");
    assert_eq!(config["lora"]["value"]["rank"], 4);
    assert_eq!(config["train"]["value"]["max_steps"], 6);
    assert_eq!(config["tracking"]["value"]["wandb"], "proj/team");

    // Every step, in order, at contiguous offsets, with the values of metrics.jsonl.
    let history = server.history("team", "proj", &id);
    assert!(
        server.offset_errors().is_empty(),
        "{:?}",
        server.offset_errors()
    );
    assert_eq!(steps(&history), (1..=6).collect::<Vec<_>>());
    let local = metrics(&run);
    for (h, m) in history.iter().zip(&local) {
        assert_eq!(
            h["train/loss"].as_f64().unwrap() as f32,
            m["loss"].as_f64().unwrap() as f32
        );
        assert_eq!(h["val/loss"].is_null(), m["val_loss"].is_null());
    }
    let streams = file_streams(&requests);
    assert!(streams.len() >= 2, "a send per checkpoint (steps 3 and 6)");
    let last = streams.last().unwrap();
    assert_eq!(
        (&last["complete"], &last["exitcode"]),
        (&json!(true), &json!(0))
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("wandb.json")).unwrap()).unwrap();
    assert_eq!(state["id"], id.as_str());

    // The adapter, logged by this run before it finished, rebuilt from the uploads.
    let committed = server.committed();
    assert_eq!(committed.len(), 1);
    let adapter = &committed[0];
    assert_eq!(adapter.stored.collection, "tiny-adapter");
    assert_eq!(adapter.stored.run, id);
    assert_eq!(adapter.files, dir_files(&run.join("adapter")));
    let metadata = &adapter.stored.metadata;
    assert_eq!(metadata["base_model"], json!(s.model));
    assert_eq!(metadata["lora"]["rank"], 4);
    assert_eq!(
        metadata["data_sha256"],
        json!(sha256_hex(Path::new(&s.data)))
    );
    let last_loss = metrics(&run).last().unwrap()["loss"].as_f64().unwrap();
    assert_eq!(
        metadata["final_loss"].as_f64().unwrap() as f32,
        last_loss as f32
    );
    let commit_index = requests
        .iter()
        .position(|r| operation(r).as_deref() == Some("CommitArtifact"))
        .unwrap();
    assert!(
        commit_index < requests.len() - 1,
        "logged before the run finished"
    );
    assert!(
        err.contains("W&B artifact: team/proj/tiny-adapter:v0 (new version"),
        "{err}"
    );
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("wandb-artifacts.json")).unwrap())
            .unwrap();
    assert_eq!(recorded["adapter"]["id"], json!(adapter.stored.id));
    // The version index, as W&B answered wandb's own lookup of the saved version.
    assert_eq!(
        recorded["adapter"]["version"],
        json!(adapter.stored.version)
    );
    assert_eq!(recorded["adapter"]["version"], 0);

    let out = bora_env(
        &[
            "eval",
            "--run",
            run.to_str().unwrap(),
            "--data",
            &s.data,
            "--limit",
            "3",
            "--max-tokens",
            "2",
            "--wandb",
            "proj/team",
        ],
        s.tmp.path(),
        Some(&server),
        true,
    );
    assert_ok(&out);
    let eval_requests = &server.requests()[requests.len()..];
    let ops: Vec<Option<String>> = eval_requests.iter().map(operation).collect();
    assert_eq!(
        ops[..4],
        [
            Some("RunResumeStatus".to_owned()),
            Some("UpsertBucket".to_owned()),
            Some("UseArtifact".to_owned()),
            Some("CreateRunFiles".to_owned())
        ]
    );
    assert_eq!(eval_requests[1].json()["variables"]["name"], id.as_str());
    assert_eq!(server.uses(), [(id.clone(), adapter.stored.id.clone())]);
    assert_eq!(eval_requests[4].method, "PUT");
    let summary = server.summary("team", "proj", &id);
    assert!(
        summary["train/loss"].is_number(),
        "training keys kept: {summary}"
    );
    for side in ["base", "tuned"] {
        let score = summary[format!("eval/{side}/score")].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
        assert!(summary[format!("eval/{side}/ci95")].is_array());
        assert!(summary[format!("eval/{side}/nll")].is_number());
    }
    assert_eq!(summary["eval/n"], 3);
    let table = &summary["eval/samples"];
    assert_eq!(table["_type"], "table-file");
    assert_eq!((&table["nrows"], &table["ncols"]), (&json!(3), &json!(7)));
    let uploaded: Value =
        serde_json::from_slice(&server.upload(table["path"].as_str().unwrap()).unwrap()).unwrap();
    let samples: Vec<Value> = std::fs::read_to_string(run.join("eval/samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(uploaded["columns"][1], "prompt");
    for (row, sample) in uploaded["data"].as_array().unwrap().iter().zip(&samples) {
        assert_eq!(row[1], sample["prompt"]);
        assert_eq!(row[4], sample["tuned"]);
    }
    let last = file_streams(eval_requests).pop().unwrap();
    assert_eq!(last["complete"], true);
    assert_eq!(last["uploaded"], json!([table["path"]]));
    assert_eq!(
        server.history("team", "proj", &id).len(),
        6,
        "eval adds no history rows"
    );
}

/// A run killed after a checkpoint and resumed continues the same W&B run: the history ends
/// up with every step once, at contiguous offsets, whatever the kill cut off.
#[test]
fn a_killed_run_resumed_continues_its_wandb_history() {
    let s = setup();
    let server = FakeWandb::start();
    let run = s.tmp.path().join("runs/killed");
    let mut args = train_args(&s.model, &s.data, run.to_str().unwrap(), "300");
    args.extend(["--wandb", "proj"]);
    let mut child = command(&args, s.tmp.path(), Some(&server), true)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let latest = run.join("checkpoints/latest");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !latest.exists() {
        assert!(Instant::now() < deadline, "no checkpoint within 2 minutes");
        assert!(child.try_wait().unwrap().is_none(), "bora exited early");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !run.join("adapter").exists(),
        "the run finished before the kill"
    );

    let out = bora_env(
        &["train", "--resume", run.to_str().unwrap()],
        s.tmp.path(),
        Some(&server),
        true,
    );
    assert_ok(&out);
    let requests = server.requests();
    let names: Vec<Value> = requests
        .iter()
        .filter(|r| operation(r).as_deref() == Some("UpsertBucket"))
        .map(|r| r.json()["variables"]["name"].clone())
        .collect();
    assert_eq!(names.len(), 2);
    assert_eq!(
        names[0], names[1],
        "the resumed session continues the same run"
    );
    let id = names[0].as_str().unwrap();
    let history = server.history("default-team", "proj", id);
    assert!(
        server.offset_errors().is_empty(),
        "{:?}",
        server.offset_errors()
    );
    assert_eq!(steps(&history), (1..=300).collect::<Vec<_>>());
    assert_eq!(metrics(&run).len(), 300);
    let last = file_streams(&requests).pop().unwrap();
    assert_eq!(last["complete"], true);
}

/// W&B failing mid-run (HTTP 500, or a connection closed without an answer) costs one
/// warning: training finishes, metrics.jsonl holds every step, W&B is not called again.
#[test]
fn a_failing_server_costs_one_warning_and_no_step() {
    for failure in [Failure::Status500, Failure::Close] {
        let s = setup();
        let server = FakeWandb::start();
        server.fail_from(1, failure);
        let run = s.tmp.path().join("runs/flaky");
        let mut args = train_args(&s.model, &s.data, run.to_str().unwrap(), "6");
        args.extend(["--wandb", "proj", "--set", "train.checkpoint_every=2"]);
        let out = bora_env(&args, s.tmp.path(), Some(&server), true);
        assert_ok(&out);
        let err = stderr(&out);
        assert_eq!(
            err.matches("W&B tracking stopped").count(),
            1,
            "{failure:?}:\n{err}"
        );
        assert!(!err.contains(KEY));
        assert_eq!(
            server.requests().len(),
            2,
            "upsert, then the failed send only"
        );
        let steps: Vec<u64> = metrics(&run)
            .iter()
            .map(|m| m["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, (1..=6).collect::<Vec<_>>());
        assert!(run.join("adapter/adapter_model.safetensors").is_file());
    }
}

/// Asking for W&B without a key stops `train` and `eval` before any work, saying where a
/// key comes from.
#[test]
fn a_missing_key_stops_before_any_work() {
    let s = setup();
    let server = FakeWandb::start();
    let run = s.tmp.path().join("runs/nokey");
    let mut args = train_args(&s.model, &s.data, run.to_str().unwrap(), "2");
    args.extend(["--wandb", "proj"]);
    let out = bora_env(&args, s.tmp.path(), Some(&server), false);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("WANDB_API_KEY") && err.contains(".netrc"),
        "{err}"
    );
    assert!(!run.exists(), "nothing was created");
    assert!(server.requests().is_empty());

    assert_ok(&bora_env(
        &train_args(&s.model, &s.data, run.to_str().unwrap(), "2"),
        s.tmp.path(),
        None,
        false,
    ));
    let out = bora_env(
        &[
            "eval",
            "--run",
            run.to_str().unwrap(),
            "--data",
            &s.data,
            "--wandb",
            "proj",
        ],
        s.tmp.path(),
        Some(&server),
        false,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("WANDB_API_KEY"));
    assert!(!run.join("eval").exists(), "no evaluation ran");
}

/// Offline sends nothing and prints the command that uploads the TensorBoard files later.
#[test]
fn offline_sends_nothing_and_prints_the_sync_command() {
    let s = setup();
    let server = FakeWandb::start();
    let run = s.tmp.path().join("runs/off");
    let mut args = train_args(&s.model, &s.data, run.to_str().unwrap(), "3");
    args.extend(["--wandb", "proj/team", "--wandb-offline"]);
    let out = bora_env(&args, s.tmp.path(), Some(&server), false);
    assert_ok(&out);
    let err = stderr(&out);
    let command = format!(
        "wandb sync --sync-tensorboard -p proj -e team {}",
        run.display()
    );
    assert!(err.contains(&command), "{err}");
    assert!(server.requests().is_empty());
    let events = std::fs::read_dir(&run)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .count();
    assert_eq!(events, 1);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("[tracking]") && config.contains("wandb_offline = true"),
        "{config}"
    );
}

/// Tracking settings are checked with the rest of the config, before any work.
#[test]
fn bad_tracking_settings_are_refused() {
    let s = setup();
    let run = s.tmp.path().join("runs/bad");
    for (extra, key) in [
        (vec!["--wandb", "my project"], "tracking.wandb"),
        (vec!["--wandb", "a/b/c"], "tracking.wandb"),
        (
            vec!["--set", "tracking.wandb_offline=true"],
            "tracking.wandb_offline",
        ),
    ] {
        let mut args = train_args(&s.model, &s.data, run.to_str().unwrap(), "2");
        args.extend(extra);
        let out = bora(&args);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(key), "{key}: {}", stderr(&out));
        assert!(!run.exists());
    }
}

/// `bora push --wandb-artifact` logs an untracked run's adapter and links it to a registry
/// collection; pushing it again keeps its version; `bora export --wandb` logs the export
/// from the same W&B run.
#[test]
fn push_and_export_log_model_artifacts_in_one_lineage() {
    let s = setup();
    let server = FakeWandb::start();
    let run = s.tmp.path().join("runs/plain");
    let run_arg = run.to_str().unwrap();
    assert_ok(&bora(&train_args(&s.model, &s.data, run_arg, "2")));
    let push = [
        "push",
        "--run",
        run_arg,
        "--wandb-artifact",
        "proj/team",
        "--wandb-registry",
        "tuned",
    ];
    let out = bora_env(&push, s.tmp.path(), Some(&server), true);
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("W&B registry: linked to wandb-registry-model/tuned as v0"),
        "{err}"
    );
    let committed = server.committed();
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0].files, dir_files(&run.join("adapter")));
    assert_eq!(
        server.links()["team-org/wandb-registry-model/tuned"],
        vec![committed[0].stored.id.clone()]
    );

    let out = bora_env(&push, s.tmp.path(), Some(&server), true);
    assert_ok(&out);
    assert!(stderr(&out).contains("unchanged: W&B already has these files"));
    assert_eq!(
        server.artifacts().len(),
        1,
        "the same files keep their version"
    );

    let out = bora_env(
        &[
            "export",
            "--run",
            run_arg,
            "--format",
            "merged",
            "--no-verify",
            "--wandb",
            "proj/team",
        ],
        s.tmp.path(),
        Some(&server),
        true,
    );
    assert_ok(&out);
    let committed = server.committed();
    assert_eq!(committed.len(), 2);
    let export = &committed[1];
    assert_eq!(export.stored.collection, "plain-merged");
    assert_eq!(export.stored.metadata["format"], "merged");
    assert_eq!(export.stored.run, committed[0].stored.run, "same W&B run");
    assert_eq!(export.files, dir_files(&run.join("export/merged")));
    assert!(!stderr(&out).contains(KEY));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(KEY));
    assert_no_key_under(&run);
}

/// An upload that fails leaves training successful and finished on W&B, commits nothing,
/// and prints the command that logs the adapter again; that command then completes it.
#[test]
fn a_failed_adapter_upload_prints_how_to_retry() {
    let s = setup();
    let server = FakeWandb::start();
    server.fail_next("PUT /storage/", Failure::Unauthorized, 1);
    let run = s.tmp.path().join("runs/retry");
    let mut args = train_args(&s.model, &s.data, run.to_str().unwrap(), "2");
    args.extend(["--wandb", "proj/team"]);
    let out = bora_env(&args, s.tmp.path(), Some(&server), true);
    assert_ok(&out);
    let err = stderr(&out);
    let retry = format!(
        "bora push --run {} --wandb-artifact proj/team",
        run.display()
    );
    assert!(err.contains("no version was committed"), "{err}");
    assert!(err.contains(&retry), "{err}");
    assert!(!err.contains(KEY));
    assert!(server.committed().is_empty());
    let last = file_streams(&server.requests()).pop().unwrap();
    assert_eq!(
        (&last["complete"], &last["exitcode"]),
        (&json!(true), &json!(0))
    );

    let retry_args: Vec<&str> = retry.split(' ').skip(1).collect();
    let out = bora_env(&retry_args, s.tmp.path(), Some(&server), true);
    assert_ok(&out);
    let committed = server.committed();
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0].files, dir_files(&run.join("adapter")));
    assert_no_key_under(&run);
}
