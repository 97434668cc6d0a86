//! The Hub client against a loopback Hub: the exact requests of a push, multipart uploads,
//! retries after a dropped connection and a 500, dedupe, and token checks.

mod hub_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bora_hub::hub::{
    FileOutcome, HubClient, HubError, LocalFile, RepoId, Retry, Token, UploadEvent, UploadReport,
};
use hub_support::{git_sha1, read_token_whoami, sha256, FakeHub, Fault, TOKEN};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Deterministic bytes that are not all alike, so a misplaced chunk changes the hash.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn client(hub: &FakeHub) -> (HubClient, Arc<Mutex<Vec<Duration>>>) {
    let delays = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&delays);
    let retry = Retry::default().with_sleep(move |d| seen.lock().unwrap().push(d));
    let token = Token::new(TOKEN).unwrap();
    (HubClient::new(&hub.url, token).with_retry(retry), delays)
}

fn push(c: &HubClient, files: &[LocalFile]) -> Result<UploadReport, HubError> {
    let repo = RepoId::parse("bora-ml/smol-demo").unwrap();
    c.check_write_access(&repo)?;
    c.create_repo(&repo, false)?;
    c.upload(&repo, "main", files, "Upload from bora", &mut |_| {})
}

fn s(x: &str) -> String {
    x.to_owned()
}

#[test]
fn a_push_sends_exactly_the_hub_protocol() {
    let hub = FakeHub::start();
    let (c, delays) = client(&hub);
    let dir = tempfile::tempdir().unwrap();
    let config = br#"{"r": 8, "peft_type": "LORA"}"#.to_vec();
    let weights = pattern(3000, 7);
    std::fs::write(dir.path().join("adapter_config.json"), &config).unwrap();
    std::fs::write(dir.path().join("w.safetensors"), &weights).unwrap();
    let card = b"---\nlicense: mit\n---\n# card\n".to_vec();
    let files = [
        LocalFile::from_bytes("README.md", card.clone()),
        LocalFile::from_path(
            "adapter_config.json",
            dir.path().join("adapter_config.json"),
        ),
        LocalFile::from_path(
            "adapter_model.safetensors",
            dir.path().join("w.safetensors"),
        ),
    ];
    let report = push(&c, &files).unwrap();
    let oid = sha256(&weights);
    assert_eq!(
        hub.calls(),
        vec![
            (s("GET"), s("/api/whoami-v2")),
            (s("POST"), s("/api/repos/create")),
            (s("POST"), s("/api/models/bora-ml/smol-demo/preupload/main")),
            (
                s("POST"),
                s("/bora-ml/smol-demo.git/info/lfs/objects/batch")
            ),
            (s("PUT"), format!("/storage/basic/{oid}")),
            (s("POST"), s("/api/models/bora-ml/smol-demo/commit/main")),
        ]
    );
    let reqs = hub.requests();
    let bearer = format!("Bearer {TOKEN}");
    for r in &reqs {
        let expect = (!r.target.starts_with("/storage/")).then_some(bearer.as_str());
        assert_eq!(r.header("authorization"), expect, "{}", r.target);
        assert!(r.header("user-agent").unwrap().starts_with("bora/"));
    }
    assert_eq!(reqs[1].header("content-type"), Some("application/json"));
    assert_eq!(
        reqs[1].json(),
        json!({"name": "smol-demo", "organization": "bora-ml", "visibility": "public"})
    );
    assert_eq!(reqs[2].header("content-type"), Some("application/json"));
    assert_eq!(
        reqs[2].json(),
        json!({"files": [
            {"path": "README.md", "sample": b64(&card), "size": card.len()},
            {"path": "adapter_config.json", "sample": b64(&config), "size": config.len()},
            {"path": "adapter_model.safetensors", "sample": b64(&weights[..512]), "size": 3000},
        ]})
    );
    for h in ["accept", "content-type"] {
        assert_eq!(reqs[3].header(h), Some("application/vnd.git-lfs+json"));
    }
    assert_eq!(
        reqs[3].json(),
        json!({"operation": "upload", "transfers": ["basic", "multipart"],
               "objects": [{"oid": oid, "size": 3000}], "hash_algo": "sha256",
               "ref": {"name": "main"}})
    );
    assert_eq!(reqs[4].body, weights);
    assert_eq!(reqs[4].header("content-length"), Some("3000"));
    let lines: Vec<Value> = String::from_utf8(reqs[5].body.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"key": "header", "value": {"summary": "Upload from bora", "description": ""}}),
            json!({"key": "file", "value": {"content": b64(&card), "path": "README.md", "encoding": "base64"}}),
            json!({"key": "file", "value": {"content": b64(&config), "path": "adapter_config.json", "encoding": "base64"}}),
            json!({"key": "lfsFile", "value": {"path": "adapter_model.safetensors", "algo": "sha256", "oid": oid, "size": 3000}}),
        ]
    );
    assert_eq!(
        report.files,
        vec![
            (s("README.md"), FileOutcome::Regular),
            (s("adapter_config.json"), FileOutcome::Regular),
            (
                s("adapter_model.safetensors"),
                FileOutcome::Uploaded { parts: 1 }
            ),
        ]
    );
    assert_eq!(
        report.bytes_sent,
        (card.len() + config.len() + weights.len()) as u64
    );
    let state = hub.state.lock().unwrap();
    assert_eq!(state.objects[&oid], weights);
    assert_eq!(state.files["README.md"].0, git_sha1(&card));
    assert!(delays.lock().unwrap().is_empty());
}

