//! A few plain HTTP/1.1 requests to the web monitor, over a socket (no client crate).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The monitor's URL as `submit --web` prints it: `http://HOST:PORT/?token=HEX`.
pub(super) struct MonitorUrl {
    pub(super) url: String,
    pub(super) host: String,
    pub(super) token: String,
}

impl MonitorUrl {
    /// Parses the `web monitor at URL` line out of a client's stderr.
    pub(super) fn from_stderr(stderr: &str) -> MonitorUrl {
        let url = stderr
            .lines()
            .find_map(|l| l.strip_prefix("dispy-peer: web monitor at "))
            .unwrap_or_else(|| panic!("no web monitor URL printed\n{stderr}"))
            .trim()
            .to_string();
        let rest = url.strip_prefix("http://").expect("an http URL");
        let (host, query) = rest.split_once("/?token=").expect("a token in the URL");
        MonitorUrl { host: host.to_string(), token: query.to_string(), url }
    }
}

/// A response: status code and body.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: String,
}

/// Sends one request (`headers`: extra `Name: value` lines) and reads the whole response.
pub(super) fn request(host: &str, method: &str, path: &str, headers: &[&str]) -> Reply {
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("cannot connect to {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n");
    for h in headers {
        req.push_str(&format!("{h}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // Read to the end, or to Content-Length: Chromium keeps the connection open.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|len| body.len() >= len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad reply {head}"));
    Reply { status, body: body.to_string() }
}

/// The first bytes of a streaming response (`GET /events`), until `needle` shows.
pub(super) fn read_until(host: &str, path: &str, needle: &str) -> String {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n =
            s.read(&mut chunk).unwrap_or_else(|e| panic!("no {needle:?} in {}: {e}", String::from_utf8_lossy(&got)));
        assert!(n > 0, "the stream ended before {needle:?}: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got).to_string()
}
