//! The decoder against transformers' fp32 logits for tiny random models of every supported
//! variant (fixtures from `scripts/make_model_fixtures.py`).
//!
//! Tolerance: |bora − transformers| ≤ 1e-4 · max(1, max|logit|) for every logit of every
//! position. The tied models' logits reach ~60, so the bound is relative there.

use std::path::{Path, PathBuf};

use bora_model::{LoadOptions, Logits, Model, ModelError, Workspace};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

struct Case {
    prompts: Vec<Vec<u32>>,
    logits: Vec<Vec<f32>>,
}

fn expected(path: &Path) -> Case {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut case = Case {
        prompts: vec![],
        logits: vec![],
    };
    for i in 0.. {
        let Ok(p) = st.tensor(&format!("prompt.{i}")) else {
            break;
        };
        case.prompts.push(
            p.data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
                .collect(),
        );
        let l = st.tensor(&format!("logits.{i}")).unwrap();
        case.logits.push(
            l.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        );
    }
    assert!(!case.prompts.is_empty(), "{path:?} holds no prompts");
    case
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: max |diff| {worst} > {tol} × {scale}"
    );
}

/// Checks a model three ways: a full prefill per prompt through the KV cache (all positions),
/// token-by-token decoding through the cache, and all prompts packed into one batch, each
/// within `tol · max(1, max|logit|)`.
fn check_with(model_path: &Path, expected_path: &Path, tol: f32) {
    let model = Model::load(model_path, &LoadOptions::default()).unwrap();
    let case = expected(expected_path);
    let v = model.config.vocab_size;
    let mut ws = Workspace::new();
    for (i, (prompt, want)) in case.prompts.iter().zip(&case.logits).enumerate() {
        let mut cache = model.new_cache();
        let got = model
            .forward(prompt, &mut cache, &mut ws, Logits::All)
            .unwrap();
        assert_close(
            got,
            want,
            tol,
            &format!("{model_path:?} prompt {i} prefill"),
        );

        // Prefill a few tokens, then decode one at a time: exercises cache reads past the
        // sliding window.
        let mut cache = model.new_cache();
        let split = 3.min(prompt.len());
        let got = model
            .forward(&prompt[..split], &mut cache, &mut ws, Logits::Last)
            .unwrap()
            .to_vec();
        let last = &want[(split - 1) * v..split * v];
        assert_close(
            &got,
            last,
            tol,
            &format!("{model_path:?} prompt {i} pos {}", split - 1),
        );
        for (pos, &tok) in prompt.iter().enumerate().skip(split) {
            let got = model
                .forward(&[tok], &mut cache, &mut ws, Logits::Last)
                .unwrap();
            let row = &want[pos * v..(pos + 1) * v];
            assert_close(
                got,
                row,
                tol,
                &format!("{model_path:?} prompt {i} decode pos {pos}"),
            );
        }
        assert_eq!(cache.len(), prompt.len());
    }
    let batch: Vec<&[u32]> = case.prompts.iter().map(|p| p.as_slice()).collect();
    let got = model.forward_batch(&batch, &mut ws).unwrap();
    for (i, (g, w)) in got.iter().zip(&case.logits).enumerate() {
        assert_close(g, w, tol, &format!("{model_path:?} batch member {i}"));
    }
}

fn check(model_path: &Path, expected_path: &Path) {
    check_with(model_path, expected_path, 1e-4)
}

#[test]
fn mistral_v01_sliding_window_f16() {
    let d = fixtures().join("mistral_v01");
    check(&d, &d.join("expected.safetensors"));
}

#[test]
fn mistral_consolidated_matches_hf() {
    check(
        &fixtures().join("mistral_v01_consolidated"),
        &fixtures().join("mistral_v01/expected.safetensors"),
    );
}

#[test]
fn nemo_head_dim_bf16() {
    let d = fixtures().join("nemo");
    check(&d, &d.join("expected.safetensors"));
}

#[test]
fn ministral8b_interleaved_sliding_window() {
    let d = fixtures().join("ministral8b");
    check(&d, &d.join("expected.safetensors"));
}

#[test]
fn ministral3_yarn_query_scaling_tied() {
    let d = fixtures().join("ministral3");
    check(&d, &d.join("expected.safetensors"));
}

#[test]
fn llama_tied() {
    let d = fixtures().join("llama");
    check(&d, &d.join("expected.safetensors"));
}

#[test]
fn llama_gguf_f32_matches_hf() {
    check(
        &fixtures().join("llama.gguf"),
        &fixtures().join("llama/expected.safetensors"),
    );
}

