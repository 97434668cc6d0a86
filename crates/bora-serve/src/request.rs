//! Reading OpenAI request bodies. Fields are read one by one from the parsed JSON so that
//! every bad value is answered with a 400 naming the field (`param`), as OpenAI does; fields
//! bora does not use (`frequency_penalty`, `user`, ...) are ignored, like other local servers.

use serde_json::Value;

use crate::error::ApiError;

/// The sampling and streaming fields shared by both completion endpoints.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Params {
    pub model: String,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with token counts.
    pub stream_usage: bool,
    /// Completions per prompt, sampled side by side (`n`).
    pub n: usize,
    /// Log-probabilities of the chosen tokens, with this many alternatives each (chat:
    /// `logprobs: true` and `top_logprobs`; completions: `logprobs: N`).
    pub logprobs: Option<usize>,
}

/// Most completions one request may ask for: each is a sequence of the batch.
pub(crate) const MAX_N: u64 = 16;
/// OpenAI's limits on alternatives per token: 20 (chat), 5 (completions).
const MAX_TOP_LOGPROBS: u64 = 20;
const MAX_COMPLETION_LOGPROBS: u64 = 5;

/// Parses the body; malformed JSON or a non-object is a 400.
pub(crate) fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

impl Params {
    /// Reads the fields of either endpoint; `chat` picks how `logprobs` is spelled.
    pub fn read(body: &Value, chat: bool) -> Result<Params, ApiError> {
        let model = match body.get("model") {
            Some(Value::String(m)) => m.clone(),
            Some(_) => return Err(ApiError::invalid("model", "`model` must be a string")),
            None => return Err(ApiError::invalid("model", "`model` is required")),
        };
        let n = opt_u64(body, "n")?.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be between 1 and {MAX_N}"),
            ));
        }
        let logprobs = if chat {
            let on = match body.get("logprobs") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "logprobs",
                        "`logprobs` must be true or false",
                    ))
                }
            };
            let top = opt_u64(body, "top_logprobs")?;
            if top.is_some_and(|t| t > MAX_TOP_LOGPROBS) {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"),
                ));
            }
            if top.is_some() && !on {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
            on.then(|| top.unwrap_or(0) as usize)
        } else {
            let top = opt_u64(body, "logprobs")?;
            if top.is_some_and(|t| t > MAX_COMPLETION_LOGPROBS) {
                return Err(ApiError::invalid(
                    "logprobs",
                    format!("`logprobs` must be between 0 and {MAX_COMPLETION_LOGPROBS}"),
                ));
            }
            top.map(|t| t as usize)
        };
        let max_tokens = match opt_u64(body, "max_completion_tokens")? {
            Some(m) => Some((m, "max_completion_tokens")),
            None => opt_u64(body, "max_tokens")?.map(|m| (m, "max_tokens")),
        };
        let max_tokens = match max_tokens {
            Some((0, field)) => {
                return Err(ApiError::invalid(
                    field,
                    format!("`{field}` must be at least 1"),
                ))
            }
            Some((m, _)) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            None => None,
        };
        let temperature = opt_f32(body, "temperature")?.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("`temperature` must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = opt_f32(body, "top_p")?.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("`top_p` must be in (0, 1], got {top_p}"),
            ));
        }
        let stop = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::invalid("stop", "`stop` must be a string or a list of strings")
                })?,
            Some(_) => {
                return Err(ApiError::invalid(
                    "stop",
                    "`stop` must be a string or a list of strings",
                ))
            }
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid("stop", "at most 4 stop sequences"));
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream",
                    "`stream` must be true or false",
                ))
            }
        };
        let stream_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Params {
            model,
            max_tokens,
            temperature,
            top_p,
            stop,
            seed: opt_u64(body, "seed")?,
            stream,
            stream_usage,
            n: n as usize,
            logprobs,
        })
    }
}

/// The prompt of `/v1/completions`: a string, or a list holding one string.
pub(crate) fn completion_prompt(body: &Value) -> Result<&str, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "`prompt` must be a string (or a list of one string)",
        )
    };
    match body.get("prompt") {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(items)) if items.len() == 1 => items[0].as_str().ok_or_else(bad),
        None => Err(ApiError::invalid("prompt", "`prompt` is required")),
        Some(_) => Err(bad()),
    }
}

fn opt_u64(body: &Value, key: &str) -> Result<Option<u64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::invalid(key, format!("`{key}` must be a non-negative integer"))
        }),
    }
}

fn opt_f32(body: &Value, key: &str) -> Result<Option<f32>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be a number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_defaults_when_only_the_model_is_given() {
        let p = Params::read(&json!({"model": "m"}), true).unwrap();
        assert_eq!(p.temperature, 1.0);
        assert_eq!(p.top_p, 1.0);
        assert_eq!(p.max_tokens, None);
        assert!(!p.stream);
        assert!(p.stop.is_empty());
    }

    #[test]
    fn each_bad_field_is_named_in_param() {
        for (body, param) in [
            (json!({}), "model"),
            (json!({"model": 3}), "model"),
            (json!({"model": "m", "temperature": "hot"}), "temperature"),
            (json!({"model": "m", "temperature": 2.5}), "temperature"),
            (json!({"model": "m", "top_p": 0}), "top_p"),
            (json!({"model": "m", "max_tokens": -1}), "max_tokens"),
            (json!({"model": "m", "max_tokens": 0}), "max_tokens"),
            (json!({"model": "m", "stop": [1]}), "stop"),
            (json!({"model": "m", "n": 0}), "n"),
            (json!({"model": "m", "n": 17}), "n"),
            (json!({"model": "m", "logprobs": 3}), "logprobs"),
            (json!({"model": "m", "top_logprobs": 2}), "top_logprobs"),
            (
                json!({"model": "m", "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (json!({"model": "m", "stream": "yes"}), "stream"),
            (json!({"model": "m", "seed": 1.5}), "seed"),
        ] {
            let e = Params::read(&body, true).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn stop_accepts_a_string_or_a_list() {
        let one = Params::read(&json!({"model": "m", "stop": "\n"}), true).unwrap();
        assert_eq!(one.stop, vec!["\n"]);
        let two = Params::read(&json!({"model": "m", "stop": ["a", "b"]}), true).unwrap();
        assert_eq!(two.stop, vec!["a", "b"]);
    }

    #[test]
    fn logprobs_are_spelled_per_endpoint() {
        let chat = json!({"model": "m", "logprobs": true, "top_logprobs": 3});
        assert_eq!(Params::read(&chat, true).unwrap().logprobs, Some(3));
        let completion = json!({"model": "m", "logprobs": 2, "n": 4});
        let p = Params::read(&completion, false).unwrap();
        assert_eq!((p.logprobs, p.n), (Some(2), 4));
        assert_eq!(
            Params::read(&json!({"model": "m", "logprobs": 6}), false)
                .unwrap_err()
                .param
                .as_deref(),
            Some("logprobs")
        );
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        assert_eq!(parse_body(b"{\"model\":").unwrap_err().status, 400);
        assert_eq!(parse_body(b"[1]").unwrap_err().status, 400);
    }
}
