//! The synth job against a loopback Mistral API whose answers are a function of the request
//! (a recorded teacher: the same question always gets the same answer).

#[path = "../../bora-hub/tests/mistral_api/mod.rs"]
mod mistral_api;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use bora_hub::chat::{ChatClient, Price};
use bora_hub::hub::Retry;
use bora_synth::{load_seeds, normalise, run, SeedPair, SynthConfig, SynthError, LOG_FILE};
use mistral_api::{FakeMistral, Fault, API_KEY};
use serde_json::Value;

/// Writes new examples from the request's per-slot seed: every 7th is not JSON, inputs
/// repeat (modulo 40, with case and punctuation changed) so some are duplicates, one in
/// eleven copies a seed input.
fn teacher() -> mistral_api::Answerer {
    Box::new(|body: &Value| {
        let s = body["seed"].as_u64().unwrap();
        if s.is_multiple_of(7) {
            return "Sure! Here is an example: input, output".into();
        }
        if s.is_multiple_of(11) {
            return r#"{"input": "Order: Ana wants 2 lamps in Rome.", "output": "{\"qty\":2}"}"#
                .into();
        }
        let k = s % 40;
        let input = if s.is_multiple_of(2) {
            format!("Order: customer {k} wants {k} chairs.")
        } else {
            format!("order - CUSTOMER {k} wants {k} chairs")
        };
        serde_json::json!({"input": input, "output": format!("{{\"qty\":{k}}}")}).to_string()
    })
}

fn seeds() -> Vec<SeedPair> {
    vec![
        SeedPair {
            input: "Order: Ana wants 2 lamps in Rome.".into(),
            output: "{\"qty\":2}".into(),
        },
        SeedPair {
            input: "Order: Bo wants 5 desks in Oslo.".into(),
            output: "{\"qty\":5}".into(),
        },
    ]
}

fn config(out: &Path, n: usize) -> SynthConfig {
    SynthConfig {
        task: "Extract the quantity of an order as JSON.".into(),
        seeds: seeds(),
        inputs: None,
        topics: Some(vec!["furniture".into(), "lighting".into()]),
        n,
        teacher: "mistral-small-latest".into(),
        temperature: 0.7,
        max_tokens: 128,
        concurrency: 3,
        max_cost: None,
        price: Some(Price {
            input: 0.1,
            output: 0.3,
        }),
        seed: 11,
        val_fraction: 0.1,
        test_fraction: 0.2,
        out: out.to_path_buf(),
    }
}

fn client(url: &str) -> ChatClient {
    ChatClient::new(url, "MISTRAL_API_KEY", |_| Some(API_KEY.into()))
        .unwrap()
        .with_retry(Retry::default().with_sleep(|_| {}))
        .with_timeout(Duration::from_secs(5))
}

fn files(dir: &Path) -> [String; 3] {
    ["train", "val", "test"]
        .map(|s| std::fs::read_to_string(dir.join(format!("{s}.jsonl"))).unwrap())
}

