//! Models by Hub name from the command line, against the loopback Hub of bora-hub's tests
//! (through `HF_ENDPOINT`): `bora download`, `bora info --model ORG/NAME` online and offline,
//! a model directory as transformers 5 saves it (`chat_template.jinja`), `bora train` on a
//! base model without a chat format recording the commit it resumes from offline, and the
//! gated and missing-repo errors.

#[allow(dead_code)]
mod common;
#[path = "../../bora-hub/tests/hub_support/mod.rs"]
mod hub_support;

use std::path::PathBuf;

use common::{assert_ok, bora_env, fixture, word, write_tokenizer};
use hub_support::{FakeHub, ModelRepo, TOKEN};
use serde_json::{json, Value};

const TEMPLATE: &str = "{% for m in messages %}{{ m['content'] }} {% endfor %}";

/// The tiny Llama fixture as a Hub repo: HF weights and, beside them, consolidated ones that
/// must not be fetched; the chat template in `chat_template.jinja` unless `base`.
fn llama_repo(id: &str, base: bool) -> (ModelRepo, String) {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path());
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokenizer_config.json")).unwrap())
            .unwrap();
    config.as_object_mut().unwrap().remove("chat_template");
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    let mut files = vec![
        ("config.json", read(fixture("llama").join("config.json"))),
        (
            "model.safetensors",
            read(fixture("llama").join("model.safetensors")),
        ),
        ("tokenizer.json", read(dir.path().join("tokenizer.json"))),
        ("tokenizer_config.json", config.to_string().into_bytes()),
        ("params.json", b"{\"dim\": 64}".to_vec()),
        ("consolidated.safetensors", vec![7u8; 4096]),
        ("README.md", b"# tiny".to_vec()),
    ];
    if !base {
        files.push(("chat_template.jinja", TEMPLATE.as_bytes().to_vec()));
    }
    let mut repo = ModelRepo::new(id);
    let commit = repo.commit(&["main"], &files);
    (repo, commit)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn download_then_info_offline_from_the_cache() {
    let hub = FakeHub::start();
    let (repo, commit) = llama_repo("bora-test/llama", false);
    hub.add_model(repo);
    let home = tempfile::tempdir().unwrap();

    let out = bora_env(&hub.url, home.path(), &[], &["download", "bora-test/llama"]);
    assert_ok(&out);
    let snapshot = home
        .path()
        .join("hf/hub/models--bora-test--llama/snapshots")
        .join(&commit);
    assert_eq!(text(&out.stdout).trim(), snapshot.display().to_string());
    assert!(snapshot.join("chat_template.jinja").is_file());
    assert!(!snapshot.join("consolidated.safetensors").exists());
    assert!(!hub.calls().iter().any(|c| c.1.contains("consolidated")));
    assert!(
        hub.requests()
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "no token was configured"
    );

    hub.clear_requests();
    let out = bora_env(
        &hub.url,
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
        &["info", "--model", "bora-test/llama"],
    );
    assert_ok(&out);
    let info = text(&out.stdout);
    assert!(info.contains("2 layers, hidden 64"), "{info}");
    assert!(info.contains("chat format:  Jinja chat template"), "{info}");
    assert!(hub.calls().is_empty(), "{:?}", hub.calls());

    // A fresh cache: `info` fetches what it needs by itself.
    let other = tempfile::tempdir().unwrap();
    let out = bora_env(
        &hub.url,
        other.path(),
        &[],
        &["info", "--model", "bora-test/llama"],
    );
    assert_ok(&out);
    assert!(text(&out.stdout).contains("Jinja chat template"));
}

#[test]
fn train_on_text_with_a_base_model_by_name_and_resume_offline() {
    let hub = FakeHub::start();
    let (repo, commit) = llama_repo("bora-test/base", true);
    hub.add_model(repo);
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("text.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let words: Vec<String> = (0..8).map(|j| word(3 + ((i + j) % 6) as u32)).collect();
            json!({"text": words.join(" ")}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let run = home.path().join("runs/base");
    let out = bora_env(
        &hub.url,
        home.path(),
        &[],
        &[
            "train",
            "--model",
            "bora-test/base",
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--seq-len",
            "16",
            "--rank",
            "2",
            "--checkpoint-every",
            "1",
        ],
    );
    assert_ok(&out);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("path = \"bora-test/base\""), "{config}");
    assert!(
        config.contains(&format!("revision = \"{commit}\"")),
        "{config}"
    );
    let adapter = std::fs::read_to_string(run.join("adapter/adapter_config.json")).unwrap();
    assert!(adapter.contains("\"bora-test/base\""), "{adapter}");

    // Resumed with no Hub at all: the pinned commit comes from the cache.
    let out = bora_env(
        "http://127.0.0.1:9",
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
        &["train", "--resume", run.to_str().unwrap()],
    );
    assert_ok(&out);
}

#[test]
fn gated_and_missing_models_say_what_to_do_without_showing_the_token() {
    let hub = FakeHub::start();
    let (mut repo, _) = llama_repo("bora-test/gated", false);
    repo.gated = true;
    hub.add_model(repo);
    let home = tempfile::tempdir().unwrap();
    let out = bora_env(
        &hub.url,
        home.path(),
        &[("HF_TOKEN", TOKEN)],
        &["info", "--model", "bora-test/gated"],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("gated"), "{err}");
    assert!(
        err.contains(&format!("{}/bora-test/gated", hub.url)),
        "{err}"
    );
    assert!(err.contains("HF_TOKEN"), "{err}");
    assert!(
        !err.contains(TOKEN) && !text(&out.stdout).contains(TOKEN),
        "{err}"
    );

    let out = bora_env(&hub.url, home.path(), &[], &["download", "bora-test/nope"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("`bora-test/nope` does not exist"), "{err}");

    let out = bora_env(
        &hub.url,
        home.path(),
        &[("HF_HUB_OFFLINE", "1")],
        &["info", "--model", "bora-test/llama"],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("HF_HUB_OFFLINE"));
}

#[test]
fn tokenize_by_hub_name_fetches_the_tokenizer_and_not_the_weights() {
    let hub = FakeHub::start();
    let (repo, _) = llama_repo("bora-test/llama", false);
    hub.add_model(repo);
    let home = tempfile::tempdir().unwrap();
    let by_name = bora_env(
        &hub.url,
        home.path(),
        &[],
        &[
            "tokenize",
            "--tokenizer",
            "bora-test/llama",
            "--text",
            "hello world",
            "--json",
        ],
    );
    assert_ok(&by_name);
    assert!(
        !hub.calls().iter().any(|c| c.1.contains("safetensors")),
        "{:?}",
        hub.calls()
    );
    // The same ids as the tokenizer read from its files directly.
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path());
    let direct = bora_env(
        &hub.url,
        home.path(),
        &[],
        &[
            "tokenize",
            "--tokenizer",
            dir.path().join("tokenizer.json").to_str().unwrap(),
            "--text",
            "hello world",
            "--json",
        ],
    );
    assert_ok(&direct);
    assert_eq!(text(&by_name.stdout), text(&direct.stdout));
    assert!(text(&by_name.stdout).contains("\"ids\""));
}
