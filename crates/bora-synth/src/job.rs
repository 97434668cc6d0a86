//! The synth job: ask for slots (concurrently, within the budget), log every answer durably,
//! build the dataset from the log.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use bora_data::{parse_line, SplitMix64};
use bora_hub::chat::{ChatClient, ChatError, ChatRequest, Price, Usage, PRICES_DATE};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::SynthError;
use crate::prompt::{
    answer_messages, generate_messages, normalise, parse_generated, SeedPair, ANSWER_SYSTEM,
    GENERATE_SYSTEM, GENERATE_USER,
};

/// Every answered slot, one JSON line each, appended and fsynced.
pub const LOG_FILE: &str = "synth.log.jsonl";
pub const SUMMARY_FILE: &str = "synth.json";

/// What to make.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub task: String,
    pub seeds: Vec<SeedPair>,
    /// Inputs to answer; `None`: the teacher writes inputs too.
    pub inputs: Option<Vec<String>>,
    /// Topics to steer written inputs, one drawn per slot.
    pub topics: Option<Vec<String>>,
    /// Examples wanted (with inputs: at most one per input).
    pub n: usize,
    pub teacher: String,
    pub temperature: f64,
    /// Longest answer asked for, in tokens.
    pub max_tokens: u32,
    pub concurrency: usize,
    /// Stop asking before the spend (this and earlier runs of the job) could pass this, US$.
    pub max_cost: Option<f64>,
    /// The teacher's price; `None` when unknown (cost then unreported).
    pub price: Option<Price>,
    pub seed: u64,
    pub val_fraction: f64,
    pub test_fraction: f64,
    pub out: PathBuf,
}

/// `synth.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthSummary {
    pub teacher: String,
    pub base_url: String,
    pub seed: u64,
    pub mode: String,
    pub prompts: Value,
    pub requested: usize,
    pub slots_answered: usize,
    pub kept: usize,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    /// Answers left out, by reason.
    pub dropped: BTreeMap<String, usize>,
    /// Requests of this run that failed after their retries; a rerun asks them again.
    pub failed_requests: usize,
    pub stopped_by_budget: bool,
    pub tokens: Usage,
    pub cost_usd: Option<f64>,
    pub price: Option<Price>,
    pub prices_date: &'static str,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// A slot was answered; `answered` of at most `planned` slots, cost so far.
    Answered {
        answered: usize,
        planned: usize,
        cost: Option<f64>,
    },
}

/// One answered slot as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Answer {
    slot: u64,
    content: String,
    finish_reason: String,
    usage: Usage,
}

/// The settings that decide what each slot asks; a log written under others is refused.
fn job_settings(c: &SynthConfig) -> Value {
    json!({
        "teacher": c.teacher, "seed": c.seed, "temperature": c.temperature,
        "max_tokens": c.max_tokens, "task": c.task, "seeds": c.seeds,
        "inputs": c.inputs, "topics": c.topics,
    })
}

/// Builds the dataset from answers in slot order: the first `n` that pass.
struct Builder<'a> {
    config: &'a SynthConfig,
    seen: HashSet<String>,
    seed_inputs: HashSet<String>,
    kept: Vec<Value>,
    dropped: BTreeMap<String, usize>,
}

impl<'a> Builder<'a> {
    fn new(config: &'a SynthConfig) -> Builder<'a> {
        Builder {
            config,
            seen: HashSet::new(),
            seed_inputs: config.seeds.iter().map(|s| normalise(&s.input)).collect(),
            kept: Vec::new(),
            dropped: BTreeMap::new(),
        }
    }

    fn full(&self) -> bool {
        self.kept.len() >= self.config.n
    }

    fn add(&mut self, a: &Answer) {
        if self.full() {
            return;
        }
        match self.example(a) {
            Ok(example) => self.kept.push(example),
            Err(reason) => *self.dropped.entry(reason.to_owned()).or_default() += 1,
        }
    }

    fn example(&mut self, a: &Answer) -> Result<Value, &'static str> {
        if a.finish_reason == "length" {
            return Err("truncated");
        }
        let (input, output) = match &self.config.inputs {
            Some(inputs) => (inputs[a.slot as usize].clone(), a.content.trim().to_owned()),
            None => {
                let p = parse_generated(&a.content).ok_or("not_json")?;
                (p.input.trim().to_owned(), p.output.trim().to_owned())
            }
        };
        if input.is_empty() || output.is_empty() {
            return Err("empty");
        }
        let example = json!({"messages": [
            {"role": "user", "content": input},
            {"role": "assistant", "content": output},
        ]});
        parse_line(&example.to_string()).map_err(|_| "invalid")?;
        let key = normalise(&input);
        if self.seed_inputs.contains(&key) {
            return Err("copies_a_seed");
        }
        if !self.seen.insert(key) {
            return Err("duplicate");
        }
        Ok(example)
    }
}

