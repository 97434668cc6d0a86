use std::path::PathBuf;

/// What stops a synth job. Request failures that a rerun may get past are not errors: they
/// are counted in the summary and those slots are asked again next time.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {what}", path.display())]
    Input {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("{what}")]
    Config { what: String },
    #[error("{}: this directory holds a synth job with other settings ({field} differs); use another --out, or delete the directory to start over", dir.display())]
    OtherJob { dir: PathBuf, field: String },
    #[error("the teacher cannot be used: {0}")]
    Teacher(#[from] bora_hub::chat::ChatError),
    #[error(transparent)]
    Format(#[from] bora_formats::FormatError),
}
