//! Models by Hub name against a loopback Hub: the cache `huggingface_hub` wrote is used with
//! no request, bora writes the same cache with the same requests, one weight format is
//! fetched, a dropped connection resumes with Range, a corrupt blob never enters the cache,
//! gated and missing repos say what to do, offline mode reads only the cache.

mod hub_support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bora_hub::hub::{
    DownloadEvent, Downloader, HubCache, HubClient, HubError, ModelRef, RepoId, Retry, Token,
};
use hub_support::{sha256, FakeHub, Fault, ModelRepo, TOKEN};
use serde_json::Value;

const FIXTURE: &str = "tests/fixtures/hf_cache";

fn downloader(hub: &FakeHub, cache: &Path, token: bool) -> Downloader {
    let retry = Retry::default().with_sleep(|_: Duration| {});
    let token = token.then(|| Token::new(TOKEN).unwrap());
    let client = HubClient::with_optional_token(&hub.url, token).with_retry(retry);
    Downloader::new(client, HubCache::new(cache))
}

fn quiet() -> impl FnMut(DownloadEvent<'_>) {
    |_| {}
}

/// Copies a directory tree, keeping symlinks as symlinks.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        let ty = e.file_type().unwrap();
        if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), dest).unwrap();
        } else if ty.is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Every entry under `dir`: a symlink's target, or a file's bytes.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let ty = e.file_type().unwrap();
            if ty.is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                out.insert(rel, format!("-> {}", target.display()));
            } else if ty.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(rel, sha256(&std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

fn fixture_repo_dir() -> PathBuf {
    Path::new(FIXTURE).join("hub/models--bora-test--tiny")
}

/// The repo `scripts/make_hub_cache_fixtures.py` served, rebuilt from its listing and the
/// cached blobs.
fn fixture_repo() -> ModelRepo {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURE).join("repo.json")).unwrap(),
    )
    .unwrap();
    let mut repo = ModelRepo::new(v["repo"].as_str().unwrap());
    for (name, commit) in v["refs"].as_object().unwrap() {
        repo.refs
            .insert(name.clone(), commit.as_str().unwrap().to_owned());
    }
    for (commit, files) in v["commits"].as_object().unwrap() {
        let files = files
            .as_object()
            .unwrap()
            .iter()
            .map(|(path, f)| {
                let blob = fixture_repo_dir()
                    .join("blobs")
                    .join(f["etag"].as_str().unwrap());
                (path.clone(), std::fs::read(blob).unwrap())
            })
            .collect();
        repo.commits.insert(commit.clone(), files);
    }
    repo
}

#[test]
fn a_cache_written_by_huggingface_hub_is_used_without_a_request() {
    let hub = FakeHub::start();
    let dir = tempfile::tempdir().unwrap();
    copy_tree(Path::new(FIXTURE).join("hub").as_path(), dir.path());
    let d = downloader(&hub, dir.path(), true);
    let snapshots = dir.path().join("models--bora-test--tiny/snapshots");
    let main = d
        .model(&ModelRef::parse("bora-test/tiny").unwrap(), &mut quiet())
        .unwrap();
    assert_eq!(main.commit, "2222222222222222222222222222222222222222");
    assert_eq!(main.path, snapshots.join(&main.commit));
    let v1 = d
        .model(&ModelRef::parse("bora-test/tiny@v1").unwrap(), &mut quiet())
        .unwrap();
    assert_eq!(
        v1.path,
        snapshots.join("1111111111111111111111111111111111111111")
    );
    let by_commit = d
        .model(
            &ModelRef::parse("bora-test/tiny@1111111111111111111111111111111111111111").unwrap(),
            &mut quiet(),
        )
        .unwrap();
    assert_eq!(by_commit.path, v1.path);
    let repo = RepoId::parse("bora-test/tiny").unwrap();
    let template = d
        .file(
            &repo,
            "2222222222222222222222222222222222222222",
            "chat_template.jinja",
            &mut quiet(),
        )
        .unwrap();
    assert!(std::fs::read_to_string(template)
        .unwrap()
        .contains("messages"));
    assert!(hub.calls().is_empty(), "{:?}", hub.calls());
}

