//! The Hugging Face Hub: models by name into the shared cache (`download.rs`), and the upload
//! path as `huggingface_hub` drives it without Xet storage (`hf_api.py`, `_commit_api.py`,
//! `lfs.py`): check the token with `whoami-v2`, create the repo, ask `preupload` which
//! files go through LFS, upload LFS objects through the batch API (basic or multipart),
//! then one ndjson commit. Everything before the first byte of content is sent exists to fail
//! early: a bad repo id, a missing token or one without write access stop the push before any
//! upload request. `jobs.rs` runs and follows Hugging Face Jobs.

mod auth;
mod download;
mod error;
pub(crate) mod http;
mod jobs;
mod upload;

use std::fmt;
use std::path::PathBuf;

pub use auth::{AccessCheck, WhoAmI};
pub use download::{
    locate_model, locate_model_config, locate_tokenizer, DownloadEvent, Downloader, HubCache,
    LocalModel, Located, ModelRef, DEFAULT_REVISION,
};
pub use error::HubError;
pub(crate) use http::{shown, Body, Req};
pub use http::{HubClient, Retry, RETRY_AFTER_CAP};
pub use jobs::{Flavor, JobInfo, JobSpec, LogOptions, Secrets, FLAVORS, TERMINAL_STAGES};
pub use upload::{FileOutcome, LocalFile, UploadEvent, UploadMode, UploadReport};

pub type Result<T, E = HubError> = std::result::Result<T, E>;

/// The Hub a client talks to when neither `--endpoint` nor `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The endpoint in the order `huggingface_hub` reads it: an explicit one, else
/// `HF_ENDPOINT`, else the public Hub; without a trailing slash, so paths join with one.
pub fn resolve_endpoint(explicit: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    let chosen = explicit
        .map(str::to_owned)
        .or_else(|| env("HF_ENDPOINT").filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    chosen.trim().trim_end_matches('/').to_owned()
}

/// A model repository id, `NAMESPACE/NAME`. Checked before any request, so a typo is an
/// error naming the rule it breaks rather than a 404 after the token check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    namespace: String,
    name: String,
}

