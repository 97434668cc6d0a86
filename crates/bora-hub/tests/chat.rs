//! The chat-completions client against a loopback Mistral API: it must send what the official
//! `mistralai` client sent (tests/fixtures/mistral_chat.json, recorded by
//! scripts/make_mistral_api_fixtures.py), read what the API answers, and get through or stop
//! cleanly on every failure a batch job meets.

mod mistral_api;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_hub::chat::{ChatClient, ChatError, ChatRequest, Message};
use bora_hub::hub::Retry;
use mistral_api::{recording, FakeMistral, Fault, API_KEY};
use serde_json::Value;

fn env_with_key(k: &str) -> Option<String> {
    (k == "MISTRAL_API_KEY").then(|| API_KEY.to_owned())
}

/// A client whose waits are recorded, not slept.
fn client(url: &str) -> (ChatClient, Arc<Mutex<Vec<Duration>>>) {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let w = waits.clone();
    let retry = Retry::default().with_sleep(move |d| w.lock().unwrap().push(d));
    let c = ChatClient::new(url, "MISTRAL_API_KEY", env_with_key)
        .unwrap()
        .with_retry(retry)
        .with_timeout(Duration::from_millis(1500));
    (c, waits)
}

fn echo() -> mistral_api::Answerer {
    Box::new(|body: &Value| format!("echo: {}", body["messages"][0]["content"].as_str().unwrap()))
}

fn messages(case: &Value) -> Vec<Message> {
    serde_json::from_value(case["body"]["messages"].clone()).unwrap()
}

#[test]
fn sends_what_the_official_client_sends_and_reads_its_answers() {
    let rec = recording();
    for (name, case) in rec["cases"].as_object().unwrap() {
        let content = answer_content(case).to_owned();
        let server = FakeMistral::start(Box::new(move |_| content.clone()));
        let (c, _) = client(&server.url);
        let body = &case["body"];
        let msgs = messages(case);
        let req = ChatRequest {
            model: body["model"].as_str().unwrap(),
            messages: &msgs,
            temperature: body["temperature"].as_f64(),
            max_tokens: body["max_tokens"].as_u64().map(|m| m as u32),
            seed: body["random_seed"].as_u64(),
            json: body.get("response_format").is_some(),
        };
        let reply = c.with_seed_field("random_seed").complete(&req).unwrap();
        let sent = &server.requests()[0];
        assert_eq!(sent.method, case["method"]);
        assert_eq!(sent.target, case["path"], "{name}");
        for (k, v) in case["headers"].as_object().unwrap() {
            assert_eq!(sent.header(k), v.as_str(), "{name}: header {k}");
        }
        assert_eq!(sent.json(), *body, "{name}: body");
        assert_eq!(reply.content, answer_content(case), "{name}");
        let prompt_chars: usize = msgs.iter().map(|m| m.content.len()).sum();
        assert_eq!(reply.usage.prompt_tokens, prompt_chars as u64 / 4, "{name}");
        assert_eq!(
            reply.usage.completion_tokens,
            reply.content.len() as u64 / 4 + 1,
            "{name}"
        );
    }
}

fn answer_content(case: &Value) -> &str {
    case["answer"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
}

#[test]
fn other_servers_get_the_openai_seed_name_and_no_key_when_none_is_set() {
    let server = FakeMistral::start(echo());
    server.state.lock().unwrap().key = None;
    let c = ChatClient::new(&server.url, "UNSET_KEY", |_| None).unwrap();
    let msgs = [Message::new("user", "x")];
    let req = ChatRequest {
        model: "m",
        messages: &msgs,
        seed: Some(7),
        ..Default::default()
    };
    c.complete(&req).unwrap();
    let sent = &server.requests()[0];
    assert_eq!(sent.json()["seed"], 7);
    assert!(sent.json().get("random_seed").is_none());
    assert_eq!(sent.header("authorization"), None);
}

fn ask(c: &ChatClient) -> Result<String, ChatError> {
    let msgs = [Message::new("user", "hello")];
    c.complete(&ChatRequest {
        model: "mistral-small-latest",
        messages: &msgs,
        ..Default::default()
    })
    .map(|r| r.content)
}

#[test]
fn retries_429_after_the_wait_retry_after_asks_for() {
    let server = FakeMistral::start(echo());
    server.fault(Fault::Status(429, Some("3")));
    server.fault(Fault::Status(429, None));
    let (c, waits) = client(&server.url);
    assert_eq!(ask(&c).unwrap(), "echo: hello");
    assert_eq!(
        *waits.lock().unwrap(),
        [Duration::from_secs(3), Duration::from_secs(2)],
        "Retry-After first, then the backoff of attempt 2"
    );
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn survives_500s_a_dropped_connection_a_malformed_or_truncated_answer_and_a_stall() {
    let server = FakeMistral::start(echo());
    for f in [
        Fault::Status(500, None),
        Fault::Drop,
        Fault::Status(503, None),
        Fault::Stall(4000),
    ] {
        server.fault(f);
    }
    let (c, waits) = client(&server.url);
    assert_eq!(ask(&c).unwrap(), "echo: hello");
    assert_eq!(waits.lock().unwrap().len(), 4);

    server.fault(Fault::Malformed);
    assert_eq!(ask(&c).unwrap(), "echo: hello");
    assert_eq!(waits.lock().unwrap().len(), 5);

    server.fault(Fault::Truncated);
    assert_eq!(ask(&c).unwrap(), "echo: hello");
    assert_eq!(waits.lock().unwrap().len(), 6);
}

#[test]
fn gives_up_after_bounded_attempts() {
    let server = FakeMistral::start(echo());
    for _ in 0..6 {
        server.fault(Fault::Status(502, None));
    }
    let (c, _) = client(&server.url);
    let e = ask(&c).unwrap_err();
    assert!(matches!(e, ChatError::Http(_)), "{e:?}");
    assert!(e.to_string().contains("502"), "{e}");
    assert_eq!(server.requests().len(), 6);

    for _ in 0..6 {
        server.fault(Fault::Malformed);
    }
    let e = ask(&c).unwrap_err();
    assert!(
        matches!(e, ChatError::Malformed { attempts: 6, .. }),
        "{e:?}"
    );

    for _ in 0..6 {
        server.fault(Fault::Stall(4000));
    }
    let e = ask(&c).unwrap_err();
    assert!(e.to_string().contains("failed after 6 attempts"), "{e}");
}

#[test]
fn stops_at_once_on_401_and_402_without_showing_the_key() {
    let server = FakeMistral::start(echo());
    let wrong = ChatClient::new(&server.url, "K", |_| Some("sk-wrong-secret-key".into()))
        .unwrap()
        .with_retry(Retry::default().with_sleep(|_| panic!("401 is not retried")));
    let e = ask(&wrong).unwrap_err();
    assert!(e.is_fatal());
    let text = format!("{e} {e:?} {wrong:?}");
    assert!(text.contains("401") && text.contains("check K"), "{text}");
    assert!(!text.contains("sk-wrong-secret-key"), "{text}");
    assert_eq!(server.requests().len(), 1);

    server.fault(Fault::Status(402, None));
    let (c, _) = client(&server.url);
    let e = ask(&c).unwrap_err();
    assert!(e.is_fatal() && e.to_string().contains("402"), "{e}");

    server.fault(Fault::Status(422, None));
    let e = ask(&c).unwrap_err();
    assert!(!e.is_fatal() && e.to_string().contains("422"), "{e}");
}
