//! bora-jobs: the GPU trainer on Hugging Face Jobs (`bora train --on hf-jobs:FLAVOR`).
//!
//! The run is bora's as on any machine (bora-train prepares it: config, data, order, initial
//! adapter); this crate is the [`TrainerHost`] that runs its trainer remotely:
//!
//! 1. [`preflight`]: GPU memory against the flavor's (refused with the numbers when it cannot
//!    fit), duration, cost and the job's timeout, before anything is spent;
//! 2. [`HfJobsHost::start`]: the job directory goes to `runs/NAME/job/` of the user's private
//!    repo `USER/bora-jobs` (unchanged files are not sent again), and one job installs the
//!    pinned trainer requirements and runs the trainer against that folder;
//! 3. the job's log is followed; the trainer's protocol lines drive the run exactly as a local
//!    trainer's stdout does (metrics into the run's sinks, so the W&B key never leaves this
//!    machine), and its checkpoints and adapter, uploaded by the job to
//!    `runs/NAME/out/`, are downloaded when announced.
//!
//! `runs/NAME/hf-job.json` records the job so `bora jobs logs|cancel` find it later.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};

use bora_hub::hub::{
    Downloader, Flavor, HubCache, HubClient, HubError, JobInfo, JobSpec, LocalFile, LogOptions,
    RepoId, Secrets, Token, UploadEvent,
};
use bora_model::CheckpointInfo;
use bora_tokenizer::Tokenizer;
use bora_train::{
    gpu_flops_per_token, gpu_train_memory, plan_data, GpuMemory, ModelAccess, RunConfig,
    TrainError, TrainerHost,
};
use serde::{Deserialize, Serialize};

/// The image the job runs in: Docker Hub's official Python image (Debian with bash, Python
/// and pip), as `huggingface_hub`'s Jobs guide runs it. The job's command installs the
/// trainer's pinned requirements into it with pip: PyPI's torch wheels for Linux carry their
/// CUDA libraries, bitsandbytes its CUDA kernels, so nothing else is needed of the image.
pub const IMAGE: &str = "python:3.12";

/// The repo (under the user's namespace) that holds every run's job files and outputs.
pub const JOBS_REPO_NAME: &str = "bora-jobs";

/// The record of a run's job, in the run directory.
pub const JOB_RECORD: &str = "hf-job.json";

/// The job's command (its `huggingface_hub` pin is the trainer requirements'): fetch the
/// run's job folder, install the pinned requirements, run the trainer with its outputs
/// uploaded back to the run's folder; on a flavor of `BORA_GPUS` > 1 GPUs, one trainer
/// process per GPU under `torchrun` (data parallel). `BORA_REPO`, `BORA_FOLDER` and
/// `BORA_GPUS` come from the job's environment, `HF_TOKEN` from its secrets (and
/// `HF_ENDPOINT`, when set, from the environment: how a test Hub is reached).
pub const JOB_SCRIPT: &str = r#"set -eu
WORK="${TMPDIR:-/tmp}/bora-job"
python -m pip install --quiet --disable-pip-version-check "huggingface_hub==2.5.0"
python - "$WORK" <<'PY'
import os, sys
from huggingface_hub import snapshot_download
snapshot_download(repo_id=os.environ["BORA_REPO"], allow_patterns=[os.environ["BORA_FOLDER"] + "/job/*"], local_dir=sys.argv[1])
PY
JOB="$WORK/$BORA_FOLDER/job"
python -m pip install --quiet --disable-pip-version-check -r "$JOB/requirements.txt"
if [ "${BORA_GPUS:-1}" -gt 1 ]; then
  set -- python -m torch.distributed.run --standalone --nproc_per_node "$BORA_GPUS"
else
  set -- python
fi
exec "$@" "$JOB/trainer.py" --job "$JOB" --out "$WORK/out" --hub-repo "$BORA_REPO" --hub-path "$BORA_FOLDER/out"
"#;

/// Share of a GPU's dense bf16 peak assumed for a LoRA step of eager PyTorch in the duration
/// estimate: an assumption, not a measurement of the trainer on these GPUs.
pub const GPU_UTILIZATION: f64 = 0.35;

/// Seconds assumed for the job to start: image pull, requirements install, base model
/// download.
pub const SETUP_SECONDS: f64 = 600.0;

