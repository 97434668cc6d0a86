//! Hugging Face Jobs, as `huggingface_hub`'s job functions speak to it (`hf_api.py`
//! `run_job`, `inspect_job`, `list_jobs`, `cancel_job`, `fetch_job_logs`; `_jobs_api.py`
//! `_create_job_spec`): the request shapes are checked against a recording of that client
//! (`scripts/make_hf_jobs_fixtures.py`). Also the table of GPU flavors a fine-tune can ask
//! for, with their memory and price, for the preflight.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::time::Duration;

use serde_json::{json, Value};
use ureq::http::Request;

use super::http::{Body, Req, Resp};
use super::{HubClient, HubError, Result};

/// Stages after which a job never runs again (`TERMINAL_JOB_STAGES`).
pub const TERMINAL_STAGES: [&str; 4] = ["COMPLETED", "CANCELED", "ERROR", "DELETED"];

/// A job's environment values that must stay secret (the Hub token it uploads with). `Debug`
/// names the keys only, so no log line can carry a value.
#[derive(Clone, Default)]
pub struct Secrets(pub BTreeMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What to run: the arguments of `run_job`.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    /// A Docker image, or a Space as `hf.co/spaces/ORG/NAME`.
    pub image: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub secrets: Secrets,
    pub flavor: String,
    /// `timeoutSeconds`; the Jobs API's default applies when `None`.
    pub timeout_seconds: Option<u64>,
    pub labels: BTreeMap<String, String>,
    /// Stored as the `name` label.
    pub name: Option<String>,
}

/// The prefixes that make an image a Space (`_SPACE_IMAGE_PREFIXES`).
const SPACE_PREFIXES: [&str; 4] = [
    "https://huggingface.co/spaces/",
    "https://hf.co/spaces/",
    "huggingface.co/spaces/",
    "hf.co/spaces/",
];

impl JobSpec {
    /// The request body `_create_job_spec` builds: optional keys only when set.
    pub fn to_json(&self) -> Value {
        let mut spec = json!({
            "command": self.command,
            "arguments": [],
            "environment": self.env,
            "flavor": if self.flavor.is_empty() { "cpu-basic" } else { &self.flavor },
        });
        if !self.secrets.0.is_empty() {
            spec["secrets"] = json!(self.secrets.0);
        }
        if let Some(t) = self.timeout_seconds.filter(|&t| t > 0) {
            spec["timeoutSeconds"] = json!(t);
        }
        let mut labels = self.labels.clone();
        if let Some(name) = &self.name {
            labels.insert("name".into(), name.clone());
        }
        if !labels.is_empty() {
            spec["labels"] = json!(labels);
        }
        match SPACE_PREFIXES
            .iter()
            .find_map(|p| self.image.strip_prefix(p))
        {
            Some(space) => spec["spaceId"] = json!(space),
            None => spec["dockerImage"] = json!(self.image),
        }
        spec
    }
}

/// What the Jobs API says of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    pub id: String,
    /// `SCHEDULING`, `RUNNING`, `COMPLETED`, `CANCELED`, `ERROR`, `DELETED` (an unknown stage
    /// is kept as sent).
    pub stage: String,
    pub message: Option<String>,
    pub flavor: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<String>,
    /// The namespace that owns it.
    pub owner: String,
    /// Its page on the Hub.
    pub url: String,
}

impl JobInfo {
    fn from_json(v: &Value, endpoint: &str, url: &str) -> Result<JobInfo> {
        let bad = |what: &str| HubError::Protocol {
            url: url.to_owned(),
            what: format!("the job answer has no {what}"),
        };
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let id = text(&v["id"]).ok_or_else(|| bad("`id`"))?;
        let stage = text(&v["status"]["stage"]).ok_or_else(|| bad("`status.stage`"))?;
        let owner = text(&v["owner"]["name"]).ok_or_else(|| bad("`owner.name`"))?;
        let labels = v["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(JobInfo {
            url: format!("{endpoint}/jobs/{owner}/{id}"),
            id,
            stage,
            message: text(&v["status"]["message"]),
            flavor: text(&v["flavor"]),
            labels,
            created_at: text(&v["createdAt"]),
            owner,
        })
    }

    /// Whether the job has stopped for good.
    pub fn is_finished(&self) -> bool {
        TERMINAL_STAGES.contains(&self.stage.as_str())
    }
}

