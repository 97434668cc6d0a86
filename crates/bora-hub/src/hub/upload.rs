//! Create, preupload, LFS, commit. Each file is hashed once (sha256 for LFS, the git blob
//! sha1 for regular files) so that nothing the Hub already has is sent again: files whose
//! remote oid matches are left out of the commit, and LFS objects the batch answers without
//! `actions` are already in storage.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};
use sha1::Digest as _;

use super::http::{shown, Body, Req};
use super::{HubClient, HubError, RepoId, Result};

/// Files per preupload and LFS batch request, as `huggingface_hub` sends them.
const BATCH_FILES: usize = 256;
/// Bytes of each file the preupload endpoint sees to decide LFS or regular.
const SAMPLE_BYTES: usize = 512;
/// The Hub stores files over 10 MB through LFS only; a larger "regular" answer would have
/// bora base64 a big file into the commit body, so it is refused.
const REGULAR_MAX: u64 = 10 * 1024 * 1024;
const LFS_JSON: &str = "application/vnd.git-lfs+json";

/// One file to put in the repo.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Path inside the repo, `/`-separated.
    pub path_in_repo: String,
    pub content: Content,
}

/// Where a file's bytes come from: disk (streamed) or memory (a generated model card).
#[derive(Debug, Clone)]
pub enum Content {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

impl LocalFile {
    pub fn from_path(path_in_repo: impl Into<String>, path: impl Into<PathBuf>) -> LocalFile {
        LocalFile {
            path_in_repo: path_in_repo.into(),
            content: Content::Path(path.into()),
        }
    }

    pub fn from_bytes(path_in_repo: impl Into<String>, bytes: Vec<u8>) -> LocalFile {
        LocalFile {
            path_in_repo: path_in_repo.into(),
            content: Content::Bytes(bytes),
        }
    }
}

/// How the Hub stores a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadMode {
    /// In git, sent base64 inside the commit.
    Regular,
    /// In LFS storage, sent before the commit, referenced by sha256.
    Lfs,
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOutcome {
    /// The revision already holds these bytes: not sent, not in the commit.
    Unchanged,
    /// The repo's `.gitignore` excludes it.
    Ignored,
    /// Sent inline in the commit.
    Regular,
    /// Uploaded to LFS storage, in `parts` requests.
    Uploaded { parts: usize },
    /// LFS storage already had the object (another file or an earlier push): only referenced.
    AlreadyStored,
}

/// Progress, one event per step worth a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadEvent<'a> {
    /// A file's fate is decided (before any byte of it is sent).
    File {
        path: &'a str,
        size: u64,
        mode: UploadMode,
        outcome: FileOutcome,
    },
    /// One LFS part was sent (`part` of `parts`).
    Part {
        path: &'a str,
        part: usize,
        parts: usize,
    },
    Committed {
        url: &'a str,
    },
    /// Every file was unchanged; no commit was made.
    NothingToCommit,
}

/// The result of [`HubClient::upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// (path in repo, outcome), in the order given.
    pub files: Vec<(String, FileOutcome)>,
    /// `commitUrl` and `commitOid`, or `None` when nothing changed.
    pub commit: Option<(String, String)>,
    /// Bytes of file content sent (LFS parts and inline commit content).
    pub bytes_sent: u64,
}

struct Hashed<'a> {
    file: &'a LocalFile,
    size: u64,
    sha256: String,
    git_sha1: String,
    sample: Vec<u8>,
}

