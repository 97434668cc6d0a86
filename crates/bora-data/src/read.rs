//! JSONL readers for the three dataset shapes, and the checks that keep bad lines out of a run.
//!
//! Conversations are parsed by `bora_tokenizer::chat::Conversation` (the parser serving uses);
//! this module adds what only training cares about: the turn order must make sense, every tool
//! call is answered, and something is left to learn.

use std::io::{BufRead, BufReader};
use std::path::Path;

use bora_tokenizer::chat::{ChatError, Conversation, JsonValue, Role};

use crate::error::{DataError, LineError};

/// One training example as the file gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum Example {
    /// `{"messages": [...], "tools": [...]}` (mistral-finetune / OpenAI shape).
    Chat(Conversation),
    /// `{"prompt": ..., "completion": ...}`: one user turn, one trained assistant turn.
    Completion { prompt: String, completion: String },
    /// `{"text": ...}`: plain text, every token trained.
    Text(String),
}

/// An example and the line it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub line: usize,
    pub example: Example,
}

/// Everything read from one file: good records and every bad line.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub records: Vec<Record>,
    pub errors: Vec<LineError>,
}

/// Reads and validates every line of `path`; blank lines are skipped. Only a failure to read
/// the file is an `Err`: bad lines are collected in [`ReadOutcome::errors`].
pub fn read_jsonl(path: &Path) -> Result<ReadOutcome, DataError> {
    read_jsonl_limited(path, usize::MAX)
}

/// The longest line [`read_jsonl_limited`] takes for examples of at most `seq_len` tokens:
/// 256 bytes a token (the longest vocabulary pieces, JSON-escaped, stay below that), and at
/// least 1 MiB. A longer line can only be an example far beyond the sequence length, which
/// would take minutes and gigabytes to tokenize only to be cut.
pub fn line_byte_limit(seq_len: usize) -> usize {
    seq_len.saturating_mul(256).max(1 << 20)
}

/// [`read_jsonl`], refusing every line longer than `max_line_bytes` as a bad line without
/// parsing it or holding more than `max_line_bytes` of it in memory.
pub fn read_jsonl_limited(path: &Path, max_line_bytes: usize) -> Result<ReadOutcome, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut out = ReadOutcome::default();
    let mut bytes = Vec::new();
    for line in 1.. {
        bytes.clear();
        let Some(length) = read_line(&mut reader, &mut bytes, max_line_bytes).map_err(io)? else {
            break;
        };
        let parsed = if length > max_line_bytes {
            Err((
                "json".into(),
                format!(
                    "the line is {length} bytes, far more than the sequence length can hold (at most {max_line_bytes} bytes); split the example or raise seq_len"
                ),
            ))
        } else {
            match std::str::from_utf8(&bytes) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => parse_line(text.trim_end_matches(['\n', '\r'])),
                Err(e) => Err(("json".into(), format!("not UTF-8 text ({e})"))),
            }
        };
        match parsed {
            Ok(example) => out.records.push(Record { line, example }),
            Err((field, what)) => out.errors.push(LineError {
                file: path.to_path_buf(),
                line,
                field,
                what,
            }),
        }
    }
    Ok(out)
}

/// Appends the next line (with its newline) to `buf`, keeping at most `limit` bytes of it
/// and skipping the rest. Returns the line's whole length, `None` at the end of the file.
fn read_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<usize>> {
    let mut length = 0usize;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok((length > 0).then_some(length));
        }
        let (take, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = limit.saturating_sub(buf.len()).min(take);
        buf.extend_from_slice(&chunk[..room]);
        length = length.saturating_add(take);
        reader.consume(take);
        if end {
            return Ok(Some(length));
        }
    }
}

