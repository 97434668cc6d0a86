//! W&B model artifacts against the stand-in server, checked against what the `wandb` package
//! sent for the same adapter (`tests/fixtures/wandb_artifact.json`, recorded by
//! `scripts/make_wandb_artifact_fixtures.py`), and rebuilt from what the server received.

mod wandb_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_hub::hub::Retry;
use bora_hub::wandb::{
    read_artifacts, record_artifact, ApiKey, ArtifactSpec, Client, LoggedArtifact, Manifest,
    Multipart, RegistryTarget, RunSpec, Target, WandbError, WandbRun, MULTIPART_PART_SIZE,
    MULTIPART_THRESHOLD,
};
use serde_json::{json, Map, Value};
use wandb_server::{Failure, FakeWandb, Request};

const KEY: &str = "local-test-key-0123456789abcdef0123456789abcdef";

fn fixture(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The recorded requests of one phase (`log`, `link`, `log-same`, `log-different`, `use`).
fn phase(recording: &[Value], name: &str) -> Vec<Value> {
    recording
        .iter()
        .skip_while(|r| r["phase"] != name)
        .skip(1)
        .take_while(|r| r.get("phase").is_none())
        .cloned()
        .collect()
}

/// The artifact operations and storage uploads of a recording, in order. The Python side's
/// own lookups (`Viewer`, `ServerFeaturesQuery`, `ArtifactType`, `ArtifactMembershipByName`)
/// are left out: bora knows their answers already. `ArtifactByID`, which `Artifact.wait`
/// sends once the version is saved, is kept: its answer is the version's index.
const ARTIFACT_OPERATIONS: [&str; 9] = [
    "CreateArtifact",
    "CreateArtifactManifest",
    "CreateArtifactFiles",
    "CompleteMultipartUploadArtifact",
    "CommitArtifact",
    "ArtifactByID",
    "UseArtifact",
    "FetchOrgInfoFromEntity",
    "LinkArtifact",
];

fn recorded_steps(requests: &[Value]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|r| match r["operation"].as_str() {
            Some(op) if ARTIFACT_OPERATIONS.contains(&op) => Some(op.to_owned()),
            _ if r["method"] == "PUT" && r["path"].as_str().unwrap().starts_with("/storage/") => {
                Some("PUT file".to_owned())
            }
            _ if r["method"] == "PUT" && r["path"].as_str().unwrap().starts_with("/manifest/") => {
                Some("PUT manifest".to_owned())
            }
            _ => None,
        })
        .collect()
}

fn sent_steps(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|r| {
            if r.path() == "/graphql" {
                let op = r.json()["operationName"].as_str().unwrap().to_owned();
                return ARTIFACT_OPERATIONS.contains(&op.as_str()).then_some(op);
            }
            match r.path().strip_prefix("/storage/") {
                Some(rest) if r.method == "PUT" && rest.starts_with("manifest/") => {
                    Some("PUT manifest".to_owned())
                }
                Some(_) if r.method == "PUT" => Some("PUT file".to_owned()),
                _ => None,
            }
        })
        .collect()
}

fn sent_operations(requests: &[Request], op: &str) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r.path() == "/graphql" && r.json()["operationName"] == op)
        .map(Request::json)
        .collect()
}

fn recorded_operations(requests: &[Value], op: &str) -> Vec<Value> {
    requests
        .iter()
        .filter(|r| r["operation"] == op)
        .cloned()
        .collect()
}

