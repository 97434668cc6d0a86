//! LoRA training against PyTorch + PEFT (fp32) on the tiny random models: the summed loss
//! before each of two AdamW steps and the LoRA gradients at the initial adapter, for PEFT's
//! own init (B = 0) and a random B. Fixtures from `scripts/make_lora_fixtures.py`.
//!
//! Tolerance: relative 1e-4 (of the loss; of each gradient tensor's largest element).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bora_model::{LoadOptions, Lora, LoraSpec, LoraTarget, Model, TrainBatch, Trainer};
use safetensors::{Dtype, SafeTensors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Fixture {
    tensors: HashMap<String, Vec<f64>>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let d = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => d
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => d
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            tensors.insert(name, values);
        }
        Fixture {
            tensors,
            meta: meta.metadata().clone().unwrap_or_default(),
        }
    }

    fn get(&self, name: &str) -> &[f64] {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"))
    }

    fn hp(&self, key: &str) -> f64 {
        self.meta[key].parse().unwrap()
    }

    /// The adapter stored under `prefix.` (`init`, `step1`, `step2`).
    fn lora(&self, model: &Model, prefix: &str) -> Lora {
        let spec = LoraSpec {
            rank: self.hp("r") as usize,
            alpha: self.hp("lora_alpha"),
            dropout: 0.0,
            rslora: false,
            targets: LoraTarget::ALL.to_vec(),
        };
        let mut lora = Lora::zeros(&model.config, &spec);
        for (name, shape, data) in lora.tensors_mut() {
            let src = self.get(&format!("{prefix}.{name}"));
            assert_eq!(src.len(), shape.iter().product::<usize>(), "{name}");
            data.iter_mut().zip(src).for_each(|(d, &s)| *d = s as f32);
        }
        lora
    }
}

fn check(model_name: &str, init: &str) {
    let fx = Fixture::read(&fixtures().join(format!("lora/{model_name}.{init}.safetensors")));
    let model = Model::load(
        fixtures().join("tiny").join(model_name),
        &LoadOptions::default(),
    )
    .unwrap();
    let inputs: Vec<u32> = fx.get("inputs").iter().map(|&v| v as u32).collect();
    let targets: Vec<Option<u32>> = fx
        .get("targets")
        .iter()
        .map(|&v| (v >= 0.0).then_some(v as u32))
        .collect();
    let rows = 2;
    let seq = inputs.len() / rows;
    let positions: Vec<u32> = (0..inputs.len()).map(|i| (i % seq) as u32).collect();
    let segments: Vec<usize> = (0..=rows).map(|r| r * seq).collect();
    let batch = TrainBatch {
        inputs: &inputs,
        targets: &targets,
        positions: &positions,
        segments: &segments,
        batch_size: rows,
        seq_len: seq,
    };
    let lora = fx.lora(&model, "init");
    let mut trainer = Trainer::new(&model, lora.spec(), rows, seq, false).unwrap();
    let mut grads = Lora::zeros(&model.config, lora.spec());
    let ce = trainer
        .forward_backward(&model, &lora, &batch, &mut grads, 0)
        .unwrap();
    let what = format!("{model_name}.{init}");
    assert_eq!(ce.count as f64, fx.get("count")[0], "{what}: count");
    let want = fx.get("loss_sum.1")[0];
    assert!(
        (ce.loss_sum - want).abs() <= 1e-4 * want.abs(),
        "{what}: loss {} vs PEFT {want}",
        ce.loss_sum
    );
    for (name, _, got) in grads.tensors() {
        let want = fx.get(&format!("grad.{name}"));
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(want)
            .map(|(&g, w)| (g as f64 - w).abs())
            .fold(0f64, f64::max);
        assert!(
            worst <= 1e-4 * scale.max(1e-6),
            "{what}: {name}: max |diff| {worst}, largest gradient {scale}"
        );
    }
    let stepped = fx.lora(&model, "step1");
    let ce2 = trainer.loss(&model, &stepped, &batch).unwrap();
    let want = fx.get("loss_sum.2")[0];
    assert!(
        (ce2.loss_sum - want).abs() <= 1e-4 * want.abs(),
        "{what}: loss after one step {} vs PEFT {want}",
        ce2.loss_sum
    );
}

#[test]
fn llama_matches_peft() {
    check("llama", "peft");
    check("llama", "random");
}

#[test]
fn mistral_sliding_window_matches_peft() {
    check("mistral_v01", "peft");
    check("mistral_v01", "random");
}

#[test]
fn ministral3_matches_peft() {
    check("ministral3", "peft");
    check("ministral3", "random");
}

#[test]
fn ministral8b_and_nemo_match_peft() {
    for model in ["ministral8b", "nemo"] {
        check(model, "peft");
        check(model, "random");
    }
}

/// `load_peft` reads what PEFT saved: the same tensors as the fixture's initial adapter
/// (made with the same seed), and the spec from `adapter_config.json`.
#[test]
fn load_peft_reads_a_peft_adapter() {
    let model = Model::load(fixtures().join("tiny/llama"), &LoadOptions::default()).unwrap();
    let lora = Lora::load_peft(&fixtures().join("lora/llama_adapter"), &model.config).unwrap();
    assert_eq!(lora.spec().rank, 4);
    assert_eq!(lora.spec().scale(), 2.0);
    let mut targets = lora.spec().targets.clone();
    targets.sort();
    assert_eq!(targets, LoraTarget::ALL.to_vec());
    let fx = Fixture::read(&fixtures().join("lora/llama.random.safetensors"));
    for (name, _, data) in lora.tensors() {
        let want = fx.get(&format!("init.{name}"));
        assert!(
            data.iter().zip(want).all(|(&a, &b)| a as f64 == b),
            "{name}"
        );
    }
}

#[test]
fn load_peft_names_the_mismatched_tensor() {
    let model = Model::load(fixtures().join("tiny/mistral_v01"), &LoadOptions::default()).unwrap();
    let err = Lora::load_peft(&fixtures().join("lora/llama_adapter"), &model.config).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("lora_A.weight") && msg.contains("shape"),
        "{msg}"
    );
}
