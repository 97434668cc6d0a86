//! The server on loopback with the default model (SmolLM2-135M-Instruct, Q4_1 GGUF), spoken
//! to over real HTTP: status codes, OpenAI error bodies, streaming against non-streaming, and
//! the scheduler's queue, timeout and cancellation.
//!
//! Needs the model in the cache (`scripts/fetch-default-model.sh`); without it the tests fail
//! with a message saying so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bora_formats::cache;
use bora_model::{LoadOptions, Lora, Model};
use bora_serve::{ServeOptions, Server};
use bora_tokenizer::Tokenizer;
use serde_json::{json, Value};

const KEY: &str = "test-key";
const MODEL: &str = "smollm2";
const CONTEXT: usize = 512;

/// Starts a server on an ephemeral loopback port in a thread of its own, for the rest of
/// the test process.
fn start(adapters: Vec<(String, Lora)>, options: ServeOptions) -> SocketAddr {
    // As `bora serve` loads it.
    let load = LoadOptions {
        context: Some(CONTEXT),
        decode_layout: true,
        ..LoadOptions::default()
    };
    let model = Model::load(cache::fetched_default_model().unwrap(), &load).unwrap();
    let tokenizer = Tokenizer::from_file(&cache::fetched_default_model().unwrap()).unwrap();
    let server = Server::new(model, tokenizer, adapters, options).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server
                .serve(listener, std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

/// An adapter on every projection: all-zero factors, or uniform noise in ±0.25 from `seed`.
fn adapter(seed: Option<u64>) -> Lora {
    let config = Model::load(
        cache::fetched_default_model().unwrap(),
        &LoadOptions {
            context: Some(CONTEXT),
            ..LoadOptions::default()
        },
    )
    .unwrap()
    .config;
    let mut lora = Lora::random(&config, 8, 0.25, seed.unwrap_or(0));
    if seed.is_none() {
        lora.zero();
    }
    lora
}

/// The shared server: an API key, room for every test's requests at once, and two adapters
/// on the one base model.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let mut o = ServeOptions::new(MODEL);
        o.api_key = Some(KEY.into());
        let adapters = vec![
            ("zero".to_string(), adapter(None)),
            ("noisy".to_string(), adapter(Some(1))),
        ];
        start(adapters, o)
    })
}

/// A response read off a raw HTTP/1.1 connection (the server's one client here, so no
/// HTTP client library is needed): status, headers, and the body as a reader.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Box<dyn BufRead>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(mut self) -> (u16, String) {
        let mut s = String::new();
        self.body.read_to_string(&mut s).unwrap();
        (self.status, s)
    }
}

/// Sends one request on a fresh connection (`Connection: close`).
fn request(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> Reply {
    let mut conn = TcpStream::connect(addr).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked");
    let body: Box<dyn BufRead> = if chunked {
        Box::new(BufReader::new(Chunked {
            inner: reader,
            left: 0,
            done: false,
        }))
    } else {
        Box::new(reader)
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// Decodes `Transfer-Encoding: chunked`, which the server uses for streamed bodies.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            self.inner.read_line(&mut size)?;
            self.left = usize::from_str_radix(size.trim(), 16)
                .map_err(|e| std::io::Error::other(format!("chunk size {size:?}: {e}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

/// A POST with the key; returns the status and the body text, whatever the status.
fn post(path: &str, body: &str) -> (u16, String) {
    send(path, body, Some(KEY))
}

fn send(path: &str, body: &str, key: Option<&str>) -> (u16, String) {
    request(server(), "POST", path, key, body).text()
}

fn get(path: &str) -> (u16, String) {
    request(server(), "GET", path, Some(KEY), "").text()
}

/// Asserts an OpenAI error object with `status` and returns it.
fn error(status: u16, got: (u16, String)) -> Value {
    assert_eq!(got.0, status, "body: {}", got.1);
    let v: Value = serde_json::from_str(&got.1).unwrap();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e.clone()
}

/// Reads a server-sent event stream to `[DONE]`; returns each event's JSON.
fn events(reader: impl BufRead) -> Vec<Value> {
    let mut out = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            assert!(line.is_empty(), "unexpected line {line:?}");
            continue;
        };
        if data == "[DONE]" {
            return out;
        }
        out.push(serde_json::from_str(data).unwrap());
    }
    panic!("the stream ended without [DONE]: {out:?}");
}

fn stream(path: &str, body: &Value) -> Vec<Value> {
    let reply = request(server(), "POST", path, Some(KEY), &body.to_string());
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Type"), Some("text/event-stream"));
    events(reply.body)
}

fn chat_body(question: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 40,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn health_and_models() {
    let (code, body) = get("/health");
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok"
    );
    let (code, body) = get("/v1/models");
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
}

#[test]
fn streamed_chat_deltas_equal_the_greedy_answer() {
    let body = chat_body("What is the capital of France?", json!({}));
    let (code, text) = post("/v1/chat/completions", &body.to_string());
    assert_eq!(code, 200, "{text}");
    let whole: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(whole["object"], "chat.completion");
    let answer = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!answer.is_empty());
    let usage = &whole["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = stream("/v1/chat/completions", &streamed);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, answer);
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|ch| &ch["finish_reason"]))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&whole["choices"][0]["finish_reason"]]);
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
}

