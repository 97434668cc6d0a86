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

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bora_train::{MetricSink, Metrics};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Where W&B's cloud API lives; `WANDB_BASE_URL` points elsewhere (a dedicated or local
/// server), as it does for the wandb SDK.
pub const DEFAULT_BASE_URL: &str = "https://api.wandb.ai";

/// The run directory file that remembers which W&B run this is and how far its history got.
pub const STATE_FILE: &str = "wandb.json";

/// wandb-core's file_stream period: often enough to watch a run live, rarely enough that the
/// requests cost nothing next to a training step.
pub const DEFAULT_SEND_INTERVAL: Duration = Duration::from_secs(15);

/// A request that takes longer than this is a failed request; the run goes on without W&B.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a response body read, and the most quoted in an error.
const RESPONSE_LIMIT: u64 = 1 << 20;
const QUOTED_BODY: usize = 300;

const HISTORY_FILE: &str = "wandb-history.jsonl";
const SUMMARY_FILE: &str = "wandb-summary.json";

const UPSERT_BUCKET: &str = "mutation UpsertBucket($id: String, $name: String, $project: String, \
$entity: String, $displayName: String, $config: JSONString) {
  upsertBucket(input: {id: $id, name: $name, modelName: $project, entityName: $entity, \
displayName: $displayName, config: $config}) {
    bucket { id name displayName project { id name entity { id name } } historyLineCount }
    inserted
  }
}";

/// What wandb-core asks before continuing a run: how much history the server has, its last
/// row (for the last step) and the summary.
const RUN_RESUME_STATUS: &str = "query RunResumeStatus($project: String, $entity: String, \
$name: String!) {
  model(name: $project, entityName: $entity) {
    id name entity { id name }
    bucket(name: $name, missingOk: true) {
      id name summaryMetrics displayName historyLineCount historyTail
    }
  }
}";

const CREATE_RUN_FILES: &str = "mutation CreateRunFiles($entity: String!, $project: String!, \
$run: String!, $files: [String!]!) {
  createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, \
files: $files}) {
    runID
    uploadHeaders
    files { name uploadUrl }
  }
}";

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
    #[error(transparent)]
    Format(#[from] bora_formats::FormatError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = WandbError> = std::result::Result<T, E>;

/// The W&B project and, when not the key's default, the entity (user or team) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub project: String,
    pub entity: Option<String>,
}

impl Target {
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

/// An API key. It is only ever put into an `Authorization` header; `Debug` hides it so no log
/// line or error message can carry it.
#[derive(Clone)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key the wandb SDK would use for `base_url`: `WANDB_API_KEY`, else the password of
    /// the netrc entry (`$NETRC` or `~/.netrc`) for the URL's host[:port], else of its
    /// `default` entry. No key is an error, since tracking was asked for.
    pub fn from_env(base_url: &str) -> Result<Self> {
        if let Ok(key) = std::env::var("WANDB_API_KEY") {
            if !key.trim().is_empty() {
                return Ok(Self(key.trim().to_owned()));
            }
        }
        let host = netloc(base_url)?;
        let path = match std::env::var_os("NETRC") {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".netrc")),
        };
        if let Some(path) = path {
            match fs::read_to_string(&path) {
                Ok(text) => {
                    if let Some(key) = netrc_password(&text, &host, &path)? {
                        return Ok(Self(key));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(WandbError::Io { path, source }),
            }
        }
        Err(WandbError::MissingKey { host })
    }

    fn basic_auth(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("api:{}", self.0));
        format!("Basic {token}")
    }
}