/// Log lines kept to show when a job fails.
const RECENT_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(
        "this run needs about {need:.1} GiB of GPU memory ({parts}) but {flavor} has {have:.0} GiB: \
         use a flavor with more memory, --qlora nf4, a smaller train.batch_size or \
         train.seq_len (with train.grad_accum for the same tokens per step), or train.recompute"
    )]
    DoesNotFit {
        need: f64,
        have: f64,
        flavor: String,
        parts: String,
    },
    #[error("{}: {what}", path.display())]
    Record { path: PathBuf, what: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = JobsError> = std::result::Result<T, E>;

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// What the preflight found.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub flavor: String,
    pub memory: GpuMemory,
    pub flavor_memory_gib: f64,
    /// GPUs the trainer runs on (data parallel when more than one).
    pub gpus: u32,
    pub steps: u64,
    pub tokens: u64,
    pub seconds: f64,
    pub usd: f64,
    pub timeout_seconds: u64,
}

impl Estimate {
    /// The lines shown before the job starts.
    pub fn lines(&self) -> Vec<String> {
        let m = &self.memory;
        vec![
            format!(
                "GPU memory: about {:.1} GiB of {}'s {:.0} GiB{} (weights {:.1}, LoRA state {:.2}, \
                 activations {:.1}, logits {:.1}, CUDA runtime {:.1})",
                gib(m.peak_bytes),
                self.flavor,
                self.flavor_memory_gib,
                if self.gpus > 1 {
                    format!(" per GPU, data parallel on {} GPUs", self.gpus)
                } else {
                    String::new()
                },
                gib(m.weight_bytes),
                gib(m.lora_bytes),
                gib(m.activation_bytes),
                gib(m.logits_bytes),
                gib(m.runtime_bytes)
            ),
            format!(
                "estimate: {} steps, {} token slots, about {} on {} (setup included) for about ${:.2}; \
                 job timeout {}",
                self.steps,
                self.tokens,
                clock(self.seconds),
                self.flavor,
                self.usd,
                clock(self.timeout_seconds as f64)
            ),
        ]
    }
}

/// Seconds as `1h02m`, or `4m05s`.
fn clock(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// GPUs that take micro-batches: the flavor's, at most one per micro-batch of a step (a
/// step's `grad_accum` micro-batches are shared out across them, so the step, and the
/// run, stay those of one GPU).
fn working_gpus(config: &RunConfig, flavor: &Flavor) -> u32 {
    flavor.gpus.min(config.train.grad_accum.max(1))
}

/// Checks the run fits `flavor` (each of its GPUs) and estimates its duration, cost and
/// timeout. `model_dir` is the base's files on this machine: its config and tokenizer, the
/// weights being the job's to download.
pub fn preflight(config: &RunConfig, model_dir: &Path, flavor: &Flavor) -> Result<Estimate> {
    let info = CheckpointInfo::open_shape(model_dir).map_err(TrainError::from)?;
    let memory = gpu_train_memory(config, &info)?;
    let have = flavor.gpu_memory_gib;
    if gib(memory.peak_bytes) > have {
        return Err(JobsError::DoesNotFit {
            need: gib(memory.peak_bytes),
            have,
            flavor: flavor.name.into(),
            parts: format!(
                "weights {:.1}, LoRA state {:.2}, activations {:.1}, logits {:.1}, CUDA runtime {:.1}",
                gib(memory.weight_bytes),
                gib(memory.lora_bytes),
                gib(memory.activation_bytes),
                gib(memory.logits_bytes),
                gib(memory.runtime_bytes)
            ),
        });
    }
    let tokenizer = Tokenizer::from_file(model_dir).map_err(TrainError::from)?;
    let plan = plan_data(config, &tokenizer)?;
    let t = &config.train;
    let tokens = plan.micro_batches(config) * (t.batch_size * t.seq_len) as u64;
    let flops = gpu_flops_per_token(config, &info) as f64 * tokens as f64;
    let gpus = working_gpus(config, flavor);
    let seconds =
        flops / (gpus as f64 * flavor.bf16_tflops * 1e12 * GPU_UTILIZATION) + SETUP_SECONDS;
    // Twice the estimate and half an hour, in whole minutes, at least an hour: an estimate
    // off by half still finishes, and a hung job stops costing.
    let timeout_seconds = ((2.0 * seconds + 1800.0) / 60.0).ceil() as u64 * 60;
    Ok(Estimate {
        flavor: flavor.name.into(),
        memory,
        flavor_memory_gib: have,
        gpus,
        steps: plan.total_steps,
        tokens,
        usd: seconds / 3600.0 * flavor.usd_per_hour,
        seconds,
        timeout_seconds: timeout_seconds.max(3600),
    })
}

/// Where jobs run and whose they are: the Hub endpoint, the token, and the user's repo for
/// job files.
pub struct Account {
    pub endpoint: String,
    token: Token,
    pub namespace: String,
    pub repo: RepoId,
}

impl Account {
    /// Endpoint and token as `huggingface_hub` finds them (`HF_ENDPOINT`, `HF_TOKEN` or the
    /// token file); the namespace is the token's user (`whoami-v2`).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Account> {
        let endpoint = bora_hub::hub::resolve_endpoint(None, &env);
        let token = Token::discover(&env)?;
        let me = HubClient::new(&endpoint, token.clone()).whoami()?;
        let repo = RepoId::parse(&format!("{}/{JOBS_REPO_NAME}", me.name))?;
        Ok(Account {
            endpoint,
            token,
            namespace: me.name,
            repo,
        })
    }

    pub fn client(&self) -> HubClient {
        HubClient::new(&self.endpoint, self.token.clone())
    }
}

