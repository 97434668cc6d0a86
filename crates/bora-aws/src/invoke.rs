//! Completions from an imported model: `InvokeModel`, and `InvokeModelWithResponseStream`
//! to show the answer as it is written.
//!
//! The body is Custom Model Import's text-completion format ("BedrockCompletion" in the user
//! guide's "Invoke your imported model"): `{"prompt", "max_gen_len", "temperature",
//! "top_p"}`, answered by `{"generation", "prompt_token_count", "generation_token_count",
//! "stop_reason"}`, and streamed as chunks of the same object each holding the next piece
//! of `generation`. The prompt is the conversation already formatted by the model's own chat
//! format, the same text training and `bora serve` format, so the imported model sees what
//! the local one sees.

use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::ResponseStream;
use serde_json::{json, Value};

use crate::error::{sdk_error, AwsError, Result};
use crate::Aws;

/// Sampling of one completion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InvokeParams {
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    pub top_p: f32,
}

/// The request body for `prompt`.
pub fn request_body(prompt: &str, params: &InvokeParams) -> Value {
    json!({
        "prompt": prompt,
        "max_gen_len": params.max_tokens,
        "temperature": decimal(params.temperature),
        "top_p": decimal(params.top_p),
    })
}

/// An `f32` as the decimal it was written as (0.95, not 0.949999988079071).
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The generated text of a response body (or of one streamed chunk).
pub fn response_text(action: &'static str, body: &[u8]) -> Result<String> {
    let bad = |what: String| AwsError::Response { action, what };
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON ({e})")))?;
    match value.get("generation") {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Null) => Ok(String::new()),
        _ => Err(bad(format!(
            "no `generation` text in {}",
            preview(&String::from_utf8_lossy(body))
        ))),
    }
}

/// The start of a body for an error message, never a whole multi-megabyte answer.
fn preview(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

impl Aws {
    fn runtime_client(&self) -> aws_sdk_bedrockruntime::Client {
        aws_sdk_bedrockruntime::Client::new(&self.config)
    }

    /// One whole completion.
    pub fn invoke(&self, model: &str, prompt: &str, params: &InvokeParams) -> Result<String> {
        const ACTION: &str = "bedrock:InvokeModel";
        let client = self.runtime_client();
        let body = serde_json::to_vec(&request_body(prompt, params)).expect("JSON of a value");
        let out = self
            .block_on(
                client
                    .invoke_model()
                    .model_id(model)
                    .content_type("application/json")
                    .accept("application/json")
                    .body(Blob::new(body))
                    .send(),
            )
            .map_err(|e| sdk_error(ACTION, e))?;
        response_text(ACTION, out.body().as_ref())
    }

    /// A completion streamed: `on_text` gets each piece as it arrives; returns the whole text.
    /// A stream that breaks, or an error event inside it, is an error that says how much had
    /// arrived (what `on_text` already showed stays shown).
    pub fn invoke_stream(
        &self,
        model: &str,
        prompt: &str,
        params: &InvokeParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<String> {
        const ACTION: &str = "bedrock:InvokeModelWithResponseStream";
        let client = self.runtime_client();
        let body = serde_json::to_vec(&request_body(prompt, params)).expect("JSON of a value");
        self.block_on(async {
            let mut out = client
                .invoke_model_with_response_stream()
                .model_id(model)
                .content_type("application/json")
                .accept("application/json")
                .body(Blob::new(body))
                .send()
                .await
                .map_err(|e| sdk_error(ACTION, e))?;
            let mut text = String::new();
            loop {
                match out.body.recv().await {
                    Ok(Some(ResponseStream::Chunk(part))) => {
                        let Some(bytes) = part.bytes() else { continue };
                        let piece = response_text(ACTION, bytes.as_ref())?;
                        on_text(&piece);
                        text.push_str(&piece);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(text),
                    Err(e) if e.as_service_error().is_some() => return Err(sdk_error(ACTION, e)),
                    Err(e) => {
                        return Err(AwsError::StreamCut {
                            model: model.to_owned(),
                            received: text.chars().count(),
                            what: aws_sdk_bedrockruntime::error::DisplayErrorContext(&e)
                                .to_string(),
                        })
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_the_text_completion_format() {
        let params = InvokeParams {
            max_tokens: 64,
            temperature: 0.0,
            top_p: 0.9,
        };
        assert_eq!(
            request_body("[INST] hi [/INST]", &params),
            json!({"prompt": "[INST] hi [/INST]", "max_gen_len": 64, "temperature": 0.0, "top_p": 0.9})
        );
        let answer = br#"{"generation": " Hello", "prompt_token_count": 5, "generation_token_count": 2, "stop_reason": "stop"}"#;
        assert_eq!(response_text("a", answer).unwrap(), " Hello");
        let last_chunk = br#"{"generation": null, "stop_reason": "length"}"#;
        assert_eq!(response_text("a", last_chunk).unwrap(), "");
        let other = br#"{"outputs": [{"text": "x"}]}"#;
        let e = response_text("bedrock:InvokeModel", other).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "bedrock:InvokeModel: unexpected answer: no `generation` text in {\"outputs\""
            ),
            "{e}"
        );
        let e = response_text("a", &[b'x'; 10_000]).unwrap_err().to_string();
        assert!(e.contains("not JSON") && e.len() < 300, "{e}");
    }
}
