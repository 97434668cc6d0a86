//! Events of a request's choices → OpenAI responses: one JSON body, or server-sent events
//! ending with `data: [DONE]`; with log-probabilities and tool calls where asked for.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bora_model::{SampledToken, StopReason};
use bora_tokenizer::Tokenizer;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::calls::{CallReader, Piece};
use crate::engine::Event;
use crate::error::ApiError;
use crate::tools::{call_id, is_mistral_id};
use bora_tokenizer::chat::ToolCallSyntax;

/// Which endpoint a response is for: object names and where the text goes differ.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    pub fn prompt_param(self) -> &'static str {
        match self {
            Endpoint::Chat => "messages",
            Endpoint::Completion => "prompt",
        }
    }
}

/// What every response object of one request repeats, and how its choices are read.
pub(crate) struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
    pub prompt_tokens: usize,
    pub n: usize,
    pub logprobs: bool,
    /// With tools on: how the model writes its calls.
    pub calls: Option<ToolCallSyntax>,
    /// The control token that opens the calls, where the syntax's marker is one.
    pub marker_token: Option<u32>,
    pub tokenizer: Arc<Tokenizer>,
    /// Seeds the ids given to calls.
    pub id_seed: u64,
}

/// One choice as its events arrive.
struct Choice {
    reader: CallReader,
    /// Content so far (whole responses).
    text: String,
    /// Calls so far (whole responses): id, name and arguments text.
    calls: Vec<(String, String, String)>,
    /// Log-probability entries not yet sent (streaming) or all of them.
    logprobs: Vec<Value>,
    /// Completions' character offset of the next token.
    offset: usize,
    done: Option<(StopReason, usize)>,
    /// Seeds the ids of this choice's calls.
    id_seed: u64,
}

impl Choice {
    /// Choice `index` of a request described by `meta`.
    fn new(meta: &Meta, index: usize) -> Choice {
        Choice {
            id_seed: meta.id_seed.wrapping_add(index as u64),
            reader: CallReader::new(meta.calls),
            text: String::new(),
            calls: Vec::new(),
            logprobs: Vec::new(),
            offset: 0,
            done: None,
        }
    }

    /// Adds `pieces` to the whole answer.
    fn collect(&mut self, pieces: Vec<Piece>) {
        for piece in pieces {
            match piece {
                Piece::Content(t) => self.text.push_str(&t),
                Piece::Start { id, name, .. } => self.calls.push((id, name, String::new())),
                Piece::Arguments { index, text } => self.calls[index].2.push_str(&text),
            }
        }
    }
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self.tokenizer.token_bytes(id);
        if bytes.is_empty() {
            let piece = self.tokenizer.id_to_piece(id).unwrap_or_default();
            let b = piece.clone().into_bytes();
            return (piece, b);
        }
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// Takes one event into `choice`; returns what it settles, in order.
    fn absorb(&self, choice: &mut Choice, event: Event) -> Result<Vec<Piece>, ApiError> {
        let mut out = Vec::new();
        match event {
            Event::Token(t) => {
                if self.marker_token.is_some() && Some(t.id) == self.marker_token {
                    choice.reader.marker_token(&mut out);
                } else if self.logprobs {
                    let entry = self.logprob_entry(choice, &t);
                    choice.logprobs.push(entry);
                }
            }
            Event::Text(t) => {
                let syntax = self.calls;
                let seed = &mut choice.id_seed;
                choice
                    .reader
                    .text(&t, &mut || call_id(syntax, seed), &mut out)
            }
            Event::Done {
                stop,
                completion_tokens,
            } => {
                choice.reader.finish(&mut out);
                choice.done = Some((stop, completion_tokens));
            }
            Event::Failed(e) => return Err(e),
        }
        Ok(out)
    }

