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
    decode_step, JsonConstraint, KvCache, Lora, Model, SampledToken, SamplingParams, Sequence,
    StopReason, Workspace,
};
use bora_tokenizer::Tokenizer;
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
    /// What the answer must look like (JSON, a schema, a tool call), if anything.
    pub constraint: Option<JsonConstraint>,
    /// Ids never sampled.
    pub suppressed: Vec<u32>,
    /// Alternatives reported with each token's log-probability; `None`: no log-probabilities.
    pub top_logprobs: Option<usize>,
    /// Time after which the request is answered with a timeout, queued or running.
    pub deadline: Instant,
    /// Which of the request's choices this is (`n` > 1 sends several jobs).
    pub index: usize,
    /// Where text goes, tagged with `index`; once the receiver is gone (client
    /// disconnected) the sequence stops.
    pub events: UnboundedSender<(usize, Event)>,
}

/// What the scheduler tells a request's handler.
#[derive(Debug)]
pub(crate) enum Event {
    /// A generated token, sent before the text it settles.
    Token(SampledToken),
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

/// A request being served: its job, how much of its prompt is in the cache, and the
/// generation itself.
struct Request<'t> {
    job: Job,
    /// Prompt tokens in the cache: the request decodes once the whole prompt is.
    fed: usize,
    seq: Sequence<'t>,
}

struct Batch<'m> {
    model: &'m Model,
    tokenizer: &'m Tokenizer,
    stop_tokens: &'m [u32],
    max_batch: usize,
    /// Requests whose prompts are still being prefilled, in arrival order.
    prefilling: Vec<Request<'m>>,
    active: Vec<Request<'m>>,
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
            let _ = job
                .events
                .send((job.index, Event::Failed(ApiError::timeout())));
            return;
        }
        let mut cache = self.spare.pop().unwrap_or_else(|| self.model.new_cache());
        cache.clear();
        let mut job = job;
        let mut seq = Sequence::new(
            self.tokenizer,
            cache,
            &job.prompt,
            job.sampling.clone(),
            job.stop_strings.clone(),
            job.max_tokens,
        )
        .with_suppressed(std::mem::take(&mut job.suppressed));
        if let Some(c) = job.constraint.take() {
            seq = seq.with_constraint(c);
        }
        if let Some(k) = job.top_logprobs {
            seq = seq.with_logprobs(k);
        }
        self.prefilling.push(Request { job, fed: 0, seq });
    }

    /// Runs the next part of the waiting prompts, side by side (`Model::extend_many`): all
    /// of them when nothing is decoding, else at most [`PREFILL_BUDGET`] tokens, first come
    /// first served. Sequences whose prompt is in then decode from the next step.
    fn prefill(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.prefilling.len() {
            let job = &self.prefilling[i].job;
            let outcome = if job.events.is_closed() {
                Outcome::Abandoned
            } else if now >= job.deadline {
                Outcome::Failed(ApiError::timeout())
            } else {
                i += 1;
                continue;
            };
            let request = self.prefilling.remove(i);
            self.spare.push(request.finish(outcome));
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
            for (request, &n) in self
                .prefilling
                .iter_mut()
                .zip(&take)
                .filter(|(_, &n)| n > 0)
            {
                let Request { job, fed, seq } = request;
                chunks.push(&job.prompt[*fed..*fed + n]);
                caches.push(seq.cache_mut());
                adapters.push(job.adapter.as_deref());
            }
            self.model
                .extend_many(&chunks, &mut caches, &adapters, &mut self.ws)
        };
        let mut results = results.into_iter();
        let mut waiting = Vec::with_capacity(self.prefilling.len());
        for (mut request, n) in std::mem::take(&mut self.prefilling).into_iter().zip(take) {
            if n == 0 {
                waiting.push(request);
                continue;
            }
            match results.next().expect("one result per chunk") {
                Ok(logits) => {
                    request.fed += n;
                    if request.fed == request.job.prompt.len() {
                        request.seq.prefilled(logits);
                        self.active.push(request);
                    } else {
                        waiting.push(request);
                    }
                }
                Err(e) => self
                    .spare
                    .push(request.finish(Outcome::Failed(ApiError::internal(&e)))),
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
            let Request { job, seq, .. } = &mut self.active[i];
            let outcome = if job.events.is_closed() {
                Some(Outcome::Abandoned)
            } else if now >= job.deadline {
                Some(Outcome::Failed(ApiError::timeout()))
            } else {
                let (shown, stop) = seq.advance(self.stop_tokens);
                let shown = shown.to_string();
                if let Some(token) = seq.last_token() {
                    let _ = job.events.send((job.index, Event::Token(token.clone())));
                }
                send_text(&job.events, job.index, &shown);
                stop.map(Outcome::Stopped)
            };
            match outcome {
                None => i += 1,
                Some(o) => {
                    let request = self.active.swap_remove(i);
                    self.spare.push(request.finish(o));
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
            for request in std::mem::take(&mut self.active) {
                self.spare
                    .push(request.finish(Outcome::Failed(err.clone())));
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

/// Runs every request's sampled token through the model in one batched step, each with
/// its adapter.
fn decode(model: &Model, active: &mut [Request<'_>], ws: &mut Workspace) -> bora_model::Result<()> {
    let (mut seqs, mut adapters) = (Vec::new(), Vec::new());
    for Request { job, seq, .. } in active.iter_mut() {
        adapters.push(job.adapter.as_deref());
        seqs.push(seq);
    }
    decode_step(model, &mut seqs, &adapters, ws)
}

enum Outcome {
    Stopped(StopReason),
    Failed(ApiError),
    Abandoned,
}

impl Request<'_> {
    /// Tells the client how the request ended (after any held-back text) and hands back
    /// the cache for the next request.
    fn finish(self, outcome: Outcome) -> KvCache {
        let Request { job, seq, .. } = self;
        let stop = match outcome {
            Outcome::Abandoned => return seq.into_cache(),
            Outcome::Failed(e) => {
                let _ = job.events.send((job.index, Event::Failed(e)));
                return seq.into_cache();
            }
            Outcome::Stopped(stop) => stop,
        };
        let completion_tokens = seq.generated();
        let (tail, _, cache) = seq.finish(stop);
        send_text(&job.events, job.index, &tail);
        let _ = job.events.send((
            job.index,
            Event::Done {
                stop,
                completion_tokens,
            },
        ));
        cache
    }
}

fn send_text(events: &UnboundedSender<(usize, Event)>, index: usize, text: &str) {
    if !text.is_empty() {
        let _ = events.send((index, Event::Text(text.to_string())));
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
