//! Bad tokenizer files: every one is an error that names the file, never a panic.

use std::path::{Path, PathBuf};

use base64::Engine;
use bora_formats::cache;
use bora_tokenizer::{Tokenizer, TokenizerError};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Loads `path`, expecting an error whose message names the file.
fn load_err(path: &Path) -> TokenizerError {
    let err = match Tokenizer::from_file(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    err
}

#[test]
fn wrong_kind_of_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let json = br#"{"config": {}, "vocab": []}"#;
    let err = load_err(&write(dir.path(), "tokenizer.model.v3", json));
    assert!(matches!(err, TokenizerError::Protobuf { .. }), "{err}");

    let spm = std::fs::read(cache::fetched_tokenizer("tokenizer.model.v1").unwrap()).unwrap();
    let err = load_err(&write(dir.path(), "tekken.json", &spm));
    assert!(matches!(err, TokenizerError::Json { .. }), "{err}");

    let err = load_err(&write(dir.path(), "weights.safetensors", b"xx"));
    assert!(matches!(err, TokenizerError::UnknownFormat { .. }), "{err}");

    let err = load_err(&write(
        dir.path(),
        "model.gguf",
        b"GGUF\x03\x00\x00\x00junk",
    ));
    assert!(matches!(err, TokenizerError::Gguf(_)), "{err}");

    let err = load_err(&write(dir.path(), "config.json", br#"{"hidden_size": 1}"#));
    assert!(matches!(err, TokenizerError::UnknownFormat { .. }), "{err}");
}

#[test]
fn truncated_or_corrupt_model_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(
        cache::fetched_tokenizer("mistral_instruct_tokenizer_240323.model.v3").unwrap(),
    )
    .unwrap();
    for cut in [0, 1, 2, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        load_err(&write(dir.path(), "tokenizer.model.v3", &bytes[..cut]));
    }
    // Flipped bytes may still parse as some model; the point is no panic and no hang.
    let mut state = 0x2545F4914F6CDD1Du64;
    for _ in 0..40 {
        let mut corrupt = bytes.clone();
        for _ in 0..8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % corrupt.len() as u64) as usize;
            corrupt[i] = (state >> 32) as u8;
        }
        let path = write(dir.path(), "tokenizer.model.v3", &corrupt);
        if let Ok(tok) = Tokenizer::from_file(&path) {
            let ids = tok.encode("Hello world, 1234 ümlaut 中文");
            let _ = tok.decode(&ids);
        }
    }
}

#[test]
fn invalid_json_and_invalid_utf8_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(&write(dir.path(), "tekken.json", b"{\"config\": "));
    assert!(matches!(err, TokenizerError::Json { .. }), "{err}");
    let err = load_err(&write(
        dir.path(),
        "tekken.json",
        b"{\"config\": \"\xff\xfe\"}",
    ));
    assert!(matches!(err, TokenizerError::Json { .. }), "{err}");

    // A ModelProto whose first piece holds the bytes FF FE: field 1 { field 1 = "\xff\xfe" }.
    let err = load_err(&write(
        dir.path(),
        "tokenizer.model",
        b"\x0a\x04\x0a\x02\xff\xfe",
    ));
    assert!(err.to_string().contains("UTF-8"), "{err}");
}

#[test]
fn inconsistent_tekken_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#""config": {"pattern": ".", "num_vocab_tokens": 2, "default_vocab_size": 1002,
        "default_num_special_tokens": 1000, "version": "v3"}"#;
    let few = format!(
        r#"{{{config}, "vocab": [{{"rank": 0, "token_bytes": "AA==", "token_str": null}}]}}"#
    );
    let err = load_err(&write(dir.path(), "tekken.json", few.as_bytes()));
    assert!(matches!(err, TokenizerError::Invalid { .. }), "{err}");

    let vocab: Vec<String> = (0..=255u8)
        .map(|b| {
            let b64 = base64::engine::general_purpose::STANDARD.encode([b]);
            format!(r#"{{"rank": {b}, "token_bytes": "{b64}", "token_str": null}}"#)
        })
        .collect();
    let bad_regex = format!(
        r#"{{"config": {{"pattern": "(", "num_vocab_tokens": 256, "default_vocab_size": 1256,
        "default_num_special_tokens": 1000, "version": "v3"}}, "vocab": [{}]}}"#,
        vocab.join(",")
    );
    let err = load_err(&write(dir.path(), "tekken.json", bad_regex.as_bytes()));
    assert!(matches!(err, TokenizerError::Regex { .. }), "{err}");

    let unknown_version = r#"{"config": {"pattern": ".", "num_vocab_tokens": 0, "default_vocab_size": 1000,
        "default_num_special_tokens": 1000, "version": "v99"}, "vocab": []}"#;
    let err = load_err(&write(
        dir.path(),
        "tekken.json",
        unknown_version.as_bytes(),
    ));
    assert!(matches!(err, TokenizerError::Invalid { .. }), "{err}");
}

#[test]
fn missing_file_and_empty_directory_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_err(&dir.path().join("tokenizer.model.v3"));
    assert!(matches!(err, TokenizerError::Io { .. }), "{err}");
    let err = load_err(dir.path());
    assert!(matches!(err, TokenizerError::UnknownFormat { .. }), "{err}");
}
