//! A client for chat completions over an OpenAI-compatible API: Mistral's by default
//! (`https://api.mistral.ai/v1` with `MISTRAL_API_KEY`), any other such server (`bora serve`,
//! vLLM, OpenAI) by base URL. It sends what the official `mistralai` client sends for
//! `chat.complete` (a recording of it is a test fixture) and goes through the same HTTP layer
//! as the Hub client: bounded retries with backoff on 429, 5xx and dropped connections,
//! `Retry-After` honoured, a timeout on every attempt. The key lives in a [`Token`], so it
//! only ever reaches the `authorization` header.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::hub::{shown, Body, HubClient, HubError, Req, Retry, Token};

/// Mistral's API, the endpoint used when no `--base-url` is given.
pub const MISTRAL_BASE_URL: &str = "https://api.mistral.ai/v1";
/// Where the official client looks for the key.
pub const MISTRAL_KEY_ENV: &str = "MISTRAL_API_KEY";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// What one completion asks for.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [Message],
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Sent as `random_seed` to Mistral's API and as `seed` elsewhere (the OpenAI name).
    pub seed: Option<u64>,
    /// Ask for a JSON object (`response_format: {"type": "json_object"}`).
    pub json: bool,
}

/// Tokens one answer cost, as the server counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
    }
}

/// The first choice of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    pub content: String,
    /// `stop`, `length`, ...: a `length` answer was cut by `max_tokens`.
    pub finish_reason: String,
    pub usage: Usage,
}

/// What went wrong; none of these can hold the key.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("no API key for {url}: set {env} (or name another variable with --api-key-env)")]
    NoKey { url: String, env: String },
    #[error("{url} rejected the API key ({status}): check {env}; stopping, since every other request would fail the same way")]
    Unauthorized {
        url: String,
        env: String,
        status: u16,
    },
    #[error("{url} answered 402 Payment Required: the account is out of credit; add credit (or lower --n / --max-cost) and rerun to continue")]
    PaymentRequired { url: String },
    #[error("{url} refused the request ({status}): {body}")]
    Rejected {
        url: String,
        status: u16,
        body: String,
    },
    #[error(transparent)]
    Http(#[from] HubError),
    #[error("{url}: the answer could not be read after {attempts} attempts: {what}")]
    Malformed {
        url: String,
        attempts: u32,
        what: String,
    },
}

impl ChatError {
    /// Whether every later request would fail the same way (a bad key, no credit), so a
    /// batch job should stop rather than count the example as dropped.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ChatError::NoKey { .. }
                | ChatError::Unauthorized { .. }
                | ChatError::PaymentRequired { .. }
        )
    }
}

/// A chat-completions client for one base URL and key.
pub struct ChatClient {
    http: HubClient,
    base_url: String,
    key_env: String,
    seed_field: &'static str,
}

impl fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatClient")
            .field("base_url", &self.base_url)
            .field("key_env", &self.key_env)
            .finish_non_exhaustive()
    }
}

impl ChatClient {
    /// A client for `base_url` (ending in `/v1`, as OpenAI clients take it) with the key
    /// from the variable `key_env` (read through `env`, so tests need not touch the process
    /// environment). Mistral's API needs a key; another server without one gets no
    /// `authorization` header (`bora serve` needs none).
    pub fn new(
        base_url: &str,
        key_env: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ChatClient, ChatError> {
        let base_url = base_url.trim().trim_end_matches('/').to_owned();
        let is_mistral = base_url.contains("api.mistral.ai");
        let http = match env(key_env).as_deref().and_then(Token::new) {
            Some(token) => HubClient::new(&base_url, token),
            None if is_mistral => {
                return Err(ChatError::NoKey {
                    url: base_url,
                    env: key_env.to_owned(),
                })
            }
            None => HubClient::without_token(&base_url),
        }
        .with_timeout(Duration::from_secs(120));
        Ok(ChatClient {
            http,
            base_url,
            key_env: key_env.to_owned(),
            seed_field: if is_mistral { "random_seed" } else { "seed" },
        })
    }

    /// How long one attempt may wait for its answer (120 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> ChatClient {
        self.http = self.http.with_timeout(timeout);
        self
    }

    pub fn with_retry(mut self, retry: Retry) -> ChatClient {
        self.http = self.http.with_retry(retry);
        self
    }

