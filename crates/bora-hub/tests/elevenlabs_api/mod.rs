//! ElevenLabs' streaming text-to-speech API on loopback for tests. Each request is checked
//! the way the API documents it (`POST /v1/text-to-speech/{voice_id}/stream`, the key in
//! `xi-api-key`, a JSON body with `text` and only the documented fields, `output_format`
//! among the documented formats) and answered with real MP3 audio: LAME-encoded tones made
//! by scripts/make_elevenlabs_fixtures.py, the 440 Hz one for odd requests and the 660 Hz one
//! for even ones, sent chunked as the API streams. Faults (a status with an optional
//! `Retry-After`, a stream dropped halfway, a stall) are served to the next requests in
//! arrival order, one each.

#![allow(dead_code)]

#[path = "../http_wire/mod.rs"]
mod http_wire;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use http_wire::read_request;
pub use http_wire::Request;
use serde_json::{json, Value};

pub const API_KEY: &str = "test-elevenlabs-key-0123456789";

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bora-hub/tests/fixtures");

/// The audio of the `n`th answered request (0-based): the 440 Hz tone, then the 660 Hz one.
pub fn tone(n: usize) -> Vec<u8> {
    let name = if n.is_multiple_of(2) {
        "tone_440.mp3"
    } else {
        "tone_660.mp3"
    };
    std::fs::read(format!("{FIXTURES}/elevenlabs/{name}")).unwrap()
}

/// The audio of the first `n` answered requests, joined in order.
pub fn tones(n: usize) -> Vec<u8> {
    (0..n).flat_map(tone).collect()
}

/// The recording of what the official client sent.
pub fn recording() -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/elevenlabs_tts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The body fields of the stream endpoint, as its API reference lists them.
const BODY_FIELDS: &[&str] = &[
    "text",
    "model_id",
    "language_code",
    "voice_settings",
    "pronunciation_dictionary_locators",
    "seed",
    "previous_text",
    "next_text",
    "previous_request_ids",
    "next_request_ids",
    "use_pvc_as_ivc",
    "apply_text_normalization",
    "apply_language_text_normalization",
];

const QUERY_FIELDS: &[&str] = &[
    "output_format",
    "enable_logging",
    "optimize_streaming_latency",
];

