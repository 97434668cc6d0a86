//! Model repos on the fake Hub, answered as the Hub answers downloads: the revision listing
//! (`/api/models/ORG/NAME/revision/REV?blobs=true`), `HEAD`/`GET` of
//! `/ORG/NAME/resolve/REV/PATH` (regular files served with their git blob id as ETag, LFS
//! files redirected to storage on the other port with `X-Linked-Etag` and `X-Linked-Size`,
//! every answer with `X-Repo-Commit`), storage `GET`s with `Range`, and the Hub's error codes
//! (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`).

use std::collections::HashMap;

use serde_json::json;

use super::{git_sha1, is_lfs, sha256, Answer, Recorded, State, TOKEN};

#[derive(Debug, Clone, Default)]
pub struct ModelRepo {
    pub id: String,
    /// Branch or tag → commit.
    pub refs: HashMap<String, String>,
    /// Commit → files.
    pub commits: HashMap<String, Vec<(String, Vec<u8>)>>,
    /// Gated: files need the token, and `access` says whether it has been granted.
    pub gated: bool,
    pub access: bool,
}

impl ModelRepo {
    pub fn new(id: &str) -> ModelRepo {
        ModelRepo {
            id: id.to_owned(),
            ..ModelRepo::default()
        }
    }

    /// Adds a commit holding `files`, named by `refs` (branches or tags); returns its id.
    pub fn commit(&mut self, refs: &[&str], files: &[(&str, Vec<u8>)]) -> String {
        let id = git_sha1(format!("{} {}", self.id, self.commits.len()).as_bytes());
        self.commits.insert(
            id.clone(),
            files
                .iter()
                .map(|(p, b)| ((*p).to_owned(), b.clone()))
                .collect(),
        );
        for r in refs {
            self.refs.insert((*r).to_owned(), id.clone());
        }
        id
    }

    fn resolve(&self, rev: &str) -> Option<&String> {
        self.refs
            .get(rev)
            .or_else(|| self.commits.get_key_value(rev).map(|(k, _)| k))
    }
}

/// The etag the Hub gives a file: sha256 for LFS, the git blob id otherwise.
pub fn etag_of(path: &str, bytes: &[u8]) -> String {
    if is_lfs(path, bytes.len() as u64) {
        sha256(bytes)
    } else {
        git_sha1(bytes)
    }
}

