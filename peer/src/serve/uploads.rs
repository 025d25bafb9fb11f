//! Files arriving from clients. A client keeps up to [`CHUNKS_IN_FLIGHT`] chunks of a file
//! on their way, each on a stream of its own, so they may arrive out of order: the node
//! writes them in order on the blocking pool, holding the early ones meanwhile. Memory
//! stays bounded by the window, whatever the file's size.

use super::store::{Partial, Upload};
use super::{Completion, Ctx};
use crate::net::ReplyTo;
use dispy_protocol::{
    CHUNK_SIZE, CHUNKS_IN_FLIGHT, Chunk, ChunkStored, ClusterId, FileEntry, FileHash, Refusal, RefusalKind, Response,
};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tracing::{debug, warn};

/// One lease's files arriving.
#[derive(Default)]
pub(super) struct Uploads {
    uploads: HashMap<FileHash, Incoming>,
    /// Files this cluster's client sent (they stay cached after a normal release).
    pub(super) staged: HashSet<FileHash>,
    /// Files refused while arriving, with why: their later chunks are refused too.
    refused_files: HashMap<FileHash, String>,
}

/// A file being received.
struct Incoming {
    upload: Slot,
    /// What is written so far, for nodes pulling from this copy as it grows.
    partial: Option<Arc<Partial>>,
    /// Chunks not written yet, by offset, with where to answer each.
    waiting: BTreeMap<u64, (Vec<u8>, ReplyTo)>,
}

/// Where a file's partial copy stands.
enum Slot {
    /// Not begun: its partial file is made with its first write, on the blocking pool.
    New { size: u64 },
    /// Begun, no write under way.
    Ready(Box<Upload>),
    /// A chunk is being written.
    Busy,
}

/// A chunk was written (or refused) on the blocking pool.
pub(super) struct ChunkWritten {
    pub(super) cluster: ClusterId,
    hash: FileHash,
    /// `None` when the partial file could not be made.
    upload: Option<Box<Upload>>,
    outcome: Result<bool, Failure>,
    channel: ReplyTo,
}

/// Why a chunk was not written: the file is wrong (it stays refused), or the node failed.
enum Failure {
    BadFile(String),
    Internal(String),
}

fn bad_file(msg: String) -> Response {
    Response::Refused(Refusal::new(RefusalKind::BadFile, msg))
}

impl Uploads {
    /// Files arriving now (each holds a partial file open).
    pub(super) fn open(&self) -> usize {
        self.uploads.len()
    }

    /// The copy of `hash` arriving now, if any, as far as it is written.
    pub(super) fn partial(&self, hash: &FileHash) -> Option<Arc<Partial>> {
        self.uploads.get(hash).and_then(|i| i.partial.clone())
    }

    /// Whether a chunk of `hash` would start a new upload.
    pub(super) fn would_open(&self, hash: &FileHash) -> bool {
        !self.uploads.contains_key(hash) && !self.staged.contains(hash) && !self.refused_files.contains_key(hash)
    }

    /// Drops the files still arriving (their partial files go with them, removed on the
    /// blocking pool: a file each).
    pub(super) fn clear(&mut self) {
        let gone = std::mem::take(&mut self.uploads);
        if !gone.is_empty() {
            tokio::task::spawn_blocking(move || drop(gone));
        }
    }

