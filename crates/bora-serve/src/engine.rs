//! The scheduler: one plain thread that owns every running sequence and advances them
//! together, one token each per step (continuous batching). New requests join between steps,
//! finished, timed-out and abandoned ones leave between steps; the arithmetic of a step runs
//! on the rayon pool, so the tokio threads only ever move bytes.
//!
//! Within a step each sequence runs its own one-token forward (in parallel over sequences),
//! because bora-model's cached forward takes one sequence; a multi-sequence decode there would
//! let one pass over the weights serve the whole batch, and only `Batch::step` would change.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use bora_model::{KvCache, Logits, Lora, Model, Sampler, SamplingParams, StopReason, Workspace};
use bora_tokenizer::{SpecialTokenPolicy, StreamDecoder, Tokenizer};
use rayon::prelude::*;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ApiError;

/// One generation request, already tokenized and checked against the context.
pub(crate) struct Job {
    pub prompt: Vec<u32>,
    /// The LoRA adapter the request's `model` names, applied unmerged (`None`: the base).
    pub adapter: Option<Arc<Lora>>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_strings: Vec<String>,
    /// Time after which the request is answered with a timeout, queued or running.
    pub deadline: Instant,
    /// Where text goes; once the receiver is gone (client disconnected) the sequence stops.
    pub events: UnboundedSender<Event>,
}

/// What the scheduler tells a request's handler.
#[derive(Debug)]
pub(crate) enum Event {
    /// Text that is final: it cannot be part of a stop string.
    Text(String),
    Done {
        stop: StopReason,
        completion_tokens: usize,
    },
    Failed(ApiError),
}

/// Handle to the scheduler thread: a bounded queue in front of it.
pub(crate) struct Scheduler {
    jobs: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// Why a job was not queued.
pub(crate) enum Rejected {
    Full,
    Closed,
}

impl Scheduler {
    pub fn start(
        model: Arc<Model>,
        tokenizer: Arc<Tokenizer>,
        stop_tokens: Vec<u32>,
        max_batch: usize,
        max_queue: usize,
    ) -> std::io::Result<Scheduler> {
        let (tx, rx) = std::sync::mpsc::sync_channel(max_queue);
        let thread = std::thread::Builder::new()
            .name("bora-scheduler".into())
            .spawn(move || {
                Batch {
                    model: &model,
                    tokenizer: &tokenizer,
                    stop_tokens: &stop_tokens,
                    max_batch,
                    active: Vec::new(),
                    spare: Vec::new(),
                }
                .run(rx)
            })?;
        Ok(Scheduler {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `job` without waiting: a full queue is the caller's 429.
    pub fn submit(&self, job: Job) -> Result<(), Rejected> {
        let jobs = self.jobs.as_ref().ok_or(Rejected::Closed)?;
        jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Rejected::Full,
            TrySendError::Disconnected(_) => Rejected::Closed,
        })
    }
}

impl Drop for Scheduler {
    /// Closing the queue lets the thread finish the sequences it has, then end.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the scheduler thread panicked");
            }
        }
    }
}

/// A running sequence: its cache, sampler and the text it has shown.
struct Sequence<'t> {
    job: Job,
    /// KV cache and activations; taken from and returned to the scheduler's spares.
    slot: Slot,
    sampler: Sampler,
    /// Prompt and generated ids, the context of the repetition penalty.
    history: Vec<u32>,
    logits: Vec<f32>,
    /// The id sampled this step, to run through the model.
    next: u32,
    generated: usize,
    decoder: StreamDecoder<'t>,
    stops: StopText,
}

struct Slot {
    cache: KvCache,
    ws: Workspace,
}

struct Batch<'m> {
    model: &'m Model,
    tokenizer: &'m Tokenizer,
    stop_tokens: &'m [u32],
    max_batch: usize,
    active: Vec<Sequence<'m>>,
    /// Slots of finished sequences: their buffers are already sized and paged in.
    spare: Vec<Slot>,
}

