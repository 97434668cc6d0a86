//! `--metric judge`: a model grades what exact match cannot. Each example's base and tuned
//! answers are shown to the judge side by side twice, once in each order, so a judge that
//! favours a position cancels out (one that always picks the first answer gives ties). The
//! verdict is a fixed JSON object, read strictly: an answer that is not exactly that object is
//! asked again once, then counted invalid, never guessed. Verdicts are cached by the whole
//! request (judge model, rubric, prompt, answers), so a rerun costs nothing.
//!
//! The judge is any [`JudgeModel`]; the binary wires bora-hub's chat client in (bora-eval sits
//! below bora-hub and does not call remote services itself), tests script one.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{EvalError, Result};
use crate::eval::SampleRow;
use crate::metric::{wilson, Z95};

/// A chat model that judges: it answers messages (`(role, content)`) with text. An `Err` is
/// a failure of the service (after its own retries) and stops the evaluation.
pub trait JudgeModel: Sync {
    /// The model's name, part of every cache key.
    fn name(&self) -> &str;
    fn ask(&self, messages: &[(&str, &str)]) -> std::result::Result<String, String>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeMode {
    /// Which answer is better, in both orders.
    Pairwise,
    /// Pairwise, plus a 1–10 score for each answer on its own.
    Score,
}

/// How to judge.
#[derive(Debug, Clone)]
pub struct JudgeConfig {
    pub mode: JudgeMode,
    /// What makes an answer good, in the user's words; a general rubric without it.
    pub rubric: Option<String>,
    /// Judge requests in flight together.
    pub concurrency: usize,
    /// The verdict cache (JSON lines), kept across runs.
    pub cache: PathBuf,
}

/// A rate with its count and 95% Wilson interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub rate: f64,
    pub count: usize,
    pub ci95: [f64; 2],
}

/// A mean 1–10 score with a normal-approximation 95% interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanScore {
    pub mean: f64,
    pub ci95: [f64; 2],
    pub n: usize,
}

/// One judged example shown in reports: its outcome for the tuned model and the judge's
/// reasons (answer order base-first, then tuned-first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedExample {
    pub line: usize,
    pub outcome: String,
    pub reasons: Vec<String>,
}

/// The judge's part of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeResults {
    pub judge: String,
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rubric: Option<String>,
    /// Examples judged; `valid` of them got a readable verdict in both orders.
    pub n: usize,
    pub valid: usize,
    pub invalid: usize,
    /// The tuned model's win, tie and loss rates over the valid examples.
    pub win: Rate,
    pub tie: Rate,
    pub loss: Rate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_score: Option<MeanScore>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned_score: Option<MeanScore>,
    /// Requests sent to the judge in this run, and verdicts read from the cache.
    pub requests: usize,
    pub cached: usize,
    /// A few wins and losses with the judge's reasons.
    pub samples: Vec<JudgedExample>,
}

const PAIR_SYSTEM: &str = "You are an impartial judge. You compare two answers, A and B, to the same prompt and decide which one is better. The order of the answers, their length and their style must not influence you. Judge by this rubric:\n\n{rubric}\n\nReply with only a JSON object, no other text: {\"reason\": \"<one or two sentences>\", \"winner\": \"A\" or \"B\" or \"tie\"}";

const SCORE_SYSTEM: &str = "You are an impartial judge. You rate one answer to a prompt from 1 (useless) to 10 (perfect). Judge by this rubric:\n\n{rubric}\n\nReply with only a JSON object, no other text: {\"reason\": \"<one or two sentences>\", \"score\": <integer from 1 to 10>}";

/// The rubric a judge is given when the user gives none.
pub const GENERAL_RUBRIC: &str = "The better answer does what the prompt asks, is correct (agrees with the reference answer when one is given), complete and clear.";

const REMINDER: &str =
    "That reply is not the JSON object asked for. Reply with only the JSON object.";

fn pair_user(s: &SampleRow, a: &str, b: &str) -> String {
    format!(
        "# Prompt\n\n{}\n\n{}# Answer A\n\n{a}\n\n# Answer B\n\n{b}",
        s.prompt,
        reference(s)
    )
}

fn score_user(s: &SampleRow, answer: &str) -> String {
    format!(
        "# Prompt\n\n{}\n\n{}# Answer\n\n{answer}",
        s.prompt,
        reference(s)
    )
}

