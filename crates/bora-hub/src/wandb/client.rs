//! The HTTP side of W&B: GraphQL operations, `file_stream` posts and file uploads.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::auth::{netloc, ApiKey};
use super::run::{RunProgress, RunState};
use super::{Result, WandbError, DEFAULT_BASE_URL};

/// A request that takes longer than this is a failed request; the run goes on without W&B.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a response body read, and the most quoted in an error.
const RESPONSE_LIMIT: u64 = 1 << 20;
const QUOTED_BODY: usize = 300;

pub(super) const UPSERT_BUCKET: &str =
    "mutation UpsertBucket($id: String, $name: String, $project: String, \
$entity: String, $displayName: String, $config: JSONString) {
  upsertBucket(input: {id: $id, name: $name, modelName: $project, entityName: $entity, \
displayName: $displayName, config: $config}) {
    bucket { id name displayName project { id name entity { id name } } historyLineCount }
    inserted
  }
}";

/// What wandb-core asks before continuing a run: how much history the server has, its last
/// row (for the last step) and the summary.
const RUN_RESUME_STATUS: &str = "query RunResumeStatus($project: String, $entity: String, \
$name: String!) {
  model(name: $project, entityName: $entity) {
    id name entity { id name }
    bucket(name: $name, missingOk: true) {
      id name summaryMetrics displayName historyLineCount historyTail
    }
  }
}";

pub(super) const CREATE_RUN_FILES: &str =
    "mutation CreateRunFiles($entity: String!, $project: String!, \
$run: String!, $files: [String!]!) {
  createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, \
files: $files}) {
    runID
    uploadHeaders
    files { name uploadUrl }
  }
}";

/// W&B's API as the SDK finds it: `WANDB_BASE_URL`, else [`DEFAULT_BASE_URL`].
pub fn base_url_from_env() -> String {
    std::env::var("WANDB_BASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
}

/// The HTTP side: base URL, key and one connection agent.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    pub(super) base_url: String,
    key: ApiKey,
}

impl Client {
    pub fn new(base_url: &str, key: ApiKey) -> Result<Self> {
        netloc(base_url)?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// The client the environment asks for: `WANDB_BASE_URL` (default [`DEFAULT_BASE_URL`])
    /// and the key from [`ApiKey::from_env`]. Call it before any long work, so a missing key
    /// stops a command before it starts rather than after.
    pub fn from_env() -> Result<Self> {
        let base_url = base_url_from_env();
        let key = ApiKey::from_env(&base_url)?;
        Self::new(&base_url, key)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(super) fn post_json(&self, what: &'static str, url: &str, body: &Value) -> Result<Value> {
        let bytes = serde_json::to_vec(body).map_err(|e| WandbError::Response {
            what,
            message: format!("cannot encode the request: {e}"),
        })?;
        let request = self
            .agent
            .post(url)
            .header("Authorization", self.key.basic_auth())
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        let text = read_response(what, url, request.send(&bytes[..]))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| WandbError::Response {
            what,
            message: format!("{url}: the response is not JSON ({e})"),
        })
    }

    /// One GraphQL operation; GraphQL reports its errors with HTTP 200 and an `errors` list.
    pub(crate) fn graphql(
        &self,
        operation: &'static str,
        query: &str,
        variables: Value,
    ) -> Result<Value> {
        let url = format!("{}/graphql", self.base_url);
        let body = json!({"query": query, "variables": variables, "operationName": operation});
        let mut response = self.post_json(operation, &url, &body)?;
        if let Some(errors) = response.get("errors").and_then(Value::as_array) {
            if !errors.is_empty() {
                let messages: Vec<&str> = errors
                    .iter()
                    .map(|e| e.get("message").and_then(Value::as_str).unwrap_or("?"))
                    .collect();
                return Err(WandbError::Response {
                    what: operation,
                    message: messages.join("; "),
                });
            }
        }
        match response.get_mut("data").map(Value::take) {
            Some(data) if data.is_object() => Ok(data),
            _ => Err(WandbError::Response {
                what: operation,
                message: "the response has no `data`".into(),
            }),
        }
    }

    /// Where the run `state` names stands on the server; a run the server does not have
    /// (deleted, or never sent) starts from nothing under the same id.
    pub(super) fn resume_status(&self, state: &RunState) -> Result<RunProgress> {
        const WHAT: &str = "RunResumeStatus";
        let data = self.graphql(
            WHAT,
            RUN_RESUME_STATUS,
            json!({"project": state.project, "entity": state.entity, "name": state.id}),
        )?;
        let bucket = match data.pointer("/model/bucket") {
            Some(b) if b.is_object() => b,
            _ => return Ok(RunProgress::default()),
        };
        let bad = |what: &str| WandbError::Response {
            what: WHAT,
            message: what.to_owned(),
        };
        // Both are JSON text inside the JSON: the summary an object, the tail a list of
        // history lines, each itself JSON text.
        let summary = match bucket.get("summaryMetrics").and_then(Value::as_str) {
            Some(text) => match serde_json::from_str(text) {
                Ok(Value::Object(map)) => map,
                _ => return Err(bad("summaryMetrics is not a JSON object")),
            },
            None => Map::new(),
        };
        let last_step = match bucket.get("historyTail").and_then(Value::as_str) {
            Some(text) => {
                let tail: Vec<String> = serde_json::from_str(text)
                    .map_err(|e| bad(&format!("historyTail is not a list of lines: {e}")))?;
                match tail.last() {
                    Some(line) => serde_json::from_str::<Value>(line)
                        .map_err(|e| bad(&format!("historyTail line: {e}")))?
                        .get("_step")
                        .and_then(Value::as_u64),
                    None => None,
                }
            }
            None => None,
        };
        Ok(RunProgress {
            history_lines: bucket
                .get("historyLineCount")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            last_step,
            summary,
        })
    }

    /// `PUT`s a file to an upload URL from `CreateRunFiles`. Those are presigned storage URLs
    /// that need no key; a relative one points at the API server itself, which does.
    pub(super) fn upload(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<()> {
        let (url, own_server) = if url.starts_with('/') {
            (format!("{}{url}", self.base_url), true)
        } else {
            (url.to_owned(), url.starts_with(&self.base_url))
        };
        let mut request = self.agent.put(&url);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if own_server {
            request = request.header("Authorization", self.key.basic_auth());
        }
        read_response("file upload", &url, request.send(body)).map(drop)
    }
}

pub(crate) fn read_response(
    what: &'static str,
    url: &str,
    result: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<String> {
    let mut response = result.map_err(|e| WandbError::Transport {
        what,
        url: url.to_owned(),
        message: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(RESPONSE_LIMIT)
        .read_to_string()
        .map_err(|e| WandbError::Transport {
            what,
            url: url.to_owned(),
            message: e.to_string(),
        })?;
    if !(200..300).contains(&status) {
        let mut body: String = text.chars().take(QUOTED_BODY).collect();
        if body.len() < text.len() {
            body.push('…');
        }
        return Err(WandbError::Status {
            what,
            url: url.to_owned(),
            status,
            body,
        });
    }
    Ok(text)
}