#[test]
fn a_large_file_goes_up_in_parts_and_is_verified() {
    let hub = FakeHub::start();
    {
        let mut st = hub.state.lock().unwrap();
        st.chunk_size = Some(1 << 20);
        st.verify = true;
    }
    let (c, _) = client(&hub);
    let dir = tempfile::tempdir().unwrap();
    let big = pattern(3 * (1 << 20) + 12_345, 3);
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, &big).unwrap();
    let mut events = Vec::new();
    let repo = RepoId::parse("bora-ml/smol-demo").unwrap();
    let report = c
        .upload(
            &repo,
            "main",
            &[LocalFile::from_path("gguf/model.gguf", &path)],
            "gguf",
            &mut |e| {
                if let UploadEvent::Part { part, parts, .. } = e {
                    events.push((part, parts));
                }
            },
        )
        .unwrap();
    let oid = sha256(&big);
    assert_eq!(events, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert_eq!(
        report.files,
        vec![(s("gguf/model.gguf"), FileOutcome::Uploaded { parts: 4 })]
    );
    let reqs = hub.requests();
    let puts: Vec<_> = reqs.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 4);
    for (i, r) in puts.iter().enumerate() {
        assert_eq!(
            r.target,
            format!("/storage/part/{oid}/{}?X-Amz-Signature=s{}", i + 1, i + 1)
        );
        let start = i << 20;
        let end = big.len().min(start + (1 << 20));
        assert_eq!(r.body, big[start..end], "part {}", i + 1);
        assert_eq!(
            r.header("content-length"),
            Some(&*(end - start).to_string())
        );
    }
    let complete = reqs
        .iter()
        .find(|r| r.path() == format!("/storage/complete/{oid}"))
        .unwrap();
    for h in ["accept", "content-type"] {
        assert_eq!(complete.header(h), Some("application/vnd.git-lfs+json"));
    }
    let tag = |n: u32| format!("\"etag-{}-{n}\"", &oid[..8]);
    assert_eq!(
        complete.json(),
        json!({"oid": oid, "parts": [
            {"partNumber": 1, "etag": tag(1)}, {"partNumber": 2, "etag": tag(2)},
            {"partNumber": 3, "etag": tag(3)}, {"partNumber": 4, "etag": tag(4)}]})
    );
    let verify = reqs
        .iter()
        .find(|r| r.path() == format!("/api/lfs-verify/{oid}"))
        .unwrap();
    assert_eq!(verify.json(), json!({"oid": oid, "size": big.len()}));
    assert_eq!(
        verify.header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
    let methods: Vec<_> = hub.calls().into_iter().map(|c| c.0).collect();
    assert_eq!(
        methods,
        ["POST", "POST", "PUT", "PUT", "PUT", "PUT", "POST", "POST", "POST"]
    );
    assert_eq!(hub.state.lock().unwrap().objects[&oid], big);
}

