//! Two full training steps against PyTorch + PEFT (fp32): bora-model's forward/backward, then
//! bora-train's accumulation scale (1/tokens) and AdamW, must land on the adapter
//! `torch.optim.AdamW` reaches on every tiny model, from PEFT's init and from a random B.
//! Fixtures: `scripts/make_lora_fixtures.py` (in bora-model's fixture directory).
//!
//! Tolerance: an AdamW step moves an element by about ±lr whatever its gradient's size, so a
//! gradient known to relative precision ε moves the update by up to about lr·ε. The backward
//! matches PEFT to 1e-4 of each tensor's largest gradient, so an element's ε is
//! 1e-4·largest/|g| (the largest over both steps, since step 2's moments hold step 1's
//! gradient too); each element must match within 1e-6 + 2·lr·min(1, ε).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bora_formats::safetensors::{Dtype, Safetensors};
use bora_model::{LoadOptions, Lora, LoraSpec, LoraTarget, Model, TrainBatch, Trainer};
use bora_train::{scale_grads, AdamW, AdamWConfig, GradAccumulation};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bora-model/tests/fixtures")
}

struct Fixture {
    file: Safetensors,
}

impl Fixture {
    fn f32(&self, name: &str) -> Vec<f32> {
        self.file.tensor_f32(name).unwrap()
    }

    fn i64(&self, name: &str) -> Vec<i64> {
        assert_eq!(self.file.tensor(name).unwrap().dtype, Dtype::I64, "{name}");
        self.file
            .tensor_bytes(name)
            .unwrap()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn hp(&self, key: &str) -> f64 {
        self.file.metadata()[key].parse().unwrap()
    }

    fn adapter(&self, model: &Model, prefix: &str) -> HashMap<String, Vec<f32>> {
        self.lora(model, prefix)
            .tensors()
            .into_iter()
            .map(|(name, _, data)| (name, data.to_vec()))
            .collect()
    }

    fn lora(&self, model: &Model, prefix: &str) -> Lora {
        let spec = LoraSpec {
            rank: self.hp("r") as usize,
            alpha: self.hp("lora_alpha"),
            dropout: 0.0,
            rslora: false,
            targets: LoraTarget::ALL.to_vec(),
        };
        let mut lora = Lora::zeros(&model.config, &spec);
        for (name, _, data) in lora.tensors_mut() {
            data.copy_from_slice(&self.f32(&format!("{prefix}.{name}")));
        }
        lora
    }
}

fn check(model_name: &str, init: &str) {
    let path = fixtures().join(format!("lora/{model_name}.{init}.safetensors"));
    let fx = Fixture {
        file: Safetensors::open(&path).unwrap(),
    };
    let model = Model::load(
        fixtures().join("tiny").join(model_name),
        &LoadOptions::default(),
    )
    .unwrap();
    let inputs: Vec<u32> = fx.i64("inputs").iter().map(|&v| v as u32).collect();
    let targets: Vec<Option<u32>> = fx
        .i64("targets")
        .iter()
        .map(|&v| u32::try_from(v).ok())
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

    let mut lora = fx.lora(&model, "init");
    let mut trainer = Trainer::new(&model, lora.spec(), rows, seq, false).unwrap();
    let mut grads = Lora::zeros(&model.config, lora.spec());
    let mut optimizer = AdamW::new(
        AdamWConfig {
            betas: (fx.hp("beta1"), fx.hp("beta2")),
            eps: fx.hp("eps"),
            weight_decay: fx.hp("weight_decay"),
        },
        &lora
            .tensors()
            .iter()
            .map(|(_, _, d)| d.len())
            .collect::<Vec<_>>(),
    );
    let mut uncertainty: HashMap<String, Vec<f32>> = HashMap::new();
    for step in 1..=2 {
        grads.zero();
        let ce = trainer
            .forward_backward(&model, &lora, &batch, &mut grads, 0)
            .unwrap();
        let done = GradAccumulation::new(1)
            .add(ce.loss_sum, ce.count as u64)
            .unwrap();
        let mut g: Vec<&mut [f32]> = grads.tensors_mut().into_iter().map(|t| t.2).collect();
        scale_grads(&mut g, done.grad_scale);
        let g: Vec<&[f32]> = g.into_iter().map(|s| &*s).collect();
        let mut p: Vec<&mut [f32]> = lora.tensors_mut().into_iter().map(|t| t.2).collect();
        optimizer.step(fx.hp("lr"), &mut p, &g).unwrap();
        for (name, _, g) in grads.tensors() {
            let largest = g.iter().fold(0f32, |m, v| m.max(v.abs()));
            let eps = uncertainty
                .entry(name)
                .or_insert_with(|| vec![0.0; g.len()]);
            for (e, &x) in eps.iter_mut().zip(g) {
                *e = e.max((1e-4 * largest / x.abs()).min(1.0));
            }
        }

        let want = fx.adapter(&model, &format!("step{step}"));
        let lr = fx.hp("lr") as f32;
        for (name, _, got) in lora.tensors() {
            for (i, (&a, &b)) in got.iter().zip(&want[&name]).enumerate() {
                let tol = 1e-6 + 2.0 * lr * uncertainty[&name][i];
                assert!(
                    (a - b).abs() <= tol,
                    "{model_name}.{init} step {step}: {name}[{i}] = {a}, torch {b} (tolerance {tol})"
                );
            }
        }
    }
}

#[test]
fn two_adamw_steps_match_peft() {
    for model in ["llama", "mistral_v01", "ministral3", "ministral8b", "nemo"] {
        for init in ["peft", "random"] {
            check(model, init);
        }
    }
}
