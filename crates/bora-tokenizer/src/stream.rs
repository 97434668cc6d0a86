//! Decoding a growing list of ids, e.g. while a model generates.

use crate::tokenizer::{DecodeState, SpecialTokenPolicy, Tokenizer};

/// Turns ids into text as they arrive. Emits only complete characters: a character split over
/// several byte tokens is held back until its last byte arrives. Concatenating everything
/// `push` and `finish` return gives exactly `Tokenizer::decode_with` of all ids, including
/// SentencePiece's removal of the first piece's dummy-prefix space only.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    policy: SpecialTokenPolicy,
    /// Ids not yet turned into text.
    pending: Vec<u32>,
    /// Decoder state after the ids already emitted.
    state: DecodeState,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer, policy: SpecialTokenPolicy) -> StreamDecoder<'a> {
        StreamDecoder {
            tokenizer,
            policy,
            pending: Vec::new(),
            state: DecodeState::new(),
        }
    }

    /// Adds one id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending.push(id);
        let mut state = self.state;
        let mut bytes = Vec::new();
        self.tokenizer
            .decode_into(&self.pending, self.policy, &mut state, &mut bytes);
        if let Err(e) = std::str::from_utf8(&bytes) {
            if e.error_len().is_none() {
                // The bytes end inside a character: wait for the rest.
                return String::new();
            }
        }
        self.pending.clear();
        self.state = state;
        self.tokenizer.finish_text(&bytes)
    }

    /// Text of ids still held back (an incomplete character at the end becomes U+FFFD).
    pub fn finish(self) -> String {
        let mut state = self.state;
        let mut bytes = Vec::new();
        self.tokenizer
            .decode_into(&self.pending, self.policy, &mut state, &mut bytes);
        self.tokenizer.finish_text(&bytes)
    }
}
