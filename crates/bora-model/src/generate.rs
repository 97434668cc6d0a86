//! The generation loop: prefill, then sample one token at a time until an end token, a stop
//! string, the token budget or the context runs out, streaming text as it completes.

use std::time::{Duration, Instant};

use bora_tokenizer::{SpecialTokenPolicy, StreamDecoder, Tokenizer};

use crate::constrain::JsonConstraint;
use crate::error::{ModelError, Result};
use crate::lora::Lora;
use crate::model::{KvCache, Logits, Model, Workspace};
use crate::sample::{Sampler, SamplingParams};

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when one of these ids is sampled (it is not part of the output).
    pub stop_tokens: Vec<u32>,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token (end of sequence / end of turn) was sampled.
    EndToken,
    StopString,
    MaxTokens,
    /// The context is full.
    Context,
}

/// What one call produced, with timings for tokens/s reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated ids, without the stop token.
    pub tokens: Vec<u32>,
    /// Their text, cut before a stop string.
    pub text: String,
    pub stop: StopReason,
    /// Prompt tokens actually run (those not already in the cache).
    pub prefill_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

/// Runs a model on one conversation, keeping its KV cache between calls so a multi-turn chat
/// only runs each new turn's tokens.
pub struct Generator<'m> {
    model: &'m Model,
    cache: KvCache,
    ws: Workspace,
    /// The tokens whose keys and values are in `cache`.
    history: Vec<u32>,
    adapter: Option<&'m Lora>,
    /// Constrains the next generation (and is then used up).
    constraint: Option<JsonConstraint>,
}

impl<'m> Generator<'m> {
    pub fn new(model: &'m Model) -> Self {
        Generator {
            model,
            cache: model.new_cache(),
            ws: Workspace::new(),
            history: Vec::new(),
            adapter: None,
            constraint: None,
        }
    }

    /// Generates with an unmerged LoRA adapter; the cache is cleared, since keys and values
    /// computed without it (or with another) would be wrong.
    pub fn with_adapter(mut self, adapter: &'m Lora) -> Self {
        self.adapter = Some(adapter);
        self.reset();
        self
    }

    /// The next generation samples only what `constraint` allows (a JSON answer).
    pub fn constrain_next(&mut self, constraint: JsonConstraint) {
        self.constraint = Some(constraint);
    }

    /// Generates ids after `prompt` (the whole sequence so far, not only the new part: the
    /// longest prefix already in the cache is reused). `on_token` sees each new id and
    /// returns false to stop (reported as [`StopReason::StopString`]).
    pub fn generate_ids(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        opts.sampling.validate().map_err(ModelError::Sampling)?;
        if prompt.is_empty() {
            return Err(ModelError::Empty("the prompt has no tokens"));
        }
        if prompt.len() > self.cache.capacity() {
            return Err(ModelError::ContextOverflow {
                needed: prompt.len(),
                context: self.cache.capacity(),
                prompt: prompt.len(),
            });
        }
        // Reuse the cached prefix, but always run at least one token to get logits.
        let common = self
            .history
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = common.min(prompt.len() - 1);
        self.cache.truncate(keep);
        self.history.truncate(keep);

        let start = Instant::now();
        let mut logits = self
            .model
            .forward_adapted(
                &prompt[keep..],
                &mut self.cache,
                &mut self.ws,
                Logits::Last,
                self.adapter,
            )?
            .to_vec();
        self.history.extend_from_slice(&prompt[keep..]);
        let prefill_time = start.elapsed();

        let mut sampler = Sampler::new(opts.sampling.clone());
        let mut constraint = self.constraint.take();
        let mut tokens = Vec::new();
        let decode_start = Instant::now();
        let stop = loop {
            if tokens.len() >= opts.max_tokens {
                break StopReason::MaxTokens;
            }
            if let Some(c) = &mut constraint {
                if !c.mask_logits(&mut logits, &opts.stop_tokens) {
                    break StopReason::EndToken;
                }
            }
            let next = sampler.sample(&mut logits, &self.history);
            if opts.stop_tokens.contains(&next) {
                break StopReason::EndToken;
            }
            if let Some(c) = &mut constraint {
                c.accept(next);
            }
            tokens.push(next);
            if !on_token(next) {
                break StopReason::StopString;
            }
            if tokens.len() >= opts.max_tokens {
                break StopReason::MaxTokens;
            }
            if self.cache.len() >= self.cache.capacity() {
                break StopReason::Context;
            }
            let out = self.model.forward_adapted(
                &[next],
                &mut self.cache,
                &mut self.ws,
                Logits::Last,
                self.adapter,
            )?;
            logits.copy_from_slice(out);
            self.history.push(next);
        };
        Ok(Generation {
            tokens,
            text: String::new(),
            stop,
            prefill_tokens: prompt.len() - keep,
            prefill_time,
            decode_time: decode_start.elapsed(),
        })
    }