#[test]
fn an_interrupted_upload_resumes_by_retrying() {
    let hub = FakeHub::start();
    hub.state.lock().unwrap().chunk_size = Some(1 << 20);
    let (c, delays) = client(&hub);
    let dir = tempfile::tempdir().unwrap();
    let big = pattern(2 * (1 << 20) + 100, 9);
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, &big).unwrap();
    let oid = sha256(&big);
    hub.fail_once(&format!("/storage/part/{oid}/2"), Fault::Drop);
    hub.fail_once(&format!("/storage/part/{oid}/2"), Fault::Status500);
    hub.fail_once("/api/models/bora-ml/smol-demo/commit/", Fault::Status500);
    let report = push(&c, &[LocalFile::from_path("model.safetensors", &path)]).unwrap();
    assert!(report.commit.is_some());
    let part2 = hub
        .calls()
        .iter()
        .filter(|c| c.1 == format!("/storage/part/{oid}/2"))
        .count();
    assert_eq!(part2, 3, "dropped, 500, then stored");
    let part_bodies: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path() == format!("/storage/part/{oid}/2"))
        .map(|r| r.body)
        .collect();
    assert!(part_bodies.iter().all(|b| b[..] == big[1 << 20..2 << 20]));
    assert_eq!(
        *delays.lock().unwrap(),
        [1, 2, 1].map(Duration::from_secs),
        "backoff doubles within one request and restarts for the next"
    );
    assert_eq!(hub.state.lock().unwrap().objects[&oid], big);
    assert_eq!(hub.state.lock().unwrap().commits.len(), 1);
}

#[test]
fn a_silent_server_times_out_and_is_retried() {
    let hub = FakeHub::start();
    let (c, delays) = client(&hub);
    let c = c.with_timeout(Duration::from_millis(300));
    hub.fail_once("/api/whoami-v2", Fault::Stall(3000));
    let repo = RepoId::parse("bora-ml/smol-demo").unwrap();
    let (me, _) = c.check_write_access(&repo).unwrap();
    assert_eq!(me.name, "ada");
    assert_eq!(hub.calls().len(), 2);
    assert_eq!(*delays.lock().unwrap(), [Duration::from_secs(1)]);
}

#[test]
fn retries_are_bounded() {
    let hub = FakeHub::start();
    let (c, delays) = client(&hub);
    for _ in 0..6 {
        hub.fail_once("/api/models/bora-ml/smol-demo/preupload/", Fault::Status500);
    }
    let err = push(&c, &[LocalFile::from_bytes("a.txt", b"a".to_vec())]).unwrap_err();
    assert!(matches!(err, HubError::Status { status: 500, .. }), "{err}");
    assert!(err.to_string().contains("preupload/main"), "{err}");
    assert_eq!(
        *delays.lock().unwrap(),
        [1, 2, 4, 8, 8].map(Duration::from_secs)
    );
    assert!(!hub.calls().iter().any(|c| c.1.contains("/commit/")));
}

