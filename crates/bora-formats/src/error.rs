use std::path::PathBuf;

use crate::quant::GgmlType;

/// Every failure of this crate. Variants carry the file, key or tensor involved so that a
/// user reading the message knows where to look without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's bytes do not follow the format; `offset` is where reading went wrong.
    #[error("{path}: corrupt at byte offset {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// The file is well formed but says something bora cannot use.
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: metadata key `{key}` is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key `{key}` is {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{path}: no tensor named `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("unknown ggml type id {0}")]
    UnknownGgmlType(u32),
    /// A quant codec was handed buffers that do not hold whole blocks or do not match.
    #[error("{ty}: {what}")]
    Quant { ty: GgmlType, what: String },
    /// A codec or conversion bora does not implement for this type.
    #[error("{what} is not supported for {ty}")]
    Unsupported { ty: GgmlType, what: &'static str },
    /// An NF4 tensor whose parts do not fit together, or input it cannot encode.
    #[error("nf4: {0}")]
    Nf4(String),
    /// A row-layout operation got rows that do not split into the given heads.
    #[error("layout: {0}")]
    Layout(String),
    /// A file bora fetches into its cache (`cache::bora_home`) is not there yet.
    #[error("{path} is missing: run {script}")]
    NotFetched { path: PathBuf, script: &'static str },
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