impl<'m> Batch<'m> {
    fn run(mut self, jobs: Receiver<Job>) {
        let mut open = true;
        while open || !self.active.is_empty() {
            if self.active.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => open = false,
                }
            }
            while open && self.active.len() < self.max_batch {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            if !self.active.is_empty() {
                self.step();
            }
        }
    }

    /// Prefills `job`'s prompt; the sequence then waits for the next step to sample.
    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            return;
        }
        if Instant::now() >= job.deadline {
            let _ = job.events.send(Event::Failed(ApiError::timeout()));
            return;
        }
        let mut slot = self.spare.pop().unwrap_or_else(|| Slot {
            cache: self.model.new_cache(),
            ws: Workspace::new(),
        });
        slot.cache.clear();
        let model = self.model;
        let prefill = bora_compute::run_in_pool(|| {
            model
                .forward_adapted(
                    &job.prompt,
                    &mut slot.cache,
                    &mut slot.ws,
                    Logits::Last,
                    job.adapter.as_deref(),
                )
                .map(<[f32]>::to_vec)
        });
        match prefill {
            Ok(logits) => self.active.push(Sequence {
                sampler: Sampler::new(job.sampling.clone()),
                history: job.prompt.clone(),
                logits,
                next: 0,
                generated: 0,
                decoder: StreamDecoder::new(self.tokenizer, SpecialTokenPolicy::Skip),
                stops: StopText::new(job.stop_strings.clone()),
                slot,
                job,
            }),
            Err(e) => {
                let _ = job.events.send(Event::Failed(ApiError::internal(&e)));
                self.spare.push(slot);
            }
        }
    }

    /// Samples one token for every sequence, retires those that ended, then runs the rest
    /// through the model together.
    fn step(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.active.len() {
            let seq = &mut self.active[i];
            let outcome = if seq.job.events.is_closed() {
                Some(Outcome::Abandoned)
            } else if now >= seq.job.deadline {
                Some(Outcome::Failed(ApiError::timeout()))
            } else {
                seq.advance(self.stop_tokens, self.model.context())
                    .map(Outcome::Stopped)
            };
            match outcome {
                None => i += 1,
                Some(o) => {
                    let seq = self.active.swap_remove(i);
                    self.spare.push(seq.finish(o));
                }
            }
        }
        let model = self.model;
        let failures: Vec<(usize, ApiError)> = bora_compute::run_in_pool(|| {
            self.active
                .par_iter_mut()
                .enumerate()
                .filter_map(|(i, seq)| {
                    let slot = &mut seq.slot;
                    let adapter = seq.job.adapter.as_deref();
                    match model.forward_adapted(
                        &[seq.next],
                        &mut slot.cache,
                        &mut slot.ws,
                        Logits::Last,
                        adapter,
                    ) {
                        Ok(out) => {
                            seq.logits.copy_from_slice(out);
                            seq.history.push(seq.next);
                            None
                        }
                        Err(e) => Some((i, ApiError::internal(&e))),
                    }
                })
                .collect()
        });
        for (i, err) in failures.into_iter().rev() {
            let seq = self.active.swap_remove(i);
            self.spare.push(seq.finish(Outcome::Failed(err)));
        }
    }
}

enum Outcome {
    Stopped(StopReason),
    Failed(ApiError),
    Abandoned,
}