/// The `host[:port]` of a URL, which is how the wandb SDK names its netrc machine.
fn netloc(url: &str) -> Result<String> {
    let bad = |what: &str| WandbError::BaseUrl {
        url: url.to_owned(),
        what: what.to_owned(),
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    Ok(host.to_owned())
}

/// The password of `machine`'s entry (or of the `default` entry) in netrc text, read as
/// Python's `netrc` module reads it: whitespace-separated tokens, `"quoted"` tokens with
/// backslash escapes, `#` comments, and `macdef` bodies (up to a blank line) skipped.
pub fn netrc_password(text: &str, machine: &str, path: &Path) -> Result<Option<String>> {
    let tokens = netrc_tokens(text, path)?;
    let mut found: Option<String> = None;
    let mut default: Option<String> = None;
    let mut i = 0;
    while i < tokens.len() {
        let is_default = match tokens[i].as_str() {
            "machine" => false,
            "default" => true,
            other => {
                return Err(WandbError::Netrc {
                    path: path.to_path_buf(),
                    what: format!("expected `machine` or `default`, found {other:?}"),
                })
            }
        };
        let name = if is_default {
            i += 1;
            None
        } else {
            let name = tokens.get(i + 1).ok_or_else(|| WandbError::Netrc {
                path: path.to_path_buf(),
                what: "`machine` without a name at the end of the file".into(),
            })?;
            i += 2;
            Some(name.as_str())
        };
        let mut password = None;
        while i < tokens.len() && !matches!(tokens[i].as_str(), "machine" | "default") {
            let key = tokens[i].as_str();
            if !matches!(key, "login" | "user" | "account" | "password") {
                return Err(WandbError::Netrc {
                    path: path.to_path_buf(),
                    what: format!("unknown netrc token {key:?}"),
                });
            }
            let value = tokens.get(i + 1).ok_or_else(|| WandbError::Netrc {
                path: path.to_path_buf(),
                what: format!("`{key}` without a value at the end of the file"),
            })?;
            if key == "password" {
                password = Some(value.clone());
            }
            i += 2;
        }
        // Like Python's netrc, a later entry for the same machine replaces an earlier one.
        match name {
            Some(n) if n == machine => found = password.or(found),
            Some(_) => {}
            None => default = password.or(default),
        }
    }
    Ok(found.or(default).filter(|p| !p.is_empty()))
}

/// Splits netrc text into tokens, dropping comments and macro definitions.
fn netrc_tokens(text: &str, path: &Path) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut skip_macro = false;
    while let Some(&c) = chars.peek() {
        if skip_macro {
            // A macro body runs to the first empty line.
            let mut line = String::new();
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
                line.push(c);
            }
            if line.trim().is_empty() {
                skip_macro = false;
            }
            continue;
        }
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            continue;
        }
        let mut token = String::new();
        if c == '"' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => token.extend(chars.next()),
                    c => token.push(c),
                }
            }
            if !closed {
                return Err(WandbError::Netrc {
                    path: path.to_path_buf(),
                    what: "a quoted token is not closed".into(),
                });
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    token.extend(chars.next());
                } else {
                    token.push(c);
                }
            }
        }
        if token == "macdef" {
            // The macro's name is on the same line; its body follows on the next lines.
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            skip_macro = true;
            continue;
        }
        tokens.push(token);
    }
    Ok(tokens)
}

/// A W&B run id: 8 characters of `[a-z0-9]` as the wandb SDK makes them, drawn from the
/// run's seed, the time and the process id so two runs of one config get different ids.
pub fn generate_run_id(seed: u64) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = seed ^ nanos.rotate_left(17) ^ u64::from(std::process::id()).rotate_left(41);
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..8)
        .map(|_| {
            // splitmix64: each output well mixed even from nearby inputs.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ALPHABET[(z % 36) as usize] as char
        })
        .collect()
}

/// A run id is a URL path segment and a file name on W&B's side.
fn check_run_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(WandbError::RunId {
            id: id.to_owned(),
            what: "must be 1 to 64 letters, digits, `-` or `_`".into(),
        })
    }
}

/// The HTTP side: base URL, key and one connection agent.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    base_url: String,
    key: ApiKey,
}

