//! The server against clients that misbehave, over real loopback connections: bodies over
//! the limit sent whole before reading, heads sent a byte at a time, connections that never
//! send, and more connections than the server takes. Each test starts its own server with
//! the limits it probes, on the default model (`scripts/fetch-default-model.sh`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bora_formats::cache;
use bora_model::{LoadOptions, Model};
use bora_serve::{Limits, ServeOptions, Server};
use bora_tokenizer::Tokenizer;

fn start(limits: Limits) -> SocketAddr {
    let load = LoadOptions {
        context: Some(256),
        decode_layout: true,
        ..LoadOptions::default()
    };
    let path = cache::fetched_default_model().unwrap();
    let model = Model::load(&path, &load).unwrap();
    let tokenizer = Tokenizer::from_file(&path).unwrap();
    let mut options = ServeOptions::new("smollm2");
    options.limits = limits;
    let server = Server::new(model, tokenizer, Vec::new(), options).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            server
                .serve(listener, std::future::pending())
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

/// A connection that gives up on a server that stops answering, so no test can hang.
fn connect(addr: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    conn
}

/// Status line and headers of the response on `conn`.
fn head(conn: &TcpStream) -> (u16, Vec<(String, String)>) {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let Some((k, v)) = line.trim_end().split_once(':') else {
            break;
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Reads until the server closes the connection; false if it never does.
fn closed_by_server(mut conn: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

const TINY: &str = r#"{"model": "smollm2", "prompt": "Hi", "max_tokens": 1}"#;

fn post_tiny(addr: SocketAddr) -> u16 {
    let mut conn = connect(addr);
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{TINY}",
        TINY.len()
    )
    .unwrap();
    head(&conn).0
}

/// A 20 MB body written in full before the client reads, as Python's `http.client` does:
/// the client gets the 413 (not a reset), with `Connection: close`, declared length or
/// chunked; a body within the limit is served.
#[test]
fn an_oversized_body_sent_whole_gets_a_413_the_client_reads() {
    let addr = start(Limits {
        max_body_bytes: 1 << 20,
        ..Limits::default()
    });
    let body = vec![b' '; 20 << 20];
    for chunked in [false, true] {
        let mut conn = connect(addr);
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {}", body.len())
        };
        write!(
            conn,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        )
        .unwrap();
        if chunked {
            for part in body.chunks(1 << 16) {
                write!(conn, "{:x}\r\n", part.len()).unwrap();
                conn.write_all(part).unwrap();
                conn.write_all(b"\r\n").unwrap();
            }
            conn.write_all(b"0\r\n\r\n").unwrap();
        } else {
            conn.write_all(&body).unwrap();
        }
        let (status, headers) = head(&conn);
        assert_eq!(status, 413, "chunked: {chunked}");
        assert_eq!(header(&headers, "connection"), Some("close"));
    }
    assert_eq!(post_tiny(addr), 200);
}

/// A head sent a byte at a time, and a connection that sends nothing, are closed once the
/// header deadline passes, while a well-behaved client is served meanwhile.
#[test]
fn slow_and_silent_connections_are_closed_at_the_header_deadline() {
    let addr = start(Limits {
        header_timeout: Duration::from_secs(1),
        ..Limits::default()
    });
    let silent = connect(addr);
    let slow = connect(addr);
    let writer = {
        let mut slow = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaa" {
                if slow.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    assert_eq!(post_tiny(addr), 200);
    assert!(
        closed_by_server(&silent),
        "the silent connection stayed open"
    );
    assert!(closed_by_server(&slow), "the slow head was never cut off");
    writer.join().unwrap();
}

/// Past the connection limit a client gets 503 with `Retry-After`, and is served again
/// once a place is free.
#[test]
fn connections_over_the_limit_get_503_with_retry_after() {
    let addr = start(Limits {
        max_connections: 3,
        header_timeout: Duration::from_secs(120),
        ..Limits::default()
    });
    let held: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    // Accepting is asynchronous: make sure the three are taken before the fourth comes.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = connect(addr);
    write!(extra, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, headers) = head(&extra);
    assert_eq!(status, 503);
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(closed_by_server(&extra));
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        if post_tiny(addr) == 200 {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        served,
        "no request was served after the held connections closed"
    );
}
