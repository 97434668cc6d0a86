//! bora-tokenizer: text ↔ token ids for every vocabulary a Mistral fine-tune touches, exactly as
//! the reference libraries compute them (mistral-common, sentencepiece, tiktoken).
//!
//! One `Tokenizer` type loads Mistral SentencePiece `.model` files (v1, v2, v3, v7), Tekken JSON
//! files, GGUF-embedded vocabularies (`llama` and `gpt2`) and HF `tokenizer.json`. Every BPE
//! variant bora implements itself shares one merge loop (`bpe`); `tokenizer.json` runs through
//! the `tokenizers` crate.
//!
//! ```no_run
//! use bora_tokenizer::{SpecialTokenPolicy, StreamDecoder, Tokenizer};
//!
//! let tok = Tokenizer::from_file("tekken.json".as_ref())?;
//! let ids = tok.encode("Hello world"); // no BOS/EOS, "[INST]" in the text stays text
//! assert_eq!(tok.decode(&ids), "Hello world");
//! let chat = tok.encode_with_special("[INST]Hi[/INST]"); // control tokens become ids
//! let mut stream = StreamDecoder::new(&tok, SpecialTokenPolicy::Skip);
//! let text: String = chat.iter().map(|&id| stream.push(id)).collect();
//! # Ok::<(), bora_tokenizer::TokenizerError>(())
//! ```
#![forbid(unsafe_code)]

mod bpe;
mod bytelevel;
pub mod chat;
mod error;
mod gguf;
mod hf;
mod protobuf;
mod special;
mod spm;
mod stream;
mod tekken;
mod tokenizer;
mod utf8;

pub use error::TokenizerError;
pub use gguf::TEKKEN_PATTERN;
pub use spm::SpmVocab;
pub use stream::StreamDecoder;
pub use tekken::TekkenVocab;
pub use tokenizer::{SpecialTokenPolicy, Tokenizer, TokenizerKind};
