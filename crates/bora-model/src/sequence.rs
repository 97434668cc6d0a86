//! One generation among others in a batched loop (bora-eval's runner, bora-serve's
//! scheduler): the loop prefills each sequence's prompt into its cache, asks each to
//! [`Sequence::advance`] (sample a token, decode its text, check the stops), then runs every
//! sampled token through one [`decode_step`]. The checks come in the order [`Generator`]
//! makes them, so a batched answer ends at the same token for the same reason as a lone
//! generator's.
//!
//! [`Generator`]: crate::Generator

use bora_tokenizer::{SpecialTokenPolicy, StreamDecoder, Tokenizer};

use crate::constrain::JsonConstraint;
use crate::error::Result;
use crate::generate::{StopMatcher, StopReason};
use crate::lora::Lora;
use crate::model::{KvCache, Model, Workspace};
use crate::sample::{Sampler, SamplingParams};

/// A generation in flight: its cache, sampler, the ids so far, the next token's logits, and
/// its text, decoded as tokens complete and checked against the stop strings.
pub struct Sequence<'t> {
    cache: KvCache,
    sampler: Sampler,
    /// Prompt and generated ids, the context of the repetition penalty.
    history: Vec<u32>,
    /// Logits of the next token.
    logits: Vec<f32>,
    /// The id sampled last, to run through the model.
    next: u32,
    generated: usize,
    max_tokens: usize,
    decoder: StreamDecoder<'t>,
    stops: StopMatcher,
    constraint: Option<JsonConstraint>,
    /// Ids never sampled (a tool-call token when tools are switched off).
    suppressed: Vec<u32>,
    /// How many alternatives to report with each token's log-probability, when asked.
    top_logprobs: Option<usize>,
    /// The token [`Sequence::advance`] produced last, with its log-probabilities if asked.
    last: Option<SampledToken>,
}

/// One generated token and, when asked for, the model's log-probabilities for it and its
/// most likely alternatives (from the raw logits: before temperature, penalty or constraint).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub id: u32,
    pub logprob: Option<f32>,
    /// The most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

impl<'t> Sequence<'t> {
    /// A sequence for `prompt`, whose keys and values go into `cache` (the caller prefills
    /// it and hands over the last position's logits with [`Sequence::prefilled`]).
    pub fn new(
        tokenizer: &'t Tokenizer,
        cache: KvCache,
        prompt: &[u32],
        sampling: SamplingParams,
        stop_strings: Vec<String>,
        max_tokens: usize,
    ) -> Self {
        Sequence {
            cache,
            sampler: Sampler::new(sampling),
            history: prompt.to_vec(),
            logits: Vec::new(),
            next: 0,
            generated: 0,
            max_tokens,
            decoder: StreamDecoder::new(tokenizer, SpecialTokenPolicy::Skip),
            stops: StopMatcher::new(stop_strings),
            constraint: None,
            suppressed: Vec::new(),
            top_logprobs: None,
            last: None,
        }
    }

    /// Samples only what `constraint` allows.
    pub fn with_constraint(mut self, constraint: JsonConstraint) -> Self {
        self.constraint = Some(constraint);
        self
    }

    /// Never samples `ids`.
    pub fn with_suppressed(mut self, ids: Vec<u32>) -> Self {
        self.suppressed = ids;
        self
    }

    /// Records each token's log-probability and the `top` most likely alternatives.
    pub fn with_logprobs(mut self, top: usize) -> Self {
        self.top_logprobs = Some(top);
        self
    }

    /// The token the last [`Sequence::advance`] produced (not a stop token).
    pub fn last_token(&self) -> Option<&SampledToken> {
        self.last.as_ref()
    }

