//! `bora eval --weave` and `bora serve --weave` on the tiny Llama fixture, against a local
//! stand-in for W&B's API and the Weave trace server (`bora-hub/tests/weave_server`), with
//! W&B's artifact API (`bora-hub/tests/wandb_server`) for a tracked run and a loopback
//! Mistral API (`bora-hub/tests/mistral_api`) as the judge.
// Each of the three stand-ins includes the shared HTTP reader (`http_wire`) privately.
#![allow(clippy::duplicate_mod)]

mod common;
#[path = "../../bora-hub/tests/mistral_api/mod.rs"]
mod mistral_api;
#[path = "../../bora-hub/tests/wandb_server/mod.rs"]
mod wandb_server;
#[path = "../../bora-hub/tests/weave_server/mod.rs"]
mod weave_server;

use std::io::{BufRead, BufReader, Lines, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, bora, model_dir, write_chats};
use serde_json::{json, Value};
use wandb_server::FakeWandb;
use weave_server::{Failure, FakeWeave, Request, ENTITY};

const KEY: &str = "weave-cli-key-0123456789abcdef";
/// The judge's API key, in the environment variable bora is told to read it from.
const JUDGE_KEY_ENV: &str = "BORA_TEST_JUDGE_KEY";
const JUDGE_KEY: &str = mistral_api::API_KEY;

/// bora with a clean W&B environment pointed at `server`: `HOME` without a netrc, the key
/// only when asked for.
fn command(args: &[&str], home: &Path, server: &FakeWeave, key: bool) -> Command {
    command_at(args, home, &server.url, key)
}

/// [`command`] with W&B's API at `base_url`.
fn command_at(args: &[&str], home: &Path, base_url: &str, key: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("WANDB_API_KEY")
        .env_remove("WANDB_ENTITY")
        .env_remove("WANDB_RUN_ID")
        .env_remove("WF_TRACE_SERVER_URL")
        .env_remove("NETRC")
        .env(JUDGE_KEY_ENV, JUDGE_KEY)
        .env("WANDB_BASE_URL", base_url)
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
    trained_run_at(tmp, &server.url, None)
}

