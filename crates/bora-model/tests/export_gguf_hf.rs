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
use bora_formats::safetensors::{write_safetensors, Dtype, TensorData};
use bora_model::export::gguf::write_gguf;
use bora_model::export::{model_tensors, tensor_shape};
use bora_model::{LoadOptions, Lora, LoraSpec, LoraTarget, Model, ModelConfig, Rng};
use bora_tokenizer::Tokenizer;

const V3: &str = "mistral_instruct_tokenizer_240323.model.v3";
const TEMPLATE: &str =
    "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}";

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

fn load(path: &Path) -> Model {
    Model::load(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// A Mistral checkpoint directory with random weights (uniform, norms near 1) and Mistral
/// 7B v0.3's SentencePiece model. HF: `config.json`, `model.safetensors`, the tokenizer as
/// `tokenizer.model` (as the HF repository ships it) and a `tokenizer_config.json` with a
/// chat template. Consolidated: `params.json`, `consolidated.safetensors` and
/// `tokenizer.model.v3`, with heads wider than hidden size / heads (as in Nemo).
fn write_mistral_dir(dir: &Path, scheme: Scheme) {
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
            "num_hidden_layers": 2,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0,
            "sliding_window": null,
            "tie_word_embeddings": false,
            "vocab_size": 32768,
        });
        let path = dir.join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        ModelConfig::from_hf_config(&path).unwrap()
    } else {
        let params = serde_json::json!({
            "dim": 32,
            "n_layers": 2,
            "head_dim": 16,
            "hidden_dim": 64,
            "n_heads": 4,
            "n_kv_heads": 2,
            "norm_eps": 1e-5,
            "vocab_size": 32768,
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
    let (weights, tokenizer) = if scheme == Scheme::Hf {
        ("model.safetensors", "tokenizer.model")
    } else {
        ("consolidated.safetensors", "tokenizer.model.v3")
    };
    write_safetensors(dir.join(weights), &tensors, None).unwrap();
    std::fs::copy(cache::fetched_tokenizer(V3).unwrap(), dir.join(tokenizer)).unwrap();
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
    write_mistral_dir(&base, scheme);
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
