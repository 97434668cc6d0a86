//! `bora data check` against what `bora train` then does, memory refusal, and `--quant`, on
//! the tiny Llama fixture of bora-model with a word-level tokenizer.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{assert_ok, bora, model_dir, word, write_chats};
use serde_json::{json, Value};

/// `n` `text` examples of 4 to 40 words, so packing, truncation and dropping all matter.
fn write_texts(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let words: Vec<String> = (0..4 + (i * 7) % 37)
                .map(|j| word(3 + ((i + j) % 80) as u32))
                .collect();
            json!({"text": words.join(" ")}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn bora_with_memory(args: &[&str], available: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .env("BORA_MEM_AVAILABLE", available)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("bora runs")
}

fn checked(args: &[&str]) -> Value {
    let out = bora(args);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The steps `bora train` reports having run ("trained N steps in ...").
fn trained_steps(out: &Output) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text
        .split("trained ")
        .nth(1)
        .unwrap_or_else(|| panic!("no step count in {text}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn data_check_counts_the_steps_train_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let texts = tmp.path().join("texts.jsonl");
    write_texts(&texts, 60);
    let chats = tmp.path().join("chats.jsonl");
    write_chats(&chats, 40);
    let (texts, chats, model) = (
        texts.to_str().unwrap(),
        chats.to_str().unwrap(),
        model.to_str().unwrap(),
    );
    // Each shape changes what the count depends on: packing (on by default, as in train),
    // accumulation, epochs, a validation split, dropped over-long examples, max_steps.
    let shapes: [(&str, &[&str]); 6] = [
        (texts, &["--seq-len", "64", "--batch-size", "2"]),
        (
            texts,
            &["--seq-len", "64", "--batch-size", "3", "--grad-accum", "2"],
        ),
        (
            texts,
            &[
                "--seq-len",
                "24",
                "--batch-size",
                "2",
                "--drop-overlong",
                "--val-fraction",
                "0.2",
            ],
        ),
        (
            chats,
            &[
                "--seq-len",
                "32",
                "--batch-size",
                "4",
                "--epochs",
                "2",
                "--pack",
                "false",
            ],
        ),
        (
            chats,
            &["--seq-len", "48", "--batch-size", "2", "--epochs", "3"],
        ),
        (
            texts,
            &["--seq-len", "64", "--batch-size", "2", "--max-steps", "5"],
        ),
    ];
    for (i, (data, flags)) in shapes.iter().enumerate() {
        let mut check = vec![
            "data", "check", data, "--model", model, "--json", "--gflops", "1",
        ];
        check.extend_from_slice(flags);
        let v = checked(&check);
        let out_dir = tmp.path().join(format!("runs/shape{i}"));
        let mut train = vec![
            "train",
            "--model",
            model,
            "--data",
            data,
            "--out",
            out_dir.to_str().unwrap(),
            "--rank",
            "2",
            "--checkpoint-every",
            "0",
        ];
        train.extend_from_slice(flags);
        let out = bora(&train);
        assert_ok(&out);
        assert_eq!(
            v["steps"].as_u64(),
            Some(trained_steps(&out)),
            "shape {i} {flags:?}: data check and train disagree"
        );
        let lines = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
        assert_eq!(v["steps"].as_u64(), Some(lines.lines().count() as u64));
    }
}

#[test]
fn data_check_times_real_steps_on_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("texts.jsonl");
    write_texts(&data, 30);
    let v = checked(&[
        "data",
        "check",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--seq-len",
        "64",
        "--val-fraction",
        "0.2",
    ]);
    let timing = &v["timing"];
    assert!(timing["micro_batch_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(timing["val_batch_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["run_seconds"].as_f64().unwrap() > 0.0);
    assert!(v["preflight_method"]
        .as_str()
        .unwrap()
        .contains("measured: 2 training micro-batch(es)"));
}

#[test]
fn runs_that_cannot_fit_are_refused_up_front_with_the_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("texts.jsonl");
    write_texts(&data, 20);
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());
    let run = tmp.path().join("runs/too-big");

    let train = [
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        run.to_str().unwrap(),
        "--max-steps",
        "2",
        "--seq-len",
        "64",
    ];
    let out = bora_with_memory(&train, "1M");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this run needs about")
            && err.contains("but 0.00 GiB is available")
            && err.contains("activations"),
        "{err}"
    );
    assert!(!run.exists(), "a refused run leaves no directory behind");

    let check = [
        "data",
        "check",
        data,
        "--model",
        model,
        "--gflops",
        "1",
        "--seq-len",
        "64",
    ];
    let out = bora_with_memory(&check, "1M");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(does not fit)"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("this run will not fit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With room to spare, the same commands go ahead.
    assert_ok(&bora_with_memory(&check, "64G"));
    assert_ok(&bora_with_memory(&train, "64G"));

    let out = bora_with_memory(&check, "plenty");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BORA_MEM_AVAILABLE=\"plenty\""));
}

#[test]
fn quant_sets_how_the_checkpoint_is_held() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let model = model.to_str().unwrap();
    let dtypes = |quant: Option<&str>| {
        let mut args = vec!["info", "--model", model];
        args.extend(quant.map(|q| ["--quant", q]).into_iter().flatten());
        let out = bora(&args);
        assert_ok(&out);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("train, QLoRA q4_1"), "{text}");
        text.lines()
            .find(|l| l.starts_with("dtypes:"))
            .unwrap()
            .to_string()
    };
    // A small f32 checkpoint stays f32 unless asked (the embedding matrix always does).
    assert!(dtypes(None).starts_with("dtypes:       F32 (15 matrices"));
    assert!(dtypes(Some("bf16")).contains("BF16 (14 matrices"));
    assert!(dtypes(Some("q4_0")).contains("Q4_0 (14 matrices"));
    assert!(dtypes(Some("q8_0")).contains("Q8_0 (14 matrices"));

    for quant in ["q8_0", "q4_1", "bf16"] {
        let out = bora(&[
            "generate",
            "--model",
            model,
            "--quant",
            quant,
            "--prompt",
            "w3 w4 w5",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ]);
        assert_ok(&out);
    }
    let out = bora(&[
        "generate", "--model", model, "--quant", "q2_k", "--prompt", "w3",
    ]);
    assert!(!out.status.success());
}