#[test]
fn bora_writes_the_cache_huggingface_hub_writes_with_the_same_requests() {
    let hub = FakeHub::start();
    hub.add_model(fixture_repo());
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, dir.path(), true);
    let repo = RepoId::parse("bora-test/tiny").unwrap();
    let recorded: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURE).join("requests.json")).unwrap(),
    )
    .unwrap();
    // The files in the order huggingface_hub was asked for them.
    let mut asked = Vec::new();
    for r in &recorded {
        let path = r["path"].as_str().unwrap();
        if r["method"] == "HEAD" {
            let rest = path.strip_prefix("/bora-test/tiny/resolve/").unwrap();
            let (rev, file) = rest.split_once('/').unwrap();
            asked.push((rev.to_owned(), file.to_owned()));
        }
    }
    for (rev, file) in &asked {
        d.file(&repo, rev, file, &mut quiet()).unwrap();
    }
    let sent: Vec<Value> = hub
        .requests()
        .iter()
        .map(|r| {
            serde_json::json!({
                "method": r.method,
                "path": r.path(),
                "authorization": r.header("authorization") == Some(&format!("Bearer {TOKEN}")),
                "range": r.header("range"),
                "host": if r.path().starts_with("/storage/") { "storage" } else { "hub" },
            })
        })
        .collect();
    assert_eq!(sent, recorded);
    assert_eq!(
        tree(&dir.path().join("models--bora-test--tiny")),
        tree(&fixture_repo_dir())
    );
}