/// How a log stream is read: the longest silence before the job's stage is checked (the API
/// sends a keep-alive every 30 s, and `huggingface_hub` waits 120 s when following).
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub follow: bool,
    pub read_timeout: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            follow: true,
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// Pages of a job list read at most: a server whose `Link` header never ends cannot keep a
/// listing going forever.
pub const MAX_JOB_PAGES: usize = 1000;

/// Consecutive failed connections to the log stream before giving up (`max_retries` of
/// `_stream_sse_events`).
const LOG_RETRIES: u32 = 5;

impl HubClient {
    fn jobs_url(&self, namespace: &str) -> String {
        format!("{}/api/jobs/{namespace}", self.endpoint)
    }

    /// `POST /api/jobs/{namespace}`: starts a job.
    pub fn run_job(&self, namespace: &str, spec: &JobSpec) -> Result<JobInfo> {
        let body = spec.to_json().to_string();
        let req = Req {
            method: "POST",
            url: self.jobs_url(namespace),
            auth: true,
            headers: vec![("content-type", "application/json")],
            body: Body::Bytes(body.as_bytes()),
        };
        let v = self.send_job_json(&req, namespace)?;
        JobInfo::from_json(&v, &self.endpoint, &req.url)
    }

    /// `GET /api/jobs/{namespace}/{id}`.
    pub fn inspect_job(&self, namespace: &str, id: &str) -> Result<JobInfo> {
        let req = get(format!("{}/{id}", self.jobs_url(namespace)));
        let v = self.send_job_json(&req, namespace)?;
        JobInfo::from_json(&v, &self.endpoint, &req.url)
    }

