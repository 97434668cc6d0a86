//! A stand-in for W&B's GraphQL API and the Weave trace server on loopback, answering as
//! the recording server of `scripts/make_weave_fixtures.py` answered the `weave` library:
//! the viewer's default entity, a project created when missing, digests computed as weave
//! computes them. It keeps what it was sent (objects by name and digest, tables, op files,
//! calls merged from their start, end and complete requests, feedback) so tests can rebuild
//! an evaluation from it, and can be told to fail: an HTTP status, or a hang.
//! Shared with bora's CLI tests.

#![allow(dead_code)]

#[path = "../http_wire/mod.rs"]
mod http_wire;

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_hub::weave::digest::{bytes_digest, table_digest, value_digest};
use http_wire::read_request;
pub use http_wire::Request;
use serde_json::{json, Map, Value};

pub const ENTITY: &str = "bora-team";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    /// Answer this HTTP status.
    Status(u16),
    /// Read the request and never answer (until the client gives up).
    Hang,
}

#[derive(Default)]
pub struct State {
    pub requests: Vec<Request>,
    /// Objects by `name:digest`.
    pub objects: HashMap<String, Value>,
    /// Tables by digest: each row with its digest.
    pub tables: HashMap<String, Vec<(String, Value)>>,
    pub files: HashMap<String, Vec<u8>>,
    /// Calls by id, their start, end and complete fields merged.
    pub calls: HashMap<String, Map<String, Value>>,
    pub feedback: Vec<Value>,
    pub projects: Vec<String>,
    /// Requests to the trace server fail from the n-th (0-based, counted over all paths
    /// under `/traces`) on.
    fail_from: Option<(usize, Failure)>,
    trace_requests: usize,
}

