//! The conversation every chat format reads: the OpenAI / mistral-common JSON shape.
//!
//! Parsing goes through [`JsonValue`] rather than `#[derive(Deserialize)]` so that every error
//! names the message index and the field (a data file of 100k conversations is fixed by line
//! and field, not by "invalid type: map"), and so that tool parameters and call arguments keep
//! their key order, which is part of the prompt text.

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Deserializer, Serialize};

use super::json::JsonValue;
use super::ChatError;

/// A chat: messages and the tools the assistant may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// Message content: a string, or a list of `{"type": "text", "text": ...}` parts.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Text(String),
    Parts(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Option<Content>,
    pub tool_calls: Vec<ToolCall>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
    /// `Some(0.0)` excludes an assistant message from the loss; `None` and `Some(1.0)` train it.
    /// Kept as given because mistral-common merges neighbouring assistant messages only when
    /// their weights are equal, and a missing weight differs from 1.
    pub weight: Option<f64>,
    /// The assistant message is a start the model continues (serving only; no EOS after it).
    pub prefix: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// `None` where the data gave no id; mistral-common then uses the literal `"null"`.
    pub id: Option<String>,
    pub name: String,
    /// A JSON string (as OpenAI sends it) or an object.
    pub arguments: JsonValue,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: JsonValue,
}

impl Message {
    /// Whether a fine-tune learns this message (assistant role, weight not 0).
    pub fn is_trained(&self) -> bool {
        self.role == Role::Assistant && self.weight != Some(0.0)
    }

    /// Content as one string, text parts joined by `"\n\n"` as mistral-common joins chunks;
    /// empty parts are skipped, as there.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => join_nonempty(parts.iter().map(String::as_str)),
        }
    }

    /// Python truthiness of `content`: `None`, `""` and `[]` are false.
    pub(crate) fn has_content(&self) -> bool {
        match &self.content {
            None => false,
            Some(Content::Text(t)) => !t.is_empty(),
            Some(Content::Parts(parts)) => !parts.is_empty(),
        }
    }
}

/// Joins non-empty texts with `"\n\n"`, mistral-common's separator for merged messages and
/// chunks alike (v1 to v7).
pub(crate) fn join_nonempty<'a>(texts: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for t in texts.into_iter().filter(|t| !t.is_empty()) {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(t);
    }
    out
}

impl Conversation {
    /// Parses a conversation from JSON text.
    pub fn from_json(text: &str) -> Result<Conversation, ChatError> {
        let value: JsonValue =
            serde_json::from_str(text).map_err(|e| ChatError::Json(e.to_string()))?;
        Conversation::from_value(&value)
    }

    /// Builds a conversation from a parsed JSON object with `messages` and optional `tools`.
    pub fn from_value(value: &JsonValue) -> Result<Conversation, ChatError> {
        let JsonValue::Object(_) = value else {
            return Err(top("conversation", "must be a JSON object"));
        };
        let messages = match value.get("messages") {
            Some(JsonValue::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, m)| parse_message(i, m))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(top("messages", "must be a list")),
            None => return Err(top("messages", "is missing")),
        };
        let tools = match value.get("tools") {
            None | Some(JsonValue::Null) => Vec::new(),
            Some(JsonValue::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, t)| parse_tool(i, t))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(top("tools", "must be a list")),
        };
        Ok(Conversation { messages, tools })
    }
}

fn top(field: &str, reason: &str) -> ChatError {
    ChatError::Field {
        index: None,
        field: field.into(),
        reason: reason.into(),
    }
}

fn bad(index: usize, field: &str, reason: impl Into<String>) -> ChatError {
    ChatError::Field {
        index: Some(index),
        field: field.into(),
        reason: reason.into(),
    }
}

fn opt_string(i: usize, m: &JsonValue, field: &str) -> Result<Option<String>, ChatError> {
    match m.get(field) {
        None | Some(JsonValue::Null) => Ok(None),
        Some(JsonValue::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(i, field, "must be a string")),
    }
}