#[test]
fn llama_gguf_q8_0_matches_transformers_reading_it() {
    let (gguf, want) = (
        fixtures().join("llama_q8_0.gguf"),
        fixtures().join("llama_q8_0.expected.safetensors"),
    );
    // Few-row products with quantized weights run bora-compute's 16-bit-activation dot
    // kernels: near-exact, not bit-exact.
    check_with(&gguf, &want, 1e-4);
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let model = Model::load(
        fixtures().join("llama"),
        &LoadOptions {
            context: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    let mut ws = Workspace::new();
    let mut cache = model.new_cache();
    let err = model
        .forward(&[1; 9], &mut cache, &mut ws, Logits::Last)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ContextOverflow {
                needed: 9,
                context: 8,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("context of 8 tokens"), "{err}");
    let err = model.forward_batch(&[&[1; 9]], &mut ws).unwrap_err();
    assert!(matches!(err, ModelError::ContextOverflow { .. }), "{err}");
    let err = model
        .forward(&[96], &mut cache, &mut ws, Logits::Last)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::TokenOutOfRange {
                token: 96,
                vocab: 96
            }
        ),
        "{err}"
    );
    let other = Model::load(fixtures().join("ministral8b"), &LoadOptions::default()).unwrap();
    let err = model
        .forward(&[1], &mut other.new_cache(), &mut ws, Logits::Last)
        .unwrap_err();
    assert!(matches!(err, ModelError::CacheMismatch), "{err}");
}

/// Copies a fixture directory into a temporary one so a test can break it.
fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

#[test]
fn missing_files_are_clear_errors() {
    let err = Model::load(fixtures().join("does-not-exist"), &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("no such file or directory"),
        "{err}"
    );

    let dir = copy_dir(&fixtures().join("nemo"));
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");

    let err =
        Model::load(fixtures().join("nemo/config.json"), &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains(".gguf"), "{err}");
}

#[test]
fn mismatched_shapes_and_missing_tensors_are_named() {
    // A config claiming a wider MLP than the weights have.
    let dir = copy_dir(&fixtures().join("nemo"));
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = 80.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::TensorShape { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("model.layers.0.mlp.gate_proj.weight"),
        "{err}"
    );

    // A config with a layer the checkpoint does not have.
    cfg["intermediate_size"] = 64.into();
    cfg["num_hidden_layers"] = 3.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
    assert!(err.to_string().contains("model.layers.2."), "{err}");

    // A truncated safetensors file.
    cfg["num_hidden_layers"] = 2.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::load(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

/// The summed NLL `Model::nll` reports equals the log-softmax of transformers' logits at
/// each next token (computed here independently in f64).
#[test]
fn nll_matches_reference_log_softmax() {
    let d = fixtures().join("ministral3");
    let model = Model::load(&d, &LoadOptions::default()).unwrap();
    let case = expected(&d.join("expected.safetensors"));
    let v = model.config.vocab_size;
    let mut ws = Workspace::new();
    for (prompt, logits) in case.prompts.iter().zip(&case.logits) {
        let want: f64 = (0..prompt.len() - 1)
            .map(|pos| {
                let row = &logits[pos * v..(pos + 1) * v];
                let m = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
                let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
                lse - row[prompt[pos + 1] as usize] as f64
            })
            .sum();
        let got = model.nll(prompt, &mut ws).unwrap();
        assert_eq!(got.count, prompt.len() - 1);
        assert!(
            (got.loss_sum - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{} vs {want}",
            got.loss_sum
        );
    }
}

/// Perplexity windows: without BOS, each window's first token is context only.
#[test]
fn perplexity_scores_windows_without_overlap() {
    let d = fixtures().join("llama");
    let model = Model::load(&d, &LoadOptions::default()).unwrap();
    assert!(!model.config.add_bos);
    let case = expected(&d.join("expected.safetensors"));
    let tokens = &case.prompts[1];
    let mut ws = Workspace::new();
    let p = bora_model::perplexity(&model, tokens, 10, &mut ws).unwrap();
    let mut sum = 0.0;
    let mut count = 0;
    for w in tokens.chunks(10) {
        if w.len() > 1 {
            let ce = model.nll(w, &mut ws).unwrap();
            sum += ce.loss_sum;
            count += ce.count;
        }
    }
    assert_eq!(p.tokens, count);
    assert!((p.nll - sum / count as f64).abs() < 1e-9);
    assert!((p.ppl() - p.nll.exp()).abs() < 1e-9);
    assert!(bora_model::perplexity(&model, &tokens[..1], 10, &mut ws).is_err());
    assert!(bora_model::perplexity(&model, tokens, 1, &mut ws).is_err());
}

/// Configs that would make no sense (or size buffers from nonsense) are refused by name.
#[test]
fn hostile_configs_are_errors_not_panics() {
    let cases: [(&str, serde_json::Value); 4] = [
        ("num_attention_heads", 0.into()),
        ("num_key_value_heads", 3.into()),
        ("hidden_size", (1u64 << 40).into()),
        ("head_dim", 7.into()),
    ];
    for (key, value) in cases {
        let dir = copy_dir(&fixtures().join("nemo"));
        let cfg_path = dir.path().join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg[key] = value.clone();
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let err = Model::load(dir.path(), &LoadOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("config.json"),
            "{key} = {value}: {err}"
        );
    }
    let err = Model::load(
        fixtures().join("ministral3"),
        &LoadOptions {
            context: Some(1 << 40),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("maximum of 32 positions"), "{err}");
}
