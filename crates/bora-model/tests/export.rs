//! Exports of the tiny fixture models, each loaded back with bora's loaders and compared
//! with the in-memory model + adapter. The adapter is PEFT's own file
//! (`fixtures/lora/llama_adapter`, random B so every projection carries signal) or, for the
//! other models, factors filled from a fixed sequence.

use std::path::{Path, PathBuf};

use bora_formats::names::{permute_rows_interleaved_to_half, Scheme};
use bora_formats::safetensors::Safetensors;
use bora_model::export::hf::{write_merged, MergedOptions};
use bora_model::export::mistral::{load_mistral, write_mistral};
use bora_model::export::peft::write_peft;
use bora_model::export::verify::{merged_tolerance, verify, QUANTIZED_KERNEL_TOLERANCE};
use bora_model::export::{merged_tensor, ExportError, FloatType};
use bora_model::{LoadOptions, Lora, LoraSpec, LoraTarget, Model};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(path: &Path) -> Model {
    Model::load(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn llama_adapter(model: &Model) -> Lora {
    Lora::load_peft(&fixtures().join("lora/llama_adapter"), &model.config).unwrap()
}

/// An adapter on every projection with factors from a fixed sequence in [-0.1, 0.1).
fn filled_adapter(model: &Model) -> Lora {
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        targets: LoraTarget::ALL.to_vec(),
    };
    let mut lora = Lora::zeros(&model.config, &spec);
    let mut state = 12345u64;
    for (_, _, data) in lora.tensors_mut() {
        for x in data.iter_mut() {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            *x = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
        }
    }
    lora
}

fn merged_round_trip(model: &Model, lora: &Lora, dtype: FloatType, shard_bytes: u64) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("merged");
    let options = MergedOptions {
        dtype,
        shard_bytes,
        force: false,
        verify: true,
    };
    let export = write_merged(model, Some(lora), &dest, &options).unwrap();
    let v = export.verification.unwrap();
    assert!(v.adapter_effect > dtype.tolerance(), "{v:?}");
    // Independently of the built-in check: load the published directory again.
    let written = load(&dest);
    let again = verify(&dest, model, Some(lora), &written, None, dtype.tolerance()).unwrap();
    assert_eq!(again, v);
    v.max_error
}

#[test]
fn merged_f32_from_hf_reproduces_the_adapted_model() {
    let model = load(&fixtures().join("tiny/llama"));
    let err = merged_round_trip(&model, &llama_adapter(&model), FloatType::F32, u64::MAX);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn merged_from_gguf_and_consolidated_bases_reproduce_the_adapted_model() {
    for base in ["tiny/llama.gguf", "tiny/mistral_v01_consolidated"] {
        let model = load(&fixtures().join(base));
        let err = merged_round_trip(&model, &filled_adapter(&model), FloatType::F32, u64::MAX);
        assert!(err < 1e-5, "{base}: {err}");
    }
}

#[test]
fn merged_f32_from_a_quantized_gguf_is_within_the_kernel_allowance() {
    let model = load(&fixtures().join("tiny/llama_q8_0.gguf"));
    let lora = filled_adapter(&model);
    let tol = merged_tolerance(&model, FloatType::F32);
    assert_eq!(tol, QUANTIZED_KERNEL_TOLERANCE);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("merged");
    let options = MergedOptions {
        dtype: FloatType::F32,
        ..MergedOptions::default()
    };
    let v = write_merged(&model, Some(&lora), &dest, &options)
        .unwrap()
        .verification
        .unwrap();
    assert!(v.max_error < tol && v.tolerance == tol, "{v:?}");
}

#[test]
fn merged_half_precision_stays_within_its_tolerance() {
    let model = load(&fixtures().join("tiny/nemo"));
    let lora = filled_adapter(&model);
    for dtype in [FloatType::F16, FloatType::Bf16] {
        let err = merged_round_trip(&model, &lora, dtype, u64::MAX);
        assert!(err < dtype.tolerance(), "{dtype:?}: {err}");
    }
}

#[test]
fn sharded_merged_export_has_an_index_and_keeps_tied_embeddings_tied() {
    let model = load(&fixtures().join("tiny/llama"));
    let lora = llama_adapter(&model);
    assert!(model.config.tied_embeddings);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("merged");
    let options = MergedOptions {
        dtype: FloatType::F32,
        shard_bytes: 40_000,
        force: false,
        verify: true,
    };
    let export = write_merged(&model, Some(&lora), &dest, &options).unwrap();
    assert!(export
        .files
        .contains(&"model.safetensors.index.json".into()));
    let shards: Vec<_> = export
        .files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    assert!(shards[0].starts_with("model-00001-of-"), "{shards:?}");
    let st = Safetensors::open(&dest).unwrap();
    assert!(st.tensor("lm_head.weight").is_none());
    assert!(st.tensor("model.embed_tokens.weight").is_some());
    let written = load(&dest);
    let v = verify(&dest, &model, Some(&lora), &written, None, 1e-4).unwrap();
    assert!(v.max_error < 1e-5, "{v:?}");
}

#[test]
fn verification_catches_a_lost_adapter() {
    let model = load(&fixtures().join("tiny/llama"));
    let lora = llama_adapter(&model);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("base");
    let options = MergedOptions {
        verify: false,
        ..MergedOptions::default()
    };
    write_merged(&model, None, &dest, &options).unwrap();
    let written = load(&dest);
    let err = verify(&dest, &model, Some(&lora), &written, None, 1.0).unwrap_err();
    assert!(
        matches!(&err, ExportError::Verify { what, .. } if what.contains("adapter was lost")),
        "{err}"
    );
    let err = verify(&dest, &model, Some(&lora), &written, None, 1e-4).unwrap_err();
    assert!(
        matches!(&err, ExportError::Verify { what, .. } if what.contains("prompt 0")),
        "{err}"
    );
}

#[test]
fn an_existing_directory_is_replaced_only_with_force() {
    let model = load(&fixtures().join("tiny/llama"));
    let lora = llama_adapter(&model);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("adapter");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep.txt"), "x").unwrap();
    let err = write_peft(&model, &lora, None, &dest, false, true).unwrap_err();
    assert!(matches!(err, ExportError::Exists { .. }), "{err}");
    assert!(dest.join("keep.txt").is_file());
    write_peft(&model, &lora, None, &dest, true, true).unwrap();
    assert!(!dest.join("keep.txt").exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("adapter")]);
}