/// The adapter the recording script logs (`adapter_dir` there): the same bytes.
fn adapter_dir(root: &Path, seed: u32) -> PathBuf {
    let dir = root.join(format!("adapter-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = "{\n  \"base_model_name_or_path\": \"HuggingFaceTB/SmolLM2-135M-Instruct\",\n  \
                  \"lora_alpha\": 8,\n  \"peft_type\": \"LORA\",\n  \"r\": 4,\n  \
                  \"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]\n}\n";
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    let weights: Vec<u8> = (0..3000u32).map(|i| ((i * 7 + seed) % 251) as u8).collect();
    std::fs::write(dir.join("adapter_model.safetensors"), weights).unwrap();
    dir
}

/// The metadata the recording script logs, as JSON.
fn metadata() -> Map<String, Value> {
    json!({
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "lora": {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"]},
        "data_sha256": "0".repeat(64),
        "final_loss": 1.25,
    })
    .as_object()
    .unwrap()
    .clone()
}

fn no_wait() -> Retry {
    Retry::default().with_sleep(|_| {})
}

fn start(server: &FakeWandb, dir: &Path, run_id: &str) -> WandbRun {
    let target = Target {
        project: "proj".into(),
        entity: Some("team".into()),
    };
    let config = json!({"name": "demo"});
    let spec = RunSpec {
        target: &target,
        display_name: "demo",
        config: &config,
        new_id: run_id.to_owned(),
        run_dir: dir,
    };
    let client = Client::new(&server.url, ApiKey::new(KEY)).unwrap();
    let mut run = WandbRun::start(client, &spec).unwrap();
    run.set_send_interval(Duration::from_secs(3600));
    run
}

fn log(run: &mut WandbRun, adapter: &Path, retry: &Retry) -> Result<LoggedArtifact, WandbError> {
    let manifest = Manifest::from_dir(adapter, "", &Multipart::default()).unwrap();
    let metadata = metadata();
    let spec = ArtifactSpec {
        name: "demo-adapter",
        kind: "model",
        description: None,
        metadata: &metadata,
        manifest: &manifest,
    };
    run.log_artifact(&spec, retry)
}

/// What the adapter's files are on disk, by name.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Variables with the random client ids checked for shape and removed.
fn without_client_ids(mut vars: Value) -> Value {
    let input = vars["input"].as_object_mut().unwrap();
    for key in ["clientID", "sequenceClientID"] {
        let id = input.remove(key).unwrap();
        let id = id.as_str().unwrap();
        assert_eq!(id.len(), 128, "{key}");
        assert!(id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }
    vars
}

#[test]
fn logging_an_adapter_sends_what_wandb_sends_and_commits_the_files() {
    let recording = fixture("wandb_artifact.json");
    let recorded = phase(&recording, "log");
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let adapter = adapter_dir(tmp.path(), 1);
    let mut run = start(&server, tmp.path(), "train001");
    let logged = log(&mut run, &adapter, &no_wait()).unwrap();
    let sent = server.requests();

    assert_eq!(sent_steps(&sent), recorded_steps(&recorded));
    // Every query text is the one wandb-core sent.
    for op in [
        "CreateArtifact",
        "CreateArtifactManifest",
        "CreateArtifactFiles",
        "CommitArtifact",
        "ArtifactByID",
    ] {
        let ours = &sent_operations(&sent, op)[0]["query"];
        let theirs = &recorded_operations(&recorded, op)[0]["query"];
        assert_eq!(ours, theirs, "{op}");
    }
    // The saved version is looked up by the id CreateArtifact gave, as wandb looks it up.
    assert_eq!(
        sent_operations(&sent, "ArtifactByID")[0]["variables"],
        json!({"id": logged.id})
    );
    assert_eq!(
        recorded_operations(&recorded, "ArtifactByID")[0]["variables"],
        json!({"id": recorded_operations(&recorded, "CommitArtifact")[0]["variables"]["artifactID"]})
    );
    assert_eq!(logged.version, Some(0));
    assert_eq!(logged.reference(), "team/proj/demo-adapter:v0");
    assert_eq!(
        logged.weave_ref().as_deref(),
        Some("wandb-artifact:///team/proj/demo-adapter:v0")
    );
    // CreateArtifact: the same variables, the digest wandb computed, no historyStep (bora
    // logs the artifact after the run's last step; the recording logged it after one row).
    let ours = without_client_ids(sent_operations(&sent, "CreateArtifact")[0]["variables"].clone());
    let mut theirs = without_client_ids(
        recorded_operations(&recorded, "CreateArtifact")[0]["variables"].clone(),
    );
    theirs["input"]["historyStep"] = Value::Null;
    let sent_metadata = |v: &mut Value| -> Value {
        let text = v["input"]["metadata"].take();
        serde_json::from_str(text.as_str().unwrap()).unwrap()
    };
    let mut ours = ours;
    assert_eq!(sent_metadata(&mut ours), sent_metadata(&mut theirs));
    assert_eq!(ours, theirs);
    assert_eq!(logged.digest, "004d010910420d360a14e3dd5c127478");
    assert_eq!(logged.digest, theirs["input"]["digest"]);
    assert!(!logged.reused);

    // The two manifest calls (before and after the files) and the files, file by file.
    let ours = sent_operations(&sent, "CreateArtifactManifest");
    let theirs = recorded_operations(&recorded, "CreateArtifactManifest");
    assert_eq!(ours[0]["variables"], theirs[0]["variables"]);
    let mut second = ours[1]["variables"].clone();
    let mut recorded_second = theirs[1]["variables"].clone();
    // The manifest's own MD5 differs: wandb's lists each file's local staging path.
    let manifest_md5 = second["digest"].take();
    recorded_second["digest"] = Value::Null;
    assert_eq!(second, recorded_second);
    let files = |v: &Value| -> Vec<Value> {
        let mut f = v["variables"]["input"]["artifactFiles"]
            .as_array()
            .unwrap()
            .clone();
        f.sort_by_key(|x| x["name"].as_str().unwrap().to_owned());
        f
    };
    let ours_files = &sent_operations(&sent, "CreateArtifactFiles")[0];
    let theirs_files = &recorded_operations(&recorded, "CreateArtifactFiles")[0];
    assert_eq!(files(ours_files), files(theirs_files));
    assert_eq!(
        ours_files["variables"]["input"]["storageLayout"],
        theirs_files["variables"]["input"]["storageLayout"]
    );

    // The uploaded manifest is wandb's, less `local_path`; its MD5 is the one announced.
    let manifest_put = sent
        .iter()
        .find(|r| r.path().starts_with("/storage/manifest/"))
        .unwrap();
    let uploaded: Value = serde_json::from_slice(&manifest_put.body).unwrap();
    let recorded_manifest = recorded
        .iter()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/manifest/"))
        })
        .unwrap();
    let recorded_manifest: Value =
        serde_json::from_str(recorded_manifest["text"].as_str().unwrap()).unwrap();
    assert_eq!(uploaded, recorded_manifest);
    use base64::Engine;
    use md5::Digest;
    assert_eq!(
        manifest_md5,
        json!(
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&manifest_put.body))
        )
    );
    // Storage URLs are presigned: the key is never sent there.
    for r in sent.iter().filter(|r| r.path().starts_with("/storage/")) {
        assert_eq!(r.header("authorization"), None, "{}", r.target);
    }

    // The server can rebuild exactly the adapter from what it was sent.
    let committed = server.committed();
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0].files, files_of(&adapter));
    assert_eq!(committed[0].stored.kind, "model");
    assert_eq!(json!(committed[0].stored.metadata), json!(metadata()));
}