    /// Takes a chunk of one of `files`; returns the answer unless the chunk was queued for
    /// writing.
    pub(super) fn chunk(
        &mut self,
        cluster: ClusterId,
        files: &[FileEntry],
        c: Chunk,
        channel: ReplyTo,
        ctx: &Ctx,
    ) -> Option<(ReplyTo, Response)> {
        let Some(entry) = files.iter().find(|f| f.hash == c.hash) else {
            return Some((channel, bad_file(format!("file {} was not declared", c.hash))));
        };
        if c.data.len() > CHUNK_SIZE {
            return Some((channel, bad_file("chunk larger than the protocol's chunk size".into())));
        }
        // Chunks still on their way when their file was refused, or past its end once it
        // was complete, must not start a new upload that no chunk at offset 0 will finish.
        if let Some(why) = self.refused_files.get(&c.hash) {
            return Some((channel, bad_file(format!("file {} was refused: {why}", entry.name))));
        }
        if !self.uploads.contains_key(&c.hash) && self.staged.contains(&c.hash) {
            let why = format!("file {} is complete: more bytes than its declared size", entry.name);
            return Some((channel, bad_file(why)));
        }
        let incoming = match self.uploads.entry(c.hash) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                v.insert(Incoming { upload: Slot::New { size: entry.size }, partial: None, waiting: BTreeMap::new() })
            }
        };
        if incoming.waiting.len() >= CHUNKS_IN_FLIGHT || incoming.waiting.contains_key(&c.offset) {
            let why = format!("more than {CHUNKS_IN_FLIGHT} chunks of one file in flight, or a chunk sent twice");
            return Some((channel, bad_file(why)));
        }
        incoming.waiting.insert(c.offset, (c.data, channel));
        self.write_next_chunk(cluster, c.hash, ctx);
        None
    }

    /// Writes a file's next chunk if it has arrived and no write of the file is under way.
    fn write_next_chunk(&mut self, cluster: ClusterId, hash: FileHash, ctx: &Ctx) {
        let Some(incoming) = self.uploads.get_mut(&hash) else { return };
        let Some((&offset, _)) = incoming.waiting.first_key_value() else { return };
        let received = match &incoming.upload {
            Slot::New { .. } => 0,
            Slot::Ready(upload) => upload.received(),
            Slot::Busy => return,
        };
        // Past a gap: the chunk that fills it is still on its way. (One before what was
        // written is taken, and refused by the write.)
        if offset > received {
            return;
        }
        let Some((data, channel)) = incoming.waiting.remove(&offset) else { return };
        let slot = std::mem::replace(&mut incoming.upload, Slot::Busy);
        let (done, store) = (ctx.done.clone(), ctx.store.clone());
        tokio::task::spawn_blocking(move || {
            let upload = match slot {
                Slot::Ready(upload) => Ok(upload),
                Slot::New { size } => store.begin(hash, size).map(Box::new).map_err(|e| e.to_string()),
                Slot::Busy => Err("a chunk was written twice at once".to_string()),
            };
            let (upload, outcome) = match upload {
                Ok(mut upload) => {
                    let outcome = upload.write(offset, &data).map_err(Failure::BadFile);
                    (Some(upload), outcome)
                }
                Err(e) => (None, Err(Failure::Internal(format!("cannot store the file: {e}")))),
            };
            let _ = done.send(Completion::ChunkWritten(ChunkWritten { cluster, hash, upload, outcome, channel }));
        });
    }

    /// A chunk was written (or refused): answers it and goes on with the file.
    pub(super) fn written(&mut self, w: ChunkWritten, ctx: &Ctx) {
        let ChunkWritten { cluster, hash, upload, outcome, channel } = w;
        // What remains of a file once it is complete, or refused, is refused with it.
        let (response, refused) = match (outcome, upload) {
            (Ok(false), Some(upload)) => {
                if let Some(incoming) = self.uploads.get_mut(&hash) {
                    incoming.partial.get_or_insert_with(|| upload.partial());
                    incoming.upload = Slot::Ready(upload);
                }
                (Response::ChunkStored(ChunkStored { hash, complete: false }), None)
            }
            (Ok(true), Some(upload)) => {
                self.staged.insert(hash);
                if let Some(m) = &ctx.metrics {
                    m.staged(upload.size());
                }
                debug!(%cluster, %hash, "file staged");
                let extra = format!("more bytes than the declared size of {}", upload.size());
                (Response::ChunkStored(ChunkStored { hash, complete: true }), Some(extra))
            }
            (Err(Failure::BadFile(msg)), _) => {
                warn!(cluster = %cluster.tag(), %hash, cause = %msg, "refused a file");
                self.refused_files.insert(hash, msg.clone());
                (bad_file(msg.clone()), Some(msg))
            }
            // The node's failure (no descriptor, disk full): this upload ends, and the file
            // may be sent again.
            (Err(Failure::Internal(msg)), _) => {
                warn!(cluster = %cluster.tag(), %hash, cause = %msg, "cannot store a file");
                (Response::Refused(Refusal::new(RefusalKind::Internal, msg.clone())), Some(msg))
            }
            (Ok(_), None) => {
                let msg = "the file's partial copy was lost".to_string();
                (Response::Refused(Refusal::new(RefusalKind::Internal, msg.clone())), Some(msg))
            }
        };
        match refused.and_then(|why| self.uploads.remove(&hash).map(|i| (why, i))) {
            Some((why, incoming)) => {
                for (_, (_, channel)) in incoming.waiting {
                    ctx.respond(channel, bad_file(why.clone()));
                }
            }
            None => self.write_next_chunk(cluster, hash, ctx),
        }
        ctx.respond(channel, response);
    }
}
