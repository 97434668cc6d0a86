//! A checkpoint known by its config alone (`CheckpointInfo::open_shape`, what a Hugging Face
//! Job's preflight reads without the weights) plans exactly as one with its weights: the same
//! config, the same bytes for the weights as loaded, with and without quantization.

use std::path::Path;

use bora_formats::quant::{GgmlType, WeightType};
use bora_model::CheckpointInfo;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny")
        .join(name)
}

#[test]
fn the_config_alone_gives_the_weights_bytes_of_the_checkpoint() {
    // The fixtures whose config names the type their safetensors hold (f32).
    for name in ["llama", "ministral8b"] {
        let full = CheckpointInfo::open(fixture(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture(name).join("config.json"),
            dir.path().join("config.json"),
        )
        .unwrap();
        let shape = CheckpointInfo::open_shape(dir.path()).unwrap();
        assert_eq!(
            shape.config.parameter_count(),
            full.config.parameter_count(),
            "{name}"
        );
        assert!(shape.unquantized());
        for quantize in [
            None,
            Some(WeightType::Nf4),
            Some(WeightType::Ggml(GgmlType::Q4_0)),
            Some(WeightType::Ggml(GgmlType::BF16)),
        ] {
            assert_eq!(
                shape.weight_bytes(quantize),
                full.weight_bytes(quantize),
                "{name} {quantize:?}"
            );
        }
    }
}

#[test]
fn a_directory_with_its_weights_is_opened_whole() {
    let shape = CheckpointInfo::open_shape(fixture("llama")).unwrap();
    let full = CheckpointInfo::open(fixture("llama")).unwrap();
    assert_eq!(shape.weight_bytes(None), full.weight_bytes(None));
    let empty = tempfile::tempdir().unwrap();
    let err = CheckpointInfo::open_shape(empty.path())
        .err()
        .expect("a directory without a config is no model");
    assert!(err.to_string().contains("config.json"), "{err}");
}
