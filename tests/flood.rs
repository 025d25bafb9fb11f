//! A flood of idle connections from a host without the secret must not keep a client with
//! it from running jobs, even at the common descriptor limit of 1024.
//!
//! The flooder connects from 127.0.0.2 (another host, as far as the node can tell) and the
//! client from 127.0.0.1; all traffic stays on loopback, and the flood is bounded in time.

use crate::util::*;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Idle TCP connections to `target`, `per_sec` a second, each held `hold` (past the
/// node's handshake timeout) and then dropped; until stopped (or 120 s at most).
pub(crate) struct Flood {
    stop: Arc<AtomicBool>,
    pub(crate) opened: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    pub(crate) fn start(target: SocketAddr, per_sec: u32, hold: Duration) -> Flood {
        // The held connections are this test process's descriptors too.
        let _ = dispy_node::net::raise_fd_limit();
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), opened.clone());
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            let started = Instant::now();
            let mut held: std::collections::VecDeque<(Instant, TcpStream)> = Default::default();
            let gap = Duration::from_secs(1) / per_sec.max(1);
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                let now = Instant::now();
                while held.front().is_some_and(|(t, _)| now.duration_since(*t) > hold) {
                    held.pop_front();
                }
                if let Ok(c) = rt.block_on(connect_from_other_host(target)) {
                    held.push_back((now, c));
                    n.fetch_add(1, Ordering::Relaxed);
                }
                next += gap;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        });
        Flood { stop, opened, thread: Some(thread) }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connection to `target` from 127.0.0.2.
async fn connect_from_other_host(target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 2], 0)))?;
    let stream = tokio::time::timeout(Duration::from_secs(1), socket.connect(target))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    stream.into_std()
}

/// The TCP address of a node's `/ip4/A/tcp/P/p2p/...` address.
pub(crate) fn socket_addr(multiaddr: &str) -> SocketAddr {
    let parts: Vec<&str> = multiaddr.split('/').collect();
    format!("{}:{}", parts[2], parts[4]).parse().expect("an /ip4/../tcp/.. address")
}

/// Open descriptors of a process.
pub(crate) fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn an_idle_connection_flood_without_the_secret_does_not_starve_a_client() {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", "sleep 0.05; echo done $1");
    let dest = dir.path().join("node");
    // The common soft limit, and no hard room above it: the node cannot raise it.
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=1024", "--"]).arg(bin());
    cmd.args(["serve", "--name", "flooded", "--cpus", "2", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .args(["--drain-timeout", "1", "--secret", "test-secret", "--dest-path"])
        .arg(&dest)
        .env("RUST_LOG", "warn,libp2p_kad=error,dispy=info,dispy_node=info")
        .env_remove("DISPY_SECRET");
    let node = Proc::spawn("node flooded", cmd);
    let addr = node.wait_line("listening ", Duration::from_secs(20)).trim_start_matches("listening ").to_string();

    // 400 connections a second, each held 3 s: 1 200 descriptors' worth, past the limit.
    let flood = Flood::start(socket_addr(&addr), 400, Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(2));
    let fds_flooded = fds(node.pid());

    let mut cmd = submit(&prog);
    cmd.args(["--peer", &addr, "--json"]);
    for i in 0..60 {
        cmd.args(["-a", &i.to_string()]);
    }
    let out = run("submit under flood", cmd, Duration::from_secs(120));
    let opened = flood.opened.load(Ordering::Relaxed);
    drop(flood);
    out.expect_code(0);
    let done = out.json_lines().iter().filter(|j| j.get("job").is_some()).count();
    assert_eq!(done, 60, "every job finished:\n{}", out.stdout);
    assert!(opened > 800, "the flood ran ({opened} connections)");
    assert!(fds_flooded < 512, "the flood held {fds_flooded} of the node's descriptors");
    assert!(node.stderr().contains("refusing incoming connections"), "{}", node.stderr());
    node.terminate(Duration::from_secs(10));
}
