//! Errors: [`ServeError`] for what stops the server from starting or running, [`ApiError`]
//! for what one request gets back, always as an OpenAI error object
//! `{"error": {"message", "type", "param", "code"}}` so clients' error handling works unchanged.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}")]
    Model {
        path: PathBuf,
        #[source]
        source: Box<bora_model::ModelError>,
    },
    #[error("{path}: the tokenizer: {source}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: bora_tokenizer::TokenizerError,
    },
    #[error("{path}: the tokenizer has {tokenizer} tokens but the model only {model}")]
    VocabMismatch {
        path: PathBuf,
        tokenizer: usize,
        model: usize,
    },
    #[error("adapter `{name}` ({path}): {source}")]
    Adapter {
        name: String,
        path: PathBuf,
        #[source]
        source: Box<bora_model::ModelError>,
    },
    #[error("invalid server option: {0}")]
    Option(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// One request's failure, answered with `status` and an OpenAI error body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error family: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// A bad field: 400 naming the field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn unauthorized() -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "incorrect or missing API key; send it as `Authorization: Bearer KEY`",
            )
        }
    }

    pub fn unknown_model(model: &str, served: &[String]) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model `{model}` does not exist here; this server serves {}",
                    served.join(", ")
                ),
            )
        }
    }

    pub fn context_exceeded(message: String) -> Self {
        ApiError {
            code: Some("context_length_exceeded"),
            ..Self::invalid("messages", message)
        }
    }

    pub fn queue_full() -> Self {
        ApiError {
            code: Some("rate_limit_exceeded"),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "the request queue is full; retry later",
            )
        }
    }

    pub fn timeout() -> Self {
        ApiError {
            code: Some("timeout"),
            ..Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                "the request took longer than the server's request timeout",
            )
        }
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        )
    }

    /// Every connection slot is taken.
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server has as many open connections as it takes; retry later",
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no route {path}; see GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "this method is not allowed on this route",
        )
    }

    pub fn internal(e: &dyn std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.to_string(),
        )
    }

    /// The body, also sent as the last event of a stream that fails midway.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    /// A full queue or server (429, 503) says when to come back, as clients' retry logic
    /// (OpenAI's included) reads `Retry-After`.
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        r
    }
}
