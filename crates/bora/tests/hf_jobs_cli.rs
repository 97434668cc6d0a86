//! `bora train --on hf-jobs:FLAVOR` against the loopback Hub and Jobs API of bora-hub's tests
//! (`HF_ENDPOINT`). The base model comes from that Hub, the run's job files go to the user's
//! `bora-jobs` repo there, and the job is posted to its Jobs API, whose requests are checked
//! against the recording of `huggingface_hub`'s `run_job` (`fixtures/hf_jobs.json`).
//!
//! The job's container here is a STAND-IN, not the torch trainer: a thread of the test that
//! reads the job files bora uploaded (job.json, the initial adapter) from the Hub's state and
//! speaks the trainer's protocol (a JSON line per step, checkpoint and the end, with the
//! checkpoint and adapter files stored in the repo before their line, as the trainer's
//! `--hub-repo` mode does). What it proves is bora's side: preflight, upload, the job request,
//! following the log, mirroring metrics and checkpoints, downloading the adapter, failures,
//! cancellation and resume.
//!
//! The `#[ignore]`d tests at the end run the REAL job instead: the test Jobs API executes the
//! command bora posted (`bash -c` the job script, with the job's environment and secrets) as
//! a local process, with the pinned trainer environment first on `PATH` (CPU torch; the
//! script's `pip install`s find everything installed, so nothing is fetched), against this
//! test Hub (`HF_ENDPOINT`; `HF_HUB_DISABLE_XET=1`, since this Hub speaks LFS, not Xet). `scripts/test_torch_parity.sh` makes that environment and runs
//! them (torch is too heavy for CI).

#[allow(dead_code)]
mod common;
#[path = "../../bora-hub/tests/hub_support/mod.rs"]
mod hub_support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use bora_formats::safetensors::{write_safetensors, Dtype, Safetensors, TensorData};
use common::{assert_ok, bora_env, bora_env_command, fixture, write_chats, write_tokenizer};
use hub_support::jobs::JobControl;
use hub_support::{FakeHub, ModelRepo, State, TOKEN};
use serde_json::{json, Value};

const MODEL: &str = "bora-test/tiny";
const JOBS_REPO: &str = "ada/bora-jobs";

fn model_repo() -> ModelRepo {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path());
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    let mut repo = ModelRepo::new(MODEL);
    repo.commit(
        &["main"],
        &[
            ("config.json", read(fixture("llama").join("config.json"))),
            (
                "model.safetensors",
                read(fixture("llama").join("model.safetensors")),
            ),
            ("tokenizer.json", read(dir.path().join("tokenizer.json"))),
            (
                "tokenizer_config.json",
                read(dir.path().join("tokenizer_config.json")),
            ),
        ],
    );
    repo
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A committed file of the fake Hub (regular or LFS) by its path in the repo.
fn stored(s: &State, path: &str) -> Vec<u8> {
    let (oid, lfs) = s
        .files
        .get(path)
        .unwrap_or_else(|| panic!("{path} was uploaded"));
    if *lfs {
        s.objects[oid].clone()
    } else {
        s.regular[path].clone()
    }
}

/// The adapter tensors with every value set to `value`, and AdamW moments beside them.
fn adapter_files(initial: &[u8], value: f32) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.safetensors");
    std::fs::write(&src, initial).unwrap();
    let st = Safetensors::open(&src).unwrap();
    let mut weights = Vec::new();
    let mut moments = Vec::new();
    for t in st.tensors() {
        let n: usize = t.shape.iter().product();
        let filled = vec![value; n];
        weights.push((
            t.name.clone(),
            TensorData::from_f32(Dtype::F32, t.shape.clone(), &filled).unwrap(),
        ));
        for suffix in ["exp_avg", "exp_avg_sq"] {
            moments.push((
                format!("{}.{suffix}", t.name),
                TensorData::from_f32(Dtype::F32, t.shape.clone(), &vec![0.5; n]).unwrap(),
            ));
        }
    }
    let (w, m) = (
        dir.path().join("w.safetensors"),
        dir.path().join("m.safetensors"),
    );
    write_safetensors(&w, &weights, None).unwrap();
    write_safetensors(&m, &moments, None).unwrap();
    (std::fs::read(w).unwrap(), std::fs::read(m).unwrap())
}

