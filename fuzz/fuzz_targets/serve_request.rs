//! Any request body to the OpenAI endpoints, as a client may send it: an answer with an
//! OpenAI error object or a completion, never a panic or a 500, and a stream always ends.
//! The server is the real router on the tiny fixture model. The first byte picks the
//! endpoint (chat or text completion) and the rest is the body.
#![no_main]

#[path = "tiny.rs"]
mod tiny;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use bora_model::{LoadOptions, Model};
use bora_serve::{ServeOptions, Server};
use bora_tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tiny::model_dir();
        let load = LoadOptions {
            context: Some(48),
            decode_layout: true,
            ..LoadOptions::default()
        };
        let model = Model::load(dir, &load).expect("the tiny model loads");
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).expect("tokenizer");
        let server = Server::new(model, tokenizer, Vec::new(), ServeOptions::new("tiny"))
            .expect("the server starts");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        Fixture {
            router: server.router(),
            runtime,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let path = if kind % 2 == 0 {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let f = fixture();
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let (status, bytes) = f.runtime.block_on(async {
        let resp = f.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .expect("the body ends");
        (status, bytes)
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("an error body is JSON");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
});
