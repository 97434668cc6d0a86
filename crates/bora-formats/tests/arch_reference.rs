//! ArchConfig against the values transformers resolves for config.json files it saved,
//! the values vLLM's params.json adapter derives, and the default model's GGUF metadata.

use std::path::PathBuf;

use bora_formats::arch::{ArchConfig, Llama4Scaling, RopeScaling};
use bora_formats::cache;
use bora_formats::gguf::GgufFile;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn opt_u32(v: &Value) -> Option<u32> {
    v.as_u64().map(|x| x as u32)
}

fn expected_rope(r: &Value) -> RopeScaling {
    let f = |k: &str| r[k].as_f64();
    let u = |k: &str| r[k].as_u64().map(|x| x as usize);
    match r["rope_type"].as_str().unwrap() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: f("factor").unwrap(),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor").unwrap(),
            low_freq_factor: f("low_freq_factor").unwrap(),
            high_freq_factor: f("high_freq_factor").unwrap(),
            original_max_position_embeddings: u("original_max_position_embeddings").unwrap(),
        },
        "yarn" => RopeScaling::Yarn {
            factor: f("factor").unwrap(),
            original_max_position_embeddings: u("original_max_position_embeddings").unwrap(),
            beta_fast: f("beta_fast").unwrap_or(32.0),
            beta_slow: f("beta_slow").unwrap_or(1.0),
            mscale: f("mscale"),
            mscale_all_dim: f("mscale_all_dim"),
            attention_factor: f("attention_factor"),
            truncate: r["truncate"].as_bool().unwrap_or(true),
        },
        t => panic!("rope type {t}"),
    }
}

#[test]
fn configs_resolve_like_the_reference_loaders() {
    let expected = json("arch/expected.json");
    let cases = expected.as_object().unwrap();
    assert!(cases.len() >= 12);
    for (name, e) in cases {
        let cfg = ArchConfig::from_dir(fixtures().join("arch").join(name))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let u = |k: &str| e[k].as_u64().unwrap() as usize;
        assert_eq!(cfg.model_type, e["model_type"].as_str().unwrap(), "{name}");
        assert_eq!(cfg.vocab_size, u("vocab_size"), "{name}");
        assert_eq!(cfg.hidden_size, u("hidden_size"), "{name}");
        assert_eq!(cfg.intermediate_size, u("intermediate_size"), "{name}");
        assert_eq!(cfg.num_layers, u("num_layers"), "{name}");
        assert_eq!(cfg.num_heads, u("num_heads"), "{name}");
        assert_eq!(cfg.num_kv_heads, u("num_kv_heads"), "{name}");
        assert_eq!(cfg.head_dim, u("head_dim"), "{name}");
        assert_eq!(
            cfg.rms_norm_eps,
            e["rms_norm_eps"].as_f64().unwrap(),
            "{name}"
        );
        assert_eq!(
            cfg.max_position_embeddings,
            u("max_position_embeddings"),
            "{name}"
        );
        let rope = &e["rope"];
        assert_eq!(
            cfg.rope_theta,
            rope["rope_theta"].as_f64().unwrap(),
            "{name}"
        );
        assert_eq!(cfg.rope_scaling, expected_rope(rope), "{name}");
        let l4 = rope["llama_4_scaling_beta"]
            .as_f64()
            .map(|beta| Llama4Scaling {
                beta,
                original_max_position_embeddings: rope["llama_4_original_max_position_embeddings"]
                    .as_u64()
                    .or(rope["original_max_position_embeddings"].as_u64())
                    .unwrap() as usize,
            });
        assert_eq!(cfg.llama_4_scaling, l4, "{name}");
        let windows: Vec<Option<usize>> = e["sliding_window"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_u64().map(|w| w as usize))
            .collect();
        assert_eq!(cfg.sliding_window, windows, "{name}");
        assert_eq!(
            cfg.tie_word_embeddings,
            e["tie_word_embeddings"].as_bool().unwrap(),
            "{name}"
        );
        assert_eq!(cfg.bos_token_id, opt_u32(&e["bos_token_id"]), "{name}");
        assert_eq!(cfg.pad_token_id, opt_u32(&e["pad_token_id"]), "{name}");
        let eos: Vec<u32> = e["eos_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(cfg.eos_token_ids, eos, "{name}");
    }
}

#[test]
fn default_model_gguf_metadata() {
    let path = cache::fetched_default_model().unwrap();
    let facts = json("smollm2_facts.json");
    let meta = |key: &str| -> Value {
        facts["metadata"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["key"] == key)
            .unwrap()["value"]
            .clone()
    };
    let n = |key: &str| meta(key).as_u64().unwrap() as usize;
    let cfg = ArchConfig::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(
        cfg.model_type,
        meta("general.architecture").as_str().unwrap()
    );
    assert_eq!(cfg.vocab_size, n("llama.vocab_size"));
    assert_eq!(cfg.hidden_size, n("llama.embedding_length"));
    assert_eq!(cfg.intermediate_size, n("llama.feed_forward_length"));
    assert_eq!(cfg.num_layers, n("llama.block_count"));
    assert_eq!(cfg.num_heads, n("llama.attention.head_count"));
    assert_eq!(cfg.num_kv_heads, n("llama.attention.head_count_kv"));
    assert_eq!(cfg.head_dim, n("llama.rope.dimension_count"));
    assert_eq!(cfg.max_position_embeddings, n("llama.context_length"));
    assert_eq!(
        cfg.rope_theta,
        meta("llama.rope.freq_base").as_f64().unwrap()
    );
    assert_eq!(
        cfg.rms_norm_eps,
        meta("llama.attention.layer_norm_rms_epsilon")
            .as_f64()
            .unwrap()
    );
    assert_eq!(cfg.rope_scaling, RopeScaling::None);
    assert_eq!(cfg.sliding_window, vec![None; cfg.num_layers]);
    let has_output = facts["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "output.weight");
    assert_eq!(cfg.tie_word_embeddings, !has_output);
    assert_eq!(
        cfg.bos_token_id,
        Some(n("tokenizer.ggml.bos_token_id") as u32)
    );
    assert_eq!(
        cfg.eos_token_ids,
        vec![n("tokenizer.ggml.eos_token_id") as u32]
    );
    assert_eq!(
        cfg.pad_token_id,
        Some(n("tokenizer.ggml.padding_token_id") as u32)
    );
}

fn error_for(file: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file), text).unwrap();
    let e = ArchConfig::from_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains(file), "error does not name {file}: {e}");
    e
}

