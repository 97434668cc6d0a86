//! The two servers the Bedrock tests run against, and what they share: moto's S3 server
//! (`moto[server]` from PyPI, installed into `.venv-aws` by `scripts/aws_test_venv.py`) and a
//! loopback server that answers the Bedrock control-plane and runtime calls as the Bedrock
//! API reference documents them, keeping every request the AWS SDK sends.
#![allow(dead_code)]

#[path = "../../../bora-hub/tests/http_wire/mod.rs"]
pub mod http_wire;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
pub use http_wire::{read_request, Request};
use serde_json::{json, Value};

pub const ACCESS_KEY: &str = "AKIABORATESTKEY00001";
pub const SECRET_KEY: &str = "bora/secret+never/printed+0123456789abcd";
pub const SESSION_TOKEN: &str = "bora-session-token-never-printed";
pub const REGION: &str = "us-east-1";
pub const ROLE: &str = "arn:aws:iam::123456789012:role/BedrockImport";
pub const JOB_ARN: &str = "arn:aws:bedrock:us-east-1:123456789012:model-import-job/j0b1d";
pub const MODEL_ARN: &str = "arn:aws:bedrock:us-east-1:123456789012:imported-model/m0d3l";
pub const BUCKET: &str = "bora-models";
pub const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// moto's S3 server

/// moto's server on a free loopback port, stopped when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let server = std::env::var_os("BORA_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv-aws/bin/moto_server"));
        assert!(
            server.exists(),
            "{} is missing: install the test S3 server with `python3 scripts/aws_test_venv.py` \
             (scripts/test.sh does it)",
            server.display()
        );
        let port = free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP request, unsigned but with an `Authorization` header (moto does not check
    /// signatures, but refuses reads it takes for anonymous): (status, headers, body).
    pub fn http(&self, method: &str, target: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nAuthorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20261207/{REGION}/s3/aws4_request, SignedHeaders=host, Signature=00\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut body = raw[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (status, head, body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[line_end + 4 + size..];
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------
// The Bedrock loopback server

/// What the server sends back for one request.
pub enum Reply {
    Body {
        status: u16,
        content_type: &'static str,
        error_type: Option<&'static str>,
        body: String,
    },
    /// An event stream (`application/vnd.amazon.eventstream`); with `cut`, the response
    /// announces more bytes than it sends and the connection is closed after the messages.
    Events { messages: Vec<Vec<u8>>, cut: bool },
}

pub fn json_reply(status: u16, body: Value) -> Reply {
    Reply::Body {
        status,
        content_type: "application/json",
        error_type: None,
        body: body.to_string(),
    }
}

pub fn ok(body: Value) -> Reply {
    json_reply(200, body)
}

/// A Bedrock error as the REST-JSON protocol sends it: the type in `x-amzn-ErrorType`, the
/// message in the body.
pub fn error(status: u16, error_type: &'static str, message: &str) -> Reply {
    Reply::Body {
        status,
        content_type: "application/json",
        error_type: Some(error_type),
        body: json!({ "message": message }).to_string(),
    }
}

/// An S3 error as S3 sends it: an XML `Error` document.
pub fn s3_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::Body {
        status,
        content_type: "application/xml",
        error_type: None,
        body: format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>4442587FB7D0A2F9</RequestId></Error>"),
    }
}

pub type Handler = dyn Fn(&Request, usize) -> Reply + Send + Sync;

/// A loopback server answering with `handler(request, how many came before it)`; every
/// request is kept.
pub struct Bedrock {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Bedrock {
    pub fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Bedrock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, handler) = (seen.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, &seen, &*handler));
            }
        });
        Bedrock { port, requests }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

pub fn serve(mut stream: TcpStream, seen: &Mutex<Vec<Request>>, handler: &Handler) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    while let Some(request) = read_request(&stream) {
        let n = {
            let mut all = seen.lock().unwrap();
            all.push(request.clone());
            all.len() - 1
        };
        match handler(&request, n) {
            Reply::Body {
                status,
                content_type,
                error_type,
                body,
            } => {
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nx-amzn-RequestId: 1b2c\r\n",
                    body.len()
                );
                if let Some(t) = error_type {
                    head.push_str(&format!("x-amzn-ErrorType: {t}\r\n"));
                }
                head.push_str("\r\n");
                // A HEAD response announces its length but carries no body.
                let body = if request.method == "HEAD" { "" } else { &body };
                if stream.write_all(head.as_bytes()).is_err()
                    || stream.write_all(body.as_bytes()).is_err()
                {
                    return;
                }
            }
            Reply::Events { messages, cut } => {
                let bytes: Vec<u8> = messages.concat();
                let announced = bytes.len() + if cut { 1000 } else { 0 };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\nx-amzn-bedrock-content-type: application/json\r\nContent-Length: {announced}\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
                if cut {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// One message of the AWS event-stream encoding: prelude (total and header lengths, their
/// CRC32), string headers, payload, CRC32 of everything before.
pub fn event_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut m = Vec::new();
    m.extend_from_slice(&(total as u32).to_be_bytes());
    m.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&m);
    m.extend_from_slice(&prelude_crc.to_be_bytes());
    m.extend_from_slice(&h);
    m.extend_from_slice(payload);
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_be_bytes());
    m
}

