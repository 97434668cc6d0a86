//! The scheduler: one plain thread that owns every running sequence and advances them
//! together, one token each per step (continuous batching). New requests join between steps,
//! finished, timed-out and abandoned ones leave between steps; the arithmetic of a step runs
//! on the rayon pool, so the tokio threads only ever move bytes.
//!
//! A step runs the active sequences' new tokens through one batched decode
//! (`Model::forward_decode`), so one pass of the projections serves a whole group of
//! sequences. Before each step the waiting prompts are prefilled side by side
//! (`Model::extend_many`), in chunks while other sequences decode, so a long prompt does not
//! stall the streams already running.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use bora_model::{
    KvCache, Lora, Model, Sampler, SamplingParams, StopMatcher, StopReason, Workspace,
};
use bora_tokenizer::{SpecialTokenPolicy, StreamDecoder, Tokenizer};
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
                    prefilling: Vec::new(),
                    active: Vec::new(),
                    spare: Vec::new(),
                    ws: Workspace::new(),
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
    /// Taken from and returned to the scheduler's spares.
    cache: KvCache,
    sampler: Sampler,
    /// Prompt and generated ids, the context of the repetition penalty.
    history: Vec<u32>,
    /// Prompt tokens in the cache: the sequence decodes once the whole prompt is.
    fed: usize,
    /// Logits of the next token (empty while the prompt is being prefilled).
    logits: Vec<f32>,
    /// The id sampled this step, to run through the model.
    next: u32,
    generated: usize,
    decoder: StreamDecoder<'t>,
    stops: StopMatcher,
}

struct Batch<'m> {
    model: &'m Model,
    tokenizer: &'m Tokenizer,
    stop_tokens: &'m [u32],
    max_batch: usize,
    /// Sequences whose prompts are still being prefilled, in arrival order.
    prefilling: Vec<Sequence<'m>>,
    active: Vec<Sequence<'m>>,
    /// Caches of finished sequences: their buffers are already paged in.
    spare: Vec<KvCache>,
    /// Activations of prefills and decode steps, which run one at a time.
    ws: Workspace,
}

impl<'m> Batch<'m> {
    fn run(mut self, jobs: Receiver<Job>) {
        let mut open = true;
        while open || !self.active.is_empty() || !self.prefilling.is_empty() {
            let held = self.active.len() + self.prefilling.len();
            if held == 0 {
                match jobs.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => open = false,
                }
            }
            while open && self.active.len() + self.prefilling.len() < self.max_batch {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.prefill();
            if !self.active.is_empty() {
                self.step();
            }
        }
    }

    /// Takes `job` on: a cache and a sequence that waits for its prompt to be prefilled.
    fn admit(&mut self, job: Job) {
        if job.events.is_closed() {
            return;
        }
        if Instant::now() >= job.deadline {
            let _ = job.events.send(Event::Failed(ApiError::timeout()));
            return;
        }
        let mut cache = self.spare.pop().unwrap_or_else(|| self.model.new_cache());
        cache.clear();
        self.prefilling.push(Sequence {
            sampler: Sampler::new(job.sampling.clone()),
            history: job.prompt.clone(),
            fed: 0,
            logits: Vec::new(),
            next: 0,
            generated: 0,
            decoder: StreamDecoder::new(self.tokenizer, SpecialTokenPolicy::Skip),
            stops: StopMatcher::new(job.stop_strings.clone()),
            cache,
            job,
        });
    }

