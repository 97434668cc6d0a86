//! W&B as a metric sink: a live run that cannot fail training, and the whole tracking
//! lifecycle of one command.

use std::fs;
use std::path::{Path, PathBuf};

use bora_run::{MetricSink, Metrics, RunDir};
use serde_json::{json, Map, Value};

use super::artifact::{
    read_artifacts, record_artifact, ArtifactFile, ArtifactSpec, LoggedArtifact, Manifest,
    Multipart, RegistryTarget,
};
use super::client::Client;
use super::run::{generate_run_id, RunSpec, Table, WandbRun};
use super::{Result, Target, WandbError};
use crate::hub::Retry;

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

    /// The live run, for artifact calls whose failures are reported on their own.
    fn run_mut(&mut self) -> Option<&mut WandbRun> {
        self.run.as_mut()
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
    fn log(&mut self, metrics: &Metrics) -> bora_run::Result<()> {
        let row = metrics_row(metrics);
        self.guard(|run| run.log(metrics.step, &row));
        Ok(())
    }

    fn flush(&mut self) -> bora_run::Result<()> {
        self.guard(WandbRun::flush);
        Ok(())
    }
}

/// What W&B is told about the bora run it tracks.
#[derive(Debug, Clone)]
pub struct TrackedRun {
    /// bora's run name, shown as the W&B run's name.
    pub name: String,
    /// The resolved run config.
    pub config: Value,
    /// Seeds the id of a new W&B run when `WANDB_RUN_ID` does not set one.
    pub seed: u64,
}

/// A file or directory to log as a `model` artifact of the tracked run.
#[derive(Debug, Clone)]
pub struct ArtifactRequest {
    /// The key the run directory records it under ([`super::ARTIFACTS_FILE`]): `adapter`,
    /// `export-gguf`, ...
    pub role: String,
    /// The artifact collection: versions of one model share it.
    pub name: String,
    /// A directory (its files, by relative path) or one file (by its file name).
    pub source: PathBuf,
    pub description: String,
    pub metadata: Map<String, Value>,
    /// A registry collection to link the logged version to.
    pub registry: Option<RegistryTarget>,
    /// The command that logs it again, printed when logging fails or is skipped.
    pub retry_command: String,
}

/// Weights & Biases for one command, live or offline (nothing sent; the run's TensorBoard
/// files are synced later), with the whole run lifecycle: start or continue the W&B run the
/// run directory records, backfill what a resumed run logged only locally, finish with the
/// command's outcome. As a [`MetricSink`] it never fails the run: a W&B failure is one
/// message to `notify`, and `metrics.jsonl` and TensorBoard carry on.
pub struct WandbTracking {
    target: Target,
    offline: bool,
    run: TrackedRun,
    /// Taken by `start`; `None` offline.
    client: Option<Client>,
    /// The live run, once started.
    sink: Option<WandbSink>,
    /// The run directory, once started.
    run_dir: Option<PathBuf>,
    notify: Box<dyn FnMut(&str)>,
    /// The adapter to log when the command ends well (`bora train`); the last training loss
    /// goes into its metadata.
    adapter_at_close: Option<ArtifactRequest>,
    last_loss: Option<f64>,
    retry: Retry,
    multipart: Multipart,
}

impl WandbTracking {
    /// Reads the API key now (unless offline), so a command that asks for W&B without a
    /// key stops before any work rather than running untracked. `notify` gets each line
    /// meant for the user: the run's URL, warnings, the offline sync command.
    pub fn new(
        target: Target,
        offline: bool,
        run: TrackedRun,
        notify: Box<dyn FnMut(&str)>,
    ) -> Result<Self> {
        let client = if offline {
            None
        } else {
            Some(Client::from_env()?)
        };
        Ok(Self {
            target,
            offline,
            run,
            client,
            sink: None,
            run_dir: None,
            notify,
            adapter_at_close: None,
            last_loss: None,
            retry: Retry::default(),
            multipart: Multipart::default(),
        })
    }

    /// How artifact uploads and calls are retried, and which files go up in parts (tests
    /// wait less and use small parts).
    pub fn with_uploads(mut self, retry: Retry, multipart: Multipart) -> Self {
        self.retry = retry;
        self.multipart = multipart;
        self
    }

