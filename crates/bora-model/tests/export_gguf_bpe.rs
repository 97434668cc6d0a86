//! Merged GGUF exports from bases whose vocabulary is byte-level BPE, written as llama.cpp
//! writes them: `tokenizer.ggml.model = gpt2` with the `pre` name llama.cpp gives the
//! pre-tokenizer. A Tekken file (`tekken.json`, as in Mistral Nemo, Ministral 8B and Small 3:
//! Nemo's real file, 131072 ids, fetched by `scripts/fetch-tokenizers.sh`) becomes byte-level
//! tokens with merges derived from the ranks; an HF `tokenizer.json` (Tekken's, as the HF
//! Nemo repository ships it, and SmolLM2's) is carried over. Each base is a tiny random
//! Mistral with a non-zero adapter: the export's own check proves the weights; here the
//! embedded vocabulary, read back by bora's GGUF loader, must tokenize a multilingual corpus
//! exactly as the source tokenizer does.

use bora_formats::cache;
use bora_formats::gguf::GgufFile;
use bora_formats::names::Scheme;
use bora_formats::quant::GgmlType;
use bora_model::export::gguf::write_gguf;
use bora_model::export::hf::tokenizer_from_gguf;
use bora_tokenizer::{TekkenVocab, Tokenizer, TokenizerKind, TEKKEN_PATTERN};
use serde_json::{json, Value};

mod common;
use common::{load, random_lora, write_mistral_dir};

const TEKKEN: &str = "tekken_240911.json";
const TEMPLATE: &str =
    "{{ bos_token }}{% for m in messages %}[INST]{{ m['content'] }}[/INST]{% endfor %}";

fn tekken_bytes() -> Vec<u8> {
    std::fs::read(cache::fetched_tokenizer(TEKKEN).unwrap()).unwrap()
}

/// The `tokenizer_config.json` of the HF bases: special tokens, BOS without EOS, a template.
fn tokenizer_config(bos: &str, eos: &str, unk: Option<&str>) -> Vec<u8> {
    let mut c = json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": bos,
        "eos_token": eos,
        "chat_template": TEMPLATE,
    });
    if let Some(u) = unk {
        c["unk_token"] = json!({"content": u, "special": true});
    }
    c.to_string().into_bytes()
}

/// Tekken as an HF `tokenizer.json`, shaped as transformers' TikToken converter builds it
/// for the HF Nemo repository: the ranks as a byte-level BPE that takes whole words first,
/// Tekken's regex split before a regex-free `ByteLevel`, the control tokens added.
fn tekken_tokenizer_json() -> Vec<u8> {
    let v = TekkenVocab::from_file(&cache::fetched_tokenizer(TEKKEN).unwrap()).unwrap();
    let specials = v.token_types.iter().filter(|&&t| t == 3).count();
    let vocab: serde_json::Map<String, Value> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let added: Vec<Value> = v.tokens[..specials]
        .iter()
        .enumerate()
        .map(|(id, t)| json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let merges: Vec<Value> = v
        .merges
        .iter()
        .map(|m| {
            let (l, r) = m.split_once(' ').unwrap();
            json!([l, r])
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": TEKKEN_PATTERN}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
            "vocab": vocab, "merges": merges,
        },
    })
    .to_string()
    .into_bytes()
}

/// SmolLM2's `tokenizer.json` and `tokenizer_config.json`, as bora's HF export writes them
/// from the default model's GGUF vocabulary (49152 ids, `pre = smollm`).
fn smollm_files() -> Vec<(&'static str, Vec<u8>)> {
    let gguf = GgufFile::open(cache::fetched_default_model().unwrap()).unwrap();
    let (tokenizer, config) = tokenizer_from_gguf(&gguf).unwrap().unwrap();
    vec![
        ("tokenizer.json", tokenizer.to_string().into_bytes()),
        ("tokenizer_config.json", config.to_string().into_bytes()),
    ]
}

