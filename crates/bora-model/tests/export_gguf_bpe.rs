//! Merged GGUF exports from a base whose vocabulary is Tekken (`tekken.json`, as in Mistral
//! Nemo, Ministral 8B and Small 3), written as llama.cpp writes it: a `gpt2` byte-level
//! vocabulary with `pre = "tekken"` and merges derived from the ranks. A tiny random Mistral
//! with the real Tekken file of Nemo (131072 ids, fetched by `scripts/fetch-tokenizers.sh`)
//! and a non-zero adapter: the export's own check proves the weights; here the embedded
//! vocabulary, read back by bora's GGUF loader, must tokenize a multilingual corpus exactly as
//! the source Tekken tokenizer does.

use std::path::Path;

use bora_formats::cache;
use bora_formats::gguf::GgufFile;
use bora_formats::names::Scheme;
use bora_formats::quant::GgmlType;
use bora_formats::safetensors::{write_safetensors, Dtype, TensorData};
use bora_model::export::gguf::write_gguf;
use bora_model::export::{model_tensors, tensor_shape};
use bora_model::{LoadOptions, Lora, LoraSpec, LoraTarget, Model, ModelConfig, Rng};
use bora_tokenizer::{Tokenizer, TokenizerKind};

const TEKKEN: &str = "tekken_240911.json";
const TEMPLATE: &str =
    "{{ bos_token }}{% for m in messages %}[INST]{{ m['content'] }}[/INST]{% endfor %}";

