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
    #[error("{url} rejected the token (401): it is invalid or expired; create a new write token (`hf auth login`) or set HF_TOKEN")]
    TokenRejected { url: String },
    #[error(
        "the Jobs API refused to run jobs in `{namespace}` ({status}): {message}; Jobs need a \
         namespace with a positive credit balance (a PRO/Team/Enterprise plan or prepaid credits) \
         and a token with write access to it"
    )]
    JobsRefused {
        namespace: String,
        status: u16,
        message: String,
    },
    #[error("no such job: {url} answered 404 ({message})")]
    JobNotFound { url: String, message: String },
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
    #[error("`{text}` is neither a local path that exists nor a Hub model id: {why}")]
    BadModelRef { text: String, why: String },
    #[error(
        "`{repo}` is a gated model and {}: accept its licence on {endpoint}/{repo} while logged in, \
         then pass a token of that account (set HF_TOKEN, or run `hf auth login`)",
        if *token_sent { "the token sent has no access to it yet" } else { "no token was sent" }
    )]
    Gated {
        repo: String,
        endpoint: String,
        token_sent: bool,
    },
    #[error(
        "model repo `{repo}` does not exist on {endpoint}{}",
        if *token_sent { " (or the token sent cannot see it)" } else { " (if it is private, pass a token: set HF_TOKEN, or run `hf auth login`)" }
    )]
    RepoNotFound {
        repo: String,
        endpoint: String,
        token_sent: bool,
    },
    #[error("revision `{revision}` does not exist in `{repo}` (a branch, tag or commit id)")]
    RevisionNotFound { repo: String, revision: String },
    #[error("`{file}` does not exist in `{repo}` at revision `{revision}`")]
    FileNotFound {
        repo: String,
        revision: String,
        file: String,
    },
    #[error(
        "HF_HUB_OFFLINE is set and `{model}` is not (completely) in the Hugging Face cache {}: \
         download it while online (`bora download {model}`), or unset HF_HUB_OFFLINE",
        cache.display()
    )]
    NotCached { model: String, cache: PathBuf },
    #[error(
        "{file}: the downloaded bytes hash to {got} but the Hub says {expected}; the file was \
         discarded, not cached: run the command again to download it afresh"
    )]
    Corrupt {
        file: String,
        expected: String,
        got: String,
    },
    #[error("`{repo}` at {revision}: {what}")]
    NoModel {
        repo: String,
        revision: String,
        what: String,
    },
    #[error(transparent)]
    Format(#[from] bora_formats::FormatError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
