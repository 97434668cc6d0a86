//! Served requests as Weave calls (`bora serve --weave`). A response never waits for
//! Weave: requests go into a bounded queue that a background thread empties into
//! `calls/complete` batches; when the queue is full (Weave slow or down) a trace is dropped
//! and counted, never queued without bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::eval::{attributes, create_object, send_calls, CallItem};
use super::ids::uuid7;
use super::WeaveClient;
use crate::wandb::Result;

/// Traces waiting to be sent at most; one more is dropped.
pub const TRACE_QUEUE: usize = 1024;

/// Calls sent per request at most.
const BATCH: usize = 64;

/// A trace request that takes longer than this has failed; it is not tried again, and the
/// traces queued behind it wait at most this long.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

const CHAT_SOURCE: &str = "# Traced by `bora serve`: one /v1/chat/completions request (inputs) and the\n# response bora's server sent (output), with its token counts.\ndef chat(**request) -> dict:\n    ...\n";
const COMPLETION_SOURCE: &str = "# Traced by `bora serve`: one /v1/completions request (inputs) and the\n# response bora's server sent (output), with its token counts.\ndef completion(**request) -> dict:\n    ...\n";

/// One answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct TracedRequest {
    /// `true` for `/v1/chat/completions`, `false` for `/v1/completions`.
    pub chat: bool,
    /// The request body as the client sent it (its `model` names the base or an adapter).
    pub request: Value,
    /// The response body, with `model` and `usage` (token counts).
    pub response: Value,
    pub started: SystemTime,
    pub ended: SystemTime,
}

/// The queue and its background sender.
#[derive(Debug)]
pub struct ServeTracer {
    queue: Mutex<Option<SyncSender<TracedRequest>>>,
    counts: Arc<Counts>,
    sender: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Taken into the queue.
    queued: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl ServeTracer {
    /// Starts the sender thread, which first runs `connect` (so a slow Weave never delays
    /// the server's start) and creates the ops; `report` gets its warnings (a failed
    /// connection, a failed batch, the first dropped trace). Traces are dropped while
    /// `connect` runs once the queue is full, and all of them if it fails.
    pub fn start(
        connect: impl FnOnce() -> Result<WeaveClient> + Send + 'static,
        capacity: usize,
        report: impl Fn(String) + Send + 'static,
    ) -> Self {
        let (queue, receiver) = mpsc::sync_channel(capacity.max(1));
        let counts = Arc::new(Counts::default());
        let shared = Arc::clone(&counts);
        let sender = std::thread::Builder::new()
            .name("bora-weave".into())
            .spawn(move || match connect() {
                Ok(client) => {
                    let client = client.with_limits(SEND_TIMEOUT, super::client::retry(1));
                    send_loop(&client, receiver, &shared, &report)
                }
                Err(e) => report(format!("Weave tracing is off: {e}")),
            })
            .ok();
        ServeTracer {
            queue: Mutex::new(Some(queue)),
            counts,
            sender: Mutex::new(sender),
        }
    }

    /// Queues `request` without waiting; a full or closed queue drops it.
    pub fn trace(&self, request: TracedRequest) {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sent = match queue.as_ref() {
            Some(queue) => match queue.try_send(request) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        let count = if sent {
            &self.counts.queued
        } else {
            &self.counts.dropped
        };
        count.fetch_add(1, Ordering::Relaxed);
    }

    /// Traces sent, dropped (queue full or Weave unreachable) and lost in failed batches.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.counts.sent.load(Ordering::Relaxed),
            self.counts.dropped.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops taking traces and waits up to `limit` for the queued ones to be sent; those
    /// still queued or in flight then (Weave hanging or never reached) count as dropped.
    pub fn finish(&self, limit: Duration) -> (u64, u64, u64) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(sender) = sender {
            let (done, wait) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = sender.join();
                let _ = done.send(());
            });
            let _ = wait.recv_timeout(limit);
        }
        let (sent, dropped, failed) = self.counts();
        let queued = self.counts.queued.load(Ordering::Relaxed);
        let left = queued.saturating_sub(sent + failed);
        (sent, dropped + left, failed)
    }
}

fn send_loop(
    client: &WeaveClient,
    receiver: Receiver<TracedRequest>,
    counts: &Counts,
    report: &dyn Fn(String),
) {
    let op = |name: &str, source: &str| -> Result<String> {
        let file = client.create_file("obj.py", source.as_bytes())?;
        let val = json!({"_type": "CustomWeaveType", "weave_type": {"type": "Op"},
                         "files": {"obj.py": file}});
        let digest = create_object(client, name, val)?;
        Ok(client.project().object_ref("op", name, &digest))
    };
    let ops = op("bora.serve.chat", CHAT_SOURCE)
        .and_then(|chat| Ok((chat, op("bora.serve.completion", COMPLETION_SOURCE)?)));
    let (chat_op, completion_op) = match ops {
        Ok(ops) => ops,
        Err(e) => {
            report(format!("Weave tracing is off: {e}"));
            return;
        }
    };
    let project = client.project().clone();
    let v2 = format!("/v2/{}/{}", project.entity, project.name);
    let mut failures = 0u64;
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let calls: Vec<Value> = batch
            .iter()
            .map(|r| {
                let op = if r.chat { &chat_op } else { &completion_op };
                call_json(&project, op, r)
            })
            .collect();
        match send_calls(client, &v2, &calls) {
            Ok(()) => {
                counts.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                counts
                    .failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                failures += 1;
                // The first failure and then one in a hundred, so a Weave outage does not
                // flood the server's log.
                if failures % 100 == 1 {
                    report(format!(
                        "Weave: {} trace(s) not sent ({failures} failed batch(es) so far): {e}",
                        batch.len()
                    ));
                }
            }
        }
    }
}

/// One request as a finished root call of `op`: inputs the request, output the response,
/// and the token counts under the model's name in the summary, as weave sums them.
fn call_json(project: &super::Project, op: &str, r: &TracedRequest) -> Value {
    let model = r
        .response
        .get("model")
        .or_else(|| r.request.get("model"))
        .and_then(Value::as_str)
        .unwrap_or("bora")
        .to_owned();
    let mut summary = json!({"status_counts": {"success": 1, "error": 0}});
    if let Some(usage) = r.response.get("usage").and_then(Value::as_object) {
        let mut counts = json!({"requests": 1});
        for (k, v) in usage {
            counts[k] = v.clone();
        }
        summary["usage"] = json!({ model: counts });
    }
    let trace = uuid7(r.started);
    CallItem {
        project,
        id: uuid7(r.started),
        trace,
        parent: None,
        op: op.to_owned(),
        times: (r.started, r.ended),
    }
    .json(
        attributes(false, false),
        r.request.clone(),
        r.response.clone(),
        summary,
    )
}
