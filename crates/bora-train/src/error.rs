use std::path::PathBuf;

use bora_formats::FormatError;

/// Every failure of bora-train. Each variant names the file, config key, tensor or step
/// involved, so the message alone tells the user where to look.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Run(#[from] bora_run::RunError),
    #[error(transparent)]
    Model(#[from] bora_model::ModelError),
    #[error(transparent)]
    Data(#[from] bora_data::DataError),
    #[error(transparent)]
    Tokenizer(#[from] bora_tokenizer::TokenizerError),
    #[error("the chat format: {0}")]
    Chat(#[from] bora_tokenizer::chat::ChatError),
    /// The run config file is not valid TOML or does not fit the schema; `message` is the
    /// parser's, which names the key and line.
    #[error("{path}: {message}")]
    ConfigSyntax { path: PathBuf, message: String },
    /// A command-line flag that cannot be read as config.
    #[error("{flag}: {what}")]
    Flag { flag: String, what: String },
    /// A config value is out of range or inconsistent with another.
    #[error("config key `{key}`: {reason}")]
    Config { key: String, reason: String },
    /// A file bora wrote (checkpoint state, metrics) does not hold what it should.
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{dir}: checkpoint is incomplete: `{file}` is missing")]
    MissingCheckpointFile { dir: PathBuf, file: &'static str },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// Buffers handed to the optimizer or clipping do not line up with its state.
    #[error("{what}")]
    Mismatch { what: String },
    /// The run's estimated peak memory is more than the machine has available.
    #[error(
        "this run needs about {:.2} GiB ({parts}) but {:.2} GiB is available; {advice}",
        *need as f64 / 1073741824.0,
        *available as f64 / 1073741824.0
    )]
    Memory {
        need: u64,
        available: u64,
        parts: String,
        advice: String,
    },
    /// The torch trainer could not be set up or stopped before the end.
    #[error("torch trainer: {what}")]
    Trainer { what: String },
    /// Training diverged: continuing would only write NaN weights into the adapter.
    #[error("step {step}: {what} is {value}; lower optim.lr, set optim.max_grad_norm, or check the data")]
    NonFinite { step: u64, what: String, value: f32 },
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
