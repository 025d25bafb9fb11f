//! The reaper: a tiny companion process that kills a node's jobs if the node itself dies
//! without cleaning up (SIGKILL, OOM killer, a crash).
//!
//! Jobs run in their own process groups, so they outlive a node that cannot kill them. The
//! node carries a random token in its environment ([`TOKEN_ENV`], set at start), which every
//! job and worker inherits, and starts the reaper (its own executable, with [`REAPER_ENV`]
//! set) holding a pipe from the node. When the pipe reaches end-of-file — the node has
//! exited, however it exited — the reaper kills the process group of every process that
//! carries the token, then exits. Nothing is sent per job: the job path pays nothing for it.
//! (A job that scrubs its environment escapes; that is a job working against its node.)

use super::sys::kill_group;
use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// Environment variable that starts a program as a reaper.
pub const REAPER_ENV: &str = "DISPY_NODE_REAPER";

/// Environment variable holding the node's token, inherited by its jobs.
pub const TOKEN_ENV: &str = "DISPY_NODE_TOKEN";

/// Runs the reaper and exits if this process was started as one; returns otherwise. Call
/// it first in `main` of any program that starts nodes with a reaper.
pub fn run_if_reaper() {
    if std::env::var_os(REAPER_ENV).is_none() {
        return;
    }
    let Some(token) = std::env::var_os(TOKEN_ENV) else { std::process::exit(2) };
    // Wait for the node to go: its end of the pipe closes.
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    let needle = [TOKEN_ENV.as_bytes(), b"=", token.as_encoded_bytes()].concat();
    let me = std::process::id();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(p.path().join("environ")) else { continue };
            if env.split(|b| *b == 0).any(|var| var == needle.as_slice()) {
                // Jobs lead their own groups: kill the group, which takes what they started.
                kill_group(pgid_of(pid).unwrap_or(pid));
            }
        }
    }
    std::process::exit(0);
}

/// The process group of a process, from `/proc/<pid>/stat`.
fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, ppid, pgrp.
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

/// A fresh random token for this node.
pub fn new_token() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

/// The node's side: the pipe whose closing wakes the reaper.
#[derive(Debug)]
pub struct Reaper {
    _child: Child,
    _pipe: ChildStdin,
}

impl Reaper {
    /// Starts `exe` as the reaper. `exe` must call [`run_if_reaper`] first in `main`, and
    /// this process must carry [`TOKEN_ENV`] (its jobs inherit it).
    ///
    /// # Errors
    /// The spawn error, or a missing token.
    pub fn start(exe: &Path) -> std::io::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(TOKEN_ENV).is_none() {
            return Err(std::io::Error::other(format!("{TOKEN_ENV} is not set in the node's environment")));
        }
        let mut child = Command::new(exe)
            .env(REAPER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Its own group: a Ctrl-C meant for the node does not take the reaper first.
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take().ok_or_else(|| std::io::Error::other("reaper stdin missing"))?;
        Ok(Reaper { _child: child, _pipe: pipe })
    }
}
