//! Where training metrics go: `metrics.jsonl` (read by `bora eval` reports and by people),
//! TensorBoard event files (read by TensorBoard and by `wandb sync --sync-tensorboard`), and
//! the W&B client in bora-hub, all behind one small trait that the training loop writes to
//! without knowing which sinks are on (torchtune's metric loggers).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, RunError};
use crate::events::{wall_time, EventWriter};
use crate::layout::{RunDir, EVENTS_PREFIX};
use bora_formats::atomic::write_file as write_atomic;

/// What one optimizer step reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub step: u64,
    /// Mean token loss over the step's accumulation window.
    pub loss: f32,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Trained (loss-bearing) tokens of the step per second of its wall time.
    pub tokens_per_s: f64,
    /// Every token slot the step computed (batch × sequence × accumulation, padding and
    /// prompts included), per second of the same wall time: the rate other trainers show.
    #[serde(default)]
    pub processed_tokens_per_s: f64,
    /// Present on steps where validation ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
}

impl Metrics {
    /// The metrics as (TensorBoard tag, value) pairs; W&B and TensorBoard show the same names.
    pub fn scalars(&self) -> Vec<(&'static str, f32)> {
        let mut out = vec![
            ("train/loss", self.loss),
            ("train/lr", self.lr as f32),
            ("train/grad_norm", self.grad_norm),
            ("train/tokens_per_s", self.tokens_per_s as f32),
        ];
        if let Some(v) = self.val_loss {
            out.push(("val/loss", v));
        }
        out
    }
}

/// A destination for metrics. The loop calls [`MetricSink::start`] once its run directory
/// exists and it knows the step it starts from, then `log` per step, `flush` at each
/// checkpoint, and `close` at the end, whether the run succeeded or not.
pub trait MetricSink {
    /// The run is set up in `run` and continues after `first_step` (0 for a new run).
    fn start(&mut self, run: &RunDir, first_step: u64) -> Result<()> {
        let _ = (run, first_step);
        Ok(())
    }
    fn log(&mut self, metrics: &Metrics) -> Result<()>;
    /// Makes everything logged so far durable; called at checkpoints and at the end.
    fn flush(&mut self) -> Result<()>;
    /// The run ended, successfully when `ok`; nothing is logged after.
    fn close(&mut self, ok: bool) -> Result<()> {
        let _ = ok;
        self.flush()
    }
}

/// The run directory's own metric files, `metrics.jsonl` and a TensorBoard event file,
/// opened when the run starts: a resumed run drops the lines of steps after its checkpoint.
#[derive(Default)]
pub struct RunFiles {
    open: Option<(JsonlSink, TensorBoardSink)>,
}

impl MetricSink for RunFiles {
    fn start(&mut self, run: &RunDir, first_step: u64) -> Result<()> {
        let jsonl = if first_step > 0 {
            JsonlSink::resume(run.metrics_path(), first_step)?
        } else {
            JsonlSink::create(run.metrics_path())?
        };
        self.open = Some((jsonl, TensorBoardSink::create(run.path())?));
        Ok(())
    }

    fn log(&mut self, metrics: &Metrics) -> Result<()> {
        match self.open.as_mut() {
            Some((jsonl, events)) => {
                jsonl.log(metrics)?;
                events.log(metrics)
            }
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self.open.as_mut() {
            Some((jsonl, events)) => {
                jsonl.flush()?;
                events.flush()
            }
            None => Ok(()),
        }
    }
}

#[derive(Deserialize)]
struct StepOnly {
    step: u64,
}

/// `metrics.jsonl`: one JSON object per step, appended and flushed line by line.
pub struct JsonlSink {
    path: PathBuf,
    file: File,
}

impl JsonlSink {
    /// Starts a new file (an existing one is replaced).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        write_atomic(path, b"")?;
        Self::append_to(path)
    }

