//! A stand-in for W&B's API on loopback: records every request as it arrived and answers the
//! calls bora makes (GraphQL `UpsertBucket` and `CreateRunFiles`, the upload `PUT`,
//! `file_stream`) the way W&B does, keeping each run's history by the offsets it is sent.
//! Artifacts are kept as W&B keeps them (`CreateArtifact` with digest deduplication,
//! manifests, files by MD5, multipart uploads, `CommitArtifact`, use and registry links),
//! and a commit is refused unless every file the uploaded manifest lists is stored with its
//! MD5, so a test can rebuild any committed version from what was sent.
//! It can be told to fail from the n-th request on, or to fail chosen requests a number of
//! times. Shared with bora's CLI tests.

#![allow(dead_code)]

#[path = "../http_wire/mod.rs"]
mod http_wire;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine;
use http_wire::read_request_cut;
pub use http_wire::Request;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    /// Answer HTTP 500.
    Status500,
    /// Close the connection without answering.
    Close,
    /// Answer HTTP 401, as W&B does for a key it does not know.
    Unauthorized,
    /// Read half the request body, then close the connection.
    CloseMidBody,
}

/// Fails the next `times` requests whose method and path start as given (`"PUT /storage/"`,
/// or `"POST /graphql CommitArtifact"` for one GraphQL operation).
#[derive(Debug, Clone)]
struct FaultRule {
    prefix: String,
    how: Failure,
    times: usize,
}

/// One artifact version as the server holds it.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    pub id: String,
    pub entity: String,
    pub project: String,
    pub collection: String,
    pub kind: String,
    pub description: Value,
    pub digest: String,
    pub metadata: Value,
    pub history_step: Value,
    pub run: String,
    /// The index among the collection's committed versions (`vN`), given at the commit.
    pub version: Option<usize>,
    pub committed: bool,
    /// The uploaded `wandb_manifest.json`, once sent.
    pub manifest: Option<Value>,
}

/// A committed version rebuilt from what was uploaded: files by name, and the digests the
/// manifest claims.
#[derive(Debug, Clone)]
pub struct RebuiltArtifact {
    pub stored: StoredArtifact,
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Default)]
struct Artifacts {
    versions: Vec<StoredArtifact>,
    /// File contents by base64 MD5 (W&B's storage deduplicates by MD5).
    storage: HashMap<String, Vec<u8>>,
    /// Multipart uploads in progress: upload id -> (part number -> bytes).
    parts: HashMap<String, BTreeMap<u64, Vec<u8>>>,
    /// Registry links: `entity/project/collection` -> artifact ids in version order.
    links: BTreeMap<String, Vec<String>>,
    /// `(run, artifact id)` for each `UseArtifact`.
    uses: Vec<(String, String)>,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    /// History lines per `entity/project/run`, placed at the offsets they were sent with.
    history: HashMap<String, Vec<String>>,
    /// Offsets that did not continue the history; W&B would leave holes or overwrite.
    offset_errors: Vec<String>,
    /// The last summary sent per run.
    summaries: HashMap<String, String>,
    /// Runs made by `UpsertBucket`.
    runs: Vec<String>,
    uploads: HashMap<String, Vec<u8>>,
    fail_from: Option<(usize, Failure)>,
    faults: Vec<FaultRule>,
    artifacts: Artifacts,
    url: String,
}

