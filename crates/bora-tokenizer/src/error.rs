//! Errors for every tokenizer loader. Each variant names the file it came from, because a
//! model directory holds several tokenizer files and "invalid token" alone helps nobody.

use std::path::PathBuf;

/// Why a tokenizer file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a tokenizer bora knows ({reason})")]
    UnknownFormat { path: PathBuf, reason: String },
    #[error("{path}: malformed SentencePiece protobuf at byte {offset}: {what}")]
    Protobuf {
        path: PathBuf,
        offset: usize,
        what: String,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: invalid tokenizer: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The GGUF file itself is unreadable or lacks a tokenizer key (the message names both).
    #[error(transparent)]
    Gguf(#[from] bora_formats::FormatError),
    #[error("{path}: invalid pre-tokenizer regex: {source}")]
    Regex {
        path: PathBuf,
        source: Box<fancy_regex::Error>,
    },
}
