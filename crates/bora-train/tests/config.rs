//! The run config: defaults, validation naming the key, CLI-style overrides and the
//! resolved file saved with the run.

use bora_train::{
    create_run_dir, open_run_dir, JsonlSink, LoraTarget, MetricSink, Metrics, RunConfig,
    ScheduleKind, TrainError,
};

const MINIMAL: &str = "[model]\npath = \"m.gguf\"\n[data]\ntrain = \"train.jsonl\"\n";

fn minimal() -> RunConfig {
    RunConfig::from_toml(MINIMAL).unwrap()
}

fn config_error(text: &str) -> String {
    RunConfig::from_toml(text).unwrap_err().to_string()
}

#[test]
fn left_out_keys_take_documented_defaults() {
    let cfg = minimal();
    let mut expected = RunConfig::default();
    expected.model.path = "m.gguf".into();
    expected.data.train = "train.jsonl".into();
    assert_eq!(cfg, expected);
    assert_eq!(cfg.lora.targets, LoraTarget::ALL);
    assert_eq!(cfg.optim.schedule, ScheduleKind::Cosine);
}

#[test]
fn total_steps_from_epochs_or_max_steps() {
    let mut cfg = minimal();
    assert_eq!(cfg.data.eval_path(), None);
    cfg.train.epochs = 3;
    cfg.train.grad_accum = 4;
    // 10 micro-batches in windows of 4: 4 + 4 + 2, three steps per epoch.
    assert_eq!(cfg.total_steps(10), 9);
    assert_eq!(cfg.total_steps(8), 6);
    cfg.train.max_steps = 5;
    assert_eq!(cfg.total_steps(10), 5);
    assert_eq!(cfg.lr_schedule(5).total_steps, 5);
    assert_eq!(cfg.adamw().betas, (0.9, 0.999));
}

#[test]
fn resolved_config_round_trips() {
    let text = format!(
        "name = \"exp-1\"\n{MINIMAL}[lora]\nrank = 8\nalpha = 16.5\ntargets = [\"gate\", \"q\"]\n\
         [optim]\nbetas = [0.8, 0.95]\nschedule = \"linear\"\nwarmup_steps = 5\n\
         [train]\nmax_steps = 50\nseed = 7\n[qlora]\nenabled = true\nquant = \"q8_0\"\n"
    );
    let cfg = RunConfig::from_toml(&text).unwrap();
    assert_eq!(cfg.lora.targets, [LoraTarget::Gate, LoraTarget::Q]);
    let resolved = cfg.to_toml().unwrap();
    assert!(resolved.contains("[optim]") && resolved.contains("max_grad_norm = 1.0"));
    assert_eq!(RunConfig::from_toml(&resolved).unwrap(), cfg);
}

#[test]
fn unknown_keys_and_wrong_types_are_named() {
    let err = config_error(&format!("{MINIMAL}[lora]\nrnak = 4\n"));
    assert!(err.contains("rnak"), "{err}");
    let err = config_error(&format!("{MINIMAL}[lora]\nrank = \"four\"\n"));
    assert!(err.contains("rank"), "{err}");
    let err = config_error(&format!(
        "{MINIMAL}[lora]\ntargets = [\"q\", \"lm_head\"]\n"
    ));
    assert!(err.contains("lm_head") && err.contains("targets"), "{err}");
    let err = config_error(&format!("{MINIMAL}[trian]\nseed = 1\n"));
    assert!(err.contains("trian"), "{err}");
}

