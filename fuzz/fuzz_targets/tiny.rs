//! The tiny Llama fixture of bora-model (2 layers, hidden 64, vocabulary 96) in a temporary
//! directory with a word-level `tokenizer.json` and a chat template for that vocabulary, as
//! the CLI tests build it: a complete model that loads, serves and exports in milliseconds.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

const VOCAB: u32 = 96;

/// The model directory, made once per process.
pub fn model_dir() -> &'static PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bora-fuzz-tiny-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz temp directory");
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/bora-model/tests/fixtures/tiny");
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture.join("llama").join(file), dir.join(file))
                .expect("copy the tiny model");
        }
        write_tokenizer(&dir);
        dir
    })
}

fn write_tokenizer(dir: &Path) {
    let specials = ["<unk>", "<s>", "</s>"];
    let mut vocab = serde_json::Map::new();
    for (id, s) in specials.iter().enumerate() {
        vocab.insert((*s).into(), json!(id));
    }
    for id in specials.len() as u32..VOCAB {
        vocab.insert(format!("w{id}"), json!(id));
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
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).expect("write");
    let config = json!({
        "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write");
}