impl Client {
    pub fn new(base_url: &str, key: ApiKey) -> Result<Self> {
        netloc(base_url)?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// The client the environment asks for: `WANDB_BASE_URL` (default [`DEFAULT_BASE_URL`])
    /// and the key from [`ApiKey::from_env`]. Call it before any long work, so a missing key
    /// stops a command before it starts rather than after.
    pub fn from_env() -> Result<Self> {
        let base_url = std::env::var("WANDB_BASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        let key = ApiKey::from_env(&base_url)?;
        Self::new(&base_url, key)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn post_json(&self, what: &'static str, url: &str, body: &Value) -> Result<Value> {
        let bytes = serde_json::to_vec(body).map_err(|e| WandbError::Response {
            what,
            message: format!("cannot encode the request: {e}"),
        })?;
        let request = self
            .agent
            .post(url)
            .header("Authorization", self.key.basic_auth())
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        let text = read_response(what, url, request.send(&bytes[..]))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| WandbError::Response {
            what,
            message: format!("{url}: the response is not JSON ({e})"),
        })
    }

    /// One GraphQL operation; GraphQL reports its errors with HTTP 200 and an `errors` list.
    fn graphql(&self, operation: &'static str, query: &str, variables: Value) -> Result<Value> {
        let url = format!("{}/graphql", self.base_url);
        let body = json!({"query": query, "variables": variables, "operationName": operation});
        let mut response = self.post_json(operation, &url, &body)?;
        if let Some(errors) = response.get("errors").and_then(Value::as_array) {
            if !errors.is_empty() {
                let messages: Vec<&str> = errors
                    .iter()
                    .map(|e| e.get("message").and_then(Value::as_str).unwrap_or("?"))
                    .collect();
                return Err(WandbError::Response {
                    what: operation,
                    message: messages.join("; "),
                });
            }
        }
        match response.get_mut("data").map(Value::take) {
            Some(data) if data.is_object() => Ok(data),
            _ => Err(WandbError::Response {
                what: operation,
                message: "the response has no `data`".into(),
            }),
        }
    }

    /// Where the run `state` names stands on the server; a run the server does not have
    /// (deleted, or never sent) starts from nothing under the same id.
    fn resume_status(&self, state: &RunState) -> Result<RunProgress> {
        const WHAT: &str = "RunResumeStatus";
        let data = self.graphql(
            WHAT,
            RUN_RESUME_STATUS,
            json!({"project": state.project, "entity": state.entity, "name": state.id}),
        )?;
        let bucket = match data.pointer("/model/bucket") {
            Some(b) if b.is_object() => b,
            _ => return Ok(RunProgress::default()),
        };
        let bad = |what: &str| WandbError::Response {
            what: WHAT,
            message: what.to_owned(),
        };
        // Both are JSON text inside the JSON: the summary an object, the tail a list of
        // history lines, each itself JSON text.
        let summary = match bucket.get("summaryMetrics").and_then(Value::as_str) {
            Some(text) => match serde_json::from_str(text) {
                Ok(Value::Object(map)) => map,
                _ => return Err(bad("summaryMetrics is not a JSON object")),
            },
            None => Map::new(),
        };
        let last_step = match bucket.get("historyTail").and_then(Value::as_str) {
            Some(text) => {
                let tail: Vec<String> = serde_json::from_str(text)
                    .map_err(|e| bad(&format!("historyTail is not a list of lines: {e}")))?;
                match tail.last() {
                    Some(line) => serde_json::from_str::<Value>(line)
                        .map_err(|e| bad(&format!("historyTail line: {e}")))?
                        .get("_step")
                        .and_then(Value::as_u64),
                    None => None,
                }
            }
            None => None,
        };
        Ok(RunProgress {
            history_lines: bucket
                .get("historyLineCount")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            last_step,
            summary,
        })
    }

    /// `PUT`s a file to an upload URL from `CreateRunFiles`. Those are presigned storage URLs
    /// that need no key; a relative one points at the API server itself, which does.
    fn upload(&self, url: &str, headers: &[(String, String)], body: &[u8]) -> Result<()> {
        let (url, own_server) = if url.starts_with('/') {
            (format!("{}{url}", self.base_url), true)
        } else {
            (url.to_owned(), url.starts_with(&self.base_url))
        };
        let mut request = self.agent.put(&url);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if own_server {
            request = request.header("Authorization", self.key.basic_auth());
        }
        read_response("file upload", &url, request.send(body)).map(drop)
    }
}

fn read_response(
    what: &'static str,
    url: &str,
    result: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<String> {
    let mut response = result.map_err(|e| WandbError::Transport {
        what,
        url: url.to_owned(),
        message: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(RESPONSE_LIMIT)
        .read_to_string()
        .map_err(|e| WandbError::Transport {
            what,
            url: url.to_owned(),
            message: e.to_string(),
        })?;
    if !(200..300).contains(&status) {
        let mut body: String = text.chars().take(QUOTED_BODY).collect();
        if body.len() < text.len() {
            body.push('…');
        }
        return Err(WandbError::Status {
            what,
            url: url.to_owned(),
            status,
            body,
        });
    }
    Ok(text)
}

/// What [`STATE_FILE`] holds: which W&B run this run directory is. Everything about how far
/// it got is asked of the server when the run is continued, since a run killed between a
/// send and a local write would otherwise disagree with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub id: String,
    pub entity: String,
    pub project: String,
}

/// Where a W&B run's streams stand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunProgress {
    /// Lines of `wandb-history.jsonl` the server has: the next offset.
    pub history_lines: u64,
    /// The last step the server has: a resumed run repeats the steps after its checkpoint.
    pub last_step: Option<u64>,
    /// W&B replaces the whole summary on each send, so a later session (or `bora eval`)
    /// sends it back with its own keys added.
    pub summary: Map<String, Value>,
}

/// A run to start or continue.
#[derive(Debug, Clone)]
pub struct RunSpec<'a> {
    pub target: &'a Target,
    /// Shown as the run's name in W&B: bora's run name.
    pub display_name: &'a str,
    /// The resolved run config; each top-level key becomes a W&B config key.
    pub config: &'a Value,
    /// The run id for a new W&B run (`WANDB_RUN_ID`, or [`generate_run_id`]); ignored when
    /// the run directory already names a run of the same project.
    pub new_id: String,
    /// The run directory whose [`STATE_FILE`] records the W&B run.
    pub run_dir: &'a Path,
}

/// A table for [`WandbRun::log_table`]: its summary key, the step it belongs to, and rows of
/// values in column order.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    pub key: &'a str,
    pub step: u64,
    pub columns: &'a [&'a str],
    pub rows: &'a [Vec<Value>],
}

