//! `bora data synth` and `bora eval --metric judge` as a user runs them: against a loopback
//! Mistral API (`bora-hub/tests/mistral_api`, answers in the shape the official client
//! accepts), and against `bora serve` on the tiny Llama fixture as a real teacher and judge.

mod common;
#[path = "../../bora-hub/tests/mistral_api/mod.rs"]
mod mistral_api;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, bora, model_dir, word, write_chats};
use mistral_api::{FakeMistral, API_KEY};
use serde_json::{json, Value};

const KEY_ENV: &str = "BORA_TEST_TEACHER_KEY";

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bora"));
    c.args(args)
        .env(KEY_ENV, API_KEY)
        .env_remove("RUST_BACKTRACE");
    c
}

fn run(args: &[&str]) -> Output {
    command(args).output().expect("bora runs")
}

fn write_inputs(dir: &Path) -> (String, String) {
    let task = dir.join("task.md");
    std::fs::write(&task, "Extract the quantity of an order as JSON.\n").unwrap();
    let seeds = dir.join("seeds.jsonl");
    std::fs::write(
        &seeds,
        concat!(
            r#"{"prompt": "Order: Ana wants 2 lamps.", "completion": "{\"qty\":2}"}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "Order: Bo wants 5 desks."}, {"role": "assistant", "content": "{\"qty\":5}"}]}"#,
            "\n"
        ),
    )
    .unwrap();
    (
        task.to_str().unwrap().to_owned(),
        seeds.to_str().unwrap().to_owned(),
    )
}

/// A teacher that takes its time and answers from the request's per-slot seed, so a
/// question always gets the same answer (a recorded teacher).
fn slow_teacher() -> mistral_api::Answerer {
    Box::new(|body: &Value| {
        std::thread::sleep(Duration::from_millis(60));
        let s = body["seed"].as_u64().unwrap();
        if s.is_multiple_of(5) {
            return "not json".into();
        }
        let k = s % 500;
        json!({"input": format!("Order: client {k} wants {k} chairs."), "output": format!("{{\"qty\":{k}}}")})
            .to_string()
    })
}

fn synth_args<'a>(task: &'a str, seeds: &'a str, url: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "data",
        "synth",
        "--task",
        task,
        "--examples",
        seeds,
        "--n",
        "20",
        "--out",
        out,
        "--base-url",
        url,
        "--api-key-env",
        KEY_ENV,
        "--teacher",
        "mistral-small-latest",
        "--seed",
        "5",
        "--concurrency",
        "3",
        "--price",
        "0.1,0.3",
    ]
}

fn splits(dir: &Path) -> Vec<String> {
    ["train", "val", "test"]
        .iter()
        .map(|s| std::fs::read_to_string(dir.join(format!("{s}.jsonl"))).unwrap())
        .collect()
}

