//! The `merged` export of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, tied
//! embeddings, byte-level BPE vocabulary) with an adapter: a bf16 HF directory that bora
//! reloads within bf16's tolerance, with the embeddings still tied and a `tokenizer.json`
//! written from the GGUF vocabulary that tokenizes like the GGUF itself. transformers loading
//! the same export is `scripts/check_exports.py`.
//!
//! Needs the model in the cache (`scripts/fetch-default-model.sh`).

use bora_formats::cache;
use bora_formats::safetensors::Safetensors;
use bora_model::export::hf::{write_merged, MergedOptions};
use bora_model::export::FloatType;
use bora_model::{LoadOptions, Lora, LoraSpec, LoraTarget, Model};
use bora_tokenizer::Tokenizer;

const CORPUS: &str = "Hello world! The quick brown fox, 1234567 and 3.14.\n  Indented\tcode();\n\
     Unicode: café, 日本語, emoji 🤖. <|im_start|> stays text here.\n";

#[test]
fn merged_default_model_reloads_with_tied_embeddings_and_its_tokenizer() {
    let gguf = cache::fetched_default_model().unwrap();
    let model = Model::load(&gguf, &LoadOptions::default()).unwrap();
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        targets: vec![
            LoraTarget::Q,
            LoraTarget::K,
            LoraTarget::V,
            LoraTarget::Down,
        ],
    };
    let mut lora = Lora::zeros(&model.config, &spec);
    let mut state = 7u64;
    for (_, _, data) in lora.tensors_mut() {
        for x in data.iter_mut() {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            *x = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("merged");
    let export = write_merged(&model, Some(&lora), &dest, &MergedOptions::default()).unwrap();
    let v = export.verification.unwrap();
    assert!(v.max_error < FloatType::Bf16.tolerance(), "{v:?}");
    assert!(v.adapter_effect > v.max_error, "{v:?}");
    assert!(export.warnings.is_empty(), "{:?}", export.warnings);

    let st = Safetensors::open(&dest).unwrap();
    assert!(st.tensor("lm_head.weight").is_none());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["tie_word_embeddings"], true);

    let ours = Tokenizer::from_file(&dest.join("tokenizer.json")).unwrap();
    let reference = Tokenizer::from_file(&gguf).unwrap();
    assert_eq!(ours.encode(CORPUS), reference.encode(CORPUS));
    assert_eq!(
        ours.encode_with_special("<|im_start|>user\nHi<|im_end|>"),
        reference.encode_with_special("<|im_start|>user\nHi<|im_end|>")
    );
    let tok_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        tok_config["chat_template"].as_str(),
        reference.chat_template()
    );
}
