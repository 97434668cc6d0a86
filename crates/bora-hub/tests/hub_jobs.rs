//! bora's Jobs client against the recording of `huggingface_hub`'s job functions
//! (`fixtures/hf_jobs.json`, made by `scripts/make_hf_jobs_fixtures.py`): a loopback server
//! answers each request with the answer recorded for it, and the test checks that bora sent
//! what the official client sent (method, path and query, authorization and content type,
//! JSON body) and read the answer as it did. Then the log stream's reconnection, its timeout
//! and the errors of a bad token and a namespace without credits.

mod http_wire;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_hub::hub::{HubClient, HubError, JobSpec, LogOptions, Retry, Secrets, Token};
use http_wire::{read_request, Request};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf_jobs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What the server answers, in order; every request it gets is kept.
#[derive(Default)]
struct Script {
    answers: Vec<Answer>,
    requests: Vec<Request>,
}

enum Answer {
    Json(u16, Value),
    /// A page of a list whose `Link` header names the next page: this target on the same
    /// server, or this URL when it is one.
    Page(Value, String),
    /// A log stream: these events, then the connection closes.
    Events(Vec<Value>),
    /// A log stream that sends these events and then stays silent (held open).
    EventsThenSilence(Vec<Value>),
}

fn serve(answers: Vec<Answer>) -> (String, Arc<Mutex<Script>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let script = Arc::new(Mutex::new(Script {
        answers,
        requests: Vec::new(),
    }));
    let shared = Arc::clone(&script);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Some(req) = read_request(&stream) else {
                continue;
            };
            let answer = {
                let mut s = shared.lock().unwrap();
                s.requests.push(req);
                if s.answers.is_empty() {
                    None
                } else {
                    Some(s.answers.remove(0))
                }
            };
            let Some(answer) = answer else {
                continue;
            };
            let url = url_of(&stream);
            std::thread::spawn(move || answer_with(stream, answer, &url));
        }
    });
    (url, script)
}

fn url_of(stream: &TcpStream) -> String {
    format!("http://{}", stream.local_addr().unwrap())
}

fn answer_with(mut stream: TcpStream, answer: Answer, url: &str) {
    let sse =
        |events: &[Value]| -> String { events.iter().map(|e| format!("data: {e}\n\n")).collect() };
    let mut link = String::new();
    let (status, kind, body, hold) = match answer {
        Answer::Json(status, v) => (status, "application/json", v.to_string(), false),
        Answer::Page(v, next) => {
            let next = if next.starts_with("http") {
                next
            } else {
                format!("{url}{next}")
            };
            link = format!("link: <{next}>; rel=\"next\"\r\n");
            (200, "application/json", v.to_string(), false)
        }
        Answer::Events(e) => (200, "text/event-stream", sse(&e), false),
        Answer::EventsThenSilence(e) => (200, "text/event-stream", sse(&e), true),
    };
    let head = if hold {
        format!("HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\nconnection: close\r\n\r\n")
    } else {
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n{link}connection: close\r\n\r\n",
            body.len()
        )
    };
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
    if hold {
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The recorded answers of a case, in order.
fn recorded_answers(case: &Value) -> Vec<Answer> {
    case["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            if r["target"].as_str().unwrap().ends_with("/logs") {
                Answer::Events(r["answer"].as_array().unwrap().clone())
            } else if let Some(next) = r["next"].as_str() {
                Answer::Page(r["answer"].clone(), next.to_owned())
            } else {
                Answer::Json(r["status"].as_u64().unwrap() as u16, r["answer"].clone())
            }
        })
        .collect()
}

/// bora's requests must be the recorded ones: method, target, the headers the recording
/// kept (authorization, content type) and the JSON body.
fn assert_same_requests(case_name: &str, case: &Value, sent: &[Request]) {
    let recorded = case["requests"].as_array().unwrap();
    assert_eq!(sent.len(), recorded.len(), "{case_name}: {sent:?}");
    for (got, want) in sent.iter().zip(recorded) {
        assert_eq!(got.method, want["method"], "{case_name}");
        assert_eq!(got.target, want["target"], "{case_name}");
        for (name, value) in want["headers"].as_object().unwrap() {
            if name == "accept" {
                // httpx's default `*/*`; the API does not read it.
                continue;
            }
            assert_eq!(
                got.header(name),
                value.as_str(),
                "{case_name}: header {name}"
            );
        }
        if name_has_body(want) {
            assert_eq!(got.json(), want["body"], "{case_name}: body");
        } else {
            assert!(got.body.is_empty(), "{case_name}: no body");
        }
    }
}

