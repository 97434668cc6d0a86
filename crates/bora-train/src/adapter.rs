//! The adapter as PEFT saves it. The config type lives with bora-model's exporter, which
//! writes the same files for `bora export --format peft`; checkpoints use it unchanged.

pub use bora_model::export::peft::AdapterConfig;
