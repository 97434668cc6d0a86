//! Responses of a hostile or broken Hugging Face Hub and W&B server: every client call ends
//! in a result or an error, never a panic, a hang or an allocation sized by the response.
//! A loopback server ([`loopback::Hostile`]) answers with the input's responses while the
//! clients run `bora push`'s calls (whoami, write check, repo creation, preupload, LFS batch,
//! commit) and a W&B run (upsert, file stream, finish).
#![no_main]

#[path = "loopback.rs"]
mod loopback;

use std::time::Duration;

use bora_hub::hub::{HubClient, LocalFile, RepoId, Retry, Token};
use bora_hub::wandb::{ApiKey, Client, RunSpec, Target, WandbRun};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let responses = loopback::responses(data);
    let server = loopback::Hostile::start(responses.clone());
    let url = &server.url;

    let mut retry = Retry::default().with_sleep(|_| {});
    retry.attempts = 2;
    let hub = HubClient::new(url, Token::new("hf_fuzz").expect("a token"))
        .with_timeout(Duration::from_secs(2))
        .with_retry(retry);
    let repo = RepoId::parse("org/model").expect("a repo id");
    let _ = hub.whoami();
    let _ = hub.check_write_access(&repo);
    let _ = hub.create_repo(&repo, true);
    let files = [
        LocalFile::from_bytes("README.md", b"# card\n".to_vec()),
        LocalFile::from_bytes("adapter_model.safetensors", vec![7u8; 2048]),
    ];
    let _ = hub.upload(&repo, "main", &files, "upload", &mut |_| {});

    server.replay(responses);
    let run_dir = std::env::temp_dir().join(format!("bora-fuzz-wandb-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).expect("run dir");
    if let Ok(client) = Client::new(url, ApiKey::new("x".repeat(40))) {
        let target = Target {
            project: "p".into(),
            entity: None,
        };
        let config = serde_json::json!({"lora": {"rank": 8}});
        let spec = RunSpec {
            target: &target,
            display_name: "fuzz",
            config: &config,
            new_id: "abcdefgh".into(),
            run_dir: &run_dir,
        };
        if let Ok(mut run) = WandbRun::start(client, &spec) {
            let mut row = serde_json::Map::new();
            row.insert("loss".into(), serde_json::json!(1.5));
            let _ = run.log(1, &row);
            let _ = run.finish(0);
        }
    }
    let _ = std::fs::remove_dir_all(&run_dir);
});