/// Parses one JSONL line into an example, or `(field, what is wrong)`.
pub fn parse_line(text: &str) -> Result<Example, (String, String)> {
    let value: JsonValue = serde_json::from_str(text)
        .map_err(|e| ("json".to_string(), format!("invalid JSON: {e}")))?;
    if !matches!(value, JsonValue::Object(_)) {
        return Err(("json".into(), "each line must be a JSON object".into()));
    }
    if value.get("messages").is_some() {
        let conv = Conversation::from_value(&value).map_err(chat_field)?;
        check_training_conversation(&conv)?;
        return Ok(Example::Chat(conv));
    }
    if value.get("prompt").is_some() || value.get("completion").is_some() {
        let prompt = string_field(&value, "prompt", true)?;
        let completion = string_field(&value, "completion", false)?;
        return Ok(Example::Completion { prompt, completion });
    }
    if value.get("text").is_some() {
        return Ok(Example::Text(string_field(&value, "text", false)?));
    }
    Err((
        "messages".into(),
        "is missing: a line needs \"messages\", \"prompt\" and \"completion\", or \"text\"".into(),
    ))
}

fn string_field(
    value: &JsonValue,
    key: &str,
    may_be_empty: bool,
) -> Result<String, (String, String)> {
    match value.get(key) {
        Some(JsonValue::String(s)) if s.is_empty() && !may_be_empty => {
            Err((key.into(), "is empty".into()))
        }
        Some(JsonValue::String(s)) => Ok(s.clone()),
        Some(_) => Err((key.into(), "must be a string".into())),
        None => Err((key.into(), "is missing".into())),
    }
}

/// The chat parser's or format's error as `(field, what)`, the field prefixed by its message.
pub(crate) fn chat_field(e: ChatError) -> (String, String) {
    match e {
        ChatError::Field {
            index: Some(i),
            field,
            reason,
        } => (format!("messages[{i}].{field}"), reason),
        ChatError::Field {
            index: None,
            field,
            reason,
        } => (field, reason),
        other => ("messages".into(), other.to_string()),
    }
}

fn at(i: usize, field: &str, what: impl Into<String>) -> (String, String) {
    (format!("messages[{i}].{field}"), what.into())
}