#[test]
fn out_of_range_values_are_named() {
    for (extra, key) in [
        ("[lora]\nrank = 0\n", "lora.rank"),
        ("[lora]\nalpha = -1.0\n", "lora.alpha"),
        ("[lora]\ndropout = 1.0\n", "lora.dropout"),
        ("[lora]\ntargets = []\n", "lora.targets"),
        ("[lora]\ntargets = [\"q\", \"k\", \"q\"]\n", "lora.targets"),
        ("[optim]\nlr = 0.0\n", "optim.lr"),
        ("[optim]\nlr = nan\n", "optim.lr"),
        ("[optim]\nweight_decay = -0.1\n", "optim.weight_decay"),
        ("[optim]\nbetas = [0.9, 1.0]\n", "optim.betas"),
        ("[optim]\neps = 0.0\n", "optim.eps"),
        ("[optim]\nmax_grad_norm = -1.0\n", "optim.max_grad_norm"),
        (
            "[optim]\nwarmup_steps = 20\n[train]\nmax_steps = 10\n",
            "optim.warmup_steps",
        ),
        ("[train]\nepochs = 0\n", "train.epochs"),
        ("[train]\nbatch_size = 0\n", "train.batch_size"),
        ("[train]\ngrad_accum = 0\n", "train.grad_accum"),
        ("[train]\nseq_len = 1\n", "train.seq_len"),
        ("[train]\nkeep_checkpoints = 0\n", "train.keep_checkpoints"),
        ("[qlora]\nquant = \"q5_0\"\n", "qlora.quant"),
    ] {
        let err = RunConfig::from_toml(&format!("{MINIMAL}{extra}")).unwrap_err();
        assert!(
            matches!(&err, TrainError::Config { key: k, .. } if k == key),
            "{extra}: {err}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
    let err = config_error("[data]\ntrain = \"t.jsonl\"\n");
    assert!(
        err.contains("model.path") && err.contains("required"),
        "{err}"
    );
    let err = config_error("[model]\npath = \"m\"\n");
    assert!(err.contains("data.train"), "{err}");
    let err = config_error(&format!("name = \"../escape\"\n{MINIMAL}"));
    assert!(err.contains("`name`"), "{err}");
}

#[test]
fn every_key_can_be_overridden_like_a_cli_flag() {
    let mut cfg = minimal();
    cfg.apply_override("lora.rank", "32").unwrap();
    cfg.apply_override("lora.alpha", "64").unwrap();
    cfg.apply_override("lora.targets", "[\"q\", \"v\"]")
        .unwrap();
    cfg.apply_override("lora.rslora", "true").unwrap();
    cfg.apply_override("optim.betas", "[0.8, 0.9]").unwrap();
    cfg.apply_override("optim.schedule", "linear").unwrap();
    cfg.apply_override("optim.lr", "3e-4").unwrap();
    cfg.apply_override("model.path", "models/other.gguf")
        .unwrap();
    cfg.apply_override("data.eval", "val.jsonl").unwrap();
    cfg.apply_override("train.max_steps", "100").unwrap();
    cfg.apply_override("name", "sweep-3").unwrap();
    assert_eq!(cfg.lora.rank, 32);
    assert_eq!(cfg.lora.alpha, 64.0);
    assert_eq!(cfg.lora.targets, [LoraTarget::Q, LoraTarget::V]);
    assert!(cfg.lora.rslora);
    assert_eq!(cfg.optim.betas, [0.8, 0.9]);
    assert_eq!(cfg.optim.schedule, ScheduleKind::Linear);
    assert_eq!(cfg.optim.lr, 3e-4);
    assert_eq!(cfg.model.path, "models/other.gguf");
    assert_eq!(
        cfg.data.eval_path(),
        Some(std::path::Path::new("val.jsonl"))
    );
    assert_eq!(cfg.train.max_steps, 100);
    assert_eq!(cfg.name, "sweep-3");
}

#[test]
fn bad_overrides_name_the_key_and_change_nothing() {
    let before = minimal();
    for (key, value, needle) in [
        ("lora.rank", "abc", "lora.rank"),
        ("lora.rank", "0", "lora.rank"),
        ("lora.rnak", "4", "rnak"),
        ("nosuch.key", "1", "nosuch"),
        ("train.seed", "-1", "train.seed"),
        ("optim.schedule", "exponential", "optim.schedule"),
        ("lora", "3", "lora"),
    ] {
        let mut cfg = before.clone();
        let err = cfg.apply_override(key, value).unwrap_err().to_string();
        assert!(err.contains(needle), "{key}={value}: {err}");
        assert_eq!(cfg, before, "{key}={value} must not half-apply");
    }
}

#[test]
fn load_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run.toml");
    std::fs::write(&path, "[lora\nrank = 2\n").unwrap();
    let err = RunConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("run.toml"), "{err}");
    let err = RunConfig::load(tmp.path().join("absent.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.toml"), "{err}");
}