#[test]
fn peft_export_reloads_bit_for_bit() {
    let model = load(&fixtures().join("tiny/llama"));
    let lora = llama_adapter(&model);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("peft");
    let v = write_peft(&model, &lora, Some("base".into()), &dest, false, true).unwrap();
    assert_eq!(v.unwrap().max_error, 0.0);
    let back = Lora::load_peft(&dest, &model.config).unwrap();
    let sorted = |l: &Lora| {
        let mut t = l.spec().targets.clone();
        t.sort();
        (l.spec().rank, l.spec().alpha, l.spec().rslora, t)
    };
    assert_eq!(sorted(&back), sorted(&lora));
    for ((n1, s1, d1), (n2, s2, d2)) in lora.tensors().iter().zip(back.tensors()) {
        assert_eq!((n1, s1), (&n2, &s2));
        assert_eq!(*d1, d2, "{n1}");
    }
}

#[test]
fn mistral_export_reloads_and_matches_the_consolidated_weights() {
    let dir = fixtures().join("tiny/mistral_v01_consolidated");
    let model = load(&dir);
    let lora = filled_adapter(&model);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("mistral");
    let v = write_mistral(&model, &lora, &dest, FloatType::Bf16, false, true).unwrap();
    assert!(v.unwrap().max_error < FloatType::Bf16.tolerance());
    std::fs::remove_dir_all(&dest).unwrap();
    write_mistral(&model, &lora, &dest, FloatType::F32, false, false).unwrap();
    let back = load_mistral(&dest, &model.config).unwrap();
    let v = verify(&dest, &model, Some(&lora), &model, Some(&back), 1e-5).unwrap();
    assert!(v.max_error < 1e-6, "{v:?}");

    // Independently of bora's loader: mistral-finetune's merge on the consolidated file,
    // W_cons + s·B_mistral·A, permuted to HF order, must equal bora's merged q.
    let base = Safetensors::open(dir.join("consolidated.safetensors")).unwrap();
    let ad = Safetensors::open(dest.join("lora.safetensors")).unwrap();
    let c = &model.config;
    let w = base.tensor_f32("layers.1.attention.wq.weight").unwrap();
    let a = ad
        .tensor_f32("layers.1.attention.wq.lora_A.weight")
        .unwrap();
    let b = ad
        .tensor_f32("layers.1.attention.wq.lora_B.weight")
        .unwrap();
    let (r, d_in, d_out) = (4, c.hidden_size, c.q_dim());
    let s = lora.spec().scale() as f32;
    let mut merged = w.clone();
    for o in 0..d_out {
        for i in 0..d_in {
            let ba: f32 = (0..r).map(|k| b[o * r + k] * a[k * d_in + i]).sum();
            merged[o * d_in + i] += s * ba;
        }
    }
    let bytes: Vec<u8> = merged.iter().flat_map(|x| x.to_le_bytes()).collect();
    let hf = permute_rows_interleaved_to_half(&bytes, d_in * 4, c.n_heads).unwrap();
    let hf: Vec<f32> = hf
        .chunks_exact(4)
        .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
        .collect();
    let ours = merged_tensor(&model, &lora, 1, LoraTarget::Q).unwrap();
    let worst = hf
        .iter()
        .zip(&ours)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst < 1e-6, "{worst}");
    assert_eq!(
        bora_formats::names::convert_name(
            "layers.1.attention.wq.weight",
            Scheme::Consolidated,
            Scheme::Hf
        )
        .as_deref(),
        Some("model.layers.1.self_attn.q_proj.weight")
    );
}
