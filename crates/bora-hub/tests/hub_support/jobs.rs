//! The Jobs API on the fake Hub, answered in the shapes recorded from the real client's
//! exchanges (`fixtures/hf_jobs.json`): run, inspect, list by label, cancel, and the log as
//! server-sent events that follow the job until it finishes. A posted job is handed to the
//! test's runner on its own thread; the runner writes its log lines and finishes it
//! (`JobControl`), as the job's container would.

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Recorded, State};

/// What the test does with a job once it is posted (the job's container).
pub type Runner = Arc<dyn Fn(JobControl) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct FakeJob {
    pub id: String,
    pub namespace: String,
    pub spec: Value,
    pub stage: String,
    pub message: Option<String>,
    pub log: Vec<String>,
}

impl FakeJob {
    pub fn finished(&self) -> bool {
        ["COMPLETED", "CANCELED", "ERROR", "DELETED"].contains(&self.stage.as_str())
    }

    /// The job as the API describes it (the keys the recorded answers have).
    pub fn info(&self) -> Value {
        let secrets: Vec<&String> = self.spec["secrets"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        json!({
            "id": self.id,
            "createdAt": "2026-12-07T10:00:00.000Z",
            "dockerImage": self.spec["dockerImage"],
            "command": self.spec["command"],
            "arguments": self.spec["arguments"],
            "environment": self.spec["environment"],
            "secrets": secrets,
            "flavor": self.spec["flavor"],
            "labels": self.spec["labels"],
            "status": {"stage": self.stage, "message": self.message},
            "owner": {"id": "5e9ecfc04957053f60648a3e", "name": self.namespace, "type": "user"},
        })
    }
}

/// The runner's handle on its job and on the Hub's state (to read the job's files and to
/// store what the job uploads).
#[derive(Clone)]
pub struct JobControl {
    pub state: Arc<Mutex<State>>,
    pub index: usize,
    pub spec: Value,
}

impl JobControl {
    pub fn log(&self, line: &str) {
        let mut s = self.state.lock().unwrap();
        let job = &mut s.jobs[self.index];
        if !job.finished() {
            job.log.push(line.to_owned());
        }
    }

    /// Ends the job in `stage` unless it already ended (cancelled).
    pub fn finish(&self, stage: &str, message: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        let job = &mut s.jobs[self.index];
        if !job.finished() {
            job.stage = stage.to_owned();
            job.message = message.map(str::to_owned);
        }
    }

    pub fn cancelled(&self) -> bool {
        self.state.lock().unwrap().jobs[self.index].stage == "CANCELED"
    }
}

/// Answers a Jobs API request; `None` for other paths. The log stream writes to `stream`
/// itself (and answers `Some(None)`).
pub fn route(
    shared: &Arc<Mutex<State>>,
    stream: &mut TcpStream,
    req: &Recorded,
    path: &str,
) -> Option<Option<(u16, String)>> {
    let rest = path.strip_prefix("/api/jobs/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let mut s = shared.lock().unwrap();
    let ok = |v: Value| Some(Some((200, v.to_string())));
    match (req.method.as_str(), parts.as_slice()) {
        ("POST", [namespace]) => {
            if let Some((status, body)) = s.jobs_refusal.clone() {
                return Some(Some((status, body.to_string())));
            }
            let spec = req.json();
            let index = s.jobs.len();
            let job = FakeJob {
                id: format!("6933d0f1a2b4c5d6e7f8{index:04x}"),
                namespace: (*namespace).to_owned(),
                spec: spec.clone(),
                stage: "RUNNING".into(),
                message: None,
                log: Vec::new(),
            };
            let info = job.info();
            s.jobs.push(job);
            if let Some(runner) = s.job_runner.clone() {
                let control = JobControl {
                    state: Arc::clone(shared),
                    index,
                    spec,
                };
                std::thread::spawn(move || runner(control));
            }
            ok(info)
        }
        ("GET", [namespace]) => {
            let wanted: Vec<(String, String)> = req
                .target
                .split_once('?')
                .map(|(_, q)| q.split('&').collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|kv| kv.strip_prefix("label="))
                .filter_map(|l| {
                    let l = l.replace("%3D", "=");
                    let (k, v) = l.split_once('=')?;
                    Some((k.to_owned(), v.to_owned()))
                })
                .collect();
            let jobs: Vec<Value> = s
                .jobs
                .iter()
                .filter(|j| j.namespace == *namespace)
                .filter(|j| {
                    wanted
                        .iter()
                        .all(|(k, v)| j.spec["labels"][k].as_str() == Some(v.as_str()))
                })
                .map(FakeJob::info)
                .collect();
            ok(Value::Array(jobs))
        }
        ("GET", [_, id]) => match s.jobs.iter().find(|j| j.id == *id) {
            Some(job) => ok(job.info()),
            None => Some(Some((404, json!({"error": "Job not found"}).to_string()))),
        },
        ("POST", [_, id, "cancel"]) => match s.jobs.iter_mut().find(|j| j.id == *id) {
            Some(job) => {
                if !job.finished() {
                    job.stage = "CANCELED".into();
                    job.message = Some("Cancelled by user".into());
                }
                ok(json!({}))
            }
            None => Some(Some((404, json!({"error": "Job not found"}).to_string()))),
        },
        ("GET", [_, id, "logs"]) => {
            let Some(index) = s.jobs.iter().position(|j| j.id == *id) else {
                return Some(Some((404, json!({"error": "Job not found"}).to_string())));
            };
            drop(s);
            stream_log(shared, stream, index);
            Some(None)
        }
        _ => None,
    }
}

/// The log as the API streams it: a banner, then every line as an event, following the job
/// until it has finished and every line was sent (bounded, so a stuck test cannot hang).
fn stream_log(shared: &Arc<Mutex<State>>, stream: &mut TcpStream, index: usize) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let event = |text: &str| {
        format!(
            "data: {}\n\n",
            json!({"timestamp": "2026-12-07T10:00:01.000Z", "data": text})
        )
    };
    let _ = stream.write_all(event("===== Job started at 2026-12-07 10:00:00 =====").as_bytes());
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let (lines, finished) = {
            let s = shared.lock().unwrap();
            let job = &s.jobs[index];
            (job.log[sent..].to_vec(), job.finished())
        };
        for line in &lines {
            if stream.write_all(event(line).as_bytes()).is_err() {
                return;
            }
        }
        sent += lines.len();
        let _ = stream.flush();
        if finished && lines.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
