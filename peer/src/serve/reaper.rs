//! The reaper: a tiny companion process that kills a node's jobs if the node itself dies
//! without cleaning up (SIGKILL, OOM killer, a crash).
//!
//! Jobs run in their own process groups, so they outlive a node that cannot kill them. The
//! node starts the reaper (its own executable, with [`REAPER_ENV`] set) and tells it over a
//! pipe each process group it starts (`+PGID`) and reaps (`-PGID`). When the pipe reaches
//! end-of-file — the node has exited, however it exited — the reaper kills every group still
//! on its list and exits. Without it a re-run job could also finish on the dead node.

use super::sys::kill_group;
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use tracing::warn;

/// Environment variable that starts a program as a reaper.
pub const REAPER_ENV: &str = "DISPY_NODE_REAPER";

/// Runs the reaper loop and exits if this process was started as one; returns otherwise.
/// Call it first in `main` of any program that starts nodes with a reaper.
pub fn run_if_reaper() {
    if std::env::var_os(REAPER_ENV).is_none() {
        return;
    }
    let mut groups: HashSet<u32> = HashSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        match (op, pgid.parse::<u32>()) {
            ("+", Ok(p)) => {
                groups.insert(p);
            }
            ("-", Ok(p)) => {
                groups.remove(&p);
            }
            _ => {}
        }
    }
    for p in groups {
        kill_group(p);
    }
    std::process::exit(0);
}

/// The node's side: where it reports process groups. Cheap to clone; a node without a
/// reaper (the library's in-process node) has an inert one.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Option<Arc<Mutex<(Child, ChildStdin)>>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() { "Reaper(on)" } else { "Reaper(off)" })
    }
}

impl Reaper {
    /// Starts `exe` as the reaper. `exe` must call [`run_if_reaper`] first in `main`.
    ///
    /// # Errors
    /// The spawn error.
    pub fn start(exe: &Path) -> std::io::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(exe)
            .env(REAPER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Its own group: a Ctrl-C meant for the node does not take the reaper first.
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("reaper stdin missing"))?;
        Ok(Reaper { inner: Some(Arc::new(Mutex::new((child, stdin)))) })
    }

    fn send(&self, line: String) {
        let Some(inner) = &self.inner else { return };
        let Ok(mut guard) = inner.lock() else { return };
        // A few bytes into a pipe the reaper drains continuously: does not block in practice.
        if let Err(e) = guard.1.write_all(line.as_bytes()) {
            warn!(cause = %e, "the reaper is gone; jobs may outlive a crash of this node");
        }
    }

    /// A job's process group started.
    pub(crate) fn watch(&self, pgid: u32) {
        if pgid > 1 {
            self.send(format!("+{pgid}\n"));
        }
    }

    /// A job's process group is gone.
    pub(crate) fn forget(&self, pgid: u32) {
        if pgid > 1 {
            self.send(format!("-{pgid}\n"));
        }
    }
}