    fn logprob_entry(&self, choice: &mut Choice, t: &SampledToken) -> Value {
        let (token, bytes) = self.token_text(t.id);
        let logprob = t.logprob.unwrap_or(0.0);
        match self.endpoint {
            Endpoint::Chat => {
                let top: Vec<Value> = t
                    .top
                    .iter()
                    .map(|&(id, lp)| {
                        let (token, bytes) = self.token_text(id);
                        json!({"token": token, "logprob": lp, "bytes": bytes})
                    })
                    .collect();
                json!({"token": token, "logprob": logprob, "bytes": bytes, "top_logprobs": top})
            }
            Endpoint::Completion => {
                let top: serde_json::Map<String, Value> = t
                    .top
                    .iter()
                    .map(|&(id, lp)| (self.token_text(id).0, json!(lp)))
                    .collect();
                let offset = choice.offset;
                choice.offset += token.chars().count();
                json!({"token": token, "logprob": logprob, "top": top, "offset": offset})
            }
        }
    }

    /// The `logprobs` member of a choice for `entries` (null when not asked for).
    fn logprobs_value(&self, entries: Vec<Value>) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.endpoint {
            Endpoint::Chat => json!({"content": entries}),
            Endpoint::Completion => json!({
                "tokens": entries.iter().map(|e| e["token"].clone()).collect::<Vec<_>>(),
                "token_logprobs": entries.iter().map(|e| e["logprob"].clone()).collect::<Vec<_>>(),
                "top_logprobs": entries.iter().map(|e| e["top"].clone()).collect::<Vec<_>>(),
                "text_offset": entries.iter().map(|e| e["offset"].clone()).collect::<Vec<_>>(),
            }),
        }
    }
}

fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::EndToken | StopReason::StopString => "stop",
        StopReason::MaxTokens | StopReason::Context => "length",
    }
}

pub(crate) async fn whole_response(
    meta: Meta,
    mut rx: UnboundedReceiver<(usize, Event)>,
) -> Result<Value, ApiError> {
    let mut choices: Vec<Choice> = (0..meta.n).map(|i| Choice::new(&meta, i)).collect();
    let mut left = meta.n;
    while left > 0 {
        let (i, event) = rx.recv().await.ok_or_else(ApiError::unavailable)?;
        let Some(choice) = choices.get_mut(i) else {
            continue;
        };
        let pieces = meta.absorb(choice, event)?;
        choice.collect(pieces);
        if choice.done.is_some() {
            left -= 1;
        }
    }
    Ok(whole_body(&meta, choices))
}

