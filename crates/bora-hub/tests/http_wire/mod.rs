//! The wire side of the test servers (the fake Hub, the fake W&B): one HTTP/1.1 request read
//! off a connection, kept as it was sent.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|h| h.0 == name)
            .map(|h| h.1.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// Answers `status` with a JSON `body` and the `extra` headers; a client that has gone
/// away is not the server's failure.
pub fn respond_json(stream: &mut TcpStream, status: u16, extra: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// Reads one request; `None` when the client closed or sent something that is not one.
/// Bodies must come with a `Content-Length` (bora's clients never chunk a request).
pub fn read_request(stream: &TcpStream) -> Option<Request> {
    read_request_cut(stream, |_, _| None)
}

/// Reads one request, but only as much of its body as `cut(method, target)` allows (all of
/// it for `None`): a server that drops the connection in the middle of an upload.
pub fn read_request_cut(
    stream: &TcpStream,
    cut: impl FnOnce(&str, &str) -> Option<usize>,
) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    assert!(
        !headers.iter().any(|h| h.0 == "transfer-encoding"),
        "bodies are sent with a content-length"
    );
    let len: usize = headers
        .iter()
        .find(|h| h.0 == "content-length")
        .map(|h| h.1.parse().unwrap())
        .unwrap_or(0);
    let len = cut(&method, &target).map_or(len, |limit| limit.min(len));
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}
