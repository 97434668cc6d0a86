//! A Hub on loopback for tests: whoami-v2, repos/create, preupload, the LFS batch API
//! (basic and multipart, with verify), the storage PUT targets and the ndjson commit; and for
//! downloads, model repos (`models.rs`) with their revision listing, `resolve` URLs and LFS
//! storage on a second port (another origin, as a CDN is). It
//! keeps real state (committed files and their oids, stored LFS objects), so a second push
//! sees what the first one stored, and it records every request byte for byte so tests can
//! assert exactly what a client sent. Faults (a 500, a dropped connection) are injected per
//! request path prefix, once each. The Jobs API (`jobs.rs`) runs on the same port.

#![allow(dead_code)]

#[path = "../http_wire/mod.rs"]
mod http_wire;
pub mod jobs;
mod models;

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine;
use http_wire::read_request;
pub use http_wire::Request;
use serde_json::{json, Value};
use sha2::Digest;

pub const TOKEN: &str = "hf_testtoken_0123456789";

/// A request as the server received it.
pub type Recorded = Request;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Answer 500 once.
    Status500,
    /// Read the request, then close the connection without an answer.
    Drop,
    /// Read the request, then hold the connection silent for this many milliseconds.
    Stall(u64),
    /// Answer as usual but close the connection after this many body bytes.
    Truncate(usize),
    /// Answer as usual with one body byte changed.
    Corrupt,
}

#[derive(Default)]
pub struct State {
    pub requests: Vec<Recorded>,
    pub whoami: Value,
    /// Multipart uploads with this part size; basic uploads when `None`.
    pub chunk_size: Option<u64>,
    pub verify: bool,
    /// (path prefix, fault), each used once.
    pub faults: Vec<(String, Fault)>,
    /// Committed files: path → (oid the preupload answers, is LFS).
    pub files: HashMap<String, (String, bool)>,
    /// The content of committed regular files, and LFS objects by sha256.
    pub regular: HashMap<String, Vec<u8>>,
    pub objects: HashMap<String, Vec<u8>>,
    parts: HashMap<(String, u64), Vec<u8>>,
    pub repos: Vec<String>,
    pub commits: Vec<Vec<Value>>,
    /// Model repos to download from, by id.
    pub models: HashMap<String, models::ModelRepo>,
    /// The origin of LFS storage (another port).
    pub storage: String,
    /// Jobs posted to the Jobs API, in order.
    pub jobs: Vec<jobs::FakeJob>,
    /// Runs each posted job (its container); none leaves jobs RUNNING.
    pub job_runner: Option<jobs::Runner>,
    /// The Jobs API's answer to every `run_job` instead of a job (status, body): a
    /// namespace without credits.
    pub jobs_refusal: Option<(u16, Value)>,
}

pub use models::ModelRepo;

pub struct FakeHub {
    pub url: String,
    pub storage: String,
    pub state: Arc<Mutex<State>>,
}

/// An answer before it is written: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Files the fake stores in LFS: what the Hub's default `.gitattributes` routes there.
fn is_lfs(path: &str, size: u64) -> bool {
    size > 10 * 1024 * 1024
        || [".safetensors", ".gguf", ".bin"]
            .iter()
            .any(|e| path.ends_with(e))
}

pub fn write_token_whoami() -> Value {
    json!({
        "type": "user", "name": "ada",
        "orgs": [{"name": "bora-ml", "roleInOrg": "write"}],
        "auth": {"type": "access_token", "accessToken": {"displayName": "push", "role": "write"}}
    })
}