fn reference(s: &SampleRow) -> String {
    if s.expected.trim().is_empty() {
        String::new()
    } else {
        format!("# Reference answer\n\n{}\n\n", s.expected)
    }
}

/// A pairwise verdict: exactly `{"reason": string, "winner": "A" | "B" | "tie"}`.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    A(String),
    B(String),
    Tie(String),
}

/// Reads a pairwise verdict strictly: the whole reply (surrounding whitespace aside) must be
/// the JSON object with exactly the two keys.
pub fn parse_verdict(reply: &str) -> Option<Verdict> {
    let (reason, v) = strict_object(reply, "winner")?;
    match v.as_str()? {
        "A" => Some(Verdict::A(reason)),
        "B" => Some(Verdict::B(reason)),
        "tie" => Some(Verdict::Tie(reason)),
        _ => None,
    }
}

/// Reads a score strictly: `{"reason": string, "score": integer 1..=10}`.
pub fn parse_score(reply: &str) -> Option<(u8, String)> {
    let (reason, v) = strict_object(reply, "score")?;
    let n = v.as_u64().filter(|n| (1..=10).contains(n))?;
    Some((n as u8, reason))
}

fn strict_object(reply: &str, key: &str) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(reply.trim()).ok()?;
    let obj = v.as_object()?;
    if obj.len() != 2 {
        return None;
    }
    let reason = obj.get("reason")?.as_str()?.to_owned();
    Some((reason, obj.get(key)?.clone()))
}

/// Verdicts by request, on disk as JSON lines `{"key": ..., "reply": ...}`.
struct Cache {
    path: PathBuf,
    map: Mutex<HashMap<String, String>>,
}

impl Cache {
    fn open(path: &Path) -> Result<Cache> {
        let mut map = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                // A torn last line (a killed run) is skipped; it is asked again.
                for line in text.lines() {
                    if let Ok(v) = serde_json::from_str::<Value>(line) {
                        if let (Some(k), Some(r)) = (v["key"].as_str(), v["reply"].as_str()) {
                            map.insert(k.to_owned(), r.to_owned());
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path, e)),
        }
        Ok(Cache {
            path: path.to_path_buf(),
            map: Mutex::new(map),
        })
    }

    fn get(&self, key: &str) -> Option<String> {
        self.map.lock().unwrap().get(key).cloned()
    }

    fn put(&self, key: String, reply: String) -> Result<()> {
        let mut map = self.map.lock().unwrap();
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, e))?;
        let line = json!({"key": key, "reply": reply}).to_string() + "\n";
        f.write_all(line.as_bytes())
            .map_err(|e| io(&self.path, e))?;
        map.insert(key, reply);
        Ok(())
    }
}

fn io(path: &Path, source: std::io::Error) -> EvalError {
    EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

struct Asker<'a> {
    model: &'a dyn JudgeModel,
    cache: Cache,
    requests: AtomicUsize,
    cached: AtomicUsize,
}

impl Asker<'_> {
    /// The judge's reply to (system, user) that `parse` accepts: from the cache, else asked,
    /// and asked once more (with the bad reply and a reminder) if unreadable. `None`: invalid.
    fn ask<T>(
        &self,
        system: &str,
        user: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        let key = json!([self.model.name(), system, user]).to_string();
        if let Some(t) = self.cache.get(&key).as_deref().and_then(&parse) {
            self.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(t));
        }
        let failed = |what: String| EvalError::Judge {
            judge: self.model.name().to_owned(),
            what,
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let first = self
            .model
            .ask(&[("system", system), ("user", user)])
            .map_err(failed)?;
        let (reply, parsed) = match parse(&first) {
            Some(t) => (first, Some(t)),
            None => {
                self.requests.fetch_add(1, Ordering::Relaxed);
                let second = self
                    .model
                    .ask(&[
                        ("system", system),
                        ("user", user),
                        ("assistant", &first),
                        ("user", REMINDER),
                    ])
                    .map_err(failed)?;
                let parsed = parse(&second);
                (second, parsed)
            }
        };
        if parsed.is_some() {
            self.cache.put(key, reply)?;
        }
        Ok(parsed)
    }
}

/// How the tuned answer fared in one order.
fn tuned_points(v: &Verdict, tuned_is_a: bool) -> f64 {
    match (v, tuned_is_a) {
        (Verdict::Tie(_), _) => 0.5,
        (Verdict::A(_), true) | (Verdict::B(_), false) => 1.0,
        _ => 0.0,
    }
}