/// A `chunk` event whose bytes are one streamed piece of the completion.
pub fn chunk(text: &str, stop: Option<&str>) -> Vec<u8> {
    let inner = json!({"generation": text, "prompt_token_count": null,
                       "generation_token_count": 1, "stop_reason": stop});
    let b64 = base64::engine::general_purpose::STANDARD.encode(inner.to_string());
    event_message(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        json!({ "bytes": b64 }).to_string().as_bytes(),
    )
}

/// The checks every request to the server must pass: SigV4 for `service` with the test
/// key, the session token, and no secret anywhere.
pub fn assert_signed(r: &Request, service: &str) {
    let auth = r.header("authorization").expect("Authorization header");
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"))
            && auth.contains(&format!("/{REGION}/{service}/aws4_request")),
        "{auth}"
    );
    assert!(auth.contains("SignedHeaders=") && auth.contains("Signature="));
    assert_eq!(r.header("x-amz-security-token"), Some(SESSION_TOKEN));
    let whole = format!("{:?}{}", r.headers, String::from_utf8_lossy(&r.body));
    assert!(!whole.contains(SECRET_KEY), "the secret key was sent");
}

/// The body's JSON, for a request with one.
pub fn body(r: &Request) -> Value {
    r.json()
}

pub fn path_is(r: &Request, method: &str, path: &str) -> bool {
    r.method == method && r.path() == path
}

/// A merged export as Custom Model Import takes it: config, tokenizer files and an 11 MiB
/// bf16 safetensors file (three 5 MiB parts: two full, one short).
pub fn merged_dir(root: &Path) -> PathBuf {
    let dir = root.join("tiny-merged");
    std::fs::create_dir_all(&dir).unwrap();
    let config = json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                        "max_position_embeddings": 32768, "torch_dtype": "bfloat16"});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), r#"{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"}}"#).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>"}"#,
    )
    .unwrap();
    write_safetensors(&dir.join("model.safetensors"), "BF16", 11 * MIB / 2);
    dir
}

/// One tensor `w` of `n` elements of `dtype` (2 bytes each), filled with a byte pattern.
pub fn write_safetensors(path: &Path, dtype: &str, n: usize) {
    let header = json!({"w": {"dtype": dtype, "shape": [n], "data_offsets": [0, 2 * n]}});
    let mut h = header.to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend((0..2 * n).map(|i| (i % 251) as u8));
    std::fs::write(path, bytes).unwrap();
}

/// A server for the import calls: no running job, a job created, `InProgress` twice, then
/// `end` (`Completed` with the model ARN, or `Failed`).
pub fn import_server(end: &'static str) -> Bedrock {
    let polls = Arc::new(Mutex::new(0));
    Bedrock::start(move |r, _| {
        if path_is(r, "GET", "/model-import-jobs") {
            return ok(json!({ "modelImportJobSummaries": [] }));
        }
        if path_is(r, "POST", "/model-import-jobs") {
            return json_reply(201, json!({ "jobArn": JOB_ARN }));
        }
        if r.method == "GET" && r.path().starts_with("/model-import-jobs/") {
            let mut n = polls.lock().unwrap();
            *n += 1;
            let status = if *n <= 2 { "InProgress" } else { end };
            let mut job = json!({
                "jobArn": JOB_ARN, "jobName": "job", "importedModelName": "tiny-merged",
                "roleArn": ROLE, "status": status,
                "modelDataSource": {"s3DataSource": {"s3Uri": "s3://x/"}},
                "creationTime": "2026-12-07T00:00:00Z",
            });
            if status == "Completed" {
                job["importedModelArn"] = json!(MODEL_ARN);
            }
            if status == "Failed" {
                job["failureMessage"] =
                    json!("The model architecture or its configuration is not supported.");
            }
            return ok(job);
        }
        error(404, "ResourceNotFoundException", "no such route")
    })
}
