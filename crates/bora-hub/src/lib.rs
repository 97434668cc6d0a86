//! Clients for the remote services a fine-tune starts and ends at: the Hugging Face Hub
//! (models by name into the shared cache; create a repo, upload through the LFS batch API,
//! commit, model card) and Weights & Biases (a metric sink).
//! Both are plain blocking HTTP clients: a CLI command makes a handful of requests, so an
//! async runtime would buy nothing. Tests run them against local servers that check the exact
//! requests; nothing here is reached from tests over the network.
pub mod card;
pub mod hub;
pub mod wandb;