    /// The name of the seed field: `random_seed` (Mistral) or `seed` (OpenAI), chosen from
    /// the host; a proxy in front of Mistral's API needs `random_seed` set here.
    pub fn with_seed_field(mut self, name: &'static str) -> ChatClient {
        self.seed_field = name;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The request body, as `mistralai`'s `chat.complete` serializes the same arguments.
    fn body(&self, req: &ChatRequest) -> Value {
        let mut body = json!({"model": req.model, "messages": req.messages});
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = req.max_tokens {
            body["max_tokens"] = json!(m);
        }
        body["stream"] = json!(false);
        if let Some(s) = req.seed {
            body[self.seed_field] = json!(s);
        }
        if req.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        body
    }

    /// One completion. Transport errors, 429 and 5xx are retried by the HTTP layer; an
    /// answer that is not a readable completion is asked for again, within the same bound.
    pub fn complete(&self, req: &ChatRequest) -> Result<ChatReply, ChatError> {
        let url = format!("{}/chat/completions", self.base_url);
        let bytes = serde_json::to_vec(&self.body(req)).expect("a JSON value serializes");
        let request = Req {
            method: "POST",
            url: url.clone(),
            auth: true,
            headers: vec![
                ("content-type", "application/json"),
                ("accept", "application/json"),
            ],
            body: Body::Bytes(&bytes),
        };
        let retry = self.http.retry();
        let mut attempt = 1;
        loop {
            let resp = self.http.send(&request)?;
            match resp.status {
                200..=299 => {}
                401 | 403 => {
                    return Err(ChatError::Unauthorized {
                        url: shown(&url),
                        env: self.key_env.clone(),
                        status: resp.status,
                    })
                }
                402 => return Err(ChatError::PaymentRequired { url: shown(&url) }),
                status => {
                    let HubError::Status { body, .. } = self.http.status_error(&request, resp)
                    else {
                        unreachable!("status_error builds a Status error")
                    };
                    return Err(ChatError::Rejected {
                        url: shown(&url),
                        status,
                        body,
                    });
                }
            }
            match parse_reply(&resp.body) {
                Ok(reply) => return Ok(reply),
                Err(what) if attempt >= retry.attempts => {
                    return Err(ChatError::Malformed {
                        url: shown(&url),
                        attempts: attempt,
                        what,
                    })
                }
                Err(what) => {
                    let delay = retry.delay(attempt);
                    tracing::warn!(
                        "POST {} gave an unreadable answer ({what}); retrying in {delay:?}",
                        shown(&url)
                    );
                    retry.wait(delay);
                    attempt += 1;
                }
            }
        }
    }
}

/// The first choice's text, finish reason and usage. The content is a string, or (reasoning
/// models) a list of chunks whose `text` chunks are the answer.
fn parse_reply(body: &str) -> Result<ChatReply, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e})"))?;
    let choice = v
        .pointer("/choices/0")
        .ok_or("no `choices[0]` in the answer")?;
    let content = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(chunks)) => chunks
            .iter()
            .filter(|c| c.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|c| c.get("text").and_then(Value::as_str))
            .collect(),
        _ => return Err("`choices[0].message.content` is not text".into()),
    };
    let finish_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let count = |k: &str| v.pointer(&format!("/usage/{k}")).and_then(Value::as_u64);
    let usage = Usage {
        prompt_tokens: count("prompt_tokens").unwrap_or(0),
        completion_tokens: count("completion_tokens").unwrap_or(0),
    };
    Ok(ChatReply {
        content,
        finish_reason,
        usage,
    })
}

/// US dollars per million tokens, in and out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    pub fn cost(&self, usage: Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.input + usage.completion_tokens as f64 * self.output)
            / 1e6
    }
}

/// When [`PRICES`] were copied from <https://mistral.ai/pricing>. Prices change; pass your
/// own (`--price IN,OUT`) when they have.
pub const PRICES_DATE: &str = "2025-12-15";

/// Mistral's list prices by model alias, US dollars per million tokens (in, out), as of
/// [`PRICES_DATE`].
pub const PRICES: &[(&str, Price)] = &[
    (
        "mistral-large-latest",
        Price {
            input: 0.5,
            output: 1.5,
        },
    ),
    (
        "mistral-medium-latest",
        Price {
            input: 0.4,
            output: 2.0,
        },
    ),
    (
        "mistral-small-latest",
        Price {
            input: 0.1,
            output: 0.3,
        },
    ),
    (
        "magistral-medium-latest",
        Price {
            input: 2.0,
            output: 5.0,
        },
    ),
    (
        "magistral-small-latest",
        Price {
            input: 0.5,
            output: 1.5,
        },
    ),
    (
        "ministral-14b-latest",
        Price {
            input: 0.2,
            output: 0.2,
        },
    ),
    (
        "ministral-8b-latest",
        Price {
            input: 0.15,
            output: 0.15,
        },
    ),
    (
        "ministral-3b-latest",
        Price {
            input: 0.1,
            output: 0.1,
        },
    ),
    (
        "open-mistral-nemo",
        Price {
            input: 0.15,
            output: 0.15,
        },
    ),
    (
        "codestral-latest",
        Price {
            input: 0.3,
            output: 0.9,
        },
    ),
];

/// The listed price of `model`, if [`PRICES`] has it.
pub fn list_price(model: &str) -> Option<Price> {
    PRICES.iter().find(|(m, _)| *m == model).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_string_and_chunked_content() {
        let r = parse_reply(r#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#).unwrap();
        assert_eq!((r.content.as_str(), r.usage.completion_tokens), ("hi", 1));
        let r = parse_reply(r#"{"choices":[{"message":{"content":[{"type":"thinking","thinking":[]},{"type":"text","text":"a"},{"type":"text","text":"b"}]},"finish_reason":"stop"}]}"#).unwrap();
        assert_eq!(r.content, "ab");
        assert!(parse_reply(r#"{"choices":[]}"#).is_err());
        assert!(parse_reply(r#"{"choices":[{"message":{"content":null}}]}"#).is_err());
        assert!(parse_reply("{\"choices\": [").is_err());
    }

    #[test]
    fn mistral_without_a_key_is_refused_before_any_request() {
        let e = ChatClient::new(MISTRAL_BASE_URL, MISTRAL_KEY_ENV, |_| None).unwrap_err();
        assert!(e.to_string().contains("set MISTRAL_API_KEY"), "{e}");
        assert!(ChatClient::new("http://127.0.0.1:1/v1", MISTRAL_KEY_ENV, |_| None).is_ok());
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let p = list_price("mistral-small-latest").unwrap();
        let u = Usage {
            prompt_tokens: 2_000_000,
            completion_tokens: 1_000_000,
        };
        assert!((p.cost(u) - (0.2 + 0.3)).abs() < 1e-12);
    }
}
