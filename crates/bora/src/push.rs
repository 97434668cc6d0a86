//! `bora push`: publish a run to the Hugging Face Hub with a model card, through
//! `bora_hub::hub`, and/or log it to W&B as `model` artifacts (`--wandb-artifact`). Every check that can fail without the network (repo id, run directory,
//! exports, token) runs before the first request, and the token check runs before anything is
//! created or uploaded.
//!
//! Repo layout: the adapter at the root, so `PeftModel.from_pretrained(base, "ORG/NAME")`
//! works with no `subfolder`; the merged model under `merged/`, because a root `config.json`
//! beside `adapter_config.json` makes transformers load the repo as an adapter; GGUF files
//! under `gguf/`; the card's loss chart as `eval/loss.svg`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bora_eval::{EvalResults, RunInfo, RESULTS_FILE};
use bora_formats::cache::DEFAULT_MODEL_FILE;
use bora_formats::gguf::GgufFile;
use bora_hub::card::{model_card, CardInput, RepoContents, MODEL_CARD};
use bora_hub::hub::{
    resolve_endpoint, FileOutcome, HubClient, LocalFile, ModelRef, RepoId, Token, UploadEvent,
    UploadMode,
};
use bora_run::MetricSink;
use bora_run::{RunDir, ADAPTER_CONFIG_FILE};
use bora_train::{RunConfig, TrackingSection};
use clap::{Args, ValueEnum};

use crate::train::wandb_tracking;

/// The Hub id of the default model's weights: its GGUF file does not record where it came
/// from, and a card's `base_model` must be a Hub id.
const DEFAULT_MODEL_HUB_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
const LOSS_CHART: &str = "eval/loss.svg";

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The run directory to publish.
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// The Hub repo, ORG/NAME; created if it does not exist.
    #[arg(
        long,
        value_name = "ORG/NAME",
        required_unless_present = "wandb_artifact"
    )]
    repo: Option<String>,
    /// Log what --what names to Weights & Biases as `model` artifacts of the run's W&B run
    /// (the one training tracked, else a new one), PROJECT or PROJECT/ENTITY: the adapter,
    /// versioned by content, and the exports. With or without --repo.
    #[arg(long, value_name = "PROJECT[/ENTITY]")]
    wandb_artifact: Option<String>,
    /// Link the logged adapter to this W&B registry collection: COLLECTION (in the `model`
    /// registry) or REGISTRY/COLLECTION.
    #[arg(
        long,
        value_name = "[REGISTRY/]COLLECTION",
        requires = "wandb_artifact"
    )]
    wandb_registry: Option<String>,
    /// What to upload: the adapter, and the `merged` / `gguf` exports of `bora export`.
    #[arg(long, value_delimiter = ',', default_value = "adapter")]
    what: Vec<What>,
    /// Create the repo private (an existing repo keeps its visibility).
    #[arg(long)]
    private: bool,
    /// Hub URL [default: $HF_ENDPOINT, else https://huggingface.co].
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Branch to commit to.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Commit message [default: "Upload WHAT of run NAME with bora"].
    #[arg(long, value_name = "MSG")]
    message: Option<String>,
    /// Hub id of the base model, for the card's `base_model` and the uploaded
    /// `adapter_config.json` [default: the run's model when it is a Hub id].
    #[arg(long, value_name = "HF_ID")]
    base_model: Option<String>,
    /// License id for the card [default: the base GGUF's `general.license`].
    #[arg(long, value_name = "ID")]
    license: Option<String>,
    /// A Hub dataset id the run trained on, for the card (repeatable).
    #[arg(long = "dataset", value_name = "HF_ID")]
    datasets: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum What {
    Adapter,
    Merged,
    Gguf,
}

impl What {
    fn name(self) -> &'static str {
        match self {
            What::Adapter => "adapter",
            What::Merged => "merged",
            What::Gguf => "gguf",
        }
    }
}

pub fn run(args: &PushArgs) -> Result<()> {
    let repo = args.repo.as_deref().map(RepoId::parse).transpose()?;
    let run = &args.run;
    let config = RunConfig::load_unchecked(RunDir::at(run).config_path())
        .with_context(|| format!("{} is not a bora run directory", run.display()))?;
    let mut what = args.what.clone();
    what.sort_by_key(|w| *w as u8);
    what.dedup();
    if let Some(repo) = repo {
        push_to_hub(args, &config, &what, repo)?;
    }
    if let Some(target) = &args.wandb_artifact {
        log_to_wandb(args, &config, &what, target)?;
    }
    Ok(())
}