/// Deterministic bytes that are not all alike.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn b(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// A repo with both weight formats, as Mistral publishes them.
fn both_formats(id: &str) -> (ModelRepo, String) {
    let mut repo = ModelRepo::new(id);
    let index = br#"{"metadata": {"total_size": 9000}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
        "c": "model-00001-of-00002.safetensors"}}"#;
    let commit = repo.commit(
        &["main"],
        &[
            (".gitattributes", b("*.safetensors filter=lfs")),
            ("README.md", b("# model")),
            ("config.json", b(r#"{"model_type": "mistral"}"#)),
            ("generation_config.json", b("{}")),
            ("model.safetensors.index.json", index.to_vec()),
            ("model-00001-of-00002.safetensors", pattern(5000, 1)),
            ("model-00002-of-00002.safetensors", pattern(4000, 2)),
            ("params.json", b(r#"{"dim": 8}"#)),
            ("consolidated.safetensors", pattern(9000, 3)),
            ("tokenizer.json", b(r#"{"model": {}}"#)),
            ("tokenizer_config.json", b("{}")),
            ("tokenizer.model.v3", pattern(300, 4)),
            ("chat_template.jinja", b("{{ messages }}")),
        ],
    );
    (repo, commit)
}

fn snapshot_files(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn only_one_weight_format_is_fetched_and_shards_come_from_the_index() {
    let hub = FakeHub::start();
    let (repo, commit) = both_formats("mistralai/Both");
    hub.add_model(repo);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, dir.path(), false);
    let mut events = Vec::new();
    let got = d
        .fetch_model(&ModelRef::parse("mistralai/Both").unwrap(), &mut |e| {
            events.push(format!("{e:?}"))
        })
        .unwrap();
    assert_eq!(got.commit, commit);
    assert_eq!(
        snapshot_files(&got.path),
        [
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer.model.v3",
            "tokenizer_config.json",
        ]
    );
    assert!(
        events
            .iter()
            .any(|e| e.contains("Plan") && e.contains("bytes: 9")),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read(got.path.join("model-00002-of-00002.safetensors")).unwrap(),
        pattern(4000, 2)
    );
    assert!(!hub.calls().iter().any(|c| c.1.contains("consolidated")));
    assert!(!hub.calls().iter().any(|c| c.1.contains("params.json")));
    assert!(!hub.calls().iter().any(|c| c.1.contains("README")));
    let refs = dir.path().join("models--mistralai--Both/refs/main");
    assert_eq!(std::fs::read_to_string(refs).unwrap(), commit);

    // Asked again, the cache answers.
    hub.clear_requests();
    let again = d
        .model(&ModelRef::parse("mistralai/Both").unwrap(), &mut quiet())
        .unwrap();
    assert_eq!(again, got);
    assert!(hub.calls().is_empty());
}

#[test]
fn consolidated_and_gguf_repos() {
    let hub = FakeHub::start();
    let mut consolidated = ModelRepo::new("mistralai/Cons");
    consolidated.commit(
        &["main"],
        &[
            ("params.json", b(r#"{"dim": 8}"#)),
            ("consolidated.safetensors", pattern(2000, 5)),
            ("tekken.json", b(r#"{"config": {}, "vocab": []}"#)),
            ("README.md", b("# x")),
        ],
    );
    hub.add_model(consolidated);
    let mut ggufs = ModelRepo::new("someone/M-GGUF");
    let tagged = ggufs.commit(
        &["main", "v2"],
        &[
            ("m-Q4_0.gguf", pattern(3000, 6)),
            ("m-Q8_0.gguf", pattern(3500, 7)),
            ("README.md", b("# x")),
        ],
    );
    hub.add_model(ggufs);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, dir.path(), false);
    let got = d
        .fetch_model(&ModelRef::parse("mistralai/Cons").unwrap(), &mut quiet())
        .unwrap();
    assert_eq!(
        snapshot_files(&got.path),
        ["consolidated.safetensors", "params.json", "tekken.json"]
    );

    let e = d
        .fetch_model(&ModelRef::parse("someone/M-GGUF").unwrap(), &mut quiet())
        .unwrap_err();
    assert!(e.to_string().contains("someone/M-GGUF:m-Q4_0.gguf"), "{e}");
    let got = d
        .fetch_model(
            &ModelRef::parse("someone/M-GGUF@v2:m-Q8_0.gguf").unwrap(),
            &mut quiet(),
        )
        .unwrap();
    assert_eq!(got.commit, tagged);
    assert_eq!(got.path.file_name().unwrap(), "m-Q8_0.gguf");
    assert_eq!(std::fs::read(&got.path).unwrap(), pattern(3500, 7));
    let snapshot = got.path.parent().unwrap();
    assert_eq!(snapshot_files(snapshot), ["m-Q8_0.gguf"]);
    let refs = dir.path().join("models--someone--M-GGUF/refs");
    assert_eq!(std::fs::read_to_string(refs.join("v2")).unwrap(), tagged);
    // A commit id names itself: no ref is written for it.
    let by_commit = d
        .fetch_model(
            &ModelRef::parse(&format!("someone/M-GGUF@{tagged}:m-Q8_0.gguf")).unwrap(),
            &mut quiet(),
        )
        .unwrap();
    assert_eq!(by_commit.path, got.path);
    assert_eq!(snapshot_files(&refs), ["v2"]);
}

#[test]
fn a_connection_dropped_mid_file_resumes_with_range() {
    let hub = FakeHub::start();
    let (repo, _) = both_formats("mistralai/Both");
    hub.add_model(repo);
    hub.fail_once("/storage/lfs/", Fault::Truncate(1234));
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, dir.path(), false);
    let mut retries = Vec::new();
    let got = d
        .fetch_model(&ModelRef::parse("mistralai/Both").unwrap(), &mut |e| {
            if let DownloadEvent::Retry { file, at, .. } = e {
                retries.push((file.to_owned(), at));
            }
        })
        .unwrap();
    assert_eq!(
        retries,
        [("model-00001-of-00002.safetensors".to_owned(), 1234)]
    );
    let ranges: Vec<String> = hub
        .requests()
        .iter()
        .filter_map(|r| r.header("range").map(str::to_owned))
        .collect();
    assert_eq!(ranges, ["bytes=1234-"]);
    assert_eq!(
        std::fs::read(got.path.join("model-00001-of-00002.safetensors")).unwrap(),
        pattern(5000, 1)
    );
}

#[test]
fn an_interrupted_run_resumes_from_the_incomplete_file() {
    let hub = FakeHub::start();
    let mut repo = ModelRepo::new("org/one");
    repo.commit(&["main"], &[("w.gguf", pattern(6000, 9))]);
    hub.add_model(repo);
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("models--org--one/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let sha = sha256(&pattern(6000, 9));
    std::fs::write(
        blobs.join(format!("{sha}.incomplete")),
        &pattern(6000, 9)[..2500],
    )
    .unwrap();
    let d = downloader(&hub, dir.path(), false);
    let got = d
        .fetch_model(&ModelRef::parse("org/one").unwrap(), &mut quiet())
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), pattern(6000, 9));
    let storage: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path().starts_with("/storage/"))
        .collect();
    assert_eq!(storage.len(), 1);
    assert_eq!(storage[0].header("range"), Some("bytes=2500-"));
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
}

#[test]
fn a_blob_whose_hash_does_not_match_is_never_cached() {
    let hub = FakeHub::start();
    let mut repo = ModelRepo::new("org/one");
    let commit = repo.commit(&["main"], &[("w.gguf", pattern(6000, 9))]);
    hub.add_model(repo);
    hub.fail_once("/storage/lfs/", Fault::Corrupt);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, dir.path(), false);
    let model = ModelRef::parse("org/one").unwrap();
    let e = d.fetch_model(&model, &mut quiet()).unwrap_err();
    let sha = sha256(&pattern(6000, 9));
    assert!(matches!(e, HubError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(&sha), "{e}");
    let repo_dir = dir.path().join("models--org--one");
    assert!(!repo_dir.join("blobs").join(&sha).exists());
    assert!(std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .next()
        .is_none());
    assert!(!repo_dir
        .join("snapshots")
        .join(&commit)
        .join("w.gguf")
        .exists());
    assert!(d.cache().cached_model(&model).is_none());
    // The next run downloads it afresh.
    let got = d.fetch_model(&model, &mut quiet()).unwrap();
    assert_eq!(std::fs::read(got.path).unwrap(), pattern(6000, 9));
}

#[test]
fn gated_missing_and_wrong_names_say_what_to_do() {
    let hub = FakeHub::start();
    let (mut repo, _) = both_formats("mistralai/Gated");
    repo.gated = true;
    hub.add_model(repo);
    let (plain, _) = both_formats("mistralai/Plain");
    hub.add_model(plain);
    let dir = tempfile::tempdir().unwrap();
    let model = ModelRef::parse("mistralai/Gated").unwrap();

    let e = downloader(&hub, dir.path(), false)
        .fetch_model(&model, &mut quiet())
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            HubError::Gated {
                token_sent: false,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{}/mistralai/Gated", hub.url)),
        "{msg}"
    );
    assert!(msg.contains("licence") && msg.contains("HF_TOKEN"), "{msg}");

    let e = downloader(&hub, dir.path(), true)
        .fetch_model(&model, &mut quiet())
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            HubError::Gated {
                token_sent: true,
                ..
            }
        ),
        "{msg}"
    );
    assert!(!msg.contains(TOKEN), "{msg}");
    let statuses: Vec<u16> = hub
        .requests()
        .iter()
        .filter(|r| r.method == "HEAD")
        .map(|r| {
            if r.header("authorization").is_some() {
                403
            } else {
                401
            }
        })
        .collect();
    assert_eq!(statuses, [401, 403]);

    let d = downloader(&hub, dir.path(), true);
    let e = d
        .fetch_model(&ModelRef::parse("mistralai/Nope").unwrap(), &mut quiet())
        .unwrap_err();
    assert!(matches!(e, HubError::RepoNotFound { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = d
        .fetch_model(
            &ModelRef::parse("mistralai/Plain@v9").unwrap(),
            &mut quiet(),
        )
        .unwrap_err();
    assert!(matches!(e, HubError::RevisionNotFound { .. }), "{e}");
    assert!(e.to_string().contains("`v9`"), "{e}");
    let e = d
        .file(
            &RepoId::parse("mistralai/Plain").unwrap(),
            "main",
            "nope.json",
            &mut quiet(),
        )
        .unwrap_err();
    assert!(matches!(e, HubError::FileNotFound { .. }), "{e}");
    // No failed attempt leaves a ref, a snapshot or a blob behind.
    assert!(!dir.path().join("models--mistralai--Gated/blobs").exists());
    assert!(!dir.path().join("models--mistralai--Nope").exists());
}

#[test]
fn offline_mode_reads_only_the_cache() {
    let hub = FakeHub::start();
    let (repo, commit) = both_formats("mistralai/Both");
    hub.add_model(repo);
    let dir = tempfile::tempdir().unwrap();
    let model = ModelRef::parse("mistralai/Both").unwrap();
    let offline = downloader(&hub, dir.path(), false).offline(true);
    let e = offline.fetch_model(&model, &mut quiet()).unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }), "{e}");
    assert!(e.to_string().contains("HF_HUB_OFFLINE"), "{e}");
    assert!(
        e.to_string().contains("bora download mistralai/Both"),
        "{e}"
    );
    assert!(hub.calls().is_empty());

    downloader(&hub, dir.path(), false)
        .fetch_model(&model, &mut quiet())
        .unwrap();
    hub.clear_requests();
    let got = offline.fetch_model(&model, &mut quiet()).unwrap();
    assert_eq!(got.commit, commit);
    let repo = RepoId::parse("mistralai/Both").unwrap();
    assert!(offline
        .file(&repo, "main", "config.json", &mut quiet())
        .is_ok());
    let e = offline
        .file(&repo, "main", "params.json", &mut quiet())
        .unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }), "{e}");
    assert!(hub.calls().is_empty(), "{:?}", hub.calls());
}

