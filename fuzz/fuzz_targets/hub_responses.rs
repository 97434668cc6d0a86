//! Responses of a hostile or broken Hugging Face Hub and W&B server: every client call ends
//! in a result or an error, never a panic, a hang or an allocation sized by the response.
//! A loopback server answers each request with the next response of the input (responses
//! separated by NUL bytes; the first byte of each picks the status, the rest is the body),
//! repeating the last one, while the clients run `bora push`'s calls (whoami, write check,
//! repo creation, preupload, LFS batch, commit) and a W&B run (upsert, file stream, finish).
#![no_main]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_hub::hub::{HubClient, LocalFile, RepoId, Retry, Token};
use bora_hub::wandb::{ApiKey, Client, RunSpec, Target, WandbRun};
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 10] = [200, 201, 400, 401, 403, 404, 409, 429, 500, 503];

/// Serves the queued responses, one per request, until the listener is dropped.
fn server(responses: Arc<Mutex<Vec<Vec<u8>>>>) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).ok();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut length = 0usize;
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if l == "stop" {
                    return;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let _ = std::io::copy(&mut reader.by_ref().take(length as u64), &mut std::io::sink());
            let next = {
                let mut q = responses.lock().expect("lock");
                if q.len() > 1 { q.remove(0) } else { q[0].clone() }
            };
            let (status, body) = match next.split_first() {
                Some((&s, body)) => (STATUSES[usize::from(s) % STATUSES.len()], body),
                None => (200, &b""[..]),
            };
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
    });
    (url, handle)
}

fn stop(url: &str, handle: std::thread::JoinHandle<()>) {
    if let Ok(mut c) = std::net::TcpStream::connect(url.trim_start_matches("http://")) {
        let _ = c.write_all(b"STOP\r\n\r\n");
    }
    let _ = handle.join();
}

fuzz_target!(|data: &[u8]| {
    let responses: Vec<Vec<u8>> = data.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    let queue = Arc::new(Mutex::new(responses.clone()));
    let (url, handle) = server(queue.clone());

    let mut retry = Retry::default().with_sleep(|_| {});
    retry.attempts = 2;
    let hub = HubClient::new(&url, Token::new("hf_fuzz").expect("a token"))
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

    *queue.lock().expect("lock") = responses;
    let run_dir = std::env::temp_dir().join(format!("bora-fuzz-wandb-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).expect("run dir");
    if let Ok(client) = Client::new(&url, ApiKey::new("x".repeat(40))) {
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
    stop(&url, handle);
});
