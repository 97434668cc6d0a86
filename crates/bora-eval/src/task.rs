//! Test examples → what the runner needs: the prompt ids (the conversation up to the last
//! assistant turn, formatted by the same chat format training used, ending in the generation
//! prompt), the expected answer, and the full example's ids and loss mask for the NLL.

use std::path::Path;

use bora_data::{read_jsonl, Encoder, Example};
use bora_tokenizer::chat::{ChatFormat, Content, Conversation, JsonValue, Message, Role};
use bora_tokenizer::Tokenizer;

use crate::error::{EvalError, Result};
use crate::metric::Metric;

/// One held-out example, ready to run.
#[derive(Debug, Clone)]
pub struct EvalItem {
    /// Line in the test file.
    pub line: usize,
    /// The last user message, for the report.
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    /// The last assistant message.
    pub expected: String,
    /// The whole example and its loss mask, for teacher-forced NLL.
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

/// Reads `path` and prepares at most `limit` examples. Any bad line, an example that does not
/// end with an assistant message, or an expected answer the metric can never accept is an
/// error naming the line.
pub fn load_items(
    path: &Path,
    tok: &Tokenizer,
    metric: &Metric,
    limit: Option<usize>,
) -> Result<Vec<EvalItem>> {
    let outcome = read_jsonl(path)?;
    if let Some(e) = outcome.errors.first() {
        return Err(EvalError::Example {
            path: path.to_path_buf(),
            line: e.line,
            what: format!("{}: {}", e.field, e.what),
        });
    }
    let format = ChatFormat::from_tokenizer(tok)?;
    let encoder = Encoder::new(tok)?;
    let mut items = Vec::new();
    for record in outcome.records.iter().take(limit.unwrap_or(usize::MAX)) {
        let bad = |what: String| EvalError::Example {
            path: path.to_path_buf(),
            line: record.line,
            what,
        };
        let conv = match &record.example {
            Example::Chat(conv) => conv.clone(),
            Example::Completion { prompt, completion } => Conversation {
                messages: vec![
                    message(Role::User, prompt),
                    message(Role::Assistant, completion),
                ],
                tools: Vec::new(),
            },
            Example::Text(_) => return Err(bad(
                "a `text` example has no answer to score; use `messages` or `prompt`/`completion`"
                    .into(),
            )),
        };
        let (last, context) = conv
            .messages
            .split_last()
            .expect("parsed conversations are non-empty");
        let calls_expected = matches!(metric, Metric::ToolCall);
        if last.role != Role::Assistant || (!last.tool_calls.is_empty() && !calls_expected) {
            return Err(bad(format!(
                "the example must end with an assistant message holding the expected answer, \
                 not a {} message",
                last.role.as_str()
            )));
        }
        let expected = if calls_expected {
            expected_calls(last)
        } else {
            last.text()
        };
        metric.check_expected(&expected).map_err(bad)?;
        let prompt_conv = Conversation {
            messages: context.to_vec(),
            tools: conv.tools.clone(),
        };
        let prompt_ids = format
            .encode(tok, &prompt_conv, true)
            .map_err(|e| bad(e.to_string()))?
            .ids;
        let full = encoder
            .encode(&record.example)
            .map_err(|e| bad(e.to_string()))?;
        let prompt = context
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(Message::text)
            .unwrap_or_default();
        items.push(EvalItem {
            line: record.line,
            prompt,
            prompt_ids,
            expected,
            ids: full.ids,
            mask: full.mask,
        });
    }
    if items.is_empty() {
        return Err(EvalError::Invalid {
            path: path.to_path_buf(),
            what: "no examples to evaluate".into(),
        });
    }
    Ok(items)
}

/// The expected answers of a JSONL file (each example's last assistant message, or its
/// completion), for [`Metric::infer`]; examples without one (`text`, a last turn that is not
/// the assistant's) are left out.
pub fn expected_answers(path: &Path) -> Result<Vec<String>> {
    let outcome = read_jsonl(path)?;
    Ok(outcome
        .records
        .iter()
        .filter_map(|record| match &record.example {
            Example::Chat(conv) => conv
                .messages
                .last()
                .filter(|m| m.role == Role::Assistant && m.tool_calls.is_empty())
                .map(Message::text),
            Example::Completion { completion, .. } => Some(completion.clone()),
            Example::Text(_) => None,
        })
        .collect())
}

/// The calls of an assistant message as the JSON list the `tool_call` metric reads.
fn expected_calls(m: &Message) -> String {
    let calls: Vec<serde_json::Value> = m
        .tool_calls
        .iter()
        .map(|c| {
            let arguments = match &c.arguments {
                JsonValue::String(s) => {
                    serde_json::from_str(s).unwrap_or(serde_json::Value::String(s.clone()))
                }
                other => serde_json::from_str(&other.to_python_json()).unwrap_or_default(),
            };
            serde_json::json!({"name": c.name, "arguments": arguments})
        })
        .collect();
    serde_json::Value::Array(calls).to_string()
}

fn message(role: Role, text: &str) -> Message {
    Message {
        role,
        content: Some(Content::Text(text.to_owned())),
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
        weight: None,
        prefix: false,
    }
}