impl RepoId {
    /// Parses `ORG/NAME` with the Hub's rules for each part: 1–96 characters of ASCII
    /// letters, digits, `-`, `_` and `.`, not starting or ending with `-` or `.`, and
    /// without `--` or `..`.
    pub fn parse(text: &str) -> Result<RepoId> {
        let bad = |why: &str| HubError::BadRepoId {
            repo: text.to_owned(),
            why: why.to_owned(),
        };
        let (namespace, name) = text
            .split_once('/')
            .ok_or_else(|| bad("expected ORG/NAME with exactly one `/`"))?;
        if name.contains('/') {
            return Err(bad("expected ORG/NAME with exactly one `/`"));
        }
        for (what, part) in [("organization", namespace), ("name", name)] {
            if let Some(why) = part_problem(part) {
                return Err(bad(&format!("the {what} `{part}` {why}")));
            }
        }
        Ok(RepoId {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn part_problem(part: &str) -> Option<&'static str> {
    if part.is_empty() {
        return Some("is empty");
    }
    if part.len() > 96 {
        return Some("is longer than 96 characters");
    }
    if !part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some("may only hold ASCII letters, digits, `-`, `_` and `.`");
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Some("may not start or end with `-` or `.`");
    }
    if part.contains("--") || part.contains("..") {
        return Some("may not contain `--` or `..`");
    }
    None
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Hub access token. It is only ever written into an `authorization` header: `Debug`
/// shows a placeholder, and there is no `Display`, so no log line or error can carry it.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from text (surrounding whitespace and newlines dropped); `None` when empty.
    pub fn new(text: &str) -> Option<Token> {
        let t = text.trim();
        (!t.is_empty()).then(|| Token(t.to_owned()))
    }

    /// Finds the token where `huggingface_hub` looks: `HF_TOKEN` (or the older
    /// `HUGGING_FACE_HUB_TOKEN`), then the file at `HF_TOKEN_PATH`, else `$HF_HOME/token`,
    /// else `$XDG_CACHE_HOME/huggingface/token`, else `~/.cache/huggingface/token`. `env`
    /// reads a variable, so tests need not touch the process environment.
    pub fn discover(env: impl Fn(&str) -> Option<String>) -> Result<Token> {
        if let Some(t) = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
            .iter()
            .find_map(|k| env(k).as_deref().and_then(Token::new))
        {
            return Ok(t);
        }
        let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let path = set("HF_TOKEN_PATH")
            .or_else(|| set("HF_HOME").map(|h| h.join("token")))
            .or_else(|| set("XDG_CACHE_HOME").map(|c| c.join("huggingface/token")))
            .or_else(|| set("HOME").map(|h| h.join(".cache/huggingface/token")));
        let Some(path) = path else {
            return Err(HubError::NoToken {
                looked: "HF_TOKEN (no HOME to find the token file)".into(),
            });
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Token::new(&text).ok_or_else(|| HubError::NoToken {
                looked: format!("HF_TOKEN and {} (empty)", path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(HubError::NoToken {
                looked: format!("HF_TOKEN and {}", path.display()),
            }),
            Err(source) => Err(HubError::Io { path, source }),
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// The token itself, for the two places it must travel as a value: a service that takes
    /// it in a header of its own, and the secrets of a Hugging Face Job that uploads to the
    /// user's repo (sent encrypted, never as `env`).
    pub fn secret(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_follow_the_hub_rules() {
        assert_eq!(
            RepoId::parse("bora-ml/smol.lora_v2").unwrap().to_string(),
            "bora-ml/smol.lora_v2"
        );
        for bad in [
            "noslash",
            "a/b/c",
            "/name",
            "org/",
            "org/na me",
            "org/-x",
            "org/x.",
            "org/a--b",
            "org/a..b",
            "örg/x",
        ] {
            let err = RepoId::parse(bad).unwrap_err();
            assert!(matches!(err, HubError::BadRepoId { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        let long = format!("org/{}", "x".repeat(97));
        assert!(RepoId::parse(&long).is_err());
    }

    #[test]
    fn token_lookup_order_and_redaction() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".cache/huggingface")).unwrap();
        std::fs::write(home.join(".cache/huggingface/token"), "hf_file\n").unwrap();
        std::fs::write(dir.path().join("hf_home_token"), "hf_hfhome").unwrap();
        let hf_home = dir.path().join("hfhome");
        std::fs::create_dir_all(&hf_home).unwrap();
        std::fs::write(hf_home.join("token"), " hf_hfhome \n").unwrap();
        let env_of = |pairs: Vec<(&'static str, String)>| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.clone())
        };
        let home_s = home.display().to_string();
        let t = Token::discover(env_of(vec![("HOME", home_s.clone())])).unwrap();
        assert_eq!(t.0, "hf_file");
        let t = Token::discover(env_of(vec![
            ("HOME", home_s.clone()),
            ("HF_HOME", hf_home.display().to_string()),
        ]))
        .unwrap();
        assert_eq!(t.0, "hf_hfhome");
        let t = Token::discover(env_of(vec![
            ("HOME", home_s.clone()),
            ("HF_TOKEN", "hf_env".into()),
        ]))
        .unwrap();
        assert_eq!(t.0, "hf_env");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        let none =
            Token::discover(env_of(vec![("HOME", dir.path().display().to_string())])).unwrap_err();
        assert!(matches!(none, HubError::NoToken { .. }), "{none}");
        assert!(none.to_string().contains("HF_TOKEN"), "{none}");
    }

    #[test]
    fn endpoint_order() {
        let env = |k: &str| (k == "HF_ENDPOINT").then(|| "http://hub.local/".to_owned());
        assert_eq!(resolve_endpoint(None, env), "http://hub.local");
        assert_eq!(resolve_endpoint(Some("http://x:1"), env), "http://x:1");
        assert_eq!(resolve_endpoint(None, |_| None), DEFAULT_ENDPOINT);
    }
}
