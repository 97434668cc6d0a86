//! A W&B run: created or continued, history streamed, summary, tables, finished.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bora_rng::SplitMix64;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::client::{Client, CREATE_RUN_FILES, UPSERT_BUCKET};
use super::{Result, Target, WandbError, DEFAULT_BASE_URL, DEFAULT_SEND_INTERVAL, STATE_FILE};

const HISTORY_FILE: &str = "wandb-history.jsonl";
const SUMMARY_FILE: &str = "wandb-summary.json";

/// A W&B run id: 8 characters of `[a-z0-9]` as the wandb SDK makes them, drawn from the
/// run's seed, the time and the process id so two runs of one config get different ids.
pub fn generate_run_id(seed: u64) -> String {
    random_string(seed, 8)
}

/// A fresh random id of `len` characters of `[a-z0-9]`, as wandb makes the client ids of an
/// artifact and its collection.
pub(super) fn random_id(len: usize) -> String {
    random_string(0x5eed_a27f_ac75, len)
}

fn random_string(seed: u64, len: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // SplitMix64: each output well mixed even from nearby inputs.
    let mut rng = SplitMix64::new(
        seed ^ nanos.rotate_left(17) ^ u64::from(std::process::id()).rotate_left(41),
    );
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[(rng.next_u64() % 36) as usize] as char)
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
    pub(super) client: Client,
    pub(super) state: RunState,
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
        // `_runtime` continues from where the run's previous process left it (a resumed run).
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

    /// The last step logged in this run, sent or not.
    pub(super) fn last_logged_step(&self) -> Option<u64> {
        self.pending
            .last()
            .map(|(s, _)| *s)
            .or(self.progress.last_step)
    }

    fn runtime(&self) -> f64 {
        self.runtime_before + self.session_start.elapsed().as_secs_f64()
    }

    /// One history row at `step`; the latest values also become the summary, as `wandb.log`
    /// does. Steps W&B already has (a resumed run repeats those after its checkpoint) are
    /// skipped. Sends when the interval since the last send has passed.
    pub fn log(&mut self, step: u64, values: &Map<String, Value>) -> Result<()> {
        let latest = self.last_logged_step();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
