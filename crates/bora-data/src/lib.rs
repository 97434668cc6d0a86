//! bora-data: from a JSONL file to the fixed `[batch, seq_len]` batches a LoRA step eats.
//!
//! The path is one straight line: [`read_jsonl`] parses and validates every line (errors name
//! `FILE:LINE: field`), [`load`] turns examples into token ids and a loss mask through the
//! tokenizer's own chat format (the one eval and serving use), [`fit`] truncates or drops
//! over-long examples, [`split`] holds out a validation set, and a [`Loader`] shuffles, packs
//! and pads them into batches from a resumable [`DataPosition`]. [`preflight`] turns the same
//! plan into token counts, memory and time estimates for `bora data check`.
#![forbid(unsafe_code)]

mod batch;
mod encode;
mod error;
mod preflight;
mod read;

pub use batch::{pack_rows, split, Batch, BatchConfig, DataPosition, Holdout, Loader};
pub use bora_rng::SplitMix64;
pub use encode::{fit, load, Dataset, Encoder, FitReport, Overlong, Sample};
pub use error::{DataError, LineError};
pub use preflight::{
    available_memory, generation_memory, length_stats, preflight, GenerationMemory, LengthStats,
    ModelShape, Preflight, StepShape, RUNTIME_BYTES,
};
pub use read::{
    line_byte_limit, parse_line, read_jsonl, read_jsonl_limited, Example, ReadOutcome, Record,
};