    /// `GET /api/jobs/{namespace}?label=K=V…`: the jobs that carry all of `labels`, every
    /// page of them. Like `huggingface_hub`'s `paginate`, each answer's `Link: <URL>;
    /// rel="next"` names the next page (its query included); a next page off this endpoint
    /// is refused (the token would follow it), and at most [`MAX_JOB_PAGES`] are read.
    pub fn list_jobs(&self, namespace: &str, labels: &[(&str, &str)]) -> Result<Vec<JobInfo>> {
        let query: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("label={}", encode(&format!("{k}={v}"))))
            .collect();
        let mut url = self.jobs_url(namespace);
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let mut all = Vec::new();
        for _ in 0..MAX_JOB_PAGES {
            let req = get(url);
            let (v, next_page) = self.send_job_page(&req, namespace)?;
            let jobs = v.as_array().ok_or_else(|| HubError::Protocol {
                url: req.url.clone(),
                what: "the job list is not a JSON array".into(),
            })?;
            for j in jobs {
                all.push(JobInfo::from_json(j, &self.endpoint, &req.url)?);
            }
            match next_page {
                None => return Ok(all),
                Some(next) if next.starts_with(&format!("{}/", self.endpoint)) => url = next,
                Some(next) => {
                    return Err(HubError::Protocol {
                        url: req.url.clone(),
                        what: format!(
                            "the next page of the job list is off {}: {}",
                            self.endpoint,
                            super::http::shown(&next)
                        ),
                    })
                }
            }
        }
        Err(HubError::Protocol {
            url: self.jobs_url(namespace),
            what: format!("the job list has more than {MAX_JOB_PAGES} pages"),
        })
    }

    /// `POST /api/jobs/{namespace}/{id}/cancel`.
    pub fn cancel_job(&self, namespace: &str, id: &str) -> Result<()> {
        let req = Req {
            method: "POST",
            url: format!("{}/{id}/cancel", self.jobs_url(namespace)),
            auth: true,
            headers: Vec::new(),
            // An empty body with `content-length: 0`, as httpx sends a bodiless POST.
            body: Body::Bytes(&[]),
        };
        let r = self.send(&req)?;
        if !(200..300).contains(&r.status) {
            return Err(self.job_error(&req, r, namespace));
        }
        Ok(())
    }

    /// Reads the job's log (`GET …/logs`, server-sent events) line by line into `on_line`,
    /// skipping the API's `===== Job started` banner, until `on_line` breaks or the stream
    /// ends. Following, a stream that ends or stays silent for `read_timeout` is reconnected
    /// (the API replays it from the start; the lines already seen are skipped) until the job
    /// has finished, and the job's final state is returned. Not following, `None`.
    pub fn job_logs(
        &self,
        namespace: &str,
        id: &str,
        options: LogOptions,
        on_line: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Option<JobInfo>> {
        let url = format!("{}/{id}/logs", self.jobs_url(namespace));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(concat!("bora/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(options.read_timeout))
            .timeout_per_read(Some(options.read_timeout))
            .build()
            .new_agent();
        let mut seen = 0usize;
        let mut failures = 0u32;
        let mut quiet_rounds = 0u32;
        loop {
            match self.read_log_stream(&agent, &url, namespace, seen, on_line) {
                Ok((events, flow)) => {
                    if events > seen {
                        failures = 0;
                        quiet_rounds = 0;
                    }
                    seen = events.max(seen);
                    if flow.is_break() {
                        return Ok(None);
                    }
                }
                Err(StreamError::Hub(e)) => return Err(e),
                Err(StreamError::Silent) => {}
                Err(StreamError::Broken(e)) => {
                    failures += 1;
                    if !options.follow || failures > LOG_RETRIES {
                        return Err(HubError::Transport {
                            method: "GET",
                            url: url.clone(),
                            attempts: failures,
                            source: Box::new(e),
                        });
                    }
                    self.retry.wait(self.retry.delay(failures));
                }
            }
            if !options.follow {
                return Ok(None);
            }
            // The stage lags the last log line by about a second: look, wait, look again.
            let job = self.inspect_job(namespace, id)?;
            if job.is_finished() {
                return Ok(Some(job));
            }
            quiet_rounds += 1;
            self.retry.wait(self.retry.delay(quiet_rounds + 1));
            let job = self.inspect_job(namespace, id)?;
            if job.is_finished() {
                return Ok(Some(job));
            }
        }
    }

    /// One connection to the log stream: passes on the events after the first `skip`, and
    /// returns how many events the stream held.
    fn read_log_stream(
        &self,
        agent: &ureq::Agent,
        url: &str,
        namespace: &str,
        skip: usize,
        on_line: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> std::result::Result<(usize, ControlFlow<()>), StreamError> {
        let mut builder = Request::builder().method("GET").uri(url);
        if let Some(bearer) = self.bearer() {
            builder = builder.header("authorization", bearer);
        }
        let request = builder
            .body(())
            .map_err(|e| StreamError::Broken(e.into()))?;
        let response = agent.run(request).map_err(classify)?;
        let status = response.status().as_u16();
        if status == 429 || status >= 500 {
            return Err(StreamError::Broken(ureq::Error::StatusCode(status)));
        }
        if !(200..300).contains(&status) {
            let body = response.into_body().read_to_string().unwrap_or_default();
            let req = get(url.to_owned());
            let resp = Resp {
                status,
                etag: None,
                error_code: None,
                retry_after: None,
                content_type: None,
                next_page: None,
                body,
            };
            return Err(StreamError::Hub(self.job_error(&req, resp, namespace)));
        }
        let reader = BufReader::new(response.into_body().into_reader());
        let mut events = 0usize;
        for line in reader.lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) if events > skip => {
                    // Lines were read: the next connection picks up after them.
                    tracing::debug!("job log stream ended early: {e}");
                    return Ok((events, ControlFlow::Continue(())));
                }
                Err(e) => return Err(classify(ureq::Error::Io(e))),
            };
            let Some(data) = line.strip_prefix("data: ").filter(|d| d.starts_with('{')) else {
                continue;
            };
            events += 1;
            if events <= skip {
                continue;
            }
            let Ok(event) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let Some(text) = event["data"].as_str() else {
                continue;
            };
            if text.starts_with("===== Job started") {
                continue;
            }
            if on_line(text).is_break() {
                return Ok((events, ControlFlow::Break(())));
            }
        }
        Ok((events, ControlFlow::Continue(())))
    }

    fn send_job_json(&self, req: &Req, namespace: &str) -> Result<Value> {
        Ok(self.send_job_page(req, namespace)?.0)
    }

    /// A successful answer as JSON, with the next page its `Link` header names.
    fn send_job_page(&self, req: &Req, namespace: &str) -> Result<(Value, Option<String>)> {
        let r = self.send(req)?;
        if !(200..300).contains(&r.status) {
            return Err(self.job_error(req, r, namespace));
        }
        let v = serde_json::from_str(&r.body).map_err(|e| HubError::Protocol {
            url: req.url.clone(),
            what: format!("the answer is not JSON: {e}"),
        })?;
        Ok((v, r.next_page))
    }

    /// The error for a refused job call: a bad token, a namespace that may not run jobs
    /// (no credits, no access) and a missing job say so; anything else names the request.
    fn job_error(&self, req: &Req, r: Resp, namespace: &str) -> HubError {
        let message = serde_json::from_str::<Value>(&r.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| r.body.chars().take(300).collect());
        match r.status {
            401 => HubError::TokenRejected {
                url: req.url.clone(),
            },
            402 | 403 => HubError::JobsRefused {
                namespace: namespace.to_owned(),
                status: r.status,
                message,
            },
            404 if req.method == "GET" || req.url.ends_with("/cancel") => HubError::JobNotFound {
                url: req.url.clone(),
                message,
            },
            _ => self.status_error(req, r),
        }
    }
}