impl Sequence<'_> {
    /// Samples the next id and shows its text; `Some` when the sequence has ended.
    fn advance(&mut self, stop_tokens: &[u32], context: usize) -> Option<StopReason> {
        if self.generated >= self.job.max_tokens {
            return Some(StopReason::MaxTokens);
        }
        let next = self.sampler.sample(&mut self.logits, &self.history);
        if stop_tokens.contains(&next) {
            return Some(StopReason::EndToken);
        }
        self.generated += 1;
        let piece = self.decoder.push(next);
        let (shown, hit) = self.stops.push(&piece);
        self.send_text(shown);
        if hit {
            return Some(StopReason::StopString);
        }
        if self.generated >= self.job.max_tokens {
            return Some(StopReason::MaxTokens);
        }
        if self.slot.cache.len() >= context {
            return Some(StopReason::Context);
        }
        self.next = next;
        None
    }

    fn send_text(&self, text: String) {
        send_text(&self.job.events, text);
    }

    /// Tells the client how the sequence ended (after any held-back text) and hands back
    /// the slot for the next sequence.
    fn finish(self, outcome: Outcome) -> Slot {
        let Sequence {
            job,
            slot,
            generated,
            decoder,
            mut stops,
            ..
        } = self;
        let event = match outcome {
            Outcome::Abandoned => return slot,
            Outcome::Failed(e) => Event::Failed(e),
            Outcome::Stopped(stop) => {
                if stop != StopReason::StopString {
                    let (shown, _) = stops.push(&decoder.finish());
                    send_text(&job.events, shown);
                    send_text(&job.events, stops.flush());
                }
                Event::Done {
                    stop,
                    completion_tokens: generated,
                }
            }
        };
        let _ = job.events.send(event);
        slot
    }
}

fn send_text(events: &UnboundedSender<Event>, text: String) {
    if !text.is_empty() {
        let _ = events.send(Event::Text(text));
    }
}

/// Stop strings over streamed text. Text that could be the start of a stop string is held
/// back until the next piece settles it, so a client never sees any part of a stop string.
struct StopText {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already sent.
    shown: usize,
}

impl StopText {
    fn new(stops: Vec<String>) -> Self {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            shown: 0,
        }
    }

    /// Adds `piece`; returns the text now safe to send and whether a stop string was found.
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let from = self.shown;
        // Held-back text is the only place a stop string can begin: everything sent was
        // checked not to start one.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|at| from + at))
            .min();
        let end = match hit {
            Some(at) => {
                self.text.truncate(at);
                at
            }
            None => self.text[from..]
                .char_indices()
                .map(|(i, _)| from + i)
                .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.text[i..])))
                .unwrap_or(self.text.len()),
        };
        self.shown = end;
        (self.text[from..end].to_string(), hit.is_some())
    }

    /// Whatever was held back, once generation ended without a stop string.
    fn flush(&mut self) -> String {
        let from = std::mem::replace(&mut self.shown, self.text.len());
        self.text[from..].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::StopText;

    /// Feeds `pieces` as a stream would; returns what a client saw and whether it stopped.
    fn stream(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let mut seen = String::new();
        for p in pieces {
            let (shown, hit) = m.push(p);
            seen.push_str(&shown);
            if hit {
                return (seen, true);
            }
        }
        seen.push_str(&m.flush());
        (seen, false)
    }

    /// The streamed result must equal cutting the whole text at the first stop string,
    /// however the text is split into pieces.
    #[test]
    fn streamed_text_equals_cutting_the_whole_text() {
        let cases: &[(&[&str], &str)] = &[
            (&["\nUser:"], "Hello there\nUser: hi"),
            (&["STOP"], "abSTxST"),
            (&["<|end|>"], "éééé<|end|>x"),
            (&["é!", "b"], "aé!b"),
            (&["ab", "b"], "xxab"),
            (&[""], "empty stops never match"),
        ];
        for (stops, text) in cases {
            let cut = stops
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s))
                .min();
            let expected = &text[..cut.unwrap_or(text.len())];
            let chars: Vec<String> = text.chars().map(String::from).collect();
            for size in 1..=4 {
                let pieces: Vec<String> = chars.chunks(size).map(|c| c.concat()).collect();
                let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
                let (seen, hit) = stream(stops, &refs);
                assert_eq!(seen, expected, "stops {stops:?}, pieces of {size} chars");
                assert_eq!(hit, cut.is_some());
            }
        }
    }
}
