//! Responses of a hostile or broken Hugging Face Jobs API, Mistral (OpenAI-compatible) chat
//! API, ElevenLabs text-to-speech API and Weave trace server: every client call ends in a
//! result or an error, never a panic, a hang or an allocation sized by the response. A
//! loopback server ([`loopback::Hostile`]) answers with the input's responses while the
//! clients run the calls of `bora train --on hf-jobs` (run, inspect, list, logs, cancel), of
//! `bora data synth` and `bora eval --judge` (one chat completion), of `bora chat --speak`
//! (one sentence) and of `bora serve --weave` (connect, then trace one request).
#![no_main]

#[path = "loopback.rs"]
mod loopback;

use std::ops::ControlFlow;
use std::time::Duration;

use bora_hub::chat::{ChatClient, ChatRequest, Message};
use bora_hub::hub::{HubClient, JobSpec, LogOptions, Retry, Token};
use bora_hub::speech::{SpeechClient, SpeechRequest};
use bora_hub::wandb::ApiKey;
use bora_hub::weave::{ServeTracer, TracedRequest, WeaveClient};
use libfuzzer_sys::fuzz_target;

/// Two attempts, no waiting between them.
fn retry() -> Retry {
    let mut retry = Retry::default().with_sleep(|_| {});
    retry.attempts = 2;
    retry
}

fuzz_target!(|data: &[u8]| {
    let responses = loopback::responses(data);
    let server = loopback::Hostile::start(responses.clone());
    let url = &server.url;
    let timeout = Duration::from_secs(2);

    let hub = HubClient::new(url, Token::new("hf_fuzz").expect("a token"))
        .with_timeout(timeout)
        .with_retry(retry());
    let spec = JobSpec {
        image: "pytorch/pytorch".into(),
        command: vec!["python".into(), "train.py".into()],
        flavor: "a10g-small".into(),
        ..JobSpec::default()
    };
    if let Ok(job) = hub.run_job("org", &spec) {
        let _ = job.is_finished();
    }
    let _ = hub.inspect_job("org", "job1");
    let _ = hub.list_jobs("org", &[("bora-run", "r1")]);
    let logs = LogOptions {
        follow: false,
        read_timeout: timeout,
    };
    let mut lines = 0usize;
    let _ = hub.job_logs("org", "job1", logs, &mut |_| {
        lines += 1;
        if lines < 10_000 {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    });
    let _ = hub.cancel_job("org", "job1");

    server.replay(responses.clone());
    let env = |name: &str| (name == "FUZZ_KEY").then(|| "sk-fuzz".to_owned());
    if let Ok(chat) = ChatClient::new(&format!("{url}/v1"), "FUZZ_KEY", env) {
        let chat = chat.with_timeout(timeout).with_retry(retry());
        let messages = [Message::new("user", "2+2?")];
        let request = ChatRequest {
            model: "mistral-small-latest",
            messages: &messages,
            max_tokens: Some(8),
            seed: Some(1),
            json: true,
            ..ChatRequest::default()
        };
        let _ = chat.complete(&request);
    }

    server.replay(responses.clone());
    let env = |name: &str| match name {
        "ELEVENLABS_API_KEY" => Some("xi-fuzz".to_owned()),
        "ELEVENLABS_BASE_URL" => Some(url.clone()),
        _ => None,
    };
    if let Ok(speech) = SpeechClient::from_env(env, "voice1", "eleven_flash_v2_5") {
        let speech = speech.with_timeout(timeout).with_retry(retry());
        let _ = speech.synthesize(&SpeechRequest {
            text: "Hello.",
            previous_text: Some("Hi."),
            output_format: "mp3_44100_128",
        });
    }

    // Weave's connection retries 429 and 5xx answers with real waits (1 s, then 2 s) that
    // no public setting shortens, so those statuses become 200 here; everything else of
    // the input is served as it is.
    server.replay(responses.into_iter().map(without_retried_status).collect());
    let (base, trace) = (url.clone(), format!("{url}/traces"));
    let tracer = ServeTracer::start(
        move || WeaveClient::connect(&base, &trace, ApiKey::new("x".repeat(40)), "p", None),
        4,
        |_| {},
    );
    let now = std::time::SystemTime::now();
    tracer.trace(TracedRequest {
        chat: true,
        request: serde_json::json!({"model": "base", "messages": [{"role": "user", "content": "hi"}]}),
        response: serde_json::json!({"model": "base", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
        started: now,
        ended: now,
    });
    tracer.finish(Duration::from_secs(20));
});

/// The status byte of a response with a retried status (429, 500, 503) turned into 200's
/// with the same content type.
fn without_retried_status(mut response: Vec<u8>) -> Vec<u8> {
    if let Some(first) = response.first_mut() {
        if matches!(*first % 10, 7..=9) {
            *first -= *first % 10;
        }
    }
    response
}
