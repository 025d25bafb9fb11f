//! Shared by the benchmark examples: a `dispy-peer serve` child process on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `dispy-peer serve` child, killed on drop.
pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) addr: String,
    /// Removed after the node is killed.
    _dest: tempfile::TempDir,
}

impl Node {
    pub(crate) fn start() -> Node {
        let exe = std::env::current_exe().expect("current exe");
        let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("dispy-peer");
        assert!(bin.exists(), "{} missing: cargo build --release --bin dispy-peer", bin.display());
        let dest = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(&bin)
            .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--cpus", "2", "--secret", "bench"])
            .arg("--dest-path")
            .arg(dest.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dispy-peer serve");
        let stdout = child.stdout.take().expect("piped");
        let line = BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.starts_with("listening "));
        let addr = line.expect("node did not print its address").trim_start_matches("listening ").to_string();
        Node { child, addr, _dest: dest }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