#[test]
fn completions_stream_and_stop_strings() {
    let body = json!({"model": MODEL, "prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": 30});
    let (code, text) = post("/v1/completions", &body.to_string());
    assert_eq!(code, 200, "{text}");
    let whole: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(whole["object"], "text_completion");
    let full = whole["choices"][0]["text"].as_str().unwrap().to_string();

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = stream("/v1/completions", &streamed);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, full);

    // A stop string cuts the same text before its first occurrence.
    let stop = full.trim_start().split(',').nth(1).map(|s| format!("{s},"));
    let stop = stop.expect("the greedy count has at least two numbers");
    let mut cut = body.clone();
    cut["stop"] = json!([stop]);
    let (code, text) = post("/v1/completions", &cut.to_string());
    assert_eq!(code, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["text"], full[..full.find(&stop).unwrap()]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn concurrent_requests_answer_as_they_do_alone() {
    let questions = [
        "Name a color.",
        "What is 2+2?",
        "Say hello.",
        "Name a fruit.",
    ];
    let alone: Vec<String> = questions
        .iter()
        .map(|q| post("/v1/chat/completions", &chat_body(q, json!({})).to_string()).1)
        .collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = questions
            .iter()
            .map(|q| {
                s.spawn(move || {
                    post("/v1/chat/completions", &chat_body(q, json!({})).to_string()).1
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let content = |t: &String| {
        serde_json::from_str::<Value>(t).unwrap()["choices"][0]["message"]["content"].clone()
    };
    for (a, b) in alone.iter().zip(&together) {
        assert_eq!(content(a), content(b));
    }
}

/// One server, three names: an all-zero adapter must answer exactly as the base does (the
/// branch adds nothing), a random one differently, and `/v1/models` lists all three.
#[test]
fn adapters_are_chosen_per_request() {
    let ask = |model: &str| {
        let mut body = chat_body("Write a short poem about the sea.", json!({}));
        body["model"] = json!(model);
        let (code, text) = post("/v1/chat/completions", &body.to_string());
        assert_eq!(code, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["model"], model);
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let base = ask(MODEL);
    assert_eq!(ask("zero"), base);
    assert_ne!(ask("noisy"), base);
    let (_, models) = get("/v1/models");
    let v: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [MODEL, "zero", "noisy"]);
}

#[test]
fn seeded_sampling_repeats() {
    let body = chat_body(
        "Tell me a story.",
        json!({"temperature": 1.0, "top_p": 0.9, "seed": 7}),
    );
    let a = post("/v1/chat/completions", &body.to_string());
    let b = post("/v1/chat/completions", &body.to_string());
    assert_eq!(a.0, 200);
    let content = |t: &String| {
        serde_json::from_str::<Value>(t).unwrap()["choices"][0]["message"]["content"].clone()
    };
    assert_eq!(content(&a.1), content(&b.1));
}

#[test]
fn client_errors_are_openai_error_objects() {
    let e = error(400, post("/v1/chat/completions", "{\"model\": "));
    assert_eq!(e["type"], "invalid_request_error");

    let e = error(
        404,
        post(
            "/v1/chat/completions",
            &json!({"model": "nope", "messages": []}).to_string(),
        ),
    );
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("model"), Some("model_not_found"))
    );

    let long = "hello ".repeat(CONTEXT);
    let e = error(
        400,
        post(
            "/v1/chat/completions",
            &chat_body(&long, json!({})).to_string(),
        ),
    );
    assert_eq!(e["code"], "context_length_exceeded");
    let e = error(
        400,
        post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "hi", "max_tokens": CONTEXT}).to_string(),
        ),
    );
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("max_tokens"), Some("context_length_exceeded"))
    );

    let e = error(
        400,
        post(
            "/v1/chat/completions",
            &chat_body("hi", json!({"temperature": 3})).to_string(),
        ),
    );
    assert_eq!(e["param"], "temperature");
    let e = error(
        400,
        post(
            "/v1/chat/completions",
            &json!({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}).to_string(),
        ),
    );
    assert_eq!(e["param"], "messages");

    let e = error(
        401,
        send(
            "/v1/chat/completions",
            &chat_body("hi", json!({})).to_string(),
            Some("wrong"),
        ),
    );
    assert_eq!(e["code"], "invalid_api_key");
    error(401, send("/v1/completions", "{}", None));
    error(404, post("/v2/anything", "{}"));
    error(405, get("/v1/completions"));
}

