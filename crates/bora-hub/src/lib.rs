//! Clients for the remote services a fine-tune starts and ends at: the Hugging Face Hub
//! (models by name into the shared cache; create a repo, upload through the LFS batch API,
//! commit, model card), Weights & Biases (a metric sink), W&B Weave (evaluations and traces),
//! OpenAI-compatible chat completions (Mistral's API as a teacher and a judge), and ElevenLabs
//! text to speech (a model's answers read aloud).
//! All are plain blocking HTTP clients: a CLI command makes a handful of requests, so an
//! async runtime would buy nothing. Tests run them against local servers that check the exact
//! requests; nothing here is reached from tests over the network.
#![forbid(unsafe_code)]
pub mod card;
pub mod chat;
pub mod hub;
pub mod speech;
pub mod wandb;
pub mod weave;