    /// The cache, to prefill the prompt into.
    pub fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }

    /// The prompt is in the cache; `logits` are its last position's.
    pub fn prefilled(&mut self, logits: Vec<f32>) {
        self.logits = logits;
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Samples the next token and decodes it. Returns the text this settles (possibly
    /// empty: text that may begin a stop string is held back) and, when the sequence has
    /// ended, why; otherwise the token waits for the next [`decode_step`].
    pub fn advance(&mut self, stop_tokens: &[u32]) -> (&str, Option<StopReason>) {
        self.last = None;
        if self.generated >= self.max_tokens {
            return ("", Some(StopReason::MaxTokens));
        }
        let stats = self.top_logprobs.map(|k| LogSoftmax::of(&self.logits, k));
        for &id in &self.suppressed {
            if let Some(l) = self.logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let raw = stats.as_ref().map(|_| self.logits.clone());
        if let Some(c) = &mut self.constraint {
            if !c.mask_logits(&mut self.logits, stop_tokens) {
                return ("", Some(StopReason::EndToken));
            }
        }
        let next = self.sampler.sample(&mut self.logits, &self.history);
        if stop_tokens.contains(&next) {
            return ("", Some(StopReason::EndToken));
        }
        if let Some(c) = &mut self.constraint {
            c.accept(next);
        }
        self.last = Some(match (stats, raw) {
            (Some(s), Some(raw)) => SampledToken {
                id: next,
                logprob: Some(raw[next as usize] - s.log_sum),
                top: s.top,
            },
            _ => SampledToken {
                id: next,
                logprob: None,
                top: Vec::new(),
            },
        });
        self.generated += 1;
        let piece = self.decoder.push(next);
        let (shown, hit) = self.stops.push(&piece);
        let stop = if hit {
            Some(StopReason::StopString)
        } else if self.generated >= self.max_tokens {
            Some(StopReason::MaxTokens)
        } else if self.cache.len() >= self.cache.capacity() {
            Some(StopReason::Context)
        } else {
            self.next = next;
            None
        };
        (shown, stop)
    }

    /// The cache back, for a sequence dropped before it ended (failed, abandoned).
    pub fn into_cache(self) -> KvCache {
        self.cache
    }

    /// Ends the sequence for `stop`: the text still held back (none after a stop string),
    /// the whole text (cut before a stop string) and the cache, for another sequence.
    pub fn finish(self, stop: StopReason) -> (String, String, KvCache) {
        let Sequence {
            cache,
            decoder,
            mut stops,
            ..
        } = self;
        let mut tail = String::new();
        if stop != StopReason::StopString {
            tail.push_str(stops.push(&decoder.finish()).0);
            tail.push_str(stops.flush());
        }
        (tail, stops.into_text(), cache)
    }
}

/// The normalizer of a row of logits and its most likely tokens, as log-probabilities.
struct LogSoftmax {
    log_sum: f32,
    top: Vec<(u32, f32)>,
}

impl LogSoftmax {
    fn of(logits: &[f32], k: usize) -> LogSoftmax {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let log_sum = max + sum.ln() as f32;
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < k || top.last().is_some_and(|t| l > t.1) {
                let at = top.partition_point(|t| t.1 >= l);
                top.insert(at, (i as u32, l));
                top.truncate(k);
            }
        }
        for t in &mut top {
            t.1 -= log_sum;
        }
        LogSoftmax { log_sum, top }
    }
}

/// Runs every sequence's sampled token through the model in one batched step, sequence
/// `i` with `adapters[i]`, and keeps the new logits (each row's bit for bit those of its
/// sequence decoded alone, see [`Model::forward_decode`]).
pub fn decode_step(
    model: &Model,
    sequences: &mut [&mut Sequence<'_>],
    adapters: &[Option<&Lora>],
    ws: &mut Workspace,
) -> Result<()> {
    let tokens: Vec<u32> = sequences.iter().map(|s| s.next).collect();
    let mut caches: Vec<&mut KvCache> = sequences.iter_mut().map(|s| &mut s.cache).collect();
    let logits = model.forward_decode(&tokens, &mut caches, adapters, ws)?;
    let vocab = model.config.vocab_size;
    for (seq, row) in sequences.iter_mut().zip(logits.chunks_exact(vocab)) {
        seq.logits.clear();
        seq.logits.extend_from_slice(row);
        seq.history.push(seq.next);
    }
    Ok(())
}