fn reason(v: &Verdict) -> &str {
    match v {
        Verdict::A(r) | Verdict::B(r) | Verdict::Tie(r) => r,
    }
}

/// The answer a verdict found better, named by model rather than by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Winner {
    Base,
    Tuned,
    Tie,
}

impl Winner {
    fn of(v: &Verdict, tuned_is_a: bool) -> Winner {
        match (v, tuned_is_a) {
            (Verdict::Tie(_), _) => Winner::Tie,
            (Verdict::A(_), true) | (Verdict::B(_), false) => Winner::Tuned,
            _ => Winner::Base,
        }
    }
}

/// How the tuned answer fared against the base answer over both orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Win,
    Tie,
    Loss,
    /// No readable verdict in one of the orders.
    Invalid,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Win => "win",
            Outcome::Tie => "tie",
            Outcome::Loss => "loss",
            Outcome::Invalid => "invalid",
        }
    }

    /// The same outcome seen from the base answer: the tuned answer's win is its loss.
    pub fn for_base(self) -> Outcome {
        match self {
            Outcome::Win => Outcome::Loss,
            Outcome::Loss => Outcome::Win,
            other => other,
        }
    }
}

/// The 1–10 scores of one example's two answers (`JudgeMode::Score`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JudgeScores {
    pub base: u8,
    pub tuned: u8,
}

/// The judge's verdict on one example, kept on its row of `samples.jsonl` so the verdicts
/// can be read (and shown, as Weave shows scores) example by example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub outcome: Outcome,
    /// The better answer with the base answer shown first (as A); `None` when that verdict
    /// was unreadable.
    pub base_first: Option<Winner>,
    /// The better answer with the tuned answer shown first.
    pub tuned_first: Option<Winner>,
    /// The judge's reasons, base shown first then tuned shown first (empty when invalid).
    pub reasons: Vec<String>,
    /// Both answers' scores, when the judge scored and both scores were readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<JudgeScores>,
}

fn judge_one(asker: &Asker, config: &JudgeConfig, system: &str, s: &SampleRow) -> Result<Judged> {
    let tuned = s.tuned.as_deref().unwrap_or_default();
    let first = asker.ask(system, &pair_user(s, &s.base, tuned), parse_verdict)?;
    let second = asker.ask(system, &pair_user(s, tuned, &s.base), parse_verdict)?;
    let scores = if config.mode == JudgeMode::Score {
        let sys = SCORE_SYSTEM.replace("{rubric}", rubric(config));
        let b = asker.ask(&sys, &score_user(s, &s.base), parse_score)?;
        let t = asker.ask(&sys, &score_user(s, tuned), parse_score)?;
        b.zip(t).map(|(b, t)| JudgeScores {
            base: b.0,
            tuned: t.0,
        })
    } else {
        None
    };
    let (outcome, reasons) = match (&first, &second) {
        (Some(f), Some(g)) => {
            let points = tuned_points(f, false) + tuned_points(g, true);
            let outcome = if points > 1.0 {
                Outcome::Win
            } else if points < 1.0 {
                Outcome::Loss
            } else {
                Outcome::Tie
            };
            (outcome, vec![reason(f).to_owned(), reason(g).to_owned()])
        }
        _ => (Outcome::Invalid, Vec::new()),
    };
    Ok(Judged {
        outcome,
        base_first: first.as_ref().map(|v| Winner::of(v, false)),
        tuned_first: second.as_ref().map(|v| Winner::of(v, true)),
        reasons,
        scores,
    })
}

fn rubric(config: &JudgeConfig) -> &str {
    config
        .rubric
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or(GENERAL_RUBRIC)
}

/// Examples with wins and losses shown in reports, each.
const SHOWN: usize = 3;