    /// Like [`Generator::generate_ids`], decoding text as it completes and handing it to
    /// `on_text`. Text that might be the start of a stop string is held back until it is
    /// known not to be one, so nothing after a stop string is ever shown.
    pub fn generate_text(
        &mut self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let mut decoder = StreamDecoder::new(tokenizer, SpecialTokenPolicy::Skip);
        let mut stops = StopMatcher::new(opts.stop_strings.clone());
        let mut gen = self.generate_ids(prompt, opts, |id| {
            let piece = decoder.push(id);
            let (emit, hit) = stops.push(&piece);
            on_text(emit);
            !hit
        })?;
        if gen.stop != StopReason::StopString {
            let rest = decoder.finish();
            let (emit, _) = stops.push(&rest);
            on_text(emit);
            let tail = stops.flush();
            on_text(tail);
        }
        gen.text = stops.into_text();
        Ok(gen)
    }

    /// Forgets the conversation (the cache buffers are kept).
    pub fn reset(&mut self) {
        self.cache.clear();
        self.history.clear();
    }
}

/// Finds stop strings in streamed text and decides how much text is safe to show: text that
/// could be the start of a stop string is held back until the next piece settles it, so a
/// reader never sees any part of a stop string.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    /// Set once a stop string is found; `text` is then cut before it.
    done: bool,
}

impl StopMatcher {
    /// Empty stop strings never match.
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops,
            text: String::new(),
            emitted: 0,
            done: false,
        }
    }

    /// Adds `piece`; returns the text now safe to show and whether a stop string was hit.
    pub fn push(&mut self, piece: &str) -> (&str, bool) {
        if self.done {
            return ("", true);
        }
        let from = self.emitted;
        self.text.push_str(piece);
        // A stop string cannot start in text already shown: `safe_end` held back every tail
        // that could begin one, so searching the unshown part is enough.
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        let end = match hit {
            Some(at) => {
                self.text.truncate(at);
                self.done = true;
                at.max(from)
            }
            None => self.safe_end(),
        };
        self.emitted = end.max(from);
        (&self.text[from..self.emitted], self.done)
    }

    /// End of the text that cannot be the beginning of a stop string.
    fn safe_end(&self) -> usize {
        let mut end = self.text.len();
        for s in self.stops.iter().filter(|s| !s.is_empty()) {
            for (i, _) in self.text.char_indices().rev().take(s.len()) {
                if i < self.emitted {
                    break;
                }
                if s.starts_with(&self.text[i..]) {
                    end = end.min(i);
                }
            }
        }
        end
    }

    /// Whatever was held back, once generation ended without a stop string.
    pub fn flush(&mut self) -> &str {
        let from = self.emitted;
        self.emitted = self.text.len();
        &self.text[from..]
    }

    /// All text kept so far, cut before the stop string if one was found.
    pub fn into_text(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(stops);
        let mut shown = String::new();
        let mut hit = false;
        for p in pieces {
            let (emit, h) = m.push(p);
            shown.push_str(emit);
            if h {
                hit = true;
                break;
            }
        }
        if !hit {
            shown.push_str(m.flush());
        }
        (shown, m.into_text(), hit)
    }

    #[test]
    fn stop_string_split_over_pieces_is_never_shown() {
        let (shown, text, hit) = run(&["\nUser:"], &["Hello", " there\n", "Us", "er: hi"]);
        assert!(hit);
        assert_eq!(shown, "Hello there");
        assert_eq!(text, "Hello there");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_complete() {
        let (shown, text, hit) = run(&["STOP"], &["ab", "ST", "x", "ST"]);
        assert!(!hit);
        assert_eq!(shown, "abSTxST");
        assert_eq!(text, "abSTxST");
    }

    #[test]
    fn multibyte_text_before_a_long_stop_string() {
        let (shown, _, hit) = run(&["<|end|>"], &["ééé", "é<|e", "nd|>x"]);
        assert!(hit);
        assert_eq!(shown, "éééé");
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
                let (shown, kept, hit) = run(stops, &refs);
                assert_eq!(shown, expected, "stops {stops:?}, pieces of {size} chars");
                assert_eq!(kept, expected);
                assert_eq!(hit, cut.is_some());
            }
        }
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_text_is_kept_whole() {
        let (shown, _, hit) = run(&["é!", "b"], &["aé", "!b"]);
        assert!(hit);
        assert_eq!(shown, "a");
    }
}
