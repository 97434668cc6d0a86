//! What a chat request asks of the answer's shape: tool calls (`tools`, `tool_choice`) and
//! structured outputs (`response_format`), turned into a decoding constraint; the model's
//! tool-call output is read back by [`crate::calls`].
//!
//! Two ways of writing calls are read ([`ToolCallSyntax`]): Mistral's `[TOOL_CALLS]` control
//! token followed by a JSON list of `{"name", "arguments"}` objects (mistral-common's
//! v2/v3/v7 format, the one training uses), and the Hermes `<tool_call>{...}</tool_call>` of
//! Jinja templates such as Qwen's. `tool_choice: "required"` or a named function forces the
//! marker and then a call whose arguments follow the chosen tool's parameters schema (with
//! several tools, the name written first picks the schema); `"none"` forbids the marker.

use std::sync::Arc;

use bora_model::{JsonSchema, SchemaError};
use bora_tokenizer::chat::{ChatFormat, ToolCallSyntax};
use bora_tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::error::ApiError;

/// How a request's answer is constrained and read back.
#[derive(Default)]
pub(crate) struct Shape {
    /// Tokens forced first, then a JSON value of the schema.
    pub constraint: Option<(Vec<u32>, Arc<JsonSchema>)>,
    /// Tokens never sampled.
    pub suppressed: Vec<u32>,
    /// With tools on: how the model writes its calls.
    pub calls: Option<ToolCallSyntax>,
    /// The control token that opens the calls (absent from decoded text), if the syntax's
    /// marker is one.
    pub marker_token: Option<u32>,
}

const TOOL_CHOICE_VALUES: &str = "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}";

/// Reads `response_format` (either endpoint) and, for chat, `tools` and `tool_choice`.
pub(crate) fn read_shape(
    body: &Value,
    chat: Option<&ChatFormat>,
    tok: &Tokenizer,
) -> Result<Shape, ApiError> {
    let mut shape = Shape {
        constraint: response_format(body)?.map(|s| (Vec::new(), Arc::new(s))),
        ..Shape::default()
    };
    let tools = match body.get("tools") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(t)) => t.as_slice(),
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be a list")),
    };
    let choice = body.get("tool_choice").filter(|c| !c.is_null());
    if tools.is_empty() {
        if choice.is_some() {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` is only allowed when `tools` are given",
            ));
        }
        return Ok(shape);
    }
    let Some(format) = chat else {
        return Ok(shape);
    };
    let syntax = match format {
        ChatFormat::Jinja(j) if !j.supports_tools() => {
            return Err(ApiError::invalid(
                "tools",
                "this model's chat template does not define tool use (it never reads `tools`), so the tools would not reach the model; leave `tools` out, serve a model whose template handles them, or give `bora serve --chat-template` one that does",
            ))
        }
        _ => format.tool_call_syntax().ok_or_else(|| {
            ApiError::invalid(
                "tools",
                "this model's chat template writes tool calls in a form bora does not read back; bora reads Hermes-style <tool_call>{...}</tool_call> and Mistral's [TOOL_CALLS] calls",
            )
        })?,
    };
    let marker = syntax.open_marker();
    let marker_id = tok.token_id(marker);
    let marker_token = match syntax {
        ToolCallSyntax::Mistral => Some(marker_id.ok_or_else(|| {
            ApiError::invalid("tools", "this model's tokenizer has no [TOOL_CALLS] token")
        })?),
        // A plain-text marker is found in the text; a control token is skipped there.
        ToolCallSyntax::Hermes => marker_id.filter(|&id| tok.is_special(id)),
    };
    if shape.constraint.is_some() {
        return Err(ApiError::invalid(
            "response_format",
            "`response_format` together with `tools` is not supported; give one of them",
        ));
    }
    let names = tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tools",
                        format!("tools[{i}].function.name is missing or not a string"),
                    )
                })
        })
        .collect::<Result<Vec<&str>, _>>()?;
    shape.calls = Some(syntax);
    shape.marker_token = marker_token;
    // The tokens that open a forced call: Mistral's control token, or Hermes' marker and
    // the newline its templates write after it.
    let forced_prefix = match syntax {
        ToolCallSyntax::Mistral => marker_token.into_iter().collect(),
        ToolCallSyntax::Hermes => tok.encode_with_special(&format!("{marker}\n")),
    };
    // Calls of the tools in `chosen`: the name, written first, picks the arguments schema.
    let call = |chosen: &[usize]| {
        let alternatives: Vec<Value> = chosen
            .iter()
            .map(|&k| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": names[k]}, "arguments": parameters(&tools[k])},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        // As a union even for one tool: the name is then written first, so a stream can
        // start the call before its arguments.
        json!({"anyOf": alternatives})
    };
    let forced =
        |chosen: &[usize], at_most_one: bool| -> Result<(Vec<u32>, Arc<JsonSchema>), ApiError> {
            let schema = match syntax {
                ToolCallSyntax::Mistral => {
                    let mut list = json!({"type": "array", "minItems": 1, "items": call(chosen)});
                    if at_most_one {
                        list["maxItems"] = json!(1);
                    }
                    list
                }
                // One call: the constraint ends the answer after one JSON value.
                ToolCallSyntax::Hermes => call(chosen),
            };
            Ok((forced_prefix.clone(), Arc::new(compile(&schema, "tools")?)))
        };
    match choice {
        None => {}
        Some(Value::String(c)) if c == "auto" => {}
        Some(Value::String(c)) if c == "none" => {
            shape.suppressed.extend(marker_id);
            // Nothing is read back as a call: the answer is content.
            shape.calls = None;
            shape.marker_token = None;
        }
        // "any" is the Mistral API's name for "required".
        Some(Value::String(c)) if c == "required" || c == "any" => {
            let all: Vec<usize> = (0..tools.len()).collect();
            let one = body.get("parallel_tool_calls") == Some(&Value::Bool(false));
            shape.constraint = Some(forced(&all, one)?);
        }
        Some(named @ Value::Object(_)) => {
            let name = named
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid("tool_choice", TOOL_CHOICE_VALUES))?;
            let k = names.iter().position(|n| *n == name).ok_or_else(|| {
                ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` names {name:?}, which is not among `tools`"),
                )
            })?;
            shape.constraint = Some(forced(&[k], true)?);
        }
        Some(_) => return Err(ApiError::invalid("tool_choice", TOOL_CHOICE_VALUES)),
    }
    Ok(shape)
}

