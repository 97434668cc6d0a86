//! Errors of the data pipeline. A bad line is data, not an exception: readers collect every
//! [`LineError`] of a file so a user fixes them all in one pass.

use std::fmt;
use std::path::PathBuf;

/// One bad line of a dataset, printed as `FILE:LINE: field: what is wrong` so editors and
/// terminals can jump to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub file: PathBuf,
    /// 1-based, as editors count.
    pub line: usize,
    /// Where in the line: `json`, `messages[2].role`, `completion`, …
    pub field: String,
    pub what: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.field,
            self.what
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read: {source}", path = path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every bad line, in file order; the run must not start on partly wrong data.
    #[error("{path}: {n} bad line(s); fix them or pass --skip-bad-lines\n{list}",
        path = path.display(), n = errors.len(),
        list = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    BadLines {
        path: PathBuf,
        errors: Vec<LineError>,
    },
    #[error("{0}: no usable examples")]
    Empty(String),
    #[error("invalid data setting: {0}")]
    Config(String),
}
