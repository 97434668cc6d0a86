//! bora-model: the Mistral-family decoder bora trains and serves.
//!
//! One [`ModelConfig`] read from HF `config.json`, Mistral `params.json` or GGUF metadata;
//! weights loaded from any of the three layouts and kept in their stored type (quantized
//! weights stay quantized); a decoder with a KV cache for generation and a packed path for
//! batches; sampling and a streaming generation loop.
//!
//! LoRA ([`Lora`], PEFT's math and tensor names) applies unmerged in every pass:
//! [`Model::forward_adapted`], [`Model::nll_adapted`] and [`Generator::with_adapter`] for
//! inference, [`Trainer`] for training. A training step is the decoder's forward saving what
//! its backward needs, then a hand-written backward (`layer.rs`, each sub-block's backward
//! next to its forward) that computes input and LoRA gradients only: the base is frozen, so
//! it may stay quantized ([`LoadOptions::quantize`] for QLoRA on an HF checkpoint).

#![deny(clippy::undocumented_unsafe_blocks)]

mod config;
mod constrain;
mod error;
pub mod export;
mod generate;
mod layer;
mod lora;
mod model;
mod sample;
mod score;
mod sequence;
mod train;
mod weights;

pub use config::ModelConfig;
pub use constrain::{JsonConstraint, JsonSchema, Recognizer, SchemaError, VocabIndex};
pub use error::{ModelError, Result};
pub use generate::{GenerateOptions, Generation, Generator, StopMatcher, StopReason};
pub use lora::{Lora, LoraGrads, LoraSpec, LoraTarget};
pub use model::{
    CheckpointInfo, KvCache, LoadOptions, Logits, Model, Workspace, DEFAULT_CONTEXT,
    DEFAULT_Q8_PARAMS,
};
pub use sample::{argmax, Rng, Sampler, SamplingParams};
pub use score::{perplexity, Perplexity};
pub use sequence::{decode_step, SampledToken, Sequence};
pub use train::{TrainBatch, Trainer};
pub use weights::{CheckpointKind, LayerWeights, ModelWeights};
