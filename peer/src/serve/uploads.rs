//! Files arriving from clients. A client keeps up to [`CHUNKS_IN_FLIGHT`] chunks of a file
//! on their way, each on a stream of its own, so they may arrive out of order: the node
//! writes them in order on the blocking pool, holding the early ones meanwhile. Memory
//! stays bounded by the window, whatever the file's size.

use super::*;
use dispy_protocol::{CHUNK_SIZE, CHUNKS_IN_FLIGHT, Chunk, ChunkStored};
use std::collections::BTreeMap;
use std::collections::hash_map::Entry;

/// A file being received.
#[derive(Debug)]
pub(super) struct Incoming {
    /// `None` while a chunk is being written.
    upload: Option<Box<Upload>>,
    /// Chunks not written yet, by offset, with where to answer each.
    waiting: BTreeMap<u64, (Vec<u8>, ResponseChannel<Response>)>,
}

fn bad_file(msg: String) -> Response {
    Response::Refused(Refusal::new(RefusalKind::BadFile, msg))
}

impl Server {
    /// Takes a chunk; returns the answer unless the chunk was queued for writing.
    pub(super) fn chunk(
        &mut self,
        peer: PeerId,
        c: Chunk,
        channel: ResponseChannel<Response>,
    ) -> Option<(ResponseChannel<Response>, Response)> {
        let store = self.store.clone();
        let cluster = match self.owned(peer, c.cluster) {
            Ok(cluster) => cluster,
            Err(refusal) => return Some((channel, *refusal)),
        };
        let Some(entry) = cluster.files.iter().find(|f| f.hash == c.hash) else {
            return Some((channel, bad_file(format!("file {} was not declared", c.hash))));
        };
        if c.data.len() > CHUNK_SIZE {
            return Some((channel, bad_file("chunk larger than the protocol's chunk size".into())));
        }
        // Chunks still on their way when their file was refused, or past its end once it
        // was complete, must not start a new upload that no chunk at offset 0 will finish.
        if let Some(why) = cluster.refused_files.get(&c.hash) {
            return Some((channel, bad_file(format!("file {} was refused: {why}", entry.name))));
        }
        if !cluster.uploads.contains_key(&c.hash) && cluster.staged.contains(&c.hash) {
            let why = format!("file {} is complete: more bytes than its declared size", entry.name);
            return Some((channel, bad_file(why)));
        }
        let incoming = match cluster.uploads.entry(c.hash) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => match store.begin(c.hash, entry.size) {
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
        self.write_next_chunk(c.cluster, c.hash);
        None
    }

    /// Writes a file's next chunk if it has arrived and no write of the file is under way.
    fn write_next_chunk(&mut self, cluster: ClusterId, hash: FileHash) {
        let Some(incoming) = self.clusters.get_mut(&cluster).and_then(|c| c.uploads.get_mut(&hash)) else { return };
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
        let tx = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = upload.write(offset, &data);
            let _ = tx.send(Internal::ChunkDone { cluster, hash, upload, outcome, channel });
        });
    }

    /// A chunk was written (or refused): answers it and goes on with the file.
    pub(super) fn chunk_done(
        &mut self,
        cluster: ClusterId,
        hash: FileHash,
        upload: Box<Upload>,
        outcome: std::result::Result<bool, String>,
        channel: ResponseChannel<Response>,
    ) {
        let Some(c) = self.clusters.get_mut(&cluster) else { return };
        // What remains of a file once it is complete, or refused, is refused with it.
        let (response, refused) = match outcome {
            Ok(false) => {
                if let Some(incoming) = c.uploads.get_mut(&hash) {
                    incoming.upload = Some(upload);
                }
                (Response::ChunkStored(ChunkStored { hash, complete: false }), None)
            }
            Ok(true) => {
                c.staged.push(hash);
                debug!(%cluster, %hash, "file staged");
                let extra = format!("more bytes than the declared size of {}", upload.size());
                (Response::ChunkStored(ChunkStored { hash, complete: true }), Some(extra))
            }
            Err(msg) => {
                warn!(%cluster, %hash, cause = %msg, "refused a file");
                c.refused_files.insert(hash, msg.clone());
                (bad_file(msg.clone()), Some(msg))
            }
        };
        match refused.and_then(|why| c.uploads.remove(&hash).map(|i| (why, i))) {
            Some((why, incoming)) => {
                for (_, (_, channel)) in incoming.waiting {
                    self.respond(channel, bad_file(why.clone()));
                }
            }
            None => self.write_next_chunk(cluster, hash),
        }
        self.respond(channel, response);
    }
}