/// How the stand-in job ends.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    Complete,
    /// Fails after this many steps (its checkpoints stored), as a crashed trainer does.
    FailAfter(u64),
    /// Runs into its timeout after this many steps.
    TimeOutAfter(u64),
    /// Logs one step, then waits to be cancelled.
    WaitForCancel,
}

/// The stand-in container: reads the job bora uploaded and plays the trainer's protocol.
fn stand_in(ending: Ending) -> impl Fn(JobControl) + Send + Sync + 'static {
    move |job: JobControl| {
        let folder = job.spec["environment"]["BORA_FOLDER"]
            .as_str()
            .unwrap()
            .to_owned();
        let (spec, initial) = {
            let s = job.state.lock().unwrap();
            let spec: Value =
                serde_json::from_slice(&stored(&s, &format!("{folder}/job/job.json"))).unwrap();
            let initial = stored(
                &s,
                &format!("{folder}/job/initial_adapter/adapter_model.safetensors"),
            );
            (spec, initial)
        };
        let publish = |rel: &str, files: Vec<(&str, Vec<u8>)>| {
            let files = files
                .into_iter()
                .map(|(name, bytes)| (format!("{folder}/out/{rel}/{name}"), bytes))
                .collect();
            job.state.lock().unwrap().commit_to_main(JOBS_REPO, files);
        };
        job.log("Collecting torch==2.15.0");
        let first = spec["first_step"].as_u64().unwrap();
        let total = spec["total_steps"].as_u64().unwrap();
        let checkpoints: Vec<u64> = spec["checkpoint_steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        for step in first + 1..=total {
            if let Ending::FailAfter(n) | Ending::TimeOutAfter(n) = ending {
                if step > n {
                    job.log("Traceback (most recent call last):");
                    job.log("torch.OutOfMemoryError: CUDA out of memory");
                    let message = match ending {
                        Ending::TimeOutAfter(_) => "Job timeout",
                        _ => "Job failed with exit code: 1",
                    };
                    job.finish("ERROR", Some(message));
                    return;
                }
            }
            let lr = spec["lrs"][(step - 1) as usize].as_f64().unwrap();
            job.log(
                &json!({"event": "step", "step": step, "loss": 3.0 - 0.25 * step as f64,
                        "lr": lr, "grad_norm": 1.5, "tokens_per_s": 1000.0})
                .to_string(),
            );
            if ending == Ending::WaitForCancel {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !job.cancelled() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            if checkpoints.contains(&step) {
                let rel = format!("checkpoints/step-{step}");
                let (w, m) = adapter_files(&initial, step as f32 / 100.0);
                publish(
                    &rel,
                    vec![
                        ("adapter_model.safetensors", w),
                        ("optimizer.safetensors", m),
                    ],
                );
                job.log(&json!({"event": "checkpoint", "step": step, "path": rel}).to_string());
            }
        }
        let (w, _) = adapter_files(&initial, 0.125);
        publish("adapter", vec![("adapter_model.safetensors", w)]);
        job.log(&json!({"event": "done", "adapter": "adapter"}).to_string());
        job.finish("COMPLETED", None);
    }
}

