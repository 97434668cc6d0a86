//! The HTTP side: routes, API-key check, request → [`Job`], and events → OpenAI responses
//! (one JSON body, or server-sent events ending with `data: [DONE]`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bora_model::{
    JsonConstraint, KvCache, LoadOptions, Logits, Lora, Model, SamplingParams, VocabIndex,
    Workspace,
};
use bora_tokenizer::chat::{ChatFormat, Conversation, JinjaFormat, JsonValue};
use bora_tokenizer::Tokenizer;
use serde_json::{json, Value};
use tokio::sync::mpsc::unbounded_channel;

use crate::conn::{self, Limits};
use crate::engine::{Job, Rejected, Scheduler};
use crate::error::{ApiError, ServeError};
use crate::request::{completion_prompt, parse_body, Params};
use crate::response::{stream_response, whole_response, Endpoint, Meta, OnStreamed};
use crate::tools::read_shape;

/// How the server runs; every field is a `bora serve` flag.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The name clients pass as `model` for the base model.
    pub model_id: String,
    /// When set, `/v1/*` requests must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Most sequences decoded together in one step.
    pub max_batch: usize,
    /// Most requests waiting for a place in the batch; one more is answered 429.
    pub max_queue: usize,
    /// Longest a request may take, waiting included; then it is answered 504 (or, once
    /// streaming, ends with an error event).
    pub request_timeout: Duration,
    /// Connections, heads, bodies and stalled writes.
    pub limits: Limits,
    /// Sees every answered request (`bora serve --weave` traces them); none by default.
    pub observer: Option<Arc<dyn RequestObserver>>,
    /// A Jinja chat template used instead of the model's own (for a model that ships none,
    /// or one without tool use).
    pub chat_template: Option<String>,
}

/// Something told of each answered request: a whole answer after its response is built and
/// before it is sent, a stream once its last choice finished (with the response the stream
/// added up to). It runs on an I/O thread, so it must return at once: queue the request,
/// never send it from here.
pub trait RequestObserver: Send + Sync + std::fmt::Debug {
    fn answered(&self, request: AnsweredRequest);
}

/// One answered request.
#[derive(Debug, Clone)]
pub struct AnsweredRequest {
    /// `/v1/chat/completions` (else `/v1/completions`).
    pub chat: bool,
    /// The request body as sent.
    pub request: Value,
    /// The response body: the answer, `model` and `usage`.
    pub response: Value,
    /// When the request arrived, and how long it took to answer.
    pub arrived: SystemTime,
    pub latency: Duration,
}

impl ServeOptions {
    /// Defaults: no key, batches of 16, a queue of 64, ten minutes per request.
    pub fn new(model_id: impl Into<String>) -> Self {
        ServeOptions {
            model_id: model_id.into(),
            api_key: None,
            max_batch: 16,
            max_queue: 64,
            request_timeout: Duration::from_secs(600),
            limits: Limits::default(),
            observer: None,
            chat_template: None,
        }
    }
}

/// One name clients can ask for: the base model or the base with an adapter.
struct Served {
    id: String,
    adapter: Option<Arc<Lora>>,
}

/// A loaded model behind its scheduler, ready to be served.
pub struct Server {
    state: Arc<AppState>,
    limits: Limits,
}

struct AppState {
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    /// `None` for a model without a chat format: only `/v1/completions` works then.
    chat: Option<ChatFormat>,
    /// Prepended to `/v1/completions` prompts, as `bora generate` does.
    bos: Option<u32>,
    context: usize,
    /// The base first, then each adapter, by the name clients pass as `model`.
    models: Vec<Served>,
    api_key: Option<String>,
    timeout: Duration,
    observer: Option<Arc<dyn RequestObserver>>,
    created: u64,
    next_id: AtomicU64,
    /// The vocabulary arranged for constrained decoding, built by the first request that
    /// needs it.
    vocab_index: OnceLock<Arc<VocabIndex>>,
}

impl AppState {
    fn vocab_index(&self) -> Arc<VocabIndex> {
        self.vocab_index
            .get_or_init(|| Arc::new(VocabIndex::new(&self.tokenizer)))
            .clone()
    }
}

