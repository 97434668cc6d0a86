//! Decoding a growing list of ids, e.g. while a model generates.

use crate::hf::HfDecodeStream;
use crate::tokenizer::{DecodeState, SpecialTokenPolicy, Tokenizer};

/// Turns ids into text as they arrive. Emits only complete characters: a character split over
/// several byte tokens is held back until its last byte arrives. Concatenating everything
/// `push` and `finish` return gives exactly `Tokenizer::decode_with` of all ids, including
/// SentencePiece's removal of the first piece's dummy-prefix space only.
pub struct StreamDecoder<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    Native {
        tokenizer: &'a Tokenizer,
        policy: SpecialTokenPolicy,
        /// Ids not yet turned into text.
        pending: Vec<u32>,
        /// Decoder state after the ids already emitted.
        state: DecodeState,
    },
    /// HF tokenizers' own `DecodeStream` (same contract, on token strings).
    Hf(HfDecodeStream<'a>),
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer, policy: SpecialTokenPolicy) -> StreamDecoder<'a> {
        let inner = match tokenizer.hf_stream(policy) {
            Some(stream) => Inner::Hf(stream),
            None => Inner::Native {
                tokenizer,
                policy,
                pending: Vec::new(),
                state: DecodeState::new(),
            },
        };
        StreamDecoder { inner }
    }

    /// Adds one id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        match &mut self.inner {
            // HF reports ids outside the vocabulary as errors; they decode to nothing.
            Inner::Hf(stream) => stream.step(id).ok().flatten().unwrap_or_default(),
            Inner::Native {
                tokenizer,
                policy,
                pending,
                state,
            } => {
                pending.push(id);
                let mut next = *state;
                let mut bytes = Vec::new();
                tokenizer.decode_into(pending, *policy, &mut next, &mut bytes);
                if let Err(e) = std::str::from_utf8(&bytes) {
                    if e.error_len().is_none() {
                        // The bytes end inside a character: wait for the rest.
                        return String::new();
                    }
                }
                pending.clear();
                *state = next;
                tokenizer.finish_text(&bytes)
            }
        }
    }

    /// Text of ids still held back (an incomplete character at the end becomes U+FFFD; HF's
    /// stream drops it, as HF does).
    pub fn finish(self) -> String {
        match self.inner {
            Inner::Hf(_) => String::new(),
            Inner::Native {
                tokenizer,
                policy,
                pending,
                mut state,
            } => {
                let mut bytes = Vec::new();
                tokenizer.decode_into(&pending, policy, &mut state, &mut bytes);
                tokenizer.finish_text(&bytes)
            }
        }
    }
}