pub struct FakeWeave {
    /// W&B's API (`WANDB_BASE_URL`); the trace server is at `/traces` under it.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeWeave {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Self { url, state }
    }

    pub fn trace_url(&self) -> String {
        format!("{}/traces", self.url)
    }

    /// Trace server requests numbered `n` (0-based) and later fail.
    pub fn fail_from(&self, n: usize, how: Failure) {
        self.state.lock().unwrap().fail_from = Some((n, how));
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    /// The value a `weave:///E/P/object/NAME:DIGEST` ref (or `op/`) names, and the path
    /// after it (`/attr/rows/id/...`).
    pub fn resolve(&self, reference: &str) -> Option<(Value, String)> {
        let rest = reference.strip_prefix(&format!("weave:///{ENTITY}/"))?;
        let rest = rest.split_once('/')?.1;
        let rest = rest
            .strip_prefix("object/")
            .or_else(|| rest.strip_prefix("op/"))?;
        let (name_digest, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let value = self.state().objects.get(name_digest)?.clone();
        Some((value, path.to_owned()))
    }

    /// The row a dataset row ref (`...object/NAME:DIGEST/attr/rows/id/ROW`) names.
    pub fn row(&self, reference: &str) -> Option<Value> {
        let (dataset, path) = self.resolve(reference)?;
        let row = path.strip_prefix("/attr/rows/id/")?;
        let table = dataset["rows"].as_str()?.rsplit('/').next()?.to_owned();
        let state = self.state();
        let rows = state.tables.get(&table)?;
        rows.iter().find(|(d, _)| d == row).map(|(_, v)| v.clone())
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    let failure = {
        let mut state = state.lock().unwrap();
        state.requests.push(request.clone());
        if request.path().starts_with("/traces/") {
            let index = state.trace_requests;
            state.trace_requests += 1;
            state
                .fail_from
                .filter(|(n, _)| index >= *n)
                .map(|(_, how)| how)
        } else {
            None
        }
    };
    let (status, body) = match failure {
        Some(Failure::Hang) => {
            std::thread::sleep(Duration::from_secs(120));
            return;
        }
        Some(Failure::Status(status)) => (status, json!({"error": "injected"}).to_string()),
        None => {
            let mut state = state.lock().unwrap();
            answer(&request, &mut state)
        }
    };
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

fn answer(request: &Request, state: &mut State) -> (u16, String) {
    let path = request.path();
    if path == "/graphql" {
        let body = request.json();
        let query = body["query"].as_str().unwrap_or_default();
        let vars = &body["variables"];
        let data = if query.contains("viewer") {
            json!({"viewer": {"username": "bora-user", "defaultEntity": {"name": ENTITY}}})
        } else if query.contains("upsertModel") {
            state.projects.push(format!(
                "{}/{}",
                vars["entity"].as_str().unwrap(),
                vars["name"].as_str().unwrap()
            ));
            json!({"upsertModel": {"model": {"name": vars["name"], "description": null}}})
        } else if query.contains("project(") {
            let id = format!(
                "{}/{}",
                vars["entityName"].as_str().unwrap(),
                vars["name"].as_str().unwrap()
            );
            if state.projects.contains(&id) {
                json!({"project": {"name": vars["name"]}})
            } else {
                json!({"project": null})
            }
        } else {
            return (
                200,
                json!({"errors": [{"message": "unknown query"}]}).to_string(),
            );
        };
        return (200, json!({"data": data}).to_string());
    }
    let Some(path) = path.strip_prefix("/traces") else {
        return (404, "{}".into());
    };
    if request.method == "GET" && path == "/server_info" {
        return (
            200,
            json!({"min_required_weave_python_version": "0.0.0", "trace_server_version": "0.0.0"})
                .to_string(),
        );
    }
    if path == "/file/create" {
        let (fields, file) = multipart(request);
        let digest = bytes_digest(&file);
        if fields.get("expected_digest") != Some(&digest) {
            return (409, json!({"reason": "digest mismatch"}).to_string());
        }
        state.files.insert(digest.clone(), file);
        return (200, json!({"digest": digest}).to_string());
    }
    let body = request.json();
    let answer = if path == "/obj/create" {
        let obj = &body["obj"];
        let digest = value_digest(&obj["val"]);
        let name = obj["object_id"].as_str().unwrap();
        state
            .objects
            .insert(format!("{name}:{digest}"), obj["val"].clone());
        json!({"digest": digest})
    } else if path == "/table/create" {
        let rows: Vec<(String, Value)> = body["table"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (value_digest(r), r.clone()))
            .collect();
        let digests: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        let table = table_digest(digests.iter().map(String::as_str));
        state.tables.insert(table.clone(), rows);
        json!({"digest": table, "row_digests": digests})
    } else if path.ends_with("/calls/complete") {
        for call in body["batch"].as_array().unwrap() {
            merge_call(state, call);
        }
        json!({})
    } else if path.ends_with("/call/start") {
        merge_call(state, &body["start"]);
        json!({"id": body["start"]["id"], "trace_id": body["start"]["trace_id"]})
    } else if path.ends_with("/call/end") {
        merge_call(state, &body["end"]);
        json!({})
    } else if path == "/feedback/batch/create" {
        state
            .feedback
            .extend(body["batch"].as_array().unwrap().iter().cloned());
        json!({"res": []})
    } else {
        return (404, "{}".into());
    };
    (200, answer.to_string())
}

fn merge_call(state: &mut State, call: &Value) {
    let id = call["id"].as_str().unwrap().to_owned();
    let entry = state.calls.entry(id).or_default();
    for (k, v) in call.as_object().unwrap() {
        entry.insert(k.clone(), v.clone());
    }
}

/// The text fields and the file of a multipart form body.
pub fn multipart(request: &Request) -> (HashMap<String, String>, Vec<u8>) {
    let content_type = request.header("content-type").unwrap();
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a multipart boundary");
    let delimiter = format!("--{boundary}");
    let body = &request.body;
    let mut fields = HashMap::new();
    let mut file = Vec::new();
    let positions: Vec<usize> = body
        .windows(delimiter.len())
        .enumerate()
        .filter(|(_, w)| *w == delimiter.as_bytes())
        .map(|(i, _)| i)
        .collect();
    for pair in positions.windows(2) {
        let part = &body[pair[0] + delimiter.len() + 2..pair[1] - 2];
        let split = part
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part headers");
        let head = String::from_utf8_lossy(&part[..split]).to_string();
        let content = &part[split + 4..];
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        if head.contains("filename=") {
            file = content.to_vec();
            fields.insert(name, "<file>".into());
        } else {
            fields.insert(name, String::from_utf8_lossy(content).to_string());
        }
    }
    (fields, file)
}