impl Server {
    /// Loads the model and its tokenizer from `path`, and each `(name, dir)` of `adapters` as
    /// a PEFT adapter directory, and starts the scheduler.
    pub fn load(
        path: &Path,
        load: &LoadOptions,
        adapters: &[(String, PathBuf)],
        options: ServeOptions,
    ) -> Result<Server, ServeError> {
        let model = Model::load(path, load).map_err(|source| ServeError::Model {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let tokenizer = Tokenizer::from_file(path).map_err(|source| ServeError::Tokenizer {
            path: path.to_path_buf(),
            source,
        })?;
        let adapters = adapters
            .iter()
            .map(|(name, dir)| {
                Lora::load_peft(dir, &model.config)
                    .map(|lora| (name.clone(), lora))
                    .map_err(|source| ServeError::Adapter {
                        name: name.clone(),
                        path: dir.clone(),
                        source: Box::new(source),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Server::new(model, tokenizer, adapters, options)
    }

    /// Serves `model` with `tokenizer` (which must fit its vocabulary), and under each name
    /// of `adapters` the model with that adapter. Adapters are applied on the fly, never
    /// merged, so any number share one copy of the base weights.
    pub fn new(
        model: Model,
        tokenizer: Tokenizer,
        adapters: Vec<(String, Lora)>,
        options: ServeOptions,
    ) -> Result<Server, ServeError> {
        if tokenizer.vocab_size() > model.config.vocab_size {
            return Err(ServeError::VocabMismatch {
                path: model.source().to_path_buf(),
                tokenizer: tokenizer.vocab_size(),
                model: model.config.vocab_size,
            });
        }
        if options.limits.max_connections == 0 || options.limits.max_body_bytes == 0 {
            return Err(ServeError::Option(
                "--max-connections and --max-body-mib must be at least 1".into(),
            ));
        }
        if options.max_batch == 0 || options.max_queue == 0 {
            return Err(ServeError::Option(
                "--max-batch and --max-queue must be at least 1".into(),
            ));
        }
        let mut models = vec![Served {
            id: options.model_id,
            adapter: None,
        }];
        for (name, lora) in adapters {
            if name.is_empty() || models.iter().any(|m| m.id == name) {
                return Err(ServeError::Option(format!(
                    "adapter name {name:?} is empty or already taken; each served name must be unique"
                )));
            }
            probe(&model, &lora).map_err(|source| ServeError::Adapter {
                name: name.clone(),
                path: model.source().to_path_buf(),
                source: Box::new(source),
            })?;
            models.push(Served {
                id: name,
                adapter: Some(Arc::new(lora)),
            });
        }
        if models[0].id.is_empty() {
            return Err(ServeError::Option("the model name is empty".into()));
        }
        let chat = match &options.chat_template {
            Some(template) => Some(ChatFormat::Jinja(Box::new(
                JinjaFormat::new(&tokenizer, template)
                    .map_err(|e| ServeError::Option(format!("--chat-template: {e}")))?,
            ))),
            None => match ChatFormat::from_tokenizer(&tokenizer) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(
                        "{}: no chat format ({e}); only /v1/completions will work",
                        model.source().display()
                    );
                    None
                }
            },
        };
        let mut stop_tokens = model.config.eos_token_ids.clone();
        stop_tokens.extend(tokenizer.eos_id());
        let bos = model.config.bos_token_id.filter(|_| model.config.add_bos);
        let context = model.context();
        let tokenizer = Arc::new(tokenizer);
        let scheduler = Scheduler::start(
            Arc::new(model),
            tokenizer.clone(),
            stop_tokens,
            options.max_batch,
            options.max_queue,
        )
        .map_err(|source| ServeError::Io {
            what: "starting the scheduler thread".into(),
            source,
        })?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Server {
            limits: options.limits,
            state: Arc::new(AppState {
                scheduler,
                tokenizer,
                chat,
                bos,
                context,
                models,
                api_key: options.api_key,
                timeout: options.request_timeout,
                observer: options.observer,
                created,
                next_id: AtomicU64::new(1),
                vocab_index: OnceLock::new(),
            }),
        })
    }

    /// The routes, for embedding in another axum app or serving on any listener.
    pub fn router(&self) -> Router {
        let v1 = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route_layer(middleware::from_fn_with_state(
                self.state.clone(),
                check_key,
            ));
        Router::new()
            .route("/health", get(health))
            .merge(v1)
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.state.clone())
            .layer(middleware::from_fn_with_state(
                self.limits,
                conn::limit_body,
            ))
            .layer(DefaultBodyLimit::disable())
    }

    /// Serves until `shutdown` completes, then stops accepting connections and lets every
    /// request in flight, streams included, run to its end before returning.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        conn::serve(listener, self.router(), self.limits, shutdown).await;
        // Dropping the last handle joins the scheduler thread; keep that off the I/O threads.
        let state = self.state;
        tokio::task::spawn_blocking(move || drop(state))
            .await
            .map_err(|e| ServeError::Io {
                what: "stopping the scheduler".into(),
                source: std::io::Error::other(e),
            })
    }
}

/// Runs one token through `model` with `lora`, so an adapter made for another model is
/// refused at start-up rather than failing every request that names it.
fn probe(model: &Model, lora: &Lora) -> bora_model::Result<()> {
    let mut cache: KvCache = model.new_cache();
    let token = model.config.bos_token_id.unwrap_or(0);
    model
        .forward_adapted(
            &[token],
            &mut cache,
            &mut Workspace::new(),
            Logits::Last,
            Some(lora),
        )
        .map(|_| ())
}

/// Completes on SIGTERM or Ctrl-C: the signals a service manager or a terminal sends.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

async fn check_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference, so timing does not leak the key.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .iter()
        .map(
            |m| json!({"id": m.id, "object": "model", "created": state.created, "owned_by": "bora"}),
        )
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(state, body, Endpoint::Chat).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(state, body, Endpoint::Completion).await
}

