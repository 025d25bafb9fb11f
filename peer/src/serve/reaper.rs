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
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable that starts a program as a reaper.
pub const REAPER_ENV: &str = "DISPY_NODE_REAPER";

/// Environment variable holding the node's token, inherited by its jobs.
pub const TOKEN_ENV: &str = "DISPY_NODE_TOKEN";

/// Environment variable naming a folder the reaper deletes after the jobs (an embedded
/// node's private dest path).
const REMOVE_ENV: &str = "DISPY_NODE_REAPER_REMOVE";

/// Set once [`run_if_reaper`] has returned: this executable can serve as a reaper.
static CAN_REAP: AtomicBool = AtomicBool::new(false);

/// Runs the reaper and exits if this process was started as one; returns otherwise. Call
/// it first in `main` of any program that starts nodes with a reaper.
pub fn run_if_reaper() {
    if std::env::var_os(REAPER_ENV).is_none() {
        CAN_REAP.store(true, Ordering::Relaxed);
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
    if let Some(dir) = std::env::var_os(REMOVE_ENV) {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(0);
}

/// The process group of a process, from `/proc/<pid>/stat`.
fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, ppid, pgrp.
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

/// Whether this process's executable serves as a reaper: its `main` called
/// [`run_if_reaper`] first (`dispy-peer` does, and so does `dispy::worker!`).
pub fn can_reap() -> bool {
    CAN_REAP.load(Ordering::Relaxed)
}

/// A fresh random token for this node.
pub fn new_token() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

/// The node's side: the pipe whose closing wakes the reaper. Dropping it closes the pipe
/// and reaps the reaper once it is done (an embedded node stops inside a process that
/// goes on).
#[derive(Debug)]
pub struct Reaper {
    child: Option<Child>,
    pipe: Option<ChildStdin>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.pipe.take());
        if let Some(mut child) = self.child.take() {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}

impl Reaper {
    /// Starts `exe` as the reaper. `exe` must call [`run_if_reaper`] first in `main`. The
    /// jobs carry `token` in their environment if given (the node sets it on each), else the
    /// token in this process's own [`TOKEN_ENV`] (they inherit it). `remove`: a folder to
    /// delete once the jobs are dead.
    ///
    /// # Errors
    /// The spawn error, or no token at all.
    pub fn start(exe: &Path, token: Option<&str>, remove: Option<&Path>) -> std::io::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(exe);
        if let Some(dir) = remove {
            cmd.env(REMOVE_ENV, dir);
        }
        match token {
            Some(token) => cmd.env(TOKEN_ENV, token),
            None if std::env::var_os(TOKEN_ENV).is_some() => &mut cmd,
            None => return Err(std::io::Error::other(format!("{TOKEN_ENV} is not set in the node's environment"))),
        };
        let mut child = cmd
            .env(REAPER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Its own group: a Ctrl-C meant for the node does not take the reaper first.
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take().ok_or_else(|| std::io::Error::other("reaper stdin missing"))?;
        Ok(Reaper { child: Some(child), pipe: Some(pipe) })
    }
}
