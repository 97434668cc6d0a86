//! Models by Hub name, fetched as `huggingface_hub` fetches them, into the cache it shares
//! with transformers, vLLM and `hf download`: `models--ORG--NAME/blobs/<etag>` holds each file
//! once, `snapshots/<commit>/<path>` links to it, `refs/<branch or tag>` names the commit.
//! A file is asked for with `HEAD /ORG/NAME/resolve/<rev>/<path>` (its commit in
//! `X-Repo-Commit`, its hash in `X-Linked-Etag` or `ETag`, its size in `X-Linked-Size`, and a
//! redirect to storage for LFS files), then fetched into `blobs/<etag>.incomplete`, resumed
//! with `Range` after a dropped connection or an interrupted run, and moved into the cache
//! only once its bytes hash to the etag (sha256 for LFS files, the git blob id for others).
//!
//! Only the files a model needs are fetched: config, tokenizer files and the weights of one
//! format, or one GGUF file.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::Digest;
use ureq::http::Request;

use super::http::{retryable, shown, Body, Req};
use super::{resolve_endpoint, HubClient, HubError, RepoId, Result, Token};

/// The revision a model name without `@REV` means.
pub const DEFAULT_REVISION: &str = "main";

/// Redirects followed for one file, as `huggingface_hub` allows.
const MAX_REDIRECTS: usize = 10;

/// A model named as transformers, vLLM and llama.cpp name them: `ORG/NAME`, a revision
/// (branch, tag or commit) after `@`, and one GGUF file of the repo after `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub repo: RepoId,
    pub revision: Option<String>,
    pub file: Option<String>,
}

impl ModelRef {
    /// Parses `ORG/NAME[@REVISION][:FILE.gguf]`.
    pub fn parse(text: &str) -> Result<ModelRef> {
        let bad = |why: String| HubError::BadModelRef {
            text: text.to_owned(),
            why,
        };
        let (rest, file) = match text.split_once(':') {
            Some((rest, file)) => (rest, Some(file)),
            None => (text, None),
        };
        let (id, revision) = match rest.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (rest, None),
        };
        let repo = RepoId::parse(id).map_err(|e| bad(e.to_string()))?;
        if let Some(rev) = revision {
            if let Some(why) = path_problem(rev) {
                return Err(bad(format!("the revision `{rev}` {why}")));
            }
        }
        if let Some(file) = file {
            if !file.ends_with(".gguf") {
                return Err(bad(format!(
                    "`{file}` after `:` must be a .gguf file of the repo, e.g. ORG/NAME:model-Q4_K_M.gguf"
                )));
            }
            if let Some(why) = path_problem(file) {
                return Err(bad(format!("the file `{file}` {why}")));
            }
        }
        Ok(ModelRef {
            repo,
            revision: revision.map(str::to_owned),
            file: file.map(str::to_owned),
        })
    }

    /// The revision asked for, `main` when none was.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }

    /// The same model at another revision (a run pins the commit it trained on).
    pub fn at(&self, revision: &str) -> ModelRef {
        ModelRef {
            revision: Some(revision.to_owned()),
            ..self.clone()
        }
    }

    /// `ORG/NAME[:FILE]`, without the revision: the name a run config and an adapter's
    /// `base_model_name_or_path` record, beside the commit.
    pub fn name(&self) -> String {
        match &self.file {
            Some(f) => format!("{}:{f}", self.repo),
            None => self.repo.to_string(),
        }
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(r) = &self.revision {
            write!(f, "@{r}")?;
        }
        if let Some(file) = &self.file {
            write!(f, ":{file}")?;
        }
        Ok(())
    }
}

/// Why a revision or repo path cannot name a file under the cache, if it cannot: it becomes
/// a path below `refs/` or `snapshots/<commit>/`, so it must stay there.
fn path_problem(text: &str) -> Option<&'static str> {
    if text.is_empty() {
        return Some("is empty");
    }
    if text.starts_with('/') || text.contains('\\') || text.chars().any(char::is_control) {
        return Some("must be a relative path with `/` separators");
    }
    if text
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Some("may not hold empty, `.` or `..` path components");
    }
    None
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads a boolean variable as `huggingface_hub` does (`1`, `ON`, `YES`, `TRUE`).
fn env_true(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        ["1", "ON", "YES", "TRUE"].contains(&v.trim().to_ascii_uppercase().as_str())
    })
}

/// The Hugging Face cache directory.
#[derive(Debug, Clone)]
pub struct HubCache {
    root: PathBuf,
}

/// A model found in (or just fetched into) the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalModel {
    /// The snapshot directory, or the GGUF file in it.
    pub path: PathBuf,
    /// The model as asked for, with the revision it was asked at.
    pub model: ModelRef,
    /// The commit that revision resolved to.
    pub commit: String,
}

impl HubCache {
    pub fn new(root: impl Into<PathBuf>) -> HubCache {
        HubCache { root: root.into() }
    }

    /// Where `huggingface_hub` puts its cache: `HF_HUB_CACHE` (or the older
    /// `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`,
    /// else `~/.cache/huggingface/hub`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> HubCache {
        let set = |k: &str| env(k).filter(|v| !v.is_empty());
        let home = set("HOME").unwrap_or_default();
        let expand = |v: String| match v.strip_prefix("~/") {
            Some(rest) => Path::new(&home).join(rest),
            None => PathBuf::from(v),
        };
        let root = set("HF_HUB_CACHE")
            .or_else(|| set("HUGGINGFACE_HUB_CACHE"))
            .map(expand)
            .or_else(|| set("HF_HOME").map(|h| expand(h).join("hub")))
            .or_else(|| set("XDG_CACHE_HOME").map(|c| expand(c).join("huggingface/hub")))
            .unwrap_or_else(|| Path::new(&home).join(".cache/huggingface/hub"));
        HubCache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `models--ORG--NAME`.
    pub fn repo_dir(&self, repo: &RepoId) -> PathBuf {
        self.root
            .join(format!("models--{}--{}", repo.namespace(), repo.name()))
    }