/// The real job: the posted command as a local process, its output lines the job's log. With
/// `stop_after_checkpoint` the job is killed once its first checkpoint is announced (as a
/// timeout or a crash would stop it), and ends in ERROR.
fn local_process(stop_after_checkpoint: bool) -> impl Fn(JobControl) + Send + Sync + 'static {
    move |job: JobControl| {
        let python = PathBuf::from(
            std::env::var("BORA_TORCH_PYTHON")
                .expect("BORA_TORCH_PYTHON names the trainer's Python"),
        );
        let bin = python.parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let scratch = tempfile::tempdir().unwrap();
        let command: Vec<String> = job.spec["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        let mut cmd = std::process::Command::new(&command[0]);
        cmd.args(&command[1..])
            .env_clear()
            .env("PATH", path)
            .env("HOME", scratch.path())
            .env("TMPDIR", scratch.path())
            .env("HF_HOME", scratch.path().join("hf"))
            // The test Hub stores uploads through the LFS protocol; huggingface_hub uploads
            // through Xet whenever hf_xet is installed, unless told not to.
            .env("HF_HUB_DISABLE_XET", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for key in ["environment", "secrets"] {
            for (k, v) in job.spec[key].as_object().unwrap() {
                cmd.env(k, v.as_str().unwrap());
            }
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let readers: Vec<_> = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        ]
        .into_iter()
        .map(|out| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            })
        })
        .collect();
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut stopped = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(_) if stopped => {}
                Ok(line) => {
                    job.log(&line);
                    if stop_after_checkpoint && line.contains("\"event\": \"checkpoint\"") {
                        stopped = true;
                        let _ = child.kill();
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if job.cancelled() || Instant::now() > deadline {
                let _ = child.kill();
            }
        }
        for r in readers {
            r.join().unwrap();
        }
        let status = child.wait().unwrap();
        if stopped {
            job.finish(
                "ERROR",
                Some("stopped by the test after the first checkpoint"),
            );
        } else if status.success() {
            job.finish("COMPLETED", None);
        } else {
            let message = format!("Job failed with exit code: {}", status.code().unwrap_or(-1));
            job.finish("ERROR", Some(&message));
        }
    }
}

struct Setup {
    hub: FakeHub,
    home: tempfile::TempDir,
    data: PathBuf,
    run: PathBuf,
}

/// `bora eval --run` scores the run directory as it would a local run's.
fn assert_eval_reads_the_run(s: &Setup) {
    let out = bora_env(
        &s.hub.url,
        s.home.path(),
        &[],
        &[
            "eval",
            "--run",
            s.run.to_str().unwrap(),
            "--data",
            s.data.to_str().unwrap(),
            "--metric",
            "exact",
            "--limit",
            "2",
            "--max-tokens",
            "2",
            "--json",
        ],
    );
    assert_ok(&out);
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(v["n"], 2);
}

fn setup() -> Setup {
    let hub = FakeHub::start();
    hub.add_model(model_repo());
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data.jsonl");
    write_chats(&data, 12);
    let run = home.path().join("runs/support");
    Setup {
        hub,
        home,
        data,
        run,
    }
}

/// A new 4-step run (micro-batches of `batch` × `seq` tokens) on a10g-small with `token`.
fn train_as(s: &Setup, token: &str, batch: &str, seq: &str) -> Output {
    train_with(s, token, batch, seq, &[])
}

fn train_with(s: &Setup, token: &str, batch: &str, seq: &str, extra: &[&str]) -> Output {
    let mut args = train_args(s, batch, seq);
    args.extend_from_slice(extra);
    bora_env(&s.hub.url, s.home.path(), &[("HF_TOKEN", token)], &args)
}

fn train_args<'a>(s: &'a Setup, batch: &'a str, seq: &'a str) -> Vec<&'a str> {
    let mut args = run_args(s, &s.run, batch, seq);
    args.extend(["--on", "hf-jobs:a10g-small"]);
    args
}

/// A new 4-step run into `run` (checkpoints every 2 steps), without `--on`.
fn run_args<'a>(s: &'a Setup, run: &'a Path, batch: &'a str, seq: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        MODEL,
        "--data",
        s.data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--max-steps",
        "4",
        "--batch-size",
        batch,
        "--seq-len",
        seq,
        "--rank",
        "2",
        "--checkpoint-every",
        "2",
    ]
}

fn train(s: &Setup) -> Output {
    train_as(s, TOKEN, "2", "16")
}

fn resume(s: &Setup) -> Output {
    bora_env(
        &s.hub.url,
        s.home.path(),
        &[("HF_TOKEN", TOKEN)],
        &[
            "train",
            "--resume",
            s.run.to_str().unwrap(),
            "--on",
            "hf-jobs:a10g-small",
        ],
    )
}

fn metrics_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| v.get("loss").map(|_| v["step"].as_u64().unwrap()))
        .collect()
}

