//! Checkpoint save/load: round trip, atomic publication, pruning and the errors a damaged
//! or mismatched checkpoint gives.

use std::fs;
use std::path::Path;

use bora_formats::safetensors::Safetensors;
use bora_train::{
    latest_checkpoint, save_adapter, AdamW, AdamWConfig, AdamWState, Checkpoint, DataPosition,
    LoraPart, LoraTarget, NamedTensor, ParamSpec, Rng, RunConfig, Stream, TrainError,
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LATEST_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE,
};

fn config() -> RunConfig {
    RunConfig::from_toml(
        "[model]\npath = \"base\"\n[data]\ntrain = \"t.jsonl\"\n[lora]\nrank = 2\ntargets = [\"q\", \"down\"]\n",
    )
    .unwrap()
}

fn specs() -> Vec<ParamSpec> {
    let mut out = Vec::new();
    for layer in 0..2 {
        for (t, (inp, outp)) in [(LoraTarget::Q, (8, 8)), (LoraTarget::Down, (12, 8))] {
            out.push(ParamSpec {
                name: t.peft_name(layer, LoraPart::A),
                shape: vec![2, inp],
            });
            out.push(ParamSpec {
                name: t.peft_name(layer, LoraPart::B),
                shape: vec![outp, 2],
            });
        }
    }
    out
}

fn checkpoint(step: u64) -> Checkpoint {
    let mut rng = Rng::new(step, Stream::Init);
    let params: Vec<NamedTensor> = specs()
        .into_iter()
        .map(|s| NamedTensor {
            values: (0..s.shape.iter().product::<usize>())
                .map(|_| rng.uniform() - 0.5)
                .collect(),
            name: s.name,
            shape: s.shape,
        })
        .collect();
    let optimizer = AdamWState {
        step,
        exp_avg: params
            .iter()
            .map(|p| p.values.iter().map(|x| x * 0.1).collect())
            .collect(),
        exp_avg_sq: params
            .iter()
            .map(|p| p.values.iter().map(|x| x * x).collect())
            .collect(),
    };
    Checkpoint {
        step,
        adapter_config: config().adapter_config(),
        params,
        optimizer,
        rng: Rng::new(99, Stream::Dropout).state(),
        data: DataPosition {
            epoch: 1,
            index: step * 4,
        },
        elapsed_s: step as f64 * 1.5,
    }
}

fn step_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn round_trip_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(3);
    let dir = ckpt.save(tmp.path(), 2).unwrap();
    assert_eq!(dir, tmp.path().join("step-3"));
    let back = Checkpoint::load_latest(tmp.path(), &specs())
        .unwrap()
        .unwrap();
    assert_eq!(back, ckpt);
    assert_eq!(
        Rng::from_state(&back.rng).unwrap(),
        Rng::new(99, Stream::Dropout)
    );
}

#[test]
fn adapter_files_are_peft_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(1);
    let dir = ckpt.save(tmp.path(), 2).unwrap();
    let st = Safetensors::open(dir.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    assert_eq!(st.metadata().get("format").map(String::as_str), Some("pt"));
    for p in &ckpt.params {
        let info = st.tensor(&p.name).unwrap();
        assert_eq!(info.dtype, bora_formats::safetensors::Dtype::F32);
        assert_eq!(info.shape, p.shape);
        assert_eq!(st.tensor_f32(&p.name).unwrap(), p.values);
    }
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["r"], 2);
    assert_eq!(
        json["target_modules"],
        serde_json::json!(["down_proj", "q_proj"])
    );

    let final_dir = tmp.path().join("adapter");
    save_adapter(&final_dir, &ckpt.adapter_config, &ckpt.params).unwrap();
    save_adapter(&final_dir, &ckpt.adapter_config, &ckpt.params).unwrap();
    let mut files = step_dirs(&final_dir);
    files.sort();
    assert_eq!(files, [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE]);
}

#[test]
fn keeps_newest_and_drops_abandoned_later_steps() {
    let tmp = tempfile::tempdir().unwrap();
    for step in [1, 2, 3] {
        checkpoint(step).save(tmp.path(), 2).unwrap();
    }
    assert_eq!(step_dirs(tmp.path()), [LATEST_FILE, "step-2", "step-3"]);
    // A resumed run that restarts from step 2 and saves step 2 again: step-3 belongs to the
    // abandoned future and goes.
    checkpoint(2).save(tmp.path(), 2).unwrap();
    assert_eq!(step_dirs(tmp.path()), [LATEST_FILE, "step-2"]);
    assert_eq!(
        latest_checkpoint(tmp.path()).unwrap().unwrap(),
        tmp.path().join("step-2")
    );
}

#[test]
fn leftovers_of_a_killed_save_are_ignored_then_cleaned() {
    let tmp = tempfile::tempdir().unwrap();
    checkpoint(1).save(tmp.path(), 2).unwrap();
    let partial = tmp.path().join(".step-2.partial-4242");
    fs::create_dir(&partial).unwrap();
    fs::write(partial.join(ADAPTER_WEIGHTS_FILE), b"torn").unwrap();
    fs::write(tmp.path().join(".latest.4242.partial"), b"step-").unwrap();
    assert_eq!(
        Checkpoint::load_latest(tmp.path(), &specs())
            .unwrap()
            .unwrap()
            .step,
        1
    );
    checkpoint(2).save(tmp.path(), 2).unwrap();
    assert_eq!(step_dirs(tmp.path()), [LATEST_FILE, "step-1", "step-2"]);
}