/// One sequence at a time and one place in the queue: the third request is turned away,
/// requests past the timeout get 504, and a client that hangs up frees the batch at once.
#[test]
fn queue_timeout_and_disconnect() {
    let mut o = ServeOptions::new(MODEL);
    o.max_batch = 1;
    o.max_queue = 1;
    o.request_timeout = Duration::from_secs(2);
    let addr = start(Vec::new(), o);
    let post = |body: &str| request(addr, "POST", "/v1/completions", None, body);
    let long = json!({"model": MODEL, "prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": CONTEXT - 20}).to_string();
    let short =
        json!({"model": MODEL, "prompt": "Hi", "temperature": 0, "max_tokens": 2}).to_string();

    std::thread::scope(|s| {
        let running = s.spawn(|| post(&long).text());
        std::thread::sleep(Duration::from_millis(500));
        let queued = s.spawn(|| post(&long).text());
        std::thread::sleep(Duration::from_millis(300));
        let e = error(429, post(&short).text());
        assert_eq!(e["code"], "rate_limit_exceeded");
        for h in [running, queued] {
            let e = error(504, h.join().unwrap());
            assert_eq!(e["code"], "timeout");
        }
    });

    // A long stream the client abandons after its first event: if the server kept
    // generating, the next request would wait in the queue until its own timeout.
    let mut abandoned = post(&json!({"model": MODEL, "prompt": "1, 2, 3, 4,", "temperature": 0, "max_tokens": CONTEXT - 20, "stream": true}).to_string());
    let mut first = String::new();
    abandoned.body.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "), "{first:?}");
    drop(abandoned);
    let started = Instant::now();
    let (code, body) = post(&short).text();
    assert_eq!(code, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A prompt longer than the scheduler's prefill budget (256 tokens), sent while another
/// request streams, is prefilled in chunks between that stream's steps; its answer is the
/// one it gets alone, and the stream runs to its end.
#[test]
fn a_long_prompt_prefilled_in_chunks_answers_as_alone() {
    let prompt = "The quick brown fox jumps over the lazy dog by the river. ".repeat(30);
    let body = json!({"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 8});
    let (code, alone) = post("/v1/completions", &body.to_string());
    assert_eq!(code, 200, "{alone}");
    let alone: Value = serde_json::from_str(&alone).unwrap();
    assert!(
        alone["usage"]["prompt_tokens"].as_u64().unwrap() > 256,
        "{alone}"
    );

    let (started, go) = std::sync::mpsc::channel();
    let streamed = std::thread::spawn(move || {
        let body = json!({"model": MODEL, "prompt": "Once upon a time,", "temperature": 0,
                          "max_tokens": 120, "stream": true});
        let reply = request(
            server(),
            "POST",
            "/v1/completions",
            Some(KEY),
            &body.to_string(),
        );
        assert_eq!(reply.status, 200);
        let mut lines = reply.body.lines();
        // The first event: the stream is decoding.
        let first = lines
            .find(|l| l.as_ref().unwrap().starts_with("data: "))
            .unwrap();
        started.send(()).unwrap();
        let rest: Vec<String> = lines.map(Result::unwrap).collect();
        (first.unwrap(), rest)
    });
    go.recv().unwrap();
    let (code, together) = post("/v1/completions", &body.to_string());
    assert_eq!(code, 200, "{together}");
    let together: Value = serde_json::from_str(&together).unwrap();
    assert_eq!(together["choices"][0]["text"], alone["choices"][0]["text"]);
    let (_, rest) = streamed.join().unwrap();
    assert!(rest.iter().any(|l| l == "data: [DONE]"), "{rest:?}");
}