/// Judges every sample's tuned answer against its base answer, and records each verdict on
/// its sample (`SampleRow::judge`) once all are in.
pub fn judge(
    samples: &mut [SampleRow],
    model: &dyn JudgeModel,
    config: &JudgeConfig,
) -> Result<JudgeResults> {
    if let Some(s) = samples.iter().find(|s| s.tuned.is_none()) {
        return Err(EvalError::Judge {
            judge: model.name().to_owned(),
            what: format!(
                "line {}: the judge compares the base and the tuned answer; evaluate a run (--run) or give --adapter",
                s.line
            ),
        });
    }
    let asker = Asker {
        model,
        cache: Cache::open(&config.cache)?,
        requests: AtomicUsize::new(0),
        cached: AtomicUsize::new(0),
    };
    let system = PAIR_SYSTEM.replace("{rubric}", rubric(config));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Judged>>>> =
        Mutex::new((0..samples.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..config.concurrency.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= samples.len() {
                    return;
                }
                let r = judge_one(&asker, config, &system, &samples[i]);
                let stop = r.is_err();
                results.lock().unwrap()[i] = Some(r);
                if stop {
                    next.store(samples.len(), Ordering::Relaxed);
                }
            });
        }
    });
    let mut judged = Vec::with_capacity(samples.len());
    for r in results.into_inner().unwrap() {
        match r {
            Some(r) => judged.push(r?),
            None => continue,
        }
    }
    let count = |o: Outcome| judged.iter().filter(|j| j.outcome == o).count();
    let valid = judged.len() - count(Outcome::Invalid);
    let rate = |o: Outcome| {
        let c = count(o);
        let (lo, hi) = wilson(c, valid, Z95);
        Rate {
            rate: c as f64 / valid.max(1) as f64,
            count: c,
            ci95: [lo, hi],
        }
    };
    let mean = |pick: &dyn Fn(JudgeScores) -> u8| {
        let xs: Vec<f64> = judged
            .iter()
            .filter_map(|j| j.scores)
            .map(|s| f64::from(pick(s)))
            .collect();
        mean_score(&xs)
    };
    let mut shown = Vec::new();
    for outcome in [Outcome::Win, Outcome::Loss] {
        shown.extend(
            samples
                .iter()
                .zip(&judged)
                .filter(|(_, j)| j.outcome == outcome)
                .take(SHOWN)
                .map(|(s, j)| JudgedExample {
                    line: s.line,
                    outcome: outcome.name().to_owned(),
                    reasons: j.reasons.clone(),
                }),
        );
    }
    let scored = config.mode == JudgeMode::Score;
    let results = JudgeResults {
        judge: model.name().to_owned(),
        mode: if scored { "pairwise+score" } else { "pairwise" }.into(),
        rubric: config.rubric.clone(),
        n: judged.len(),
        valid,
        invalid: count(Outcome::Invalid),
        win: rate(Outcome::Win),
        tie: rate(Outcome::Tie),
        loss: rate(Outcome::Loss),
        base_score: scored.then(|| mean(&|s| s.base)).flatten(),
        tuned_score: scored.then(|| mean(&|s| s.tuned)).flatten(),
        requests: asker.requests.load(Ordering::Relaxed),
        cached: asker.cached.load(Ordering::Relaxed),
        samples: shown,
    };
    for (sample, verdict) in samples.iter_mut().zip(judged) {
        sample.judge = Some(verdict);
    }
    Ok(results)
}

/// Mean with mean ± 1.96 standard errors (sample standard deviation); `None` when empty.
fn mean_score(xs: &[f64]) -> Option<MeanScore> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let half = Z95 * (var / n).sqrt();
    Some(MeanScore {
        mean,
        ci95: [mean - half, mean + half],
        n: xs.len(),
    })
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The judge's results in Markdown (report and model card): the win/tie/loss table, the
/// scores when asked for, and the judge's reasons for a few wins and losses.
pub fn judge_markdown(j: &JudgeResults) -> String {
    let mut md = format!(
        "Judge `{}` ({}), each pair shown in both orders; {} of {} examples with a valid verdict ({} invalid).\n\n| tuned vs base | rate | 95% CI (Wilson) | count |\n|---|---:|---:|---:|\n",
        j.judge, j.mode, j.valid, j.n, j.invalid
    );
    for (name, r) in [("win", &j.win), ("tie", &j.tie), ("loss", &j.loss)] {
        md.push_str(&format!(
            "| {name} | {} | {} – {} | {} |\n",
            pct(r.rate),
            pct(r.ci95[0]),
            pct(r.ci95[1]),
            r.count
        ));
    }
    if let (Some(b), Some(t)) = (&j.base_score, &j.tuned_score) {
        md.push_str("\n| model | judge score (1–10) | 95% CI |\n|---|---:|---:|\n");
        for (name, s) in [("base", b), ("tuned", t)] {
            md.push_str(&format!(
                "| {name} | {:.2} | {:.2} – {:.2} |\n",
                s.mean, s.ci95[0], s.ci95[1]
            ));
        }
    }
    if !j.samples.is_empty() {
        md.push_str("\nThe judge's reasons (base shown first, then tuned first):\n\n");
        for s in &j.samples {
            md.push_str(&format!(
                "- line {} ({}): {}\n",
                s.line,
                s.outcome,
                s.reasons.join(" / ").replace('\n', " ")
            ));
        }
    }
    md
}