    /// Continues a file after resuming from the checkpoint at `last_step`: lines of later
    /// steps were logged by the run that was killed and will be logged again, so they are
    /// dropped (the file is rewritten atomically) before appending.
    pub fn resume(path: impl AsRef<Path>, last_step: u64) -> Result<Self> {
        let path = path.as_ref();
        let mut kept = String::new();
        match File::open(path) {
            Ok(file) => {
                for (i, line) in BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(io_err(path))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    // Only the step matters here; a NaN logged as `null` must not stop a resume.
                    let m: StepOnly =
                        serde_json::from_str(&line).map_err(|e| RunError::Invalid {
                            path: path.to_path_buf(),
                            what: format!("line {}: {e}", i + 1),
                        })?;
                    if m.step <= last_step {
                        kept.push_str(&line);
                        kept.push('\n');
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
        write_atomic(path, kept.as_bytes())?;
        Self::append_to(path)
    }

    fn append_to(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }
}

impl MetricSink for JsonlSink {
    fn log(&mut self, metrics: &Metrics) -> Result<()> {
        let mut line = serde_json::to_string(metrics).map_err(|e| RunError::Invalid {
            path: self.path.clone(),
            what: format!("cannot encode metrics: {e}"),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io_err(&self.path))
    }

    fn flush(&mut self) -> Result<()> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// A TensorBoard event file in a run directory.
pub struct TensorBoardSink {
    path: PathBuf,
    writer: EventWriter<File>,
}

impl TensorBoardSink {
    /// Creates `events.out.tfevents.<secs>.<host>.<pid>.<n>` in `dir` (torch's naming; the
    /// pid and counter keep a resumed run from clobbering the file of the same second).
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let now = wall_time();
        let name = format!(
            "{EVENTS_PREFIX}{}.{}.{}.{}",
            now as u64,
            hostname(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.as_ref().join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let writer = EventWriter::new(file, now).map_err(io_err(&path))?;
        Ok(Self { path, writer })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl MetricSink for TensorBoardSink {
    fn log(&mut self, metrics: &Metrics) -> Result<()> {
        let now = wall_time();
        for (tag, value) in metrics.scalars() {
            self.writer
                .scalar(tag, value, metrics.step as i64, now)
                .map_err(io_err(&self.path))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.writer
            .get_ref()
            .sync_data()
            .map_err(io_err(&self.path))
    }
}

/// The host name for the event file name; TensorBoard only uses it to tell writers apart.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::masked_crc32c;

    /// Record payloads of a TFRecord stream, each CRC checked.
    fn records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
                masked_crc32c(&bytes[..8])
            );
            let payload = &bytes[12..12 + len];
            assert_eq!(
                u32::from_le_bytes(bytes[12 + len..16 + len].try_into().unwrap()),
                masked_crc32c(payload)
            );
            out.push(payload.to_vec());
            bytes = &bytes[16 + len..];
        }
        out
    }

    #[test]
    fn tensorboard_sink_writes_one_event_per_scalar() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = TensorBoardSink::create(tmp.path()).unwrap();
        let name = sink
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert!(name.contains(&format!(".{}.", hostname())), "{name}");
        let mut m = Metrics {
            step: 1,
            loss: 2.0,
            lr: 1e-4,
            grad_norm: 0.5,
            tokens_per_s: 100.0,
            processed_tokens_per_s: 150.0,
            val_loss: None,
        };
        sink.log(&m).unwrap();
        m.step = 2;
        m.val_loss = Some(1.5);
        sink.log(&m).unwrap();
        sink.flush().unwrap();
        let second = TensorBoardSink::create(tmp.path()).unwrap();
        assert_ne!(second.path(), sink.path());

        let recs = records(&std::fs::read(sink.path()).unwrap());
        assert_eq!(recs.len(), 1 + 4 + 5);
        assert!(recs[0].windows(13).any(|w| w == b"brain.Event:2"));
        for (rec, (tag, _)) in recs[5..].iter().zip(m.scalars()) {
            assert!(rec.windows(tag.len()).any(|w| w == tag.as_bytes()), "{tag}");
        }
    }
}
