//! `bora train` run as a user runs it, on the tiny Llama fixture of bora-model (2 layers,
//! hidden 64, vocab 96) with a word-level tokenizer written for its vocabulary.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, bora, fixture, model_dir, word};
use serde_json::{json, Value};

/// `n` `text` examples, each a short run of a repeating word pattern.
fn write_dataset(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let words: Vec<String> = (0..8 + i % 5)
                .map(|j| word(3 + ((i + j) % 6) as u32))
                .collect();
            json!({"text": words.join(" ")}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn train_args<'a>(model: &'a str, data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        steps,
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--seq-len",
        "32",
        "--rank",
        "4",
        "--dropout",
        "0.1",
        "--lr",
        "0.01",
        "--warmup-steps",
        "2",
        "--checkpoint-every",
        "5",
        "--eval-every",
        "10",
        "--val-fraction",
        "0.1",
        "--seed",
        "3",
    ]
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn adapter_bytes(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap()
}

/// A run killed with SIGKILL after its first checkpoint and resumed ends with the same
/// adapter, byte for byte, as a run never interrupted, and with the same metrics log.
#[test]
fn killed_run_resumes_to_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_dataset(&data, 60);
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());

    let straight = tmp.path().join("runs/straight");
    let out = bora(&train_args(model, data, straight.to_str().unwrap(), "300"));
    assert_ok(&out);

    let killed = tmp.path().join("runs/killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(train_args(model, data, killed.to_str().unwrap(), "300"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let latest = killed.join("checkpoints/latest");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !latest.exists() {
        assert!(Instant::now() < deadline, "no checkpoint within 2 minutes");
        assert!(child.try_wait().unwrap().is_none(), "bora exited early");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(
        !killed.join("adapter").exists(),
        "the run finished before the kill; raise --max-steps"
    );

    let out = bora(&["train", "--resume", killed.to_str().unwrap()]);
    assert_ok(&out);
    assert!(
        adapter_bytes(&killed) == adapter_bytes(&straight),
        "the resumed adapter differs from the uninterrupted one"
    );
    let without_speed = |run: &Path| -> Vec<Value> {
        metrics(run)
            .into_iter()
            .map(|mut m| {
                m.as_object_mut().unwrap().remove("tokens_per_s");
                m.as_object_mut().unwrap().remove("processed_tokens_per_s");
                m
            })
            .collect()
    };
    assert_eq!(without_speed(&killed), without_speed(&straight));
    let timing: Value =
        serde_json::from_str(&std::fs::read_to_string(killed.join("timing.json")).unwrap())
            .unwrap();
    assert_eq!(timing["steps"], 300);
}

/// On a small repetitive dataset the training loss falls and validation is logged.
#[test]
fn loss_decreases_on_repetitive_data() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_dataset(&data, 40);
    let run = tmp.path().join("runs/learn");
    let out = bora(&train_args(
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        "40",
    ));
    assert_ok(&out);
    let m = metrics(&run);
    assert_eq!(m.len(), 40);
    let loss = |i: usize| m[i]["loss"].as_f64().unwrap();
    let first = (loss(0) + loss(1)) / 2.0;
    let last = (loss(38) + loss(39)) / 2.0;
    assert!(last < 0.5 * first, "loss went from {first} to {last}");
    let vals: Vec<f64> = m.iter().filter_map(|x| x["val_loss"].as_f64()).collect();
    assert_eq!(vals.len(), 4, "validation at steps 10, 20, 30, 40");
    assert!(vals[3] < vals[0], "{vals:?}");
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        cfg.contains("rank = 4") && cfg.contains("max_steps = 40"),
        "{cfg}"
    );
    assert!(run.join("adapter/adapter_config.json").is_file());
}

/// Broken lines are refused with FILE:LINE messages, or skipped and reported.
#[test]
fn bad_lines_are_refused_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_dataset(&data, 10);
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"text\": \n{\"txet\": \"w3 w4\"}\n");
    std::fs::write(&data, text).unwrap();
    let (model, data_s) = (model.to_str().unwrap(), data.to_str().unwrap());

    let run = tmp.path().join("runs/bad");
    let out = bora(&train_args(model, data_s, run.to_str().unwrap(), "2"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [11, 12] {
        let at = format!("{data_s}:{line}:");
        assert!(err.contains(&at), "no `{at}` in:\n{err}");
    }
    assert!(!run.join("checkpoints/latest").exists());

    let mut args = train_args(model, data_s, run.to_str().unwrap(), "2");
    args.push("--skip-bad-lines");
    let out = bora(&args);
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("skipped {data_s}:12:")), "{err}");
}