/// The judge's results as a section of the HTML report.
pub fn judge_html(j: &JudgeResults) -> String {
    use crate::report::esc;
    let mut h = format!(
        "<h2>Judge</h2><div class=\"card\"><div class=\"sub\">judge <code>{}</code> ({}), each pair shown in both orders · {} of {} examples with a valid verdict ({} invalid)</div><table><tr><th>tuned vs base</th><th>rate</th><th>95% CI (Wilson)</th><th>count</th></tr>",
        esc(&j.judge),
        esc(&j.mode),
        j.valid,
        j.n,
        j.invalid
    );
    for (name, r) in [("win", &j.win), ("tie", &j.tie), ("loss", &j.loss)] {
        h.push_str(&format!(
            "<tr><td>{name}</td><td class=\"n\">{}</td><td class=\"n\">{} – {}</td><td class=\"n\">{}</td></tr>",
            pct(r.rate),
            pct(r.ci95[0]),
            pct(r.ci95[1]),
            r.count
        ));
    }
    h.push_str("</table>");
    if let (Some(b), Some(t)) = (&j.base_score, &j.tuned_score) {
        h.push_str("<table><tr><th>model</th><th>judge score (1–10)</th><th>95% CI</th></tr>");
        for (name, s) in [("base", b), ("tuned", t)] {
            h.push_str(&format!(
                "<tr><td class=\"{name}\">{name}</td><td class=\"n\">{:.2}</td><td class=\"n\">{:.2} – {:.2}</td></tr>",
                s.mean, s.ci95[0], s.ci95[1]
            ));
        }
        h.push_str("</table>");
    }
    if !j.samples.is_empty() {
        h.push_str("<div class=\"sub\">the judge's reasons (base shown first / tuned shown first)</div><ul>");
        for s in &j.samples {
            h.push_str(&format!(
                "<li>line {} <b>{}</b>: {}</li>",
                s.line,
                s.outcome,
                esc(&s.reasons.join(" / "))
            ));
        }
        h.push_str("</ul>");
    }
    h.push_str("</div>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse_strictly() {
        assert_eq!(
            parse_verdict(" {\"reason\": \"r\", \"winner\": \"B\"}\n"),
            Some(Verdict::B("r".into()))
        );
        for bad in [
            "{\"winner\": \"A\"}",
            "{\"reason\": \"r\", \"winner\": \"a\"}",
            "{\"reason\": \"r\", \"winner\": \"A\", \"extra\": 1}",
            "The winner is A. {\"reason\": \"r\", \"winner\": \"A\"}",
            "```json\n{\"reason\": \"r\", \"winner\": \"A\"}\n```",
            "[\"A\"]",
        ] {
            assert_eq!(parse_verdict(bad), None, "{bad}");
        }
        assert_eq!(
            parse_score("{\"reason\": \"ok\", \"score\": 7}"),
            Some((7, "ok".into()))
        );
        assert_eq!(parse_score("{\"reason\": \"ok\", \"score\": 11}"), None);
        assert_eq!(parse_score("{\"reason\": \"ok\", \"score\": 7.5}"), None);
    }

    #[test]
    fn both_orders_cancel_position() {
        let a = Verdict::A(String::new());
        let b = Verdict::B(String::new());
        // Base first then tuned first; a judge that always says A gives the tuned 1 of 2.
        assert_eq!(tuned_points(&a, false) + tuned_points(&a, true), 1.0);
        assert_eq!(tuned_points(&b, false) + tuned_points(&a, true), 2.0);
    }

    #[test]
    fn mean_scores_have_a_normal_interval() {
        let m = mean_score(&[4.0, 6.0]).unwrap();
        assert_eq!(m.mean, 5.0);
        let half = Z95 * (2.0f64 / 2.0).sqrt();
        assert!((m.ci95[1] - (5.0 + half)).abs() < 1e-12);
        assert!(mean_score(&[]).is_none());
    }
}