#[test]
fn bad_configs_are_clear_errors() {
    let base = r#""vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2"#;
    let e = error_for(
        "config.json",
        r#"{"model_type": "mistral", "vocab_size": 8}"#,
    );
    assert!(e.contains("hidden_size"), "{e}");
    let e = error_for(
        "config.json",
        &format!(r#"{{"model_type": "qwen2", {base}}}"#),
    );
    assert!(e.contains("qwen2"), "{e}");
    let e = error_for(
        "config.json",
        &format!(r#"{{"model_type": "ministral", {base}, "layer_types": ["full_attention"]}}"#),
    );
    assert!(e.contains("layer_types"), "{e}");
    let e = error_for(
        "config.json",
        &format!(r#"{{"model_type": "llama", {base}, "num_key_value_heads": 3}}"#),
    );
    assert!(e.contains("KV heads"), "{e}");
    let e = error_for(
        "config.json",
        &format!(
            r#"{{"model_type": "llama", {base}, "rope_scaling": {{"type": "dynamic", "factor": 2}}}}"#
        ),
    );
    assert!(e.contains("dynamic"), "{e}");
    let e = error_for("config.json", r#"{"model_type": "mistral", "#);
    assert!(e.contains("invalid JSON"), "{e}");
    let e = error_for("config.json", r#"{"model_type": "mistral3"}"#);
    assert!(e.contains("text_config"), "{e}");
    let e = error_for(
        "params.json",
        r#"{"dim": 8, "n_layers": 2, "n_heads": 2, "hidden_dim": 8, "vocab_size": 8}"#,
    );
    assert!(e.contains("norm_eps"), "{e}");
    let e = error_for(
        "params.json",
        r#"{"dim": 8, "n_layers": 2, "n_heads": 2, "hidden_dim": 8, "vocab_size": 8, "norm_eps": 1e-5, "sliding_window": []}"#,
    );
    assert!(e.contains("empty"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    assert!(ArchConfig::from_dir(dir.path())
        .unwrap_err()
        .to_string()
        .contains("config.json"));
}
