//! `bora push` against a loopback Hub (the fake of bora-hub's tests): the files and layout
//! a push commits, the model card, multipart with a dropped part, a second push that sends
//! nothing, and every refusal that must come before any upload.

#[path = "../../bora-hub/tests/hub_support/mod.rs"]
mod hub_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bora_eval::{write_eval_dir, EvalResults, RunInfo, SampleRow};
use hub_support::{read_token_whoami, sha256, FakeHub, Fault, TOKEN};
use serde_json::{json, Value};

const BASE: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A finished, evaluated, exported run: what `bora train`, `bora eval` and `bora export`
/// leave behind (the eval files written by bora-eval itself).
fn make_run(root: &Path, exports: bool) -> PathBuf {
    let run = root.join("runs/demo");
    std::fs::create_dir_all(run.join("adapter")).unwrap();
    std::fs::write(
        run.join("config.toml"),
        format!(
            "name = \"demo\"\n[model]\npath = \"{BASE}\"\n[data]\ntrain = \"/home/ada/data/train.jsonl\"\n"
        ),
    )
    .unwrap();
    let adapter_config = json!({"base_model_name_or_path": "/home/ada/models/smol",
                                "peft_type": "LORA", "r": 8, "lora_alpha": 16});
    std::fs::write(
        run.join("adapter/adapter_config.json"),
        adapter_config.to_string(),
    )
    .unwrap();
    std::fs::write(
        run.join("adapter/adapter_model.safetensors"),
        pattern(40_000, 1),
    )
    .unwrap();
    if exports {
        let merged = run.join("export/merged");
        std::fs::create_dir_all(&merged).unwrap();
        std::fs::write(merged.join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
        std::fs::write(merged.join("model.safetensors"), pattern(300_000, 2)).unwrap();
        let gguf = run.join("export/gguf");
        std::fs::create_dir_all(&gguf).unwrap();
        std::fs::write(gguf.join("demo-q8_0.gguf"), pattern(3 << 20, 3)).unwrap();
    }
    let results: EvalResults = serde_json::from_value(json!({
        "metric": "json", "n": 200,
        "base": {"score": 0.0, "correct": 0, "ci95": [0.0, 0.0188], "nll": 2.56, "ppl": 12.95},
        "tuned": {"score": 1.0, "correct": 200, "ci95": [0.9812, 1.0], "nll": 0.0003, "ppl": 1.0003},
        "model": "/home/ada/models/smol.gguf", "adapter": "runs/demo/adapter",
        "data": "test.jsonl", "eval_seconds": 12.5
    }))
    .unwrap();
    let samples: Vec<SampleRow> = vec![serde_json::from_value(json!({
        "line": 1, "prompt": "p", "expected": "{}", "base": "x", "tuned": "{}",
        "base_score": 0.0, "tuned_score": 1.0
    }))
    .unwrap()];
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":2.5}\n{\"step\":2,\"loss\":1.5}\n{\"step\":3,\"loss\":0.5,\"val_loss\":0.7}\n",
    )
    .unwrap();
    let info = RunInfo::load(&run).unwrap();
    write_eval_dir(&run.join("eval"), &results, &samples, Some(&info)).unwrap();
    run
}