async fn respond(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    match start(state, body, endpoint).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn start(
    state: Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let arrived_at = SystemTime::now();
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        ..ApiError::bad_request(e.body_text())
    })?;
    let raw = body;
    let body = parse_body(&raw)?;
    let params = Params::read(&body, endpoint == Endpoint::Chat)?;
    let observed = state.observer.clone().map(|o| (o, body.clone()));
    let Some(served) = state.models.iter().find(|m| m.id == params.model) else {
        let names: Vec<String> = state.models.iter().map(|m| m.id.clone()).collect();
        return Err(ApiError::unknown_model(&params.model, &names));
    };
    let adapter = served.adapter.clone();
    // Tokenizing (and rendering a chat template) is compute, so it stays off the I/O threads.
    let (prompt, shape, body) = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            let chat = match endpoint {
                Endpoint::Chat => state.chat.as_ref(),
                Endpoint::Completion => None,
            };
            let shape = read_shape(&body, chat, &state.tokenizer)?;
            if shape.constraint.is_some() {
                state.vocab_index();
            }
            encode_prompt(&state, &raw, &body, endpoint).map(|p| (p, shape, body))
        })
        .await
        .map_err(|e| ApiError::internal(&e))??
    };
    drop(body);
    let max_tokens = fit_context(prompt.len(), params.max_tokens, state.context, endpoint)?;
    let (tx, rx) = unbounded_channel();
    let seed = params.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let prompt_tokens = prompt.len();
    // The `n` choices are sequences of one batch, choice `i` seeded `seed + i`.
    for index in 0..params.n {
        let constraint = shape.constraint.as_ref().map(|(prefix, schema)| {
            JsonConstraint::new(state.vocab_index(), schema.clone()).with_prefix(prefix.clone())
        });
        let job = Job {
            prompt: prompt.clone(),
            adapter: adapter.clone(),
            max_tokens,
            sampling: SamplingParams {
                temperature: params.temperature,
                top_p: params.top_p,
                seed: seed.wrapping_add(index as u64),
                ..SamplingParams::default()
            },
            stop_strings: params.stop.clone(),
            constraint,
            suppressed: shape.suppressed.clone(),
            top_logprobs: params.logprobs,
            deadline: arrived + state.timeout,
            index,
            events: tx.clone(),
        };
        state.scheduler.submit(job).map_err(|e| match e {
            Rejected::Full => ApiError::queue_full(),
            Rejected::Closed => ApiError::unavailable(),
        })?;
    }
    drop(tx);
    let meta = Meta {
        id: format!(
            "{}-{}",
            match endpoint {
                Endpoint::Chat => "chatcmpl",
                Endpoint::Completion => "cmpl",
            },
            state.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: params.model.clone(),
        endpoint,
        prompt_tokens,
        n: params.n,
        logprobs: params.logprobs.is_some(),
        calls: shape.calls,
        marker_token: shape.marker_token,
        tokenizer: state.tokenizer.clone(),
        id_seed: seed,
    };
    let tell = observed.map(|(observer, request)| {
        move |response: Value| {
            observer.answered(AnsweredRequest {
                chat: endpoint == Endpoint::Chat,
                request,
                response,
                arrived: arrived_at,
                latency: arrived.elapsed(),
            })
        }
    });
    if params.stream {
        let on_done = tell.map(|tell| Box::new(tell) as OnStreamed);
        return Ok(stream_response(meta, rx, params.stream_usage, on_done));
    }
    let response = whole_response(meta, rx).await?;
    if let Some(tell) = tell {
        tell(response.clone());
    }
    Ok(Json(response).into_response())
}