/// Logs each part `what` names as a `model` artifact of the run's W&B run; fails when any
/// was not logged (the warning says why and how to retry).
fn log_to_wandb(args: &PushArgs, config: &RunConfig, what: &[What], target: &str) -> Result<()> {
    let run = &args.run;
    let section = TrackingSection {
        wandb: target.to_owned(),
        wandb_offline: false,
        wandb_registry: args.wandb_registry.clone().unwrap_or_default(),
    };
    let registry = crate::wandb_models::registry(&section)?;
    let mut requests = Vec::new();
    for w in what {
        let request = match w {
            What::Adapter => {
                if !RunDir::at(run).has_adapter() {
                    bail!(
                        "{}: the run has no final adapter yet",
                        RunDir::at(run).adapter_dir().display()
                    );
                }
                crate::wandb_models::adapter_request(run, config, target, registry.clone())
            }
            What::Merged | What::Gguf => {
                let dir = run.join("export").join(w.name());
                if !dir.is_dir() {
                    return Err(no_export(run, &dir, *w));
                }
                crate::wandb_models::export_request(run, config, w.name(), dir, target)
            }
        };
        requests.push(request);
    }
    let mut tracking =
        wandb_tracking(&section, config)?.context("--wandb-artifact names no W&B project")?;
    tracking.start(&RunDir::at(run), 0)?;
    let logged = requests
        .iter()
        .filter(|r| tracking.log_artifact(r).is_some())
        .count();
    tracking.close(logged == requests.len())?;
    if logged < requests.len() {
        bail!(
            "{} of {} artifacts were not logged to W&B (see the warning above)",
            requests.len() - logged,
            requests.len()
        );
    }
    Ok(())
}

/// The error for a `--what` export that `bora export` has not written yet.
fn no_export(run: &Path, dir: &Path, what: What) -> anyhow::Error {
    anyhow::anyhow!(
        "{} holds no {} export; write it first with `bora export --run {} --format {}`",
        dir.display(),
        what.name(),
        run.display(),
        what.name()
    )
}

/// The Hub side of `bora push`: files, card, repo, upload.
fn push_to_hub(args: &PushArgs, config: &RunConfig, what: &[What], repo: RepoId) -> Result<()> {
    let run = &args.run;

    let base_model = args
        .base_model
        .clone()
        .or_else(|| hub_id_of(&config.model.path));
    let mut files = Vec::new();
    let mut contents = RepoContents::default();
    for w in what {
        match w {
            What::Adapter => {
                files.extend(adapter_files(run, base_model.as_deref())?);
                contents.adapter = true;
            }
            What::Merged | What::Gguf => {
                let dir = run.join("export").join(w.name());
                let found = files_under(&dir, w.name())?;
                if found.is_empty() {
                    return Err(no_export(run, &dir, *w));
                }
                if *w == What::Merged {
                    contents.merged = Some("merged".into());
                } else {
                    contents.gguf = found
                        .iter()
                        .map(|f| f.path_in_repo.clone())
                        .filter(|p| p.ends_with(".gguf"))
                        .collect();
                }
                files.extend(found);
            }
        }
    }
    let chart = bora_eval::loss_chart_svg(&RunInfo::load(run)?);
    if let Some(svg) = &chart {
        files.push(LocalFile::from_bytes(LOSS_CHART, svg.clone().into_bytes()));
    }
    let card = CardInput {
        repo: repo.to_string(),
        run_name: config.name.clone(),
        base_model: base_model.clone(),
        license: args
            .license
            .clone()
            .or_else(|| gguf_license(&config.model.path)),
        datasets: args.datasets.clone(),
        contents,
        config_toml: Some(shareable_config(config)?),
        eval: eval_section(run)?,
        loss_chart: chart.map(|_| LOSS_CHART.to_owned()),
    };
    files.push(LocalFile::from_bytes(
        MODEL_CARD,
        model_card(&card).into_bytes(),
    ));
    if base_model.is_none() {
        eprintln!(
            "note: the run's model `{}` is not a Hub id; pass --base-model ORG/NAME to link the base model",
            config.model.path
        );
    }

    let token = Token::discover(|k| std::env::var(k).ok())?;
    let endpoint = resolve_endpoint(args.endpoint.as_deref(), |k| std::env::var(k).ok());
    let client = HubClient::new(&endpoint, token);
    let (me, _) = client.check_write_access(&repo)?;
    eprintln!("token of `{}` accepted by {endpoint}", me.name);
    let created = client.create_repo(&repo, args.private)?;
    eprintln!(
        "repo {repo}: {}",
        if created { "created" } else { "exists" }
    );
    let names: Vec<&str> = what.iter().map(|w| w.name()).collect();
    let message = args.message.clone().unwrap_or_else(|| {
        format!(
            "Upload {} of run {} with bora",
            names.join(", "),
            config.name
        )
    });
    let report = client.upload(&repo, &args.revision, &files, &message, &mut print_event)?;
    println!("{endpoint}/{repo}");
    match &report.commit {
        Some((url, _)) => println!(
            "committed {} files, {} sent: {url}",
            report
                .files
                .iter()
                .filter(|f| f.1 != FileOutcome::Unchanged)
                .count(),
            size(report.bytes_sent)
        ),
        None => println!("nothing changed: every file is already on the Hub"),
    }
    Ok(())
}