struct Shared {
    answers: BTreeMap<u64, Answer>,
    /// Slots below this are answered or in flight (or failed in this run).
    next: u64,
    in_flight: BTreeSet<u64>,
    usage: Usage,
    reserved: f64,
    failed: usize,
    budget_stop: bool,
    fatal: Option<ChatError>,
    log: File,
    log_path: PathBuf,
    io_error: Option<SynthError>,
}

impl Shared {
    fn spent(&self, price: Option<Price>) -> f64 {
        price.map_or(0.0, |p| p.cost(self.usage))
    }
}

/// What the log holds: the job's settings (none in a new job), the answers, and the length
/// of its complete lines.
struct Log {
    settings: Option<Value>,
    answers: BTreeMap<u64, Answer>,
    good_len: u64,
}

/// Reads the log; a torn last line (a kill in the middle of a write) is left out of
/// `good_len`, so the job cuts it off before appending.
fn read_log(path: &Path) -> Result<Log, SynthError> {
    let io = |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Log {
                settings: None,
                answers: BTreeMap::new(),
                good_len: 0,
            })
        }
        Err(e) => return Err(io(e)),
    };
    let mut settings = None;
    let mut answers = BTreeMap::new();
    let mut good = 0u64;
    let mut start = 0usize;
    for (lineno, end) in bytes
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i)
        .enumerate()
    {
        let line = &bytes[start..end];
        let bad = |what: String| SynthError::Input {
            path: path.to_path_buf(),
            line: lineno + 1,
            what,
        };
        let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("{e}")))?;
        if lineno == 0 {
            settings = Some(
                v.get("job")
                    .cloned()
                    .ok_or_else(|| bad("no `job` line".into()))?,
            );
        } else {
            let a: Answer = serde_json::from_value(v).map_err(|e| bad(format!("{e}")))?;
            answers.insert(a.slot, a);
        }
        start = end + 1;
        good = start as u64;
    }
    Ok(Log {
        settings,
        answers,
        good_len: good,
    })
}

/// Runs the job to the end (or the budget, or a fatal teacher error), then writes
/// `train.jsonl`, `val.jsonl`, `test.jsonl` and `synth.json` into `config.out`.
pub fn run(
    config: &SynthConfig,
    client: &ChatClient,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> Result<SynthSummary, SynthError> {
    let start = Instant::now();
    check(config)?;
    let dir = &config.out;
    std::fs::create_dir_all(dir).map_err(|source| SynthError::Io {
        path: dir.clone(),
        source,
    })?;
    let log_path = dir.join(LOG_FILE);
    let Log {
        settings,
        answers,
        good_len,
    } = read_log(&log_path)?;
    let want = job_settings(config);
    if let Some(have) = &settings {
        if let Some(field) = want
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, v)| have.get(k.as_str()) != Some(v))
            .map(|(k, _)| k.clone())
        {
            return Err(SynthError::OtherJob {
                dir: dir.clone(),
                field,
            });
        }
    }
    let io = |source| SynthError::Io {
        path: log_path.clone(),
        source,
    };
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io)?;
    if good_len < log.metadata().map_err(io)?.len() {
        log.set_len(good_len).map_err(io)?;
        log.seek(SeekFrom::End(0)).map_err(io)?;
    }
    if settings.is_none() {
        append(&mut log, &json!({"job": want})).map_err(io)?;
        bora_formats::atomic::sync_dir(dir)?;
    }
    let planned = match &config.inputs {
        Some(inputs) => config.n.min(inputs.len()) as u64,
        None => 2 * config.n as u64 + 8,
    };
    let usage = answers.values().fold(Usage::default(), |mut u, a| {
        u += a.usage;
        u
    });
    let shared = Mutex::new(Shared {
        answers,
        next: 0,
        in_flight: BTreeSet::new(),
        usage,
        reserved: 0.0,
        failed: 0,
        budget_stop: false,
        fatal: None,
        log,
        log_path: log_path.clone(),
        io_error: None,
    });
    std::thread::scope(|s| {
        for _ in 0..config.concurrency {
            s.spawn(|| worker(config, client, &shared, planned, on_progress));
        }
    });
    let shared = shared.into_inner().unwrap();
    if let Some(e) = shared.io_error {
        return Err(e);
    }
    if let Some(e) = shared.fatal {
        return Err(e.into());
    }
    let mut builder = Builder::new(config);
    for a in shared.answers.values() {
        builder.add(a);
    }
    let summary = write_dataset(config, client, builder, &shared, start)?;
    Ok(summary)
}

