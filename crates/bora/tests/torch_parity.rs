//! `bora train --on torch` against `bora train` on the CPU: with f32, dropout 0 and the same
//! initial adapter, the PyTorch trainer (transformers + peft) and bora's own loop give the
//! same losses step by step and the same adapter, on tiny Llama (SmolLM2's architecture),
//! Mistral (with a sliding window shorter than the sequences) and Nemo (head_dim ≠
//! hidden/heads) models.
//!
//! Needs a Python environment with `trainers/torch/requirements.txt` (several GB), so it is
//! ignored in the default suite; `scripts/test_torch_parity.sh` makes the environment and
//! runs it with `BORA_TORCH_PYTHON` pointing there.

mod common;

use std::path::Path;

use bora_formats::safetensors::Safetensors;
use common::{assert_ok, bora, copy_dir, model_dir, write_chats};
use serde_json::Value;

const STEPS: usize = 20;

fn losses(run: &Path) -> Vec<(f64, Option<f64>)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["loss"].as_f64().unwrap(), v["val_loss"].as_f64())
        })
        .collect()
}

fn train(model: &str, data: &str, out: &str, on: &str, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--on",
        on,
        "--max-steps",
        "20",
        "--batch-size",
        "3",
        "--grad-accum",
        "2",
        "--seq-len",
        "32",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--dropout",
        "0",
        "--lr",
        "0.01",
        "--warmup-steps",
        "3",
        "--checkpoint-every",
        "10",
        "--eval-every",
        "10",
        "--val-fraction",
        "0.2",
        "--seed",
        "5",
    ];
    args.extend_from_slice(extra);
    assert_ok(&bora(&args));
}

fn parity(fixture: &str, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), fixture);
    let data = tmp.path().join("chats.jsonl");
    write_chats(&data, 60);
    let (cpu, torch) = (tmp.path().join("cpu"), tmp.path().join("torch"));
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    train(m, d, cpu.to_str().unwrap(), "cpu", extra);
    train(m, d, torch.to_str().unwrap(), "torch", extra);

    let (a, b) = (losses(&cpu), losses(&torch));
    assert_eq!(
        (a.len(), b.len()),
        (STEPS, STEPS),
        "{fixture}: steps logged"
    );
    for (step, ((la, va), (lb, vb))) in a.iter().zip(&b).enumerate() {
        let rel = (la - lb).abs() / la.abs();
        assert!(
            rel <= 1e-4,
            "{fixture} step {}: loss {la} (cpu) vs {lb} (torch)",
            step + 1
        );
        assert_eq!(
            va.is_some(),
            vb.is_some(),
            "{fixture} step {}: validation",
            step + 1
        );
        if let (Some(va), Some(vb)) = (va, vb) {
            assert!(
                (va - vb).abs() <= 1e-4 * va.abs(),
                "{fixture}: val {va} vs {vb}"
            );
        }
    }
    let open =
        |run: &Path| Safetensors::open(run.join("adapter/adapter_model.safetensors")).unwrap();
    let (sa, sb) = (open(&cpu), open(&torch));
    assert_eq!(sa.tensors().len(), sb.tensors().len());
    for t in sa.tensors() {
        let (x, y) = (
            sa.tensor_f32(&t.name).unwrap(),
            sb.tensor_f32(&t.name).unwrap(),
        );
        let worst = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4,
            "{fixture} {}: adapters differ by {worst}",
            t.name
        );
    }
    let adapters_agree = |run: &Path| {
        let other = open(run);
        for t in sa.tensors() {
            let (x, y) = (
                sa.tensor_f32(&t.name).unwrap(),
                other.tensor_f32(&t.name).unwrap(),
            );
            let worst = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4,
                "{fixture} {}: resumed adapter differs by {worst}",
                t.name
            );
        }
    };
    // A run stopped after its step-10 checkpoint resumes on torch from that checkpoint.
    let resumed = tmp.path().join("resumed");
    copy_dir(&torch, &resumed);
    std::fs::remove_dir_all(resumed.join("checkpoints/step-20")).unwrap();
    std::fs::remove_dir_all(resumed.join("adapter")).unwrap();
    std::fs::write(resumed.join("checkpoints/latest"), "step-10").unwrap();
    let r = resumed.to_str().unwrap();
    assert_ok(&bora(&["train", "--resume", r, "--on", "torch"]));
    adapters_agree(&resumed);
    // The torch run's directory is a CPU run's: checkpoints bora resumes from, the adapter.
    for run in [&cpu, &torch] {
        assert!(run.join("checkpoints/step-20/trainer_state.json").exists());
        assert!(run
            .join("checkpoints/step-10/optimizer.safetensors")
            .exists());
        assert!(!run.join(".torch-job").exists());
    }
}

#[test]
#[ignore = "needs the torch environment: scripts/test_torch_parity.sh"]
fn llama_smollm2_shape_matches_the_cpu_run() {
    parity("llama", &[]);
}

#[test]
#[ignore = "needs the torch environment: scripts/test_torch_parity.sh"]
fn mistral_with_sliding_window_matches_the_cpu_run() {
    parity("mistral_v01", &["--rslora", "true"]);
}

#[test]
#[ignore = "needs the torch environment: scripts/test_torch_parity.sh"]
fn nemo_matches_the_cpu_run() {
    parity("nemo", &[]);
}
