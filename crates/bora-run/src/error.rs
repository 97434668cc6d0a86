use std::path::PathBuf;

use bora_formats::FormatError;

/// A run-directory file could not be read or written; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A file bora wrote (metrics, timing) does not hold what it should.
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

pub type Result<T, E = RunError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.into();
    move |source| RunError::Io { path, source }
}