/// The token must appear nowhere but in the job's secrets: not in output, not in any file of
/// the run directory.
fn assert_token_kept_secret(out: &Output, run: &Path) {
    assert!(!text(&out.stdout).contains(TOKEN));
    assert!(!text(&out.stderr).contains(TOKEN));
    let mut stack = vec![run.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !text(&bytes).contains(TOKEN),
                    "the token is in {}",
                    path.display()
                );
            }
        }
    }
}

/// No request for the base model's weights came before the job was posted; its config and
/// tokenizer were fetched.
fn assert_no_weights_before_the_job(s: &Setup) {
    let calls = s.hub.calls();
    let posted = calls
        .iter()
        .position(|(m, p)| m == "POST" && p == "/api/jobs/ada")
        .expect("a job was posted");
    let base: Vec<&String> = calls[..posted]
        .iter()
        .map(|(_, p)| p)
        .filter(|p| p.starts_with(&format!("/{MODEL}/resolve/")))
        .collect();
    assert!(base.iter().any(|p| p.ends_with("/config.json")), "{base:?}");
    assert!(
        base.iter().any(|p| p.ends_with("/tokenizer.json")),
        "{base:?}"
    );
    assert!(
        !base.iter().any(|p| p.ends_with(".safetensors")),
        "the weights were fetched before the job: {base:?}"
    );
}

fn recorded_run_job() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bora-hub/tests/fixtures/hf_jobs.json"
    );
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fx["cases"]["run_job"]["requests"][0].clone()
}

#[test]
fn a_run_on_hf_jobs_mirrors_metrics_and_checkpoints_and_leaves_a_run_dir() {
    let s = setup();
    s.hub.run_jobs_with(stand_in(Ending::Complete));
    let out = train(&s);
    assert_ok(&out);
    let err = text(&out.stderr);
    assert!(err.contains("GPU memory: about"), "{err}");
    assert!(err.contains("a10g-small's 24 GiB"), "{err}");
    assert!(err.contains("job timeout 1h00m"), "{err}");
    assert!(
        err.contains("Collecting torch"),
        "the job's log is shown: {err}"
    );

    // Before the job, bora fetched the base's config and tokenizer, never its weights: the
    // job downloads them itself.
    assert_no_weights_before_the_job(&s);

    // One job, posted as huggingface_hub's run_job posts one.
    let jobs = s.hub.jobs();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert!(
        err.contains(&format!("{}/jobs/ada/{}", s.hub.url, job.id)),
        "the job's URL: {err}"
    );
    let post = s
        .hub
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path() == "/api/jobs/ada")
        .unwrap();
    let recorded = recorded_run_job();
    for header in ["authorization", "content-type"] {
        assert_eq!(
            post.header(header),
            recorded["headers"][header].as_str(),
            "{header}"
        );
    }
    let body = post.json();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&body), keys(&recorded["body"]));
    assert_eq!(body["flavor"], "a10g-small");
    assert_eq!(body["dockerImage"], "python:3.12");
    assert_eq!(body["arguments"], json!([]));
    assert_eq!(body["secrets"], json!({"HF_TOKEN": TOKEN}));
    assert_eq!(
        body["labels"],
        json!({"bora-run": "support", "name": "bora-support"})
    );
    assert_eq!(body["timeoutSeconds"], 3600);
    assert_eq!(body["environment"]["BORA_REPO"], JOBS_REPO);
    assert_eq!(body["environment"]["BORA_FOLDER"], "runs/support");
    assert_eq!(body["environment"]["HF_ENDPOINT"], s.hub.url.as_str());
    let command = body["command"].as_array().unwrap();
    assert_eq!(command[..2], [json!("bash"), json!("-c")]);
    assert!(command[2].as_str().unwrap().contains("trainer.py"));
    assert!(
        !body.to_string().contains("WANDB"),
        "the W&B key stays on this machine"
    );

    // The job files went to the private repo, in the run's folder.
    let create = s
        .hub
        .requests()
        .into_iter()
        .find(|r| r.path() == "/api/repos/create")
        .unwrap();
    assert_eq!(
        create.json(),
        json!({"name": "bora-jobs", "organization": "ada", "visibility": "private"})
    );
    {
        let st = s.hub.state.lock().unwrap();
        for f in [
            "job.json",
            "batches.safetensors",
            "trainer.py",
            "requirements.txt",
            "initial_adapter/adapter_config.json",
            "initial_adapter/adapter_model.safetensors",
        ] {
            assert!(
                st.files.contains_key(&format!("runs/support/job/{f}")),
                "{f} uploaded"
            );
        }
        let spec: Value =
            serde_json::from_slice(&stored(&st, "runs/support/job/job.json")).unwrap();
        assert_eq!(spec["model"], MODEL);
        assert_eq!(spec["dtype"], "auto");
        assert_eq!(spec["revision"].as_str().unwrap().len(), 40);
    }

    // Metrics and checkpoints mirrored, the adapter downloaded.
    assert_eq!(metrics_steps(&s.run), [1, 2, 3, 4]);
    assert!(s.run.join("checkpoints/step-2").is_dir());
    assert!(s.run.join("checkpoints/step-4").is_dir());
    let adapter = Safetensors::open(s.run.join("adapter/adapter_model.safetensors")).unwrap();
    for t in adapter.tensors() {
        let values = adapter.tensor_f32(&t.name).unwrap();
        assert!(values.iter().all(|&v| v == 0.125), "{}", t.name);
    }
    assert!(s.run.join("hf-job.json").is_file());
    assert!(!s.run.join(".torch-job").exists());
    assert_token_kept_secret(&out, &s.run);

    assert_eval_reads_the_run(&s);

    // The same run again: nothing of the job files is sent twice.
    let again = s.home.path().join("runs/support");
    std::fs::remove_dir_all(&again).unwrap();
    s.hub.clear_requests();
    assert_ok(&train(&s));
    let commits: Vec<_> = s
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.path().ends_with("/commit/main"))
        .collect();
    assert!(commits.is_empty(), "unchanged job files are not committed");
}