/// `raw` is the body as sent: the conversation is read from it directly because tool
/// definitions are written into the prompt with their keys in the client's order, which a
/// `serde_json::Value` would sort.
fn encode_prompt(
    state: &AppState,
    raw: &[u8],
    body: &Value,
    endpoint: Endpoint,
) -> Result<Vec<u32>, ApiError> {
    let tok = &state.tokenizer;
    let ids = match endpoint {
        Endpoint::Chat => {
            let format = state.chat.as_ref().ok_or_else(|| {
                ApiError::invalid(
                    "messages",
                    "this model has no chat format; use /v1/completions",
                )
            })?;
            let value: JsonValue = serde_json::from_slice(raw)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            let conv = Conversation::from_value(&value)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            format
                .encode(tok, &conv, true)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?
                .ids
        }
        Endpoint::Completion => {
            let text = completion_prompt(body)?;
            let mut ids: Vec<u32> = state.bos.into_iter().collect();
            ids.extend(tok.encode(text));
            ids
        }
    };
    if ids.is_empty() {
        return Err(ApiError::invalid(
            endpoint.prompt_param(),
            "the prompt has no tokens",
        ));
    }
    Ok(ids)
}

/// The token budget: what was asked for, else whatever room the context leaves; a prompt
/// or budget that does not fit the context is the client's 400, as with OpenAI.
fn fit_context(
    prompt: usize,
    asked: Option<usize>,
    context: usize,
    endpoint: Endpoint,
) -> Result<usize, ApiError> {
    if prompt >= context {
        return Err(ApiError {
            param: Some(endpoint.prompt_param().into()),
            ..ApiError::context_exceeded(format!(
                "the prompt has {prompt} tokens but this model's context is {context} tokens (including at least one generated token)"
            ))
        });
    }
    match asked {
        Some(m) if m > context - prompt => Err(ApiError {
            param: Some("max_tokens".into()),
            ..ApiError::context_exceeded(format!(
                "the prompt has {prompt} tokens and max_tokens asks for {m} more, but this model's context is {context} tokens"
            ))
        }),
        Some(m) => Ok(m),
        None => Ok(context - prompt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn budget_defaults_to_the_room_left_and_overflow_is_a_400() {
        assert_eq!(fit_context(10, None, 100, Endpoint::Chat).unwrap(), 90);
        assert_eq!(fit_context(10, Some(90), 100, Endpoint::Chat).unwrap(), 90);
        let e = fit_context(10, Some(91), 100, Endpoint::Chat).unwrap_err();
        assert_eq!(
            (e.status, e.param.as_deref()),
            (StatusCode::BAD_REQUEST, Some("max_tokens"))
        );
        let e = fit_context(100, None, 100, Endpoint::Completion).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("prompt"));
        assert_eq!(e.code, Some("context_length_exceeded"));
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"ab", b"abc"));
    }
}
