//! Connection handling that holds up against slow, idle, greedy and stalled clients: a cap
//! on open connections (one more is answered 503 with `Retry-After`), a deadline for each
//! request head (byte-a-second headers, connections that never send, idle keep-alives), a
//! bound on request bodies in size and time (answered 413 or 408 in a way clients read), and
//! a deadline on writes that make no progress (a client that stops reading its response).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, timeout, Instant, Sleep};

use crate::error::ApiError;

/// What one client may take of the server; every field is a `bora serve` flag.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at once; one more is answered 503 with `Retry-After` and closed.
    pub max_connections: usize,
    /// Longest a client may take to send a request head, counted from the connection's
    /// start or its previous response; then the connection is closed. Covers slowloris
    /// headers, connections that never send, and idle keep-alive connections.
    pub header_timeout: Duration,
    /// Largest request body; a larger one is answered 413.
    pub max_body_bytes: usize,
    /// Longest a client may take to send a request body; then it is answered 408.
    pub body_timeout: Duration,
    /// Longest a write to the client may wait for room (a client that stopped reading);
    /// then the connection is closed and its request cancelled.
    pub stall_timeout: Duration,
}

impl Default for Limits {
    /// 512 connections, 10 s for a head, 4 MiB and 30 s for a body, 30 s of stalled writes.
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            max_body_bytes: 4 << 20,
            body_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Most connections being turned away at once; beyond that they are closed unanswered, so a
/// flood of connections costs a bounded number of tasks.
const MAX_REFUSING: usize = 64;

/// How much of an oversized body is read and thrown away before answering, and for how
/// long: a client such as Python's `http.client` sends its whole body before it reads, and
/// a server that closes with unread data makes the kernel reset the connection, so the
/// client sees a broken pipe instead of the 413. Beyond these bounds the client gets that.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` under `limits` until `shutdown` completes, then stops
/// accepting and waits for every open connection to finish its requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or a connection reset before it was taken:
                    // the listener itself is fine, so pause briefly rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match open.clone().try_acquire_owned() {
            Ok(permit) => {
                let router = router.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    connection(stream, router, limits, stopped).await;
                    drop(permit);
                });
            }
            Err(_) => {
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(stream).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a permit until it ends.
    let _ = open.acquire_many(limits.max_connections as u32).await;
}

async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Stalling::new(stream, limits.stall_timeout));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(conn);
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection closed: {e}");
    }
}

/// Answers a connection over the limit with 503 and `Retry-After`, then reads (and drops)
/// what the client sent for a moment before closing, so the answer is not lost to a reset.
async fn refuse(mut stream: TcpStream) {
    let body = ApiError::overloaded().body().to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let answer = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    if !matches!(timeout(Duration::from_secs(1), answer).await, Ok(Ok(()))) {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = timeout(Duration::from_secs(1), async {
        let mut read = 0;
        while read < 1 << 16 {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// Middleware: reads the request body within [`Limits::max_body_bytes`] and
/// [`Limits::body_timeout`] before the handler runs, so handlers get the whole body and no
/// client holds a handler with a slow or endless one.
pub(crate) async fn limit_body(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let max = limits.max_body_bytes;
    if declared.is_some_and(|n| n > max as u64) {
        // A client waiting for `100 Continue` has not sent the body: answer at once.
        if !expects_continue {
            drain(body).await;
        }
        return closing(too_large(max));
    }
    let read = timeout(limits.body_timeout, read_body(body, max)).await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyRead::TooLarge(rest))) => {
            drain(rest).await;
            return closing(too_large(max));
        }
        Ok(Err(BodyRead::Broken(e))) => {
            return closing(ApiError::bad_request(format!(
                "reading the request body: {e}"
            )))
        }
        Err(_) => {
            return closing(ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                ..ApiError::bad_request(format!(
                    "the request body took longer than {} s to arrive",
                    limits.body_timeout.as_secs()
                ))
            })
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

enum BodyRead {
    /// Over the limit; the rest of the body, still unread.
    TooLarge(Body),
    Broken(axum::Error),
}

async fn read_body(mut body: Body, max: usize) -> Result<Bytes, BodyRead> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyRead::Broken)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(BodyRead::TooLarge(body));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads and discards up to [`DRAIN_BYTES`] for up to [`DRAIN_TIME`].
async fn drain(mut body: Body) {
    let _ = timeout(DRAIN_TIME, async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

fn too_large(max: usize) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        ..ApiError::bad_request(format!(
            "the request body is larger than this server's limit of {max} bytes"
        ))
    }
}

/// The error with `Connection: close`: what is left of the request is not read.
fn closing(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A stream whose writes fail with `TimedOut` once they have waited `limit` for room: a
/// client that stops reading fills the socket's buffer, and instead of holding its request
/// (and a place in the batch) until the request timeout, the connection is closed, which
/// drops the response and cancels the request.
struct Stalling<S> {
    inner: S,
    limit: Duration,
    /// Running while a write waits for room.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Stalling<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Stalling {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After the inner write returned `Pending`: starts the clock, or fails once it ran out.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let limit = self.limit;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        ready!(clock.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {} s; closing the connection",
                limit.as_secs()
            ),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalling<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalling<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.check(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.check(cx).map_ok(|_| ()),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A peer that stops reading: the write fails once it waited the limit, instead of
    /// waiting for ever; a peer that reads keeps the writes going however long they take.
    #[tokio::test]
    async fn writes_to_a_peer_that_stopped_reading_time_out() {
        let (near, _far) = tokio::io::duplex(64);
        let mut stream = Stalling::new(near, Duration::from_millis(100));
        let e = stream.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = Stalling::new(near, Duration::from_millis(100));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            while got.len() < 4096 {
                // Slower than the limit in total, never stalled for the whole limit.
                sleep(Duration::from_millis(2)).await;
                let n = far.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            got.len()
        });
        stream.write_all(&[1u8; 4096]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 4096);
    }
}
