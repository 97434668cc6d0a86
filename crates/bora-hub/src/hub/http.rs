//! One blocking request with bounded retries. The Hub and its storage backends answer 429
//! and 5xx under load and connections drop during long uploads; a push of gigabytes should
//! survive those, but never loop forever.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::http::Request;
use ureq::SendBody;

use super::{HubError, Result, Token};

/// How often and how long to wait before giving a request up. The delay doubles from
/// `first_delay` up to `max_delay`; `sleep` is injectable so tests see the delays without
/// waiting them.
#[derive(Clone)]
pub struct Retry {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    sleep: Arc<dyn Fn(Duration) + Send + Sync>,
}

impl Default for Retry {
    /// Six attempts (five retries) 1, 2, 4, 8 and 8 s apart, as `huggingface_hub`'s
    /// `http_backoff` waits.
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            sleep: Arc::new(std::thread::sleep),
        }
    }
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("attempts", &self.attempts)
            .field("first_delay", &self.first_delay)
            .field("max_delay", &self.max_delay)
            .finish_non_exhaustive()
    }
}

impl Retry {
    /// Replaces the wait between attempts (tests record the delays instead of sleeping).
    pub fn with_sleep(mut self, sleep: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        self.sleep = Arc::new(sleep);
        self
    }

    /// The wait after failed attempt `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Waits `delay` (or records it, in tests).
    pub(crate) fn wait(&self, delay: Duration) {
        (self.sleep)(delay)
    }
}

/// The longest `Retry-After` honoured: a server asking for more is waited this long, so a
/// bad header cannot stall a batch job for hours.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(120);