    /// Logs `request` (the run's adapter) when the command closes successfully, with the
    /// last training loss as `final_loss`.
    pub fn log_adapter_at_close(&mut self, request: ArtifactRequest) {
        self.adapter_at_close = Some(request);
    }

    /// Logs `request` as an artifact of the run, records it in the run directory and links
    /// it to its registry collection. A failure is one warning with the command that logs it
    /// again; W&B never shows a partly uploaded version, and the run goes on.
    pub fn log_artifact(&mut self, request: &ArtifactRequest) -> Option<LoggedArtifact> {
        let retry = self.retry.clone();
        let multipart = self.multipart;
        let run_dir = self.run_dir.clone();
        let mut lines = Vec::new();
        let outcome = match (self.sink.as_mut().and_then(WandbSink::run_mut), &run_dir) {
            (Some(run), Some(run_dir)) => {
                let logged = log_recorded(run, run_dir, request, &retry, &multipart, &mut lines);
                if let (Ok(logged), Some(target)) = (&logged, &request.registry) {
                    match run.link_artifact(logged, target, &retry) {
                        Ok(version) => lines.push(format!(
                            "W&B registry: linked to {}/{} as v{version}",
                            target.project(),
                            target.collection
                        )),
                        Err(e) => lines.push(format!(
                            "warning: W&B: {} was logged but not linked to {}/{}: {e}; \
                             link it again with\n  {}",
                            logged.reference(),
                            target.project(),
                            target.collection,
                            request.retry_command
                        )),
                    }
                }
                logged.map(Some)
            }
            _ => Ok(None),
        };
        for line in lines {
            (self.notify)(&line);
        }
        match outcome {
            Ok(Some(logged)) => Some(logged),
            Ok(None) => {
                let why = if self.offline {
                    "W&B offline"
                } else {
                    "W&B tracking is off"
                };
                (self.notify)(&format!(
                    "{why}: the {} was not logged as an artifact; log it later with\n  {}",
                    request.role, request.retry_command
                ));
                None
            }
            Err(e) => {
                (self.notify)(&format!(
                    "warning: W&B: the {} was not logged as an artifact: {e}; no version was \
                     committed and the run is unaffected; log it again with\n  {}",
                    request.role, request.retry_command
                ));
                None
            }
        }
    }

    /// Declares the artifact the run directory recorded under `role` an input of the run
    /// (`run.use_artifact`): `bora eval` uses the adapter it evaluates. Nothing recorded,
    /// nothing to do.
    pub fn use_recorded_artifact(&mut self, role: &str) {
        let retry = self.retry.clone();
        let (Some(run_dir), Some(run)) = (
            self.run_dir.clone(),
            self.sink.as_mut().and_then(WandbSink::run_mut),
        ) else {
            return;
        };
        let outcome = read_artifacts(&run_dir).and_then(|all| match all.get(role) {
            Some(artifact) => run
                .use_artifact(artifact, &retry)
                .map(|()| Some(artifact.clone())),
            None => Ok(None),
        });
        match outcome {
            Ok(Some(artifact)) => {
                (self.notify)(&format!("W&B: this run uses {}", artifact.reference()))
            }
            Ok(None) => {}
            Err(e) => (self.notify)(&format!(
                "warning: W&B: the {role} artifact could not be marked as used: {e}"
            )),
        }
    }

