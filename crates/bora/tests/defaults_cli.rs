//! `bora train` without hyperparameters on the tiny Llama fixture: the settings it chooses are
//! printed and saved, flags still win, a validation split is held out (seeded), the run ends
//! with a held-out generation score; `--patience` keeps the best adapter and a resume from
//! before it ends with the same adapter.

mod common;

use std::path::Path;

use common::{assert_ok, bora, copy_dir, model_dir, write_chats};
use serde_json::Value;

fn train(args: &[&str]) -> (String, String) {
    let out = bora(args);
    assert_ok(&out);
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn val_losses(run: &Path) -> Vec<(u64, f64)> {
    read(&run.join("metrics.jsonl"))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|m| Some((m["step"].as_u64()?, m["val_loss"].as_f64()?)))
        .collect()
}

#[test]
fn unset_settings_are_chosen_printed_saved_and_scored_on_held_out_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_chats(&data, 120);
    let run = tmp.path().join("runs/auto-defaults");
    let (model_s, data_s, run_s) = (
        model.to_str().unwrap(),
        data.to_str().unwrap(),
        run.to_str().unwrap(),
    );
    let (stdout, stderr) = train(&[
        "train",
        "--model",
        model_s,
        "--data",
        data_s,
        "--out",
        run_s,
        "--seq-len",
        "32",
        "--rank",
        "4",
    ]);

    // Every choice is printed once with its reason and the flag that overrides it.
    for (key, hint) in [
        ("optim.lr", "--lr to override"),
        ("train.batch_size", "--batch-size to override"),
        ("data.val_fraction", "--val FILE or --val-fraction"),
        ("train.epochs", "--epochs or --max-steps"),
        ("optim.warmup_steps", "--warmup-steps"),
        ("train.eval_every", "--eval-every"),
    ] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with(&format!("{key} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{key} in:\n{stderr}");
        assert!(lines[0].contains(hint), "{}", lines[0]);
    }
    assert!(stderr.contains("LoRA r4 alpha 32 on a "), "{stderr}");
    // 120 examples: 12 held out.
    assert!(stderr.contains("12 of 120 examples held out"), "{stderr}");
    assert!(
        stderr.contains("training on 108 examples (12 for validation)"),
        "{stderr}"
    );

    // The choices are in the saved config: the values as keys, the reasons as comments,
    // and the saved config still loads as the run's.
    let config = read(&run.join("config.toml"));
    assert!(config.starts_with("# chosen: "), "{config}");
    assert!(config.contains("# chosen: optim.lr "), "{config}");
    // An epoch of 108 short examples packed into 32 tokens is 6 steps, short of the 36-step
    // minimum: the set is passed over as few times as reach it, 6.
    assert!(config.contains("\nepochs = 6\n"), "{config}");
    assert!(
        stderr.contains("an epoch is 6 steps; 6 make 36 (at least 36)"),
        "{stderr}"
    );
    assert!(config.contains("\nval_fraction = 0.1\n"), "{config}");

    // The held-out split is the training file's own lines, and the score is printed and saved.
    let train_lines: Vec<String> = read(&data).lines().map(str::to_owned).collect();
    let held: Vec<String> = read(&run.join("val.jsonl"))
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(held.len(), 12);
    assert!(held.iter().all(|l| train_lines.contains(l)));
    let score: Value = serde_json::from_str(&read(&run.join("heldout.json"))).unwrap();
    assert_eq!(score["n"], 12, "{score}");
    assert_eq!(score["metric"], "exact", "{score}");
    let line = format!(
        "held-out exact match {:.0}% on 12 examples",
        100.0 * score["score"].as_f64().unwrap()
    );
    assert!(stdout.contains(&line), "no `{line}` in:\n{stdout}");

    // The same command with another seed draws another split; the same seed the same one.
    let again = tmp.path().join("runs/again");
    train(&[
        "train",
        "--model",
        model_s,
        "--data",
        data_s,
        "--out",
        again.to_str().unwrap(),
        "--seq-len",
        "32",
        "--rank",
        "4",
        "--max-steps",
        "2",
        "--heldout",
        "0",
    ]);
    assert_eq!(read(&again.join("val.jsonl")), read(&run.join("val.jsonl")));
    assert!(!again.join("heldout.json").exists());
    let other_seed = tmp.path().join("runs/other-seed");
    train(&[
        "train",
        "--model",
        model_s,
        "--data",
        data_s,
        "--out",
        other_seed.to_str().unwrap(),
        "--seq-len",
        "32",
        "--rank",
        "4",
        "--max-steps",
        "2",
        "--seed",
        "9",
        "--heldout",
        "0",
    ]);
    assert_ne!(
        read(&other_seed.join("val.jsonl")),
        read(&run.join("val.jsonl"))
    );
}