enum StreamError {
    /// An answer that will not change on retry (401, 403, 404).
    Hub(HubError),
    /// Nothing arrived for the read timeout.
    Silent,
    /// The connection failed or broke; worth another try.
    Broken(ureq::Error),
}

fn classify(e: ureq::Error) -> StreamError {
    let timed_out = match &e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        _ => false,
    };
    if timed_out {
        StreamError::Silent
    } else {
        StreamError::Broken(e)
    }
}

fn get(url: String) -> Req<'static> {
    Req {
        method: "GET",
        url,
        auth: true,
        headers: Vec::new(),
        body: Body::Empty,
    }
}

/// Percent-encodes a query value as `httpx` does (`=` and other reserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A GPU flavor of Hugging Face Jobs: what the preflight checks memory against and prices a
/// run with. Names, GPU memory and prices are those of the Jobs hardware list
/// (`GET /api/jobs/hardware`, as `huggingface_hub`'s `list_jobs_hardware` reads it; its
/// guide's table of 2026-07-27 is cited in docs/hf-jobs.md); memory is per GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flavor {
    pub name: &'static str,
    pub gpu: &'static str,
    /// GPUs of the machine; more than one runs the trainer data parallel (`torchrun`).
    pub gpus: u32,
    pub gpu_memory_gib: f64,
    /// The machine's price, all its GPUs together.
    pub usd_per_hour: f64,
    /// bf16 dense tensor throughput of one GPU, TFLOP/s (the vendor's figure without
    /// sparsity), for the duration estimate.
    pub bf16_tflops: f64,
}