fn hash(file: &LocalFile) -> Result<Hashed<'_>> {
    let (size, mut reader): (u64, Box<dyn Read + '_>) = match &file.content {
        Content::Bytes(b) => (b.len() as u64, Box::new(b.as_slice())),
        Content::Path(p) => {
            let f = File::open(p).map_err(io_at(p))?;
            let size = f.metadata().map_err(io_at(p))?.len();
            (size, Box::new(f))
        }
    };
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    sha1.update(format!("blob {size}\0").as_bytes());
    let mut sample = Vec::with_capacity(SAMPLE_BYTES);
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| io_err(file, e))?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        sha1.update(&buf[..n]);
        let room = SAMPLE_BYTES - sample.len();
        sample.extend_from_slice(&buf[..n.min(room)]);
        seen += n as u64;
    }
    if seen != size {
        return Err(io_err(
            file,
            std::io::Error::other(format!("file changed while read ({size} → {seen} bytes)")),
        ));
    }
    Ok(Hashed {
        file,
        size,
        sha256: hex(&sha256.finalize()),
        git_sha1: hex(&sha1.finalize()),
        sample,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn io_err(file: &LocalFile, source: std::io::Error) -> HubError {
    let path = match &file.content {
        Content::Path(p) => p.clone(),
        Content::Bytes(_) => PathBuf::from(&file.path_in_repo),
    };
    HubError::Io { path, source }
}

/// Percent-encodes a path segment (`refs/pr/1` → `refs%2Fpr%2F1`), as `quote(rev, safe="")`.
fn quote(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What preupload said about one path.
struct Remote {
    mode: UploadMode,
    ignore: bool,
    oid: Option<String>,
}

impl HubClient {
    /// `POST /api/repos/create` for a model repo (no `type` key: models are the default,
    /// and `huggingface_hub` sends none for them); an existing repo (409) is fine. Returns
    /// whether it was created.
    pub fn create_repo(&self, repo: &RepoId, private: bool) -> Result<bool> {
        let body = json!({
            "name": repo.name(),
            "organization": repo.namespace(),
            "visibility": if private { "private" } else { "public" },
        })
        .to_string();
        let req = Req {
            method: "POST",
            url: format!("{}/api/repos/create", self.endpoint),
            auth: true,
            headers: vec![("content-type", "application/json")],
            body: Body::Bytes(body.as_bytes()),
        };
        let r = self.send(&req)?;
        match r.status {
            200 | 201 => Ok(true),
            409 => Ok(false),
            _ => Err(self.status_error(&req, r)),
        }
    }

    /// Puts `files` into `repo` at `revision` in one commit, sending only what the Hub lacks.
    pub fn upload(
        &self,
        repo: &RepoId,
        revision: &str,
        files: &[LocalFile],
        message: &str,
        on_event: &mut dyn FnMut(UploadEvent),
    ) -> Result<UploadReport> {
        let hashed = files.iter().map(hash).collect::<Result<Vec<_>>>()?;
        let remote = self.preupload(repo, revision, &hashed)?;

        let mut report = UploadReport {
            files: Vec::with_capacity(hashed.len()),
            commit: None,
            bytes_sent: 0,
        };
        let mut lfs_pending: Vec<usize> = Vec::new();
        let mut decided: Vec<Option<(UploadMode, FileOutcome)>> = Vec::with_capacity(hashed.len());
        for (i, h) in hashed.iter().enumerate() {
            let r = &remote[&h.file.path_in_repo];
            // Empty files cannot live in LFS (huggingface_hub sends them as regular files).
            let mode = if h.size == 0 {
                UploadMode::Regular
            } else {
                r.mode
            };
            let local_oid = match mode {
                UploadMode::Lfs => &h.sha256,
                UploadMode::Regular => &h.git_sha1,
            };
            let outcome = if r.ignore {
                Some(FileOutcome::Ignored)
            } else if r.oid.as_deref() == Some(local_oid.as_str()) {
                Some(FileOutcome::Unchanged)
            } else if mode == UploadMode::Regular {
                if h.size > REGULAR_MAX {
                    return Err(HubError::Protocol {
                        url: self.preupload_url(repo, revision),
                        what: format!(
                            "`{}` ({} bytes) was answered `regular`; files over {REGULAR_MAX} bytes go through LFS",
                            h.file.path_in_repo, h.size
                        ),
                    });
                }
                Some(FileOutcome::Regular)
            } else {
                lfs_pending.push(i);
                None
            };
            decided.push(outcome.map(|o| (mode, o)));
        }
        for (i, h) in hashed.iter().enumerate() {
            if let Some((mode, outcome)) = decided[i] {
                on_event(UploadEvent::File {
                    path: &h.file.path_in_repo,
                    size: h.size,
                    mode,
                    outcome,
                });
            }
        }

        let lfs_done = self.upload_lfs(repo, revision, &hashed, &lfs_pending, on_event)?;
        for (i, outcome, sent) in lfs_done {
            decided[i] = Some((UploadMode::Lfs, outcome));
            report.bytes_sent += sent;
        }

        let mut ndjson = String::new();
        ndjson.push_str(
            &json!({"key": "header", "value": {"summary": message, "description": ""}}).to_string(),
        );
        ndjson.push('\n');
        let mut changed = false;
        for (h, d) in hashed.iter().zip(&decided) {
            let (mode, outcome) = d.expect("every file has an outcome after the LFS step");
            report.files.push((h.file.path_in_repo.clone(), outcome));
            let line = match (mode, outcome) {
                (_, FileOutcome::Unchanged | FileOutcome::Ignored) => continue,
                (UploadMode::Regular, _) => {
                    let bytes = match &h.file.content {
                        Content::Bytes(b) => b.clone(),
                        Content::Path(p) => std::fs::read(p).map_err(io_at(p))?,
                    };
                    report.bytes_sent += bytes.len() as u64;
                    json!({"key": "file", "value": {
                        "content": base64::engine::general_purpose::STANDARD.encode(&bytes),
                        "path": h.file.path_in_repo,
                        "encoding": "base64",
                    }})
                }
                (UploadMode::Lfs, _) => json!({"key": "lfsFile", "value": {
                    "path": h.file.path_in_repo,
                    "algo": "sha256",
                    "oid": h.sha256,
                    "size": h.size,
                }}),
            };
            changed = true;
            ndjson.push_str(&line.to_string());
            ndjson.push('\n');
        }
        if !changed {
            on_event(UploadEvent::NothingToCommit);
            return Ok(report);
        }
        let (url, oid) = self.commit(repo, revision, &ndjson)?;
        on_event(UploadEvent::Committed { url: &url });
        report.commit = Some((url, oid));
        Ok(report)
    }

    fn preupload_url(&self, repo: &RepoId, revision: &str) -> String {
        format!(
            "{}/api/models/{repo}/preupload/{}",
            self.endpoint,
            quote(revision)
        )
    }

    fn preupload(
        &self,
        repo: &RepoId,
        revision: &str,
        hashed: &[Hashed],
    ) -> Result<HashMap<String, Remote>> {
        let url = self.preupload_url(repo, revision);
        let mut out = HashMap::new();
        for chunk in hashed.chunks(BATCH_FILES) {
            let files: Vec<Value> = chunk
                .iter()
                .map(|h| {
                    json!({
                        "path": h.file.path_in_repo,
                        "sample": base64::engine::general_purpose::STANDARD.encode(&h.sample),
                        "size": h.size,
                    })
                })
                .collect();
            let body = json!({ "files": files }).to_string();
            let req = Req {
                method: "POST",
                url: url.clone(),
                auth: true,
                headers: vec![("content-type", "application/json")],
                body: Body::Bytes(body.as_bytes()),
            };
            let v = self.send_json(&req)?;
            let bad = |what: String| HubError::Protocol {
                url: shown(&url),
                what,
            };
            for f in v
                .get("files")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no `files` list".into()))?
            {
                let path = f
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("a file without `path`: {f}")))?;
                let mode = match f.get("uploadMode").and_then(Value::as_str) {
                    Some("lfs") => UploadMode::Lfs,
                    Some("regular") => UploadMode::Regular,
                    other => return Err(bad(format!("`{path}`: uploadMode {other:?}"))),
                };
                out.insert(
                    path.to_owned(),
                    Remote {
                        mode,
                        ignore: f.get("shouldIgnore").and_then(Value::as_bool) == Some(true),
                        oid: f.get("oid").and_then(Value::as_str).map(str::to_owned),
                    },
                );
            }
            if let Some(missing) = chunk
                .iter()
                .find(|h| !out.contains_key(&h.file.path_in_repo))
            {
                return Err(bad(format!(
                    "no answer for `{}`",
                    missing.file.path_in_repo
                )));
            }
        }
        Ok(out)
    }

    /// Uploads the LFS objects of `pending` (indices into `hashed`); returns (index, outcome,
    /// bytes sent). Files with the same content share one object and one upload.
    fn upload_lfs(
        &self,
        repo: &RepoId,
        revision: &str,
        hashed: &[Hashed],
        pending: &[usize],
        on_event: &mut dyn FnMut(UploadEvent),
    ) -> Result<Vec<(usize, FileOutcome, u64)>> {
        let mut by_oid: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in pending {
            by_oid.entry(&hashed[i].sha256).or_default().push(i);
        }
        let unique: Vec<&str> = pending
            .iter()
            .map(|&i| hashed[i].sha256.as_str())
            .filter({
                let mut seen = std::collections::HashSet::new();
                move |o| seen.insert(*o)
            })
            .collect();
        let url = format!("{}/{repo}.git/info/lfs/objects/batch", self.endpoint);
        let mut done = Vec::new();
        for chunk in unique.chunks(BATCH_FILES) {
            let objects: Vec<Value> = chunk
                .iter()
                .map(|oid| json!({"oid": oid, "size": hashed[by_oid[oid][0]].size}))
                .collect();
            let body = json!({
                "operation": "upload",
                "transfers": ["basic", "multipart"],
                "objects": objects,
                "hash_algo": "sha256",
                "ref": {"name": revision},
            })
            .to_string();
            let req = Req {
                method: "POST",
                url: url.clone(),
                auth: true,
                headers: vec![("accept", LFS_JSON), ("content-type", LFS_JSON)],
                body: Body::Bytes(body.as_bytes()),
            };
            let v = self.send_json(&req)?;
            let bad = |what: String| HubError::Protocol {
                url: shown(&url),
                what,
            };
            let answers = v
                .get("objects")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no `objects` list".into()))?;
            for oid in chunk {
                let users = &by_oid[oid];
                let first = &hashed[users[0]];
                let answer = answers
                    .iter()
                    .find(|a| a.get("oid").and_then(Value::as_str) == Some(oid))
                    .ok_or_else(|| bad(format!("no answer for object {oid}")))?;
                if let Some(err) = answer.get("error") {
                    return Err(HubError::LfsObject {
                        path: first.file.path_in_repo.clone(),
                        code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                        message: err
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    });
                }
                let (outcome, sent) = match answer.get("actions") {
                    None => (FileOutcome::AlreadyStored, 0),
                    Some(actions) => {
                        let parts = self.send_object(first, actions, &url, on_event)?;
                        (FileOutcome::Uploaded { parts }, first.size)
                    }
                };
                for (k, &i) in users.iter().enumerate() {
                    let (outcome, sent) = if k == 0 {
                        (outcome, sent)
                    } else {
                        (FileOutcome::AlreadyStored, 0)
                    };
                    on_event(UploadEvent::File {
                        path: &hashed[i].file.path_in_repo,
                        size: hashed[i].size,
                        mode: UploadMode::Lfs,
                        outcome,
                    });
                    done.push((i, outcome, sent));
                }
            }
        }
        Ok(done)
    }

    /// Sends one object as the batch's `actions` say: a basic PUT, or multipart parts and a
    /// completion; then `verify` when asked. Returns the number of PUT requests.
    fn send_object(
        &self,
        h: &Hashed,
        actions: &Value,
        batch_url: &str,
        on_event: &mut dyn FnMut(UploadEvent),
    ) -> Result<usize> {
        let bad = |what: String| HubError::Protocol {
            url: shown(batch_url),
            what: format!("object of `{}`: {what}", h.file.path_in_repo),
        };
        let upload = actions
            .get("upload")
            .ok_or_else(|| bad("`actions` without `upload`".into()))?;
        let href = upload
            .get("href")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("`upload` without `href`".into()))?;
        let header = upload.get("header").and_then(Value::as_object);
        let chunk_size = header.and_then(|h| h.get("chunk_size")).map(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("`chunk_size` {c} is not a positive integer")))
        });
        let path = &h.file.path_in_repo;
        let parts = match chunk_size.transpose()? {
            None => {
                self.put(h, href, 0, h.size)?;
                on_event(UploadEvent::Part {
                    path,
                    part: 1,
                    parts: 1,
                });
                1
            }
            Some(chunk) => {
                let header = header.expect("chunk_size came from the header");
                let mut urls: Vec<(u64, &str)> = header
                    .iter()
                    .filter_map(|(k, v)| Some((k.parse::<u64>().ok()?, v.as_str()?)))
                    .collect();
                urls.sort_unstable_by_key(|p| p.0);
                let expected = h.size.div_ceil(chunk);
                let numbered = urls.iter().enumerate().all(|(i, p)| p.0 == i as u64 + 1);
                if urls.len() as u64 != expected || !numbered {
                    return Err(bad(format!(
                        "{} part URLs for {} bytes in chunks of {chunk}; expected parts 1..={expected}",
                        urls.len(),
                        h.size
                    )));
                }
                let mut etags = Vec::with_capacity(urls.len());
                for (i, (number, part_url)) in urls.iter().enumerate() {
                    let offset = i as u64 * chunk;
                    let len = chunk.min(h.size - offset);
                    let etag = self
                        .put(h, part_url, offset, len)?
                        .filter(|e| !e.is_empty());
                    let etag = etag.ok_or_else(|| {
                        bad(format!("part {number} was stored without an `etag` header"))
                    })?;
                    etags.push(json!({"partNumber": number, "etag": etag}));
                    on_event(UploadEvent::Part {
                        path,
                        part: i + 1,
                        parts: urls.len(),
                    });
                }
                let body = json!({"oid": h.sha256, "parts": etags}).to_string();
                let req = Req {
                    method: "POST",
                    url: href.to_owned(),
                    auth: false,
                    headers: vec![("accept", LFS_JSON), ("content-type", LFS_JSON)],
                    body: Body::Bytes(body.as_bytes()),
                };
                let r = self.send(&req)?;
                if !(200..300).contains(&r.status) {
                    return Err(self.status_error(&req, r));
                }
                urls.len()
            }
        };
        if let Some(verify) = actions.get("verify") {
            let href = verify
                .get("href")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("`verify` without `href`".into()))?;
            let body = json!({"oid": h.sha256, "size": h.size}).to_string();
            let req = Req {
                method: "POST",
                url: href.to_owned(),
                auth: true,
                headers: vec![("content-type", "application/json")],
                body: Body::Bytes(body.as_bytes()),
            };
            let r = self.send(&req)?;
            if !(200..300).contains(&r.status) {
                return Err(self.status_error(&req, r));
            }
        }
        Ok(parts)
    }

    /// PUTs `len` bytes of a file from `offset` to a storage URL (no auth: the URL is
    /// presigned); returns the `etag` answer header.
    fn put(&self, h: &Hashed, url: &str, offset: u64, len: u64) -> Result<Option<String>> {
        let body = match &h.file.content {
            Content::Path(path) => Body::File { path, offset, len },
            Content::Bytes(b) => Body::Bytes(&b[offset as usize..(offset + len) as usize]),
        };
        let req = Req {
            method: "PUT",
            url: url.to_owned(),
            auth: false,
            headers: vec![],
            body,
        };
        let r = self.send(&req)?;
        if !(200..300).contains(&r.status) {
            return Err(self.status_error(&req, r));
        }
        Ok(r.etag)
    }

    fn commit(&self, repo: &RepoId, revision: &str, ndjson: &str) -> Result<(String, String)> {
        let url = format!(
            "{}/api/models/{repo}/commit/{}",
            self.endpoint,
            quote(revision)
        );
        let req = Req {
            method: "POST",
            url: url.clone(),
            auth: true,
            headers: vec![("content-type", "application/x-ndjson")],
            body: Body::Bytes(ndjson.as_bytes()),
        };
        let v = self.send_json(&req)?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| HubError::Protocol {
                    url: url.clone(),
                    what: format!("commit answer without `{k}`"),
                })
        };
        Ok((field("commitUrl")?, field("commitOid")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_sha1_and_sha256_match_git() {
        // `printf 'hello\n' | git hash-object --stdin` and `sha256sum`.
        let f = LocalFile::from_bytes("a", b"hello\n".to_vec());
        let h = hash(&f).unwrap();
        assert_eq!(h.git_sha1, "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(
            h.sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(h.sample, b"hello\n");
    }

    #[test]
    fn revisions_are_quoted_as_one_segment() {
        assert_eq!(quote("main"), "main");
        assert_eq!(quote("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(quote("v 1"), "v%201");
    }
}