#[test]
fn the_same_adapter_keeps_its_version_and_a_changed_one_gets_the_next() {
    let recording = fixture("wandb_artifact.json");
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let first = adapter_dir(tmp.path(), 1);
    let mut run = start(&server, tmp.path(), "train001");
    let v0 = log(&mut run, &first, &no_wait()).unwrap();
    let before = server.requests().len();

    let mut again = start(&server, tmp.path(), "train002");
    let same = log(&mut again, &first, &no_wait()).unwrap();
    let sent = server.requests()[before..].to_vec();
    assert_eq!(
        sent_steps(&sent),
        recorded_steps(&phase(&recording, "log-same"))
    );
    assert_eq!(same.id, v0.id);
    assert!(same.reused);
    assert_eq!(same.version, Some(0), "the version W&B already had");

    let before = server.requests().len();
    let changed = adapter_dir(tmp.path(), 2);
    let mut third = start(&server, tmp.path(), "train003");
    let v1 = log(&mut third, &changed, &no_wait()).unwrap();
    let sent = server.requests()[before..].to_vec();
    let recorded = phase(&recording, "log-different");
    // The config file is stored already (same MD5); only the weights go up.
    let mut expected = recorded_steps(&recorded);
    let first_put = expected.iter().position(|s| s == "PUT file").unwrap();
    expected.remove(first_put);
    assert_eq!(sent_steps(&sent), expected);
    assert_eq!(v1.digest, "2eed38a27bd7f5a7c11d0a27ccd2055b");
    assert_ne!(v1.id, v0.id);
    let ours = sent_operations(&sent, "CreateArtifactManifest");
    let theirs = recorded_operations(&recorded, "CreateArtifactManifest");
    assert_eq!(
        ours[0]["variables"]["baseArtifactID"],
        theirs[0]["variables"]["baseArtifactID"]
    );
    assert_eq!(ours[0]["variables"]["baseArtifactID"], json!(v0.id));

    let committed = server.committed();
    assert_eq!(committed.len(), 2);
    assert_eq!(committed[1].stored.version, Some(1));
    assert_eq!(v1.version, Some(1));
    assert_eq!(committed[1].files, files_of(&changed));
}

