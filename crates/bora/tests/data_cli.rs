//! `bora data check` run as a user runs it, on the default model (SmolLM2-135M-Instruct GGUF).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bora_formats::cache;
use serde_json::Value;

fn bora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bora"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("bora runs")
}

fn write_jsonl(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("train.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
    path
}

/// Ten examples of the three shapes and of different lengths (SmolLM2's ChatML template has no
/// tool calls, so none here: bora-data's tests cover them with Mistral tokenizers).
fn examples() -> Vec<String> {
    let mut lines: Vec<String> = (0..6)
        .map(|i| {
            format!(
                r#"{{"messages": [{{"role": "system", "content": "You add."}}, {{"role": "user", "content": "{i} plus {i}?"}}, {{"role": "assistant", "content": "{}{}"}}]}}"#,
                2 * i,
                " and that is the sum".repeat(i)
            )
        })
        .collect();
    lines.push(r#"{"prompt": "Capital of France?", "completion": "Paris."}"#.into());
    lines.push(r#"{"text": "Once upon a time there was a small model."}"#.into());
    lines.push(r#"{"prompt": "Say hi.", "completion": "Hi!"}"#.into());
    lines.push(r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 0}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}"#.into());
    lines
}

fn check_json(file: &Path, extra: &[&str]) -> Value {
    let model = cache::fetched_default_model().unwrap();
    let mut args = vec![
        "data",
        "check",
        file.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--gflops",
        "100",
    ];
    args.extend_from_slice(extra);
    let out = bora(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn json_figures_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_jsonl(dir.path(), &examples());
    let v = check_json(
        &file,
        &[
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
            "--seq-len",
            "512",
            "--pack",
            "false",
        ],
    );
    assert_eq!(v["examples"], 10);
    assert_eq!(v["skipped_lines"], 0);
    let (min, median, p95, max) = (
        v["tokens"]["min"].as_u64().unwrap(),
        v["tokens"]["median"].as_u64().unwrap(),
        v["tokens"]["p95"].as_u64().unwrap(),
        v["tokens"]["max"].as_u64().unwrap(),
    );
    assert!(min > 0 && min <= median && median <= p95 && p95 <= max);
    let (trained, total) = (
        v["trained_tokens"].as_u64().unwrap(),
        v["total_tokens"].as_u64().unwrap(),
    );
    assert!(trained > 0 && trained < total);
    // No packing: one example per row, 10 rows in batches of 4 → 3 batches, 2 per step → 2
    // steps an epoch; without --epochs, the 10 epochs `bora train` chooses (36 steps would
    // take more passes than its cap of 10) → 20 steps.
    assert_eq!(
        (v["batches"].as_u64(), v["steps"].as_u64()),
        (Some(3), Some(20))
    );
    let pre = &v["preflight"];
    let part = |k: &str| pre[k].as_u64().unwrap();
    assert_eq!(
        part("peak_bytes"),
        part("weight_bytes")
            + part("lora_bytes")
            + part("activation_bytes")
            + part("workspace_bytes")
            + part("runtime_bytes")
    );
    // transformers' `num_parameters()` of SmolLM2-135M-Instruct is 134,515,008; peft with r16 on
    // the 7 projections adds 4,884,480.
    assert_eq!(part("flops_per_token"), 4 * 134_515_008);
    assert_eq!(part("lora_parameters"), 4_884_480);
    let file_size = std::fs::metadata(cache::fetched_default_model().unwrap())
        .unwrap()
        .len();
    assert!(part("weight_bytes") < file_size && part("weight_bytes") > file_size * 9 / 10);
    assert_eq!(part("tokens_per_epoch"), 3 * 4 * 512);
    let seconds = pre["seconds_per_epoch"].as_f64().unwrap();
    let expected = (part("flops_per_token") * part("tokens_per_epoch")) as f64 / 100e9;
    assert!((seconds - expected).abs() < 1e-9 * expected);
    assert!(v["preflight_method"]
        .as_str()
        .unwrap()
        .starts_with("estimate"));

    // Over-long handling follows the flag; a held-out split shrinks the training set.
    let seq = (max - 1).to_string();
    let t = check_json(&file, &["--seq-len", &seq]);
    assert!(t["overlong"]["count"].as_u64().unwrap() >= 1);
    assert_eq!(t["overlong"]["policy"], "truncate");
    let d = check_json(&file, &["--seq-len", &seq, "--drop-overlong"]);
    assert_eq!(d["overlong"]["dropped"], t["overlong"]["count"]);
    assert_eq!(
        d["train_examples"].as_u64().unwrap(),
        10 - t["overlong"]["count"].as_u64().unwrap()
    );
    let s = check_json(&file, &["--val-fraction", "0.3"]);
    assert_eq!(
        (s["train_examples"].as_u64(), s["val_examples"].as_u64()),
        (Some(7), Some(3))
    );
    let p = check_json(&file, &["--seq-len", "2048"]);
    assert_eq!(
        p["batches"], 1,
        "packing is on by default, as in train: ten short examples fill fewer than 4 rows"
    );
}

#[test]
fn human_output_says_it_is_an_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_jsonl(dir.path(), &examples());
    let model = cache::fetched_default_model().unwrap();
    let out = bora(&[
        "data",
        "check",
        file.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--gflops",
        "100",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "10 examples",
        "tokens:     min",
        "trained:",
        "steps:",
        "preflight (estimate, not a measurement",
        "peak memory ≈",
        "per epoch",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn bad_lines_fail_with_file_line_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = examples();
    lines.insert(1, "{oops".into());
    lines.insert(
        3,
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}"#
            .into(),
    );
    let file = write_jsonl(dir.path(), &lines);
    let model = cache::fetched_default_model().unwrap();
    let out = bora(&[
        "data",
        "check",
        file.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--gflops",
        "100",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    assert!(
        err.contains(&format!(
            "{f}:2: json: invalid JSON: key must be a string at line 1 column 2"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            r#"{f}:4: messages[1].role: is "bot"; expected system, user, assistant or tool"#
        )),
        "{err}"
    );
    assert!(
        err.contains("2 bad line(s); fix them or pass --skip-bad-lines"),
        "{err}"
    );

    let v = check_json(&file, &["--skip-bad-lines"]);
    assert_eq!(
        (v["examples"].as_u64(), v["skipped_lines"].as_u64()),
        (Some(10), Some(2))
    );
}
