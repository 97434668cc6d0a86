//! `bora generate`, `perplexity` and `info` run as a user runs them, on the default model,
//! checked against transformers' greedy tokens in bora-model's SmolLM2 fixture.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use bora_formats::cache;
use bora_tokenizer::Tokenizer;
use serde_json::Value;

fn bora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("bora runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "bora failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bora-model/tests/fixtures/smollm2/expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The text bora should print for fixture prompt `i`: transformers' greedy tokens up to the
/// first end-of-sequence token, decoded without special tokens, then a newline.
fn expected_text(tok: &Tokenizer, prompt: &Value) -> String {
    let eos = tok.eos_id().unwrap();
    let greedy: Vec<u32> = ids(&prompt["greedy"])
        .into_iter()
        .take_while(|&t| t != eos)
        .collect();
    tok.decode(&greedy) + "\n"
}

#[test]
fn greedy_generation_matches_transformers() {
    let model = cache::fetched_default_model().unwrap();
    let tok = Tokenizer::from_file(&model).unwrap();
    let fx = fixture();
    for prompt in &fx["prompts"].as_array().unwrap()[..2] {
        let text = prompt["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text),
            ids(&prompt["ids"]),
            "the prompt tokenizes as in the fixture"
        );
        let out = bora(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            text,
            "--temperature",
            "0",
            "--max-tokens",
            "64",
        ]);
        assert_eq!(stdout(&out), expected_text(&tok, prompt), "prompt {text:?}");
    }
}

#[test]
fn chat_generation_matches_transformers_chat_template() {
    let tok = Tokenizer::from_file(&cache::fetched_default_model().unwrap()).unwrap();
    let prompt = &fixture()["prompts"][2];
    // The fixture's third prompt is the chat template applied to this one user message.
    let out = bora(&[
        "generate",
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--temperature",
        "0",
        "--max-tokens",
        "64",
    ]);
    assert_eq!(stdout(&out), expected_text(&tok, prompt));
}

#[test]
fn same_seed_same_text() {
    let args = [
        "generate",
        "--prompt",
        "Once upon a time",
        "--max-tokens",
        "24",
        "--temperature",
        "1.0",
        "--seed",
        "7",
    ];
    let a = stdout(&bora(&args));
    let b = stdout(&bora(&args));
    assert_eq!(a, b);
    assert!(!a.trim().is_empty());
}

#[test]
fn perplexity_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(
        &file,
        "The quick brown fox jumps over the lazy dog. ".repeat(20),
    )
    .unwrap();
    let out = bora(&[
        "perplexity",
        "--file",
        file.to_str().unwrap(),
        "--context",
        "64",
        "--json",
    ]);
    let text = stdout(&out);
    let json: Value = serde_json::from_str(text.trim()).unwrap();
    let obj = json.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["nll", "ppl", "tokens"]);
    let tokens = json["tokens"].as_u64().unwrap();
    let n_text = Tokenizer::from_file(&cache::fetched_default_model().unwrap())
        .unwrap()
        .encode(&std::fs::read_to_string(&file).unwrap())
        .len();
    // Windows of 64 without BOS: the first token of each window is context only.
    assert_eq!(tokens as usize, n_text - n_text.div_ceil(64));
    let (nll, ppl) = (json["nll"].as_f64().unwrap(), json["ppl"].as_f64().unwrap());
    assert!(nll > 0.0 && (ppl - nll.exp()).abs() < 1e-9 * ppl);
    // A repeated sentence is easy to predict.
    assert!(ppl < 10.0, "ppl {ppl}");
}

#[test]
fn info_describes_the_default_model() {
    let text = stdout(&bora(&["info"]));
    for want in [
        "architecture: llama",
        "30 layers",
        "Q4_1",
        "Q8_0",
        "GgufBpe",
        "Jinja chat template",
        "134.5 M",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[test]
fn bad_model_path_is_a_clear_error() {
    let out = bora(&[
        "generate",
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("no such file"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let out = bora(&["info", "--model", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.json") && err.contains("params.json"),
        "{err}"
    );
}

/// Two turns over stdin: the first reply is the single-turn chat reply; the second turn
/// runs on the same conversation and the session ends cleanly at end of input.
#[test]
fn chat_over_stdin_multi_turn() {
    let tok = Tokenizer::from_file(&cache::fetched_default_model().unwrap()).unwrap();
    let first = expected_text(&tok, &fixture()["prompts"][2]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(["chat", "--temperature", "0", "--max-tokens", "32"])
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\n\nAnd of Italy?\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(
        text.starts_with(&first),
        "{text:?} does not start with {first:?}"
    );
    assert!(text.len() > first.len() + 1, "no second reply in {text:?}");
}

/// `info` describes a checkpoint that has no tokenizer; `generate` on it says what is missing.
#[test]
fn tokenizer_less_checkpoint() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../bora-model/tests/fixtures/tiny/ministral8b");
    let text = stdout(&bora(&["info", "--model", dir.to_str().unwrap()]));
    assert!(text.contains("architecture: ministral"), "{text}");
    assert!(text.contains("6,full,6"), "{text}");
    assert!(text.contains("tokenizer:    none"), "{text}");
    let out = bora(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loading the tokenizer of"), "{err}");
}

#[test]
fn json_schema_constrains_a_sampled_answer() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
            "count": {"type": "integer"}, "ok": {"type": "boolean"}},
            "required": ["colour", "count", "ok"]}"#,
    )
    .unwrap();
    for seed in ["1", "2", "3"] {
        let text = stdout(&bora(&[
            "generate",
            "--chat",
            "--prompt",
            "Pick a colour.",
            "--json-schema",
            schema.to_str().unwrap(),
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--max-tokens",
            "64",
        ]));
        let v: Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert!(
            ["red", "green", "blue"].contains(&v["colour"].as_str().unwrap()),
            "{v}"
        );
        assert!(v["count"].is_i64() && v["ok"].is_boolean(), "{v}");
    }
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"type": "integer", "multipleOf": 3}"#).unwrap();
    let out = bora(&[
        "generate",
        "--prompt",
        "x",
        "--json-schema",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multipleOf"));
}