    pub fn snapshot_dir(&self, repo: &RepoId, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    /// The commit `revision` names in the cache: itself when it is a commit id with a
    /// snapshot, else what `refs/<revision>` holds.
    pub fn commit(&self, repo: &RepoId, revision: &str) -> Option<String> {
        if is_commit(revision) && self.snapshot_dir(repo, revision).is_dir() {
            return Some(revision.to_owned());
        }
        let text = fs::read_to_string(self.repo_dir(repo).join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_commit(commit).then(|| commit.to_owned())
    }

    /// The model, when the cache holds all of it for its revision: then no request is
    /// needed, whoever downloaded it.
    pub fn cached_model(&self, model: &ModelRef) -> Option<LocalModel> {
        let commit = self.commit(&model.repo, model.revision())?;
        let snapshot = self.snapshot_dir(&model.repo, &commit);
        let path = complete_model(&snapshot, model.file.as_deref())?;
        Some(LocalModel {
            path,
            model: model.clone(),
            commit,
        })
    }

    /// A file of the repo at `revision`, when cached.
    pub fn cached_file(&self, repo: &RepoId, revision: &str, file: &str) -> Option<PathBuf> {
        let commit = self.commit(repo, revision)?;
        let path = self.snapshot_dir(repo, &commit).join(file);
        path.is_file().then_some(path)
    }

    /// Holds the lock `huggingface_hub` takes before fetching a blob
    /// (`.locks/models--ORG--NAME/<etag>.lock`, an exclusive `flock`), so bora, transformers
    /// and `huggingface-cli` sharing this cache never download the same file twice at once
    /// or write into each other's `.incomplete` file. Released when the returned file drops.
    fn lock_blob(
        &self,
        repo: &RepoId,
        etag: &str,
        file: &str,
        on: &mut dyn FnMut(DownloadEvent<'_>),
    ) -> Result<File> {
        let repo_dir = self.repo_dir(repo);
        let folder = repo_dir.file_name().unwrap_or_default();
        let dir = self.root.join(".locks").join(folder);
        let path = dir.join(format!("{etag}.lock"));
        let io = |source| HubError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                on(DownloadEvent::Waiting { file });
                lock.lock().map_err(io)?;
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
        }
        Ok(lock)
    }

    fn write_ref(&self, repo: &RepoId, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.repo_dir(repo).join("refs").join(revision);
        if fs::read_to_string(&path).is_ok_and(|t| t == commit) {
            return Ok(());
        }
        let parent = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(|source| HubError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        bora_formats::atomic::write_file(&path, commit.as_bytes())?;
        Ok(())
    }
}

/// The path bora loads from a snapshot directory, when the files of one weight format are
/// all there: config.json with its safetensors (sharded or not), params.json with its
/// consolidated safetensors, or the one GGUF file.
fn complete_model(snapshot: &Path, file: Option<&str>) -> Option<PathBuf> {
    if let Some(file) = file {
        let path = snapshot.join(file);
        return path.is_file().then_some(path);
    }
    let weights = |single: &str, index: &str| match fs::read(snapshot.join(index)) {
        Ok(bytes) => index_shards(&bytes)
            .is_some_and(|shards| shards.iter().all(|s| snapshot.join(s).is_file())),
        Err(_) => snapshot.join(single).is_file(),
    };
    if snapshot.join("config.json").is_file()
        && weights("model.safetensors", "model.safetensors.index.json")
    {
        return Some(snapshot.to_path_buf());
    }
    if snapshot.join("params.json").is_file()
        && weights(
            "consolidated.safetensors",
            "consolidated.safetensors.index.json",
        )
    {
        return Some(snapshot.to_path_buf());
    }
    let ggufs: Vec<PathBuf> = fs::read_dir(snapshot)
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf") && p.is_file())
        .collect();
    match ggufs.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The shard names of a safetensors index (`weight_map` values), sorted, each a safe
/// relative path; `None` when the index is not one.
fn index_shards(bytes: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let mut shards: Vec<String> = v
        .get("weight_map")?
        .as_object()?
        .values()
        .map(|f| f.as_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    shards.sort();
    shards.dedup();
    (!shards.is_empty() && shards.iter().all(|s| path_problem(s).is_none())).then_some(shards)
}

/// Whether a repo file is a tokenizer or chat-template file some reader of the model uses.
/// A kind of file fetched without the weights, and what to say of a repo without one.
struct FileKind {
    is: fn(&str) -> bool,
    missing: &'static str,
}

/// A model's config: Hugging Face's, or Mistral's for a consolidated checkpoint.
const CONFIG: FileKind = FileKind {
    is: |name| matches!(name, "config.json" | "params.json"),
    missing: "no config (config.json, params.json)",
};

const TOKENIZER: FileKind = FileKind {
    is: is_tokenizer_file,
    missing: "no tokenizer file (tekken.json, tokenizer.model*, tokenizer.json); for a GGUF \
              repo name the file: ORG/NAME:FILE.gguf",
};

fn is_tokenizer_file(name: &str) -> bool {
    matches!(
        name,
        "tokenizer.json"
            | "tokenizer_config.json"
            | "special_tokens_map.json"
            | "tokenizer.model"
            | "chat_template.jinja"
            | "chat_template.json"
    ) || name.starts_with("tokenizer.model.v")
        || (name.starts_with("tekken") && name.ends_with(".json") && !name.contains('/'))
}

/// What to fetch of a repo, given its file list: `files` first, then the shards named in
/// `index` (once it is fetched and read).
#[derive(Debug, PartialEq)]
struct Selection {
    files: Vec<String>,
    index: Option<String>,
}

/// Picks the files of one weight format, as `Model::load` reads a directory: the HF layout
/// (config.json + model safetensors) when the repo has it, else Mistral's consolidated one
/// (params.json + consolidated safetensors), else the repo's only GGUF file.
fn select(
    repo: &RepoId,
    revision: &str,
    names: &[String],
    gguf: Option<&str>,
) -> Result<Selection> {
    let has = |n: &str| names.iter().any(|x| x == n);
    let no_model = |what: String| HubError::NoModel {
        repo: repo.to_string(),
        revision: revision.to_owned(),
        what,
    };
    if let Some(file) = gguf {
        if !has(file) {
            return Err(HubError::FileNotFound {
                repo: repo.to_string(),
                revision: revision.to_owned(),
                file: file.to_owned(),
            });
        }
        return Ok(Selection {
            files: vec![file.to_owned()],
            index: None,
        });
    }
    let tokenizer = names.iter().filter(|n| is_tokenizer_file(n)).cloned();
    let weights = |single: &str, index: &str| {
        if has(index) {
            Some((vec![index.to_owned()], Some(index.to_owned())))
        } else if has(single) {
            Some((vec![single.to_owned()], None))
        } else {
            None
        }
    };
    if has("config.json") {
        if let Some((w, index)) = weights("model.safetensors", "model.safetensors.index.json") {
            let mut files = vec!["config.json".to_owned()];
            files.extend(has("generation_config.json").then(|| "generation_config.json".into()));
            files.extend(tokenizer);
            files.extend(w);
            return Ok(Selection { files, index });
        }
    }
    if has("params.json") {
        if let Some((w, index)) = weights(
            "consolidated.safetensors",
            "consolidated.safetensors.index.json",
        ) {
            let mut files = vec!["params.json".to_owned()];
            files.extend(tokenizer);
            files.extend(w);
            return Ok(Selection { files, index });
        }
    }
    let ggufs: Vec<&String> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
    match ggufs.as_slice() {
        [one] => Ok(Selection {
            files: vec![(*one).clone()],
            index: None,
        }),
        [] => Err(no_model(
            "no weights bora reads: it needs config.json with model*.safetensors, params.json \
             with consolidated*.safetensors, or a .gguf file"
                .into(),
        )),
        many => Err(no_model(format!(
            "the repo holds {} GGUF files and no safetensors model; pick one as {repo}:FILE, \
             e.g. {repo}:{} (files: {})",
            many.len(),
            many[0],
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// What a download reports, for a progress display.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent<'a> {
    /// The revision is this commit; `files` files of `bytes` bytes are missing from the cache.
    Plan {
        commit: &'a str,
        files: usize,
        bytes: u64,
    },
    /// A file starts downloading (from `from` when a partial download is resumed).
    Start {
        file: &'a str,
        size: Option<u64>,
        from: u64,
    },
    /// `done` bytes of the file are on disk.
    Progress {
        file: &'a str,
        done: u64,
        size: Option<u64>,
    },
    /// The connection failed at byte `at`; the download goes on from there.
    Retry { file: &'a str, at: u64, why: String },
    /// Another process (bora, transformers, `huggingface-cli`) is downloading the file into
    /// the same cache; this one waits for it and then uses its blob.
    Waiting { file: &'a str },
    /// The file is verified and in the cache.
    Done { file: &'a str },
    /// The Hub could not be asked; the cached copy is used.
    UsingCache { why: String },
}

/// A repo's files at one revision, with their sizes where the Hub gives them.
type Listing = Vec<(String, Option<u64>)>;

/// What a `HEAD .../resolve/...` says about a file.
#[derive(Debug)]
struct FileMeta {
    commit: String,
    etag: String,
    size: Option<u64>,
    /// Where the bytes are: the resolve URL, or the storage URL it redirects to.
    location: String,
}

/// Downloads models and files into a [`HubCache`].
#[derive(Debug)]
pub struct Downloader {
    client: HubClient,
    cache: HubCache,
    offline: bool,
}

impl Downloader {
    pub fn new(client: HubClient, cache: HubCache) -> Downloader {
        Downloader {
            client,
            cache,
            offline: false,
        }
    }

    /// Endpoint (`HF_ENDPOINT`), token (`HF_TOKEN` or the token file; none is fine for
    /// public repos), cache and `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) as
    /// `huggingface_hub` reads them.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Downloader> {
        let endpoint = resolve_endpoint(None, &env);
        let token = match Token::discover(&env) {
            Ok(t) => Some(t),
            Err(HubError::NoToken { .. }) => None,
            Err(e) => return Err(e),
        };
        let offline = env_true(env("HF_HUB_OFFLINE").or_else(|| env("TRANSFORMERS_OFFLINE")));
        Ok(Downloader {
            client: HubClient::with_optional_token(&endpoint, token),
            cache: HubCache::from_env(&env),
            offline,
        })
    }

    /// With `true`, nothing is requested: only the cache answers.
    pub fn offline(mut self, offline: bool) -> Downloader {
        self.offline = offline;
        self
    }

    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// The model for a command that runs it: from the cache when the cache holds all of it
    /// at that revision (no request at all), else fetched.
    pub fn model(
        &self,
        model: &ModelRef,
        on: &mut dyn FnMut(DownloadEvent<'_>),
    ) -> Result<LocalModel> {
        if let Some(found) = self.cache.cached_model(model) {
            return Ok(found);
        }
        self.fetch_model(model, on)
    }

    /// A model's tokenizer without its weights: the repo's tokenizer and chat-template files
    /// (a few megabytes where the weights of a 7B model are 14 GB), from the cache when it
    /// holds them at that revision, else fetched. A `:FILE.gguf` reference is that whole file,
    /// whose vocabulary is inside it. Returns the snapshot directory (or the GGUF file).
    pub fn tokenizer(
        &self,
        model: &ModelRef,
        on: &mut dyn FnMut(DownloadEvent<'_>),
    ) -> Result<PathBuf> {
        Ok(self.some_files(model, &[TOKENIZER], on)?.path)
    }

    /// A model's config and tokenizer without its weights: what planning a run needs when the
    /// weights are loaded elsewhere (a Hugging Face Job downloads them itself), fetched as
    /// [`Downloader::tokenizer`] fetches the tokenizer. A `:FILE.gguf` reference is that
    /// whole file, whose config is inside it.
    pub fn config_and_tokenizer(
        &self,
        model: &ModelRef,
        on: &mut dyn FnMut(DownloadEvent<'_>),
    ) -> Result<LocalModel> {
        self.some_files(model, &[CONFIG, TOKENIZER], on)
    }

    /// The files of `model` of one of `kinds` (each kind must be present), from the cache when
    /// a snapshot of that revision holds every kind, else fetched at the commit the revision
    /// names now.
    fn some_files(
        &self,
        model: &ModelRef,
        kinds: &[FileKind],
        on: &mut dyn FnMut(DownloadEvent<'_>),
    ) -> Result<LocalModel> {
        if model.file.is_some() {
            return self.model(model, on);
        }
        let revision = model.revision();
        let cached = self.cache.commit(&model.repo, revision).and_then(|commit| {
            let snapshot = self.cache.snapshot_dir(&model.repo, &commit);
            let names: Vec<String> = fs::read_dir(&snapshot)
                .ok()?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            kinds
                .iter()
                .all(|kind| names.iter().any(|name| (kind.is)(name)))
                .then(|| LocalModel {
                    path: snapshot,
                    model: model.clone(),
                    commit,
                })
        });
        if let Some(found) = &cached {
            if self.offline || is_commit(revision) {
                return Ok(found.clone());
            }
        }
        if self.offline {
            return Err(HubError::NotCached {
                model: model.to_string(),
                cache: self.cache.root.clone(),
            });
        }
        let (commit, listing) = match self.listing(&model.repo, revision) {
            Ok(listing) => listing,
            Err(e @ (HubError::Transport { .. } | HubError::Status { .. })) => {
                let Some(found) = cached else {
                    return Err(e);
                };
                on(DownloadEvent::UsingCache { why: e.to_string() });
                return Ok(found);
            }
            Err(e) => return Err(e),
        };
        let files: Vec<&String> = listing
            .iter()
            .map(|(name, _)| name)
            .filter(|name| kinds.iter().any(|kind| (kind.is)(name)))
            .collect();
        if let Some(kind) = kinds
            .iter()
            .find(|kind| !files.iter().any(|name| (kind.is)(name)))
        {
            return Err(HubError::NoModel {
                repo: model.repo.to_string(),
                revision: revision.to_owned(),
                what: kind.missing.to_owned(),
            });
        }
        self.cache.write_ref(&model.repo, revision, &commit)?;
        for file in files {
            self.fetch_file(&model.repo, &commit, file, on)?;
        }
        Ok(LocalModel {
            path: self.cache.snapshot_dir(&model.repo, &commit),
            model: model.clone(),
            commit,
        })
    }

    /// The model at the commit its revision names on the Hub now (`bora download`): files
    /// already cached are not fetched again. When the Hub cannot be reached (or offline),
    /// a complete cached copy is used instead.
    pub fn fetch_model(
        &self,
        model: &ModelRef,
        on: &mut dyn FnMut(DownloadEvent<'_>),
    ) -> Result<LocalModel> {
        if self.offline {
            return self
                .cache
                .cached_model(model)
                .ok_or_else(|| HubError::NotCached {
                    model: model.to_string(),
                    cache: self.cache.root.clone(),
                });
        }
        let revision = model.revision();
        let (commit, sizes) = match self.listing(&model.repo, revision) {
            Ok(listing) => listing,
            Err(e @ (HubError::Transport { .. } | HubError::Status { .. })) => {
                let Some(found) = self.cache.cached_model(model) else {
                    return Err(e);
                };
                on(DownloadEvent::UsingCache { why: e.to_string() });
                return Ok(found);
            }
            Err(e) => return Err(e),
        };
        let names: Vec<String> = sizes.iter().map(|s| s.0.clone()).collect();
        let selection = select(&model.repo, revision, &names, model.file.as_deref())?;
        self.cache.write_ref(&model.repo, revision, &commit)?;
        let snapshot = self.cache.snapshot_dir(&model.repo, &commit);
        let mut files = selection.files;
        if let Some(index) = &selection.index {
            let path = self.fetch_file(&model.repo, &commit, index, on)?.1;
            let bytes = fs::read(&path).map_err(|source| HubError::Io {
                path: path.clone(),
                source,
            })?;
            let shards = index_shards(&bytes).ok_or_else(|| HubError::NoModel {
                repo: model.repo.to_string(),
                revision: revision.to_owned(),
                what: format!("{index} has no `weight_map` of relative file names"),
            })?;
            for shard in shards {
                if !names.contains(&shard) {
                    return Err(HubError::NoModel {
                        repo: model.repo.to_string(),
                        revision: revision.to_owned(),
                        what: format!("{index} names {shard}, which is not in the repo"),
                    });
                }
                files.push(shard);
            }
        }
        let missing: Vec<&String> = files
            .iter()
            .filter(|f| !snapshot.join(f).is_file())
            .collect();
        let bytes = missing
            .iter()
            .filter_map(|f| sizes.iter().find(|s| &s.0 == *f).and_then(|s| s.1))
            .sum();
        on(DownloadEvent::Plan {
            commit: &commit,
            files: missing.len(),
            bytes,
        });
        for file in &files {
            self.fetch_file(&model.repo, &commit, file, on)?;
        }
        let path =
            complete_model(&snapshot, model.file.as_deref()).ok_or_else(|| HubError::NoModel {
                repo: model.repo.to_string(),
                revision: revision.to_owned(),
                what: format!("{} is incomplete after the download", snapshot.display()),
            })?;
        Ok(LocalModel {
            path,
            model: model.clone(),
            commit,
        })
    }

    /// One file of a repo at a revision, in the cache: the cached copy when the revision
    /// is a commit (or offline), else what the Hub resolves the revision to now.
    pub fn file(
        &self,
        repo: &RepoId,
        revision: &str,
        file: &str,
        on: &mut dyn FnMut(DownloadEvent<'_>),
    ) -> Result<PathBuf> {
        if let Some(why) = path_problem(file) {
            return Err(HubError::BadModelRef {
                text: file.to_owned(),
                why: format!("the file {why}"),
            });
        }
        let cached = self.cache.cached_file(repo, revision, file);
        if self.offline || (is_commit(revision) && cached.is_some()) {
            return cached.ok_or_else(|| HubError::NotCached {
                model: format!("{repo}@{revision}:{file}"),
                cache: self.cache.root.clone(),
            });
        }
        Ok(self.fetch_file(repo, revision, file, on)?.1)
    }

    /// `GET /api/models/ORG/NAME/revision/REV?blobs=true`: the commit and every file with
    /// its size.
    fn listing(&self, repo: &RepoId, revision: &str) -> Result<(String, Listing)> {
        let req = Req {
            method: "GET",
            url: format!(
                "{}/api/models/{repo}/revision/{}?blobs=true",
                self.client.endpoint,
                quote(revision, false)
            ),
            auth: true,
            headers: vec![],
            body: Body::Empty,
        };
        let r = self.client.send(&req)?;
        if !(200..300).contains(&r.status) {
            let code = r.error_code.clone();
            return Err(self
                .classify(r.status, code.as_deref(), repo, revision, None)
                .unwrap_or_else(|| self.client.status_error(&req, r)));
        }
        let v: Value = serde_json::from_str(&r.body).map_err(|e| HubError::Protocol {
            url: shown(&req.url),
            what: format!("the answer is not JSON: {e}"),
        })?;
        let protocol = |what: &str| HubError::Protocol {
            url: shown(&req.url),
            what: what.to_owned(),
        };
        let commit = v
            .get("sha")
            .and_then(Value::as_str)
            .filter(|s| is_commit(s))
            .ok_or_else(|| protocol("no commit id in `sha`"))?
            .to_owned();
        let files = v
            .get("siblings")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol("no `siblings` file list"))?
            .iter()
            .filter_map(|s| {
                let name = s.get("rfilename")?.as_str()?.to_owned();
                Some((name, s.get("size").and_then(Value::as_u64)))
            })
            .collect();
        Ok((commit, files))
    }

    /// The error an answer means, when it is one the user can act on.
    fn classify(
        &self,
        status: u16,
        code: Option<&str>,
        repo: &RepoId,
        revision: &str,
        file: Option<&str>,
    ) -> Option<HubError> {
        let token_sent = self.client.has_token();
        let endpoint = self.client.endpoint.clone();
        Some(match (code, status) {
            (Some("GatedRepo"), _) => HubError::Gated {
                repo: repo.to_string(),
                endpoint,
                token_sent,
            },
            (Some("RevisionNotFound"), _) => HubError::RevisionNotFound {
                repo: repo.to_string(),
                revision: revision.to_owned(),
            },
            (Some("EntryNotFound"), _) | (None, 404) if file.is_some() => HubError::FileNotFound {
                repo: repo.to_string(),
                revision: revision.to_owned(),
                file: file.unwrap_or_default().to_owned(),
            },
            (Some("RepoNotFound"), _) | (None, 401 | 404) => HubError::RepoNotFound {
                repo: repo.to_string(),
                endpoint,
                token_sent,
            },
            _ => return None,
        })
    }

    /// `HEAD` of a file's resolve URL, following redirects that stay on the Hub; a redirect
    /// elsewhere (storage) is where the bytes are, and carries the file's metadata itself.
    fn head(&self, repo: &RepoId, revision: &str, file: &str) -> Result<FileMeta> {
        let mut url = format!(
            "{}/{repo}/resolve/{}/{}",
            self.client.endpoint,
            quote(revision, false),
            quote(file, true)
        );
        for _ in 0..MAX_REDIRECTS {
            let req = Req {
                method: "HEAD",
                url: url.clone(),
                auth: same_origin(&url, &self.client.endpoint),
                headers: vec![("accept-encoding", "identity")],
                body: Body::Empty,
            };
            let (status, headers) = self.send_head(&req)?;
            let header = |name: &str| headers.iter().find(|h| h.0 == name).map(|h| h.1.clone());
            let redirect = (300..400).contains(&status);
            let location = header("location").map(|l| join_url(&url, &l));
            if redirect {
                let Some(target) = location.clone() else {
                    return Err(HubError::Protocol {
                        url: shown(&url),
                        what: format!("{status} without a Location"),
                    });
                };
                if same_origin(&target, &self.client.endpoint) {
                    url = target;
                    continue;
                }
            } else if !(200..300).contains(&status) {
                let code = header("x-error-code");
                return Err(self
                    .classify(status, code.as_deref(), repo, revision, Some(file))
                    .unwrap_or_else(|| HubError::Status {
                        method: "HEAD",
                        url: shown(&url),
                        status,
                        body: header("x-error-message").unwrap_or_default(),
                    }));
            }
            let protocol = |what: String| HubError::Protocol {
                url: shown(&url),
                what,
            };
            let commit = header("x-repo-commit").filter(|c| is_commit(c)).ok_or_else(|| {
                protocol(
                    "no X-Repo-Commit header: this is not a Hugging Face Hub endpoint (check HF_ENDPOINT)"
                        .into(),
                )
            })?;
            let etag = header("x-linked-etag")
                .or_else(|| header("etag"))
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_owned())
                .filter(|e| (e.len() == 40 || e.len() == 64) && e.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| protocol("no ETag that is a sha256 or git blob id, so the download could not be verified".into()))?;
            let size = header("x-linked-size")
                .or_else(|| (!redirect).then(|| header("content-length")).flatten())
                .and_then(|s| s.parse().ok());
            return Ok(FileMeta {
                commit,
                etag,
                size,
                location: if redirect {
                    location.unwrap_or_default()
                } else {
                    url
                },
            });
        }
        Err(HubError::Protocol {
            url: shown(&url),
            what: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// One `HEAD` with the client's retries; the answer's headers, lower-cased.
    fn send_head(&self, req: &Req) -> Result<(u16, Vec<(String, String)>)> {
        let mut attempt = 1;
        loop {
            let mut builder = Request::builder().method("HEAD").uri(&req.url);
            if let Some(bearer) = self.client.bearer().filter(|_| req.auth) {
                builder = builder.header("authorization", bearer);
            }
            for (k, v) in &req.headers {
                builder = builder.header(*k, *v);
            }
            let request = builder.body(()).map_err(|e| HubError::Protocol {
                url: shown(&req.url),
                what: format!("cannot build the request: {e}"),
            })?;
            let outcome = self.client.download_agent.run(request);
            let again = match &outcome {
                Ok(r) => r.status().as_u16() == 429 || r.status().as_u16() >= 500,
                Err(e) => retryable(e),
            };
            if !again || attempt >= self.client.retry.attempts {
                let response = outcome.map_err(|e| HubError::Transport {
                    method: "HEAD",
                    url: shown(&req.url),
                    attempts: attempt,
                    source: Box::new(e),
                })?;
                let headers = response
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                return Ok((response.status().as_u16(), headers));
            }
            self.client.retry.wait(self.client.retry.delay(attempt));
            attempt += 1;
        }
    }

    /// One file into the cache at the commit `revision` resolves to: its blob fetched and
    /// verified unless already there, then linked from the snapshot. Returns the commit and
    /// the snapshot path.
    fn fetch_file(
        &self,
        repo: &RepoId,
        revision: &str,
        file: &str,
        on: &mut dyn FnMut(DownloadEvent<'_>),
    ) -> Result<(String, PathBuf)> {
        if is_commit(revision) {
            let pointer = self.cache.snapshot_dir(repo, revision).join(file);
            if pointer.is_file() {
                return Ok((revision.to_owned(), pointer));
            }
        }
        let meta = self.head(repo, revision, file)?;
        self.cache.write_ref(repo, revision, &meta.commit)?;
        let pointer = self.cache.snapshot_dir(repo, &meta.commit).join(file);
        if pointer.is_file() {
            return Ok((meta.commit, pointer));
        }
        let blob = self.cache.repo_dir(repo).join("blobs").join(&meta.etag);
        if !blob.is_file() {
            let _lock = self.cache.lock_blob(repo, &meta.etag, file, on)?;
            // Another process may have finished this blob while we waited for its lock.
            if !blob.is_file() {
                self.download(&meta, &blob, file, on)?;
            }
        }
        link(&blob, &pointer, file)?;
        Ok((meta.commit, pointer))
    }

    /// Fetches a blob into `<etag>.incomplete` (resuming what an earlier attempt or run left
    /// there), verifies it against the etag, and only then renames it to `blob`.
    fn download(
        &self,
        meta: &FileMeta,
        blob: &Path,
        name: &str,
        on: &mut dyn FnMut(DownloadEvent<'_>),
    ) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HubError::Io { path, source }
        };
        let dir = blob.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io(dir))?;
        let part = dir.join(format!("{}.incomplete", meta.etag));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&part)
            .map_err(io(&part))?;
        let mut done = file.metadata().map_err(io(&part))?.len();
        if meta.size.is_some_and(|s| done > s) {
            file.set_len(0).map_err(io(&part))?;
            done = 0;
        }
        on(DownloadEvent::Start {
            file: name,
            size: meta.size,
            from: done,
        });
        let mut url = meta.location.clone();
        let mut failures = 0;
        let mut redirects = 0;
        while meta.size != Some(done) {
            let failure = match self.get_range(&url, done) {
                Err(e) => e,
                Ok(response) => {
                    let status = response.status().as_u16();
                    let header = |n: &str| {
                        response
                            .headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    match status {
                        206 => {
                            let start = header("content-range").and_then(|r| range_start(&r));
                            if start != Some(done) {
                                file.set_len(0).map_err(io(&part))?;
                                done = 0;
                                continue;
                            }
                        }
                        200 => {
                            file.set_len(0).map_err(io(&part))?;
                            done = 0;
                        }
                        416 => {
                            file.set_len(0).map_err(io(&part))?;
                            done = 0;
                            continue;
                        }
                        300..=399 => {
                            redirects += 1;
                            let Some(target) =
                                header("location").filter(|_| redirects <= MAX_REDIRECTS)
                            else {
                                return Err(HubError::Protocol {
                                    url: shown(&url),
                                    what: format!(
                                        "{status}: a redirect without a Location, or too many"
                                    ),
                                });
                            };
                            url = join_url(&url, &target);
                            continue;
                        }
                        429 | 500.. => {
                            failures += 1;
                            if failures >= self.client.retry.attempts {
                                return Err(HubError::Status {
                                    method: "GET",
                                    url: shown(&url),
                                    status,
                                    body: String::new(),
                                });
                            }
                            self.client.retry.wait(self.client.retry.delay(failures));
                            continue;
                        }
                        _ => {
                            return Err(HubError::Status {
                                method: "GET",
                                url: shown(&url),
                                status,
                                body: header("x-error-message").unwrap_or_default(),
                            })
                        }
                    }
                    file.seek(SeekFrom::Start(done)).map_err(io(&part))?;
                    let before = done;
                    let result = copy_body(response, &mut file, &mut done, &mut |d| {
                        on(DownloadEvent::Progress {
                            file: name,
                            done: d,
                            size: meta.size,
                        })
                    });
                    if done > before {
                        failures = 0;
                    }
                    match result {
                        Ok(()) if meta.size.is_none_or(|s| done >= s) => break,
                        Ok(()) => ureq::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the connection closed before the end of the file",
                        )),
                        Err(CopyError::Write(source)) => {
                            return Err(HubError::Io { path: part, source })
                        }
                        Err(CopyError::Read(e)) => e,
                    }
                }
            };
            if !retryable(&failure) {
                return Err(HubError::Transport {
                    method: "GET",
                    url: shown(&url),
                    attempts: failures + 1,
                    source: Box::new(failure),
                });
            }
            failures += 1;
            if failures >= self.client.retry.attempts {
                return Err(HubError::Transport {
                    method: "GET",
                    url: shown(&url),
                    attempts: failures,
                    source: Box::new(failure),
                });
            }
            on(DownloadEvent::Retry {
                file: name,
                at: done,
                why: failure.to_string(),
            });
            self.client.retry.wait(self.client.retry.delay(failures));
        }
        file.sync_all().map_err(io(&part))?;
        drop(file);
        let got = hash_file(&part, meta.etag.len()).map_err(io(&part))?;
        if got != meta.etag {
            let _ = fs::remove_file(&part);
            return Err(HubError::Corrupt {
                file: name.to_owned(),
                expected: meta.etag.clone(),
                got,
            });
        }
        fs::rename(&part, blob).map_err(io(blob))?;
        on(DownloadEvent::Done { file: name });
        Ok(())
    }

    /// `GET url` from byte `from`; the token goes only to the Hub itself, never to storage.
    fn get_range(
        &self,
        url: &str,
        from: u64,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut builder = Request::builder()
            .method("GET")
            .uri(url)
            .header("accept-encoding", "identity");
        if same_origin(url, &self.client.endpoint) {
            if let Some(bearer) = self.client.bearer() {
                builder = builder.header("authorization", bearer);
            }
        }
        if from > 0 {
            builder = builder.header("range", format!("bytes={from}-"));
        }
        let request = builder.body(()).map_err(ureq::Error::from)?;
        self.client.download_agent.run(request)
    }
}

enum CopyError {
    Read(ureq::Error),
    Write(std::io::Error),
}

/// Streams a body into `file`, counting bytes into `done`.
fn copy_body(
    response: ureq::http::Response<ureq::Body>,
    file: &mut File,
    done: &mut u64,
    progress: &mut dyn FnMut(u64),
) -> std::result::Result<(), CopyError> {
    let mut reader = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(ureq::Error::Io(e))),
        };
        file.write_all(&buf[..n]).map_err(CopyError::Write)?;
        *done += n as u64;
        progress(*done);
    }
}

/// The hash the Hub's etag is for a file of this etag length: sha256 (LFS files, 64 hex
/// digits) or the git blob id (other files, 40).
fn hash_file(path: &Path, etag_len: usize) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut feed = |update: &mut dyn FnMut(&[u8])| -> std::io::Result<()> {
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            update(&buf[..n]);
        }
    };
    let digest: Vec<u8> = if etag_len == 64 {
        let mut h = sha2::Sha256::new();
        feed(&mut |b| h.update(b))?;
        h.finalize().to_vec()
    } else {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {len}\0").as_bytes());
        feed(&mut |b| h.update(b))?;
        h.finalize().to_vec()
    };
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// Links `pointer` to `blob` with a relative path (`../../blobs/<etag>`, deeper for files in
/// folders), as `huggingface_hub` does, so a moved cache stays whole.
fn link(blob: &Path, pointer: &Path, file: &str) -> Result<()> {
    let dir = pointer.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| HubError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let depth = file.matches('/').count() + 2;
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    let _ = fs::remove_file(pointer);
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(&target, pointer);
    #[cfg(not(unix))]
    let made = fs::copy(blob, pointer).map(|_| ());
    made.map_err(|source| HubError::Io {
        path: pointer.to_path_buf(),
        source,
    })
}

/// `scheme://host:port` of a URL, with the scheme's default port made explicit.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    let authority = authority.rsplit('@').next()?.to_owned();
    let port = match scheme {
        "https" => "443",
        _ => "80",
    };
    let with_port = if authority.contains(':') {
        authority
    } else {
        format!("{authority}:{port}")
    };
    Some(format!("{}://{with_port}", scheme.to_ascii_lowercase()))
}

fn same_origin(a: &str, b: &str) -> bool {
    origin(a).is_some() && origin(a) == origin(b)
}

/// A `Location` made absolute against the URL it answered.
fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let origin_end = base
        .split_once("://")
        .map(|(s, rest)| s.len() + 3 + rest.find('/').unwrap_or(rest.len()))
        .unwrap_or(0);
    if location.starts_with('/') {
        return format!("{}{location}", &base[..origin_end]);
    }
    let path = base.split('?').next().unwrap_or(base);
    match path.rfind('/') {
        Some(i) if i >= origin_end => format!("{}/{location}", &path[..i]),
        _ => format!("{}/{location}", &base[..origin_end]),
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL`.
fn range_start(value: &str) -> Option<u64> {
    value
        .trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Percent-encodes a revision (every `/` too, as `quote(revision, safe="")`) or a file path
/// (keeping `/`).
fn quote(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a `--model` argument points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file or directory to load.
    pub path: PathBuf,
    /// The Hub model and commit, when the argument was a Hub id.
    pub hub: Option<LocalModel>,
}

/// Resolves a `--tokenizer` argument as [`locate_model`] resolves `--model`, fetching only
/// the tokenizer files of a Hub model ([`Downloader::tokenizer`]).
pub fn locate_tokenizer(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
    on: &mut dyn FnMut(DownloadEvent<'_>),
) -> Result<PathBuf> {
    let path = Path::new(text);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let model = parse_missing_path(text)?;
    Downloader::from_env(env)?.tokenizer(&model, on)
}

/// A `--model`/`--tokenizer` argument that is not an existing path, read as a Hub id; the
/// error says both what was tried as a path and why it is not an id.
fn parse_missing_path(text: &str) -> Result<ModelRef> {
    ModelRef::parse(text).map_err(|e| match e {
        HubError::BadModelRef { text, why } => HubError::BadModelRef {
            text,
            why: format!("no such file or directory, and {why}"),
        },
        e => e,
    })
}

/// Resolves a `--model` argument: a local path that exists always wins; otherwise it is a
/// Hub id, `ORG/NAME[@REVISION][:FILE.gguf]`, found in the cache or fetched into it.
/// `revision` (a run's pinned commit) replaces the one in the text.
pub fn locate_model(
    text: &str,
    revision: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    on: &mut dyn FnMut(DownloadEvent<'_>),
) -> Result<Located> {
    locate_with(text, revision, env, |d, model| d.model(model, on))
}

/// [`locate_model`] for a run whose weights are loaded elsewhere: of a Hub model, only the
/// config and tokenizer are fetched ([`Downloader::config_and_tokenizer`]).
pub fn locate_model_config(
    text: &str,
    revision: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    on: &mut dyn FnMut(DownloadEvent<'_>),
) -> Result<Located> {
    locate_with(text, revision, env, |d, model| {
        d.config_and_tokenizer(model, on)
    })
}

fn locate_with(
    text: &str,
    revision: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    fetch: impl FnOnce(&Downloader, &ModelRef) -> Result<LocalModel>,
) -> Result<Located> {
    let path = Path::new(text);
    if path.exists() {
        return Ok(Located {
            path: path.to_path_buf(),
            hub: None,
        });
    }
    let model = parse_missing_path(text)?;
    let model = match revision {
        Some(rev) => model.at(rev),
        None => model,
    };
    let found = fetch(&Downloader::from_env(env)?, &model)?;
    Ok(Located {
        path: found.path.clone(),
        hub: Some(found),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_refs() {
        let r = ModelRef::parse("mistralai/Mistral-7B-Instruct-v0.3").unwrap();
        assert_eq!(r.revision(), "main");
        assert_eq!(r.file, None);
        let r = ModelRef::parse("bartowski/Ministral-8B-GGUF@v1.0:Q4_K_M/x.gguf").unwrap();
        assert_eq!(r.revision.as_deref(), Some("v1.0"));
        assert_eq!(r.file.as_deref(), Some("Q4_K_M/x.gguf"));
        assert_eq!(
            r.to_string(),
            "bartowski/Ministral-8B-GGUF@v1.0:Q4_K_M/x.gguf"
        );
        assert_eq!(r.name(), "bartowski/Ministral-8B-GGUF:Q4_K_M/x.gguf");
        let r = ModelRef::parse("org/name@refs/pr/1").unwrap();
        assert_eq!(r.revision(), "refs/pr/1");
        for bad in [
            "noslash",
            "org/name@",
            "org/name@../x",
            "org/name:x.bin",
            "org/name:../a.gguf",
            "org/name:/a.gguf",
            "a/b/c",
        ] {
            let e = ModelRef::parse(bad).unwrap_err();
            assert!(matches!(e, HubError::BadModelRef { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn cache_location_follows_huggingface_hub() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_owned())
        };
        let root = |pairs| HubCache::from_env(env(pairs)).root().to_path_buf();
        assert_eq!(
            root(&[("HOME", "/h")]),
            Path::new("/h/.cache/huggingface/hub")
        );
        assert_eq!(
            root(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]),
            Path::new("/x/huggingface/hub")
        );
        assert_eq!(
            root(&[
                ("HOME", "/h"),
                ("XDG_CACHE_HOME", "/x"),
                ("HF_HOME", "~/hf")
            ]),
            Path::new("/h/hf/hub")
        );
        assert_eq!(
            root(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/old")]),
            Path::new("/old")
        );
        assert_eq!(
            root(&[
                ("HF_HOME", "/hf"),
                ("HUGGINGFACE_HUB_CACHE", "/old"),
                ("HF_HUB_CACHE", "/c")
            ]),
            Path::new("/c")
        );
        let repo = RepoId::parse("mistralai/Mistral-7B-v0.3").unwrap();
        assert_eq!(
            HubCache::new("/c").repo_dir(&repo),
            Path::new("/c/models--mistralai--Mistral-7B-v0.3")
        );
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_weight_format_is_selected() {
        let repo = RepoId::parse("mistralai/M").unwrap();
        let all = names(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "consolidated.safetensors",
            "params.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer.model.v3",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ]);
        let s = select(&repo, "main", &all, None).unwrap();
        assert_eq!(s.index.as_deref(), Some("model.safetensors.index.json"));
        assert_eq!(
            s.files,
            names(&[
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer.model",
                "tokenizer.model.v3",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "model.safetensors.index.json",
            ])
        );
        let consolidated = names(&[
            "params.json",
            "consolidated.safetensors",
            "tekken.json",
            "README.md",
        ]);
        let s = select(&repo, "main", &consolidated, None).unwrap();
        assert_eq!(
            s.files,
            names(&["params.json", "tekken.json", "consolidated.safetensors"])
        );
        let ggufs = names(&["a-Q4_0.gguf", "a-Q8_0.gguf", "README.md"]);
        let e = select(&repo, "main", &ggufs, None).unwrap_err();
        assert!(e.to_string().contains("mistralai/M:a-Q4_0.gguf"), "{e}");
        let s = select(&repo, "main", &ggufs, Some("a-Q8_0.gguf")).unwrap();
        assert_eq!(s.files, names(&["a-Q8_0.gguf"]));
        let e = select(&repo, "main", &ggufs, Some("b.gguf")).unwrap_err();
        assert!(matches!(e, HubError::FileNotFound { .. }), "{e}");
        let e = select(
            &repo,
            "main",
            &names(&["pytorch_model.bin", "config.json"]),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no weights"), "{e}");
    }

    #[test]
    fn urls() {
        assert_eq!(quote("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(quote("a b/c.gguf", true), "a%20b/c.gguf");
        assert!(same_origin("http://h:80/a", "http://H/b"));
        assert!(!same_origin("http://h:81/a", "http://h"));
        assert!(!same_origin("https://cdn.x/a", "https://huggingface.co"));
        assert_eq!(join_url("http://h:1/a/b?x", "/c"), "http://h:1/c");
        assert_eq!(join_url("http://h:1/a/b", "c"), "http://h:1/a/c");
        assert_eq!(join_url("http://h:1/a", "https://s/x"), "https://s/x");
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
    }
}