fn load(path: &Path) -> Model {
    Model::load(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// A Mistral checkpoint directory with random weights (uniform, norms near 1) and the Tekken
/// file as `tekken.json`. HF: `config.json`, `model.safetensors` and a
/// `tokenizer_config.json` with a chat template; consolidated: `params.json` and
/// `consolidated.safetensors`, heads wider than hidden size / heads (as in Nemo).
fn write_mistral_dir(dir: &Path, scheme: Scheme, tekken: &Path) {
    let c = if scheme == Scheme::Hf {
        let config = serde_json::json!({
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "head_dim": 8,
            "hidden_act": "silu",
            "hidden_size": 32,
            "intermediate_size": 64,
            "max_position_embeddings": 4096,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0,
            "sliding_window": null,
            "tie_word_embeddings": false,
            "vocab_size": 131072,
        });
        let path = dir.join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        ModelConfig::from_hf_config(&path).unwrap()
    } else {
        let params = serde_json::json!({
            "dim": 32,
            "n_layers": 1,
            "head_dim": 16,
            "hidden_dim": 64,
            "n_heads": 4,
            "n_kv_heads": 2,
            "norm_eps": 1e-5,
            "vocab_size": 131072,
            "rope_theta": 1000000.0,
        });
        let path = dir.join("params.json");
        std::fs::write(&path, params.to_string()).unwrap();
        ModelConfig::from_params_json(&path).unwrap()
    };
    let mut rng = Rng::new(7);
    let tensors: Vec<(String, TensorData)> = model_tensors(&c)
        .into_iter()
        .map(|name| {
            let shape = tensor_shape(&c, name);
            let n: usize = shape.iter().product();
            let (center, spread) = if shape.len() == 1 {
                (1.0, 0.1)
            } else {
                (0.0, 1.0 / (shape[1] as f64).sqrt())
            };
            let values: Vec<f32> = (0..n)
                .map(|_| (center + (rng.next_f64() * 2.0 - 1.0) * spread) as f32)
                .collect();
            let data = TensorData::from_f32(Dtype::F32, shape, &values).unwrap();
            (name.format(scheme), data)
        })
        .collect();
    let weights = if scheme == Scheme::Hf {
        "model.safetensors"
    } else {
        "consolidated.safetensors"
    };
    write_safetensors(dir.join(weights), &tensors, None).unwrap();
    std::fs::copy(tekken, dir.join("tekken.json")).unwrap();
    if scheme == Scheme::Hf {
        let tok_config = serde_json::json!({
            "add_bos_token": true,
            "add_eos_token": false,
            "chat_template": TEMPLATE,
        });
        std::fs::write(dir.join("tokenizer_config.json"), tok_config.to_string()).unwrap();
    }
}

/// Every projection adapted, A uniform in ±1/√in, B uniform in ±0.2: large enough that
/// an export which lost the adapter fails the check.
fn random_lora(model: &Model) -> Lora {
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        targets: LoraTarget::ALL.to_vec(),
    };
    let mut lora = Lora::zeros(&model.config, &spec);
    let mut rng = Rng::new(11);
    for (name, shape, data) in lora.tensors_mut() {
        let bound = if name.ends_with("lora_A.weight") {
            1.0 / (shape[1] as f64).sqrt()
        } else {
            0.2
        };
        for x in data.iter_mut() {
            *x = ((rng.next_f64() * 2.0 - 1.0) * bound) as f32;
        }
    }
    lora
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

/// Exports `scheme`'s tiny Mistral merged with a random adapter as f32 and q8_0, each
/// verified by the export itself, and checks the written metadata and that the embedded
/// vocabulary tokenizes the corpus as the source Tekken file does.
fn check_export(scheme: Scheme) {
    let tekken = cache::fetched_tokenizer(TEKKEN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tiny-nemo");
    std::fs::create_dir(&base).unwrap();
    write_mistral_dir(&base, scheme, &tekken);
    let model = load(&base);
    let lora = random_lora(&model);
    let source = Tokenizer::from_file(&tekken).unwrap();

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
        assert_eq!(gguf.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(gguf.get_str("tokenizer.ggml.pre").unwrap(), "tekken");
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
        let id = |key: &str| gguf.get(key).and_then(|v| v.as_u64());
        assert_eq!(id("tokenizer.ggml.unknown_token_id"), Some(0));
        assert_eq!(id("tokenizer.ggml.padding_token_id"), Some(11));
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens.len(), 131072);
        assert_eq!(tokens[1000], "\u{0100}", "rank 0 is the byte 0x00");
        let types = gguf.get_i32_array("tokenizer.ggml.token_type").unwrap();
        assert!(types[..1000].iter().all(|&t| t == 3));
        assert!(types[1000..].iter().all(|&t| t == 1));
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

#[test]
fn merged_gguf_from_an_hf_nemo_carries_the_adapter_and_the_tekken_vocabulary() {
    check_export(Scheme::Hf);
}

#[test]
fn merged_gguf_from_a_consolidated_nemo_carries_the_adapter_and_the_tekken_vocabulary() {
    check_export(Scheme::Consolidated);
}

/// A Tekken file whose regex is not llama.cpp's `tekken` one would be split differently by
/// every GGUF reader, so it is refused before anything is written.
#[test]
fn a_tekken_file_with_another_pattern_is_refused() {
    let tekken = cache::fetched_tokenizer(TEKKEN).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&tekken).unwrap()).unwrap();
    json["config"]["pattern"] = r"\s+|\S+".into();
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("tekken-other.json");
    std::fs::write(&changed, json.to_string()).unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    write_mistral_dir(&base, Scheme::Consolidated, &changed);
    let model = load(&base);
    let out = dir.path().join("out.gguf");
    let err = write_gguf(&model, None, GgmlType::F32, &out, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.pattern"), "{err}");
    assert!(!out.exists());
}

/// An HF repository whose only vocabulary is `tokenizer.json` is refused by name.
#[test]
fn a_tokenizer_json_only_vocabulary_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    write_mistral_dir(
        &base,
        Scheme::Hf,
        &cache::fetched_tokenizer(TEKKEN).unwrap(),
    );
    std::fs::remove_file(base.join("tekken.json")).unwrap();
    std::fs::write(base.join("tokenizer.json"), "{}").unwrap();
    let model = Model::load(&base, &LoadOptions::default()).unwrap();
    let out = dir.path().join("out.gguf");
    let err = write_gguf(&model, None, GgmlType::F32, &out, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    assert!(!out.exists());
}