fn name_has_body(want: &Value) -> bool {
    !want["body"].is_null()
}

fn client(url: &str, token: &str) -> HubClient {
    HubClient::new(url, Token::new(token).unwrap()).with_retry(Retry::default().with_sleep(|_| {}))
}

fn spec_of(inputs: &Value) -> JobSpec {
    let map = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    };
    let timeout = inputs["timeout"].as_str().unwrap();
    assert_eq!(timeout, "2h", "the fixture's timeout is given in hours");
    JobSpec {
        image: inputs["image"].as_str().unwrap().into(),
        command: inputs["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().into())
            .collect(),
        env: map(&inputs["env"]),
        secrets: Secrets(map(&inputs["secrets"])),
        flavor: inputs["flavor"].as_str().unwrap().into(),
        timeout_seconds: Some(2 * 3600),
        labels: map(&inputs["labels"]),
        name: inputs["name"].as_str().map(str::to_owned),
    }
}

#[test]
fn requests_match_the_official_client() {
    let fx = fixture();
    let token = fx["token"].as_str().unwrap();
    let cases = &fx["cases"];

    let case = &cases["run_job"];
    let (url, script) = serve(recorded_answers(case));
    let inputs = &case["inputs"];
    let ns = inputs["namespace"].as_str().unwrap();
    let job = client(&url, token).run_job(ns, &spec_of(inputs)).unwrap();
    assert_same_requests("run_job", case, &script.lock().unwrap().requests);
    assert_eq!(job.id, case["result"]["id"]);
    assert_eq!(job.stage, case["result"]["stage"]);
    // The client's URL is made from the endpoint the same way.
    let want_url = case["result"]["url"].as_str().unwrap();
    assert_eq!(
        job.url,
        format!("{url}{}", &want_url[want_url.find("/jobs/").unwrap()..])
    );

    let case = &cases["inspect_job"];
    let (url, script) = serve(recorded_answers(case));
    let id = case["inputs"]["job_id"].as_str().unwrap();
    let job = client(&url, token).inspect_job(ns, id).unwrap();
    assert_same_requests("inspect_job", case, &script.lock().unwrap().requests);
    assert_eq!(job.stage, case["result"]["stage"]);
    assert_eq!(job.message.as_deref(), case["result"]["message"].as_str());
    assert_eq!(job.flavor.as_deref(), case["result"]["flavor"].as_str());
    assert!(job.is_finished());

    let case = &cases["list_jobs"];
    let (url, script) = serve(recorded_answers(case));
    let jobs = client(&url, token)
        .list_jobs(ns, &[("bora-run", "support-bot")])
        .unwrap();
    // Two pages, the second found through the first's `Link` header.
    assert_same_requests("list_jobs", case, &script.lock().unwrap().requests);
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    let want: Vec<&str> = case["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!((ids.len(), ids), (2, want));
    assert_eq!(jobs[1].labels["bora-run"], "support-bot");

    let case = &cases["cancel_job"];
    let (url, script) = serve(recorded_answers(case));
    client(&url, token).cancel_job(ns, id).unwrap();
    assert_same_requests("cancel_job", case, &script.lock().unwrap().requests);

    for follow in [false, true] {
        let name = format!("fetch_job_logs_follow_{follow}");
        let case = &cases[&name];
        let (url, script) = serve(recorded_answers(case));
        let mut lines = Vec::new();
        let options = LogOptions {
            follow,
            read_timeout: Duration::from_secs(5),
        };
        let end = client(&url, token)
            .job_logs(ns, id, options, &mut |l| {
                lines.push(l.to_owned());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_same_requests(&name, case, &script.lock().unwrap().requests);
        assert_eq!(json_lines(&lines), case["result"], "{name}");
        assert_eq!(
            end.map(|j| j.stage).as_deref(),
            follow.then_some("COMPLETED")
        );
    }
}

fn json_lines(lines: &[String]) -> Value {
    Value::Array(lines.iter().map(|l| Value::String(l.clone())).collect())
}

#[test]
fn a_bad_token_and_a_namespace_without_credits_say_so() {
    let fx = fixture();
    let token = fx["token"].as_str().unwrap();
    for (name, status) in [("run_job_401", 401), ("run_job_402", 402)] {
        let case = &fx["cases"][name];
        assert_eq!(case["error"]["status"], status, "the client failed with it");
        let (url, script) = serve(recorded_answers(case));
        let err = client(&url, token)
            .run_job("ada", &spec_of(&case["inputs"]))
            .unwrap_err();
        assert_same_requests(name, case, &script.lock().unwrap().requests);
        let text = err.to_string();
        assert!(!text.contains(token), "{text}");
        match status {
            401 => assert!(matches!(err, HubError::TokenRejected { .. }), "{err}"),
            _ => {
                assert!(matches!(err, HubError::JobsRefused { .. }), "{err}");
                assert!(text.contains("credit"), "{text}");
                assert!(text.contains("`ada`"), "{text}");
            }
        }
    }
}

fn log_event(text: &str) -> Value {
    serde_json::json!({"timestamp": "2026-12-07T10:00:00.000Z", "data": text})
}

fn job_at(stage: &str) -> Value {
    let fx = fixture();
    let mut job = fx["cases"]["inspect_job"]["requests"][0]["answer"].clone();
    job["status"] = serde_json::json!({"stage": stage, "message": null});
    job
}

#[test]
fn a_followed_log_reconnects_skips_what_it_saw_and_survives_silence() {
    let first = vec![log_event("===== Job started"), log_event("one")];
    let second = vec![
        log_event("===== Job started"),
        log_event("one"),
        log_event("two"),
    ];
    let (url, script) = serve(vec![
        // Two lines, then the stream ends while the job still runs.
        Answer::Events(first),
        Answer::Json(200, job_at("RUNNING")),
        Answer::Json(200, job_at("RUNNING")),
        // The replay holds one more line, then goes silent past the read timeout.
        Answer::EventsThenSilence(second),
        Answer::Json(200, job_at("RUNNING")),
        Answer::Json(200, job_at("COMPLETED")),
    ]);
    let mut lines = Vec::new();
    let options = LogOptions {
        follow: true,
        read_timeout: Duration::from_millis(300),
    };
    let end = client(&url, "hf_x")
        .job_logs("ada", "j1", options, &mut |l| {
            lines.push(l.to_owned());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(lines, ["one", "two"]);
    assert_eq!(end.unwrap().stage, "COMPLETED");
    let calls: Vec<String> = script
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        calls,
        [
            "/api/jobs/ada/j1/logs",
            "/api/jobs/ada/j1",
            "/api/jobs/ada/j1",
            "/api/jobs/ada/j1/logs",
            "/api/jobs/ada/j1",
            "/api/jobs/ada/j1",
        ]
    );
}

#[test]
fn a_missing_job_is_named() {
    let (url, _script) = serve(vec![Answer::Json(
        404,
        serde_json::json!({"error": "Job not found"}),
    )]);
    let err = client(&url, "hf_x").inspect_job("ada", "nope").unwrap_err();
    assert!(matches!(err, HubError::JobNotFound { .. }), "{err}");
    assert!(err.to_string().contains("/api/jobs/ada/nope"), "{err}");
}

#[test]
fn a_next_page_off_the_endpoint_is_not_followed_with_the_token() {
    let off = "http://127.0.0.2:9/api/jobs/ada?cursor=2";
    let (url, script) = serve(vec![Answer::Page(serde_json::json!([]), off.into())]);
    let err = client(&url, "hf_x").list_jobs("ada", &[]).unwrap_err();
    assert!(matches!(err, HubError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.2:9"), "{err}");
    assert_eq!(script.lock().unwrap().requests.len(), 1);
}