fn check(config: &SynthConfig) -> Result<(), SynthError> {
    let bad = |what: String| Err(SynthError::Config { what });
    if config.n == 0 {
        return bad("--n must be at least 1".into());
    }
    if config.concurrency == 0 {
        return bad("--concurrency must be at least 1".into());
    }
    if !(0.0..=2.0).contains(&config.temperature) {
        return bad(format!(
            "--temperature {} is outside 0..2",
            config.temperature
        ));
    }
    let (v, t) = (config.val_fraction, config.test_fraction);
    if !(0.0..1.0).contains(&v) || !(0.0..1.0).contains(&t) || v + t >= 1.0 {
        return bad(format!(
            "--val {v} and --test {t} must be fractions in 0..1 that leave examples for training"
        ));
    }
    if config.max_cost.is_some() && config.price.is_none() {
        return bad(format!(
            "--max-cost needs the price of `{}`, which bora's table ({PRICES_DATE}) does not list; give it with --price IN,OUT (US$ per million tokens)",
            config.teacher
        ));
    }
    if config.task.trim().is_empty() {
        return bad("the task description is empty".into());
    }
    Ok(())
}

fn append(log: &mut File, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    log.write_all(line.as_bytes())?;
    log.sync_data()
}

/// A bound on what one request can cost: its prompt at 3 characters a token (tokenizers
/// give more characters per token on prose) and a full-length answer.
fn worst_case(price: Option<Price>, messages_chars: usize, max_tokens: u32) -> f64 {
    price.map_or(0.0, |p| {
        p.cost(Usage {
            prompt_tokens: messages_chars as u64 / 3 + 16,
            completion_tokens: max_tokens as u64,
        })
    })
}