    /// Runs the next part of the waiting prompts, side by side (`Model::extend_many`): all
    /// of them when nothing is decoding, else at most [`PREFILL_BUDGET`] tokens, first come
    /// first served. Sequences whose prompt is in then decode from the next step.
    fn prefill(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.prefilling.len() {
            let seq = &self.prefilling[i];
            let outcome = if seq.job.events.is_closed() {
                Outcome::Abandoned
            } else if now >= seq.job.deadline {
                Outcome::Failed(ApiError::timeout())
            } else {
                i += 1;
                continue;
            };
            let seq = self.prefilling.remove(i);
            self.spare.push(seq.finish(outcome));
        }
        if self.prefilling.is_empty() {
            return;
        }
        let budget = if self.active.is_empty() {
            usize::MAX
        } else {
            PREFILL_BUDGET
        };
        let remaining: Vec<usize> = self
            .prefilling
            .iter()
            .map(|s| s.job.prompt.len() - s.fed)
            .collect();
        let take = chunk_sizes(&remaining, budget);
        let results = {
            let (mut chunks, mut caches, mut adapters) = (Vec::new(), Vec::new(), Vec::new());
            for (seq, &n) in self
                .prefilling
                .iter_mut()
                .zip(&take)
                .filter(|(_, &n)| n > 0)
            {
                let Sequence {
                    job, cache, fed, ..
                } = seq;
                chunks.push(&job.prompt[*fed..*fed + n]);
                caches.push(cache);
                adapters.push(job.adapter.as_deref());
            }
            self.model
                .extend_many(&chunks, &mut caches, &adapters, &mut self.ws)
        };
        let mut results = results.into_iter();
        let mut waiting = Vec::with_capacity(self.prefilling.len());
        for (mut seq, n) in std::mem::take(&mut self.prefilling).into_iter().zip(take) {
            if n == 0 {
                waiting.push(seq);
                continue;
            }
            match results.next().expect("one result per chunk") {
                Ok(logits) => {
                    seq.fed += n;
                    if seq.fed == seq.job.prompt.len() {
                        seq.logits = logits;
                        self.active.push(seq);
                    } else {
                        waiting.push(seq);
                    }
                }
                Err(e) => self
                    .spare
                    .push(seq.finish(Outcome::Failed(ApiError::internal(&e)))),
            }
        }
        self.prefilling = waiting;
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
        if self.active.is_empty() {
            return;
        }
        // Sequences with the same adapter side by side: the decode applies each adapter's
        // branch once per run of rows.
        self.active
            .sort_by_key(|s| s.job.adapter.as_ref().map(|a| Arc::as_ptr(a) as usize));
        if let Err(e) = decode(self.model, &mut self.active, &mut self.ws) {
            let err = ApiError::internal(&e);
            for seq in std::mem::take(&mut self.active) {
                self.spare.push(seq.finish(Outcome::Failed(err.clone())));
            }
        }
    }
}
/// Prompt tokens prefilled per iteration while other sequences decode: a long prompt then
/// holds their next token back by about one chunk (≈0.2 s for SmolLM2-135M on 2 cores),
/// not by its whole length, and reaches its own first token a few decode steps later.
const PREFILL_BUDGET: usize = 256;

/// How much of each waiting prompt (`remaining` tokens each, in arrival order) to run now
/// within `budget` tokens: the earliest first, each as far as the budget goes.
fn chunk_sizes(remaining: &[usize], budget: usize) -> Vec<usize> {
    let mut left = budget;
    remaining
        .iter()
        .map(|&r| {
            let n = r.min(left);
            left -= n;
            n
        })
        .collect()
}

/// Runs every sequence's sampled token through the model in one batched step (split into
/// groups by `forward_decode`, each row's logits those of its sequence alone) and keeps the
/// new logits.
fn decode(model: &Model, group: &mut [Sequence<'_>], ws: &mut Workspace) -> bora_model::Result<()> {
    let tokens: Vec<u32> = group.iter().map(|s| s.next).collect();
    let mut adapters: Vec<Option<&Lora>> = Vec::with_capacity(tokens.len());
    let mut caches: Vec<&mut KvCache> = Vec::with_capacity(tokens.len());
    for Sequence { job, cache, .. } in group.iter_mut() {
        adapters.push(job.adapter.as_deref());
        caches.push(cache);
    }
    let logits = model.forward_decode(&tokens, &mut caches, &adapters, ws)?;
    let vocab = model.config.vocab_size;
    for (seq, row) in group.iter_mut().zip(logits.chunks_exact(vocab)) {
        seq.logits.copy_from_slice(row);
        seq.history.push(seq.next);
    }
    Ok(())
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
        send_text(&self.job.events, shown);
        if hit {
            return Some(StopReason::StopString);
        }
        if self.generated >= self.job.max_tokens {
            return Some(StopReason::MaxTokens);
        }
        if self.cache.len() >= context {
            return Some(StopReason::Context);
        }
        self.next = next;
        None
    }

    /// Tells the client how the sequence ended (after any held-back text) and hands back
    /// the cache for the next sequence.
    fn finish(self, outcome: Outcome) -> KvCache {
        let Sequence {
            job,
            cache,
            generated,
            decoder,
            mut stops,
            ..
        } = self;
        let event = match outcome {
            Outcome::Abandoned => return cache,
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
        cache
    }
}

fn send_text(events: &UnboundedSender<Event>, text: &str) {
    if !text.is_empty() {
        let _ = events.send(Event::Text(text.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_take_the_budget_first_come_first_served() {
        assert_eq!(chunk_sizes(&[10, 600, 20], 256), vec![10, 246, 0]);
        assert_eq!(chunk_sizes(&[300, 5], 256), vec![256, 0]);
        assert_eq!(chunk_sizes(&[300, 5], usize::MAX), vec![300, 5]);
        assert_eq!(chunk_sizes(&[], 256), Vec::<usize>::new());
    }
}