#[test]
fn a_failed_job_shows_its_stage_message_and_last_lines_then_resumes_from_its_checkpoint() {
    let s = setup();
    s.hub.run_jobs_with(stand_in(Ending::FailAfter(2)));
    let out = train(&s);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("stage ERROR"), "{err}");
    assert!(err.contains("Job failed with exit code: 1"), "{err}");
    assert!(err.contains("CUDA out of memory"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert_eq!(metrics_steps(&s.run), [1, 2]);
    assert!(s.run.join("checkpoints/step-2").is_dir());
    assert_token_kept_secret(&out, &s.run);

    s.hub.run_jobs_with(stand_in(Ending::Complete));
    let out = resume(&s);
    assert_ok(&out);
    let jobs = s.hub.jobs();
    assert_eq!(jobs.len(), 2);
    let st = s.hub.state.lock().unwrap();
    let spec: Value = serde_json::from_slice(&stored(&st, "runs/support/job/job.json")).unwrap();
    assert_eq!(
        spec["first_step"], 2,
        "the new job starts from the checkpoint"
    );
    assert!(st
        .files
        .contains_key("runs/support/job/initial_optimizer.safetensors"));
    drop(st);
    assert_eq!(metrics_steps(&s.run), [1, 2, 3, 4]);
}

#[test]
fn a_detached_job_is_followed_later_by_jobs_attach() {
    let s = setup();
    s.hub.run_jobs_with(stand_in(Ending::Complete));
    let out = train_with(&s, TOKEN, "2", "16", &["--detach"]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("bora jobs attach {}", s.run.display())),
        "{stdout}"
    );
    assert!(s.run.join("hf-job.json").is_file());
    assert!(!s.run.join("adapter").exists());
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.hub.jobs()[0].stage != "COMPLETED" {
        assert!(Instant::now() < deadline, "the stand-in job never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    let attach = |s: &Setup| {
        bora_env(
            &s.hub.url,
            s.home.path(),
            &[("HF_TOKEN", TOKEN)],
            &["jobs", "attach", s.run.to_str().unwrap()],
        )
    };
    let out = attach(&s);
    assert_ok(&out);
    assert!(
        text(&out.stderr).contains("following job"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(metrics_steps(&s.run), [1, 2, 3, 4]);
    assert!(s.run.join("checkpoints/step-2").is_dir());
    let adapter = Safetensors::open(s.run.join("adapter/adapter_model.safetensors")).unwrap();
    let first = &adapter.tensors()[0].name;
    assert!(adapter
        .tensor_f32(first)
        .unwrap()
        .iter()
        .all(|&v| v == 0.125));
    assert_eq!(s.hub.jobs().len(), 1, "attaching starts no job");
    assert_token_kept_secret(&out, &s.run);

    // Attaching again mirrors nothing twice.
    assert_ok(&attach(&s));
    assert_eq!(metrics_steps(&s.run), [1, 2, 3, 4]);
}

#[test]
fn a_timed_out_job_says_so() {
    let s = setup();
    s.hub.run_jobs_with(stand_in(Ending::TimeOutAfter(3)));
    let out = train(&s);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("Job timeout"), "{err}");
    assert!(s.run.join("checkpoints/step-2").is_dir());
}

#[test]
fn a_cancelled_job_ends_the_run_with_its_stage() {
    let s = setup();
    s.hub.run_jobs_with(stand_in(Ending::WaitForCancel));
    let state = std::sync::Arc::clone(&s.hub.state);
    let url = s.hub.url.clone();
    let canceller = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let id = state.lock().unwrap().jobs.first().map(|j| j.id.clone());
            if let Some(id) = id {
                let home = tempfile::tempdir().unwrap();
                let out = bora_env(
                    &url,
                    home.path(),
                    &[("HF_TOKEN", TOKEN)],
                    &["jobs", "cancel", &id],
                );
                assert_ok(&out);
                return;
            }
            assert!(Instant::now() < deadline, "no job was posted");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let out = train(&s);
    canceller.join().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("stage CANCELED"), "{err}");
    assert_eq!(s.hub.jobs()[0].stage, "CANCELED");
}

#[test]
fn ctrl_c_detaches_and_says_how_to_cancel_while_the_job_runs_on() {
    let s = setup();
    s.hub.run_jobs_with(stand_in(Ending::WaitForCancel));
    let child = bora_env_command(
        &s.hub.url,
        s.home.path(),
        &[("HF_TOKEN", TOKEN)],
        &train_args(&s, "2", "16"),
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Once the first step is mirrored, bora is following the job.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !s.run.join("metrics.jsonl").is_file()
        || std::fs::read_to_string(s.run.join("metrics.jsonl"))
            .unwrap()
            .is_empty()
    {
        assert!(Instant::now() < deadline, "bora never mirrored a step");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let err = text(&out.stderr);
    assert!(err.contains("detached"), "{err}");
    assert!(
        err.contains(&format!("bora jobs cancel {}", s.run.display())),
        "{err}"
    );
    let jobs = s.hub.jobs();
    assert_eq!(jobs[0].stage, "RUNNING", "the job runs on");
    s.hub.state.lock().unwrap().jobs[0].stage = "CANCELED".into();
}

#[test]
fn a_bad_token_or_a_namespace_without_credits_stops_before_any_job() {
    let s = setup();
    s.hub.run_jobs_with(stand_in(Ending::Complete));
    // The first request that carries the token (the base model's revision) is refused.
    let out = train_as(&s, "hf_wrong", "2", "16");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("hf_wrong"), "{err}");
    assert!(s.hub.jobs().is_empty());

    s.hub.state.lock().unwrap().jobs_refusal = Some((
        402,
        json!({"error": "You have exceeded your monthly included credits for Jobs."}),
    ));
    let out = train(&s);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("refused to run jobs in `ada` (402)"), "{err}");
    assert!(err.contains("credits"), "{err}");
    assert!(s.hub.jobs().is_empty());
}

#[test]
fn a_run_that_cannot_fit_the_flavor_is_refused_with_the_numbers() {
    let s = setup();
    let out = train_as(&s, TOKEN, "65536", "256");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("GiB of GPU memory"), "{err}");
    assert!(err.contains("a10g-small has 24 GiB"), "{err}");
    assert!(s.hub.jobs().is_empty());
    assert!(!s
        .hub
        .calls()
        .iter()
        .any(|(_, p)| p.starts_with("/api/jobs") || p == "/api/repos/create"));
}