/// A W&B run being written: history lines batched and streamed, summary, media, finish.
#[derive(Debug)]
pub struct WandbRun {
    client: Client,
    state: RunState,
    progress: RunProgress,
    /// History lines not yet sent, with the step of each.
    pending: Vec<(u64, String)>,
    summary_dirty: bool,
    /// Files uploaded since the last file_stream request, which W&B is told of there.
    uploaded: Vec<String>,
    session_start: Instant,
    runtime_before: f64,
    last_send: Instant,
    interval: Duration,
}

impl WandbRun {
    /// Creates the run on W&B, or updates the one the run directory already records (same
    /// project, and same entity if one is asked for), and records it there.
    pub fn start(client: Client, spec: &RunSpec<'_>) -> Result<Self> {
        let state_path = spec.run_dir.join(STATE_FILE);
        let previous = read_state(&state_path)?.filter(|s| {
            s.project == spec.target.project
                && spec.target.entity.as_ref().is_none_or(|e| *e == s.entity)
        });
        let id = match &previous {
            Some(s) => s.id.clone(),
            None => spec.new_id.clone(),
        };
        check_run_id(&id)?;
        let progress = match &previous {
            Some(s) => client.resume_status(s)?,
            None => RunProgress::default(),
        };
        let entity = spec
            .target
            .entity
            .clone()
            .or_else(|| previous.as_ref().map(|s| s.entity.clone()));
        let data = client.graphql(
            "UpsertBucket",
            UPSERT_BUCKET,
            json!({
                "name": id,
                "project": spec.target.project,
                "entity": entity,
                "displayName": spec.display_name,
                "config": wandb_config(spec.config),
            }),
        )?;
        let bucket = data
            .pointer("/upsertBucket/bucket")
            .ok_or_else(|| WandbError::Response {
                what: "UpsertBucket",
                message: "the response has no bucket".into(),
            })?;
        let field = |pointer: &str| {
            bucket
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| WandbError::Response {
                    what: "UpsertBucket",
                    message: format!("the bucket has no `{}`", &pointer[1..]),
                })
        };
        let state = RunState {
            id: field("/name")?,
            entity: field("/project/entity/name")?,
            project: field("/project/name")?,
        };
        check_run_id(&state.id)?;
        write_state(&state_path, &state)?;
        // `_runtime` continues from where the last session left it.
        let runtime_before = progress
            .summary
            .get("_runtime")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let now = Instant::now();
        Ok(Self {
            client,
            state,
            progress,
            pending: Vec::new(),
            summary_dirty: false,
            uploaded: Vec::new(),
            session_start: now,
            runtime_before,
            last_send: now,
            interval: DEFAULT_SEND_INTERVAL,
        })
    }

    /// How long history lines may wait before they are sent (a flush sends at once).
    pub fn set_send_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    pub fn progress(&self) -> &RunProgress {
        &self.progress
    }

    /// The run's page.
    pub fn url(&self) -> String {
        let app = if self.client.base_url == DEFAULT_BASE_URL {
            "https://wandb.ai".to_owned()
        } else {
            self.client.base_url.clone()
        };
        format!(
            "{app}/{}/{}/runs/{}",
            self.state.entity, self.state.project, self.state.id
        )
    }

    fn runtime(&self) -> f64 {
        self.runtime_before + self.session_start.elapsed().as_secs_f64()
    }

    /// One history row at `step`; the latest values also become the summary, as `wandb.log`
    /// does. Steps W&B already has (a resumed run repeats those after its checkpoint) are
    /// skipped. Sends when the interval since the last send has passed.
    pub fn log(&mut self, step: u64, values: &Map<String, Value>) -> Result<()> {
        let latest = self
            .pending
            .last()
            .map(|(s, _)| *s)
            .or(self.progress.last_step);
        if latest.is_some_and(|last| step <= last) {
            return Ok(());
        }
        let runtime = self.runtime();
        let mut row = values.clone();
        row.insert("_step".into(), json!(step));
        row.insert("_runtime".into(), json!(runtime));
        row.insert("_timestamp".into(), json!(unix_time()));
        for (k, v) in &row {
            self.progress.summary.insert(k.clone(), v.clone());
        }
        self.progress
            .summary
            .insert("_wandb".into(), json!({"runtime": runtime as u64}));
        self.summary_dirty = true;
        self.pending.push((step, Value::Object(row).to_string()));
        if self.last_send.elapsed() >= self.interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Sets summary values (eval scores), sent with the next request.
    pub fn set_summary(&mut self, values: &Map<String, Value>) {
        for (k, v) in values {
            self.progress.summary.insert(k.clone(), v.clone());
        }
        self.summary_dirty = true;
    }

    /// Logs a table the way `wandb.Table` is logged to a run: the rows go up as the run file
    /// `media/table/KEY_STEP_HASH.table.json` (`{"columns", "data"}`) through
    /// `CreateRunFiles` and its upload URL, and the summary key points at it with a
    /// `table-file` entry, which the W&B UI renders as a table.
    pub fn log_table(&mut self, table: &Table<'_>) -> Result<()> {
        let Table {
            key,
            step,
            columns,
            rows,
        } = *table;
        let body = serde_json::to_vec(&json!({"columns": columns, "data": rows})).map_err(|e| {
            WandbError::Response {
                what: "table",
                message: format!("cannot encode table {key}: {e}"),
            }
        })?;
        let sha256: String = Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let safe_key: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "/-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = format!("media/table/{safe_key}_{step}_{}.table.json", &sha256[..20]);
        let data = self.client.graphql(
            "CreateRunFiles",
            CREATE_RUN_FILES,
            json!({
                "entity": self.state.entity,
                "project": self.state.project,
                "run": self.state.id,
                "files": [path],
            }),
        )?;
        let created = data
            .get("createRunFiles")
            .ok_or_else(|| WandbError::Response {
                what: "CreateRunFiles",
                message: "the response has no createRunFiles".into(),
            })?;
        let url = created
            .get("files")
            .and_then(Value::as_array)
            .and_then(|files| {
                files
                    .iter()
                    .find(|f| f.get("name").and_then(Value::as_str) == Some(path.as_str()))
            })
            .and_then(|f| f.get("uploadUrl"))
            .and_then(Value::as_str)
            .ok_or_else(|| WandbError::Response {
                what: "CreateRunFiles",
                message: format!("no upload URL for {path}"),
            })?;
        let headers: Vec<(String, String)> = created
            .get("uploadHeaders")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|h| h.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        self.client.upload(url, &headers, &body)?;
        self.uploaded.push(path.clone());
        let entry = json!({
            "_type": "table-file",
            "path": path,
            "sha256": sha256,
            "size": body.len(),
            "ncols": columns.len(),
            "nrows": rows.len(),
            "log_mode": "IMMUTABLE",
        });
        self.progress.summary.insert(key.to_owned(), entry);
        self.summary_dirty = true;
        Ok(())
    }

    /// Sends what is pending now.
    pub fn flush(&mut self) -> Result<()> {
        self.send(None)
    }

    /// Sends what is pending and marks the run finished with `exit_code` (0: success).
    pub fn finish(mut self, exit_code: i32) -> Result<()> {
        self.send(Some(exit_code))
    }

    fn send(&mut self, exit_code: Option<i32>) -> Result<()> {
        if self.pending.is_empty()
            && !self.summary_dirty
            && self.uploaded.is_empty()
            && exit_code.is_none()
        {
            return Ok(());
        }
        let mut files = Map::new();
        if !self.pending.is_empty() {
            let lines: Vec<&str> = self.pending.iter().map(|(_, l)| l.as_str()).collect();
            files.insert(
                HISTORY_FILE.into(),
                json!({"offset": self.progress.history_lines, "content": lines}),
            );
        }
        if self.summary_dirty {
            let summary = Value::Object(self.progress.summary.clone()).to_string();
            files.insert(
                SUMMARY_FILE.into(),
                json!({"offset": 0, "content": [summary]}),
            );
        }
        let mut body = Map::new();
        if !files.is_empty() {
            body.insert("files".into(), Value::Object(files));
        }
        if !self.uploaded.is_empty() {
            body.insert("uploaded".into(), json!(self.uploaded));
        }
        if let Some(code) = exit_code {
            body.insert("complete".into(), json!(true));
            body.insert("exitcode".into(), json!(code));
        }
        let url = format!(
            "{}/files/{}/{}/{}/file_stream",
            self.client.base_url, self.state.entity, self.state.project, self.state.id
        );
        self.last_send = Instant::now();
        self.client
            .post_json("file_stream", &url, &Value::Object(body))?;
        self.progress.history_lines += self.pending.len() as u64;
        if let Some((step, _)) = self.pending.last() {
            self.progress.last_step = Some(*step);
        }
        self.pending.clear();
        self.summary_dirty = false;
        self.uploaded.clear();
        Ok(())
    }
}