#[test]
fn the_environment_decides_endpoint_cache_token_and_offline() {
    let hub = FakeHub::start();
    let mut repo = ModelRepo::new("org/one");
    repo.commit(&["main"], &[("w.gguf", pattern(100, 1))]);
    repo.gated = true;
    repo.access = true;
    hub.add_model(repo);
    let dir = tempfile::tempdir().unwrap();
    let vars: HashMap<&str, String> = HashMap::from([
        ("HF_ENDPOINT", hub.url.clone()),
        ("HF_HOME", dir.path().display().to_string()),
        ("HF_TOKEN", TOKEN.to_owned()),
    ]);
    let env = |k: &str| vars.get(k).cloned();
    let located = bora_hub::hub::locate_model("org/one", None, env, &mut quiet()).unwrap();
    assert!(located
        .path
        .starts_with(dir.path().join("hub/models--org--one/snapshots")));
    assert_eq!(std::fs::read(&located.path).unwrap(), pattern(100, 1));
    assert!(hub
        .requests()
        .iter()
        .filter(|r| !r.path().starts_with("/storage/"))
        .all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}"))));
    // A local path wins over a Hub id.
    let local = dir.path().join("org/one");
    std::fs::create_dir_all(&local).unwrap();
    let env = |k: &str| vars.get(k).cloned();
    let found =
        bora_hub::hub::locate_model(local.to_str().unwrap(), None, env, &mut quiet()).unwrap();
    assert_eq!(found.path, local);
    assert!(found.hub.is_none());
    let offline = |k: &str| match k {
        "HF_HUB_OFFLINE" => Some("1".to_owned()),
        k => vars.get(k).cloned(),
    };
    let e = bora_hub::hub::locate_model("org/two", None, offline, &mut quiet()).unwrap_err();
    assert!(matches!(e, HubError::NotCached { .. }), "{e}");
}

