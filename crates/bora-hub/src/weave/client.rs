//! The HTTP side of Weave: the W&B GraphQL calls `weave.init` makes (default entity, the
//! project, created when missing) and the trace server's JSON and multipart endpoints.

use std::time::Duration;

use serde_json::{json, Value};

use super::digest::bytes_digest;
use super::ids::random_hex;
use super::{Project, DEFAULT_TRACE_SERVER_URL};
use crate::hub::Retry;
use crate::wandb::{self, ApiKey, Client, Result, Target, WandbError, DEFAULT_BASE_URL};

/// A trace server request that takes longer than this has failed: an evaluation's own files
/// are written before anything is sent, so a slow Weave never holds them back.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// weave's `DefaultEntity` query (the viewer's name and default entity).
const DEFAULT_ENTITY: &str =
    "query DefaultEntity {\n  viewer {\n    username\n    defaultEntity {\n      name\n    }\n  }\n}";

/// weave's `Project` query: does the project exist?
const PROJECT: &str = "query Project($name: String!, $entityName: String!) {\n  project(name: $name, entityName: $entityName) {\n    name\n  }\n}";

/// weave's `UpsertModel` mutation: create the project (a "model" in W&B's schema).
const UPSERT_MODEL: &str = "mutation UpsertModel($name: String!, $id: String, $entity: String!, $description: String, $repo: String) {\n  upsertModel(\n    input: {\n      id: $id\n      name: $name\n      entityName: $entity\n      description: $description\n      repo: $repo\n    }\n  ) {\n    model {\n      name\n      description\n    }\n  }\n}";

/// Where the trace server is, as weave finds it: `WF_TRACE_SERVER_URL`, else W&B's cloud
/// trace server for W&B's cloud API, else `BASE_URL/traces` (a dedicated or local server).
pub fn trace_server_url(base_url: &str, trace_env: Option<&str>) -> String {
    if let Some(url) = trace_env.map(str::trim).filter(|u| !u.is_empty()) {
        return url.trim_end_matches('/').to_owned();
    }
    let base = base_url.trim_end_matches('/');
    if base == DEFAULT_BASE_URL {
        DEFAULT_TRACE_SERVER_URL.to_owned()
    } else {
        format!("{base}/traces")
    }
}

/// A connection to one Weave project: the W&B API client (for GraphQL and the key) and the
/// trace server.
#[derive(Debug)]
pub struct WeaveClient {
    wandb: Client,
    key: ApiKey,
    trace_url: String,
    agent: ureq::Agent,
    retry: Retry,
    pub(super) project: Project,
}

impl WeaveClient {
    /// The client the environment asks for (`WANDB_BASE_URL`, `WF_TRACE_SERVER_URL`, the key
    /// from `WANDB_API_KEY` or netrc), for `target`'s project in its entity, or in
    /// `WANDB_ENTITY`, or in the key's default entity; the project is created when missing,
    /// as `weave.init` does.
    pub fn from_env(target: &Target) -> Result<Self> {
        let base_url = wandb::base_url_from_env();
        let key = ApiKey::from_env(&base_url)?;
        let trace_env = std::env::var("WF_TRACE_SERVER_URL").ok();
        let entity = target.entity.clone().or_else(|| {
            std::env::var("WANDB_ENTITY")
                .ok()
                .filter(|e| !e.trim().is_empty())
        });
        let trace_url = trace_server_url(&base_url, trace_env.as_deref());
        Self::connect(&base_url, &trace_url, key, &target.project, entity)
    }

    /// Connects to the project on `base_url` (GraphQL) and `trace_url`; `entity` `None`
    /// asks W&B for the key's default entity.
    pub fn connect(
        base_url: &str,
        trace_url: &str,
        key: ApiKey,
        project: &str,
        entity: Option<String>,
    ) -> Result<Self> {
        wandb::netloc(trace_url)?;
        let mut client = WeaveClient {
            wandb: Client::new(base_url, key.clone())?,
            key,
            trace_url: trace_url.trim_end_matches('/').to_owned(),
            agent: agent(REQUEST_TIMEOUT),
            retry: retry(3),
            project: Project {
                entity: String::new(),
                name: project.to_owned(),
            },
        };
        client.project.entity = match entity {
            Some(e) => e,
            None => client.default_entity()?,
        };
        client.ensure_project()?;
        client.get("server_info", "/server_info")?;
        Ok(client)
    }

    /// Each request gives up after `timeout`, and failed ones are tried `attempts` times in
    /// all (1: never retried).
    pub fn with_limits(mut self, timeout: Duration, retry: Retry) -> Self {
        self.agent = agent(timeout);
        self.retry = retry;
        self
    }

    pub fn project(&self) -> &Project {
        &self.project
    }

