//! bora-tokenizer: text ↔ token ids for every vocabulary a Mistral fine-tune touches, exactly as
//! the reference libraries compute them (mistral-common, sentencepiece, tiktoken).
//!
//! One `Tokenizer` type loads Mistral SentencePiece `.model` files (v1, v2, v3, v7) and Tekken
//! JSON files. All BPE variants share one merge loop (`bpe`).

mod bpe;
pub mod chat;
mod bytelevel;
mod error;
mod gguf;
mod protobuf;
mod special;
mod spm;
mod stream;
mod tekken;
mod tokenizer;
mod utf8;

pub use error::TokenizerError;
pub use stream::StreamDecoder;
pub use tokenizer::{SpecialTokenPolicy, Tokenizer, TokenizerKind};
