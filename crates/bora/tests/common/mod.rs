//! Shared set-up for CLI tests on the tiny Llama fixture of bora-model (2 layers, hidden 64,
//! vocab 96) with a word-level tokenizer written for its vocabulary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bora-model/tests/fixtures/tiny")
        .join(name)
}

/// Words `w3` … `w95` take the ids after `<unk>`, `<s>` and `</s>` (the fixture's BOS 1 and
/// EOS 2), so every id the tokenizer emits is a row of the model's embedding.
pub const VOCAB: u32 = 96;

pub fn word(id: u32) -> String {
    format!("w{id}")
}

/// An HF `tokenizer.json` (word level, split on whitespace) and a `tokenizer_config.json`
/// with a trivial chat template.
pub fn write_tokenizer(dir: &Path) {
    let specials = ["<unk>", "<s>", "</s>"];
    let mut vocab = serde_json::Map::new();
    for (id, s) in specials.iter().enumerate() {
        vocab.insert((*s).into(), json!(id));
    }
    for id in specials.len() as u32..VOCAB {
        vocab.insert(word(id), json!(id));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let config = json!({
        "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

/// A copy of a tiny fixture model in `root/NAME` with the tokenizer beside it.
pub fn model_dir(root: &Path, fixture_name: &str) -> PathBuf {
    let dir = root.join(fixture_name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(fixture_name).join(file), dir.join(file)).unwrap();
    }
    write_tokenizer(&dir);
    dir
}

pub fn bora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("bora runs")
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "bora failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` chat examples: a few words in, the same words reversed out.
// Each test binary compiles this module; train_cli trains on text, not chats.
#[allow(dead_code)]
pub fn write_chats(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let words: Vec<String> = (0..3)
                .map(|j| word(3 + ((i * 3 + j) % 40) as u32))
                .collect();
            let answer: Vec<String> = words.iter().rev().cloned().collect();
            json!({"messages": [
                {"role": "user", "content": words.join(" ")},
                {"role": "assistant", "content": answer.join(" ")},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Copies a directory tree (a run directory, to resume a copy of it).
#[allow(dead_code)]
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// bora with a clean Hugging Face environment: this Hub, this cache, no token unless given.
#[allow(dead_code)]
pub fn bora_env(hub: &str, home: &Path, extra: &[(&str, &str)], args: &[&str]) -> Output {
    bora_env_command(hub, home, extra, args)
        .output()
        .expect("bora runs")
}

/// The command [`bora_env`] runs, to start it without waiting.
#[allow(dead_code)]
pub fn bora_env_command(hub: &str, home: &Path, extra: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env("HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HF_ENDPOINT", hub);
    for k in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "XDG_CACHE_HOME",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}