fn parameters(tool: &Value) -> Value {
    tool.pointer("/function/parameters")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}))
}

fn compile(schema: &Value, param: &str) -> Result<JsonSchema, ApiError> {
    JsonSchema::compile(schema).map_err(|e: SchemaError| ApiError::invalid(param, e.to_string()))
}

/// `response_format`: `text`, `json_object` (any object) or `json_schema` (its `schema`).
fn response_format(body: &Value) -> Result<Option<JsonSchema>, ApiError> {
    let Some(format) = body.get("response_format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let bad = |why: &str| ApiError::invalid("response_format", why.to_string());
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(JsonSchema::any_object())),
        Some("json_schema") => {
            let schema = format
                .pointer("/json_schema/schema")
                .ok_or_else(|| bad("`response_format.json_schema.schema` is missing"))?;
            compile(schema, "response_format").map(Some)
        }
        _ => Err(bad(
            "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// Whether `id` has the shape of Mistral's call ids: 9 characters a-z, A-Z, 0-9.
pub(crate) fn is_mistral_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A fresh id for a call in the model's own shape: Mistral's 9 characters, or OpenAI's
/// `call_` and 24 characters for other templates.
pub(crate) fn call_id(syntax: Option<ToolCallSyntax>, state: &mut u64) -> String {
    match syntax {
        Some(ToolCallSyntax::Hermes) => format!("call_{}", random_id(state, 24)),
        _ => random_id(state, 9),
    }
}

/// `len` characters a-z, A-Z, 0-9 from a counter-seeded generator (call ids need to be
/// unique within a conversation, not secret).
fn random_id(state: &mut u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = bora_model::Rng::new(*state);
    *state = rng.next_u64();
    (0..len)
        .map(|_| ALPHABET[(rng.next_u64() % ALPHABET.len() as u64) as usize] as char)
        .collect()
}
