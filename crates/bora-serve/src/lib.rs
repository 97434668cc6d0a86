//! bora-serve: an OpenAI-compatible HTTP server for a bora model.
//!
//! `GET /v1/models`, `POST /v1/chat/completions` (the model's own chat format, the same code
//! path training uses), `POST /v1/completions` (both streaming with server-sent events) and
//! `GET /health`. The request's `model` picks the base model or one of several LoRA adapters,
//! which share the base weights and are applied unmerged, per sequence. One scheduler thread advances all running requests together a token at a
//! time (continuous batching) with the arithmetic on the rayon pool; tokio only does I/O.
//!
//! ```no_run
//! # async fn run() -> Result<(), bora_serve::ServeError> {
//! use bora_serve::{ServeOptions, Server};
//! let options = ServeOptions::new("smollm2");
//! let adapters = [("support".to_string(), "runs/support/adapter".into())];
//! let server = Server::load("model.gguf".as_ref(), &Default::default(), &adapters, options)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! server.serve(listener, bora_serve::shutdown_signal()).await
//! # }
//! ```
#![forbid(unsafe_code)]

mod calls;
mod conn;
mod engine;
mod error;
mod request;
mod response;
mod server;
mod tools;

pub use conn::Limits;
pub use error::{ApiError, ServeError};
pub use server::{shutdown_signal, AnsweredRequest, RequestObserver, ServeOptions, Server};
