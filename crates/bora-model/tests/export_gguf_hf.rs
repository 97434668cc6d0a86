//! Merged GGUF exports from an HF base (`bora_model::export::gguf::write_gguf`), written as
//! llama.cpp's `convert_hf_to_gguf.py` writes a Mistral checkpoint: a tiny random Mistral
//! whose vocabulary is Mistral 7B v0.3's real SentencePiece tokenizer (32768 pieces, fetched
//! by `scripts/fetch-tokenizers.sh`), with a non-zero adapter merged in. The export's own
//! check proves the weights (reloaded logits against the in-memory adapted model); here the
//! embedded vocabulary is proven against the source tokenizer, and models the `llama`
//! architecture cannot express are refused.

use std::path::{Path, PathBuf};

use bora_formats::cache;
use bora_formats::gguf::GgufFile;
use bora_formats::names::Scheme;
use bora_formats::quant::GgmlType;
use bora_model::export::gguf::write_gguf;
use bora_tokenizer::Tokenizer;

mod common;
use common::{load, random_lora, write_mistral_dir};

const V3: &str = "mistral_instruct_tokenizer_240323.model.v3";
const TEMPLATE: &str =
    "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}";

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

/// Multilingual text, whitespace runs, digits, emoji (byte fallback) and control tokens.
const CORPUS: [&str; 9] = [
    "Hello world",
    "  leading spaces and\ttabs\nnew lines",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Привет, как дела?",
    "日本語のテキストと中文文本",
    "مرحبا بالعالم",
    "Emoji 🤖🎉 and 3.14159 numbers 2026",
    "[INST] What is 2+2? [/INST]",
    "ünïcödé ßtraße ǅ",
];

/// Exports `scheme`'s tiny Mistral merged with a random adapter as f32 and q8_0, each
/// verified by the export itself, and checks the written metadata and that the embedded
/// vocabulary tokenizes the corpus as the source SentencePiece model does.
fn check_export(scheme: Scheme) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tiny-mistral");
    std::fs::create_dir(&base).unwrap();
    let tokenizer = std::fs::read(cache::fetched_tokenizer(V3).unwrap()).unwrap();
    let files = if scheme == Scheme::Hf {
        let tok_config = serde_json::json!({
            "add_bos_token": true,
            "add_eos_token": false,
            "chat_template": TEMPLATE,
        });
        vec![
            ("tokenizer.model", tokenizer),
            ("tokenizer_config.json", tok_config.to_string().into_bytes()),
        ]
    } else {
        vec![("tokenizer.model.v3", tokenizer)]
    };
    write_mistral_dir(&base, scheme, 32768, &files);
    let model = load(&base);
    let lora = random_lora(&model);
    let source = Tokenizer::from_file(&cache::fetched_tokenizer(V3).unwrap()).unwrap();

    for dtype in [GgmlType::F32, GgmlType::Q8_0] {
        let out = dir.path().join(format!("merged-{}.gguf", dtype.name()));
        let export = write_gguf(&model, Some(&lora), dtype, &out, true)
            .unwrap_or_else(|e| panic!("{dtype}: {e}"));
        let v = export.verification.expect("verified");
        assert!(
            v.max_error <= v.tolerance && v.adapter_effect > v.max_error,
            "{dtype}: {v:?}"
        );

        let gguf = GgufFile::open(&out).unwrap();
        assert_eq!(gguf.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(gguf.get_str("general.name").unwrap(), "tiny-mistral");
        assert_eq!(gguf.get_str("tokenizer.ggml.model").unwrap(), "llama");
        let template = gguf.opt_str("tokenizer.chat_template").unwrap();
        assert_eq!(template, (scheme == Scheme::Hf).then_some(TEMPLATE));
        assert_eq!(
            gguf.opt_bool("tokenizer.ggml.add_bos_token").unwrap(),
            Some(true)
        );
        assert_eq!(
            gguf.opt_bool("tokenizer.ggml.add_eos_token").unwrap(),
            Some(false)
        );
        assert_eq!(
            gguf.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
            32768
        );
        // Written only where head_dim × heads differs from the hidden size (as in Nemo):
        // here in the consolidated model (16 × 4 against 32).
        let key_length = gguf
            .get("llama.attention.key_length")
            .and_then(|v| v.as_u64());
        assert_eq!(key_length, (scheme == Scheme::Consolidated).then_some(16));
        assert_eq!(
            gguf.tensor("blk.0.attn_q.weight").unwrap().ty,
            dtype,
            "{dtype}"
        );
        assert_eq!(
            gguf.tensor("blk.0.attn_norm.weight").unwrap().ty,
            GgmlType::F32
        );

        let reloaded = Tokenizer::from_file(&out).unwrap();
        assert_eq!(reloaded.vocab_size(), source.vocab_size());
        assert_eq!(
            (reloaded.bos_id(), reloaded.eos_id()),
            (source.bos_id(), source.eos_id())
        );
        for text in CORPUS {
            assert_eq!(reloaded.encode(text), source.encode(text), "{text:?}");
            let special = reloaded.encode_with_special(text);
            assert_eq!(special, source.encode_with_special(text), "{text:?}");
            assert_eq!(
                reloaded.decode(&special),
                source.decode(&special),
                "{text:?}"
            );
        }
    }
}

#[test]
fn merged_gguf_from_an_hf_mistral_carries_the_adapter_and_the_sentencepiece_vocabulary() {
    check_export(Scheme::Hf);
}

#[test]
fn merged_gguf_from_a_consolidated_mistral_carries_the_adapter_and_the_vocabulary() {
    check_export(Scheme::Consolidated);
}

#[test]
fn features_the_llama_architecture_cannot_express_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (fixture, what) in [
        ("ministral3", "scales queries by position"),
        ("ministral8b", "different sliding windows"),
    ] {
        let model = load(&tiny(fixture));
        let out = dir.path().join(format!("{fixture}.gguf"));
        let err = write_gguf(&model, None, GgmlType::F32, &out, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{fixture}: {err}");
        assert!(!out.exists(), "{fixture}: a refused export wrote {out:?}");
    }
}
