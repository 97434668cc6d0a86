use std::path::PathBuf;

/// Why an evaluation could not run. Everything about the inputs is checked before the first
/// token is generated, so a bad file or flag fails in a second, not after an hour.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("--metric {spec}: {what}")]
    Metric { spec: String, what: String },
    #[error("decoding: {what}")]
    Decoding { what: String },
    #[error("{path}:{line}: {what}")]
    Example {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Also what an adapter trained on another base model gives: its factors do not have
    /// this model's projection shapes.
    #[error("adapter {dir} cannot be used with the base model {model}: {source}")]
    Adapter {
        dir: PathBuf,
        model: PathBuf,
        source: Box<bora_model::ModelError>,
    },
    #[error(transparent)]
    Data(#[from] bora_data::DataError),
    #[error(transparent)]
    Model(#[from] bora_model::ModelError),
    #[error(transparent)]
    Run(#[from] bora_run::RunError),
    #[error("judge {judge}: {what}")]
    Judge { judge: String, what: String },
    #[error("chat format: {0}")]
    Chat(#[from] bora_tokenizer::chat::ChatError),
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}
