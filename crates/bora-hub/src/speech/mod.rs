//! ElevenLabs text to speech: `POST /v1/text-to-speech/{voice_id}/stream` with the key in
//! `xi-api-key`, as the official `elevenlabs` Python client sends it (a recording of that
//! client is a test fixture). The key comes from `ELEVENLABS_API_KEY`, the endpoint from
//! `ELEVENLABS_BASE_URL` (else `https://api.elevenlabs.io`), and requests go through the same
//! HTTP layer as every other client here: bounded retries on 429, 5xx and dropped
//! connections, `Retry-After` honoured, a timeout on every attempt.
//!
//! Text is sent a sentence at a time ([`SentenceChunker`]), each request carrying the text
//! already spoken as `previous_text` so the voice flows on across requests. The HTTP stream
//! endpoint, rather than the WebSocket `stream-input` one, because each sentence is then one
//! plain request that can be retried whole when its connection drops, without an audio
//! stream half played twice; the cost is that a sentence's audio is kept whole before it is
//! played, a fraction of a second.

mod chunk;
mod stream;

use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};

pub use chunk::{sentences, SentenceChunker, MAX_CHARS, MIN_CHARS};
pub use stream::{AudioOut, Player, SpeechStream, SpokenTo};

use crate::hub::{shown, Body, HubClient, HubError, Req, Retry, Token};

/// ElevenLabs' API, used when `ELEVENLABS_BASE_URL` is not set.
pub const ELEVENLABS_BASE_URL: &str = "https://api.elevenlabs.io";
/// Where the key is read from, as the official clients read it.
pub const ELEVENLABS_KEY_ENV: &str = "ELEVENLABS_API_KEY";
/// Another endpoint (a proxy, a regional API, a local test server).
pub const ELEVENLABS_BASE_URL_ENV: &str = "ELEVENLABS_BASE_URL";
/// The voice of ElevenLabs' own API examples ("George"), a premade voice every account has.
pub const DEFAULT_VOICE: &str = "JBFqnCBsd6RMkjVDRZzb";
/// ElevenLabs' lowest-latency model, for speech that keeps up with a streamed answer.
pub const DEFAULT_MODEL: &str = "eleven_flash_v2_5";
/// MP3 at 44.1 kHz and 128 kbit/s, the API's default and every plan's.
pub const DEFAULT_FORMAT: &str = "mp3_44100_128";
/// The most audio one request may answer: about 17 minutes at 128 kbit/s, far more than a
/// sentence takes; a larger answer fails rather than filling memory.
pub const MAX_AUDIO_BYTES: u64 = 16 << 20;
/// How much of the text already spoken goes with a request as `previous_text`.
const PREVIOUS_TEXT_CHARS: usize = 1000;

/// What went wrong; none of these can hold the key.
#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error(
        "no ElevenLabs API key: set {env} (create one at elevenlabs.io, Developers → API keys)"
    )]
    NoKey { env: String },
    #[error("{what} `{value}` is not valid: {why}")]
    BadSetting {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{url} rejected the API key ({status}{}): check {env}", detail_suffix(.detail))]
    Unauthorized {
        url: String,
        env: String,
        status: u16,
        detail: String,
    },
    #[error("{url} refused the request ({status}{})", detail_suffix(.detail))]
    Rejected {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url} answered {content_type} instead of audio")]
    NotAudio { url: String, content_type: String },
    #[error("text to speech failed: {0}")]
    Http(#[from] HubError),
    #[error("{what}: {source}")]
    Output {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the audio: {0}")]
    File(#[from] bora_formats::FormatError),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// What ElevenLabs says went wrong: `detail.status` and `detail.message` of its error body
/// (`{"detail": {"status": "invalid_api_key", "message": "..."}}`), else the body's start.
fn error_detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    let detail = parsed.as_ref().and_then(|v| v.get("detail"));
    match detail {
        Some(Value::Object(d)) => {
            let field = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("");
            [field("status"), field("message")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ")
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string().chars().take(300).collect(),
        None => text.trim().chars().take(300).collect(),
    }
}

/// One sentence to speak.
#[derive(Debug, Clone, Copy)]
pub struct SpeechRequest<'a> {
    pub text: &'a str,
    /// The text spoken just before, so intonation carries on (`previous_text`).
    pub previous_text: Option<&'a str>,
    /// `codec_samplerate[_bitrate]`, e.g. `mp3_44100_128` or `pcm_24000`.
    pub output_format: &'a str,
}

/// A text-to-speech client for one voice and model.
pub struct SpeechClient {
    http: HubClient,
    base_url: String,
    voice_id: String,
    model_id: String,
}

impl fmt::Debug for SpeechClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpeechClient")
            .field("base_url", &self.base_url)
            .field("voice_id", &self.voice_id)
            .field("model_id", &self.model_id)
            .finish_non_exhaustive()
    }
}

/// Ids and formats go into the URL: letters, digits, `_` and `-` only.
fn check_id(what: &'static str, value: &str) -> Result<(), SpeechError> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    ok.then_some(()).ok_or_else(|| SpeechError::BadSetting {
        what,
        value: value.chars().take(100).collect(),
        why: "use letters, digits, `_` and `-` only, as ElevenLabs' ids and formats are",
    })
}