fn decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn answer(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> Answer {
    Answer {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        body,
    }
}

fn error(status: u16, code: &str, message: &str, extra: &[(&str, String)]) -> Answer {
    let mut headers = vec![
        ("x-error-code", code.to_owned()),
        ("x-error-message", message.to_owned()),
    ];
    headers.extend(extra.iter().cloned());
    answer(
        status,
        &headers,
        json!({ "error": message }).to_string().into_bytes(),
    )
}

/// The answer to a download request, or `None` when it is not one (the upload routes take it).
pub fn route(s: &State, req: &Recorded, path: &str, _base: &str) -> Option<Answer> {
    let auth = req.header("authorization");
    if let Some(sha) = path.strip_prefix("/storage/lfs/") {
        assert!(auth.is_none(), "the token must not go to storage: {path}");
        let bytes = s
            .models
            .values()
            .flat_map(|m| m.commits.values().flatten())
            .find(|(p, b)| is_lfs(p, b.len() as u64) && sha256(b) == sha)
            .map(|(_, b)| b.clone())?;
        return Some(range_answer(req, bytes));
    }
    let (id, rest, listing) = if let Some(rest) = path.strip_prefix("/api/models/") {
        let mut parts = rest.splitn(4, '/');
        let (org, name, kind, rev) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if kind == "tree" {
            return Some(tree(s, &format!("{org}/{name}"), rev));
        }
        if kind != "revision" {
            return None;
        }
        (format!("{org}/{name}"), rev.to_owned(), true)
    } else {
        let mut parts = path.trim_start_matches('/').splitn(4, '/');
        let (org, name, kind, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if kind != "resolve" {
            return None;
        }
        (format!("{org}/{name}"), rest.to_owned(), false)
    };
    if auth.is_some_and(|a| a != format!("Bearer {TOKEN}")) {
        return Some(error(
            401,
            "",
            "Invalid credentials in Authorization header",
            &[],
        ));
    }
    let Some(repo) = s.models.get(&id) else {
        return Some(error(404, "RepoNotFound", "Repository not found", &[]));
    };
    if listing {
        let rev = decode(&rest);
        let Some(commit) = repo.resolve(&rev) else {
            return Some(error(
                404,
                "RevisionNotFound",
                &format!("Invalid rev id: {rev}"),
                &[],
            ));
        };
        let siblings: Vec<_> = repo.commits[commit]
            .iter()
            .map(|(p, b)| {
                let mut v = json!({"rfilename": p, "size": b.len(), "blobId": git_sha1(b)});
                if is_lfs(p, b.len() as u64) {
                    v["lfs"] = json!({"sha256": sha256(b), "size": b.len(), "pointerSize": 134});
                }
                v
            })
            .collect();
        let body = json!({
            "id": id, "sha": commit, "siblings": siblings,
            "gated": if repo.gated { json!("manual") } else { json!(false) },
        });
        return Some(answer(200, &[], body.to_string().into_bytes()));
    }
    let (rev, file) = rest.split_once('/')?;
    let (rev, file) = (decode(rev), decode(file));
    if repo.gated && !repo.access {
        let (status, message) = if auth.is_some() {
            (403, format!("Access to model {id} is restricted and you are not in the authorized list. Visit https://huggingface.co/{id} to ask for access."))
        } else {
            (401, format!("Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in."))
        };
        return Some(error(status, "GatedRepo", &message, &[]));
    }
    let Some(commit) = repo.resolve(&rev) else {
        return Some(error(
            404,
            "RevisionNotFound",
            &format!("Invalid rev id: {rev}"),
            &[],
        ));
    };
    let commit_header = ("x-repo-commit", commit.clone());
    let Some((_, bytes)) = repo.commits[commit].iter().find(|(p, _)| *p == file) else {
        return Some(error(
            404,
            "EntryNotFound",
            &format!("{file} does not exist on \"{rev}\""),
            &[commit_header],
        ));
    };
    let tag = etag_of(&file, bytes);
    if is_lfs(&file, bytes.len() as u64) {
        return Some(answer(
            302,
            &[
                commit_header,
                ("x-linked-etag", format!("\"{tag}\"")),
                ("x-linked-size", bytes.len().to_string()),
                ("etag", format!("\"{}\"", git_sha1(tag.as_bytes()))),
                ("location", format!("{}/storage/lfs/{tag}", s.storage)),
            ],
            Vec::new(),
        ));
    }
    let mut a = range_answer(req, bytes.clone());
    a.headers
        .push((commit_header.0.to_owned(), commit_header.1));
    a.headers.push(("etag".into(), format!("\"{tag}\"")));
    Some(a)
}

/// The bytes, or the part of them a `Range: bytes=N-` asks for.
fn range_answer(req: &Recorded, bytes: Vec<u8>) -> Answer {
    let total = bytes.len();
    let from = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match from {
        None => answer(200, &[], bytes),
        Some(n) if n >= total => answer(
            416,
            &[("content-range", format!("bytes */{total}"))],
            Vec::new(),
        ),
        Some(n) => answer(
            206,
            &[("content-range", format!("bytes {n}-{}/{total}", total - 1))],
            bytes[n..].to_vec(),
        ),
    }
}

/// `GET /api/models/ORG/NAME/tree/REV?recursive=true` (what `snapshot_download` lists): every
/// file of the revision, one page.
fn tree(s: &State, id: &str, rev: &str) -> Answer {
    let Some(repo) = s.models.get(id) else {
        return error(404, "RepoNotFound", "Repository not found", &[]);
    };
    let rev = decode(rev.split('/').next().unwrap_or_default());
    let Some(commit) = repo.resolve(&rev) else {
        return error(
            404,
            "RevisionNotFound",
            &format!("Invalid rev id: {rev}"),
            &[],
        );
    };
    let entries: Vec<_> = repo.commits[commit]
        .iter()
        .map(|(p, b)| {
            let mut v = json!({"type": "file", "oid": git_sha1(b), "size": b.len(), "path": p});
            if is_lfs(p, b.len() as u64) {
                v["lfs"] = json!({"oid": sha256(b), "size": b.len(), "pointerSize": 134});
            }
            v
        })
        .collect();
    answer(200, &[], json!(entries).to_string().into_bytes())
}
