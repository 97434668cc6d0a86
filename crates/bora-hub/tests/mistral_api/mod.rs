//! Mistral's chat completions API on loopback for tests. Answers have the shape the official
//! `mistralai` client accepts (the recorded answer of `tests/fixtures/mistral_chat.json`,
//! with the content and usage replaced), every request is kept as sent, and faults (a status
//! with an optional `Retry-After`, a dropped connection, a silent stall, a body that is not
//! JSON) are served to the next requests in arrival order, one each.

#![allow(dead_code)]

#[path = "../http_wire/mod.rs"]
mod http_wire;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub use http_wire::Request;
use http_wire::{read_request, respond_json as respond};
use serde_json::{json, Value};

pub const API_KEY: &str = "test-mistral-key-0123456789";

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this status with Mistral's error body, and `Retry-After: secs` when given.
    Status(u16, Option<&'static str>),
    /// Read the request, then close the connection without an answer.
    Drop,
    /// Read the request, then stay silent this many milliseconds before answering normally.
    Stall(u64),
    /// Answer 200 with a body cut in the middle of the JSON.
    Malformed,
    /// Answer 200 with the whole answer's `content-length`, send half of it, then close the
    /// connection (an answer truncated in transit).
    Truncated,
}

/// How the server writes an answer's content from the request body. Usage is counted as
/// characters / 4 of the messages (prompt) and of the content (+ 1, completion).
pub type Answerer = Box<dyn Fn(&Value) -> String + Send + Sync>;

pub struct State {
    pub requests: Vec<Request>,
    pub faults: Vec<Fault>,
    /// Requests that needed the key: answered 401 when it is missing or wrong.
    pub key: Option<String>,
}

pub struct FakeMistral {
    /// The base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

/// The recording of what the official client sent and was answered.
pub fn recording() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bora-hub/tests/fixtures/mistral_chat.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// An answer in the recorded shape with `content` and a usage.
pub fn answer(model: &str, content: &str, prompt_tokens: u64, completion_tokens: u64) -> Value {
    let mut a = recording()["cases"]["plain"]["answer"].clone();
    a["model"] = json!(model);
    a["choices"][0]["message"]["content"] = json!(content);
    a["usage"] = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens});
    a
}

impl FakeMistral {
    /// A server that requires `API_KEY` and answers with `answerer`.
    pub fn start(answerer: Answerer) -> FakeMistral {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            faults: Vec::new(),
            key: Some(API_KEY.to_owned()),
        }));
        let answerer = Arc::new(answerer);
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                let answerer = answerer.clone();
                std::thread::spawn(move || serve(stream, &state, &answerer));
            }
        });
        FakeMistral { url, state }
    }

    pub fn fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, answerer: &Answerer) {
    while let Some(req) = read_request(&stream) {
        let (fault, key) = {
            let mut s = state.lock().unwrap();
            s.requests.push(req.clone());
            let fault = (!s.faults.is_empty()).then(|| s.faults.remove(0));
            (fault, s.key.clone())
        };
        if let Some(key) = key {
            if req.header("authorization") != Some(&format!("Bearer {key}")) {
                let body = br#"{"message":"Unauthorized","request_id":"5c1f0e7c0b8a4d7e9f0a1b2c3d4e5f60"}"#;
                respond(&mut stream, 401, &[], body);
                continue;
            }
        }
        match fault {
            Some(Fault::Drop) => return,
            Some(Fault::Status(code, retry_after)) => {
                let body = json!({"object": "error", "message": format!("status {code}"),
                                  "type": "service_tier_capacity_exceeded", "param": null,
                                  "code": code.to_string()});
                let extra: Vec<(&str, &str)> = retry_after
                    .map(|r| ("retry-after", r))
                    .into_iter()
                    .collect();
                respond(&mut stream, code, &extra, body.to_string().as_bytes());
                continue;
            }
            Some(Fault::Malformed) => {
                respond(
                    &mut stream,
                    200,
                    &[],
                    br#"{"id": "cmpl-1", "choices": [{"mess"#,
                );
                continue;
            }
            Some(Fault::Stall(ms)) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            Some(Fault::Truncated) | None => {}
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let content = answerer(&body);
        let prompt_chars: usize = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or("").len())
            .sum();
        let a = answer(
            body["model"].as_str().unwrap_or(""),
            &content,
            (prompt_chars / 4) as u64,
            (content.len() / 4) as u64 + 1,
        );
        let bytes = a.to_string().into_bytes();
        if fault == Some(Fault::Truncated) {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                bytes.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&bytes[..bytes.len() / 2]);
            return;
        }
        respond(&mut stream, 200, &[], &bytes);
    }
}
