//! Where results go: `runs/NAME/eval/` (results, samples, reports), and the run's own
//! TensorBoard events and `metrics.jsonl`, so eval scores sit beside the loss curves.

use std::io::Write;
use std::path::{Path, PathBuf};

use bora_run::{wall_time, EventWriter, RunDir, Timing, EVENTS_PREFIX};
use serde_json::{Map, Value};

use crate::error::{io_err, EvalError, Result};
use crate::eval::{EvalResults, SampleRow};
use crate::report::{render_html_with_audio, render_markdown, RunInfo, SpokenSample};

pub const RESULTS_FILE: &str = "results.json";
pub const SAMPLES_FILE: &str = "samples.jsonl";
pub const REPORT_MD: &str = "report.md";
pub const REPORT_HTML: &str = "report.html";

/// Writes `path` through a temporary file in the same directory, synced, then renamed, so a
/// reader never sees half a report.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes `results.json`, `samples.jsonl`, `report.md` and `report.html` into `dir` and
/// returns the HTML report's path.
pub fn write_eval_dir(
    dir: &Path,
    results: &EvalResults,
    samples: &[SampleRow],
    run: Option<&RunInfo>,
) -> Result<PathBuf> {
    write_eval_dir_with_audio(dir, results, samples, run, &[])
}

/// [`write_eval_dir`] with the answers of `spoken` read aloud in the HTML report.
pub fn write_eval_dir_with_audio(
    dir: &Path,
    results: &EvalResults,
    samples: &[SampleRow],
    run: Option<&RunInfo>,
    spoken: &[SpokenSample],
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_atomic(&dir.join(RESULTS_FILE), to_json(results, dir)?.as_bytes())?;
    let mut lines = String::new();
    for s in samples {
        lines.push_str(&to_json(s, dir)?);
        lines.push('\n');
    }
    write_atomic(&dir.join(SAMPLES_FILE), lines.as_bytes())?;
    write_atomic(
        &dir.join(REPORT_MD),
        render_markdown(results, samples, run).as_bytes(),
    )?;
    let html = dir.join(REPORT_HTML);
    write_atomic(
        &html,
        render_html_with_audio(results, samples, run, spoken).as_bytes(),
    )?;
    Ok(html)
}

fn to_json<T: serde::Serialize>(value: &T, dir: &Path) -> Result<String> {
    serde_json::to_string(value).map_err(|e| EvalError::Invalid {
        path: dir.to_path_buf(),
        what: format!("cannot encode results: {e}"),
    })
}

/// The scalars an evaluation adds to a run, as (tag, value).
pub fn eval_scalars(results: &EvalResults) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let sides = [
        ("base", Some(&results.base)),
        ("tuned", results.tuned.as_ref()),
    ];
    for (name, side) in sides {
        if let Some(s) = side {
            out.push((format!("eval/{name}/score"), s.score));
            out.push((format!("eval/{name}/nll"), s.nll));
        }
    }
    if let Some(d) = &results.deployed {
        out.push(("eval/deployed/score".into(), d.score));
    }
    out
}

/// The columns of `samples.jsonl` a tracker's table shows, in order.
pub const SAMPLE_COLUMNS: [&str; 7] = [
    "line",
    "prompt",
    "expected",
    "base",
    "tuned",
    "base_score",
    "tuned_score",
];

/// Every result field as one summary value under `eval/`, the sides' fields as
/// `eval/base/score` (the names TensorBoard shows).
pub fn tracking_summary(results: &EvalResults) -> Map<String, Value> {
    let mut summary = Map::new();
    if let Ok(Value::Object(fields)) = serde_json::to_value(results) {
        for (key, value) in fields {
            match value {
                Value::Object(side) => {
                    for (k, v) in side {
                        summary.insert(format!("eval/{key}/{k}"), v);
                    }
                }
                v => {
                    summary.insert(format!("eval/{key}"), v);
                }
            }
        }
    }
    summary
}

/// The rows of `dir`'s `samples.jsonl`, each in [`SAMPLE_COLUMNS`] order.
pub fn sample_rows(dir: &Path) -> Result<Vec<Vec<Value>>> {
    let path = dir.join(SAMPLES_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let sample: Value = serde_json::from_str(line).map_err(|e| EvalError::Example {
            path: path.clone(),
            line: i + 1,
            what: e.to_string(),
        })?;
        rows.push(
            SAMPLE_COLUMNS
                .iter()
                .map(|c| sample.get(*c).cloned().unwrap_or(Value::Null))
                .collect(),
        );
    }
    Ok(rows)
}

/// Adds the eval scalars to the run at its last step: a new TensorBoard event file beside
/// training's (TensorBoard merges every file in the directory) and one line in
/// `metrics.jsonl` carrying `step` like every other line, so a resume still reads it.
pub fn log_to_run(run: &Path, results: &EvalResults, step: u64) -> Result<()> {
    let scalars = eval_scalars(results);
    let now = wall_time();
    let path = run.join(format!(
        "{EVENTS_PREFIX}{}.bora-eval.{}",
        now as u64,
        std::process::id()
    ));
    let file = std::fs::File::create(&path).map_err(io_err(&path))?;
    let mut writer = EventWriter::new(file, now).map_err(io_err(&path))?;
    for (tag, value) in &scalars {
        writer
            .scalar(tag, *value as f32, step as i64, now)
            .map_err(io_err(&path))?;
    }
    writer.into_inner().sync_all().map_err(io_err(&path))?;

    let mut line = serde_json::Map::new();
    line.insert("step".into(), step.into());
    for (tag, value) in scalars {
        line.insert(tag, serde_json::json!(value));
    }
    let metrics = RunDir::at(run).metrics_path();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&metrics)
        .map_err(io_err(&metrics))?;
    let text = serde_json::Value::Object(line).to_string() + "\n";
    file.write_all(text.as_bytes()).map_err(io_err(&metrics))?;
    file.sync_data().map_err(io_err(&metrics))
}

impl RunInfo {
    /// Reads what a report shows about a run: its config, loss curves and timing. Lines of
    /// `metrics.jsonl` without a training loss (eval lines) are not part of the curves.
    pub fn load(run: &Path) -> Result<RunInfo> {
        let dir = RunDir::at(run);
        let read = |path: PathBuf| std::fs::read_to_string(&path).map_err(io_err(&path));
        let config_toml = read(dir.config_path())?;
        let mut train = Vec::new();
        let mut val = Vec::new();
        for (i, line) in read(dir.metrics_path())?.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| EvalError::Invalid {
                    path: dir.metrics_path(),
                    what: format!("line {}: {e}", i + 1),
                })?;
            let step = v.get("step").and_then(|s| s.as_u64());
            let get = |k: &str| v.get(k).and_then(|x| x.as_f64());
            if let (Some(step), Some(loss)) = (step, get("loss")) {
                train.push((step, loss));
                if let Some(vl) = get("val_loss") {
                    val.push((step, vl));
                }
            }
        }
        let timing = Timing::read(&dir)?;
        Ok(RunInfo {
            name: run
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            config_toml,
            train_loss: train,
            val_loss: val,
            timing,
        })
    }

    /// The last optimizer step logged, where eval scalars are placed.
    pub fn last_step(&self) -> u64 {
        self.train_loss.last().map(|p| p.0).unwrap_or(0)
    }
}