pub struct FakeWandb {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeWandb {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            url: url.clone(),
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, &shared);
            }
        });
        Self { url, state }
    }

    /// Requests numbered `n` (0-based) and later fail.
    pub fn fail_from(&self, n: usize, how: Failure) {
        self.state.lock().unwrap().fail_from = Some((n, how));
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The run's history as the server holds it, one JSON object per line.
    pub fn history(&self, entity: &str, project: &str, run: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .history
            .get(&format!("{entity}/{project}/{run}"))
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn offset_errors(&self) -> Vec<String> {
        self.state.lock().unwrap().offset_errors.clone()
    }

    /// The run's summary as last sent.
    pub fn summary(&self, entity: &str, project: &str, run: &str) -> Value {
        let state = self.state.lock().unwrap();
        let text = &state.summaries[&format!("{entity}/{project}/{run}")];
        serde_json::from_str(text).unwrap()
    }

    pub fn upload(&self, path: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().uploads.get(path).cloned()
    }

    /// The next `times` requests starting with `prefix` (`"PUT /storage/"`, `"POST /graphql
    /// CommitArtifact"`) fail as `how`.
    pub fn fail_next(&self, prefix: &str, how: Failure, times: usize) {
        self.state.lock().unwrap().faults.push(FaultRule {
            prefix: prefix.to_owned(),
            how,
            times,
        });
    }

    /// Drops every fault rule not used up yet.
    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Every artifact version created, committed or not.
    pub fn artifacts(&self) -> Vec<StoredArtifact> {
        self.state.lock().unwrap().artifacts.versions.clone()
    }

    /// The committed versions, each rebuilt from its uploaded manifest and stored files.
    pub fn committed(&self) -> Vec<RebuiltArtifact> {
        let state = self.state.lock().unwrap();
        state
            .artifacts
            .versions
            .iter()
            .filter(|a| a.committed)
            .map(|a| {
                let manifest = a
                    .manifest
                    .as_ref()
                    .expect("a committed version has a manifest");
                let files = manifest["contents"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(name, entry)| {
                        let md5 = entry["digest"].as_str().unwrap();
                        (name.clone(), state.artifacts.storage[md5].clone())
                    })
                    .collect();
                RebuiltArtifact {
                    stored: a.clone(),
                    files,
                }
            })
            .collect()
    }

    /// Registry links: `entity/project/collection` -> linked artifact ids.
    pub fn links(&self) -> BTreeMap<String, Vec<String>> {
        self.state.lock().unwrap().artifacts.links.clone()
    }

    /// `(run, artifact id)` of each `UseArtifact`.
    pub fn uses(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().artifacts.uses.clone()
    }
}

/// The first words of a request that fault rules match: method, path, and for GraphQL the
/// operation name.
fn request_key(request: &Request) -> String {
    let mut key = format!("{} {}", request.method, request.path());
    if request.path() == "/graphql" {
        if let Ok(body) = serde_json::from_slice::<Value>(&request.body) {
            if let Some(op) = body["operationName"].as_str() {
                key = format!("{key} {op}");
            }
        }
    }
    key
}

fn md5_base64(bytes: &[u8]) -> String {
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    // A rule that cuts the body is matched on method and path before the body is read.
    let cut_rule = |method: &str, target: &str| {
        let key = format!("{method} {}", target.split('?').next().unwrap_or_default());
        let mut state = state.lock().unwrap();
        let rule = state.faults.iter_mut().find(|r| {
            r.how == Failure::CloseMidBody && r.times > 0 && key.starts_with(&r.prefix)
        })?;
        rule.times -= 1;
        Some(())
    };
    let mut cut = false;
    let Some(request) = read_request_cut(&stream, |method, target| {
        cut = cut_rule(method, target).is_some();
        cut.then_some(0)
    }) else {
        return;
    };
    let mut state = state.lock().unwrap();
    let index = state.requests.len();
    state.requests.push(request.clone());
    if cut {
        return;
    }
    let key = request_key(&request);
    let rule_failure = state
        .faults
        .iter_mut()
        .find(|r| r.how != Failure::CloseMidBody && r.times > 0 && key.starts_with(&r.prefix))
        .map(|r| {
            r.times -= 1;
            r.how
        });
    let failure = rule_failure.or(state
        .fail_from
        .filter(|(n, _)| index >= *n)
        .map(|(_, how)| how));
    let (status, body) = match failure {
        Some(Failure::Close | Failure::CloseMidBody) => return,
        Some(Failure::Status500) => (500, "{\"error\":\"internal\"}".to_owned()),
        Some(Failure::Unauthorized) => (
            401,
            "{\"errors\":[{\"message\":\"user is not logged in\"}]}".to_owned(),
        ),
        None => answer(&request, &mut state),
    };
    let mut stream = stream;
    let reason = if status == 200 { "OK" } else { "Error" };
    // Storage answers an upload with the MD5 of what it stored, as S3 and GCS do.
    let etag = if request.method == "PUT" {
        format!("ETag: \"{}\"\r\n", md5_hex(&request.body))
    } else {
        String::new()
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{etag}\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

fn answer(request: &Request, state: &mut State) -> (u16, String) {
    if request.method == "PUT" {
        if let Some(rest) = request.path().strip_prefix("/storage/") {
            return store_upload(rest, request, state);
        }
        if let Some(path) = request.path().strip_prefix("/upload/") {
            state.uploads.insert(path.to_owned(), request.body.clone());
            return (200, String::new());
        }
    }
    if request.method == "POST" && request.path() == "/graphql" {
        let body = request.json();
        let vars = &body["variables"];
        return match body["operationName"].as_str() {
            Some("UpsertBucket") => {
                let entity = vars["entity"].as_str().unwrap_or("default-team");
                let project = vars["project"].as_str().unwrap();
                let name = vars["name"].as_str().unwrap();
                let key = format!("{entity}/{project}/{name}");
                let lines = state.history.get(&key).map_or(0, Vec::len);
                if !state.runs.contains(&key) {
                    state.runs.push(key);
                }
                let data = json!({"data": {"upsertBucket": {"bucket": {
                    "id": "QnVja2V0OjE=", "name": name, "displayName": vars["displayName"],
                    "project": {"id": "p1", "name": project,
                                "entity": {"id": "e1", "name": entity}},
                    "historyLineCount": lines,
                }, "inserted": lines == 0}}});
                (200, data.to_string())
            }
            Some("RunResumeStatus") => {
                let project = vars["project"].as_str().unwrap();
                let entity = vars["entity"].as_str().unwrap();
                let key = format!("{entity}/{project}/{}", vars["name"].as_str().unwrap());
                let bucket = if state.runs.contains(&key) {
                    let lines = state.history.get(&key).cloned().unwrap_or_default();
                    let tail = &lines[lines.len().saturating_sub(10)..];
                    json!({
                        "id": "QnVja2V0OjE=", "name": vars["name"], "displayName": "x",
                        "summaryMetrics": state.summaries.get(&key).cloned()
                            .unwrap_or_else(|| "{}".to_owned()),
                        "historyLineCount": lines.len(),
                        "historyTail": serde_json::to_string(tail).unwrap(),
                    })
                } else {
                    Value::Null
                };
                let data = json!({"data": {"model": {
                    "id": "p1", "name": project, "entity": {"id": "e1", "name": entity},
                    "bucket": bucket,
                }}});
                (200, data.to_string())
            }
            Some("CreateRunFiles") => {
                let files: Vec<Value> = vars["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| json!({"name": f, "uploadUrl": format!("/upload/{}", f.as_str().unwrap())}))
                    .collect();
                let data = json!({"data": {"createRunFiles": {
                    "runID": "r1", "uploadHeaders": ["Content-Type:application/json"],
                    "files": files,
                }}});
                (200, data.to_string())
            }
            Some(op) => match artifact_operation(op, vars, state) {
                Some(Ok(data)) => (200, json!({ "data": data }).to_string()),
                Some(Err(message)) => (200, json!({"errors": [{"message": message}]}).to_string()),
                None => (
                    200,
                    json!({"errors": [{"message": "unknown operation"}]}).to_string(),
                ),
            },
            None => (400, "{}".to_owned()),
        };
    }
    if request.method == "POST" && request.path().ends_with("/file_stream") {
        let run = request
            .path()
            .trim_start_matches("/files/")
            .trim_end_matches("/file_stream")
            .to_owned();
        let body = request.json();
        if let Some(history) = body.pointer("/files/wandb-history.jsonl") {
            let offset = history["offset"].as_u64().unwrap() as usize;
            let lines = state.history.entry(run.clone()).or_default();
            if offset != lines.len() {
                state
                    .offset_errors
                    .push(format!("{run}: offset {offset}, have {}", lines.len()));
            }
            let lines = state.history.get_mut(&run).unwrap();
            lines.truncate(offset.min(lines.len()));
            for line in history["content"].as_array().unwrap() {
                lines.push(line.as_str().unwrap().to_owned());
            }
        }
        if let Some(summary) = body.pointer("/files/wandb-summary.json/content/0") {
            state
                .summaries
                .insert(run.clone(), summary.as_str().unwrap().to_owned());
        }
        return (200, json!({"exitcode": null, "limits": {}}).to_string());
    }
    (404, "{}".to_owned())
}

/// A file (`/storage/MD5`), a part of one (`?partNumber=N&uploadId=ID`) or a manifest
/// (`/storage/manifest/ARTIFACT`). Whole files are checked against the MD5 they are stored
/// under, as storage checks `Content-MD5`.
fn store_upload(rest: &str, request: &Request, state: &mut State) -> (u16, String) {
    let query = request.target.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    if let Some(artifact) = rest.strip_prefix("manifest/") {
        let manifest: Value = serde_json::from_slice(&request.body).unwrap();
        let a = state
            .artifacts
            .versions
            .iter_mut()
            .find(|a| a.id == artifact)
            .unwrap();
        a.manifest = Some(manifest);
        return (200, String::new());
    }
    if let (Some(part), Some(upload)) = (param("partNumber"), param("uploadId")) {
        state
            .artifacts
            .parts
            .entry(upload)
            .or_default()
            .insert(part.parse().unwrap(), request.body.clone());
        return (200, String::new());
    }
    let md5 = decode_path(rest);
    if md5_base64(&request.body) != md5 {
        return (
            400,
            "{\"error\":\"content does not match its MD5\"}".to_owned(),
        );
    }
    state.artifacts.storage.insert(md5, request.body.clone());
    (200, String::new())
}

/// Storage paths carry base64 MD5s, whose `/` and `+` the server sends percent-encoded.
fn encode_path(md5: &str) -> String {
    md5.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn decode_path(path: &str) -> String {
    path.replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=")
}

/// The artifact operations, as W&B answers them; `None` for an operation it does not know.
fn artifact_operation(op: &str, vars: &Value, state: &mut State) -> Option<Result<Value, String>> {
    let url = state.url.clone();
    let artifacts = &mut state.artifacts;
    let result = match op {
        "CreateArtifact" => {
            let input = &vars["input"];
            let collection = input["artifactCollectionName"].as_str().unwrap().to_owned();
            let digest = input["digest"].as_str().unwrap().to_owned();
            let latest = artifacts
                .versions
                .iter()
                .rev()
                .find(|a| a.collection == collection && a.committed)
                .cloned();
            let artifact = match &latest {
                Some(l) if l.digest == digest && input["enableDigestDeduplication"] == true => {
                    l.clone()
                }
                _ => {
                    let id = base64::engine::general_purpose::STANDARD
                        .encode(format!("Artifact:{}", artifacts.versions.len() + 1));
                    let a = StoredArtifact {
                        id,
                        entity: input["entityName"].as_str().unwrap().to_owned(),
                        project: input["projectName"].as_str().unwrap().to_owned(),
                        collection,
                        kind: input["artifactTypeName"].as_str().unwrap().to_owned(),
                        description: input["description"].clone(),
                        digest,
                        metadata: serde_json::from_str(input["metadata"].as_str().unwrap())
                            .unwrap(),
                        history_step: input["historyStep"].clone(),
                        run: input["runName"].as_str().unwrap().to_owned(),
                        version: None,
                        committed: false,
                        manifest: None,
                    };
                    artifacts.versions.push(a.clone());
                    a
                }
            };
            Ok(json!({"createArtifact": {"artifact": {
                "id": artifact.id,
                "state": if artifact.committed { "COMMITTED" } else { "PENDING" },
                "artifactSequence": {"latestArtifact": latest.map(|l| json!({"id": l.id}))},
            }}}))
        }
        "CreateArtifactManifest" => {
            let id = vars["artifactID"].as_str().unwrap();
            let file = if vars["includeUpload"] == true {
                json!({"id": "RmlsZTox", "uploadUrl": format!("{url}/storage/manifest/{id}"),
                       "uploadHeaders": []})
            } else {
                json!({"id": "RmlsZTox"})
            };
            Ok(json!({"createArtifactManifest": {"artifactManifest": {
                "id": "QXJ0aWZhY3RNYW5pZmVzdDox", "file": file,
            }}}))
        }
        "CreateArtifactFiles" => {
            let edges: Vec<Value> = vars["input"]["artifactFiles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let md5 = f["md5"].as_str().unwrap();
                    let path = format!("wandb_artifacts/{}", encode_path(md5));
                    let stored = artifacts.storage.contains_key(md5);
                    let upload_url = format!("{url}/storage/{}", encode_path(md5));
                    let multipart = f["uploadPartsInput"].as_array().map(|parts| {
                        let upload_id = format!("upload-{}", encode_path(md5));
                        json!({"uploadID": upload_id, "uploadUrlParts": parts.iter().map(|p| {
                            let n = p["partNumber"].as_u64().unwrap();
                            json!({"partNumber": n, "uploadUrl":
                                format!("{upload_url}?partNumber={n}&uploadId={upload_id}")})
                        }).collect::<Vec<_>>()})
                    });
                    json!({"node": {
                        "storagePath": path,
                        "uploadUrl": (!stored).then_some(upload_url),
                        "uploadHeaders": [],
                        "uploadMultipartUrls": if stored { None } else { multipart },
                        "artifact": {"id": f["artifactID"]},
                    }})
                })
                .collect();
            Ok(json!({"createArtifactFiles": {"files": {"edges": edges}}}))
        }
        "CompleteMultipartUploadArtifact" => {
            let upload = vars["uploadID"].as_str().unwrap();
            let md5 = decode_path(
                vars["storagePath"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("wandb_artifacts/"),
            );
            let parts = artifacts.parts.remove(upload).unwrap_or_default();
            let completed = vars["completedParts"].as_array().unwrap();
            let etags_match = completed.len() == parts.len()
                && completed.iter().all(|c| {
                    let n = c["partNumber"].as_u64().unwrap();
                    parts.get(&n).map(|b| format!("\"{}\"", md5_hex(b)))
                        == c["hexMD5"].as_str().map(str::to_owned)
                });
            let whole: Vec<u8> = parts.into_values().flatten().collect();
            if !etags_match || md5_base64(&whole) != md5 {
                Err("the parts do not make up the file".to_owned())
            } else {
                artifacts.storage.insert(md5, whole);
                Ok(json!({"completeMultipartUploadArtifact": {"digest": "etag"}}))
            }
        }
        "CommitArtifact" => {
            let id = vars["artifactID"].as_str().unwrap();
            let storage = &artifacts.storage;
            let collection = artifacts
                .versions
                .iter()
                .find(|a| a.id == id)
                .unwrap()
                .collection
                .clone();
            let next_version = artifacts
                .versions
                .iter()
                .filter(|a| a.collection == collection && a.committed)
                .count();
            let a = artifacts.versions.iter_mut().find(|a| a.id == id).unwrap();
            let complete = a.manifest.as_ref().is_some_and(|m| {
                m["contents"]
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|e| storage.contains_key(e["digest"].as_str().unwrap()))
            });
            if complete {
                a.committed = true;
                a.version = Some(next_version);
                Ok(json!({"commitArtifact": {"artifact": {"id": a.id, "digest": a.digest}}}))
            } else {
                Err("the manifest or a file it lists was not uploaded".to_owned())
            }
        }
        // The fields of wandb's `ArtifactFragment`, the ones its `ArtifactByID` asks for.
        "ArtifactByID" => {
            let id = vars["id"].as_str().unwrap();
            let artifact = artifacts.versions.iter().find(|a| a.id == id).map(|a| {
                let project = json!({"id": "UHJvamVjdDox", "internalId": "1",
                                     "name": a.project, "entity": {"name": a.entity}});
                let collection = json!({"__typename": "ArtifactSequence", "name": a.collection,
                                        "project": project});
                let aliases = if a.committed {
                    json!([{"__typename": "ArtifactAlias", "id": "QWxpYXM6MQ==",
                            "alias": "latest", "artifactCollection": collection}])
                } else {
                    json!([])
                };
                let manifest = a.manifest.as_ref();
                let files = manifest.map_or(0, |m| m["contents"].as_object().unwrap().len());
                let size: u64 = manifest.map_or(0, |m| {
                    m["contents"]
                        .as_object()
                        .unwrap()
                        .values()
                        .map(|e| e["size"].as_u64().unwrap())
                        .sum()
                });
                json!({
                    "__typename": "Artifact", "id": a.id, "artifactSequence": collection,
                    "versionIndex": a.version, "artifactType": {"name": a.kind},
                    "description": a.description, "metadata": a.metadata.to_string(),
                    "ttlDurationSeconds": -1, "ttlIsInherited": true, "tags": [],
                    "historyStep": a.history_step,
                    "state": if a.committed { "COMMITTED" } else { "PENDING" },
                    "size": size, "digest": a.digest, "commitHash": "abcdef012345",
                    "fileCount": files, "createdAt": "2026-01-01T00:00:00", "updatedAt": null,
                    "aliases": aliases,
                })
            });
            Ok(json!({ "artifact": artifact }))
        }
        "UseArtifact" => {
            let id = vars["artifactID"].as_str().unwrap().to_owned();
            artifacts
                .uses
                .push((vars["runName"].as_str().unwrap().to_owned(), id.clone()));
            Ok(json!({"useArtifact": {"artifact": {"id": id}}}))
        }
        "FetchOrgInfoFromEntity" => Ok(json!({"entity": {
            "organization": {"name": "team-org", "orgEntity": {"name": "team-org"}},
            "user": null,
        }})),
        "LinkArtifact" => {
            let input = &vars["input"];
            let key = format!(
                "{}/{}/{}",
                input["entityName"].as_str().unwrap(),
                input["projectName"].as_str().unwrap(),
                input["artifactPortfolioName"].as_str().unwrap()
            );
            let id = input["artifactID"].as_str().unwrap().to_owned();
            let linked = artifacts.links.entry(key).or_default();
            if !linked.contains(&id) {
                linked.push(id.clone());
            }
            let index = linked.iter().position(|l| *l == id).unwrap();
            Ok(json!({"result": {"versionIndex": index}}))
        }
        _ => return None,
    };
    Some(result)
}