fn inputs_of(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["messages"][0]["content"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn writes_n_valid_distinct_examples_in_disjoint_splits() {
    let server = FakeMistral::start(teacher());
    let dir = tempfile::tempdir().unwrap();
    let s = run(&config(dir.path(), 20), &client(&server.url), &|_| {}).unwrap();
    assert_eq!((s.kept, s.train, s.val, s.test), (20, 14, 2, 4));
    let [train, val, test] = files(dir.path());
    let mut seen = HashSet::new();
    for text in [&train, &val, &test] {
        for line in text.lines() {
            bora_data::parse_line(line).unwrap();
        }
        for input in inputs_of(text) {
            assert!(seen.insert(normalise(&input)), "{input} is in two places");
            assert_ne!(normalise(&input), normalise(&seeds()[0].input));
        }
    }
    assert_eq!(seen.len(), 20);
    // Every answered slot is in the dataset or dropped with a reason, up to the 20th kept.
    let dropped: usize = s.dropped.values().sum();
    assert!(
        s.dropped.get("duplicate").copied().unwrap_or(0) > 0,
        "{s:?}"
    );
    assert!(s.dropped.get("not_json").copied().unwrap_or(0) > 0, "{s:?}");
    assert!(dropped + s.kept <= s.slots_answered, "{s:?}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("synth.json")).unwrap())
            .unwrap();
    assert_eq!(summary["kept"], 20);
    assert_eq!(summary["teacher"], "mistral-small-latest");
    let requests = server.requests();
    assert_eq!(requests.len(), s.slots_answered);
    let tokens: u64 = s.tokens.prompt_tokens + s.tokens.completion_tokens;
    assert!(tokens > 0);
    let cost = 0.1e-6 * s.tokens.prompt_tokens as f64 + 0.3e-6 * s.tokens.completion_tokens as f64;
    assert!((s.cost_usd.unwrap() - cost).abs() < 1e-12);
    for dir_file in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(dir_file.unwrap().path()).unwrap();
        assert!(!text.contains(API_KEY));
    }
}

#[test]
fn a_run_stopped_by_its_budget_resumes_into_the_uninterrupted_dataset() {
    let server = FakeMistral::start(teacher());
    let whole = tempfile::tempdir().unwrap();
    run(&config(whole.path(), 25), &client(&server.url), &|_| {}).unwrap();

    let parts = tempfile::tempdir().unwrap();
    let mut c = config(parts.path(), 25);
    c.max_cost = Some(0.0003);
    let first = run(&c, &client(&server.url), &|_| {}).unwrap();
    assert!(first.stopped_by_budget);
    assert!(first.cost_usd.unwrap() <= 0.0003, "{first:?}");
    assert!(first.kept < 25);
    let asked = server.requests().len();
    c.max_cost = None;
    c.concurrency = 1;
    let second = run(&c, &client(&server.url), &|_| {}).unwrap();
    assert_eq!(second.kept, 25);
    assert_eq!(files(parts.path()), files(whole.path()));
    // No slot was asked twice: the second run asked only for what the log lacked.
    let log = std::fs::read_to_string(parts.path().join(LOG_FILE)).unwrap();
    assert_eq!(
        server.requests().len() - asked,
        log.lines().count() - 1 - first.slots_answered
    );
}

#[test]
fn answers_given_inputs_and_survives_faults() {
    let server = FakeMistral::start(Box::new(|body: &Value| {
        let msgs = body["messages"].as_array().unwrap();
        format!(
            "answer to {}",
            msgs.last().unwrap()["content"].as_str().unwrap()
        )
    }));
    for f in [
        Fault::Status(429, Some("1")),
        Fault::Drop,
        Fault::Malformed,
        Fault::Status(500, None),
    ] {
        server.fault(f);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 100);
    c.inputs = Some((0..10).map(|i| format!("Question number {i}?")).collect());
    c.topics = None;
    c.val_fraction = 0.0;
    c.test_fraction = 0.0;
    let s = run(&c, &client(&server.url), &|_| {}).unwrap();
    assert_eq!((s.kept, s.train, s.failed_requests), (10, 10, 0));
    let [train, _, _] = files(dir.path());
    for line in train.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let q = v["messages"][0]["content"].as_str().unwrap();
        assert_eq!(v["messages"][1]["content"], format!("answer to {q}"));
    }
    // Requests in answer mode show the seeds as earlier turns and ask for no JSON.
    let body = server.requests().last().unwrap().json();
    let shown: Vec<&str> = body["messages"].as_array().unwrap()[1..5]
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    let mut want = [seeds()[0].input.clone(), seeds()[1].input.clone()];
    if shown[0] != want[0] {
        want.swap(0, 1);
    }
    assert_eq!([shown[0], shown[2]], [want[0].as_str(), want[1].as_str()]);
    assert!(body.get("response_format").is_none());
}

#[test]
fn a_rejected_key_stops_the_job_and_other_settings_are_refused() {
    let server = FakeMistral::start(teacher());
    let dir = tempfile::tempdir().unwrap();
    let bad = ChatClient::new(&server.url, "K", |_| Some("wrong-key".into())).unwrap();
    let e = run(&config(dir.path(), 5), &bad, &|_| {}).unwrap_err();
    assert!(matches!(e, SynthError::Teacher(_)), "{e}");
    assert!(
        e.to_string().contains("401") && !e.to_string().contains("wrong-key"),
        "{e}"
    );
    // A rerun with other settings in the same directory is refused.
    let mut other = config(dir.path(), 5);
    other.seed = 12;
    let e = run(&other, &client(&server.url), &|_| {}).unwrap_err();
    assert!(matches!(e, SynthError::OtherJob { .. }), "{e}");
}

#[test]
fn seeds_come_from_any_dataset_shape_and_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seeds.jsonl");
    std::fs::write(
        &p,
        concat!(
            r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]}"#,
            "\n",
            r#"{"prompt": "q2", "completion": "a2"}"#,
            "\n"
        ),
    )
    .unwrap();
    let s = load_seeds(&p).unwrap();
    assert_eq!((s[0].input.as_str(), s[0].output.as_str()), ("q1", "a1"));
    assert_eq!((s[1].input.as_str(), s[1].output.as_str()), ("q2", "a2"));
    std::fs::write(&p, "{\"text\": \"t\"}\n").unwrap();
    let e = load_seeds(&p).unwrap_err().to_string();
    assert!(e.contains("seeds.jsonl:1") && e.contains("text"), "{e}");
}

#[test]
fn a_line_torn_by_a_kill_is_cut_off_and_its_slot_asked_again() {
    let server = FakeMistral::start(teacher());
    let whole = tempfile::tempdir().unwrap();
    run(&config(whole.path(), 8), &client(&server.url), &|_| {}).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 4);
    c.concurrency = 1;
    run(&c, &client(&server.url), &|_| {}).unwrap();
    let log = dir.path().join(LOG_FILE);
    let complete = std::fs::read_to_string(&log).unwrap();
    let slots = complete.lines().count() - 1;
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(
        &mut f,
        format!("{{\"slot\": {slots}, \"content\": \"{{\\\"inp").as_bytes(),
    )
    .unwrap();
    drop(f);
    run(&config(dir.path(), 8), &client(&server.url), &|_| {}).unwrap();
    assert_eq!(files(dir.path()), files(whole.path()));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with(&complete));
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }

    // A broken line that is not the last one is an error naming it.
    std::fs::write(&log, text.replacen("\"slot\"", "\"slot", 1)).unwrap();
    let e = run(&config(dir.path(), 8), &client(&server.url), &|_| {}).unwrap_err();
    assert!(
        e.to_string().contains(&format!("{}:2:", log.display())),
        "{e}"
    );
}