fn worker(
    config: &SynthConfig,
    client: &ChatClient,
    shared: &Mutex<Shared>,
    planned: u64,
    on_progress: &(dyn Fn(Progress) + Sync),
) {
    loop {
        let (slot, messages, reserve) = {
            let mut s = shared.lock().unwrap();
            if s.fatal.is_some() || s.io_error.is_some() || s.budget_stop {
                return;
            }
            // Kept so far over the answered prefix, plus every later answer and request in
            // flight counted as kept: ask no more than could be needed.
            let mut b = Builder::new(config);
            let mut prefix_end = 0;
            for (&slot, a) in &s.answers {
                if slot != prefix_end {
                    break;
                }
                b.add(a);
                prefix_end += 1;
            }
            let later = s.answers.range(prefix_end..).count();
            if b.kept.len() + later + s.in_flight.len() >= config.n {
                return;
            }
            while s.answers.contains_key(&s.next) {
                s.next += 1;
            }
            let slot = s.next;
            if slot >= planned {
                return;
            }
            let messages = match &config.inputs {
                Some(inputs) => answer_messages(
                    &config.task,
                    &config.seeds,
                    &inputs[slot as usize],
                    config.seed,
                    slot,
                ),
                None => generate_messages(
                    &config.task,
                    &config.seeds,
                    config.topics.as_deref(),
                    config.seed,
                    slot,
                ),
            };
            let chars = messages.iter().map(|m| m.content.len()).sum();
            let reserve = worst_case(config.price, chars, config.max_tokens);
            if let Some(max) = config.max_cost {
                if s.spent(config.price) + s.reserved + reserve > max {
                    s.budget_stop = true;
                    return;
                }
            }
            s.reserved += reserve;
            s.next += 1;
            s.in_flight.insert(slot);
            (slot, messages, reserve)
        };
        let result = client.complete(&ChatRequest {
            model: &config.teacher,
            messages: &messages,
            temperature: Some(config.temperature),
            max_tokens: Some(config.max_tokens),
            seed: Some(SplitMix64::stream(config.seed, slot).next_u64() >> 33),
            json: config.inputs.is_none(),
        });
        let mut s = shared.lock().unwrap();
        s.reserved -= reserve;
        s.in_flight.remove(&slot);
        match result {
            Ok(reply) => {
                let a = Answer {
                    slot,
                    content: reply.content,
                    finish_reason: reply.finish_reason,
                    usage: reply.usage,
                };
                let line = serde_json::to_value(&a).expect("an answer serializes");
                if let Err(source) = append(&mut s.log, &line) {
                    s.io_error = Some(SynthError::Io {
                        path: s.log_path.clone(),
                        source,
                    });
                    return;
                }
                s.usage += a.usage;
                s.answers.insert(slot, a);
                on_progress(Progress::Answered {
                    answered: s.answers.len(),
                    planned: planned as usize,
                    cost: config.price.map(|p| p.cost(s.usage)),
                });
            }
            Err(e) if e.is_fatal() => {
                s.fatal.get_or_insert(e);
            }
            Err(e) => {
                tracing::warn!("slot {slot}: {e}; a rerun of the same command asks again");
                s.failed += 1;
            }
        }
    }
}

fn write_dataset(
    config: &SynthConfig,
    client: &ChatClient,
    builder: Builder,
    shared: &Shared,
    start: Instant,
) -> Result<SynthSummary, SynthError> {
    let mut order: Vec<usize> = (0..builder.kept.len()).collect();
    SplitMix64::stream(config.seed, u64::MAX).shuffle(&mut order);
    let k = order.len();
    let n_test = (config.test_fraction * k as f64).round() as usize;
    let n_val = (config.val_fraction * k as f64).round() as usize;
    let (test, rest) = order.split_at(n_test);
    let (val, train) = rest.split_at(n_val.min(rest.len()));
    for (name, idx) in [("train", train), ("val", val), ("test", test)] {
        let mut idx = idx.to_vec();
        idx.sort_unstable();
        let mut text = String::new();
        for i in idx {
            text.push_str(&builder.kept[i].to_string());
            text.push('\n');
        }
        bora_formats::atomic::write_file(
            &config.out.join(format!("{name}.jsonl")),
            text.as_bytes(),
        )?;
    }
    let prompts = match &config.inputs {
        Some(_) => {
            json!({"system": ANSWER_SYSTEM, "shots": "3 seed examples as earlier user/assistant turns"})
        }
        None => json!({"system": GENERATE_SYSTEM, "user": GENERATE_USER}),
    };
    let summary = SynthSummary {
        teacher: config.teacher.clone(),
        base_url: client.base_url().to_owned(),
        seed: config.seed,
        mode: if config.inputs.is_some() {
            "answer inputs"
        } else {
            "write inputs and outputs"
        }
        .into(),
        prompts,
        requested: config.n,
        slots_answered: shared.answers.len(),
        kept: k,
        train: train.len(),
        val: val.len(),
        test: test.len(),
        dropped: builder.dropped,
        failed_requests: shared.failed,
        stopped_by_budget: shared.budget_stop,
        tokens: shared.usage,
        cost_usd: config.price.map(|p| p.cost(shared.usage)),
        price: config.price,
        prices_date: PRICES_DATE,
        seconds: start.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_string_pretty(&summary).expect("the summary serializes");
    bora_formats::atomic::write_file(&config.out.join(SUMMARY_FILE), text.as_bytes())?;
    Ok(summary)
}