/// The GPU flavors a fine-tune runs on (`JobHardware` has no single H100 flavor).
pub const FLAVORS: [Flavor; 18] = [
    flavor("t4-small", "T4", 1, 16.0, 0.40, 65.0),
    flavor("t4-medium", "T4", 1, 16.0, 0.60, 65.0),
    flavor("l4x1", "L4", 1, 24.0, 0.80, 121.0),
    flavor("l4x4", "L4", 4, 24.0, 3.80, 121.0),
    flavor("a10g-small", "A10G", 1, 24.0, 1.00, 70.0),
    flavor("a10g-large", "A10G", 1, 24.0, 1.50, 70.0),
    flavor("a10g-largex2", "A10G", 2, 24.0, 3.00, 70.0),
    flavor("a10g-largex4", "A10G", 4, 24.0, 5.00, 70.0),
    flavor("l40sx1", "L40S", 1, 48.0, 1.80, 362.0),
    flavor("l40sx4", "L40S", 4, 48.0, 8.30, 362.0),
    flavor("l40sx8", "L40S", 8, 48.0, 23.50, 362.0),
    flavor("a100-large", "A100", 1, 80.0, 2.50, 312.0),
    flavor("a100x4", "A100", 4, 80.0, 10.00, 312.0),
    flavor("a100x8", "A100", 8, 80.0, 20.00, 312.0),
    flavor("h200", "H200", 1, 141.0, 5.00, 989.0),
    flavor("h200x2", "H200", 2, 141.0, 10.00, 989.0),
    flavor("h200x4", "H200", 4, 141.0, 20.00, 989.0),
    flavor("h200x8", "H200", 8, 141.0, 40.00, 989.0),
];

const fn flavor(
    name: &'static str,
    gpu: &'static str,
    gpus: u32,
    mem: f64,
    usd: f64,
    tflops: f64,
) -> Flavor {
    Flavor {
        name,
        gpu,
        gpus,
        gpu_memory_gib: mem,
        usd_per_hour: usd,
        bf16_tflops: tflops,
    }
}

impl Flavor {
    /// The flavor named `name`, or an error listing the ones there are.
    pub fn find(name: &str) -> std::result::Result<Flavor, String> {
        FLAVORS
            .iter()
            .find(|f| f.name == name)
            .copied()
            .ok_or_else(|| {
                let names: Vec<&str> = FLAVORS.iter().map(|f| f.name).collect();
                format!(
                    "unknown Jobs flavor `{name}`; GPU flavors: {}",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::http::next_link;

    #[test]
    fn space_images_and_optional_keys() {
        let spec = JobSpec {
            image: "hf.co/spaces/ada/trainer".into(),
            command: vec!["true".into()],
            ..JobSpec::default()
        };
        let v = spec.to_json();
        assert_eq!(v["spaceId"], "ada/trainer");
        assert!(v.get("dockerImage").is_none());
        assert_eq!(v["flavor"], "cpu-basic");
        for absent in ["secrets", "timeoutSeconds", "labels"] {
            assert!(v.get(absent).is_none(), "{absent}: {v}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let spec = JobSpec {
            secrets: Secrets(BTreeMap::from([("HF_TOKEN".into(), "hf_secret".into())])),
            ..JobSpec::default()
        };
        let shown = format!("{spec:?}");
        assert!(
            shown.contains("HF_TOKEN") && !shown.contains("hf_secret"),
            "{shown}"
        );
    }

    #[test]
    fn flavors_by_name() {
        assert_eq!(Flavor::find("a10g-large").unwrap().gpu_memory_gib, 24.0);
        let err = Flavor::find("a10g").unwrap_err();
        assert!(err.contains("a10g-small") && err.contains("h200"), "{err}");
        assert_eq!(Flavor::find("a100x4").unwrap().gpus, 4);
    }

    #[test]
    fn next_pages_from_link_headers() {
        let next = "<https://hf.co/api/jobs/ada?cursor=2>; rel=\"next\"";
        assert_eq!(
            next_link(next).as_deref(),
            Some("https://hf.co/api/jobs/ada?cursor=2")
        );
        let both = "<https://hf.co/a?p=9>; rel=\"last\", <https://hf.co/a?p=2>; rel=next";
        assert_eq!(next_link(both).as_deref(), Some("https://hf.co/a?p=2"));
        assert_eq!(next_link("<https://hf.co/a?p=9>; rel=\"last\""), None);
    }

    #[test]
    fn query_values_are_encoded_as_httpx_does() {
        assert_eq!(encode("bora-run=support bot"), "bora-run%3Dsupport%20bot");
    }
}
