//! `bora eval --weave` and `bora serve --weave` on the tiny Llama fixture, against a local
//! stand-in for W&B's API and the Weave trace server (`bora-hub/tests/weave_server`).

mod common;
#[path = "../../bora-hub/tests/weave_server/mod.rs"]
mod weave_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, bora, model_dir, write_chats};
use serde_json::{json, Value};
use weave_server::{Failure, FakeWeave, ENTITY};

const KEY: &str = "weave-cli-key-0123456789abcdef";

/// bora with a clean W&B environment pointed at `server`: `HOME` without a netrc, the key
/// only when asked for.
fn command(args: &[&str], home: &Path, server: &FakeWeave, key: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("WANDB_API_KEY")
        .env_remove("WANDB_ENTITY")
        .env_remove("WF_TRACE_SERVER_URL")
        .env_remove("NETRC")
        .env("WANDB_BASE_URL", &server.url)
        .env("HOME", home);
    if key {
        cmd.env("WANDB_API_KEY", KEY);
    }
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tiny trained run and its test file.
fn trained_run(tmp: &Path, server: &FakeWeave) -> (String, String) {
    let model = model_dir(tmp, "llama");
    let data = tmp.join("data.jsonl");
    write_chats(&data, 16);
    let run = tmp.join("runs/tiny");
    let out = command(
        &[
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--rank",
            "4",
            "--lr",
            "0.01",
            "--seed",
            "1",
        ],
        tmp,
        server,
        false,
    )
    .output()
    .unwrap();
    assert_ok(&out);
    (
        run.to_str().unwrap().to_owned(),
        data.to_str().unwrap().to_owned(),
    )
}

fn eval_args<'a>(run: &'a str, data: &'a str) -> Vec<&'a str> {
    vec![
        "eval",
        "--run",
        run,
        "--data",
        data,
        "--limit",
        "4",
        "--max-tokens",
        "3",
        "--weave",
        "bora-evals/bora-team",
    ]
}

/// Every file under `dir`, read as bytes.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
}

fn op(call: &serde_json::Map<String, Value>) -> String {
    let op = call["op_name"].as_str().unwrap();
    op.split("/op/")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned()
}

/// The evaluation rebuilt from what the trace server received matches the run's own
/// `eval/samples.jsonl` row by row: prompts, answers, verdicts, token counts.
#[test]
fn eval_records_base_and_tuned_as_two_weave_evaluations() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FakeWeave::start();
    let (run, data) = trained_run(tmp.path(), &server);
    let out = command(&eval_args(&run, &data), tmp.path(), &server, true)
        .output()
        .unwrap();
    assert_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("in project {ENTITY}/bora-evals")),
        "{err}"
    );

    let samples: Vec<Value> = std::fs::read_to_string(Path::new(&run).join("eval/samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 4);
    let calls = server.state().calls.clone();
    let mut roots: Vec<_> = calls
        .values()
        .filter(|c| op(c) == "Evaluation.evaluate")
        .cloned()
        .collect();
    roots.sort_by_key(|c| c["started_at"].as_str().unwrap().to_owned());
    assert_eq!(roots.len(), 2);
    assert_eq!(
        roots[0]["inputs"]["self"], roots[1]["inputs"]["self"],
        "one Evaluation"
    );
    for (root, side) in roots.iter().zip(["base", "tuned"]) {
        let (model, _) = server
            .resolve(root["inputs"]["model"].as_str().unwrap())
            .unwrap();
        assert_eq!(model["name"], if side == "base" { "base" } else { "tiny" });
        let mut rows: Vec<_> = calls
            .values()
            .filter(|c| c["parent_id"] == root["id"] && op(c) == "Evaluation.predict_and_score")
            .cloned()
            .collect();
        rows.sort_by_key(|c| c["started_at"].as_str().unwrap().to_owned());
        assert_eq!(rows.len(), samples.len());
        let mut correct = 0;
        for (row, sample) in rows.iter().zip(&samples) {
            let example = server
                .row(row["inputs"]["example"].as_str().unwrap())
                .unwrap();
            assert_eq!(example["prompt"], sample["prompt"]);
            assert_eq!(example["expected"], sample["expected"]);
            let output = &row["output"];
            assert_eq!(output["output"]["answer"], sample[side]);
            let right = sample[format!("{side}_score")].as_f64().unwrap() >= 0.5;
            correct += usize::from(right);
            assert_eq!(output["scores"]["exact"]["correct"], right);
            let usage = &sample[format!("{side}_usage")];
            assert_eq!(
                output["output"]["usage"]["prompt_tokens"],
                usage["prompt_tokens"]
            );
            assert_eq!(
                output["output"]["usage"]["completion_tokens"],
                usage["completion_tokens"]
            );
            assert!(usage["completion_tokens"].as_u64().unwrap() >= 1);
        }
        assert_eq!(root["output"]["exact"]["correct"]["true_count"], correct);
    }

    let mut written = Vec::new();
    files(tmp.path(), &mut written);
    for (path, bytes) in written {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(KEY),
            "{path} holds the key"
        );
    }
    assert!(!err.contains(KEY) && !String::from_utf8_lossy(&out.stdout).contains(KEY));
    for request in server.requests() {
        assert!(
            !String::from_utf8_lossy(&request.body).contains(KEY),
            "{} carries the key in its body",
            request.target
        );
    }
}

