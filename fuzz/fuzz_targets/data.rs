//! A dataset line, however malformed, goes through validation and then the chat format of
//! every tokenizer (Mistral instruct v3 and v7, Tekken, Jinja templates) as `bora train`
//! takes it: an example or a line error, never a panic, and an encoded example has one mask
//! entry per id and only ids of the vocabulary. Covers all three shapes (messages with tools,
//! tool calls and weights; prompt/completion; text).
#![no_main]

#[path = "common.rs"]
mod common;

use bora_data::{parse_line, Encoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(example) = parse_line(text) else {
        return;
    };
    for tok in common::tokenizers() {
        let Ok(encoder) = Encoder::new(tok) else {
            continue;
        };
        if let Ok(e) = encoder.encode(&example) {
            assert_eq!(e.ids.len(), e.mask.len());
            assert!(e.ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
        }
    }
});