#[test]
fn a_blob_another_process_is_fetching_is_waited_for_and_not_fetched_again() {
    let hub = FakeHub::start();
    let (repo, _) = both_formats("mistralai/Both");
    hub.add_model(repo);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, dir.path(), false);
    let shard = "model-00001-of-00002.safetensors";
    let bytes = pattern(5000, 1);
    let etag = sha256(&bytes);
    // The lock huggingface_hub takes for this blob, held here as another process would.
    let locks = dir.path().join(".locks/models--mistralai--Both");
    std::fs::create_dir_all(&locks).unwrap();
    let held = std::fs::File::create(locks.join(format!("{etag}.lock"))).unwrap();
    held.lock().unwrap();
    let repo_id = RepoId::parse("mistralai/Both").unwrap();
    let (events, waiting) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let fetch = s.spawn(|| {
            d.file(&repo_id, "main", shard, &mut |e| {
                if let DownloadEvent::Waiting { file } = e {
                    events.send(file.to_owned()).unwrap();
                }
            })
        });
        let file = waiting
            .recv_timeout(Duration::from_secs(120))
            .expect("bora waits for the lock another process holds");
        assert_eq!(file, shard);
        // The other process finishes: its verified blob appears, then it lets go.
        let blobs = dir.path().join("models--mistralai--Both/blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join(&etag), &bytes).unwrap();
        drop(held);
        let path = fetch.join().unwrap().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), bytes);
    });
    let fetched: Vec<String> = hub
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.target.contains(shard))
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        fetched,
        Vec::<String>::new(),
        "the blob was downloaded twice"
    );
}

