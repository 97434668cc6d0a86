//! `bora download`, and the `--model` resolution every command shares (through
//! `bora_hub::hub::locate_model`): a local path, or a Hub id found in the Hugging Face cache
//! or fetched into it, with a progress line on a terminal and nothing otherwise.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bora_hub::hub::{
    locate_model, locate_model_config, locate_tokenizer, DownloadEvent, Downloader, Located,
    ModelRef,
};
use bora_train::ModelSection;
use clap::Args;

use crate::push::size;

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The model: ORG/NAME, ORG/NAME@REVISION (a branch, tag or commit), or
    /// ORG/NAME:FILE.gguf for one GGUF file of the repo.
    #[arg(value_name = "ORG/NAME[@REV]")]
    model: String,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Fetches the files the model needs into the cache, asking the Hub which commit the
/// revision names now; prints the local path.
pub fn run(args: &DownloadArgs) -> Result<()> {
    let model = ModelRef::parse(&args.model)?;
    let downloader = Downloader::from_env(env)?;
    let mut progress = Progress::new();
    let got = downloader.fetch_model(&model, &mut |e| progress.event(e))?;
    eprintln!("{model} at commit {}", got.commit);
    println!("{}", got.path.display());
    Ok(())
}

/// A `--model` argument: a path that exists, else a Hub id, downloaded when the cache does
/// not hold it; `revision` pins a run's commit.
pub fn locate(text: &str, revision: Option<&str>) -> Result<Located> {
    let mut progress = Progress::new();
    locate_model(text, revision, env, &mut |e| progress.event(e))
        .with_context(|| format!("model {text}"))
}

/// [`locate`] for a run trained elsewhere (`--on hf-jobs`): of a Hub model only the config
/// and tokenizer are fetched, the job downloading the weights itself.
pub fn locate_config(text: &str, revision: Option<&str>) -> Result<Located> {
    let mut progress = Progress::new();
    locate_model_config(text, revision, env, &mut |e| progress.event(e))
        .with_context(|| format!("model {text}"))
}

/// The path to load for a `--tokenizer` argument: a path that exists, else a Hub id whose
/// tokenizer files (not its weights) are fetched when the cache does not hold them.
pub fn tokenizer_path(text: &str) -> Result<PathBuf> {
    let mut progress = Progress::new();
    locate_tokenizer(text, env, &mut |e| progress.event(e))
        .with_context(|| format!("tokenizer {text}"))
}

/// The path to load for a `--model` argument.
pub fn model_path(model: &Path) -> Result<PathBuf> {
    Ok(locate(&model.to_string_lossy(), None)?.path)
}

/// The path to load for a run's base model, at the commit the run pinned.
pub fn run_model(model: &ModelSection) -> Result<PathBuf> {
    let revision = (!model.revision.is_empty()).then_some(model.revision.as_str());
    Ok(locate(&model.path, revision)?.path)
}

/// One line per file on a terminal (bytes, rate, ETA), rewritten at most five times a
/// second; nothing when stderr is not one, except retries and cache fall-backs.
struct Progress {
    terminal: bool,
    started: Instant,
    from: u64,
    shown: Option<Instant>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
            from: 0,
            shown: None,
        }
    }

    fn event(&mut self, event: DownloadEvent<'_>) {
        match event {
            DownloadEvent::Plan {
                commit,
                files,
                bytes,
            } if self.terminal && files > 0 => {
                eprintln!(
                    "downloading {files} files ({}) of commit {commit}",
                    size(bytes)
                )
            }
            DownloadEvent::Start { from, .. } => {
                self.started = Instant::now();
                self.from = from;
                self.shown = None;
            }
            DownloadEvent::Progress {
                file,
                done,
                size: total,
            } if self.terminal => {
                let due = self
                    .shown
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(200));
                if due || Some(done) == total {
                    self.shown = Some(Instant::now());
                    let secs = self.started.elapsed().as_secs_f64().max(1e-3);
                    let rate = (done - self.from) as f64 / secs;
                    let rest = match total {
                        Some(t) if rate > 0.0 => {
                            format!(" ETA {:.0}s", t.saturating_sub(done) as f64 / rate)
                        }
                        _ => String::new(),
                    };
                    let of = total.map_or(String::new(), |t| format!(" / {}", size(t)));
                    eprint!(
                        "\r\x1b[2K  {file}: {}{of}  {}/s{rest}",
                        size(done),
                        size(rate as u64)
                    );
                    let _ = std::io::stderr().flush();
                }
            }
            DownloadEvent::Done { .. } if self.terminal => eprintln!(),
            DownloadEvent::Retry { file, at, why } => {
                if self.terminal {
                    eprintln!();
                }
                eprintln!("{file}: {why}; resuming at byte {at}");
            }
            DownloadEvent::Waiting { file } => {
                eprintln!("{file}: another process is downloading it into the same cache; waiting")
            }
            DownloadEvent::UsingCache { why } => {
                eprintln!("the Hub could not be asked ({why}); using the cached copy")
            }
            _ => {}
        }
    }
}
