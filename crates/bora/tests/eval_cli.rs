//! `bora eval` run as a user runs it, on the tiny Llama fixture: the `--json` object, the
//! files a run's evaluation writes, and bad inputs refused before any generation.

mod common;

use common::{assert_ok, bora, model_dir, write_chats};
use serde_json::{json, Value};

fn train(model: &str, data: &str, out: &str) {
    train_with(model, data, out, &[]);
}

fn train_with(model: &str, data: &str, out: &str, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--rank",
        "4",
        "--lr",
        "0.01",
        "--val-fraction",
        "0.2",
        "--eval-every",
        "2",
        "--seed",
        "1",
    ];
    args.extend_from_slice(extra);
    assert_ok(&bora(&args));
}

fn check_score(v: &Value) {
    let s = v["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&s), "{v}");
}

#[test]
fn eval_of_a_run_prints_one_json_object_and_writes_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("data.jsonl");
    write_chats(&data, 24);
    let run = tmp.path().join("runs/tiny");
    train(
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
    );

    let out = bora(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--metric",
        "exact",
        "--limit",
        "6",
        "--max-tokens",
        "4",
        "--json",
    ]);
    assert_ok(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 4, "{v}");
    assert_eq!(v["metric"], "exact");
    assert_eq!(v["n"], 6);
    check_score(&v["base"]);
    check_score(&v["tuned"]);

    let eval = run.join("eval");
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(eval.join("results.json")).unwrap()).unwrap();
    for key in ["metric", "n"] {
        assert_eq!(results[key], v[key]);
    }
    assert_eq!(results["base"]["score"], v["base"]["score"]);
    assert_eq!(results["tuned"]["score"], v["tuned"]["score"]);
    let samples = std::fs::read_to_string(eval.join("samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 6);
    let html = std::fs::read_to_string(eval.join("report.html")).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(eval.join("report.md").is_file());
    // Scores were also logged to the run.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 4);
    assert_eq!(last["eval/tuned/score"], v["tuned"]["score"]);
}

/// A QLoRA adapter was trained against the quantized base, so eval reloads the base quantized
/// the same way instead of refusing the run.
#[test]
fn eval_of_a_qlora_run_loads_the_base_as_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("data.jsonl");
    write_chats(&data, 24);
    let run = tmp.path().join("runs/qlora");
    train_with(
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        &["--qlora", "Q8_0"],
    );
    let out = bora(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--limit",
        "4",
        "--max-tokens",
        "4",
        "--json",
    ]);
    assert_ok(&out);
    let v: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    check_score(&v["tuned"]);
}

#[test]
fn eval_of_a_model_without_adapter_reports_the_base_only() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("data.jsonl");
    write_chats(&data, 3);
    let out_dir = tmp.path().join("out");
    let out = bora(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--metric",
        "contains",
        "--max-tokens",
        "3",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]);
    assert_ok(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n"], 3);
    check_score(&v["base"]);
    assert!(v.get("tuned").is_none());
    assert!(out_dir.join("report.html").is_file());
}

/// Refused with a message naming the problem, before "evaluating N examples" (the line
/// printed once every input is checked and generation starts).
fn assert_refused(args: &[&str], needle: &str) {
    let out = bora(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(
        !stderr.contains("evaluating"),
        "generation started: {stderr}"
    );
}

#[test]
fn bad_inputs_fail_before_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let m = model.to_str().unwrap();
    let good = tmp.path().join("good.jsonl");
    write_chats(&good, 4);
    let g = good.to_str().unwrap();

    let no_answer = tmp.path().join("no_answer.jsonl");
    std::fs::write(
        &no_answer,
        format!(
            "{}\n{}\n",
            json!({"messages": [{"role": "user", "content": "w3"}, {"role": "assistant", "content": "w4"}]}),
            json!({"messages": [{"role": "user", "content": "w3"}, {"role": "assistant", "content": "w4"}, {"role": "user", "content": "w5"}]}),
        ),
    )
    .unwrap();
    assert_refused(
        &["eval", "--model", m, "--data", no_answer.to_str().unwrap()],
        "must end with an assistant message",
    );
    assert_refused(
        &["eval", "--model", m, "--data", no_answer.to_str().unwrap()],
        "no_answer.jsonl:2",
    );
    assert_refused(
        &["eval", "--model", m, "--data", g, "--metric", "regex:(w3"],
        "does not compile",
    );
    assert_refused(
        &["eval", "--model", m, "--data", g, "--metric", "json"],
        "not JSON",
    );
    assert_refused(
        &[
            "eval",
            "--model",
            m,
            "--data",
            g,
            "--metric",
            "choice:w3,w4",
        ],
        "not one of the labels",
    );

    // An adapter trained on the llama fixture, evaluated on a model of another shape.
    let run = tmp.path().join("runs/r");
    train(m, g, run.to_str().unwrap());
    let other = model_dir(tmp.path(), "mistral_v01");
    assert_refused(
        &[
            "eval",
            "--model",
            other.to_str().unwrap(),
            "--adapter",
            run.join("adapter").to_str().unwrap(),
            "--data",
            g,
        ],
        "cannot be used with the base model",
    );
}
