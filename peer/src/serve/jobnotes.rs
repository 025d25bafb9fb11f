//! What a running function job sends before its result, on the node: each provisional
//! value goes on at once to the lease's outbox (ahead of the job's result, through the
//! node's task like every completion), each file sent is taken into the store exactly like
//! a `--return` file and announced the same way, so the client fetches it while the job
//! runs; it is also listed with the job's returned files, for a client that missed the
//! note, and the job's report names it. Both are bounded per job; what is dropped is said in the
//! job's note.

use super::Completion;
use super::jobfiles::{Collected, adopt_sent};
use super::store::Store;
use dispy_protocol::worker::MAX_PROVISIONAL_BYTES;
use dispy_protocol::{ClusterId, FileEntry, JobId, Provisional};
use std::path::PathBuf;
use tokio::sync::mpsc;

/// Provisional values kept per job: more than a progress bar needs, and a bound on what a
/// chatty job costs its client and the node's memory.
pub(crate) const MAX_PROVISIONAL_PER_JOB: usize = 1000;

/// Files sent per job, at most.
pub(crate) const MAX_SENT_PER_JOB: usize = 1000;

/// Notes the worker's reader may hold ahead of the relay: the worker waits beyond.
pub(crate) const NOTES_IN_FLIGHT: usize = 8;

/// A note from a running job, checked by the worker's reader.
#[derive(Debug, PartialEq)]
pub(crate) enum JobNote {
    /// A provisional value (CBOR).
    Provisional(Vec<u8>),
    /// A file sent, at `path` in the worker's directory, named `name` for the client.
    File { path: PathBuf, name: String },
    /// Something the worker sent that the node does not take, and why.
    Refused(String),
}

/// Where a job's notes go.
pub(crate) struct Relay {
    pub(crate) cluster: ClusterId,
    pub(crate) job: JobId,
    pub(crate) store: Store,
    /// The node's `--max-return`, for all the files the job sends.
    pub(crate) max_bytes: Option<u64>,
    pub(crate) done: mpsc::UnboundedSender<Completion>,
}

impl Relay {
    /// Passes the job's notes on until its worker is done with it; returns the files sent
    /// and what was dropped, for the job's result.
    pub(crate) async fn run(self, mut notes: mpsc::Receiver<JobNote>) -> Collected {
        let mut out = Collected::default();
        let mut why_not = Vec::new();
        let (mut values, mut dropped, mut total) = (0, 0, 0u64);
        while let Some(note) = notes.recv().await {
            match note {
                JobNote::Provisional(value) => {
                    if values >= MAX_PROVISIONAL_PER_JOB || value.len() > MAX_PROVISIONAL_BYTES {
                        dropped += 1;
                        continue;
                    }
                    values += 1;
                    let p = Provisional::value(self.job, value);
                    let _ = self.done.send(Completion::Provisional { cluster: self.cluster, provisional: p });
                }
                JobNote::File { path, name } => {
                    if out.files.len() >= MAX_SENT_PER_JOB {
                        why_not.push(format!("{name}: not sent: over {MAX_SENT_PER_JOB} files sent"));
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    let room = self.max_bytes.map(|m| m.saturating_sub(total));
                    let store = self.store.clone();
                    let adopted = tokio::task::spawn_blocking(move || adopt_sent(&path, &store, room)).await;
                    match adopted {
                        Ok(Ok((hash, size, executable))) => {
                            total += size;
                            let file = FileEntry { name, hash, size, executable };
                            // The client fetches it now; the job's result lists it too,
                            // for a client that missed this note (it reconnected, or the
                            // fetch failed).
                            let p = Provisional::file(self.job, file.clone());
                            let _ = self.done.send(Completion::Provisional { cluster: self.cluster, provisional: p });
                            out.files.push(file);
                        }
                        Ok(Err(e)) => why_not.push(format!("{name}: not sent: {e}")),
                        Err(e) => why_not.push(format!("{name}: not sent: {e}")),
                    }
                }
                JobNote::Refused(why) => why_not.push(why),
            }
        }
        if dropped > 0 {
            why_not.push(format!(
                "{dropped} provisional values dropped (over {MAX_PROVISIONAL_PER_JOB} per job or \
                 {MAX_PROVISIONAL_BYTES} bytes each)"
            ));
        }
        out.note = (!why_not.is_empty()).then(|| why_not.join("; "));
        out
    }
}