pub fn read_token_whoami() -> Value {
    json!({
        "type": "user", "name": "ada",
        "orgs": [{"name": "bora-ml", "roleInOrg": "write"}],
        "auth": {"type": "access_token", "accessToken": {"displayName": "ro", "role": "read"}}
    })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

pub fn git_sha1(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let storage_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let storage = format!("http://{}", storage_listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            whoami: write_token_whoami(),
            storage: storage.clone(),
            ..State::default()
        }));
        for listener in [listener, storage_listener] {
            let shared = Arc::clone(&state);
            let base = url.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    // One thread per connection: a job's log stream stays open while the
                    // client makes other requests.
                    let (shared, base) = (Arc::clone(&shared), base.clone());
                    std::thread::spawn(move || handle(stream, &shared, &base));
                }
            });
        }
        FakeHub {
            url,
            storage,
            state,
        }
    }

    /// Serves `repo` for downloads.
    pub fn add_model(&self, repo: ModelRepo) {
        let mut s = self.state.lock().unwrap();
        s.models.insert(repo.id.clone(), repo);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    /// (method, path) of every request, in order.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.requests()
            .into_iter()
            .map(|r| (r.method.clone(), r.path().to_owned()))
            .collect()
    }

    /// Runs every job posted from now on with `runner`.
    pub fn run_jobs_with(&self, runner: impl Fn(jobs::JobControl) + Send + Sync + 'static) {
        self.state.lock().unwrap().job_runner = Some(std::sync::Arc::new(runner));
    }

    pub fn jobs(&self) -> Vec<jobs::FakeJob> {
        self.state.lock().unwrap().jobs.clone()
    }

    pub fn fail_once(&self, prefix: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((prefix.to_owned(), fault));
    }
}

