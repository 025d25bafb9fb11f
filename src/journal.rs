//! The client's journal (`submit --journal FILE`, [`crate::ClusterBuilder::journal`]).
//!
//! The journal is JSON lines, appended as the cluster goes: the cluster id, each job's
//! arguments, the node each job was sent to, and each job that ended. After a crash,
//! [`crate::recover`] reads it back.

use crate::error::{Error, Result};
use dispy_protocol::{ClusterId, JobId, OwnerToken};
use libp2p::{Multiaddr, PeerId};
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// Appends to a journal file. Write errors are logged once and journaling stops: a full
/// disk must not stop the jobs.
pub(crate) struct Journal {
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl Journal {
    /// Starts a journal for `cluster`, owned by whoever holds `owner` (written here, and
    /// nowhere else: the file is made readable by its user only).
    pub(crate) fn create(path: &Path, cluster: ClusterId, owner: &OwnerToken, program: &str) -> Result<Journal> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| Error::File { path: path.to_path_buf(), source })?;
        let mut j = Journal { out: Some(std::io::BufWriter::new(file)) };
        j.line(json!({"cluster": cluster.to_string(), "owner": owner.to_hex(), "program": program}));
        j.flush();
        Ok(j)
    }

    fn line(&mut self, v: serde_json::Value) {
        if let Some(out) = &mut self.out
            && let Err(e) = writeln!(out, "{v}")
        {
            tracing::warn!(cause = %e, "cannot write the journal; journaling stops");
            self.out = None;
        }
    }

    pub(crate) fn job(&mut self, id: JobId, args: &[String]) {
        self.line(json!({"job": id.0, "args": args}));
    }

    pub(crate) fn sent(&mut self, ids: &[JobId], peer: &PeerId, addr: Option<&Multiaddr>) {
        let addr = addr.map(|a| a.to_string());
        for id in ids {
            self.line(json!({"sent": id.0, "peer": peer.to_string(), "addr": addr}));
        }
    }

    pub(crate) fn done(&mut self, id: JobId) {
        self.line(json!({"done": id.0}));
    }

    /// Makes what was written survive a crash of this process.
    pub(crate) fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            let _ = out.flush();
        }
    }
}