/// A run's job, as recorded in `runs/NAME/hf-job.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub namespace: String,
    pub url: String,
    pub repo: String,
    pub folder: String,
    pub flavor: String,
}

impl JobRecord {
    pub fn load(run_dir: &Path) -> Result<JobRecord> {
        let path = run_dir.join(JOB_RECORD);
        let text = std::fs::read_to_string(&path).map_err(|source| JobsError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| JobsError::Record {
            path,
            what: format!("not a job record: {e}"),
        })
    }

    fn save(&self, run_dir: &Path) -> Result<()> {
        let path = run_dir.join(JOB_RECORD);
        let tmp = run_dir.join(format!("{JOB_RECORD}.tmp"));
        let io = |source| JobsError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| JobsError::Record {
            path: path.clone(),
            what: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// What the log-following thread sends.
enum LogMessage {
    Line(String),
    /// The job finished (its final state), or following it failed.
    End(std::result::Result<JobInfo, String>),
}

/// What [`HfJobsHost::start`] does.
enum Mode {
    /// Upload the job files and start a job; follow it unless `detach`.
    Launch { detach: bool },
    /// Follow the run's recorded job (`bora jobs attach`).
    Attach(JobRecord),
}

/// The trainer as a Hugging Face Job.
pub struct HfJobsHost {
    account: Account,
    mode: Mode,
    flavor: Flavor,
    timeout_seconds: u64,
    run_name: String,
    log_options: LogOptions,
    on_line: Box<dyn FnMut(&str)>,
    job_dir: PathBuf,
    job: Option<JobInfo>,
    log: Option<Receiver<LogMessage>>,
    end: Option<std::result::Result<JobInfo, String>>,
    recent: VecDeque<String>,
}

impl HfJobsHost {
    /// A host that runs run `run_name` on `flavor` with `timeout_seconds`, and follows it
    /// unless `detach`; `on_line` hears what bora does (uploads, the job's URL).
    pub fn new(
        account: Account,
        flavor: Flavor,
        timeout_seconds: u64,
        run_name: &str,
        detach: bool,
        on_line: Box<dyn FnMut(&str)>,
    ) -> HfJobsHost {
        HfJobsHost {
            account,
            mode: Mode::Launch { detach },
            flavor,
            timeout_seconds,
            run_name: run_name.to_owned(),
            log_options: LogOptions::default(),
            on_line,
            job_dir: PathBuf::new(),
            job: None,
            log: None,
            end: None,
            recent: VecDeque::new(),
        }
    }

    /// A host that follows the job recorded in `run_dir` (started with `--detach`, or left
    /// with Ctrl-C) from the start of its log.
    pub fn attach(
        account: Account,
        run_dir: &Path,
        run_name: &str,
        on_line: Box<dyn FnMut(&str)>,
    ) -> Result<HfJobsHost> {
        let record = JobRecord::load(run_dir)?;
        let flavor = Flavor::find(&record.flavor).map_err(|what| JobsError::Record {
            path: run_dir.join(JOB_RECORD),
            what,
        })?;
        let mut host = HfJobsHost::new(account, flavor, 0, run_name, false, on_line);
        host.mode = Mode::Attach(record);
        Ok(host)
    }

    /// How the log stream is read (tests shorten the silence allowed).
    pub fn with_log_options(mut self, options: LogOptions) -> HfJobsHost {
        self.log_options = options;
        self
    }

    /// The run's folder in the jobs repo.
    fn folder(&self) -> String {
        match &self.mode {
            Mode::Attach(record) => record.folder.clone(),
            Mode::Launch { .. } => format!("runs/{}", self.run_name),
        }
    }

    /// The job as `run_job` gets it.
    pub fn job_spec(&self) -> JobSpec {
        let folder = self.folder();
        let mut env = BTreeMap::from([
            ("BORA_REPO".to_owned(), self.account.repo.to_string()),
            ("BORA_FOLDER".to_owned(), folder),
            ("BORA_GPUS".to_owned(), self.flavor.gpus.to_string()),
            ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
        ]);
        if self.account.endpoint != bora_hub::hub::DEFAULT_ENDPOINT {
            env.insert("HF_ENDPOINT".into(), self.account.endpoint.clone());
        }
        JobSpec {
            image: IMAGE.into(),
            command: vec!["bash".into(), "-c".into(), JOB_SCRIPT.into()],
            env,
            secrets: Secrets(BTreeMap::from([(
                "HF_TOKEN".to_owned(),
                self.account.token.secret().to_owned(),
            )])),
            flavor: self.flavor.name.into(),
            timeout_seconds: Some(self.timeout_seconds),
            labels: BTreeMap::from([("bora-run".to_owned(), self.run_name.clone())]),
            name: Some(format!("bora-{}", self.run_name)),
        }
    }

    fn upload_job(&mut self, job: &Path) -> Result<()> {
        let client = self.account.client();
        client.create_repo(&self.account.repo, true)?;
        let folder = self.folder();
        let mut files = Vec::new();
        collect_files(job, job, &mut |rel, path| {
            files.push(LocalFile::from_path(format!("{folder}/job/{rel}"), path));
        })?;
        let on_line = &mut self.on_line;
        let mut sent = 0usize;
        let report = client.upload(
            &self.account.repo,
            "main",
            &files,
            &format!("bora: job files of run {}", self.run_name),
            &mut |event| {
                if let UploadEvent::File { outcome, .. } = event {
                    if outcome != bora_hub::hub::FileOutcome::Unchanged {
                        sent += 1;
                    }
                }
            },
        )?;
        on_line(&format!(
            "job files: {} of {} sent to {}/{}/job ({} unchanged){}",
            sent,
            files.len(),
            self.account.repo,
            folder,
            files.len() - sent,
            if report.commit.is_none() {
                ", nothing to commit"
            } else {
                ""
            }
        ));
        Ok(())
    }

    fn launch(&mut self, run_dir: &Path) -> Result<JobInfo> {
        let client = self.account.client();
        let job = client.run_job(&self.account.namespace, &self.job_spec())?;
        JobRecord {
            id: job.id.clone(),
            namespace: self.account.namespace.clone(),
            url: job.url.clone(),
            repo: self.account.repo.to_string(),
            folder: self.folder(),
            flavor: self.flavor.name.into(),
        }
        .save(run_dir)?;
        (self.on_line)(&format!(
            "job {} on {}: {}",
            job.id, self.flavor.name, job.url
        ));
        Ok(job)
    }

    fn follow(&mut self, job: &JobInfo) {
        let (tx, rx) = channel();
        let client = self.account.client();
        let (namespace, id, options) = (job.owner.clone(), job.id.clone(), self.log_options);
        std::thread::spawn(move || {
            let end = client
                .job_logs(&namespace, &id, options, &mut |line| match tx
                    .send(LogMessage::Line(line.to_owned()))
                {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                })
                .map_err(|e| e.to_string())
                .and_then(|job| job.ok_or_else(|| "the log stream stopped".to_owned()));
            let _ = tx.send(LogMessage::End(end));
        });
        self.log = Some(rx);
    }
}

/// Every file under `dir` except the trainer's own output, with its `/`-separated path
/// relative to `root`.
fn collect_files(root: &Path, dir: &Path, add: &mut dyn FnMut(String, PathBuf)) -> Result<()> {
    let io = |source| JobsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<std::result::Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if dir == root && entry.file_name() == "out" {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, add)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            add(rel.join("/"), path);
        }
    }
    Ok(())
}

fn trainer_error(e: JobsError) -> TrainError {
    match e {
        JobsError::Train(t) => t,
        other => TrainError::Trainer {
            what: other.to_string(),
        },
    }
}

impl TrainerHost for HfJobsHost {
    fn dtype(&self) -> &str {
        "auto"
    }