#[test]
fn no_checkpoint_yet_is_none() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(Checkpoint::load_latest(tmp.path(), &specs())
        .unwrap()
        .is_none());
}

#[test]
fn missing_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = checkpoint(1).save(tmp.path(), 2).unwrap();
    for file in [
        ADAPTER_CONFIG_FILE,
        ADAPTER_WEIGHTS_FILE,
        OPTIMIZER_FILE,
        TRAINER_STATE_FILE,
    ] {
        let copy = tmp.path().join("copy").join("step-1");
        fs::create_dir_all(&copy).unwrap();
        for f in fs::read_dir(&dir).unwrap() {
            let f = f.unwrap();
            fs::copy(f.path(), copy.join(f.file_name())).unwrap();
        }
        fs::remove_file(copy.join(file)).unwrap();
        let err = Checkpoint::load(&copy, &specs()).unwrap_err();
        assert!(
            matches!(&err, TrainError::MissingCheckpointFile { file: f, .. } if *f == file),
            "{err}"
        );
        assert!(err.to_string().contains(file));
        fs::remove_dir_all(tmp.path().join("copy")).unwrap();
    }
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = checkpoint(1).save(tmp.path(), 2).unwrap();
    let mut wrong = specs();
    wrong[2].shape = vec![4, 12];
    let err = Checkpoint::load(&dir, &wrong).unwrap_err();
    let name = LoraTarget::Down.peft_name(0, LoraPart::A);
    match &err {
        TrainError::TensorShape {
            name: n,
            expected,
            found,
            ..
        } => {
            assert_eq!(n, &name);
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                (&[4, 12][..], &[2, 12][..])
            );
        }
        other => panic!("expected a shape error, got {other}"),
    }
    assert!(err.to_string().contains(&name));
}

#[test]
fn missing_and_unexpected_tensors_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = checkpoint(1).save(tmp.path(), 2).unwrap();
    let mut more = specs();
    let extra = LoraTarget::V.peft_name(5, LoraPart::A);
    more.push(ParamSpec {
        name: extra.clone(),
        shape: vec![2, 8],
    });
    let err = Checkpoint::load(&dir, &more).unwrap_err().to_string();
    assert!(err.contains(&extra) && err.contains("missing"), "{err}");
    let fewer = &specs()[1..];
    let err = Checkpoint::load(&dir, fewer).unwrap_err().to_string();
    assert!(
        err.contains(&specs()[0].name) && err.contains("unexpected"),
        "{err}"
    );
}

#[test]
fn bad_latest_pointer_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    checkpoint(1).save(tmp.path(), 2).unwrap();
    fs::write(tmp.path().join(LATEST_FILE), "../../etc\n").unwrap();
    let err = latest_checkpoint(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not a checkpoint name"), "{err}");
    fs::write(tmp.path().join(LATEST_FILE), "step-9\n").unwrap();
    let err = latest_checkpoint(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("step-9") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn inconsistent_state_is_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ckpt = checkpoint(1);
    ckpt.optimizer.exp_avg[3].pop();
    let err = ckpt.save(tmp.path(), 2).unwrap_err().to_string();
    assert!(err.contains(&ckpt.params[3].name), "{err}");
    assert!(latest_checkpoint(tmp.path()).unwrap().is_none());
}

/// Training interrupted by a checkpoint round trip continues exactly as if never stopped.
#[test]
fn resumed_optimizer_continues_bit_for_bit() {
    let config = AdamWConfig {
        betas: (0.9, 0.95),
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let start = checkpoint(0);
    let grads_at = |step: u64| -> Vec<Vec<f32>> {
        let mut rng = Rng::new(step, Stream::Data);
        start
            .params
            .iter()
            .map(|p| p.values.iter().map(|_| rng.uniform() - 0.5).collect())
            .collect()
    };
    let run = |params: &mut Vec<NamedTensor>, opt: &mut AdamW, steps: std::ops::Range<u64>| {
        for step in steps {
            let grads = grads_at(step);
            let g: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            let mut p: Vec<&mut [f32]> =
                params.iter_mut().map(|t| t.values.as_mut_slice()).collect();
            opt.step(1e-2, &mut p, &g).unwrap();
        }
    };
    let sizes: Vec<usize> = start.params.iter().map(|p| p.values.len()).collect();

    let mut straight = start.params.clone();
    let mut opt = AdamW::new(config, &sizes);
    run(&mut straight, &mut opt, 0..5);

    let tmp = tempfile::tempdir().unwrap();
    let mut params = start.params.clone();
    let mut opt = AdamW::new(config, &sizes);
    run(&mut params, &mut opt, 0..3);
    let saved = Checkpoint {
        step: 3,
        params,
        optimizer: opt.state().clone(),
        ..start.clone()
    };
    saved.save(tmp.path(), 2).unwrap();
    let loaded = Checkpoint::load_latest(tmp.path(), &specs())
        .unwrap()
        .unwrap();
    let mut params = loaded.params;
    let mut opt = AdamW::with_state(config, loaded.optimizer);
    run(&mut params, &mut opt, 3..5);

    assert_eq!(params, straight);
}
