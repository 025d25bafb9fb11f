//! Files arriving from clients. A client keeps up to [`CHUNKS_IN_FLIGHT`] chunks of a file
//! on their way, each on a stream of its own, so they may arrive out of order: the node
//! writes them in order on the blocking pool, holding the early ones meanwhile. Memory
//! stays bounded by the window, whatever the file's size.

use super::store::Upload;
use super::{Completion, Ctx};
use crate::net::ReplyTo;
use dispy_protocol::{
    CHUNK_SIZE, CHUNKS_IN_FLIGHT, Chunk, ChunkStored, ClusterId, FileEntry, FileHash, Refusal, RefusalKind, Response,
};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// `None` while a chunk is being written.
    upload: Option<Box<Upload>>,
    /// Chunks not written yet, by offset, with where to answer each.
    waiting: BTreeMap<u64, (Vec<u8>, ReplyTo)>,
}

/// A chunk was written (or refused) on the blocking pool.
pub(super) struct ChunkWritten {
    pub(super) cluster: ClusterId,
    hash: FileHash,
    upload: Box<Upload>,
    outcome: Result<bool, String>,
    channel: ReplyTo,
}

fn bad_file(msg: String) -> Response {
    Response::Refused(Refusal::new(RefusalKind::BadFile, msg))
}

impl Uploads {
    /// Files arriving now (each holds a partial file open).
    pub(super) fn open(&self) -> usize {
        self.uploads.len()
    }

    /// Whether a chunk of `hash` would start a new upload.
    pub(super) fn would_open(&self, hash: &FileHash) -> bool {
        !self.uploads.contains_key(hash) && !self.staged.contains(hash) && !self.refused_files.contains_key(hash)
    }

    /// Drops the files still arriving (their partial files go with them).
    pub(super) fn clear(&mut self) {
        self.uploads.clear();
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
            Entry::Vacant(v) => match ctx.store.begin(c.hash, entry.size) {
                Ok(u) => v.insert(Incoming { upload: Some(Box::new(u)), waiting: BTreeMap::new() }),
                Err(e) => {
                    let why = format!("cannot store the file: {e}");
                    return Some((channel, Response::Refused(Refusal::new(RefusalKind::Internal, why))));
                }
            },
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
        let (Some(upload), Some((&offset, _))) = (&incoming.upload, incoming.waiting.first_key_value()) else {
            return;
        };
        // Past a gap: the chunk that fills it is still on its way. (One before what was
        // written is taken, and refused by the write.)
        if offset > upload.received() {
            return;
        }
        let (Some(mut upload), Some((data, channel))) = (incoming.upload.take(), incoming.waiting.remove(&offset))
        else {
            return;
        };
        let done = ctx.done.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = upload.write(offset, &data);
            let _ = done.send(Completion::ChunkWritten(ChunkWritten { cluster, hash, upload, outcome, channel }));
        });
    }

    /// A chunk was written (or refused): answers it and goes on with the file.
    pub(super) fn written(&mut self, w: ChunkWritten, ctx: &Ctx) {
        let ChunkWritten { cluster, hash, upload, outcome, channel } = w;
        // What remains of a file once it is complete, or refused, is refused with it.
        let (response, refused) = match outcome {
            Ok(false) => {
                if let Some(incoming) = self.uploads.get_mut(&hash) {
                    incoming.upload = Some(upload);
                }
                (Response::ChunkStored(ChunkStored { hash, complete: false }), None)
            }
            Ok(true) => {
                self.staged.insert(hash);
                debug!(%cluster, %hash, "file staged");
                let extra = format!("more bytes than the declared size of {}", upload.size());
                (Response::ChunkStored(ChunkStored { hash, complete: true }), Some(extra))
            }
            Err(msg) => {
                warn!(cluster = %cluster.tag(), %hash, cause = %msg, "refused a file");
                self.refused_files.insert(hash, msg.clone());
                (bad_file(msg.clone()), Some(msg))
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