/// What a conversation must satisfy to be trained on, whatever the chat format: mistral-common's
/// role order (system/user/assistant/tool), every tool call answered by a tool result before the
/// conversation moves on (a final assistant message may end in calls: it teaches the call), no
/// empty assistant turn, an assistant message last, and at least one trained message.
fn check_training_conversation(conv: &Conversation) -> Result<(), (String, String)> {
    let messages = &conv.messages;
    let Some(last) = messages.last() else {
        return Err(("messages".into(), "is empty".into()));
    };
    // Calls of the latest assistant message still waiting for a result: (message, call).
    let mut pending: Vec<(usize, usize)> = Vec::new();
    let mut prev: Option<Role> = None;
    let mut seen_user = false;
    for (i, m) in messages.iter().enumerate() {
        if m.role == Role::Assistant && m.text().is_empty() && m.tool_calls.is_empty() {
            return Err(at(
                i,
                "content",
                "empty assistant turn: give content or tool_calls",
            ));
        }
        let order_error = if matches!(m.role, Role::Assistant | Role::Tool) && !seen_user {
            Some("before the first user message".to_string())
        } else {
            match (prev, m.role) {
                (Some(p @ (Role::System | Role::User)), Role::Tool)
                | (Some(p @ (Role::Assistant | Role::Tool)), Role::System) => {
                    Some(format!("after a {} message", p.as_str()))
                }
                _ => None,
            }
        };
        if let Some(when) = order_error {
            return Err(at(
                i,
                "role",
                format!(
                    "{} {} message cannot come {when}",
                    if m.role == Role::Assistant { "an" } else { "a" },
                    m.role.as_str()
                ),
            ));
        }
        seen_user |= m.role == Role::User;
        match m.role {
            Role::Tool => {
                let matching = pending.iter().position(|&(k, j)| {
                    let id = messages[k].tool_calls[j].id.as_deref();
                    m.tool_call_id.is_none() || id.is_none() || id == m.tool_call_id.as_deref()
                });
                match matching {
                    Some(p) => {
                        pending.remove(p);
                    }
                    None if pending.is_empty() => {
                        return Err(at(i, "role", "a tool result without a tool call before it"))
                    }
                    None => {
                        return Err(at(
                            i,
                            "tool_call_id",
                            format!(
                                "is {:?}; no open tool call has this id",
                                m.tool_call_id.as_deref().unwrap_or_default()
                            ),
                        ))
                    }
                }
            }
            _ => {
                if let Some(&(k, j)) = pending.first() {
                    return Err(at(
                        k,
                        &format!("tool_calls[{j}]"),
                        format!(
                            "tool call {:?} has no tool result",
                            messages[k].tool_calls[j].name
                        ),
                    ));
                }
                if m.role == Role::Assistant {
                    pending = (0..m.tool_calls.len()).map(|j| (i, j)).collect();
                }
            }
        }
        prev = Some(m.role);
    }
    let n = messages.len();
    if last.role != Role::Assistant {
        return Err(at(
            n - 1,
            "role",
            format!(
                "is {}; a training conversation must end with an assistant message",
                last.role.as_str()
            ),
        ));
    }
    if !messages.iter().any(|m| m.is_trained()) {
        return Err((
            "messages".into(),
            "nothing to train on: every assistant message has weight 0".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> String {
        let (field, what) = parse_line(line).expect_err(line);
        format!("{field}: {what}")
    }

    #[test]
    fn shapes() {
        let chat = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#;
        assert!(matches!(parse_line(chat), Ok(Example::Chat(_))));
        assert_eq!(
            parse_line(r#"{"prompt": "a", "completion": "b"}"#),
            Ok(Example::Completion {
                prompt: "a".into(),
                completion: "b".into()
            })
        );
        assert_eq!(
            parse_line(r#"{"text": "t"}"#),
            Ok(Example::Text("t".into()))
        );
    }

    #[test]
    fn a_final_tool_call_may_stay_unanswered() {
        let line = r#"{"messages": [{"role": "user", "content": "w?"}, {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "function": {"name": "f", "arguments": "{}"}}]}]}"#;
        assert!(parse_line(line).is_ok());
    }

    #[test]
    fn tool_results_pair_by_id() {
        let call = |id: &str| {
            format!(r#"{{"id": "{id}", "function": {{"name": "f", "arguments": "{{}}"}}}}"#)
        };
        let line = format!(
            r#"{{"messages": [{{"role": "user", "content": "q"}}, {{"role": "assistant", "tool_calls": [{}, {}]}}, {{"role": "tool", "tool_call_id": "bbbbbbbbb", "content": "2"}}, {{"role": "tool", "tool_call_id": "aaaaaaaaa", "content": "1"}}, {{"role": "assistant", "content": "3"}}]}}"#,
            call("aaaaaaaaa"),
            call("bbbbbbbbb")
        );
        assert!(parse_line(&line).is_ok(), "{:?}", parse_line(&line));
        let wrong = line.replace(
            r#""tool_call_id": "aaaaaaaaa""#,
            r#""tool_call_id": "ccccccccc""#,
        );
        assert_eq!(
            err(&wrong),
            r#"messages[3].tool_call_id: is "ccccccccc"; no open tool call has this id"#
        );
    }

    #[test]
    fn ending_and_weights() {
        assert_eq!(
            err(r#"{"messages": [{"role": "user", "content": "q"}]}"#),
            "messages[0].role: is user; a training conversation must end with an assistant message"
        );
        assert_eq!(
            err(
                r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}"#
            ),
            "messages: nothing to train on: every assistant message has weight 0"
        );
        assert_eq!(err(r#"{"prompt": "q"}"#), "completion: is missing");
        assert_eq!(err(r#"{"text": 3}"#), "text: must be a string");
        assert_eq!(err("[1]"), "json: each line must be a JSON object");
    }
}
