//! Where bora keeps the files it fetches (the default model, Mistral's tokenizer files):
//! outside the repo, so that every checkout shares one download; `BORA_HOME` moves it.
//! The scripts that fetch them (`scripts/fetch-*.sh`) use the same place.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{FormatError, Result};

/// The file name `scripts/fetch-default-model.sh` gives SmolLM2-135M-Instruct (Q4_1 GGUF).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$BORA_HOME`, else `$HOME/.cache/bora`.
pub fn bora_home() -> PathBuf {
    home_from(std::env::var_os("BORA_HOME"), std::env::var_os("HOME"))
}

fn home_from(bora_home: Option<OsString>, home: Option<OsString>) -> PathBuf {
    match bora_home {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(home.unwrap_or_default()).join(".cache/bora"),
    }
}

/// Where the default model is, whether or not it has been fetched yet: the CLI reports
/// this path itself when the file is missing.
pub fn default_model() -> PathBuf {
    bora_home().join("models").join(DEFAULT_MODEL_FILE)
}

/// The default model, or an error naming the script that fetches it.
pub fn fetched_default_model() -> Result<PathBuf> {
    fetched(default_model(), "scripts/fetch-default-model.sh")
}

/// A Mistral tokenizer file by its mistral-common name, or an error naming the script that
/// fetches it.
pub fn fetched_tokenizer(name: &str) -> Result<PathBuf> {
    fetched(
        bora_home().join("tokenizers").join(name),
        "scripts/fetch-tokenizers.sh",
    )
}

fn fetched(path: PathBuf, script: &'static str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(FormatError::NotFetched { path, script })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn bora_home_wins_over_home() {
        let got = home_from(Some("/a".into()), Some("/h".into()));
        assert_eq!(got, PathBuf::from("/a"));
        let got = home_from(None, Some("/h".into()));
        assert_eq!(got, Path::new("/h").join(".cache").join("bora"));
    }

    #[test]
    fn a_missing_file_names_itself_and_its_script() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let err = fetched(path.clone(), "scripts/fetch-x.sh").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("scripts/fetch-x.sh"), "{msg}");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(fetched(path.clone(), "scripts/fetch-x.sh").unwrap(), path);
    }
}
