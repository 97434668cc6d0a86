//! bora-formats: the lowest floor of bora. Reads and writes the weight files bora meets
//! (safetensors, GGUF), decodes and encodes ggml quant blocks, and maps tensor names and
//! row layouts between the HF, Mistral consolidated, GGUF and PEFT conventions.
//!
//! Nothing here trusts a size read from a file: every count and offset is checked against
//! the bytes actually present before anything is allocated or sliced.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod atomic;
pub mod cache;
mod error;
pub mod gguf;
mod mapped;
pub mod names;
pub mod nf4;
pub mod quant;
pub mod safetensors;

pub use error::FormatError;
