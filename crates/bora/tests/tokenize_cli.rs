//! `bora tokenize` run as a user runs it, checked against the mistral-common reference ids in
//! bora-tokenizer's chat fixtures.

use std::path::Path;
use std::process::{Command, Output};

use bora_formats::cache;
use serde_json::Value;

fn bora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("bora runs")
}

/// One case of a chat fixture (reference ids from mistral-common).
fn reference_case(fixture: &str, name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bora-tokenizer/tests/fixtures/chat")
        .join(fixture);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fx: Value = serde_json::from_str(&text).unwrap();
    fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{fixture} has no case {name}"))
        .clone()
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "bora failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        text.lines().count(),
        1,
        "--json prints exactly one line: {text}"
    );
    serde_json::from_str(&text).unwrap()
}

fn check_chat(tok_file: &str, fixture: &str, case_name: &str, extra: &[&str]) {
    let case = reference_case(fixture, case_name);
    let dir = tempfile::tempdir().unwrap();
    let conv = dir.path().join("conv.json");
    std::fs::write(&conv, case["conversation"].to_string()).unwrap();
    let tok = cache::fetched_tokenizer(tok_file).unwrap();
    let mut args = vec![
        "tokenize",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--chat",
        conv.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let got = stdout_json(&bora(&args));
    assert_eq!(got["ids"], case["ids"], "{case_name}: ids");
    assert_eq!(got["mask"], case["mask"], "{case_name}: mask");
    assert_eq!(
        got.as_object().unwrap().len(),
        2,
        "only ids and mask: {got}"
    );
}

#[test]
fn chat_json_matches_mistral_common() {
    check_chat(
        "tekken_240911.json",
        "mistral_tekken_240911.json",
        "reference_train",
        &[],
    );
    check_chat(
        "mistral_instruct_tokenizer_241114.model.v7",
        "mistral_mistral_instruct_tokenizer_241114.model.v7.json",
        "weights",
        &[],
    );
}

#[test]
fn chat_generation_prompt_matches_mistral_common() {
    check_chat(
        "mistral_instruct_tokenizer_240323.model.v3",
        "mistral_mistral_instruct_tokenizer_240323.model.v3.json",
        "reference_generation",
        &["--add-generation-prompt"],
    );
}

#[test]
fn text_json_is_the_chat_ids_of_the_same_text() {
    // In the Tekken v3 format a user turn is [INST] + encode(text) + [/INST], so the ids of
    // the plain text are the reference ids between those two control tokens.
    let case = reference_case("mistral_tekken_240911.json", "single_user_generation");
    let reference: Vec<u64> = case["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let tok = cache::fetched_tokenizer("tekken_240911.json").unwrap();
    let text = case["conversation"]["messages"][0]["content"]
        .as_str()
        .unwrap();
    let got = stdout_json(&bora(&[
        "tokenize",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--text",
        text,
        "--json",
    ]));
    let want: Vec<Value> = reference[2..reference.len() - 1]
        .iter()
        .map(|&id| id.into())
        .collect();
    assert_eq!(got, serde_json::json!({ "ids": want }));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(&file, text).unwrap();
    let from_file = stdout_json(&bora(&[
        "tokenize",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(from_file, got);
}

#[test]
fn readable_output_lists_ids_pieces_and_mask() {
    let case = reference_case("mistral_tekken_240911.json", "single_turn");
    let dir = tempfile::tempdir().unwrap();
    let conv = dir.path().join("conv.json");
    std::fs::write(&conv, case["conversation"].to_string()).unwrap();
    let tok = cache::fetched_tokenizer("tekken_240911.json").unwrap();
    let out = bora(&[
        "tokenize",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--chat",
        conv.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let n = case["ids"].as_array().unwrap().len();
    let trained = case["mask"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.as_u64() == Some(1))
        .count();
    assert!(
        text.starts_with(&format!("{n} tokens\n{trained} trained")),
        "{text}"
    );
    assert!(text.contains("\"[INST]\""), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("* ")).count(),
        trained,
        "{text}"
    );
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"messages":[{"role":"user","content":"a"},{"role":"bot","content":"b"}]}"#,
    )
    .unwrap();
    let tok = cache::fetched_tokenizer("tekken_240911.json").unwrap();
    let out = bora(&[
        "tokenize",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--chat",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("message 1: role"),
        "{err}"
    );

    let missing = dir.path().join("no-such-tokenizer.model");
    let out = bora(&[
        "tokenize",
        "--tokenizer",
        missing.to_str().unwrap(),
        "--text",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-tokenizer.model"));

    let out = bora(&[
        "tokenize",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--text",
        "x",
        "--add-generation-prompt",
    ]);
    assert!(
        !out.status.success(),
        "--add-generation-prompt needs --chat"
    );
}
