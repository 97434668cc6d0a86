use std::path::PathBuf;

/// What went wrong talking to the Hub. Messages name the request or file and say what to do;
/// none of them can hold the token (it never leaves [`super::Token`]).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("repo id `{repo}` is not valid: {why}")]
    BadRepoId { repo: String, why: String },
    #[error(
        "no Hugging Face token: looked in {looked}; set HF_TOKEN or run `hf auth login` with a write token"
    )]
    NoToken { looked: String },
    #[error("{endpoint} rejected the token (401 from /api/whoami-v2): it is invalid or expired; create a new write token")]
    InvalidToken { endpoint: String },
    #[error("the token of `{user}` is {role}: it cannot create or write repos; use a token with write access")]
    ReadOnlyToken { user: String, role: String },
    #[error("the token of `{user}` cannot write to `{namespace}`: {why}")]
    NoWriteAccess {
        user: String,
        namespace: String,
        why: String,
    },
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{method} {url} failed after {attempts} attempts: {source}")]
    Transport {
        method: &'static str,
        url: String,
        attempts: u32,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url}: unexpected answer: {what}")]
    Protocol { url: String, what: String },
    #[error("the Hub refused to store `{path}` (LFS error {code}): {message}")]
    LfsObject {
        path: String,
        code: i64,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