#[test]
fn linking_and_using_send_what_wandb_sends() {
    let recording = fixture("wandb_artifact.json");
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let adapter = adapter_dir(tmp.path(), 1);
    let mut run = start(&server, tmp.path(), "train001");
    let logged = log(&mut run, &adapter, &no_wait()).unwrap();

    let before = server.requests().len();
    let target = RegistryTarget::parse("demo-collection").unwrap();
    let version = run.link_artifact(&logged, &target, &no_wait()).unwrap();
    assert_eq!(version, 0);
    let sent = server.requests()[before..].to_vec();
    let recorded = phase(&recording, "link");
    assert_eq!(sent_steps(&sent), recorded_steps(&recorded));
    for op in ["FetchOrgInfoFromEntity", "LinkArtifact"] {
        let ours = &sent_operations(&sent, op)[0];
        let theirs = &recorded_operations(&recorded, op)[0];
        assert_eq!(ours["query"], theirs["query"], "{op}");
        assert_eq!(ours["variables"], theirs["variables"], "{op}");
    }
    assert_eq!(
        server.links()["team-org/wandb-registry-model/demo-collection"],
        vec![logged.id.clone()]
    );

    let eval_dir = tempfile::tempdir().unwrap();
    let eval = start(&server, eval_dir.path(), "eval0001");
    let before = server.requests().len();
    eval.use_artifact(&logged, &no_wait()).unwrap();
    let sent = server.requests()[before..].to_vec();
    let recorded = phase(&recording, "use");
    let ours = &sent_operations(&sent, "UseArtifact")[0];
    let theirs = &recorded_operations(&recorded, "UseArtifact")[0];
    assert_eq!(ours["query"], theirs["query"]);
    assert_eq!(ours["variables"], theirs["variables"]);
    assert_eq!(server.uses(), [("eval0001".to_owned(), logged.id.clone())]);

    record_artifact(tmp.path(), "adapter", &logged).unwrap();
    assert_eq!(read_artifacts(tmp.path()).unwrap()["adapter"], logged);
}

/// A file over the threshold goes up in parts, announced and completed as wandb-core does
/// it (the recording logged a 2 GiB + 1 MiB file: 100 MiB parts, the last one shorter).
#[test]
fn large_files_go_up_in_parts_as_wandb_core_sends_them() {
    let recording = fixture("wandb_artifact_multipart.json");
    let part_puts: Vec<&Value> = recording
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.contains("partNumber="))
        })
        .collect();
    let sizes: Vec<u64> = part_puts
        .iter()
        .map(|r| r["size"].as_u64().unwrap())
        .collect();
    let total: u64 = sizes.iter().sum();
    assert!(total >= MULTIPART_THRESHOLD);
    assert_eq!(sizes.iter().max(), Some(&MULTIPART_PART_SIZE));
    assert_eq!(sizes.len() as u64, total.div_ceil(MULTIPART_PART_SIZE));
    let recorded_files = &recorded_operations(&recording, "CreateArtifactFiles")[0];
    let recorded_complete = &recorded_operations(&recording, "CompleteMultipartUploadArtifact")[0];

    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = (0..(5 << 10) + 123u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("model.gguf"), &bytes).unwrap();
    let small = Multipart {
        threshold: 4 << 10,
        part_size: 1 << 10,
    };
    let manifest = Manifest::from_dir(&dir, "", &small).unwrap();
    assert_eq!(manifest.files()[0].part_md5s.len(), 6);
    let mut run = start(&server, tmp.path(), "multi001");
    let spec = ArtifactSpec {
        name: "demo-gguf",
        kind: "model",
        description: None,
        metadata: &Map::new(),
        manifest: &manifest,
    };
    run.log_artifact(&spec, &no_wait()).unwrap();
    let sent = server.requests();

    let ours = &sent_operations(&sent, "CreateArtifactFiles")[0];
    assert_eq!(ours["query"], recorded_files["query"]);
    let part_keys = |v: &Value| -> Vec<String> {
        let parts = &v["variables"]["input"]["artifactFiles"][0]["uploadPartsInput"][0];
        parts.as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(part_keys(ours), part_keys(recorded_files));
    let complete = &sent_operations(&sent, "CompleteMultipartUploadArtifact")[0];
    assert_eq!(complete["query"], recorded_complete["query"]);
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(
        keys(&complete["variables"]),
        keys(&recorded_complete["variables"])
    );
    assert_eq!(
        complete["variables"]["completeMultipartAction"],
        recorded_complete["variables"]["completeMultipartAction"]
    );
    // Each part's ETag is sent quoted, as storage answered it.
    let first = &recorded_complete["variables"]["completedParts"][0]["hexMD5"];
    assert!(first.as_str().unwrap().starts_with('"'));
    assert_eq!(
        complete["variables"]["completedParts"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(server.committed()[0].files["model.gguf"], bytes);
}

fn logged_after(failure: Failure, prefix: &str, times: usize) -> FakeWandb {
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let adapter = adapter_dir(tmp.path(), 1);
    let mut run = start(&server, tmp.path(), "train001");
    server.fail_next(prefix, failure, times);
    let delays = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&delays);
    let retry = Retry::default().with_sleep(move |d| seen.lock().unwrap().push(d));
    log(&mut run, &adapter, &retry).unwrap();
    assert_eq!(delays.lock().unwrap().len(), times, "one wait per failure");
    let committed = server.committed();
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0].files, files_of(&adapter));
    server
}

