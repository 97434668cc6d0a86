//! bora-tokenizer