#[test]
fn a_rejected_key_fails_the_command_after_the_evaluation_is_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FakeWeave::start();
    let (run, data) = trained_run(tmp.path(), &server);
    // The set-up (GraphQL, server_info) passes; the first upload is refused.
    server.fail_from(1, Failure::Status(401));
    let out = command(&eval_args(&run, &data), tmp.path(), &server, true)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("401") && err.contains("evaluation itself is saved"),
        "{err}"
    );
    assert!(!err.contains(KEY));
    assert!(Path::new(&run).join("eval/results.json").is_file());
}

#[test]
fn a_missing_key_stops_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FakeWeave::start();
    let (run, data) = trained_run(tmp.path(), &server);
    let out = command(&eval_args(&run, &data), tmp.path(), &server, false)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("WANDB_API_KEY"), "{}", stderr(&out));
    assert!(!Path::new(&run).join("eval").exists());
    assert!(server.requests().is_empty());
}

#[test]
fn a_bad_weave_target_is_refused() {
    let out = bora(&[
        "eval",
        "--model",
        "m.gguf",
        "--data",
        "d.jsonl",
        "--weave",
        "my project",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--weave \"my project\" is not PROJECT or PROJECT/ENTITY"),
        "{err}"
    );
}

/// A POST of `body` to `path`; the response body.
/// The body of the answer to `POST path` with a JSON `body`, read to the end.
fn post_raw(addr: &str, path: &str, body: &Value) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn post(addr: &str, path: &str, body: &Value) -> Value {
    serde_json::from_str(&post_raw(addr, path, body)).unwrap()
}

/// The `data:` chunks of a streamed answer, up to `[DONE]`.
fn post_stream(addr: &str, path: &str, body: &Value) -> Vec<Value> {
    post_raw(addr, path, body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .take_while(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn serve_traces_each_answered_request_as_a_weave_call() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FakeWeave::start();
    let model = model_dir(tmp.path(), "llama");
    let mut child = command(
        &[
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--port",
            "0",
            "--weave",
            "bora-evals/bora-team",
        ],
        tmp.path(),
        &server,
        true,
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("bora serve prints its address")
            .unwrap();
        if let Some(at) = line.split("on http://").nth(1) {
            break at.trim().to_owned();
        }
    };
    let mut answers = Vec::new();
    for prompt in ["a b c", "d e f"] {
        let response = post(
            &addr,
            "/v1/completions",
            &json!({"model": "llama", "prompt": prompt, "max_tokens": 3}),
        );
        answers.push(response);
    }
    // A streamed answer is traced with the response its chunks add up to.
    let chunks = post_stream(
        &addr,
        "/v1/completions",
        &json!({"model": "llama", "prompt": "g h", "max_tokens": 3, "stream": true}),
    );
    let streamed_text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or_default())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let calls = loop {
        let calls: Vec<_> = server.state().calls.values().cloned().collect();
        if calls.len() >= 3 || Instant::now() > deadline {
            break calls;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(calls.len(), 3);
    let streamed = calls
        .iter()
        .find(|c| c["output"]["id"] == chunks[0]["id"])
        .expect("the streamed answer traced");
    assert_eq!(
        streamed["output"]["choices"][0]["text"],
        streamed_text.as_str()
    );
    assert_eq!(streamed["inputs"]["stream"], true);
    for call in calls
        .iter()
        .filter(|c| c["output"]["id"] != chunks[0]["id"])
    {
        assert_eq!(op(call), "bora.serve.completion");
        let answer = answers
            .iter()
            .find(|a| a["id"] == call["output"]["id"])
            .expect("the response traced as sent");
        assert_eq!(&call["output"], answer);
        let usage = &call["summary"]["usage"]["llama"];
        assert_eq!(
            usage["completion_tokens"],
            answer["usage"]["completion_tokens"]
        );
        assert_eq!(usage["requests"], 1);
        assert!(call["inputs"]["prompt"].is_string());
    }
}
