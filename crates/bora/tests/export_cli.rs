//! `bora export` run as a user runs it, on a tiny run of the Llama fixture: each format's
//! default place and files, the built-in verification, and refusals.

mod common;

use std::path::Path;

use bora_formats::safetensors::Safetensors;
use common::{assert_ok, bora, model_dir, write_chats};

/// A finished 4-step run of the tiny Llama model in `root/runs/tiny`.
fn tiny_run(root: &Path) -> std::path::PathBuf {
    let model = model_dir(root, "llama");
    let data = root.join("data.jsonl");
    write_chats(&data, 16);
    let run = root.join("runs/tiny");
    let args = [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--max-steps",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--rank",
        "4",
        "--lr",
        "0.05",
        "--seed",
        "1",
    ];
    assert_ok(&bora(&args));
    run
}

fn export(run: &Path, format: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["export", "--run", run.to_str().unwrap(), "--format", format];
    args.extend_from_slice(extra);
    bora(&args)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_format_lands_in_the_run_and_is_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path());

    let out = export(&run, "peft", &[]);
    assert_ok(&out);
    assert!(stdout(&out).contains("verified:"), "{}", stdout(&out));
    let peft = run.join("export/peft");
    let ours = Safetensors::open(peft.join("adapter_model.safetensors")).unwrap();
    let trained = Safetensors::open(run.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(ours.tensors().len(), trained.tensors().len());
    for t in trained.tensors() {
        assert_eq!(
            ours.tensor_f32(&t.name).unwrap(),
            trained.tensor_f32(&t.name).unwrap(),
            "{}",
            t.name
        );
    }

    let out = export(
        &run,
        "merged",
        &["--dtype", "f32", "--shard-size", "100000"],
    );
    assert_ok(&out);
    assert!(stdout(&out).contains("verified:"), "{}", stdout(&out));
    let merged = run.join("export/merged");
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00003.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(merged.join(f).is_file(), "{f} missing");
    }

    let out = export(&run, "mistral", &[]);
    assert_ok(&out);
    assert!(run.join("export/mistral/lora.safetensors").is_file());
    let params: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("export/mistral/params.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(params["lora"]["rank"], 4);

    // The merged export is itself a model bora runs.
    let out = bora(&[
        "generate",
        "--model",
        merged.to_str().unwrap(),
        "--prompt",
        "w3 w4",
        "--max-tokens",
        "2",
    ]);
    assert_ok(&out);
}

#[test]
fn existing_output_needs_force_and_model_adapter_form_needs_out() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path());
    assert_ok(&export(&run, "peft", &["--no-verify"]));
    let again = export(&run, "peft", &[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("--force"), "{err}");
    let forced = export(&run, "peft", &["--force"]);
    assert_ok(&forced);

    let model = tmp.path().join("llama");
    let adapter = run.join("adapter");
    let base = [
        "export",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--format",
        "merged",
    ];
    let out = bora(&base);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out"));
    let dest = tmp.path().join("merged-bf16");
    let mut args = base.to_vec();
    args.extend(["--out", dest.to_str().unwrap()]);
    let out = bora(&args);
    assert_ok(&out);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");

    let bad = bora(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--format",
        "peft",
        "--dtype",
        "bf16",
    ]);
    assert!(!bad.status.success());
    let no_adapter = bora(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--format",
        "peft",
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(!no_adapter.status.success());
    assert!(String::from_utf8_lossy(&no_adapter.stderr).contains("--adapter"));
}

/// The GGUF formats need a GGUF base: the run's adapter (trained on the HF copy of the tiny
/// Llama) on the same weights as `llama.gguf`.
#[test]
fn gguf_formats_from_a_gguf_base_are_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path());
    let gguf = common::fixture("llama.gguf");
    let adapter = run.join("adapter");
    let export_gguf = |format: &str, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "export",
            "--model",
            gguf.to_str().unwrap(),
            "--adapter",
            adapter.to_str().unwrap(),
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        bora(&args)
    };
    let merged = tmp.path().join("out/merged.gguf");
    let out = export_gguf("gguf", &merged, &["--dtype", "f32"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("verified:"), "{}", stdout(&out));
    assert!(merged.is_file());
    let again = export_gguf("gguf", &merged, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_ok(&export_gguf(
        "gguf",
        &merged,
        &["--force", "--dtype", "f16"],
    ));

    let lora = tmp.path().join("out/lora.gguf");
    let out = export_gguf("gguf-lora", &lora, &[]);
    assert_ok(&out);
    assert!(stdout(&out).contains("verified:"), "{}", stdout(&out));
    assert!(lora.is_file());
    let bad = export_gguf("gguf-lora", &lora, &["--force", "--dtype", "q4_0"]);
    assert!(!bad.status.success());
}

/// Hidden entries beside `out` that a writer of it left (`.NAME.PID.partial`, `.NAME.partial-PID`).
fn leftovers(out: &Path) -> Vec<String> {
    let name = out.file_name().unwrap().to_str().unwrap();
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|e| e.starts_with(&format!(".{name}.")))
        .collect()
}

/// `bora export` SIGKILLed while writing or checking a GGUF: the final name never holds the
/// unchecked file (only the hidden temporary exists), and the next export removes the dead
/// process's temporary. The kill comes as soon as the temporary appears, which is before the
/// reload check; a run that finished first is retried.
#[test]
fn a_killed_gguf_export_leaves_no_unchecked_file_and_its_debris_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path());
    let gguf = common::fixture("llama.gguf");
    let out = tmp.path().join("out/merged.gguf");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let adapter = run.join("adapter");
    let args = [
        "export",
        "--model",
        gguf.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--format",
        "gguf",
        "--dtype",
        "f32",
        "--force",
        "--out",
        out.to_str().unwrap(),
    ];
    let mut killed_with_debris = false;
    for _ in 0..20 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bora"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let seen = loop {
            if !leftovers(&out).is_empty() {
                break true;
            }
            if child.try_wait().unwrap().is_some() {
                break false;
            }
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let left = leftovers(&out);
        if seen && !left.is_empty() {
            killed_with_debris = true;
            assert!(!out.exists(), "an unchecked file got the final name");
            assert!(left[0].ends_with(".partial"), "{left:?}");
            break;
        }
        std::fs::remove_file(&out).ok();
    }
    assert!(killed_with_debris, "no kill landed before the rename");
    let done = bora(&args);
    assert_ok(&done);
    assert!(stdout(&done).contains("verified:"), "{}", stdout(&done));
    assert!(out.is_file());
    assert_eq!(leftovers(&out), Vec::<String>::new());
}