fn print_event(e: UploadEvent) {
    match e {
        UploadEvent::File {
            path,
            size: n,
            mode,
            outcome,
        } => {
            let what = match outcome {
                FileOutcome::Unchanged => "unchanged, not sent".to_owned(),
                FileOutcome::Ignored => "ignored by the repo's .gitignore".to_owned(),
                FileOutcome::Regular => "sent in the commit".to_owned(),
                FileOutcome::Uploaded { parts: 1 } => "uploaded to LFS".to_owned(),
                FileOutcome::Uploaded { parts } => format!("uploaded to LFS in {parts} parts"),
                FileOutcome::AlreadyStored => "already in LFS storage, not sent".to_owned(),
            };
            let mode = match mode {
                UploadMode::Lfs => "lfs",
                UploadMode::Regular => "regular",
            };
            eprintln!("  {path} ({}, {mode}): {what}", size(n));
        }
        UploadEvent::Part { path, part, parts } if parts > 1 => {
            eprintln!("  {path}: part {part}/{parts} stored");
        }
        UploadEvent::Part { .. } => {}
        UploadEvent::Committed { url } => eprintln!("commit {url}"),
        UploadEvent::NothingToCommit => {}
    }
}

pub(crate) fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The run's model as a Hub id: the id itself when the run named one, the known id of the
/// default model's file; `None` for other local paths.
fn hub_id_of(model: &str) -> Option<String> {
    let path = Path::new(model);
    if path.file_name().and_then(|n| n.to_str()) == Some(DEFAULT_MODEL_FILE) {
        return Some(DEFAULT_MODEL_HUB_ID.to_owned());
    }
    let gguf_path = model.ends_with(".gguf") && !model.contains(':');
    let local = path.exists() || gguf_path || path.is_absolute();
    let hub = ModelRef::parse(model).ok().filter(|_| !local)?;
    Some(hub.repo.to_string())
}

fn gguf_license(model: &str) -> Option<String> {
    if !model.ends_with(".gguf") {
        return None;
    }
    let gguf = GgufFile::open(model).ok()?;
    gguf.opt_str("general.license")
        .ok()
        .flatten()
        .map(str::to_owned)
}

/// The adapter files; `adapter_config.json` gets the base model's Hub id as
/// `base_model_name_or_path`, since the local path training recorded means nothing to
/// whoever loads the adapter from the Hub.
fn adapter_files(run: &Path, base_model: Option<&str>) -> Result<Vec<LocalFile>> {
    let dir = RunDir::at(run).adapter_dir();
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    if !config_path.is_file() {
        bail!(
            "{}: the run has no final adapter; finish it with `bora train --resume {}`",
            config_path.display(),
            run.display()
        );
    }
    let mut files = files_under(&dir, "")?;
    if let Some(base) = base_model {
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let mut value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", config_path.display()))?;
        value["base_model_name_or_path"] = serde_json::json!(base);
        let bytes = serde_json::to_vec_pretty(&value)?;
        for f in &mut files {
            if f.path_in_repo == ADAPTER_CONFIG_FILE {
                *f = LocalFile::from_bytes(ADAPTER_CONFIG_FILE, bytes.clone());
            }
        }
    }
    Ok(files)
}

/// Every regular file under `dir`, as repo paths under `prefix`, sorted; an absent `dir`
/// gives none.
fn files_under(dir: &Path, prefix: &str) -> Result<Vec<LocalFile>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut stack = vec![(dir.to_path_buf(), prefix.to_owned())];
    while let Some((d, p)) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry.with_context(|| format!("reading {}", d.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let repo_path = if p.is_empty() {
                name
            } else {
                format!("{p}/{name}")
            };
            let path = entry.path();
            if path.is_dir() {
                stack.push((path, repo_path));
            } else if path.is_file() {
                out.push(LocalFile::from_path(repo_path, path));
            }
        }
    }
    out.sort_by(|a, b| a.path_in_repo.cmp(&b.path_in_repo));
    Ok(out)
}

/// The resolved config with local paths cut to file names: a public card should not show
/// the trainer's directories.
fn shareable_config(config: &RunConfig) -> Result<String> {
    let mut c = config.clone();
    let file_name = |p: &Path| {
        p.file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| p.to_path_buf())
    };
    if Path::new(&c.model.path).exists() || c.model.path.starts_with('/') {
        c.model.path = file_name(Path::new(&c.model.path))
            .to_string_lossy()
            .into_owned();
    }
    c.data.train = file_name(&c.data.train);
    c.data.eval = file_name(&c.data.eval);
    Ok(c.to_toml()?)
}

/// The card's Evaluation section from `RUN/eval/results.json`, when the run was evaluated.
fn eval_section(run: &Path) -> Result<Option<String>> {
    let path = RunDir::at(run).eval_dir().join(RESULTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let r: EvalResults = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a bora eval result", path.display()))?;
    Ok(Some(bora_eval::card_section(&r)))
}