#[test]
fn flags_win_over_chosen_settings_and_tiny_sets_keep_every_example() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_chats(&data, 30);
    let run = tmp.path().join("runs/given");
    let (_, stderr) = train(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--seq-len",
        "32",
        "--lr",
        "0.02",
        "--epochs",
        "2",
    ]);
    assert!(!stderr.contains("optim.lr "), "{stderr}");
    assert!(!stderr.contains("train.epochs "), "{stderr}");
    assert!(
        stderr.contains("no validation split: 30 examples are fewer than 50"),
        "{stderr}"
    );
    let config = read(&run.join("config.toml"));
    assert!(config.contains("\nlr = 0.02\n"), "{config}");
    assert!(config.contains("\nepochs = 2\n"), "{config}");
    assert!(!run.join("val.jsonl").exists());
    assert!(!run.join("heldout.json").exists());
}

/// Early stopping keeps the adapter of the lowest validation loss as the final one, and a
/// run resumed from a checkpoint before that best (with the best already on disk, as a run
/// killed after writing it leaves it) ends with the same adapter and steps.
#[test]
fn early_stopping_keeps_the_best_adapter_and_resumes_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path(), "llama");
    let data = tmp.path().join("train.jsonl");
    write_chats(&data, 60);
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--seq-len",
            "32",
            "--rank",
            "4",
            "--lr",
            "0.05",
            "--max-steps",
            "200",
            "--eval-every",
            "4",
            "--patience",
            "2",
            "--checkpoint-every",
            "4",
            "--keep-checkpoints",
            "100",
            "--heldout",
            "0",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run = tmp.path().join("runs/stop");
    let run_args = args(&run);
    let (_, stderr) = train(&run_args.iter().map(String::as_str).collect::<Vec<_>>());

    let vals = val_losses(&run);
    let (best_step, best_loss) = vals
        .iter()
        .copied()
        .fold(None, |best: Option<(u64, f64)>, (s, l)| match best {
            Some((_, bl)) if bl <= l => best,
            _ => Some((s, l)),
        })
        .unwrap();
    let last_step = vals.last().unwrap().0;
    assert!(last_step < 200, "the run did not stop early: {vals:?}");
    assert_eq!(last_step, best_step + 2 * 4, "{vals:?}");
    assert!(
        stderr.contains(&format!(
            "stopped early after step {last_step}; final adapter: step {best_step}"
        )),
        "{stderr}"
    );
    let best: Value = serde_json::from_str(&read(&run.join("best-adapter/best.json"))).unwrap();
    assert_eq!(best["step"], best_step);
    assert!((best["val_loss"].as_f64().unwrap() - best_loss).abs() < 1e-5);
    let weights = |dir: &Path| std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    assert!(weights(&run.join("adapter")) == weights(&run.join("best-adapter")));
    // The best adapter is the checkpoint of its step, not the last one.
    let ckpt = |s: u64| run.join(format!("checkpoints/step-{s}"));
    assert!(weights(&run.join("adapter")) == weights(&ckpt(best_step)));
    assert!(weights(&run.join("adapter")) != weights(&ckpt(last_step)));

    // Resume from the checkpoint before the best, with the best already on disk.
    assert!(
        best_step > 4,
        "the best came at the first validation: {vals:?}"
    );
    let resumed = tmp.path().join("runs/resumed");
    copy_dir(&run, &resumed);
    std::fs::remove_dir_all(resumed.join("adapter")).unwrap();
    std::fs::write(
        resumed.join("checkpoints/latest"),
        format!("step-{}\n", best_step - 4),
    )
    .unwrap();
    let metrics = read(&resumed.join("metrics.jsonl"));
    let kept: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).unwrap()["step"].as_u64() <= Some(best_step - 4)
        })
        .collect();
    std::fs::write(resumed.join("metrics.jsonl"), kept.join("\n") + "\n").unwrap();
    train(&["train", "--resume", resumed.to_str().unwrap()]);
    assert!(weights(&resumed.join("adapter")) == weights(&run.join("adapter")));
    assert_eq!(val_losses(&resumed), vals);
}