/// The last `chars` characters of `text`.
fn tail(text: &str, chars: usize) -> &str {
    let skip = text.chars().count().saturating_sub(chars);
    text.char_indices()
        .nth(skip)
        .map_or("", |(i, _)| &text[i..])
}

impl SpeechClient {
    /// A client with the key from `ELEVENLABS_API_KEY` and the endpoint from
    /// `ELEVENLABS_BASE_URL`, both read through `env` (tests need not touch the process
    /// environment), speaking with `voice_id` and `model_id`.
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        voice_id: &str,
        model_id: &str,
    ) -> Result<SpeechClient, SpeechError> {
        check_id("voice id", voice_id)?;
        check_id("model id", model_id)?;
        let token = env(ELEVENLABS_KEY_ENV)
            .as_deref()
            .and_then(Token::new)
            .ok_or_else(|| SpeechError::NoKey {
                env: ELEVENLABS_KEY_ENV.to_owned(),
            })?;
        let base_url = env(ELEVENLABS_BASE_URL_ENV)
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| ELEVENLABS_BASE_URL.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let http = HubClient::with_key_header(&base_url, token, "xi-api-key")
            .with_timeout(Duration::from_secs(60));
        Ok(SpeechClient {
            http,
            base_url,
            voice_id: voice_id.to_owned(),
            model_id: model_id.to_owned(),
        })
    }

    /// How long one attempt may wait for its answer and each part of its audio (60 s by
    /// default).
    pub fn with_timeout(mut self, timeout: Duration) -> SpeechClient {
        self.http = self.http.with_timeout(timeout);
        self
    }

    pub fn with_retry(mut self, retry: Retry) -> SpeechClient {
        self.http = self.http.with_retry(retry);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The request body, as the official client serializes the same arguments: unset
    /// fields are left out.
    fn body(&self, req: &SpeechRequest) -> Value {
        let mut body = json!({"text": req.text, "model_id": self.model_id});
        if let Some(previous) = req.previous_text.filter(|p| !p.is_empty()) {
            body["previous_text"] = json!(tail(previous, PREVIOUS_TEXT_CHARS));
        }
        body
    }

    /// The audio of one sentence, whole. 429, 5xx and a stream that drops are retried by
    /// the HTTP layer; a bad key and a refused request are not.
    pub fn synthesize(&self, req: &SpeechRequest) -> Result<Vec<u8>, SpeechError> {
        check_id("output format", req.output_format)?;
        let url = format!(
            "{}/v1/text-to-speech/{}/stream?output_format={}",
            self.base_url, self.voice_id, req.output_format
        );
        let bytes = serde_json::to_vec(&self.body(req)).expect("a JSON value serializes");
        let request = Req {
            method: "POST",
            url: url.clone(),
            auth: true,
            headers: vec![("content-type", "application/json"), ("accept", "*/*")],
            body: Body::Bytes(&bytes),
        };
        let resp = self.http.send_for_bytes(&request, MAX_AUDIO_BYTES)?;
        match resp.status {
            200..=299 => {}
            401 | 403 => {
                return Err(SpeechError::Unauthorized {
                    url: shown(&url),
                    env: ELEVENLABS_KEY_ENV.to_owned(),
                    status: resp.status,
                    detail: error_detail(&resp.body),
                })
            }
            status => {
                return Err(SpeechError::Rejected {
                    url: shown(&url),
                    status,
                    detail: error_detail(&resp.body),
                })
            }
        }
        let content_type = resp.content_type.unwrap_or_default();
        if content_type.starts_with("application/json") || content_type.starts_with("text/") {
            return Err(SpeechError::NotAudio {
                url: shown(&url),
                content_type,
            });
        }
        Ok(resp.body)
    }

    /// The audio of a whole text, spoken a sentence at a time as a streamed answer is, and
    /// joined (MP3 frames and raw PCM samples both play back joined).
    pub fn speak(&self, text: &str, output_format: &str) -> Result<Vec<u8>, SpeechError> {
        let mut audio = Vec::new();
        let mut spoken = String::new();
        for sentence in sentences(text) {
            audio.extend(self.synthesize(&SpeechRequest {
                text: &sentence,
                previous_text: Some(&spoken),
                output_format,
            })?);
            if !spoken.is_empty() {
                spoken.push(' ');
            }
            spoken.push_str(&sentence);
        }
        Ok(audio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_their_status_and_message() {
        let d =
            error_detail(br#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#);
        assert_eq!(d, "invalid_api_key: Invalid API key");
        assert_eq!(error_detail(br#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(error_detail(b"  bad gateway "), "bad gateway");
    }

    #[test]
    fn settings_that_would_change_the_url_are_refused() {
        let env = |_: &str| Some("k".to_owned());
        for bad in ["a/b", "x?y=1", "", "voice id"] {
            let e = SpeechClient::from_env(env, bad, DEFAULT_MODEL).unwrap_err();
            assert!(e.to_string().contains("voice id"), "{e}");
        }
        let e = SpeechClient::from_env(|_| None, DEFAULT_VOICE, DEFAULT_MODEL).unwrap_err();
        assert!(e.to_string().contains("set ELEVENLABS_API_KEY"), "{e}");
    }

    #[test]
    fn previous_text_keeps_its_last_characters() {
        assert_eq!(tail("abcdé", 2), "dé");
        assert_eq!(tail("ab", 5), "ab");
    }
}
