//! Token ids and decoded text, compared byte for byte with the reference libraries' output in
//! `tests/fixtures/encode/` (written by `scripts/make_tokenizer_fixtures.py`).

use std::path::Path;

use bora_formats::cache;
use bora_tokenizer::{SpecialTokenPolicy, StreamDecoder, Tokenizer, TokenizerKind};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/encode")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every encode and decode case of a fixture; reports all mismatches at once.
fn check(tok: &Tokenizer, fx: &Value) {
    let mut failures = Vec::new();
    for case in fx["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text);
        if got != want {
            failures.push(format!("encode {text:?}:\n  want {want:?}\n  got  {got:?}"));
        }
        let decoded = tok.decode(&want);
        if decoded != case["decoded"].as_str().unwrap() {
            failures.push(format!(
                "decode of {text:?}: got {decoded:?}, want {:?}",
                case["decoded"]
            ));
        }
        let mut stream = StreamDecoder::new(tok, SpecialTokenPolicy::Skip);
        let mut streamed: String = want.iter().map(|&id| stream.push(id)).collect();
        streamed.push_str(&stream.finish());
        if streamed != decoded {
            failures.push(format!(
                "stream decode of {text:?}: got {streamed:?}, want {decoded:?}"
            ));
        }
    }
    for case in fx["decode"].as_array().unwrap() {
        let policy = match case["policy"].as_str().unwrap() {
            "keep" => SpecialTokenPolicy::Keep,
            _ => SpecialTokenPolicy::Skip,
        };
        let list = ids(&case["ids"]);
        let got = tok.decode_with(&list, policy);
        if got != case["text"].as_str().unwrap() {
            failures.push(format!(
                "decode {list:?} ({policy:?}): got {got:?}, want {:?}",
                case["text"]
            ));
        }
        let mut stream = StreamDecoder::new(tok, policy);
        let mut streamed: String = list.iter().map(|&id| stream.push(id)).collect();
        streamed.push_str(&stream.finish());
        if streamed != got {
            failures.push(format!(
                "stream decode {list:?} ({policy:?}): got {streamed:?}, want {got:?}"
            ));
        }
    }
    assert_eq!(tok.vocab_size() as u64, fx["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.bos_id().map(u64::from), fx["bos_id"].as_u64());
    assert_eq!(tok.eos_id().map(u64::from), fx["eos_id"].as_u64());
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_mistral(file: &str, kind: TokenizerKind) {
    let tok = Tokenizer::from_file(&cache::fetched_tokenizer(file).unwrap()).unwrap();
    assert_eq!(tok.kind(), kind);
    check(
        &tok,
        &fixture(&format!("{}.json", file.trim_end_matches(".json"))),
    );
}

#[test]
fn sentencepiece_v1_matches_mistral_common() {
    check_mistral(
        "tokenizer.model.v1",
        TokenizerKind::SentencePiece { version: 1 },
    );
}

#[test]
fn sentencepiece_v2_matches_mistral_common() {
    check_mistral(
        "mistral_instruct_tokenizer_240216.model.v2",
        TokenizerKind::SentencePiece { version: 2 },
    );
}

#[test]
fn sentencepiece_v3_matches_mistral_common() {
    check_mistral(
        "mistral_instruct_tokenizer_240323.model.v3",
        TokenizerKind::SentencePiece { version: 3 },
    );
}

#[test]
fn sentencepiece_v7_matches_mistral_common() {
    check_mistral(
        "mistral_instruct_tokenizer_241114.model.v7",
        TokenizerKind::SentencePiece { version: 7 },
    );
}

#[test]
fn tekken_240718_matches_mistral_common() {
    check_mistral(
        "tekken_240718.json",
        TokenizerKind::Tekken {
            version: "v3".into(),
        },
    );
}

#[test]
fn tekken_240911_matches_mistral_common() {
    check_mistral(
        "tekken_240911.json",
        TokenizerKind::Tekken {
            version: "v3".into(),
        },
    );
}

/// A Tekken file in the newer format: its own `special_tokens` list, version v13.
#[test]
fn tekken_with_special_tokens_list_matches_mistral_common() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encode/tekken_v13/tekken.json");
    let tok = Tokenizer::from_file(&path).unwrap();
    assert_eq!(
        tok.kind(),
        TokenizerKind::Tekken {
            version: "v13".into()
        }
    );
    check(&tok, &fixture("tekken_v13.json"));
    assert_eq!(tok.token_id("[THINK]"), Some(5));
    assert_eq!(tok.id_to_piece(8).as_deref(), Some("<SPECIAL_8>"));
    assert_eq!(tok.encode_with_special("[THINK]ab"), [5, 12 + 256]);
}

/// The tokenizer is shared between threads by the data loader and the server.
#[test]
fn tokenizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}

/// SmolLM2's GGUF vocabulary (gpt2 + `smollm` pre-tokenizer) against HF tokenizers.
#[test]
fn smollm2_gguf_matches_hf_tokenizers() {
    let tok = Tokenizer::from_file(&cache::fetched_default_model().unwrap()).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::GgufBpe);
    let fx = fixture("smollm2.json");
    check(&tok, &fx);
    assert_eq!(tok.chat_template(), fx["chat_template"].as_str());
    for case in fx["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode_with_special(text),
            ids(&case["ids_special"]),
            "{text:?}"
        );
    }
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.id_to_piece(2).as_deref(), Some("<|im_end|>"));
}