#[test]
fn a_tokenizer_alone_is_fetched_without_the_weights() {
    let hub = FakeHub::start();
    let (repo, commit) = both_formats("mistralai/Both");
    hub.add_model(repo);
    let dir = tempfile::tempdir().unwrap();
    let d = downloader(&hub, dir.path(), false);
    let got = d
        .tokenizer(&ModelRef::parse("mistralai/Both").unwrap(), &mut quiet())
        .unwrap();
    assert_eq!(
        got,
        HubCache::new(dir.path()).snapshot_dir(&RepoId::parse("mistralai/Both").unwrap(), &commit)
    );
    assert_eq!(
        snapshot_files(&got),
        [
            "chat_template.jinja",
            "tokenizer.json",
            "tokenizer.model.v3",
            "tokenizer_config.json"
        ]
    );
    // Offline, and at a pinned commit, the cached tokenizer is used with no request.
    hub.clear_requests();
    let offline = downloader(&hub, dir.path(), false).offline(true);
    let again = offline
        .tokenizer(&ModelRef::parse("mistralai/Both").unwrap(), &mut quiet())
        .unwrap();
    assert_eq!(again, got);
    let pinned = ModelRef::parse(&format!("mistralai/Both@{commit}")).unwrap();
    assert_eq!(d.tokenizer(&pinned, &mut quiet()).unwrap(), got);
    assert_eq!(hub.requests().len(), 0);

    let mut weights_only = ModelRepo::new("someone/NoTokenizer");
    weights_only.commit(
        &["main"],
        &[
            ("config.json", b(r#"{"model_type": "mistral"}"#)),
            ("model.safetensors", pattern(100, 5)),
        ],
    );
    hub.add_model(weights_only);
    let err = d
        .tokenizer(
            &ModelRef::parse("someone/NoTokenizer").unwrap(),
            &mut quiet(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tokenizer file"), "{err}");
}