/// W&B's config encoding: a JSON string of `{"key": {"value": v}}`, one entry per top-level
/// key (`core/internal/runconfig`); nested tables stay nested values.
fn wandb_config(config: &Value) -> String {
    let wrapped: Map<String, Value> = match config {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), json!({"value": v})))
            .collect(),
        other => [("config".to_owned(), json!({"value": other}))]
            .into_iter()
            .collect(),
    };
    Value::Object(wrapped).to_string()
}

fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads [`STATE_FILE`]; none yet is `None`.
pub fn read_state(path: &Path) -> Result<Option<RunState>> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| WandbError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(WandbError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Temporary name, sync, rename: a run killed mid-write keeps the previous state.
fn write_state(path: &Path, state: &RunState) -> Result<()> {
    let text = serde_json::to_string_pretty(state).map_err(|e| WandbError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Ok(bora_formats::atomic::write_file(path, text.as_bytes())?)
}

/// Training metrics under the names TensorBoard shows them by, so a run synced from its
/// TensorBoard files later (`--wandb-offline`) has the same keys as one tracked live.
pub fn metrics_row(metrics: &Metrics) -> Map<String, Value> {
    metrics
        .scalars()
        .into_iter()
        .map(|(tag, value)| {
            // Through the shortest decimal that reads back as the f32, so 1e-4 stays 1e-4
            // rather than becoming 9.999999747378752e-5; NaN and infinities become null.
            let exact = value.to_string().parse::<f64>().unwrap_or(f64::NAN);
            (tag.to_owned(), json!(exact))
        })
        .collect()
}

/// The W&B run as a metric sink that cannot fail: the first error becomes one warning (see
/// [`WandbSink::take_warning`]) and the run is dropped, so training goes on with
/// `metrics.jsonl` and TensorBoard only.
#[derive(Debug)]
pub struct WandbSink {
    run: Option<WandbRun>,
    warning: Option<String>,
}

impl WandbSink {
    pub fn new(run: WandbRun) -> Self {
        Self {
            run: Some(run),
            warning: None,
        }
    }

    /// Runs `f` on the live run; an error ends tracking.
    fn guard(&mut self, f: impl FnOnce(&mut WandbRun) -> Result<()>) {
        if let Some(run) = self.run.as_mut() {
            if let Err(e) = f(run) {
                tracing::warn!("W&B tracking stopped: {e}");
                self.warning = Some(format!(
                    "W&B tracking stopped: {e}; metrics are still written to metrics.jsonl \
                     and TensorBoard"
                ));
                self.run = None;
            }
        }
    }

    /// The warning of the failure that stopped tracking, once.
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    /// Whether W&B is still being written.
    pub fn is_live(&self) -> bool {
        self.run.is_some()
    }

    /// Adds summary values and a table (eval results); a failure ends tracking like any other.
    pub fn log_results(&mut self, summary: &Map<String, Value>, table: Option<&Table<'_>>) {
        self.guard(|run| {
            run.set_summary(summary);
            if let Some(table) = table {
                run.log_table(table)?;
            }
            Ok(())
        });
    }

    /// Finishes the run (if still live); returns the warning of any failure not yet taken.
    pub fn finish(mut self, exit_code: i32) -> Option<String> {
        if let Some(run) = self.run.take() {
            if let Err(e) = run.finish(exit_code) {
                tracing::warn!("W&B tracking stopped: {e}");
                self.warning = Some(format!("W&B: the run could not be finished: {e}"));
            }
        }
        self.warning.take()
    }
}

impl MetricSink for WandbSink {
    fn log(&mut self, metrics: &Metrics) -> bora_train::Result<()> {
        let row = metrics_row(metrics);
        self.guard(|run| run.log(metrics.step, &row));
        Ok(())
    }

    fn flush(&mut self) -> bora_train::Result<()> {
        self.guard(WandbRun::flush);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(text: &str, machine: &str) -> Option<String> {
        netrc_password(text, machine, Path::new("netrc")).unwrap()
    }

    #[test]
    fn netrc_as_wandb_login_writes_it() {
        let text = "machine api.wandb.ai\n  login user\n  password abc123\n";
        assert_eq!(password(text, "api.wandb.ai").as_deref(), Some("abc123"));
        assert_eq!(password(text, "example.com"), None);
    }

    #[test]
    fn netrc_one_line_entries_default_comments_quotes_and_macros() {
        let text = "# keys\nmachine a.example login x password one\n\
                    macdef init\ncd /tmp\nmachine fake password nope\n\n\
                    machine localhost:8080 login \"me\" password \"two words\\\"q\"\n\
                    default login anon password fallback\n";
        assert_eq!(password(text, "a.example").as_deref(), Some("one"));
        assert_eq!(
            password(text, "localhost:8080").as_deref(),
            Some("two words\"q")
        );
        assert_eq!(password(text, "fake").as_deref(), Some("fallback"));
        assert_eq!(password(text, "other").as_deref(), Some("fallback"));
    }

    #[test]
    fn netrc_errors_name_the_file_and_problem() {
        let err = netrc_password("machine", "x", Path::new("/h/.netrc")).unwrap_err();
        assert!(err.to_string().contains("/h/.netrc"), "{err}");
        let err = netrc_password("machine x login", "x", Path::new("n")).unwrap_err();
        assert!(err.to_string().contains("`login` without a value"), "{err}");
        let err = netrc_password("machine x passwd k", "x", Path::new("n")).unwrap_err();
        assert!(err.to_string().contains("passwd"), "{err}");
        let err = netrc_password("machine \"x", "x", Path::new("n")).unwrap_err();
        assert!(err.to_string().contains("not closed"), "{err}");
    }

    #[test]
    fn netloc_keeps_the_port_as_the_sdk_does() {
        assert_eq!(netloc("https://api.wandb.ai").unwrap(), "api.wandb.ai");
        assert_eq!(netloc("http://127.0.0.1:9000/x").unwrap(), "127.0.0.1:9000");
        assert!(netloc("api.wandb.ai").is_err());
    }

    #[test]
    fn run_ids_are_eight_base36_characters_and_differ() {
        let a = generate_run_id(1);
        let b = generate_run_id(1);
        for id in [&a, &b] {
            assert_eq!(id.len(), 8);
            assert!(id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
            check_run_id(id).unwrap();
        }
        assert_ne!(a, b);
        assert!(check_run_id("a/b").is_err());
    }

    #[test]
    fn config_is_wrapped_per_top_level_key() {
        let config = json!({"name": "r", "lora": {"rank": 4}});
        let text = wandb_config(&config);
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            json!({"name": {"value": "r"}, "lora": {"value": {"rank": 4}}})
        );
    }

    #[test]
    fn metrics_keep_their_decimal_values() {
        let m = Metrics {
            step: 3,
            loss: 1.5,
            lr: 1e-4,
            grad_norm: 0.25,
            tokens_per_s: 100.5,
            processed_tokens_per_s: 120.0,
            val_loss: None,
        };
        let row = metrics_row(&m);
        assert_eq!(row["train/lr"], json!(1e-4));
        assert_eq!(row["train/loss"], json!(1.5));
        assert_eq!(row.len(), m.scalars().len());
    }

    #[test]
    fn key_is_hidden_from_debug() {
        let key = ApiKey::new("secret-key-123");
        assert!(!format!("{key:?}").contains("secret"));
        let client = Client::new("http://127.0.0.1:1", key).unwrap();
        assert!(!format!("{client:?}").contains("secret"));
    }
}
