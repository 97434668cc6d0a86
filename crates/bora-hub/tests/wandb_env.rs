//! Where the W&B key comes from. Alone in its test binary because it changes the process
//! environment, which no other test may read at the same time.

mod wandb_server;

use base64::Engine;
use bora_hub::wandb::{ApiKey, Client, RunSpec, Target, WandbError, WandbRun};
use serde_json::json;
use wandb_server::FakeWandb;

/// The key comes from `WANDB_API_KEY`, else the netrc entry of the base URL's host:port;
/// neither is an error that says what to do.
#[test]
fn the_key_comes_from_the_environment_or_netrc() {
    let tmp = tempfile::tempdir().unwrap();
    let base = "http://127.0.0.1:8123";
    std::env::remove_var("WANDB_API_KEY");
    std::env::remove_var("NETRC");
    std::env::set_var("HOME", tmp.path());
    let err = ApiKey::from_env(base).unwrap_err();
    assert!(matches!(err, WandbError::MissingKey { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("WANDB_API_KEY") && text.contains("127.0.0.1:8123"),
        "{text}"
    );

    std::fs::write(
        tmp.path().join(".netrc"),
        "machine api.wandb.ai login user password cloud\n\
         machine 127.0.0.1:8123\n  login user\n  password from-netrc\n",
    )
    .unwrap();
    let server = FakeWandb::start();
    std::env::set_var("WANDB_BASE_URL", &server.url);
    assert!(matches!(
        Client::from_env().unwrap_err(),
        WandbError::MissingKey { .. }
    ));
    std::env::set_var("WANDB_BASE_URL", base);
    let client = Client::from_env().unwrap();
    assert_eq!(client.base_url(), base);
    // Which key was read shows in the header it sends.
    let port = server.url.rsplit(':').next().unwrap();
    std::fs::write(
        tmp.path().join(".netrc"),
        format!("machine 127.0.0.1:{port} password from-netrc\n"),
    )
    .unwrap();
    std::env::set_var("WANDB_BASE_URL", &server.url);
    let sent = |client: Client| {
        let target = Target {
            project: "p".into(),
            entity: None,
        };
        let config = json!({});
        let spec = RunSpec {
            target: &target,
            display_name: "x",
            config: &config,
            new_id: "abcdefgh".into(),
            run_dir: tmp.path(),
        };
        WandbRun::start(client, &spec).unwrap();
        let auth = server
            .requests()
            .last()
            .unwrap()
            .header("authorization")
            .unwrap()
            .to_owned();
        let token = auth.strip_prefix("Basic ").unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(token)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(sent(Client::from_env().unwrap()), "api:from-netrc");
    std::env::set_var("WANDB_API_KEY", "from-env");
    assert_eq!(sent(Client::from_env().unwrap()), "api:from-env");
    std::env::remove_var("WANDB_API_KEY");
    std::env::remove_var("WANDB_BASE_URL");
}