    /// Creates the W&B run, or continues the one `run_dir` records.
    fn start_run(&mut self, run_dir: &Path) {
        self.run_dir = Some(run_dir.to_path_buf());
        let Some(client) = self.client.take() else {
            return;
        };
        let new_id = std::env::var("WANDB_RUN_ID")
            .ok()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| generate_run_id(self.run.seed));
        let spec = RunSpec {
            target: &self.target,
            display_name: &self.run.name,
            config: &self.run.config,
            new_id,
            run_dir,
        };
        match WandbRun::start(client, &spec) {
            Ok(run) => {
                (self.notify)(&format!("W&B run: {}", run.url()));
                self.sink = Some(WandbSink::new(run));
            }
            Err(e) => (self.notify)(&format!(
                "warning: W&B tracking off: {e}; metrics are still written to metrics.jsonl \
                 and TensorBoard"
            )),
        }
    }

    /// The live sink, if any; `f` may fail it, which is reported here, once.
    fn with_sink(&mut self, f: impl FnOnce(&mut WandbSink)) {
        if let Some(sink) = self.sink.as_mut() {
            f(sink);
            if let Some(warning) = sink.take_warning() {
                (self.notify)(&format!("warning: {warning}"));
            }
        }
    }

    /// Sends the steps up to the checkpoint a resumed run starts from, as `metrics.jsonl`
    /// holds them: a session killed between two sends logged them only locally. The sink
    /// skips the steps W&B already has; the eval lines `bora eval` adds are not `Metrics`.
    fn backfill(&mut self, run: &RunDir, up_to: u64) {
        let Ok(text) = fs::read_to_string(run.metrics_path()) else {
            return;
        };
        self.with_sink(|sink| {
            for line in text.lines() {
                if let Ok(m) = serde_json::from_str::<Metrics>(line) {
                    if m.step <= up_to {
                        let _ = sink.log(&m);
                    }
                }
            }
        });
    }

    /// Adds summary values and a table (eval results) to the started run.
    pub fn log_results(&mut self, summary: &Map<String, Value>, table: Option<&Table<'_>>) {
        self.with_sink(|sink| sink.log_results(summary, table));
    }
}

/// The W&B sink reports its failures through `notify`, never as an error, so its results
/// carry nothing.
impl MetricSink for WandbTracking {
    fn start(&mut self, run: &RunDir, first_step: u64) -> bora_run::Result<()> {
        self.start_run(run.path());
        if first_step > 0 {
            self.backfill(run, first_step);
        }
        Ok(())
    }

    fn log(&mut self, metrics: &Metrics) -> bora_run::Result<()> {
        self.last_loss = Some(f64::from(metrics.loss));
        self.with_sink(|s| {
            let _ = s.log(metrics);
        });
        Ok(())
    }

    fn flush(&mut self) -> bora_run::Result<()> {
        self.with_sink(|s| {
            let _ = s.flush();
        });
        Ok(())
    }

    /// Ends the W&B run with the command's exit code, or prints how to sync it later.
    fn close(&mut self, ok: bool) -> bora_run::Result<()> {
        if let (true, Some(mut request)) = (ok, self.adapter_at_close.take()) {
            if let Some(loss) = self.last_loss {
                // Through the f32's shortest decimal, as the history shows it.
                let loss = (loss as f32).to_string().parse::<f64>().unwrap_or(loss);
                request.metadata.insert("final_loss".into(), json!(loss));
            }
            self.with_sink(|s| {
                let _ = s.flush();
            });
            self.log_artifact(&request);
        }
        if let Some(sink) = self.sink.take() {
            if let Some(warning) = sink.finish(i32::from(!ok)) {
                (self.notify)(&format!("warning: {warning}"));
            }
        } else if let (true, Some(run_dir)) = (self.offline, &self.run_dir) {
            let command = self.target.sync_command(run_dir);
            (self.notify)(&format!(
                "W&B offline: nothing was sent; upload the run's TensorBoard files with\n  \
                 {command}"
            ));
        }
        Ok(())
    }
}

/// Hashes `request.source`, logs it on `run` and records it in `run_dir`; the line to show
/// the user goes to `lines`.
fn log_recorded(
    run: &mut WandbRun,
    run_dir: &Path,
    request: &ArtifactRequest,
    retry: &Retry,
    multipart: &Multipart,
    lines: &mut Vec<String>,
) -> Result<LoggedArtifact> {
    let manifest = if request.source.is_dir() {
        Manifest::from_dir(&request.source, "", multipart)?
    } else {
        let name = request
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| WandbError::Io {
                path: request.source.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file"),
            })?;
        Manifest::from_files(vec![ArtifactFile::hash(&name, &request.source, multipart)?])
    };
    let spec = ArtifactSpec {
        name: &request.name,
        kind: "model",
        description: (!request.description.is_empty()).then_some(request.description.as_str()),
        metadata: &request.metadata,
        manifest: &manifest,
    };
    let logged = run.log_artifact(&spec, retry)?;
    record_artifact(run_dir, &request.role, &logged)?;
    let how = if logged.reused {
        "unchanged: W&B already has these files"
    } else {
        "new version"
    };
    lines.push(format!(
        "W&B artifact: {} ({how}, digest {})",
        logged.reference(),
        logged.digest
    ));
    Ok(logged)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
