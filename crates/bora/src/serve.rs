//! `bora serve`: an OpenAI-compatible HTTP server (see `bora_serve`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bora_hub::wandb::{base_url_from_env, ApiKey, Target};
use bora_hub::weave::{ServeTracer, TracedRequest, WeaveClient, TRACE_QUEUE};
use bora_model::LoadOptions;
use bora_serve::{AnsweredRequest, Limits, RequestObserver, ServeOptions, Server};
use clap::Args;

/// How long a stopping server waits for queued traces to reach Weave.
const TRACE_FLUSH: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A `.gguf` file, a Hugging Face model directory, a Mistral consolidated directory, or
    /// a Hub id ORG/NAME[@REV] or ORG/NAME:FILE.gguf [default: the default model, see `bora
    /// default-model`].
    #[arg(long, value_name = "PATH|ORG/NAME")]
    model: Option<PathBuf>,
    /// The name clients pass as `model` [default: the model file or directory name].
    #[arg(long)]
    name: Option<String>,
    /// Serve a PEFT adapter directory under NAME as well (repeatable); adapters share the
    /// base weights and are applied per request, unmerged.
    #[arg(long = "adapter", value_name = "NAME=DIR", value_parser = parse_adapter)]
    adapters: Vec<(String, PathBuf)>,
    /// Longest sequence (prompt + reply) a request may use [default: the model's, at most 8192].
    #[arg(long, value_name = "N")]
    context: Option<usize>,
    #[command(flatten)]
    quant: crate::generate::QuantArg,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 requests.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Most requests decoded together.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_batch: usize,
    /// Most requests waiting for a place; more are answered 429.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_queue: usize,
    /// Seconds a request may take, waiting included.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
    /// Most open connections; one more is answered 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers (also the keep-alive idle time).
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().header_timeout.as_secs())]
    header_timeout: u64,
    /// Largest request body in MiB; larger ones are answered 413.
    #[arg(long, value_name = "MIB", default_value_t = Limits::default().max_body_bytes >> 20)]
    max_body_mib: usize,
    /// Seconds a client may take to send a request body; then it is answered 408.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().body_timeout.as_secs())]
    body_timeout: u64,
    /// Seconds a response may wait for a client that stopped reading; then the connection
    /// is closed and its request cancelled.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().stall_timeout.as_secs())]
    stall_timeout: u64,
    /// Trace each answered request as a W&B Weave call (prompt, answer, model or adapter,
    /// latency, tokens): PROJECT or PROJECT/ENTITY. Traces are sent in the background and
    /// dropped, never waited for, when Weave is slow.
    #[arg(long, value_name = "PROJECT[/ENTITY]")]
    weave: Option<String>,
    /// A Jinja chat template file to format chats with instead of the model's own (for
    /// tool use with a model whose template has none, say).
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
}

/// Hands answered requests to the Weave tracer's queue.
#[derive(Debug)]
struct WeaveObserver(Arc<ServeTracer>);

impl RequestObserver for WeaveObserver {
    fn answered(&self, r: AnsweredRequest) {
        self.0.trace(TracedRequest {
            chat: r.chat,
            request: r.request,
            response: r.response,
            started: r.arrived,
            ended: r.arrived + r.latency,
        });
    }
}

/// The tracer `--weave` asks for. The key is looked up now, so a missing one stops the
/// server before it loads; W&B and Weave are reached from the tracer's own thread.
fn weave_tracer(target: &str) -> Result<ServeTracer> {
    let target = Target::parse(target, "--weave")?;
    ApiKey::from_env(&base_url_from_env()).context("--weave asks for W&B Weave")?;
    Ok(ServeTracer::start(
        move || WeaveClient::from_env(&target),
        TRACE_QUEUE,
        |line| eprintln!("{line}"),
    ))
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let (path, hub_name) = match &args.model {
        Some(m) => {
            let located = crate::download::locate(&m.to_string_lossy(), None)?;
            (located.path, located.hub.map(|h| h.model.name()))
        }
        None => (bora_formats::cache::default_model(), None),
    };
    let name = match args.name.clone().or(hub_name) {
        Some(n) => n,
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bora".into()),
    };
    let tracer = args
        .weave
        .as_deref()
        .map(weave_tracer)
        .transpose()?
        .map(Arc::new);
    let chat_template = args
        .chat_template
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the chat template {}", p.display()))
        })
        .transpose()?;
    let options = ServeOptions {
        observer: tracer
            .clone()
            .map(|t| Arc::new(WeaveObserver(t)) as Arc<dyn RequestObserver>),
        chat_template,
        model_id: name.clone(),
        api_key: args.api_key.clone(),
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        request_timeout: Duration::from_secs(args.timeout),
        limits: Limits {
            max_connections: args.max_connections,
            header_timeout: Duration::from_secs(args.header_timeout),
            max_body_bytes: args.max_body_mib.saturating_mul(1 << 20),
            body_timeout: Duration::from_secs(args.body_timeout),
            stall_timeout: Duration::from_secs(args.stall_timeout),
        },
    };
    let load = LoadOptions {
        context: args.context,
        quantize: args.quant.resolve(&path, None)?,
        decode_layout: true,
    };
    let server = Server::load(&path, &load, &args.adapters, options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bora-io")
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    runtime.block_on(async {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        eprintln!(
            "serving {} as `{name}` on http://{}",
            path.display(),
            listener.local_addr().context("reading the bound address")?
        );
        server
            .serve(listener, bora_serve::shutdown_signal())
            .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    if let Some(tracer) = tracer {
        let (sent, dropped, failed) = tracer.finish(TRACE_FLUSH);
        let warning = if dropped + failed > 0 {
            "warning: "
        } else {
            ""
        };
        eprintln!("{warning}weave: {sent} request(s) traced, {dropped} dropped, {failed} not sent");
    }
    Ok(())
}

fn parse_adapter(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!("expected NAME=DIR, got {arg:?}")),
    }
}
