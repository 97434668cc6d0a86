//! Helpers shared by the export tests that build tiny Mistral checkpoints with real
//! vocabularies.

use std::path::Path;

use bora_formats::names::Scheme;
use bora_formats::safetensors::{write_safetensors, Dtype, TensorData};
use bora_model::export::{model_tensors, tensor_shape};
use bora_model::{LoadOptions, Lora, LoraSpec, LoraTarget, Model, ModelConfig, Rng};

pub fn load(path: &Path) -> Model {
    Model::load(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// A Mistral checkpoint directory with random weights (uniform, norms near 1), `vocab`
/// embeddings and the tokenizer `files`. HF: `config.json` and `model.safetensors`;
/// consolidated: `params.json` and `consolidated.safetensors`, heads wider than hidden size /
/// heads (as in Nemo).
pub fn write_mistral_dir(dir: &Path, scheme: Scheme, vocab: usize, files: &[(&str, Vec<u8>)]) {
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
            "vocab_size": vocab,
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
            "vocab_size": vocab,
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
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Every projection adapted, A uniform in ±1/√in, B uniform in ±0.2: large enough that
/// an export which lost the adapter fails the check.
pub fn random_lora(model: &Model) -> Lora {
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