/// The wait a 429 or 503 asks for, as the official Mistral client reads it: `retry-after-ms`
/// (milliseconds) or `Retry-After` in seconds (a fraction allowed). The HTTP-date form is
/// not read; the backoff applies then.
fn retry_after(headers: &ureq::http::HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    let secs = number("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| number("retry-after"))?;
    Some(Duration::from_secs_f64(
        secs.min(RETRY_AFTER_CAP.as_secs_f64()),
    ))
}

/// A blocking client for one Hub endpoint with one token.
#[derive(Debug)]
pub struct HubClient {
    pub(super) endpoint: String,
    token: Option<Token>,
    agent: ureq::Agent,
    /// For file downloads: follows no redirect by itself (the token must not follow one off
    /// the Hub) and bounds each read rather than the whole body, which may take hours.
    pub(super) download_agent: ureq::Agent,
    pub(super) retry: Retry,
    /// The header the token goes in: `authorization` as a bearer token unless a service
    /// names its own (ElevenLabs' `xi-api-key`), which then carries the token as it is.
    key_header: Option<&'static str>,
}

/// What a request sends.
pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`, streamed with a `content-length` (object stores
    /// refuse chunked uploads) and reopened on every attempt.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
    },
}

pub(crate) struct Req<'a> {
    pub method: &'static str,
    pub url: String,
    pub auth: bool,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Body<'a>,
}

/// An answer; `B` is how its body was read (text for the APIs, bytes for audio).
pub(crate) struct Resp<B = String> {
    pub status: u16,
    pub etag: Option<String>,
    /// `X-Error-Code`: how the Hub tells a gated repo from a missing one.
    pub error_code: Option<String>,
    /// What `Retry-After` (or `retry-after-ms`) asked for.
    pub retry_after: Option<Duration>,
    pub content_type: Option<String>,
    /// The `rel="next"` URL of a `Link` header: the next page of a paginated list.
    pub next_page: Option<String>,
    pub body: B,
}

/// The `rel="next"` target of a `Link` header (`<URL>; rel="next", <URL>; rel="last"`), as
/// `huggingface_hub`'s `paginate` reads it through `response.links`.
pub(crate) fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let url = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .any(|(k, v)| k.trim() == "rel" && v.trim().trim_matches('"') == "next")
            .then(|| url.to_owned())
    })
}

/// A URL without its query: presigned storage URLs carry signatures there.
pub(crate) fn shown(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("bora/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(timeout))
        .timeout_recv_body(Some(timeout))
        .build()
        .new_agent()
}

fn download_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("bora/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

pub(crate) fn retryable(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    )
}

impl HubClient {
    /// A client for `endpoint` (no trailing slash, see [`super::resolve_endpoint`]).
    pub fn new(endpoint: &str, token: Token) -> HubClient {
        HubClient::with_optional_token(endpoint, Some(token))
    }

    /// A client that reads public repos without a token, and gated or private ones with one.
    pub fn with_optional_token(endpoint: &str, token: Option<Token>) -> HubClient {
        HubClient {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token,
            agent: agent(Duration::from_secs(300)),
            download_agent: download_agent(),
            retry: Retry::default(),
            key_header: None,
        }
    }

    /// A client that sends `token` as it is in the header `header` (services whose keys are
    /// not bearer tokens).
    pub(crate) fn with_key_header(endpoint: &str, token: Token, header: &'static str) -> HubClient {
        HubClient {
            key_header: Some(header),
            ..HubClient::new(endpoint, token)
        }
    }

    /// A client that sends no `authorization` header (a local server without keys).
    pub(crate) fn without_token(endpoint: &str) -> HubClient {
        HubClient::with_optional_token(endpoint, None)
    }

    /// Whether requests carry a token (errors about gated repos say what to do either way).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The `authorization` header value, for requests built outside [`HubClient::send`].
    pub(super) fn bearer(&self) -> Option<String> {
        self.token.as_ref().map(Token::bearer)
    }

    /// How long to wait for an answer (and for each part of its body) before the attempt
    /// counts as failed and is retried; 300 s by default, since the Hub may take minutes
    /// to answer a commit of large files.
    pub fn with_timeout(mut self, timeout: Duration) -> HubClient {
        self.agent = agent(timeout);
        self
    }

    pub fn with_retry(mut self, retry: Retry) -> HubClient {
        self.retry = retry;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn retry(&self) -> &Retry {
        &self.retry
    }

    /// Sends `req`, retrying transport errors, 429 and 5xx (after the wait a `Retry-After`
    /// asks for, else the backoff); any other status is the caller's to judge. The body is
    /// read inside the attempt, so a connection that drops mid-answer is retried too.
    pub(crate) fn send(&self, req: &Req) -> Result<Resp> {
        self.send_reading(req, |mut body| body.read_to_string())
    }

    /// [`HubClient::send`] for a binary answer (audio) of at most `limit` bytes: a longer
    /// one fails the attempt rather than filling memory. Error answers come back as text.
    pub(crate) fn send_for_bytes(&self, req: &Req, limit: u64) -> Result<Resp<Vec<u8>>> {
        self.send_reading(req, |body| {
            body.into_with_config().limit(limit).read_to_vec()
        })
    }

    fn send_reading<B>(
        &self,
        req: &Req,
        read: impl Fn(ureq::Body) -> std::result::Result<B, ureq::Error>,
    ) -> Result<Resp<B>>
    where
        B: AsRef<[u8]>,
    {
        let mut attempt = 1;
        loop {
            let outcome = self.attempt(req, &read);
            let again = match &outcome {
                Ok(r) => r.status == 429 || r.status >= 500,
                Err(AttemptError::Http(e)) => retryable(e),
                Err(AttemptError::Local(_)) => false,
            };
            if !again || attempt >= self.retry.attempts {
                return match outcome {
                    Ok(r) if r.status == 429 || r.status >= 500 => Err(self.status_error(req, r)),
                    Ok(r) => Ok(r),
                    Err(AttemptError::Http(e)) => Err(HubError::Transport {
                        method: req.method,
                        url: shown(&req.url),
                        attempts: attempt,
                        source: Box::new(e),
                    }),
                    Err(AttemptError::Local(e)) => Err(e),
                };
            }
            let delay = match &outcome {
                Ok(Resp {
                    retry_after: Some(d),
                    ..
                }) => *d,
                _ => self.retry.delay(attempt),
            };
            match &outcome {
                Ok(r) => tracing::warn!(
                    "{} {} answered {}; retrying in {:?}",
                    req.method,
                    shown(&req.url),
                    r.status,
                    delay
                ),
                Err(e) => tracing::warn!(
                    "{} {} failed ({e}); retrying in {:?}",
                    req.method,
                    shown(&req.url),
                    delay
                ),
            }
            (self.retry.sleep)(delay);
            attempt += 1;
        }
    }

    /// Sends `req` and reads a successful (2xx) answer as JSON: the shape of every Hub API
    /// call after whoami. Any other status is an error naming the request.
    pub(super) fn send_json(&self, req: &Req) -> Result<serde_json::Value> {
        let r = self.send(req)?;
        if !(200..300).contains(&r.status) {
            return Err(self.status_error(req, r));
        }
        serde_json::from_str(&r.body).map_err(|e| HubError::Protocol {
            url: shown(&req.url),
            what: format!("the answer is not JSON: {e}"),
        })
    }

    /// An error for an answer the caller does not accept.
    pub(crate) fn status_error<B: AsRef<[u8]>>(&self, req: &Req, r: Resp<B>) -> HubError {
        let text = String::from_utf8_lossy(r.body.as_ref());
        let mut body: String = text.chars().take(500).collect();
        if body.len() < text.len() {
            body.push('…');
        }
        HubError::Status {
            method: req.method,
            url: shown(&req.url),
            status: r.status,
            body,
        }
    }

    fn attempt<B>(
        &self,
        req: &Req,
        read: impl Fn(ureq::Body) -> std::result::Result<B, ureq::Error>,
    ) -> std::result::Result<Resp<B>, AttemptError> {
        let mut builder = Request::builder().method(req.method).uri(&req.url);
        match (&self.token, self.key_header) {
            (Some(token), Some(header)) if req.auth => {
                builder = builder.header(header, token.secret())
            }
            (Some(token), None) if req.auth => {
                builder = builder.header("authorization", token.bearer())
            }
            _ => {}
        }
        for (k, v) in &req.headers {
            builder = builder.header(*k, *v);
        }
        let bad_request = |e: ureq::http::Error| {
            AttemptError::Local(HubError::Protocol {
                url: shown(&req.url),
                what: format!("cannot build the request: {e}"),
            })
        };
        let response = match &req.body {
            Body::Empty => self.agent.run(builder.body(()).map_err(bad_request)?),
            Body::Bytes(b) => self.agent.run(builder.body(*b).map_err(bad_request)?),
            Body::File { path, offset, len } => {
                let io = |source| {
                    AttemptError::Local(HubError::Io {
                        path: path.to_path_buf(),
                        source,
                    })
                };
                let mut file = File::open(path).map_err(io)?;
                file.seek(SeekFrom::Start(*offset)).map_err(io)?;
                let reader = file.take(*len);
                let req = builder
                    .header("content-length", len.to_string())
                    .body(SendBody::from_owned_reader(reader))
                    .map_err(bad_request)?;
                self.agent.run(req)
            }
        }
        .map_err(AttemptError::Http)?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let error_code = header("x-error-code");
        let retry_after = retry_after(response.headers());
        let content_type = header("content-type");
        let next_page = header("link").as_deref().and_then(next_link);
        let body = read(response.into_body()).map_err(AttemptError::Http)?;
        Ok(Resp {
            status,
            etag,
            error_code,
            retry_after,
            content_type,
            next_page,
            body,
        })
    }
}

enum AttemptError {
    Http(ureq::Error),
    Local(HubError),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Http(e) => e.fmt(f),
            AttemptError::Local(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let r = Retry::default();
        let secs: Vec<u64> = (1..=6).map(|n| r.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8, 8]);
        assert_eq!(r.delay(40).as_secs(), 8);
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds_and_caps_them() {
        let read = |pairs: &[(&'static str, &str)]| {
            let mut h = ureq::http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            retry_after(&h)
        };
        assert_eq!(read(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        assert_eq!(
            read(&[("retry-after", "0.5")]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            read(&[("retry-after", "9"), ("retry-after-ms", "250")]),
            Some(Duration::from_millis(250))
        );
        assert_eq!(read(&[("retry-after", "86400")]), Some(RETRY_AFTER_CAP));
        assert_eq!(
            read(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            None
        );
        assert_eq!(read(&[("retry-after", "-1")]), None);
        assert_eq!(read(&[]), None);
    }

    #[test]
    fn shown_urls_drop_signatures() {
        assert_eq!(shown("http://s3/x?X-Amz-Signature=abc"), "http://s3/x");
    }
}