fn parse_message(i: usize, m: &JsonValue) -> Result<Message, ChatError> {
    if !matches!(m, JsonValue::Object(_)) {
        return Err(bad(i, "message", "must be a JSON object"));
    }
    let role = match m.get("role") {
        Some(JsonValue::String(r)) => match r.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(bad(
                    i,
                    "role",
                    format!("is {other:?}; expected system, user, assistant or tool"),
                ))
            }
        },
        Some(_) => return Err(bad(i, "role", "must be a string")),
        None => return Err(bad(i, "role", "is missing")),
    };
    let content = match m.get("content") {
        None | Some(JsonValue::Null) => None,
        Some(JsonValue::String(s)) => Some(Content::Text(s.clone())),
        Some(JsonValue::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let field = format!("content[{j}]");
                match (part.get("type"), part.get("text")) {
                    (Some(JsonValue::String(t)), Some(JsonValue::String(text))) if t == "text" => {
                        texts.push(text.clone())
                    }
                    (Some(JsonValue::String(t)), _) if t != "text" => {
                        return Err(bad(
                            i,
                            &field,
                            format!("has type {t:?}; only \"text\" parts are supported"),
                        ))
                    }
                    _ => {
                        return Err(bad(
                            i,
                            &field,
                            "must be {\"type\": \"text\", \"text\": string}",
                        ))
                    }
                }
            }
            Some(Content::Parts(texts))
        }
        Some(_) => {
            return Err(bad(
                i,
                "content",
                "must be a string or a list of text parts",
            ))
        }
    };
    let tool_calls = match m.get("tool_calls") {
        None | Some(JsonValue::Null) => Vec::new(),
        Some(JsonValue::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(j, c)| parse_tool_call(i, j, c))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad(i, "tool_calls", "must be a list")),
    };
    let weight = match m.get("weight") {
        None | Some(JsonValue::Null) => None,
        Some(JsonValue::Int(w)) if *w == 0 || *w == 1 => Some(*w as f64),
        Some(JsonValue::Float(w)) if *w == 0.0 || *w == 1.0 => Some(*w),
        Some(_) => return Err(bad(i, "weight", "must be 0 or 1")),
    };
    let prefix = match m.get("prefix") {
        None | Some(JsonValue::Null) => false,
        Some(JsonValue::Bool(b)) => *b,
        Some(_) => return Err(bad(i, "prefix", "must be true or false")),
    };
    if role != Role::Assistant {
        for (field, set) in [
            ("tool_calls", !tool_calls.is_empty()),
            ("weight", weight.is_some()),
            ("prefix", prefix),
        ] {
            if set {
                return Err(bad(
                    i,
                    field,
                    format!(
                        "is only allowed on assistant messages, not {}",
                        role.as_str()
                    ),
                ));
            }
        }
    }
    if role != Role::Assistant && role != Role::Tool && content.is_none() {
        return Err(bad(i, "content", "is missing"));
    }
    if role == Role::Tool && content.is_none() {
        return Err(bad(
            i,
            "content",
            "is missing (a tool result needs content)",
        ));
    }
    Ok(Message {
        role,
        content,
        tool_calls,
        tool_call_id: opt_string(i, m, "tool_call_id")?,
        name: opt_string(i, m, "name")?,
        weight,
        prefix,
    })
}

fn parse_tool_call(i: usize, j: usize, c: &JsonValue) -> Result<ToolCall, ChatError> {
    let field = |f: &str| format!("tool_calls[{j}].{f}");
    let id = match c.get("id") {
        None | Some(JsonValue::Null) => None,
        Some(JsonValue::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad(i, &field("id"), "must be a string")),
    };
    let Some(function) = c.get("function") else {
        return Err(bad(i, &field("function"), "is missing"));
    };
    let name = match function.get("name") {
        Some(JsonValue::String(s)) => s.clone(),
        _ => return Err(bad(i, &field("function.name"), "must be a string")),
    };
    // mistral-common's FunctionCall turns a missing/null argument into "{}"; an object is
    // serialized, a string kept.
    let arguments = match function.get("arguments") {
        None | Some(JsonValue::Null) => JsonValue::String("{}".into()),
        Some(v @ (JsonValue::String(_) | JsonValue::Object(_))) => v.clone(),
        Some(_) => {
            return Err(bad(
                i,
                &field("function.arguments"),
                "must be a JSON string or an object",
            ))
        }
    };
    Ok(ToolCall {
        id,
        name,
        arguments,
    })
}

