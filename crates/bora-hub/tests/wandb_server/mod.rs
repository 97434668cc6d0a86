//! A stand-in for W&B's API on loopback: records every request as it arrived and answers the
//! four calls bora makes (GraphQL `UpsertBucket` and `CreateRunFiles`, the upload `PUT`,
//! `file_stream`) the way W&B does, keeping each run's history by the offsets it is sent.
//! It can be told to fail from the n-th request on. Shared with bora's CLI tests.

#![allow(dead_code)]

#[path = "../http_wire/mod.rs"]
mod http_wire;

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use http_wire::read_request;
pub use http_wire::Request;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    /// Answer HTTP 500.
    Status500,
    /// Close the connection without answering.
    Close,
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
}

pub struct FakeWandb {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeWandb {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
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
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    let mut state = state.lock().unwrap();
    let index = state.requests.len();
    state.requests.push(request.clone());
    let failure = state
        .fail_from
        .filter(|(n, _)| index >= *n)
        .map(|(_, how)| how);
    let (status, body) = match failure {
        Some(Failure::Close) => return,
        Some(Failure::Status500) => (500, "{\"error\":\"internal\"}".to_owned()),
        None => answer(&request, &mut state),
    };
    let mut stream = stream;
    let reason = if status == 200 { "OK" } else { "Error" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

fn answer(request: &Request, state: &mut State) -> (u16, String) {
    if request.method == "PUT" {
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
            _ => (
                200,
                json!({"errors": [{"message": "unknown operation"}]}).to_string(),
            ),
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