/// The real job's run into `run` on `flavor` with `grad_accum` micro-batches per step
/// (dropout 0: the runs below are compared step by step).
fn real_train(s: &Setup, run: &Path, flavor: &str, grad_accum: &str) -> Output {
    let on = format!("hf-jobs:{flavor}");
    let mut args = run_args(s, run, "2", "16");
    args.extend([
        "--grad-accum",
        grad_accum,
        "--dropout",
        "0",
        "--on",
        on.as_str(),
    ]);
    bora_env(&s.hub.url, s.home.path(), &[("HF_TOKEN", TOKEN)], &args)
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["loss"].as_f64())
        .collect()
}

/// Every adapter tensor of `a` within `tolerance` of `b`'s.
fn assert_same_adapter(a: &Path, b: &Path, tolerance: f32) {
    let open =
        |run: &Path| Safetensors::open(run.join("adapter/adapter_model.safetensors")).unwrap();
    let (x, y) = (open(a), open(b));
    assert_eq!(x.tensors().len(), y.tensors().len());
    for t in x.tensors() {
        let (p, q) = (
            x.tensor_f32(&t.name).unwrap(),
            y.tensor_f32(&t.name).unwrap(),
        );
        let worst = p
            .iter()
            .zip(&q)
            .map(|(u, v)| (u - v).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tolerance, "{}: adapters differ by {worst}", t.name);
    }
}