fn bora(home: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.arg("push").args(args).env("HOME", home);
    for k in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HOME",
        "XDG_CACHE_HOME",
        "HF_ENDPOINT",
    ] {
        cmd.env_remove(k);
    }
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn push_uploads_adapter_merged_and_gguf_with_a_card_then_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let run = make_run(dir.path(), true);
    let run_s = run.display().to_string();
    let hub = FakeHub::start();
    hub.state.lock().unwrap().chunk_size = Some(1 << 20);
    let gguf_oid = sha256(&pattern(3 << 20, 3));
    hub.fail_once(&format!("/storage/part/{gguf_oid}/2"), Fault::Drop);
    let args = [
        "--run",
        &run_s,
        "--repo",
        "bora-ml/smol-demo",
        "--what",
        "gguf,adapter,merged",
        "--endpoint",
        &hub.url,
    ];
    let out = bora(dir.path(), Some(TOKEN), &args);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains(TOKEN), "the token must never be printed");
    assert!(
        all.contains("gguf/demo-q8_0.gguf (3.0 MiB, lfs): uploaded to LFS in 3 parts"),
        "{all}"
    );
    assert!(all.contains("README.md"), "{all}");

    let state = hub.state.lock().unwrap();
    let mut paths: Vec<&str> = state.files.keys().map(String::as_str).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "eval/loss.svg",
            "gguf/demo-q8_0.gguf",
            "merged/config.json",
            "merged/model.safetensors",
        ]
    );
    let adapter_config: Value =
        serde_json::from_slice(&state.regular["adapter_config.json"]).unwrap();
    assert_eq!(adapter_config["base_model_name_or_path"], BASE);
    assert_eq!(adapter_config["r"], 8);
    let card = String::from_utf8(state.regular["README.md"].clone()).unwrap();
    let front = format!(
        "---\nbase_model: {BASE}\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n- bora\n- lora\n- mistral\n- gguf\n---\n"
    );
    assert!(card.starts_with(&front), "{card}");
    assert!(
        card.contains("| tuned | 100.0% | 98.1% – 100.0% | 200/200 |"),
        "{card}"
    );
    assert!(
        card.contains("![Training and validation loss](eval/loss.svg)"),
        "{card}"
    );
    assert!(
        card.contains("PeftModel.from_pretrained(base, \"bora-ml/smol-demo\")"),
        "{card}"
    );
    assert!(card.contains("subfolder=\"merged\""), "{card}");
    assert!(card.contains("--hf-file gguf/demo-q8_0.gguf"), "{card}");
    assert!(
        card.contains("train = \"train.jsonl\""),
        "local paths are cut: {card}"
    );
    assert!(!card.contains("/home/ada"), "{card}");
    let svg = String::from_utf8(state.regular["eval/loss.svg"].clone()).unwrap();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox="),
        "{svg}"
    );
    let html = std::fs::read_to_string(run.join("eval/report.html")).unwrap();
    let polyline = &svg[svg.find("<polyline").unwrap()..svg.find("</svg>").unwrap()];
    assert!(html.contains(polyline), "the chart is bora eval's own");
    assert_eq!(state.objects[&gguf_oid], pattern(3 << 20, 3));
    assert_eq!(state.commits.len(), 1);
    drop(state);

    hub.clear_requests();
    let again = bora(dir.path(), Some(TOKEN), &args);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("nothing changed"), "{}", text(&again));
    let calls = hub.calls();
    assert!(
        calls
            .iter()
            .all(|c| c.0 != "PUT" && !c.1.contains("/commit/") && !c.1.contains("lfs")),
        "{calls:?}"
    );
    assert_eq!(hub.state.lock().unwrap().commits.len(), 1);
}

#[test]
fn push_refuses_before_any_upload() {
    let dir = tempfile::tempdir().unwrap();
    let run = make_run(dir.path(), false);
    let run_s = run.display().to_string();
    let hub = FakeHub::start();
    let push = |token: Option<&str>, repo: &str, what: &str| {
        let args = [
            "--run",
            &run_s,
            "--repo",
            repo,
            "--what",
            what,
            "--endpoint",
            &hub.url,
        ];
        let out = bora(dir.path(), token, &args);
        assert!(!out.status.success());
        let all = text(&out);
        assert!(!all.contains(TOKEN), "{all}");
        all
    };

    let e = push(Some(TOKEN), "smol-demo", "adapter");
    assert!(e.contains("repo id `smol-demo` is not valid"), "{e}");
    let e = push(Some(TOKEN), "bora-ml/smol-demo", "adapter,gguf");
    assert!(
        e.contains(&format!("bora export --run {run_s} --format gguf")),
        "{e}"
    );
    let e = push(None, "bora-ml/smol-demo", "adapter");
    assert!(
        e.contains("no Hugging Face token") && e.contains("HF_TOKEN"),
        "{e}"
    );
    assert!(hub.calls().is_empty(), "{:?}", hub.calls());

    hub.state.lock().unwrap().whoami = read_token_whoami();
    let e = push(Some(TOKEN), "bora-ml/smol-demo", "adapter");
    assert!(e.contains("`read` token"), "{e}");
    let e = push(Some("hf_not_the_right_one"), "bora-ml/smol-demo", "adapter");
    assert!(e.contains("rejected the token"), "{e}");
    assert!(!e.contains("hf_not_the_right_one"), "{e}");
    assert_eq!(
        hub.calls(),
        vec![
            ("GET".to_owned(), "/api/whoami-v2".to_owned()),
            ("GET".to_owned(), "/api/whoami-v2".to_owned())
        ]
    );
}