fn respond(stream: &mut TcpStream, status: u16, body: &str, etag: Option<&str>) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(e) = etag {
        head.push_str(&format!("etag: {e}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

fn handle(mut stream: TcpStream, state: &Arc<Mutex<State>>, base: &str) {
    let Some(req) = read_request(&stream) else {
        return;
    };
    let mut s = state.lock().unwrap();
    s.requests.push(req.clone());
    let path = req.path().to_owned();
    let mut fault = None;
    if let Some(i) = s.faults.iter().position(|f| path.starts_with(&f.0)) {
        fault = Some(s.faults.remove(i).1);
    }
    match fault {
        Some(Fault::Status500) => {
            drop(s);
            return respond(&mut stream, 500, "{\"error\":\"injected\"}", None);
        }
        Some(Fault::Drop) => return,
        Some(Fault::Stall(ms)) => {
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                drop(stream);
            });
            return;
        }
        _ => {}
    }
    if path.starts_with("/api/jobs/") {
        drop(s);
        if !authed(&req) {
            return respond(
                &mut stream,
                401,
                &json!({"error": "Invalid credentials in Authorization header"}).to_string(),
                None,
            );
        }
        match jobs::route(state, &mut stream, &req, &path) {
            Some(Some((status, body))) => respond(&mut stream, status, &body, None),
            Some(None) => {}
            None => respond(&mut stream, 404, "{\"error\":\"no such route\"}", None),
        }
        return;
    }
    if let Some(mut answer) = models::route(&s, &req, &path, base) {
        drop(s);
        let mut body_len = answer.body.len();
        match fault {
            Some(Fault::Truncate(n)) => body_len = n.min(body_len),
            Some(Fault::Corrupt) if !answer.body.is_empty() => {
                let mid = answer.body.len() / 2;
                answer.body[mid] ^= 0x55;
            }
            _ => {}
        }
        let mut head = format!("HTTP/1.1 {} X\r\nconnection: close\r\n", answer.status);
        for (k, v) in &answer.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", answer.body.len()));
        let _ = stream.write_all(head.as_bytes());
        if req.method != "HEAD" {
            let _ = stream.write_all(&answer.body[..body_len]);
        }
        let _ = stream.flush();
        return;
    }
    let (status, body, etag) = route(&mut s, &req, &path, base);
    drop(s);
    respond(&mut stream, status, &body, etag.as_deref());
}

/// Makes a commit's files downloadable: the repo's model entry (its `resolve` URLs and
/// listing) gets them as a new `main` commit, as on the Hub, where what one client uploads
/// another downloads.
fn publish_commit(s: &mut State, path: &str, lines: &[Value]) {
    let Some(id) = path
        .strip_prefix("/api/models/")
        .and_then(|rest| rest.split("/commit/").next())
    else {
        return;
    };
    let mut files = Vec::new();
    for l in &lines[1..] {
        let path = l["value"]["path"].as_str().unwrap_or_default().to_owned();
        let bytes = match l["key"].as_str() {
            Some("file") => s.regular[&path].clone(),
            Some("lfsFile") => s.objects[l["value"]["oid"].as_str().unwrap_or_default()].clone(),
            _ => continue,
        };
        files.push((path, bytes));
    }
    s.commit_to_main(id, files);
}

impl State {
    /// Adds a `main` commit to model repo `id` (created if new) holding its files before,
    /// with `files` added or replaced.
    pub fn commit_to_main(&mut self, id: &str, files: Vec<(String, Vec<u8>)>) {
        let mut repo = self.models.remove(id).unwrap_or_else(|| ModelRepo::new(id));
        let mut all: Vec<(String, Vec<u8>)> = repo
            .refs
            .get("main")
            .map(|c| repo.commits[c].clone())
            .unwrap_or_default();
        for (path, bytes) in files {
            all.retain(|(p, _)| *p != path);
            all.push((path, bytes));
        }
        let borrowed: Vec<(&str, Vec<u8>)> =
            all.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
        repo.commit(&["main"], &borrowed);
        self.models.insert(id.to_owned(), repo);
    }
}

fn authed(req: &Recorded) -> bool {
    req.header("authorization") == Some(&format!("Bearer {TOKEN}"))
}

fn route(s: &mut State, req: &Recorded, path: &str, base: &str) -> (u16, String, Option<String>) {
    let ok = |v: Value| (200, v.to_string(), None);
    let storage = path.starts_with("/storage/");
    if !storage && !authed(req) {
        return (
            401,
            json!({"error": "Invalid credentials"}).to_string(),
            None,
        );
    }
    if storage {
        assert!(
            req.header("authorization").is_none(),
            "the token must not go to storage URLs: {path}"
        );
    }
    match (req.method.as_str(), path) {
        ("GET", "/api/whoami-v2") => ok(s.whoami.clone()),
        // `create_commit` checks a committed README.md's metadata here first.
        ("POST", "/api/validate-yaml") => ok(json!({})),
        ("POST", "/api/repos/create") => {
            let v = req.json();
            let id = format!(
                "{}/{}",
                v["organization"].as_str().unwrap(),
                v["name"].as_str().unwrap()
            );
            if s.repos.contains(&id) {
                return (
                    409,
                    json!({"error": "You already created this model repo"}).to_string(),
                    None,
                );
            }
            s.repos.push(id.clone());
            ok(json!({"url": format!("{base}/{id}")}))
        }
        ("POST", p) if p.starts_with("/api/models/") && p.contains("/preupload/") => {
            let files: Vec<Value> = req.json()["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let path = f["path"].as_str().unwrap();
                    let size = f["size"].as_u64().unwrap();
                    let mut a = json!({
                        "path": path,
                        "uploadMode": if is_lfs(path, size) { "lfs" } else { "regular" },
                        "shouldIgnore": false,
                    });
                    if let Some((oid, _)) = s.files.get(path) {
                        a["oid"] = json!(oid);
                    }
                    a
                })
                .collect();
            ok(json!({ "files": files }))
        }
        ("POST", p) if p.ends_with(".git/info/lfs/objects/batch") => {
            let v = req.json();
            let objects: Vec<Value> = v["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    let oid = o["oid"].as_str().unwrap();
                    let size = o["size"].as_u64().unwrap();
                    if s.objects.contains_key(oid) {
                        return json!({"oid": oid, "size": size});
                    }
                    let mut actions = match s.chunk_size {
                        None => json!({"upload": {"href": format!("{base}/storage/basic/{oid}")}}),
                        Some(chunk) => {
                            let mut header = json!({"chunk_size": chunk.to_string()});
                            for n in 1..=size.div_ceil(chunk) {
                                header[n.to_string()] =
                                    json!(format!("{base}/storage/part/{oid}/{n}?X-Amz-Signature=s{n}"));
                            }
                            json!({"upload": {"href": format!("{base}/storage/complete/{oid}"), "header": header}})
                        }
                    };
                    if s.verify {
                        actions["verify"] = json!({"href": format!("{base}/api/lfs-verify/{oid}")});
                    }
                    json!({"oid": oid, "size": size, "authenticated": true, "actions": actions})
                })
                .collect();
            ok(json!({"transfer": "basic", "objects": objects}))
        }
        ("PUT", p) if p.starts_with("/storage/basic/") => {
            let oid = &p["/storage/basic/".len()..];
            assert_eq!(sha256(&req.body), oid, "basic PUT body matches its oid");
            s.objects.insert(oid.to_owned(), req.body.clone());
            (200, String::new(), None)
        }
        ("PUT", p) if p.starts_with("/storage/part/") => {
            let rest = &p["/storage/part/".len()..];
            let (oid, n) = rest.split_once('/').unwrap();
            let n: u64 = n.parse().unwrap();
            s.parts.insert((oid.to_owned(), n), req.body.clone());
            (
                200,
                String::new(),
                Some(format!("\"etag-{}-{n}\"", &oid[..8])),
            )
        }
        ("POST", p) if p.starts_with("/storage/complete/") => {
            let oid = &p["/storage/complete/".len()..];
            let v = req.json();
            let mut bytes = Vec::new();
            for part in v["parts"].as_array().unwrap() {
                let n = part["partNumber"].as_u64().unwrap();
                assert_eq!(part["etag"], json!(format!("\"etag-{}-{n}\"", &oid[..8])));
                bytes.extend_from_slice(&s.parts[&(oid.to_owned(), n)]);
            }
            assert_eq!(sha256(&bytes), oid, "parts assemble to the object");
            s.objects.insert(oid.to_owned(), bytes);
            ok(json!({}))
        }
        ("POST", p) if p.starts_with("/api/lfs-verify/") => {
            let v = req.json();
            let oid = v["oid"].as_str().unwrap();
            match s.objects.get(oid) {
                Some(b) if b.len() as u64 == v["size"].as_u64().unwrap() => ok(json!({})),
                _ => (404, json!({"error": "object not stored"}).to_string(), None),
            }
        }
        ("POST", p) if p.starts_with("/api/models/") && p.contains("/commit/") => {
            assert_eq!(req.header("content-type"), Some("application/x-ndjson"));
            let text = String::from_utf8(req.body.clone()).unwrap();
            assert!(text.ends_with('\n'));
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            for l in &lines[1..] {
                let v = &l["value"];
                let path = v["path"].as_str().unwrap().to_owned();
                match l["key"].as_str().unwrap() {
                    "file" => {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(v["content"].as_str().unwrap())
                            .unwrap();
                        s.files.insert(path.clone(), (git_sha1(&bytes), false));
                        s.regular.insert(path, bytes);
                    }
                    "lfsFile" => {
                        let oid = v["oid"].as_str().unwrap();
                        if !s.objects.contains_key(oid) {
                            return (
                                422,
                                json!({"error": format!("LFS object {oid} missing")}).to_string(),
                                None,
                            );
                        }
                        s.files.insert(path, (oid.to_owned(), true));
                    }
                    k => panic!("unexpected commit line key {k}"),
                }
            }
            publish_commit(s, p, &lines);
            let n = s.commits.len();
            s.commits.push(lines);
            let oid = format!("{:040x}", n + 1);
            // As the Hub names it: the repo's page, `/ORG/NAME/commit/OID`.
            let repo = p
                .strip_prefix("/api/models/")
                .and_then(|rest| rest.split("/commit/").next())
                .unwrap_or_default();
            ok(json!({"commitUrl": format!("{base}/{repo}/commit/{oid}"), "commitOid": oid}))
        }
        _ => (
            404,
            json!({"error": format!("no route {} {path}", req.method)}).to_string(),
            None,
        ),
    }
}