/// Resuming after the model under a run changed is refused, naming the tensor that no longer
/// fits; the run's checkpoint is left as it was.
#[test]
fn resume_with_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_dataset(&data, 10);
    let run = tmp.path().join("runs/swap");
    let out = bora(&train_args(
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        "5",
    ));
    assert_ok(&out);
    let before = std::fs::read(run.join("checkpoints/step-5/adapter_model.safetensors")).unwrap();

    // Same path, another architecture: hidden size 32 instead of 64.
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("mistral_v01").join(file), model.join(file)).unwrap();
    }
    let out = bora(&["train", "--resume", run.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lora_A.weight") && err.contains("shape"),
        "expected a shape error naming the tensor:\n{err}"
    );
    let after = std::fs::read(run.join("checkpoints/step-5/adapter_model.safetensors")).unwrap();
    assert_eq!(before, after);
}

/// A new run into a directory that already holds checkpoints is refused (and says how to
/// resume) rather than overwriting them.
#[test]
fn new_run_over_existing_checkpoints_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_dataset(&data, 10);
    let run = tmp.path().join("runs/again");
    let args = train_args(
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        "5",
    );
    assert_ok(&bora(&args));
    let out = bora(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--resume"), "{err}");
}

/// A diverging run stops with a message naming the step and what went non-finite, and the
/// last checkpoint written before it still loads as a finite adapter.
#[test]
fn divergence_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_dataset(&data, 10);
    let run = tmp.path().join("runs/diverge");
    let mut args = train_args(
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        "20",
    );
    for (flag, value) in [
        ("--lr", "1e30"),
        ("--warmup-steps", "0"),
        ("--checkpoint-every", "1"),
    ] {
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1] = value;
    }
    args.extend(["--max-grad-norm", "0"]);
    let out = bora(&args);
    assert!(
        !out.status.success(),
        "a learning rate of 1e30 must diverge"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step ") && (err.contains("NaN") || err.contains("inf")),
        "{err}"
    );
    assert!(!run.join("adapter").exists());
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let weights = std::fs::read(
        run.join("checkpoints")
            .join(latest.trim())
            .join("adapter_model.safetensors"),
    )
    .unwrap();
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let finite = weights[8 + header_len..]
        .chunks_exact(4)
        .all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite());
    assert!(finite, "{} holds non-finite weights", latest.trim());
}

/// A TOML run config supplies keys; flags override them; the resolved config is saved.
#[test]
fn config_file_and_flags_resolve_together() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_dataset(&data, 10);
    let config = tmp.path().join("run.toml");
    std::fs::write(
        &config,
        "[lora]\nrank = 2\ntargets = [\"q\", \"v\"]\n[train]\nmax_steps = 3\nseq_len = 32\n\
         batch_size = 2\n[optim]\nschedule = \"linear\"\n",
    )
    .unwrap();
    let run = tmp.path().join("runs/configured");
    let out = bora(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--max-steps",
        "2",
        "--set",
        "optim.eps=1e-6",
    ]);
    assert_ok(&out);
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    for line in [
        "rank = 2",
        "max_steps = 2",
        "schedule = \"linear\"",
        "eps = 0.000001",
        "name = \"configured\"",
    ] {
        assert!(resolved.contains(line), "no `{line}` in:\n{resolved}");
    }
    assert_eq!(metrics(&run).len(), 2);
    let adapter: Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(adapter["r"], 2);
    assert_eq!(adapter["target_modules"], json!(["q_proj", "v_proj"]));
}

/// QLoRA: the f32 base quantized to Q8_0 on load trains, and the run records it.
#[test]
fn qlora_trains_on_a_quantized_base() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_dataset(&data, 20);
    let run = tmp.path().join("runs/qlora");
    let mut args = train_args(
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        "20",
    );
    args.extend(["--qlora", "Q8_0"]);
    assert_ok(&bora(&args));
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        resolved.contains("enabled = true") && resolved.contains("quant = \"q8_0\""),
        "{resolved}"
    );
    let m = metrics(&run);
    let loss = |i: usize| m[i]["loss"].as_f64().unwrap();
    assert!(
        loss(19) < loss(0),
        "loss went from {} to {}",
        loss(0),
        loss(19)
    );
}