#[test]
#[ignore = "needs the torch environment: scripts/test_torch_parity.sh"]
fn the_real_job_trains_against_the_test_hub_and_resumes_from_its_checkpoint() {
    let s = setup();
    // Stopped after its first checkpoint (step 2), which the trainer uploaded to the repo.
    s.hub.run_jobs_with(local_process(true));
    let out = real_train(&s, &s.run, "a10g-small", "1");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("stage ERROR"), "{err}");
    assert_no_weights_before_the_job(&s);
    assert_eq!(metrics_steps(&s.run), [1, 2], "{err}");
    assert!(s.run.join("checkpoints/step-2").is_dir(), "{err}");
    {
        let st = s.hub.state.lock().unwrap();
        assert!(st
            .files
            .contains_key("runs/support/out/checkpoints/step-2/adapter_model.safetensors"));
    }
    assert_token_kept_secret(&out, &s.run);

    // The resumed job starts from that checkpoint and finishes the run.
    s.hub.run_jobs_with(local_process(false));
    let out = resume(&s);
    assert_ok(&out);
    assert_eq!(metrics_steps(&s.run), [1, 2, 3, 4]);
    assert!(s.run.join("checkpoints/step-4").is_dir());
    assert_token_kept_secret(&out, &s.run);

    // The same run without the stop: the resumed run is that run.
    let whole = s.home.path().join("runs/whole");
    assert_ok(&real_train(&s, &whole, "a10g-small", "1"));
    let (a, b) = (losses(&s.run), losses(&whole));
    assert_eq!(a.len(), 4);
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "step {}: {x} vs {y}",
            step + 1
        );
    }
    assert_same_adapter(&s.run, &whole, 1e-4);

    assert_eval_reads_the_run(&s);
}

#[test]
#[ignore = "needs the torch environment: scripts/test_torch_parity.sh"]
fn two_gpus_under_torchrun_train_the_run_of_one() {
    let s = setup();
    s.hub.run_jobs_with(local_process(false));
    // Three micro-batches a step: two for rank 0, one for rank 1.
    let one = s.home.path().join("runs/one");
    assert_ok(&real_train(&s, &one, "a10g-small", "3"));
    let two = s.home.path().join("runs/two");
    let out = real_train(&s, &two, "a10g-largex2", "3");
    assert_ok(&out);
    let err = text(&out.stderr);
    assert!(err.contains("data parallel on 2 GPUs"), "{err}");
    let post = s
        .hub
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "POST" && r.path() == "/api/jobs/ada")
        .unwrap();
    assert_eq!(post.json()["environment"]["BORA_GPUS"], "2");
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!((a.len(), b.len()), (4, 4));
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "step {}: {x} vs {y}",
            step + 1
        );
    }
    assert_same_adapter(&one, &two, 1e-4);
}