    fn model_access(&self) -> ModelAccess {
        ModelAccess::Hub
    }

    fn start(&mut self, job: &Path) -> bora_train::Result<()> {
        self.job_dir = job.to_path_buf();
        let run_dir = job.parent().unwrap_or(Path::new(".")).to_path_buf();
        let info = match &self.mode {
            Mode::Launch { detach } => {
                let detach = *detach;
                self.upload_job(job).map_err(trainer_error)?;
                let info = self.launch(&run_dir).map_err(trainer_error)?;
                if detach {
                    self.job = Some(info);
                    return Ok(());
                }
                info
            }
            Mode::Attach(record) => {
                let info = self
                    .account
                    .client()
                    .inspect_job(&record.namespace, &record.id)
                    .map_err(|e| trainer_error(e.into()))?;
                (self.on_line)(&format!(
                    "following job {} ({}): {}",
                    info.id, info.stage, info.url
                ));
                info
            }
        };
        self.follow(&info);
        self.job = Some(info);
        Ok(())
    }

    fn detached(&self) -> bool {
        matches!(self.mode, Mode::Launch { detach: true })
    }

    fn next_line(&mut self) -> bora_train::Result<Option<String>> {
        let Some(rx) = &self.log else {
            return Ok(None);
        };
        match rx.recv() {
            Ok(LogMessage::Line(line)) => {
                if !line.starts_with('{') {
                    if self.recent.len() == RECENT_LINES {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(line.clone());
                }
                Ok(Some(line))
            }
            Ok(LogMessage::End(end)) => {
                self.end = Some(end);
                self.log = None;
                Ok(None)
            }
            Err(_) => {
                self.log = None;
                Ok(None)
            }
        }
    }

    fn fetch(&mut self, rel: &str, files: &[&str]) -> bora_train::Result<PathBuf> {
        let client = self.account.client();
        let cache = HubCache::from_env(|k| std::env::var(k).ok());
        let downloader = Downloader::new(client, cache);
        let dest = self.job_dir.join("out").join(rel);
        std::fs::create_dir_all(&dest).map_err(|source| TrainError::Io {
            path: dest.clone(),
            source,
        })?;
        for file in files {
            let in_repo = format!("{}/out/{rel}/{file}", self.folder());
            let cached = downloader
                .file(&self.account.repo, "main", &in_repo, &mut |_| {})
                .map_err(|e| TrainError::Trainer {
                    what: format!("downloading {in_repo} from {}: {e}", self.account.repo),
                })?;
            let target = dest.join(file);
            std::fs::copy(&cached, &target).map_err(|source| TrainError::Io {
                path: target.clone(),
                source,
            })?;
        }
        Ok(dest)
    }

    fn failure(&mut self) -> bora_train::Result<Option<String>> {
        let id = self.job.as_ref().map(|j| j.id.clone()).unwrap_or_default();
        let last = if self.recent.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = self.recent.iter().map(String::as_str).collect();
            format!("; last lines of its log:\n  {}", lines.join("\n  "))
        };
        Ok(match self.end.take() {
            Some(Ok(job)) if job.stage == "COMPLETED" => None,
            Some(Ok(job)) => Some(format!(
                "job {id} ended in stage {}{}{last}",
                job.stage,
                job.message.map(|m| format!(" ({m})")).unwrap_or_default()
            )),
            Some(Err(e)) => Some(format!(
                "following job {id} failed: {e}; it may still run (`bora jobs logs` and \
                 `bora jobs cancel` reach it){last}"
            )),
            None => Some(format!("the log of job {id} ended early{last}")),
        })
    }
}

/// A job named on the command line: a run directory (its `hf-job.json`) or a job id of the
/// account's namespace. Returns (namespace, job id).
pub fn resolve_job(target: &str, account: &Account) -> Result<(String, String)> {
    let dir = Path::new(target);
    if dir.join(JOB_RECORD).is_file() {
        let record = JobRecord::load(dir)?;
        return Ok((record.namespace, record.id));
    }
    if dir.is_dir() {
        return Err(JobsError::Record {
            path: dir.join(JOB_RECORD),
            what: "this run directory has no job: it was not trained with --on hf-jobs".into(),
        });
    }
    Ok((account.namespace.clone(), target.to_owned()))
}

/// bora's jobs in the account's namespace (those labelled with a run), newest first as the
/// API lists them.
pub fn list_runs(account: &Account) -> Result<Vec<JobInfo>> {
    let jobs = account.client().list_jobs(&account.namespace, &[])?;
    Ok(jobs
        .into_iter()
        .filter(|j| j.labels.contains_key("bora-run"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_script_installs_the_hub_client_the_trainer_pins() {
        let pin = bora_train::REQUIREMENTS
            .lines()
            .find(|l| l.starts_with("huggingface_hub=="))
            .expect("the trainer pins huggingface_hub");
        assert!(JOB_SCRIPT.contains(&format!("\"{pin}\"")), "{pin}");
    }

    #[test]
    fn durations_read_as_clocks() {
        assert_eq!(clock(3600.0), "1h00m");
        assert_eq!(clock(245.0), "4m05s");
    }
}
