//! Headless Chromium driven over the DevTools protocol (a websocket): load a page, read its
//! DOM with JavaScript, click, take a screenshot. The browser runs in a process group of its
//! own, killed by its id on drop with everything it started.

use base64::Engine;
use serde_json::{Value, json};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::WebSocket;

/// Chromium's executable, or a failure saying what is missing.
pub(super) fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("chromium")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("the web monitor's browser test needs Chromium: `apt-get install chromium` (.ci/run does)")
    })
}

/// Chromium's process group, killed by its id on drop (even when starting it fails half-way).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // The whole group: the browser and its renderer, GPU and zygote processes.
        let _ = Command::new("kill").args(["-KILL", "--"]).arg(format!("-{}", self.0.id())).status();
        let _ = self.0.wait();
    }
}

/// A headless Chromium showing one page.
pub(super) struct Browser {
    ws: WebSocket<TcpStream>,
    // Dropped after the websocket, before the profile folder.
    _group: Group,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` (a window of `width`×`height`) and attaches to its page.
    pub(super) fn open(url: &str, width: u32, height: u32) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::Builder::new().prefix("dispy-chromium-").tempdir().unwrap();
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless",
            // Tests run as root in containers, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            // Crash reporters start in process groups of their own, which the guard would miss.
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            // Traffic stays on loopback: no background services, every name but the
            // page's address unresolvable, and any other request sent to a dead proxy on
            // 127.0.0.1 (loopback itself is never proxied).
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            &format!("--window-size={width},{height}"),
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
        let group = Group(cmd.spawn().unwrap_or_else(|e| panic!("cannot start chromium: {e}")));
        // Chromium writes the port it chose here once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) =
                std::fs::read_to_string(&port_file).ok().and_then(|t| t.lines().next()?.parse::<u16>().ok())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium did not open its DevTools port within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        let host = format!("127.0.0.1:{port}");
        let ws_url = loop {
            let list = super::http::request(&host, "GET", "/json/list", &[]);
            let targets: Vec<Value> = serde_json::from_str(&list.body).unwrap_or_default();
            if let Some(url) =
                targets.iter().find(|t| t["type"] == "page").and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                break url.to_string();
            }
            assert!(Instant::now() < deadline, "chromium shows no page: {}", list.body);
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(&host).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools websocket");
        Browser { ws, _group: group, next_id: 1, _profile: profile }
    }

    /// Calls a DevTools method and returns its result (events in between are skipped).
    pub(super) fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(tungstenite::Message::text(msg.to_string())).expect("send to chromium");
        loop {
            let reply = self.ws.read().unwrap_or_else(|e| panic!("no answer to {method}: {e}"));
            let Ok(text) = reply.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or_default();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    pub(super) fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true }));
        assert!(r.get("exceptionDetails").is_none(), "{expr} threw: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page; false past `within`.
    pub(super) fn wait_for(&mut self, expr: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.eval(expr) == Value::Bool(true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The page's HTML now (for failure messages).
    pub(super) fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML").as_str().unwrap_or_default().to_string()
    }

    /// Saves a PNG of the page to `path`.
    pub(super) fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().expect("image data")).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}