/// The response body of finished choices: what a whole answer sends, and what an observer
/// is told of a streamed one.
fn whole_body(meta: &Meta, choices: Vec<Choice>) -> Value {
    let mut completion_tokens = 0;
    let mut out = Vec::new();
    for (i, mut c) in choices.into_iter().enumerate() {
        let (stop, tokens) = c.done.expect("every choice finished");
        completion_tokens += tokens;
        let logprobs = meta.logprobs_value(std::mem::take(&mut c.logprobs));
        let mut finish = finish_reason(stop);
        out.push(match meta.endpoint {
            Endpoint::Chat => {
                let mut message = json!({"role": "assistant", "content": c.text});
                if c.reader.has_calls() {
                    if c.text.is_empty() {
                        message["content"] = Value::Null;
                    }
                    // A whole answer keeps the ids a Mistral model wrote, as mistral-common
                    // decodes them; a stream sent its own before the model's came.
                    let model_ids = c.reader.model_ids();
                    let calls: Vec<Value> = c
                        .calls
                        .iter()
                        .zip(model_ids)
                        .enumerate()
                        .map(|(k, ((id, name, arguments), model_id))| {
                            let id = match model_id {
                                Some(m) if is_mistral_id(&m) => m,
                                _ => id.clone(),
                            };
                            json!({"index": k, "id": id, "type": "function",
                                   "function": {"name": name, "arguments": arguments}})
                        })
                        .collect();
                    message["tool_calls"] = Value::Array(calls);
                    if stop == StopReason::EndToken {
                        finish = "tool_calls";
                    }
                }
                json!({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
            }
            Endpoint::Completion => {
                json!({"index": i, "text": c.text, "logprobs": logprobs, "finish_reason": finish})
            }
        });
    }
    let mut body = meta.envelope(false, Value::Array(out));
    body["usage"] = meta.usage(completion_tokens);
    body
}

/// Told the whole response a stream added up to, once its last choice finished.
pub(crate) type OnStreamed = Box<dyn FnOnce(Value) + Send>;

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// Server-sent events: a role chunk per choice (chat), one chunk per piece of text, tool
/// calls as OpenAI streams them (a first delta with the call's index, id, type, name and
/// empty arguments, then deltas with fragments of `function.arguments` as the model writes
/// them), a chunk with each finish reason, optionally one with usage, then `[DONE]`. Fragment
/// deltas carry `"name": ""`: the `mistralai` client's models require a name in every call
/// delta, and OpenAI's stream accumulation joins strings, so the name stays whole. Dropping
/// the body (the client went away) drops the receiver, which the scheduler sees and stops
/// the sequences.
pub(crate) fn stream_response(
    meta: Meta,
    rx: UnboundedReceiver<(usize, Event)>,
    include_usage: bool,
    on_done: Option<OnStreamed>,
) -> Response {
    let mut first = VecDeque::new();
    if meta.endpoint == Endpoint::Chat {
        for i in 0..meta.n {
            let choice = json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
            first.push_back(sse(&meta.envelope(true, json!([choice]))));
        }
    }
    struct St {
        choices: Vec<Choice>,
        left: usize,
        completion_tokens: usize,
        meta: Meta,
        rx: UnboundedReceiver<(usize, Event)>,
        pending: VecDeque<Bytes>,
        done: bool,
        include_usage: bool,
        on_done: Option<OnStreamed>,
    }
    let state = St {
        choices: (0..meta.n).map(|i| Choice::new(&meta, i)).collect(),
        left: meta.n,
        completion_tokens: 0,
        meta,
        rx,
        pending: first,
        done: false,
        include_usage,
        on_done,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(b), st));
            }
            if st.done {
                return None;
            }
            let Some((i, event)) = st.rx.recv().await else {
                st.pending.push_back(sse(&ApiError::unavailable().body()));
                st.done = true;
                continue;
            };
            let St {
                meta,
                choices,
                pending,
                completion_tokens,
                left,
                include_usage,
                done,
                on_done,
                ..
            } = &mut st;
            let Some(choice) = choices.get_mut(i) else {
                continue;
            };
            let pieces = match meta.absorb(choice, event) {
                Ok(p) => p,
                Err(e) => {
                    pending.push_back(sse(&e.body()));
                    *done = true;
                    continue;
                }
            };
            if on_done.is_some() {
                choice.collect(pieces.clone());
            }
            let chat = meta.endpoint == Endpoint::Chat;
            for piece in pieces {
                let c = match piece {
                    Piece::Content(text) => {
                        let lp = meta.logprobs_value(std::mem::take(&mut choice.logprobs));
                        if chat {
                            json!({"index": i, "delta": {"content": text}, "logprobs": lp, "finish_reason": null})
                        } else {
                            json!({"index": i, "text": text, "logprobs": lp, "finish_reason": null})
                        }
                    }
                    Piece::Start { index, id, name } => {
                        let call = json!({"index": index, "id": id, "type": "function",
                                          "function": {"name": name, "arguments": ""}});
                        json!({"index": i, "delta": {"tool_calls": [call]}, "logprobs": null, "finish_reason": null})
                    }
                    Piece::Arguments { index, text } => {
                        let call =
                            json!({"index": index, "function": {"name": "", "arguments": text}});
                        json!({"index": i, "delta": {"tool_calls": [call]}, "logprobs": null, "finish_reason": null})
                    }
                };
                pending.push_back(sse(&meta.envelope(true, json!([c]))));
            }
            let Some((stop, tokens)) = choice.done else {
                continue;
            };
            *completion_tokens += tokens;
            *left -= 1;
            let mut finish = finish_reason(stop);
            if choice.reader.has_calls() && stop == StopReason::EndToken {
                finish = "tool_calls";
            }
            let lp = meta.logprobs_value(std::mem::take(&mut choice.logprobs));
            let c = if chat {
                json!({"index": i, "delta": {}, "logprobs": lp, "finish_reason": finish})
            } else {
                json!({"index": i, "text": "", "logprobs": lp, "finish_reason": finish})
            };
            pending.push_back(sse(&meta.envelope(true, json!([c]))));
            if *left == 0 {
                if *include_usage {
                    let mut last = meta.envelope(true, json!([]));
                    last["usage"] = meta.usage(*completion_tokens);
                    pending.push_back(sse(&last));
                }
                pending.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                *done = true;
                if let Some(on_done) = on_done.take() {
                    on_done(whole_body(meta, std::mem::take(choices)));
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| ApiError::internal(&e).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_tokenizer::{SpecialTokenPolicy, StreamDecoder};

    /// Ids mistral-common generates for assistant tool calls, read back through the events the
    /// scheduler sends, give the calls mistral-common's own decoder reads from them.
    #[test]
    fn tool_calls_read_back_as_mistral_common_decodes_them() {
        let fixture: Value =
            serde_json::from_str(include_str!("../tests/fixtures/tool_calls.json")).unwrap();
        let home = std::env::var_os("BORA_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/bora")
            });
        for case in fixture["cases"].as_array().unwrap() {
            let name = case["tokenizer"].as_str().unwrap();
            let path = home.join("tokenizers").join(name);
            let tok = Arc::new(
                Tokenizer::from_file(&path)
                    .unwrap_or_else(|e| panic!("{e}: run scripts/fetch-tokenizers.sh")),
            );
            let meta = Meta {
                id: "x".into(),
                created: 0,
                model: "m".into(),
                endpoint: Endpoint::Chat,
                prompt_tokens: 0,
                n: 1,
                logprobs: false,
                calls: Some(ToolCallSyntax::Mistral),
                marker_token: tok.token_id("[TOOL_CALLS]"),
                tokenizer: tok.clone(),
                id_seed: 1,
            };
            let ids: Vec<u32> = case["generated"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            // The scheduler stops at the end token: it is neither decoded nor sent.
            assert_eq!(Some(*ids.last().unwrap()), tok.eos_id());
            let mut choice = Choice::new(&meta, 0);
            let mut decoder = StreamDecoder::new(&tok, SpecialTokenPolicy::Skip);
            for &id in &ids[..ids.len() - 1] {
                let token = SampledToken {
                    id,
                    logprob: None,
                    top: Vec::new(),
                };
                let pieces = meta.absorb(&mut choice, Event::Token(token)).unwrap();
                choice.collect(pieces);
                let text = decoder.push(id);
                if !text.is_empty() {
                    let pieces = meta.absorb(&mut choice, Event::Text(text)).unwrap();
                    choice.collect(pieces);
                }
            }
            let tail = decoder.finish();
            if !tail.is_empty() {
                let pieces = meta.absorb(&mut choice, Event::Text(tail)).unwrap();
                choice.collect(pieces);
            }
            let done = Event::Done {
                stop: StopReason::EndToken,
                completion_tokens: ids.len(),
            };
            let pieces = meta.absorb(&mut choice, done).unwrap();
            choice.collect(pieces);
            let want = case["calls"].as_array().unwrap();
            assert_eq!(choice.calls.len(), want.len(), "{name}: {case}");
            let model_ids = choice.reader.model_ids();
            for ((id, call_name, arguments), (want, model_id)) in
                choice.calls.iter().zip(want.iter().zip(model_ids))
            {
                assert!(is_mistral_id(id), "{name}: a fresh id {id:?}");
                assert_eq!(model_id.as_deref(), want["id"].as_str(), "{name}");
                assert_eq!(call_name, &want["name"], "{name}");
                let args: Value = serde_json::from_str(arguments).unwrap();
                assert_eq!(args, want["arguments"], "{name}");
            }
            assert_eq!(choice.text, case["content"].as_str().unwrap(), "{name}");
        }
    }
}