#[test]
fn unchanged_files_are_not_sent_again() {
    let hub = FakeHub::start();
    let (c, _) = client(&hub);
    let dir = tempfile::tempdir().unwrap();
    let weights = pattern(5000, 1);
    std::fs::write(dir.path().join("w.safetensors"), &weights).unwrap();
    let files = vec![
        LocalFile::from_bytes("README.md", b"card v1".to_vec()),
        LocalFile::from_path(
            "adapter_model.safetensors",
            dir.path().join("w.safetensors"),
        ),
    ];
    push(&c, &files).unwrap();
    hub.clear_requests();

    let mut nothing = false;
    let repo = RepoId::parse("bora-ml/smol-demo").unwrap();
    let again = c
        .upload(&repo, "main", &files, "again", &mut |e| {
            nothing |= e == UploadEvent::NothingToCommit
        })
        .unwrap();
    assert!(nothing);
    assert_eq!(again.commit, None);
    assert_eq!(again.bytes_sent, 0);
    assert!(again.files.iter().all(|f| f.1 == FileOutcome::Unchanged));
    assert_eq!(
        hub.calls(),
        vec![(s("POST"), s("/api/models/bora-ml/smol-demo/preupload/main"))]
    );

    // A changed card and the same weights under a second name: only the card's bytes go
    // up; the weights are referenced, the storage already has them.
    hub.clear_requests();
    let mut changed = files.clone();
    changed[0] = LocalFile::from_bytes("README.md", b"card v2".to_vec());
    changed.push(LocalFile::from_path(
        "copy/adapter_model.safetensors",
        dir.path().join("w.safetensors"),
    ));
    let third = c
        .upload(&repo, "main", &changed, "v2", &mut |_| {})
        .unwrap();
    assert_eq!(
        third.files,
        vec![
            (s("README.md"), FileOutcome::Regular),
            (s("adapter_model.safetensors"), FileOutcome::Unchanged),
            (
                s("copy/adapter_model.safetensors"),
                FileOutcome::AlreadyStored
            ),
        ]
    );
    assert_eq!(third.bytes_sent, 7);
    assert!(!hub.calls().iter().any(|c| c.0 == "PUT"));
    let reqs = hub.requests();
    let commit = reqs.last().unwrap();
    let lines: Vec<Value> = String::from_utf8(commit.body.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["value"]["path"], "README.md");
    assert_eq!(
        lines[2],
        json!({"key": "lfsFile", "value": {"path": "copy/adapter_model.safetensors",
               "algo": "sha256", "oid": sha256(&weights), "size": 5000}})
    );
}

#[test]
fn tokens_without_write_access_stop_before_any_upload() {
    let hub = FakeHub::start();
    hub.state.lock().unwrap().whoami = read_token_whoami();
    let (c, _) = client(&hub);
    let err = push(&c, &[LocalFile::from_bytes("a", b"a".to_vec())]).unwrap_err();
    assert!(matches!(err, HubError::ReadOnlyToken { .. }), "{err}");
    assert!(err.to_string().contains("read"), "{err}");
    assert_eq!(hub.calls(), vec![(s("GET"), s("/api/whoami-v2"))]);

    let other = FakeHub::start();
    let bad = HubClient::new(&other.url, Token::new("hf_wrong").unwrap());
    let repo = RepoId::parse("bora-ml/x").unwrap();
    let err = bad.check_write_access(&repo).unwrap_err();
    assert!(matches!(err, HubError::InvalidToken { .. }), "{err}");
    assert!(!err.to_string().contains("hf_wrong"), "{err}");
    assert_eq!(other.calls(), vec![(s("GET"), s("/api/whoami-v2"))]);

    let foreign = RepoId::parse("someone-else/x").unwrap();
    let err = client(&other).0.check_write_access(&foreign).unwrap_err();
    assert!(matches!(err, HubError::NoWriteAccess { .. }), "{err}");
}

#[test]
fn an_existing_repo_is_fine_and_revisions_are_quoted() {
    let hub = FakeHub::start();
    let (c, _) = client(&hub);
    let repo = RepoId::parse("bora-ml/smol-demo").unwrap();
    assert!(c.create_repo(&repo, true).unwrap());
    assert!(!c.create_repo(&repo, true).unwrap());
    assert_eq!(hub.requests()[0].json()["visibility"], "private");
    c.upload(
        &repo,
        "refs/pr/1",
        &[LocalFile::from_bytes("a.txt", b"a".to_vec())],
        "m",
        &mut |_| {},
    )
    .unwrap();
    let calls = hub.calls();
    assert_eq!(
        calls[2].1,
        "/api/models/bora-ml/smol-demo/preupload/refs%2Fpr%2F1"
    );
    assert_eq!(
        calls[3].1,
        "/api/models/bora-ml/smol-demo/commit/refs%2Fpr%2F1"
    );
}