/// Multilingual text, whitespace runs and line breaks, digits, emoji, code and control tokens.
const CORPUS: [&str; 14] = [
    "Hello world",
    "  leading spaces and\ttabs\nnew lines\r\n\r\n   trailing   ",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Привет, как дела? Ёлка.",
    "日本語のテキストと中文文本，한국어 텍스트",
    "مرحبا بالعالم — שלום עולם",
    "हिन्दी पाठ और ไทย ภาษา",
    "Emoji 🤖🎉👩‍👩‍👧 and 3.14159 numbers 2026 1,000,000",
    "[INST] What is 2+2? [/INST]",
    "<s>[INST]Hi[/INST]Hello</s>",
    "ünïcödé ßtraße ǅ ﬁ Ⅻ",
    "fn main() {\n    let x: Vec<u8> = vec![0x1f, 0o17];\n    println!(\"{x:?}\");\n}\n",
    "def f(a, b):\n\treturn a**2 // b  # comment\n\n\n",
    "I'm sure they'll've done it; it's JSON: {\"k\": [1, 2.5e-3, null]}",
];

/// Exports a tiny Mistral with the tokenizer `files` merged with a random adapter as each
/// of `dtypes`, each verified by the export itself, and checks the written metadata and that
/// the embedded vocabulary (`pre`) tokenizes the corpus as `source` does.
fn check_export(
    scheme: Scheme,
    vocab: usize,
    files: &[(&str, Vec<u8>)],
    source: &Tokenizer,
    pre: &str,
    dtypes: &[GgmlType],
) {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tiny");
    std::fs::create_dir(&base).unwrap();
    write_mistral_dir(&base, scheme, vocab, files);
    let model = load(&base);
    let lora = random_lora(&model);
    let has_config = files.iter().any(|(n, _)| *n == "tokenizer_config.json");

    for &dtype in dtypes {
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
        assert_eq!(gguf.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(gguf.get_str("tokenizer.ggml.pre").unwrap(), pre);
        if has_config {
            let template = gguf.opt_str("tokenizer.chat_template").unwrap();
            assert!(template.is_some());
        }
        assert_eq!(
            gguf.opt_bool("tokenizer.ggml.add_eos_token").unwrap(),
            Some(false)
        );
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens.len(), vocab);
        if pre == "tekken" {
            let id = |key: &str| gguf.get(key).and_then(|v| v.as_u64());
            assert_eq!(id("tokenizer.ggml.unknown_token_id"), Some(0));
            assert_eq!(tokens[1000], "\u{0100}", "rank 0 is the byte 0x00");
            let types = gguf.get_i32_array("tokenizer.ggml.token_type").unwrap();
            assert!(types[..1000].iter().all(|&t| t == 3));
            assert!(types[1000..].iter().all(|&t| t == 1));
            assert_eq!(
                gguf.opt_bool("tokenizer.ggml.add_bos_token").unwrap(),
                Some(true)
            );
        }
        assert_eq!(
            gguf.tensor("blk.0.attn_q.weight").unwrap().ty,
            dtype,
            "{dtype}"
        );

        let reloaded = Tokenizer::from_file(&out).unwrap();
        assert_eq!(reloaded.kind(), TokenizerKind::GgufBpe);
        assert_eq!(reloaded.vocab_size(), source.vocab_size());
        assert_eq!(
            (reloaded.bos_id(), reloaded.eos_id()),
            (source.bos_id(), source.eos_id())
        );
        for text in CORPUS {
            let plain = source.encode(text);
            assert_eq!(reloaded.encode(text), plain, "{text:?}");
            assert_eq!(reloaded.decode(&plain), source.decode(&plain), "{text:?}");
            assert_eq!(reloaded.decode(&plain), text, "{text:?}");
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

fn tekken_source() -> Tokenizer {
    Tokenizer::from_file(&cache::fetched_tokenizer(TEKKEN).unwrap()).unwrap()
}

#[test]
fn merged_gguf_from_a_consolidated_nemo_carries_the_adapter_and_the_tekken_vocabulary() {
    let files = [("tekken.json", tekken_bytes())];
    let (f32, q8) = (GgmlType::F32, GgmlType::Q8_0);
    let source = tekken_source();
    check_export(
        Scheme::Consolidated,
        131072,
        &files,
        &source,
        "tekken",
        &[f32, q8],
    );
}

#[test]
fn merged_gguf_from_an_hf_nemo_with_tekken_json_writes_the_tekken_vocabulary() {
    let files = [
        ("tekken.json", tekken_bytes()),
        (
            "tokenizer_config.json",
            tokenizer_config("<s>", "</s>", Some("<unk>")),
        ),
    ];
    let source = tekken_source();
    check_export(
        Scheme::Hf,
        131072,
        &files,
        &source,
        "tekken",
        &[GgmlType::F32],
    );
}

/// The HF Nemo repository's `tokenizer.json` (no `tekken.json`): the same vocabulary as
/// Tekken's own file, checked against both the Tekken tokenizer and the `tokenizers` crate's
/// reading of the JSON.
#[test]
fn merged_gguf_from_an_hf_nemo_tokenizer_json_writes_the_tekken_vocabulary() {
    let files = [
        ("tokenizer.json", tekken_tokenizer_json()),
        (
            "tokenizer_config.json",
            tokenizer_config("<s>", "</s>", Some("<unk>")),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in &files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let hf = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    let source = tekken_source();
    for text in CORPUS {
        assert_eq!(hf.encode(text), source.encode(text), "{text:?}");
    }
    check_export(
        Scheme::Hf,
        131072,
        &files,
        &source,
        "tekken",
        &[GgmlType::F32],
    );
    check_export(Scheme::Hf, 131072, &files, &hf, "tekken", &[GgmlType::F32]);
}

/// SmolLM2's vocabulary (digits split singly before GPT-2's regex), and the same with GPT-2's
/// `ByteLevel` alone, each against the `tokenizers` crate's reading of its `tokenizer.json`.
#[test]
fn merged_gguf_from_an_hf_base_with_smollm_or_gpt2_tokenizer_json_writes_its_vocabulary() {
    let smollm = smollm_files();
    let mut json: Value = serde_json::from_slice(&smollm[0].1).unwrap();
    json["pre_tokenizer"] = json["pre_tokenizer"]["pretokenizers"][1].clone();
    let mut gpt2 = smollm.clone();
    gpt2[0].1 = json.to_string().into_bytes();
    for (files, pre) in [(smollm, "smollm"), (gpt2, "gpt-2")] {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in &files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let source = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
        check_export(Scheme::Hf, 49152, &files, &source, pre, &[GgmlType::F32]);
    }
}

/// A Tekken file whose regex is not llama.cpp's `tekken` one would be split differently by
/// every GGUF reader, so it is refused before anything is written.
#[test]
fn a_tekken_file_with_another_pattern_is_refused() {
    let mut json: Value = serde_json::from_slice(&tekken_bytes()).unwrap();
    json["config"]["pattern"] = r"\s+|\S+".into();
    let files = [("tekken.json", json.to_string().into_bytes())];
    let err = refusal(Scheme::Consolidated, 131072, &files);
    assert!(err.contains("config.pattern"), "{err}");
}

/// A `tokenizer.json` whose pre-tokenizer llama.cpp and bora do not name alike is refused.
#[test]
fn a_tokenizer_json_with_another_pre_tokenizer_is_refused() {
    let mut files = smollm_files();
    let mut json: Value = serde_json::from_slice(&files[0].1).unwrap();
    json["pre_tokenizer"] =
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    files[0].1 = json.to_string().into_bytes();
    let err = refusal(Scheme::Hf, 49152, &files);
    assert!(err.contains("pre-tokenizer"), "{err}");
}

/// The error of exporting a tiny Mistral with the tokenizer `files`; nothing may be written.
fn refusal(scheme: Scheme, vocab: usize, files: &[(&str, Vec<u8>)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    write_mistral_dir(&base, scheme, vocab, files);
    let model = load(&base);
    let out = dir.path().join("out.gguf");
    let err = write_gguf(&model, None, GgmlType::F32, &out, true)
        .unwrap_err()
        .to_string();
    assert!(!out.exists());
    err
}