/// A tiny trained run and its test file, tracked in the W&B project `wandb` (PROJECT/ENTITY)
/// of the W&B API at `base_url` when given.
fn trained_run_at(tmp: &Path, base_url: &str, wandb: Option<&str>) -> (String, String) {
    let model = model_dir(tmp, "llama");
    let data = tmp.join("data.jsonl");
    write_chats(&data, 16);
    let run = tmp.join("runs/tiny");
    let mut args = vec![
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
    ];
    if let Some(target) = wandb {
        args.extend(["--wandb", target]);
    }
    let out = command_at(&args, tmp, base_url, wandb.is_some())
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

type Call = serde_json::Map<String, Value>;

/// The `Evaluation.evaluate` calls the trace server received, in the order they started
/// (base first), each with its `Evaluation.predict_and_score` children in row order.
fn evaluations(server: &FakeWeave) -> Vec<(Call, Vec<Call>)> {
    let calls = server.state().calls.clone();
    let by_start = |list: &mut Vec<Call>| {
        list.sort_by_key(|c| c["started_at"].as_str().unwrap().to_owned());
    };
    let mut roots: Vec<Call> = calls
        .values()
        .filter(|c| op(c) == "Evaluation.evaluate")
        .cloned()
        .collect();
    by_start(&mut roots);
    roots
        .into_iter()
        .map(|root| {
            let mut rows: Vec<Call> = calls
                .values()
                .filter(|c| c["parent_id"] == root["id"] && op(c) == "Evaluation.predict_and_score")
                .cloned()
                .collect();
            by_start(&mut rows);
            (root, rows)
        })
        .collect()
}

/// The model object an evaluate call evaluated.
fn model_object(server: &FakeWeave, root: &Call) -> Value {
    server
        .resolve(root["inputs"]["model"].as_str().unwrap())
        .unwrap()
        .0
}

/// `RUN/eval/samples.jsonl`, one object per row.
fn samples_of(run: &str) -> Vec<Value> {
    std::fs::read_to_string(Path::new(run).join("eval/samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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

    let samples = samples_of(&run);
    assert_eq!(samples.len(), 4);
    let evaluations = evaluations(&server);
    assert_eq!(evaluations.len(), 2);
    assert_eq!(
        evaluations[0].0["inputs"]["self"], evaluations[1].0["inputs"]["self"],
        "one Evaluation"
    );
    for ((root, rows), side) in evaluations.iter().zip(["base", "tuned"]) {
        let model = model_object(&server, root);
        assert_eq!(model["name"], if side == "base" { "base" } else { "tiny" });
        // An untracked run has no W&B artifact to refer to.
        assert_eq!(model["artifact"], Value::Null);
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

    assert_no_secrets(tmp.path(), &[&out], &weave_bodies(&server));
}

/// The target and body of each request a stand-in server received.
fn bodies<R>(requests: Vec<R>, parts: impl Fn(R) -> (String, Vec<u8>)) -> Vec<(String, Vec<u8>)> {
    requests.into_iter().map(parts).collect()
}

fn weave_bodies(server: &FakeWeave) -> Vec<(String, Vec<u8>)> {
    bodies(server.requests(), |r: Request| (r.target, r.body))
}

/// Neither the W&B key nor the judge's key is in any file under `root`, in the commands'
/// output, or in the body of a request a stand-in server received (`(target, body)`; keys
/// go only into `Authorization` headers).
fn assert_no_secrets(root: &Path, outputs: &[&Output], requests: &[(String, Vec<u8>)]) {
    let mut written = Vec::new();
    files(root, &mut written);
    for secret in [KEY, JUDGE_KEY] {
        for (path, bytes) in &written {
            assert!(
                !String::from_utf8_lossy(bytes).contains(secret),
                "{path} holds a key"
            );
        }
        for out in outputs {
            assert!(!stderr(out).contains(secret) && !stdout(out).contains(secret));
        }
        for (target, body) in requests {
            assert!(
                !String::from_utf8_lossy(body).contains(secret),
                "{target} carries a key in its body"
            );
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// `bora serve --weave` on the tiny Llama in `home`, tracing to `weave`: the child, its
/// stderr lines after the address, and the address.
fn serve_traced(home: &Path, weave: &FakeWeave) -> (Child, Lines<BufReader<ChildStderr>>, String) {
    let model = model_dir(home, "llama");
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
        home,
        weave,
        true,
    )
    .stdout(Stdio::null())
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
    (child, lines, addr)
}

#[test]
fn serve_traces_each_answered_request_as_a_weave_call() {
    let tmp = tempfile::tempdir().unwrap();
    let server = FakeWeave::start();
    let (mut child, _stderr_kept_open, addr) = serve_traced(tmp.path(), &server);
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

/// A run trained with W&B tracking logs its adapter as an artifact; `bora eval --weave` then
/// gives the tuned model object a ref to exactly that version, in the `wandb-artifact`
/// form Weave refers to W&B artifacts by, and the base model none.
#[test]
fn a_tracked_runs_tuned_model_refers_to_its_wandb_artifact_version() {
    let tmp = tempfile::tempdir().unwrap();
    let wandb = FakeWandb::start();
    let (run, data) = trained_run_at(tmp.path(), &wandb.url, Some("proj/team"));
    let committed = wandb.committed();
    assert_eq!(committed.len(), 1);
    let adapter = &committed[0].stored;
    assert_eq!(adapter.version, Some(0));

    let weave = FakeWeave::start();
    let out = command(&eval_args(&run, &data), tmp.path(), &weave, true)
        .output()
        .unwrap();
    assert_ok(&out);
    let evaluations = evaluations(&weave);
    assert_eq!(evaluations.len(), 2);
    let base = model_object(&weave, &evaluations[0].0);
    let tuned = model_object(&weave, &evaluations[1].0);
    assert_eq!(base["artifact"], Value::Null);
    assert_eq!(
        tuned["artifact"],
        format!(
            "wandb-artifact:///{}/{}/{}:v{}",
            adapter.entity,
            adapter.project,
            adapter.collection,
            adapter.version.unwrap()
        )
    );
    assert_eq!(
        tuned["artifact"],
        "wandb-artifact:///team/proj/tiny-adapter:v0"
    );
    let mut requests = weave_bodies(&weave);
    requests.extend(bodies(wandb.requests(), |r: wandb_server::Request| {
        (r.target, r.body)
    }));
    assert_no_secrets(tmp.path(), &[&out], &requests);
}

/// What the judge stand-in decides, from the text of its request: the first test row's
/// verdicts are unreadable (prose, twice); the second row's judge always picks the answer
/// shown first; every other pair goes to the longer answer (a tie when as long), and each
/// answer scores 1 + its length modulo 10.
fn judge_reply(user: &str) -> String {
    let section = |name: &str| {
        user.split(&format!("# {name}\n\n"))
            .nth(1)
            .map(|s| s.split("\n\n# ").next().unwrap().to_owned())
    };
    let prompt = section("Prompt").unwrap();
    let words: Vec<&str> = prompt.split_whitespace().collect();
    if words.contains(&"w3") {
        return "I prefer the first answer.".into();
    }
    match (section("Answer A"), section("Answer B"), section("Answer")) {
        (Some(_), Some(_), _) if words.contains(&"w6") => {
            json!({"reason": "first shown", "winner": "A"}).to_string()
        }
        (Some(a), Some(b), _) => {
            let winner = match a.len().cmp(&b.len()) {
                std::cmp::Ordering::Greater => "A",
                std::cmp::Ordering::Less => "B",
                std::cmp::Ordering::Equal => "tie",
            };
            json!({"reason": "the longer one", "winner": winner}).to_string()
        }
        (_, _, Some(answer)) => {
            json!({"reason": "graded", "score": 1 + answer.len() % 10}).to_string()
        }
        _ => panic!("not a judge request: {user}"),
    }
}

/// The score Weave must show for `side` (`base` or `tuned`) on `sample`, from the judge
/// stand-in's rules and the row's two answers.
fn expected_judge_score(sample: &Value, side: &str) -> Value {
    let words: Vec<&str> = sample["prompt"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .collect();
    let (base, tuned) = (
        sample["base"].as_str().unwrap(),
        sample["tuned"].as_str().unwrap(),
    );
    let mine = if side == "tuned" { tuned } else { base };
    if words.contains(&"w3") {
        return json!({"win": null, "tie": null, "loss": null, "valid": false,
                      "winner": {"base_first": null, "tuned_first": null}, "reasons": []});
    }
    // The better answer with base shown first, then with tuned shown first.
    let (base_first, tuned_first) = if words.contains(&"w6") {
        ("base", "tuned")
    } else {
        let longer = match base.len().cmp(&tuned.len()) {
            std::cmp::Ordering::Greater => "base",
            std::cmp::Ordering::Less => "tuned",
            std::cmp::Ordering::Equal => "tie",
        };
        (longer, longer)
    };
    let points: f64 = [base_first, tuned_first]
        .iter()
        .map(|w| match *w {
            w if w == side => 1.0,
            "tie" => 0.5,
            _ => 0.0,
        })
        .sum();
    let reasons = if words.contains(&"w6") {
        json!(["first shown", "first shown"])
    } else {
        json!(["the longer one", "the longer one"])
    };
    json!({
        "win": points > 1.0, "tie": points == 1.0, "loss": points < 1.0, "valid": true,
        "winner": {"base_first": base_first, "tuned_first": tuned_first},
        "reasons": reasons, "score": 1 + mine.len() % 10,
    })
}

/// With `--metric judge`, the scorer in Weave is the judge (its model, rubric and mode) and
/// each row's score is the judge's verdict on that row from the model's side, in both
/// orders, with the 1–10 scores; the summary counts wins over the valid rows.
#[test]
fn with_the_judge_each_rows_weave_score_is_the_judges_verdict() {
    let tmp = tempfile::tempdir().unwrap();
    let weave = FakeWeave::start();
    let (run, data) = trained_run(tmp.path(), &weave);
    let judge = mistral_api::FakeMistral::start(Box::new(|body: &Value| {
        judge_reply(body["messages"][1]["content"].as_str().unwrap())
    }));
    let rubric = tmp.path().join("rubric.md");
    std::fs::write(&rubric, "The answer that reverses the words wins.\n").unwrap();
    let mut args = eval_args(&run, &data);
    args.extend([
        "--metric",
        "judge:mistral-small-latest",
        "--judge-mode",
        "score",
        "--judge-base-url",
        judge.url.as_str(),
        "--judge-api-key-env",
        JUDGE_KEY_ENV,
        "--rubric",
        rubric.to_str().unwrap(),
    ]);
    let out = command(&args, tmp.path(), &weave, true).output().unwrap();
    assert_ok(&out);

    let samples = samples_of(&run);
    assert_eq!(samples.len(), 4);
    let evaluations = evaluations(&weave);
    assert_eq!(evaluations.len(), 2);
    let key = "judge-mistral-small-latest";
    let (scorer, _) = weave
        .resolve(evaluations[0].0["inputs"]["self"].as_str().unwrap())
        .and_then(|(evaluation, _)| weave.resolve(evaluation["scorers"][0].as_str()?))
        .unwrap();
    assert_eq!(scorer["_class_name"], "BoraJudge");
    assert_eq!(scorer["name"], key);
    assert_eq!(scorer["judge"], "mistral-small-latest");
    assert_eq!(
        scorer["rubric"],
        "The answer that reverses the words wins.\n"
    );
    assert_eq!(scorer["mode"], "pairwise+score");
    for ((root, rows), side) in evaluations.iter().zip(["base", "tuned"]) {
        assert_eq!(rows.len(), samples.len());
        let mut wins = 0;
        for (row, sample) in rows.iter().zip(&samples) {
            let example = weave
                .row(row["inputs"]["example"].as_str().unwrap())
                .unwrap();
            assert_eq!(example["prompt"], sample["prompt"]);
            let expected = expected_judge_score(sample, side);
            assert_eq!(row["output"]["scores"][key], expected, "{side}: {sample}");
            wins += usize::from(expected["win"] == true);
        }
        let summary = &root["output"][key];
        assert_eq!(summary["win"]["true_count"], wins, "{summary}");
        // The unreadable row is left out of the fractions, as bora leaves it out of its rates.
        assert_eq!(summary["valid"]["true_count"], 3);
    }
    assert_eq!(samples[0]["judge"]["outcome"], "invalid");
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&run).join("eval/results.json")).unwrap(),
    )
    .unwrap();
    let tuned_wins = evaluations[1].0["output"][key]["win"]["true_count"].clone();
    assert_eq!(results["judge"]["win"]["count"], tuned_wins);
    assert_eq!(results["judge"]["invalid"], 1);
    assert_no_secrets(tmp.path(), &[&out], &weave_bodies(&weave));
}

/// Waits for `child` to exit, up to a generous limit that only a hang reaches (then it is
/// killed and the test fails).
fn wait_for_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let limit = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > limit {
            child.kill().unwrap();
            panic!("{what} did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A trace server that takes the connections and never answers: `bora eval --weave` gives
/// up on it after its own per-request timeout, says the traces were dropped, and exits 0
/// with the evaluation written.
#[test]
fn eval_finishes_with_its_results_when_weave_never_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let weave = FakeWeave::start();
    let (run, data) = trained_run(tmp.path(), &weave);
    // Set-up (GraphQL and server_info) is answered, then every request hangs.
    weave.fail_from(1, Failure::Hang);
    let mut child = command(&eval_args(&run, &data), tmp.path(), &weave, true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for_exit(&mut child, "bora eval");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(status.success(), "{err}");
    assert!(
        err.contains("warning: weave: the evaluation's traces were dropped"),
        "{err}"
    );
    assert!(err.contains("the evaluation itself is saved"), "{err}");
    assert!(stdout(&out).contains("report: "), "{}", stdout(&out));
    for file in ["results.json", "samples.jsonl", "report.html"] {
        assert!(Path::new(&run).join("eval").join(file).is_file(), "{file}");
    }
    assert!(weave.state().calls.is_empty(), "nothing was answered");
    assert_no_secrets(tmp.path(), &[&out], &weave_bodies(&weave));
}

/// A trace server that never answers, from its first request on: `bora serve --weave`
/// answers every request anyway, stops when told to, and counts what it could not trace as
/// dropped.
#[test]
fn serve_answers_while_weave_never_answers_and_counts_the_traces_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let weave = FakeWeave::start();
    weave.fail_from(0, Failure::Hang);
    let (mut child, lines, addr) = serve_traced(tmp.path(), &weave);
    // The requests go in once the tracer's first request to Weave is held unanswered.
    let limit = Instant::now() + Duration::from_secs(120);
    while !weave
        .requests()
        .iter()
        .any(|r| r.path().starts_with("/traces/"))
    {
        assert!(Instant::now() < limit, "the tracer never reached Weave");
        std::thread::sleep(Duration::from_millis(50));
    }
    for prompt in ["a b c", "d e f", "g h"] {
        let response = post(
            &addr,
            "/v1/completions",
            &json!({"model": "llama", "prompt": prompt, "max_tokens": 3}),
        );
        assert!(response["choices"][0]["text"].is_string(), "{response}");
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = wait_for_exit(&mut child, "bora serve");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let rest = rest.join("\n");
    assert!(status.success(), "{rest}");
    assert!(
        rest.contains("weave: 0 request(s) traced, 3 dropped, 0 not sent"),
        "{rest}"
    );
    assert!(!rest.contains(KEY));
    assert!(weave.state().calls.is_empty());
}
