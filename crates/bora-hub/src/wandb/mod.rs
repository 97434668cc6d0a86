//! A Weights & Biases client over W&B's own HTTP API, the one wandb-core speaks: a GraphQL
//! `UpsertBucket` creates or updates the run, `file_stream` appends history lines and replaces
//! the summary, `CreateRunFiles` hands out upload URLs for media files (the eval table), and a
//! last `file_stream` request with `complete` ends the run.
//!
//! Tracking must never cost a training run: [`WandbSink`] turns the first failure into one
//! warning and stops calling W&B, while `metrics.jsonl` and TensorBoard keep every step.
//!
//! The run directory records which W&B run it is ([`STATE_FILE`]); continuing it asks the
//! server (`RunResumeStatus`, as wandb-core does) how many history lines and which last step
//! it has, so `bora train --resume` continues at the right offset, and `bora eval --run` adds
//! its scores and samples to the same run.
//!
//! The adapter and exports are logged as versioned `model` artifacts of the run, used by
//! later runs and linked to registry collections (`artifact`).
//!
//! - `artifact`: artifacts, their manifests and digests, use and registry links;
//! - `auth`: the API key, from `WANDB_API_KEY` or netrc as the SDK finds it;
//! - `client`: the HTTP side (GraphQL, `file_stream`, uploads);
//! - `run`: one W&B run and the run-directory state that names it;
//! - `sink`: W&B as a metric sink, and the tracking lifecycle of one command.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod artifact;
mod auth;
mod client;
mod run;
mod sink;

pub use artifact::{
    read_artifacts, record_artifact, sha256_file, ArtifactFile, ArtifactSpec, LoggedArtifact,
    Manifest, Multipart, RegistryTarget, ARTIFACTS_FILE, MULTIPART_PART_SIZE, MULTIPART_THRESHOLD,
};
pub(crate) use auth::netloc;
pub use auth::{netrc_password, ApiKey};
pub(crate) use client::read_response;
pub use client::{base_url_from_env, Client};
pub use run::{generate_run_id, read_state, RunProgress, RunSpec, RunState, Table, WandbRun};
pub use sink::{metrics_row, ArtifactRequest, TrackedRun, WandbSink, WandbTracking};

/// Where W&B's cloud API lives; `WANDB_BASE_URL` points elsewhere (a dedicated or local
/// server), as it does for the wandb SDK.
pub const DEFAULT_BASE_URL: &str = "https://api.wandb.ai";

/// The run directory file that remembers which W&B run this is and how far its history got.
pub const STATE_FILE: &str = "wandb.json";

/// wandb-core's file_stream period: often enough to watch a run live, rarely enough that the
/// requests cost nothing next to a training step.
pub const DEFAULT_SEND_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum WandbError {
    #[error(
        "no W&B API key for {host}: set WANDB_API_KEY, or run `wandb login` (it writes \
         `machine {host}` into ~/.netrc)"
    )]
    MissingKey { host: String },
    #[error("{}: {what}", path.display())]
    Netrc { path: PathBuf, what: String },
    #[error("WANDB_BASE_URL {url:?}: {what}")]
    BaseUrl { url: String, what: String },
    #[error("W&B run id {id:?}: {what}")]
    RunId { id: String, what: String },
    #[error("W&B {what}: {url}: {message}")]
    Transport {
        what: &'static str,
        url: String,
        message: String,
    },
    #[error("W&B {what}: {url}: HTTP {status}: {body}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("W&B {what}: {message}")]
    Response { what: &'static str, message: String },
    #[error("W&B registry {name:?}: {what}")]
    Registry { name: String, what: String },
    #[error("W&B upload of {file}: {message}")]
    Upload { file: String, message: String },
    #[error(transparent)]
    Format(#[from] bora_formats::FormatError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl WandbError {
    /// The server did not answer, or answered that it cannot now (429, 5xx): a failure of
    /// the moment, which a later try may not meet, unlike a refused key or a bad request.
    pub fn is_transient(&self) -> bool {
        match self {
            WandbError::Transport { .. } => true,
            WandbError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

pub type Result<T, E = WandbError> = std::result::Result<T, E>;

/// The W&B project and, when not the key's default, the entity (user or team) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub project: String,
    pub entity: Option<String>,
}

impl Target {
    /// Reads `PROJECT` or `PROJECT/ENTITY` given to `flag` (bora's order for every W&B
    /// flag; `weave.init` writes the same pair as `ENTITY/PROJECT`).
    pub fn parse(text: &str, flag: &str) -> Result<Target> {
        let (project, entity) = match text.split_once('/') {
            Some((p, e)) => (p, Some(e)),
            None => (text, None),
        };
        let usable = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && !"/\\#?%:".contains(c))
        };
        if !std::iter::once(project).chain(entity).all(usable) {
            return Err(WandbError::Response {
                what: "target",
                message: format!(
                    "{flag} {text:?} is not PROJECT or PROJECT/ENTITY (names without spaces or \
                     any of / \\ # ? % :)"
                ),
            });
        }
        Ok(Target {
            project: project.to_owned(),
            entity: entity.map(str::to_owned),
        })
    }

    /// The command that uploads a run's TensorBoard files to this project later
    /// (`--wandb-offline`); `wandb sync` reads `events.out.tfevents.*` in the directory.
    pub fn sync_command(&self, run_dir: &Path) -> String {
        let entity = self
            .entity
            .as_ref()
            .map(|e| format!(" -e {e}"))
            .unwrap_or_default();
        format!(
            "wandb sync --sync-tensorboard -p {}{entity} {}",
            self.project,
            run_dir.display()
        )
    }
}