fn parse_tool(k: usize, t: &JsonValue) -> Result<Tool, ChatError> {
    let err = |f: &str, reason: &str| ChatError::Field {
        index: None,
        field: format!("tools[{k}].{f}"),
        reason: reason.into(),
    };
    match t.get("type") {
        None => {}
        Some(JsonValue::String(s)) if s == "function" => {}
        Some(_) => return Err(err("type", "must be \"function\"")),
    }
    let Some(function) = t.get("function") else {
        return Err(err("function", "is missing"));
    };
    let name = match function.get("name") {
        Some(JsonValue::String(s)) => s.clone(),
        _ => return Err(err("function.name", "must be a string")),
    };
    let description = match function.get("description") {
        None | Some(JsonValue::Null) => String::new(),
        Some(JsonValue::String(s)) => s.clone(),
        Some(_) => return Err(err("function.description", "must be a string")),
    };
    let parameters = match function.get("parameters") {
        None | Some(JsonValue::Null) => JsonValue::Object(Vec::new()),
        Some(v @ JsonValue::Object(_)) => v.clone(),
        Some(_) => {
            return Err(err(
                "function.parameters",
                "must be a JSON object (a JSON schema)",
            ))
        }
    };
    Ok(Tool {
        name,
        description,
        parameters,
    })
}

impl<'de> Deserialize<'de> for Conversation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = JsonValue::deserialize(d)?;
        Conversation::from_value(&value).map_err(serde::de::Error::custom)
    }
}

impl Tool {
    /// The OpenAI / mistral-common shape: `{"type": "function", "function": {...}}`.
    pub fn to_json(&self) -> JsonValue {
        JsonValue::Object(vec![
            ("type".into(), JsonValue::String("function".into())),
            (
                "function".into(),
                JsonValue::Object(vec![
                    ("name".into(), JsonValue::String(self.name.clone())),
                    (
                        "description".into(),
                        JsonValue::String(self.description.clone()),
                    ),
                    ("parameters".into(), self.parameters.clone()),
                ]),
            ),
        ])
    }
}

/// Messages serialize in the shape Hugging Face chat templates read (absent fields left out,
/// so `message.tool_calls is defined` works as in Python).
impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("role", self.role.as_str())?;
        match &self.content {
            None => map.serialize_entry("content", &())?,
            Some(Content::Text(t)) => map.serialize_entry("content", t)?,
            Some(Content::Parts(parts)) => {
                let parts: Vec<JsonValue> = parts
                    .iter()
                    .map(|t| {
                        JsonValue::Object(vec![
                            ("type".into(), JsonValue::String("text".into())),
                            ("text".into(), JsonValue::String(t.clone())),
                        ])
                    })
                    .collect();
                map.serialize_entry("content", &parts)?
            }
        }
        if !self.tool_calls.is_empty() {
            let calls: Vec<JsonValue> = self
                .tool_calls
                .iter()
                .map(|c| {
                    let mut entries = Vec::new();
                    if let Some(id) = &c.id {
                        entries.push(("id".into(), JsonValue::String(id.clone())));
                    }
                    entries.push(("type".into(), JsonValue::String("function".into())));
                    entries.push((
                        "function".into(),
                        JsonValue::Object(vec![
                            ("name".into(), JsonValue::String(c.name.clone())),
                            ("arguments".into(), c.arguments.clone()),
                        ]),
                    ));
                    JsonValue::Object(entries)
                })
                .collect();
            map.serialize_entry("tool_calls", &calls)?;
        }
        if let Some(id) = &self.tool_call_id {
            map.serialize_entry("tool_call_id", id)?;
        }
        if let Some(name) = &self.name {
            map.serialize_entry("name", name)?;
        }
        map.end()
    }
}
