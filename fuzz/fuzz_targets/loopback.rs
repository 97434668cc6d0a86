//! A hostile or broken HTTP server on loopback for the targets that fuzz clients of remote
//! services: it answers each request with the next response of the fuzz input (responses
//! separated by NUL bytes; the first byte of each picks the status and content type, the rest
//! is the body), repeating the last one, and closes the connection after each answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const STATUSES: [u16; 10] = [200, 201, 400, 401, 403, 404, 409, 429, 500, 503];
const CONTENT_TYPES: [&str; 3] = ["application/json", "audio/mpeg", "text/event-stream"];

pub struct Hostile {
    pub url: String,
    queue: Arc<Mutex<Vec<Vec<u8>>>>,
    handle: Option<JoinHandle<()>>,
}

/// The input split into responses.
pub fn responses(data: &[u8]) -> Vec<Vec<u8>> {
    data.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

impl Hostile {
    /// Serves `responses` until dropped.
    pub fn start(responses: Vec<Vec<u8>>) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let queue = Arc::new(Mutex::new(responses));
        let served = queue.clone();
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                if !answer(conn, &served) {
                    return;
                }
            }
        });
        Hostile {
            url,
            queue,
            handle: Some(handle),
        }
    }

    /// Starts the same responses over, for the next client.
    pub fn replay(&self, responses: Vec<Vec<u8>>) {
        *self.queue.lock().expect("lock") = responses;
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Ok(mut c) = TcpStream::connect(self.url.trim_start_matches("http://")) {
            let _ = c.write_all(b"STOP\r\n\r\n");
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Reads one request and answers it; false when asked to stop.
fn answer(mut conn: TcpStream, queue: &Mutex<Vec<Vec<u8>>>) -> bool {
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
            return false;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let _ = std::io::copy(
        &mut reader.by_ref().take(length as u64),
        &mut std::io::sink(),
    );
    let next = {
        let mut q = queue.lock().expect("lock");
        if q.len() > 1 {
            q.remove(0)
        } else {
            q[0].clone()
        }
    };
    let (status, content_type, body) = match next.split_first() {
        Some((&s, body)) => (
            STATUSES[usize::from(s) % STATUSES.len()],
            CONTENT_TYPES[usize::from(s) / STATUSES.len() % CONTENT_TYPES.len()],
            body,
        ),
        None => (200, CONTENT_TYPES[0], &b""[..]),
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    true
}