/// HF `tokenizer.json` + `tokenizer_config.json`, through the `tokenizers` crate.
fn check_hf(style: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/encode")
        .join(format!("hf_{style}"));
    let fx = fixture(&format!("hf_{style}.json"));
    for path in [dir.join("tokenizer.json"), dir.clone()] {
        let tok = Tokenizer::from_file(&path).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::Hf);
        check(&tok, &fx);
        assert_eq!(tok.chat_template(), fx["chat_template"].as_str());
        for case in fx["encode"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode_with_special(text),
                ids(&case["ids_special"]),
                "{text:?}"
            );
        }
        let im_start = tok.token_id("<|im_start|>").unwrap();
        assert!(tok.is_special(im_start));
        assert_eq!(tok.id_to_piece(im_start).as_deref(), Some("<|im_start|>"));
    }
}

#[test]
fn hf_bytelevel_tokenizer_json_matches_hf_tokenizers() {
    check_hf("bytelevel");
}

#[test]
fn hf_metaspace_tokenizer_json_matches_hf_tokenizers() {
    check_hf("metaspace");
}

/// A model directory with several tokenizer files: Mistral's own file wins over
/// `tokenizer.json`, which wins over a bare `tokenizer.model`.
#[test]
fn model_directory_prefers_mistral_files() {
    let dir = tempfile::tempdir().unwrap();
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encode/hf_bytelevel");
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(hf.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::copy(
        cache::fetched_tokenizer("tokenizer.model.v1").unwrap(),
        dir.path().join("tokenizer.model"),
    )
    .unwrap();
    let tok = Tokenizer::from_file(dir.path()).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::Hf);
    assert!(tok.chat_template().is_some());

    std::fs::copy(
        cache::fetched_tokenizer("mistral_instruct_tokenizer_240323.model.v3").unwrap(),
        dir.path().join("tokenizer.model.v3"),
    )
    .unwrap();
    let tok = Tokenizer::from_file(dir.path()).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::SentencePiece { version: 3 });

    std::fs::copy(
        cache::fetched_tokenizer("tekken_240911.json").unwrap(),
        dir.path().join("tekken.json"),
    )
    .unwrap();
    let tok = Tokenizer::from_file(dir.path()).unwrap();
    assert_eq!(
        tok.kind(),
        TokenizerKind::Tekken {
            version: "v3".into()
        }
    );
}
