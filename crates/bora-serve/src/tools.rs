//! What a chat request asks of the answer's shape: tool calls (`tools`, `tool_choice`) and
//! structured outputs (`response_format`), turned into a decoding constraint, and the
//! model's tool-call output turned back into OpenAI `tool_calls`.
//!
//! Mistral models write tool calls as the `[TOOL_CALLS]` control token followed by a JSON
//! list of `{"name", "arguments"}` objects (mistral-common's v2/v3/v7 format, the one
//! training uses), then end the turn. `tool_choice: "required"` or a named function forces
//! that token and a list that names a declared function (with the named function's
//! parameters schema); `"none"` forbids the token. Calls are sent to the client once a
//! choice has ended: Mistral's format writes a call's id after its arguments, and OpenAI's
//! first delta of a call carries the id.

use std::sync::Arc;

use bora_model::{JsonSchema, SchemaError};
use bora_tokenizer::chat::ChatFormat;
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
    /// With tools on: the token after which the model writes its calls.
    pub tool_token: Option<u32>,
}

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
    let tool_token = match format {
        ChatFormat::Mistral(_) => tok.token_id("[TOOL_CALLS]").ok_or_else(|| {
            ApiError::invalid("tools", "this model's tokenizer has no [TOOL_CALLS] token")
        })?,
        ChatFormat::Jinja(j) if !j.supports_tools() => {
            return Err(ApiError::invalid(
                "tools",
                "this model's chat template does not define tool use (it never reads `tools`), so the tools would not reach the model; leave `tools` out or serve a model whose template handles them",
            ))
        }
        ChatFormat::Jinja(_) => {
            return Err(ApiError::invalid(
                "tools",
                "bora reads tool calls back in Mistral's [TOOL_CALLS] format only; this model's Jinja template writes its own",
            ))
        }
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
    shape.tool_token = Some(tool_token);
    let call = |name: Value, arguments: Value| {
        json!({
            "type": "object",
            "properties": {"name": name, "arguments": arguments},
            "required": ["name", "arguments"],
        })
    };
    match choice {
        None => {}
        Some(Value::String(c)) if c == "auto" => {}
        Some(Value::String(c)) if c == "none" => shape.suppressed.push(tool_token),
        // "any" is the Mistral API's name for "required".
        Some(Value::String(c)) if c == "required" || c == "any" => {
            // One tool: its parameters hold; several: any arguments object, since which
            // schema applies depends on the name written before it.
            let arguments = match tools {
                [only] => parameters(only),
                _ => json!({"type": "object"}),
            };
            let mut schema = json!({
                "type": "array",
                "minItems": 1,
                "items": call(json!({"enum": names}), arguments),
            });
            if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
                schema["maxItems"] = json!(1);
            }
            shape.constraint = Some((vec![tool_token], Arc::new(compile(&schema, "tools")?)));
        }
        Some(named @ Value::Object(_)) => {
            let name = named
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice",
                        "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            let k = names.iter().position(|n| *n == name).ok_or_else(|| {
                ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` names {name:?}, which is not among `tools`"),
                )
            })?;
            let schema = json!({
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": call(json!({"const": name}), parameters(&tools[k])),
            });
            shape.constraint = Some((vec![tool_token], Arc::new(compile(&schema, "tools")?)));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
            ))
        }
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

/// One call as OpenAI returns it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub id: String,
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

/// Reads the text a Mistral model wrote after `[TOOL_CALLS]`: a JSON list of calls (or one
/// call object). A call without a valid id of its own gets a fresh one of Mistral's shape
/// (9 characters a-z, A-Z, 0-9). `None` when the text is not such a list.
pub(crate) fn parse_calls(text: &str, fresh_id: &mut impl FnMut() -> String) -> Option<Vec<Call>> {
    bora_tokenizer::chat::tool_call_items(text)?
        .into_iter()
        .map(|item| {
            let name = item.get("name")?.as_str()?.to_string();
            let arguments = match item.get("arguments") {
                None | Some(Value::Null) => "{}".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            let id = match item.get("id").and_then(Value::as_str) {
                Some(id) if is_mistral_id(id) => id.to_string(),
                _ => fresh_id(),
            };
            Some(Call {
                id,
                name,
                arguments,
            })
        })
        .collect()
}

fn is_mistral_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A call id in Mistral's shape from a counter-seeded generator (ids need to be unique within
/// a conversation, not secret).
pub(crate) fn mistral_id(state: &mut u64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = bora_model::Rng::new(*state);
    *state = rng.next_u64();
    (0..9)
        .map(|_| ALPHABET[(rng.next_u64() % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_keep_the_models_ids_and_get_fresh_ones_otherwise() {
        let mut n = 7u64;
        let mut fresh = || mistral_id(&mut n);
        let calls = parse_calls(
            r#"[{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcDEF123"}, {"name": "f", "arguments": "{\"x\": 1}"}]"#,
            &mut fresh,
        )
        .unwrap();
        assert_eq!(calls[0].id, "abcDEF123");
        assert_eq!(calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(calls[1].arguments, r#"{"x": 1}"#);
        assert!(is_mistral_id(&calls[1].id));
        assert_ne!(mistral_id(&mut 1), mistral_id(&mut 2));
        assert!(parse_calls("[]", &mut fresh).is_none());
        assert!(parse_calls("[{\"arguments\": {}}]", &mut fresh).is_none());
        assert!(parse_calls("not json", &mut fresh).is_none());
    }
}