const OUTPUT_FORMATS: &[&str] = &[
    "mp3_22050_32",
    "mp3_24000_48",
    "mp3_44100_32",
    "mp3_44100_64",
    "mp3_44100_96",
    "mp3_44100_128",
    "mp3_44100_192",
    "pcm_8000",
    "pcm_16000",
    "pcm_22050",
    "pcm_24000",
    "pcm_32000",
    "pcm_44100",
    "pcm_48000",
    "ulaw_8000",
    "alaw_8000",
    "opus_48000_32",
    "opus_48000_64",
    "opus_48000_96",
    "opus_48000_128",
    "opus_48000_192",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer this status with ElevenLabs' error body, and `Retry-After: secs` when given.
    Status(u16, Option<&'static str>),
    /// Answer 200 and half the audio, then close the connection without the last chunk.
    DropMidAudio,
    /// Read the request, then stay silent this many milliseconds before answering normally.
    Stall(u64),
}

pub struct State {
    pub requests: Vec<Request>,
    pub faults: Vec<Fault>,
    /// What was wrong with requests, as the API documents them; tests expect none.
    pub violations: Vec<String>,
    /// Requests answered with audio so far.
    pub answered: usize,
}

pub struct FakeElevenLabs {
    /// The base URL, `http://127.0.0.1:PORT` (what `ELEVENLABS_BASE_URL` holds).
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl FakeElevenLabs {
    pub fn start() -> FakeElevenLabs {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            faults: Vec::new(),
            violations: Vec::new(),
            answered: 0,
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        FakeElevenLabs { url, state }
    }

    pub fn fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The `text` of every request, in order.
    pub fn texts(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.json()["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}

/// What is wrong with `req` as the API reference describes the call; empty when nothing.
fn check(req: &Request) -> Vec<String> {
    let mut wrong = Vec::new();
    if req.method != "POST" {
        wrong.push(format!("method {}", req.method));
    }
    let segments: Vec<&str> = req.path().split('/').collect();
    let voice_ok = matches!(segments.as_slice(), ["", "v1", "text-to-speech", voice, "stream"]
        if !voice.is_empty() && voice.chars().all(|c| c.is_ascii_alphanumeric()));
    if !voice_ok {
        wrong.push(format!("path {}", req.path()));
    }
    if let Some((_, query)) = req.target.split_once('?') {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !QUERY_FIELDS.contains(&k) {
                wrong.push(format!("query parameter {k}"));
            }
            if k == "output_format" && !OUTPUT_FORMATS.contains(&v) {
                wrong.push(format!("output_format {v}"));
            }
        }
    }
    if req.header("content-type") != Some("application/json") {
        wrong.push(format!("content-type {:?}", req.header("content-type")));
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(body)) => {
            for k in body.keys() {
                if !BODY_FIELDS.contains(&k.as_str()) {
                    wrong.push(format!("body field {k}"));
                }
            }
            match body.get("text").and_then(Value::as_str) {
                Some(t) if !t.trim().is_empty() => {}
                _ => wrong.push("no text".into()),
            }
            for k in ["model_id", "previous_text", "next_text"] {
                if body.get(k).is_some_and(|v| !v.is_string()) {
                    wrong.push(format!("{k} is not a string"));
                }
            }
        }
        _ => wrong.push("the body is not a JSON object".into()),
    }
    wrong
}

fn respond(stream: &mut TcpStream, status: u16, extra: &[(&str, &str)], body: &Value) {
    http_wire::respond_json(stream, status, extra, body.to_string().as_bytes());
}

/// ElevenLabs' error body.
fn error_body(status: &str, message: &str) -> Value {
    json!({"detail": {"status": status, "message": message}})
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    while let Some(req) = read_request(&stream) {
        let wrong = check(&req);
        let fault = {
            let mut s = state.lock().unwrap();
            s.requests.push(req.clone());
            s.violations.extend(wrong.iter().cloned());
            (!s.faults.is_empty()).then(|| s.faults.remove(0))
        };
        if req.header("xi-api-key") != Some(API_KEY) {
            let body = error_body("invalid_api_key", "Invalid API key");
            respond(&mut stream, 401, &[], &body);
            continue;
        }
        if !wrong.is_empty() {
            let body = error_body("invalid_request", &wrong.join("; "));
            respond(&mut stream, 400, &[], &body);
            continue;
        }
        match fault {
            Some(Fault::Status(code, retry_after)) => {
                let body = match code {
                    429 => error_body(
                        "too_many_concurrent_requests",
                        "Too many concurrent requests for your plan.",
                    ),
                    401 => error_body("quota_exceeded", "This request exceeds your quota."),
                    _ => error_body("internal_error", &format!("status {code}")),
                };
                let extra: Vec<(&str, &str)> = retry_after
                    .map(|r| ("retry-after", r))
                    .into_iter()
                    .collect();
                respond(&mut stream, code, &extra, &body);
                continue;
            }
            Some(Fault::Stall(ms)) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            Some(Fault::DropMidAudio) | None => {}
        }
        let audio = {
            let mut s = state.lock().unwrap();
            let n = s.answered;
            if fault != Some(Fault::DropMidAudio) {
                s.answered += 1;
            }
            tone(n)
        };
        let head = "HTTP/1.1 200 OK\r\ncontent-type: audio/mpeg\r\ntransfer-encoding: chunked\r\nrequest-id: 3f2a1c9e8b7d6a5f4e3d\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let half = audio.len() / 2;
        for (i, part) in audio.chunks(500).enumerate() {
            if fault == Some(Fault::DropMidAudio) && i * 500 >= half {
                return;
            }
            let _ = write!(stream, "{:x}\r\n", part.len());
            let _ = stream.write_all(part);
            let _ = stream.write_all(b"\r\n");
            let _ = stream.flush();
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let _ = stream.flush();
    }
}

/// The number of MPEG audio frames `bytes` holds, walking frame headers from the start;
/// `None` when something that is not an MP3 frame is met (so a file that is not one MP3
/// stream of whole frames fails).
pub fn mp3_frames(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut frames = 0;
    while at < bytes.len() {
        let h = bytes.get(at..at + 4)?;
        if h[0] != 0xFF || h[1] & 0xE0 != 0xE0 || (h[1] >> 1) & 3 != 1 {
            return None;
        }
        let version = (h[1] >> 3) & 3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
        let bitrate_index = (h[2] >> 4) as usize;
        let rate_index = ((h[2] >> 2) & 3) as usize;
        let padding = ((h[2] >> 1) & 1) as usize;
        const V1: [usize; 15] = [
            0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
        ];
        const V2: [usize; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
        let (kbps, rates, per) = match version {
            3 => (V1.get(bitrate_index)?, [44100, 48000, 32000], 144),
            2 => (V2.get(bitrate_index)?, [22050, 24000, 16000], 72),
            0 => (V2.get(bitrate_index)?, [11025, 12000, 8000], 72),
            _ => return None,
        };
        let rate = *rates.get(rate_index)?;
        if *kbps == 0 {
            return None;
        }
        at += per * kbps * 1000 / rate + padding;
        frames += 1;
    }
    (at == bytes.len()).then_some(frames)
}