#[test]
fn a_synth_killed_and_resumed_writes_the_uninterrupted_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let (task, seeds) = write_inputs(tmp.path());
    let server = FakeMistral::start(slow_teacher());
    let whole = tmp.path().join("whole");
    let out = run(&synth_args(
        &task,
        &seeds,
        &server.url,
        whole.to_str().unwrap(),
    ));
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("kept 20 of 20"), "{stdout}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("synth.json")).unwrap()).unwrap();
    assert_eq!(summary["kept"], 20);
    assert!(
        summary["dropped"]["not_json"].as_u64().unwrap() > 0,
        "{summary}"
    );

    let parts = tmp.path().join("parts");
    let log = parts.join("synth.log.jsonl");
    let mut child = command(&synth_args(
        &task,
        &seeds,
        &server.url,
        parts.to_str().unwrap(),
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
        if lines >= 8 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the job never wrote 8 lines"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!parts.join("train.jsonl").exists(), "killed before the end");
    let answered_before = std::fs::read_to_string(&log).unwrap().lines().count() - 1;

    let requests_before = server.requests().len();
    assert_ok(&run(&synth_args(
        &task,
        &seeds,
        &server.url,
        parts.to_str().unwrap(),
    )));
    assert_eq!(splits(&parts), splits(&whole));
    // Nothing asked twice: every slot is in the log once, and the rerun asked only for the
    // slots the log lacked (a request in flight at the kill is asked again).
    let text = std::fs::read_to_string(&log).unwrap();
    let slots: Vec<u64> = text
        .lines()
        .skip(1)
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["slot"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let unique: std::collections::HashSet<_> = slots.iter().collect();
    assert_eq!(unique.len(), slots.len());
    assert_eq!(
        server.requests().len() - requests_before,
        slots.len() - answered_before
    );
    assert!(!text.contains(API_KEY));
}

#[test]
fn synth_refuses_a_missing_key_for_mistral_and_a_budget_without_a_price() {
    let tmp = tempfile::tempdir().unwrap();
    let (task, seeds) = write_inputs(tmp.path());
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    let r = command(&[
        "data",
        "synth",
        "--task",
        &task,
        "--examples",
        &seeds,
        "--out",
        o,
    ])
    .env_remove("MISTRAL_API_KEY")
    .output()
    .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("set MISTRAL_API_KEY"));
    let r = bora(&[
        "data",
        "synth",
        "--task",
        &task,
        "--examples",
        &seeds,
        "--out",
        o,
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--teacher",
        "my-model",
        "--max-cost",
        "1",
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--price IN,OUT"));
}

fn train_run(tmp: &Path) -> (String, String, String) {
    let model = model_dir(tmp, "llama");
    let data = tmp.join("data.jsonl");
    write_chats(&data, 24);
    let run_dir = tmp.join("runs/tiny");
    let m = model.to_str().unwrap().to_owned();
    assert_ok(&run(&[
        "train",
        "--model",
        &m,
        "--data",
        data.to_str().unwrap(),
        "--out",
        run_dir.to_str().unwrap(),
        "--max-steps",
        "2",
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
    ]));
    (
        m,
        data.to_str().unwrap().to_owned(),
        run_dir.to_str().unwrap().to_owned(),
    )
}

#[test]
fn the_judge_grades_a_run_in_both_orders_and_a_rerun_reads_its_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, data, run_dir) = train_run(tmp.path());
    // A judge that always prefers the first answer it is shown.
    let server = FakeMistral::start(Box::new(|_| {
        json!({"reason": "the first is better", "winner": "A"}).to_string()
    }));
    let args = [
        "eval",
        "--run",
        &run_dir,
        "--data",
        &data,
        "--metric",
        "judge:mistral-small-latest",
        "--limit",
        "4",
        "--max-tokens",
        "4",
        "--judge-base-url",
        &server.url,
        "--judge-api-key-env",
        KEY_ENV,
        "--judge-mode",
        "score",
    ];
    assert_ok(&run(&args));
    // Pairwise in two orders (the second is the first again, from the cache, when both
    // sides answered alike), then one score per side; the "A" verdicts are not scores, so
    // each score request is asked twice and ends invalid, uncached.
    let results_of = || -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(Path::new(&run_dir).join("eval/results.json")).unwrap(),
        )
        .unwrap()
    };
    let j = results_of()["judge"].clone();
    let (requests, cached) = (
        j["requests"].as_u64().unwrap(),
        j["cached"].as_u64().unwrap(),
    );
    assert_eq!(server.requests().len() as u64, requests);
    assert_eq!(requests + cached, 4 * 2 + 4 * 2 * 2, "{j}");
    let body = server.requests()[0].json();
    assert_eq!(body["model"], "mistral-small-latest");
    assert_eq!(body["response_format"]["type"], "json_object");
    assert_eq!(body["temperature"], 0.0);
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&run_dir).join("eval/results.json")).unwrap(),
    )
    .unwrap();
    let j = &results["judge"];
    assert_eq!(j["tie"]["count"], 4, "{j}");
    assert_eq!(
        (j["win"]["count"].as_u64(), j["loss"]["count"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(results["metric"], "exact");
    let md = std::fs::read_to_string(Path::new(&run_dir).join("eval/report.md")).unwrap();
    assert!(
        md.contains("## Judge") && md.contains("mistral-small-latest"),
        "{md}"
    );
    let html = std::fs::read_to_string(Path::new(&run_dir).join("eval/report.html")).unwrap();
    assert!(html.contains("<h2>Judge</h2>"));

    // The pairwise verdicts are cached; only the invalid scores are asked again.
    let before = server.requests().len();
    assert_ok(&run(&args));
    assert_eq!(server.requests().len() - before, 4 * 2 * 2);
    assert_eq!(results_of()["judge"]["cached"], 4 * 2);
}

/// Starts `bora serve` on a free port; returns the child and its base URL.
fn serve(model: &str) -> (std::process::Child, String) {
    let mut child = command(&[
        "serve",
        "--model",
        model,
        "--name",
        "teacher",
        "--port",
        "0",
        "--api-key",
        API_KEY,
    ])
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim()
        .to_owned();
    (child, format!("http://{addr}/v1"))
}

#[test]
fn bora_serve_is_a_teacher_and_a_judge() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, run_dir) = train_run(tmp.path());
    let (mut server, url) = serve(&model);
    let (task, seeds) = write_inputs(tmp.path());
    let inputs = tmp.path().join("inputs.txt");
    let words: Vec<String> = (0..6)
        .map(|i| format!("{} {}", word(3 + i), word(20 + i)))
        .collect();
    std::fs::write(&inputs, words.join("\n")).unwrap();
    let out = tmp.path().join("synth");
    let r = run(&[
        "data",
        "synth",
        "--task",
        &task,
        "--examples",
        &seeds,
        "--inputs",
        inputs.to_str().unwrap(),
        "--n",
        "6",
        "--out",
        out.to_str().unwrap(),
        "--base-url",
        &url,
        "--api-key-env",
        KEY_ENV,
        "--teacher",
        "teacher",
        "--max-tokens",
        "6",
        "--val",
        "0",
        "--test",
        "0",
        "--json",
    ]);
    let judged = run(&[
        "eval",
        "--run",
        &run_dir,
        "--data",
        &data,
        "--metric",
        "judge:teacher",
        "--limit",
        "3",
        "--max-tokens",
        "4",
        "--judge-base-url",
        &url,
        "--judge-api-key-env",
        KEY_ENV,
        "--judge-max-tokens",
        "16",
    ]);
    server.kill().unwrap();
    server.wait().unwrap();
    assert_ok(&r);
    let s: Value = serde_json::from_slice(&r.stdout).unwrap();
    // Each input was answered once by the real model; answers cut at 6 tokens are dropped
    // as truncated, the others kept, every one counted.
    let dropped: u64 = s["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(s["slots_answered"], 6);
    assert_eq!(s["kept"].as_u64().unwrap() + dropped, 6, "{s}");
    assert!(s["tokens"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        std::fs::read_to_string(out.join("train.jsonl"))
            .unwrap()
            .lines()
            .count() as u64,
        s["kept"].as_u64().unwrap()
    );
    // The tiny model is no judge (its vocabulary has no `{`): every verdict is read, found
    // unreadable, asked again once and counted invalid, never guessed.
    assert_ok(&judged);
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&run_dir).join("eval/results.json")).unwrap(),
    )
    .unwrap();
    let j = &results["judge"];
    assert_eq!(j["n"], 3);
    assert_eq!(
        (j["valid"].as_u64(), j["invalid"].as_u64()),
        (Some(0), Some(3)),
        "{j}"
    );
    assert_eq!(j["requests"], 3 * 2 * 2, "{j}");
}