#[test]
fn run_dir_saves_resolved_config_and_refuses_a_different_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = minimal();
    let run = create_run_dir(tmp.path(), &cfg).unwrap();
    assert_eq!(run.path(), tmp.path().join("run"));
    assert!(run.checkpoints_dir().is_dir());
    let (reopened, read_back) = open_run_dir(run.path()).unwrap();
    assert_eq!(read_back, cfg);
    assert_eq!(reopened.metrics_path(), run.path().join("metrics.jsonl"));
    // Same config again: a resume.
    create_run_dir(tmp.path(), &cfg).unwrap();
    // A config file from before `[tracking]` existed, and tracking switched on for the
    // resume: the same run, and the file is brought up to date.
    let saved = std::fs::read_to_string(run.config_path()).unwrap();
    let cut = saved.find("[tracking]").expect("tracking is written out");
    std::fs::write(run.config_path(), &saved[..cut]).unwrap();
    let mut tracked = cfg.clone();
    tracked.tracking.wandb = "proj".into();
    create_run_dir(tmp.path(), &tracked).unwrap();
    let (_, read_back) = open_run_dir(run.path()).unwrap();
    assert_eq!(read_back, tracked);
    let mut other = cfg.clone();
    other.lora.rank = 4;
    let err = create_run_dir(tmp.path(), &other).unwrap_err().to_string();
    assert!(err.contains("different config"), "{err}");
}

fn metrics(step: u64) -> Metrics {
    Metrics {
        step,
        loss: 2.5 / step as f32,
        lr: 1e-4,
        grad_norm: 0.75,
        tokens_per_s: 1234.5,
        processed_tokens_per_s: 2345.5,
        val_loss: step.is_multiple_of(2).then_some(1.25),
    }
}

#[test]
fn jsonl_metrics_one_object_per_line_and_resume_drops_replayed_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.jsonl");
    let mut sink = JsonlSink::create(&path).unwrap();
    for step in 1..=5 {
        sink.log(&metrics(step)).unwrap();
    }
    sink.flush().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["step"], 1);
    assert_eq!(lines[0]["loss"], 2.5);
    assert!(lines[0].get("val_loss").is_none());
    assert_eq!(lines[1]["val_loss"], 1.25);
    for key in ["lr", "grad_norm", "tokens_per_s"] {
        assert!(lines[4][key].is_number(), "{key}");
    }

    // Killed after step 5, resumed from the checkpoint of step 3.
    let mut sink = JsonlSink::resume(&path, 3).unwrap();
    sink.log(&metrics(4)).unwrap();
    let steps: Vec<u64> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Metrics>(l).unwrap().step)
        .collect();
    assert_eq!(steps, [1, 2, 3, 4]);

    // A NaN validation loss is logged as `null`; resuming still works.
    let mut sink = JsonlSink::resume(&path, 4).unwrap();
    sink.log(&Metrics {
        val_loss: Some(f32::NAN),
        ..metrics(5)
    })
    .unwrap();
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("\"val_loss\":null"));
    JsonlSink::resume(&path, 5).unwrap();

    std::fs::write(&path, "{\"loss\": 1}\n").unwrap();
    let err = JsonlSink::resume(&path, 3).err().unwrap().to_string();
    assert!(
        err.contains("metrics.jsonl") && err.contains("line 1"),
        "{err}"
    );
}
