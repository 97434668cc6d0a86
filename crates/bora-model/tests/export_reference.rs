//! bora's `peft` and `merged` exports, loaded back by bora, reproduce the logits of
//! transformers + PEFT on the same base and adapter (unmerged and after peft's own
//! `merge_and_unload`). Fixtures from `scripts/make_export_fixtures.py`; the external half
//! (peft and transformers loading bora's exports) is `scripts/check_exports.py`.
//!
//! Tolerance: relative 1e-4 of each prompt's largest logit (fp32 throughout; the only
//! differences are summation order).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bora_formats::safetensors::Safetensors;
use bora_model::export::hf::{write_merged, MergedOptions};
use bora_model::export::peft::write_peft;
use bora_model::export::verify::{logits, relative_error};
use bora_model::export::FloatType;
use bora_model::{LoadOptions, Lora, Model};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Reference {
    prompts: Vec<Vec<u32>>,
    peft: Vec<Vec<f32>>,
    merged: Vec<Vec<f32>>,
}

fn reference(name: &str) -> Reference {
    let st =
        Safetensors::open(fixtures().join(format!("export/{name}.logits.safetensors"))).unwrap();
    let mut by_name: HashMap<String, Vec<f32>> = HashMap::new();
    for t in st.tensors() {
        let values = if t.name.starts_with("prompt.") {
            st.tensor_bytes(&t.name)
                .unwrap()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect()
        } else {
            st.tensor_f32(&t.name).unwrap()
        };
        by_name.insert(t.name.clone(), values);
    }
    let n = by_name.keys().filter(|k| k.starts_with("prompt.")).count();
    let get = |prefix: &str, k: usize| by_name[&format!("{prefix}.{k}")].clone();
    Reference {
        prompts: (0..n)
            .map(|k| get("prompt", k).iter().map(|&x| x as u32).collect())
            .collect(),
        peft: (0..n).map(|k| get("logits", k)).collect(),
        merged: (0..n).map(|k| get("merged", k)).collect(),
    }
}

fn load(path: &Path) -> Model {
    Model::load(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn assert_matches(what: &str, r: &Reference, model: &Model, lora: Option<&Lora>) {
    for (k, p) in r.prompts.iter().enumerate() {
        let ours = logits(model, lora, p).unwrap();
        for (side, theirs) in [("peft", &r.peft[k]), ("merge_and_unload", &r.merged[k])] {
            let err = relative_error(theirs, &ours);
            assert!(err < 1e-4, "{what}, prompt {k}, vs {side}: {err:.3e}");
        }
    }
}

/// Exports `base` + the adapter at `adapter` as peft and merged (f32), reloads both with
/// bora and compares with the reference.
fn check(model_name: &str, base: &Path, adapter: &Path) {
    let r = reference(model_name);
    let model = load(base);
    let lora = Lora::load_peft(adapter, &model.config).unwrap();
    assert_matches(&format!("{base:?} in memory"), &r, &model, Some(&lora));
    let tmp = tempfile::tempdir().unwrap();

    let peft_dir = tmp.path().join("peft");
    write_peft(&model, &lora, None, &peft_dir, false, true).unwrap();
    let back = Lora::load_peft(&peft_dir, &model.config).unwrap();
    assert_matches(&format!("{base:?} peft export"), &r, &model, Some(&back));

    let merged_dir = tmp.path().join("merged");
    let options = MergedOptions {
        dtype: FloatType::F32,
        ..MergedOptions::default()
    };
    write_merged(&model, Some(&lora), &merged_dir, &options).unwrap();
    let merged = load(&merged_dir);
    assert_matches(&format!("{base:?} merged export"), &r, &merged, None);
}

#[test]
fn llama_exports_from_hf_and_gguf_match_peft() {
    let adapter = fixtures().join("lora/llama_adapter");
    check("llama", &fixtures().join("tiny/llama"), &adapter);
    check("llama", &fixtures().join("tiny/llama.gguf"), &adapter);
}

#[test]
fn mistral_exports_from_hf_and_consolidated_match_peft() {
    let adapter = fixtures().join("export/mistral_v01_adapter");
    check(
        "mistral_v01",
        &fixtures().join("tiny/mistral_v01"),
        &adapter,
    );
    check(
        "mistral_v01",
        &fixtures().join("tiny/mistral_v01_consolidated"),
        &adapter,
    );
}
