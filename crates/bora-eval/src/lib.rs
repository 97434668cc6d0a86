//! bora-eval: is the fine-tune better than its base, and by how much.
//!
//! [`evaluate`] checks every input ([`Metric`], the test file through [`load_items`], model,
//! adapter), generates (greedily by default, several examples decoded together: [`Decoding`])
//! with the base model and with the adapter on the same prompts ([`run_side`]), scores each
//! answer against the last assistant message, and computes Wilson intervals ([`wilson`]) and answer NLL ([`masked_nll`]). [`write_eval_dir`] writes
//! `results.json`, `samples.jsonl`, `report.md` and `report.html`; [`log_to_run`] adds the
//! scores to the run's TensorBoard events and `metrics.jsonl`. [`judge`] grades base against
//! tuned answers with a judge model (`--metric judge`); [`add_deployed`] adds a deployed
//! copy's answers (Amazon Bedrock) as a third side. [`demo_splits`] generates the
//! bundled demo task.
#![forbid(unsafe_code)]

mod demo;
mod deployed;
mod error;
mod eval;
mod heldout;
mod judge;
mod metric;
mod output;
mod report;
mod runner;
mod task;

pub use demo::{demo_example, demo_splits};
pub use deployed::{add_deployed, DeployedAnswer, DeployedScore};
pub use error::{EvalError, Result};
pub use eval::{
    evaluate, evaluate_with, summary_json, AnswerUsage, Decoding, EvalConfig, EvalResults,
    Progress, SampleRow, SamplingRecord, Side, SideScore,
};
pub use heldout::{score_heldout, Heldout, HeldoutScore, HELDOUT_SAMPLE};
pub use judge::{
    judge, judge_markdown, parse_score, parse_verdict, JudgeConfig, JudgeMode, JudgeModel,
    JudgeResults, JudgeScores, Judged, JudgedExample, MeanScore, Outcome, Rate, Verdict, Winner,
    GENERAL_RUBRIC,
};
pub use metric::{wilson, Metric, Z95};
pub use output::{
    eval_scalars, log_to_run, sample_rows, tracking_summary, write_eval_dir,
    write_eval_dir_with_audio, REPORT_HTML, REPORT_MD, RESULTS_FILE, SAMPLES_FILE, SAMPLE_COLUMNS,
};
pub use report::{
    card_section, loss_chart_svg, render_html, render_html_with_audio, render_markdown,
    samples_to_speak, score_table, RunInfo, SpokenSample,
};
pub use runner::{
    example_seed, masked_nll, run_side, run_side_constrained, JsonAnswers, SideOutput,
};
pub use task::{expected_answers, load_items, EvalItem};
