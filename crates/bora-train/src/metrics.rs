//! Where training metrics go: `metrics.jsonl` (read by `bora eval` reports and by people),
//! TensorBoard event files (read by TensorBoard and by `wandb sync --sync-tensorboard`), and
//! the W&B client in bora-hub, all behind one small trait.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result, TrainError};
use crate::fsutil::write_atomic;

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

/// A destination for metrics. A trait because there are three (JSONL, TensorBoard, W&B)
/// and the loop should not care which are on.
pub trait MetricSink {
    fn log(&mut self, metrics: &Metrics) -> Result<()>;
    /// Makes everything logged so far durable; called at checkpoints and at the end.
    fn flush(&mut self) -> Result<()>;
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
                        serde_json::from_str(&line).map_err(|e| TrainError::Invalid {
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
        let mut line = serde_json::to_string(metrics).map_err(|e| TrainError::Invalid {
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
            "events.out.tfevents.{}.{}.{}.{}",
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
        self.writer.out.sync_data().map_err(io_err(&self.path))
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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

/// Writes TensorBoard's record format: TFRecord framing around `Event` protobufs, encoded by
/// hand for the four fields scalars need, so bora needs no protobuf dependency.
pub struct EventWriter<W: Write> {
    out: W,
}

impl<W: Write> EventWriter<W> {
    /// Starts a file with the `brain.Event:2` version record readers look for first.
    pub fn new(out: W, wall_time: f64) -> std::io::Result<Self> {
        let mut writer = Self { out };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time);
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.record(&event)?;
        Ok(writer)
    }

    /// One scalar event, flushed so a live TensorBoard sees it at once.
    pub fn scalar(
        &mut self,
        tag: &str,
        value: f32,
        step: i64,
        wall_time: f64,
    ) -> std::io::Result<()> {
        let mut value_msg = Vec::new();
        put_bytes(&mut value_msg, 1, tag.as_bytes());
        // proto3 leaves out fields holding their default (+0.0); readers read them as 0.
        if value.to_bits() != 0 {
            put_key(&mut value_msg, 2, WIRE_FIXED32);
            value_msg.extend_from_slice(&value.to_le_bytes());
        }
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &value_msg);
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time);
        if step != 0 {
            put_key(&mut event, 2, WIRE_VARINT);
            put_varint(&mut event, step as u64);
        }
        put_bytes(&mut event, 5, &summary);
        self.record(&event)?;
        self.out.flush()
    }

    /// TFRecord framing: length, masked CRC of the length, payload, masked CRC of the
    /// payload, so a reader can tell a torn tail from data.
    fn record(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let len = (payload.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(payload.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(payload);
        rec.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
        self.out.write_all(&rec)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn put_double(buf: &mut Vec<u8>, field: u32, v: f64) {
    if v.to_bits() != 0 {
        put_key(buf, field, WIRE_FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masking, which keeps a CRC stored inside CRC'd data from looking like a
/// valid checksum of itself.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xA282_EAD8)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn varint_steps_beyond_one_byte() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
        out.clear();
        put_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        assert_eq!(out[9], 0x01);
    }
}