    fn default_entity(&self) -> Result<String> {
        let data = self
            .wandb
            .graphql("DefaultEntity", DEFAULT_ENTITY, Value::Null)?;
        data.pointer("/viewer/defaultEntity/name")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| WandbError::Response {
                what: "DefaultEntity",
                message: "the key has no default entity: name one (--weave PROJECT/ENTITY) \
                          or set WANDB_ENTITY"
                    .into(),
            })
    }

    fn ensure_project(&self) -> Result<()> {
        let Project { entity, name } = &self.project;
        let vars = json!({"entityName": entity, "name": name});
        let found = self.wandb.graphql("Project", PROJECT, vars)?;
        if found.get("project").is_some_and(Value::is_object) {
            return Ok(());
        }
        let vars = json!({"name": name, "entity": entity, "description": null});
        let made = self.wandb.graphql("UpsertModel", UPSERT_MODEL, vars)?;
        if made
            .pointer("/upsertModel/model")
            .is_some_and(Value::is_object)
        {
            Ok(())
        } else {
            Err(WandbError::Response {
                what: "UpsertModel",
                message: format!("W&B did not create the project {entity}/{name}"),
            })
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.trace_url)
    }

    fn get(&self, what: &'static str, path: &str) -> Result<Value> {
        let url = self.url(path);
        self.with_retries(what, &url, || {
            self.agent
                .get(&url)
                .header("Authorization", self.key.basic_auth())
                .header("Accept", "application/json")
                .call()
        })
    }

    /// POSTs JSON to the trace server; `trace_id` goes into `X-Weave-Trace-Id` as weave
    /// sends it with a call's start and end.
    pub(super) fn post(
        &self,
        what: &'static str,
        path: &str,
        body: &Value,
        trace_id: Option<&str>,
    ) -> Result<Value> {
        let url = self.url(path);
        let bytes = serde_json::to_vec(body).map_err(|e| WandbError::Response {
            what,
            message: format!("cannot encode the request: {e}"),
        })?;
        self.with_retries(what, &url, || {
            let mut request = self
                .agent
                .post(&url)
                .header("Authorization", self.key.basic_auth())
                .header("Content-Type", "application/json")
                .header("Accept", "application/json");
            if let Some(id) = trace_id {
                request = request.header("X-Weave-Trace-Id", id);
            }
            request.send(&bytes[..])
        })
    }

    /// Uploads a file (an op's source) as weave does: a multipart form with the project,
    /// the digest the server must find, and the file. Returns the file's digest.
    pub(super) fn create_file(&self, name: &str, content: &[u8]) -> Result<String> {
        let digest = bytes_digest(content);
        let boundary = random_hex(16);
        let mut body = Vec::new();
        let field = |body: &mut Vec<u8>, name: &str, value: &str| {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        };
        field(&mut body, "project_id", &self.project.id());
        field(&mut body, "expected_digest", &digest);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = self.url("/file/create");
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let answer = self.with_retries("file/create", &url, || {
            self.agent
                .post(&url)
                .header("Authorization", self.key.basic_auth())
                .header("Content-Type", content_type.as_str())
                .header("Accept", "application/json")
                .send(&body[..])
        })?;
        match answer.get("digest").and_then(Value::as_str) {
            Some(d) if d == digest => Ok(digest),
            other => Err(WandbError::Response {
                what: "file/create",
                message: format!("the server's digest {other:?} is not the file's {digest}"),
            }),
        }
    }

    /// One request, tried again after a dropped connection, 429 or 5xx, waiting as
    /// [`Retry`] says; a timeout is not retried, since a server that hangs once is likely to
    /// hang again and the caller has a deadline.
    fn with_retries(
        &self,
        what: &'static str,
        url: &str,
        send: impl Fn() -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut attempt = 1;
        loop {
            let outcome = send();
            let retryable = match &outcome {
                Ok(r) => r.status().as_u16() == 429 || r.status().is_server_error(),
                Err(ureq::Error::Timeout(_)) => false,
                Err(e) => crate::hub::http::retryable(e),
            };
            if retryable && attempt < self.retry.attempts {
                self.retry.wait(self.retry.delay(attempt));
                attempt += 1;
                continue;
            }
            let text = wandb::read_response(what, url, outcome)?;
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| WandbError::Response {
                what,
                message: format!("{url}: the response is not JSON ({e})"),
            });
        }
    }
}

/// [`Retry`]'s waits, `attempts` tries in all.
pub(super) fn retry(attempts: u32) -> Retry {
    let mut retry = Retry::default();
    retry.attempts = attempts;
    retry
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_server_is_found_as_weave_finds_it() {
        assert_eq!(
            trace_server_url("https://api.wandb.ai", None),
            "https://trace.wandb.ai"
        );
        assert_eq!(
            trace_server_url("http://127.0.0.1:9000/", None),
            "http://127.0.0.1:9000/traces"
        );
        assert_eq!(
            trace_server_url("https://api.wandb.ai", Some("http://localhost:6345/")),
            "http://localhost:6345"
        );
        assert_eq!(
            trace_server_url("https://w.example", Some(" ")),
            "https://w.example/traces"
        );
    }
}