#[test]
fn uploads_and_calls_are_retried_after_5xx_and_dropped_connections() {
    logged_after(Failure::Status500, "PUT /storage/", 2);
    logged_after(Failure::CloseMidBody, "PUT /storage/", 2);
    logged_after(Failure::Close, "POST /graphql CreateArtifactFiles", 1);
    logged_after(Failure::Status500, "POST /graphql CommitArtifact", 1);
}

/// Storage that keeps failing: an error, nothing committed; the next try sends only what is
/// missing and commits a version whose files are all there.
#[test]
fn an_upload_that_keeps_failing_commits_nothing_and_a_retry_completes_it() {
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let adapter = adapter_dir(tmp.path(), 1);
    let mut run = start(&server, tmp.path(), "train001");
    // The config goes up; every attempt at the weights is cut off mid-body.
    let config_put = "PUT /storage/vO5V%2BXYElG%2FXBikHDaqR6g%3D%3D";
    let weights_put = "PUT /storage/DX79%2F5yJzzTdTGnbAgfMrw%3D%3D";
    server.fail_next(weights_put, Failure::CloseMidBody, 100);
    let err = log(&mut run, &adapter, &no_wait()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("adapter_model.safetensors"), "{message}");
    assert!(!message.contains(KEY));
    assert!(server.committed().is_empty(), "nothing committed");
    assert_eq!(server.artifacts().len(), 1, "one pending version");
    assert!(!server.artifacts()[0].committed);

    server.clear_faults();
    let mut fresh = start(&server, tmp.path(), "train001");
    let logged = log(&mut fresh, &adapter, &no_wait()).unwrap();
    let committed = server.committed();
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0].stored.id, logged.id);
    assert_eq!(committed[0].files, files_of(&adapter));
    let puts = |prefix: &str| {
        server
            .requests()
            .iter()
            .filter(|r| format!("{} {}", r.method, r.path()).starts_with(prefix))
            .count()
    };
    assert_eq!(puts(config_put), 1, "a stored file is not sent again");
    assert_eq!(puts(weights_put), Retry::default().attempts as usize + 1);
}

#[test]
fn a_refused_key_is_an_error_at_once_without_the_key() {
    let server = FakeWandb::start();
    let tmp = tempfile::tempdir().unwrap();
    let adapter = adapter_dir(tmp.path(), 1);
    let mut run = start(&server, tmp.path(), "train001");
    let before = server.requests().len();
    server.fail_next("POST /graphql", Failure::Unauthorized, 100);
    let err = log(&mut run, &adapter, &no_wait()).unwrap_err();
    assert_eq!(server.requests().len(), before + 1, "a 401 is not retried");
    let message = err.to_string();
    assert!(message.contains("401"), "{message}");
    assert!(!message.contains(KEY), "{message}");
    assert!(!format!("{err:?}").contains(KEY));
    assert!(server.committed().is_empty());
}

#[test]
fn the_manifest_digest_is_wandbs_for_every_recorded_version() {
    let recording = fixture("wandb_artifact.json");
    let tmp = tempfile::tempdir().unwrap();
    for (seed, digest) in [
        (1, "004d010910420d360a14e3dd5c127478"),
        (2, "2eed38a27bd7f5a7c11d0a27ccd2055b"),
    ] {
        let dir = adapter_dir(tmp.path(), seed);
        let manifest = Manifest::from_dir(&dir, "", &Multipart::default()).unwrap();
        assert_eq!(manifest.digest(), digest);
        assert!(recorded_operations(&recording, "CreateArtifact")
            .iter()
            .any(|c| c["variables"]["input"]["digest"] == digest));
    }
}
