//! A cluster's files shared between its nodes: serving a staged file to another node of
//! the cluster (a `Fetch` with the cluster's share token), and pulling one from such nodes
//! when the client asks (`Pull`), so that the client's link carries each file about once.
//!
//! A pulled file is written and verified as a client's upload is ([`Upload`]): bytes that
//! do not hash to the file's name are refused, and the source that sent them is named to
//! the client, which stops offering it. Sources are tried one after another, each from the
//! file's start, so a liar is never confused with an honest source.

use super::store::{Partial, Store, Upload};
use super::{Completion, Node};
use crate::net::{NetHandle, ReplyTo};
use dispy_protocol::share::MAX_SOURCES;
use dispy_protocol::{
    CHUNK_SIZE, CHUNKS_IN_FLIGHT, ClusterId, Fetch, FileEntry, FileHash, Pull, PullState, Pulled, Refusal, RefusalKind,
    Request, Response, ShareToken, Source,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::{Multiaddr, PeerId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// A client waiting on a pull is answered at least this often (with how far it got), well
/// inside the request timeout.
const POLL: Duration = Duration::from_secs(10);

/// A source whose copy has not grown for this long is given up.
const STALL: Duration = Duration::from_secs(20);

/// How soon a chunk a source does not hold yet is asked again.
const AGAIN: Duration = Duration::from_millis(20);

/// Addresses of one source used at most.
const MAX_ADDRS: usize = 8;

/// One lease's pulls under way.
#[derive(Default)]
pub(super) struct Pulls(HashMap<FileHash, Running>);

struct Running {
    /// The copy being written (a new one for each source tried).
    copy: Current,
    /// The client's request waiting for the outcome, if it asked again.
    waiter: Option<ReplyTo>,
    task: tokio::task::AbortHandle,
}

/// The partial copy a pull is writing now, if it has begun one.
type Current = Arc<Mutex<Option<Arc<Partial>>>>;

fn written(copy: &Current) -> u64 {
    copy.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map_or(0, |p| p.written())
}

impl Drop for Running {
    fn drop(&mut self) {
        // The partial copy goes with the task's upload.
        self.task.abort();
    }
}

impl Pulls {
    /// Pulls under way (each holds a partial file open).
    pub(super) fn open(&self) -> usize {
        self.0.len()
    }

    /// The copy of `hash` this node is pulling now, as far as it is written.
    pub(super) fn partial(&self, hash: &FileHash) -> Option<Arc<Partial>> {
        self.0.get(hash).and_then(|r| r.copy.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Stops every pull (a release): the partial copies go, and a client still waiting
    /// sees its request fail.
    pub(super) fn stop(&mut self) {
        self.0.clear();
    }
}

/// A pull ended: the file's size, or why no source gave it; and the sources that lied.
pub(super) struct PullDone {
    cluster: ClusterId,
    hash: FileHash,
    outcome: Result<u64, String>,
    liars: Vec<PeerId>,
}

fn running(hash: FileHash, received: u64) -> Response {
    Response::Pulled(Pulled { hash, received, state: PullState::Running, liars: Vec::new() })
}

fn refuse(kind: RefusalKind, msg: String) -> Response {
    Response::Refused(Refusal::new(kind, msg))
}

impl Node {
    /// The client asks this node to fetch one of the cluster's files from other nodes;
    /// answered once it is stored or failed, or after [`POLL`] with how far it got.
    pub(super) fn pull(&mut self, peer: PeerId, p: Pull, channel: ReplyTo) -> Option<(ReplyTo, Response)> {
        let uploads = self.leases.usage(peer).uploads;
        let (limit, name) = (self.cfg.limits.uploads, self.cfg.name.clone());
        let lease = match self.leases.owned(peer, p.cluster) {
            Ok(lease) => lease,
            Err(refusal) => return Some((channel, *refusal)),
        };
        let Some(share) = lease.share else {
            let why = "the cluster was reserved without a share token: send the file instead".to_string();
            return Some((channel, refuse(RefusalKind::BadRequest, why)));
        };
        let Some(entry) = lease.file(&p.hash).cloned() else {
            return Some((channel, refuse(RefusalKind::BadFile, format!("file {} was not declared", p.hash))));
        };
        if lease.uploads.staged.contains(&p.hash) {
            let done = Pulled { hash: p.hash, received: entry.size, state: PullState::Done, liars: Vec::new() };
            return Some((channel, Response::Pulled(done)));
        }
        if let Some(run) = lease.pulls.0.get_mut(&p.hash) {
            let received = written(&run.copy);
            if let Some(older) = run.waiter.replace(channel) {
                self.ctx.respond(older, running(p.hash, received));
            }
            self.ctx.report_after(POLL, Completion::PullDue { cluster: p.cluster, hash: p.hash });
            return None;
        }
        if p.from.len() > MAX_SOURCES {
            let why = format!("{} sources named; at most {MAX_SOURCES}", p.from.len());
            return Some((channel, refuse(RefusalKind::BadRequest, why)));
        }
        if uploads >= limit || !lease.uploads.would_open(&p.hash) {
            let why = if uploads >= limit {
                super::limits::over("files arriving at once", limit, &name)
            } else {
                Refusal::new(RefusalKind::BadFile, format!("file {} is being sent or was refused", entry.name))
            };
            return Some((channel, Response::Refused(why)));
        }
        let me = self.ctx.net.local_peer_id();
        let sources = parse_sources(&p.from, me);
        let copy = Current::default();
        let (net, store, done) = (self.ctx.net.clone(), self.ctx.store.clone(), self.ctx.done.clone());
        let (cluster, hash, got) = (p.cluster, p.hash, copy.clone());
        let task = tokio::spawn(async move {
            let mut liars = Vec::new();
            let outcome = pull_file(&net, &store, cluster, share, &entry, sources, &got, &mut liars).await;
            let _ = done.send(Completion::Pulled(PullDone { cluster, hash, outcome, liars }));
        });
        lease.pulls.0.insert(hash, Running { copy, waiter: Some(channel), task: task.abort_handle() });
        self.ctx.report_after(POLL, Completion::PullDue { cluster, hash });
        None
    }

    /// A pull's waiting client is due an answer: how far it got.
    pub(super) fn pull_due(&mut self, cluster: ClusterId, hash: FileHash) {
        let Some(run) = self.leases.0.get_mut(&cluster).and_then(|c| c.pulls.0.get_mut(&hash)) else { return };
        if let Some(w) = run.waiter.take() {
            self.ctx.respond(w, running(hash, written(&run.copy)));
        }
    }

    /// A pull ended: the file counts as staged, or the client hears why not.
    pub(super) fn pulled(&mut self, done: PullDone) {
        let PullDone { cluster, hash, outcome, liars } = done;
        let Some(c) = self.leases.0.get_mut(&cluster) else { return };
        let Some(mut run) = c.pulls.0.remove(&hash) else { return };
        let liars = liars.into_iter().map(PeerId::to_bytes).collect();
        let response = match outcome {
            Ok(size) => {
                c.uploads.staged.insert(hash);
                if let Some(m) = &self.ctx.metrics {
                    m.staged(size);
                }
                info!(cluster = %cluster.tag(), %hash, size, "file pulled from another node");
                Response::Pulled(Pulled { hash, received: size, state: PullState::Done, liars })
            }
            Err(reason) => {
                warn!(cluster = %cluster.tag(), %hash, cause = %reason, "no node gave the file");
                Response::Pulled(Pulled { hash, received: 0, state: PullState::Failed(reason), liars })
            }
        };
        if let Some(w) = run.waiter.take() {
            self.ctx.respond(w, response);
        }
    }

    /// Serves a chunk of one of a cluster's files to another node of the cluster (it
    /// presents the cluster's share token): from the store, or from a copy still arriving
    /// as far as it is written (`NotYet` beyond).
    pub(super) fn serve_shared(
        &mut self,
        f: Fetch,
        share: ShareToken,
        channel: ReplyTo,
    ) -> Option<(ReplyTo, Response)> {
        let member = |c: &&super::lease::Lease| !c.released && c.share.is_some_and(|s| s.matches(&share));
        let Some(lease) = self.leases.0.get(&f.cluster).filter(member) else {
            let why = format!("cluster {} is not shared with you on this node", f.cluster.tag());
            return Some((channel, refuse(RefusalKind::NotOwner, why)));
        };
        let Some(entry) = lease.file(&f.hash).cloned() else {
            let why = format!("file {} is not one of the cluster's files", f.hash);
            return Some((channel, refuse(RefusalKind::BadFile, why)));
        };
        // A copy still arriving here is served as far as it is written: a puller may trail
        // it, so that a file spreads while the client is still sending it.
        let partial = lease.uploads.partial(&f.hash).or_else(|| lease.pulls.partial(&f.hash));
        let (store, name) = (self.ctx.store.clone(), self.cfg.name.clone());
        self.ctx.respond_blocking(channel, format!("file {}", f.hash), move || {
            let Some(want) = entry.size.checked_sub(f.offset).map(|left| left.min(CHUNK_SIZE as u64)) else {
                return refuse(RefusalKind::BadFile, format!("offset {} is past the end of {}", f.offset, entry.name));
            };
            let data = |data| Response::Data(dispy_protocol::Data { hash: f.hash, offset: f.offset, data });
            let cannot = |e: std::io::Error| refuse(RefusalKind::Internal, format!("cannot read {}: {e}", entry.name));
            if store.has(&entry.hash, entry.size) {
                return super::jobfiles::read_chunk(&store, &f.hash, f.offset).map_or_else(cannot, data);
            }
            // A copy not begun yet is as good as one under way: the client named this
            // node because it is about to receive the file (a puller gives up on a copy
            // that never grows).
            let Some(partial) = partial else {
                let why = format!("node {name} has not begun receiving {}", entry.name);
                return refuse(RefusalKind::NotYet, why);
            };
            let have = partial.written();
            if f.offset + want > have {
                let why = format!("node {name} holds {have} of {} bytes of {} so far", entry.size, entry.name);
                return refuse(RefusalKind::NotYet, why);
            }
            match read_at(&partial.path, f.offset, want) {
                Ok(bytes) => data(bytes),
                // Complete meanwhile, and moved into the store.
                Err(_) => super::jobfiles::read_chunk(&store, &f.hash, f.offset).map_or_else(cannot, data),
            }
        });
        None
    }
}

/// `len` bytes of the file at `path` from `offset` (on the blocking pool).
fn read_at(path: &std::path::Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut data = vec![0; usize::try_from(len).map_err(std::io::Error::other)?];
    file.read_exact_at(&mut data, offset)?;
    Ok(data)
}

/// The sources a client named that parse, without this node; at most [`MAX_ADDRS`] each.
fn parse_sources(from: &[Source], me: PeerId) -> Vec<(PeerId, Vec<Multiaddr>)> {
    from.iter()
        .filter_map(|s| {
            let peer = PeerId::from_bytes(&s.peer).ok().filter(|p| *p != me)?;
            let addrs = s.addrs.iter().filter_map(|a| Multiaddr::try_from(a.clone()).ok()).take(MAX_ADDRS).collect();
            Some((peer, addrs))
        })
        .collect()
}

/// Why one source did not give the file.
enum SourceError {
    /// It sent bytes that are not the file's.
    Lied(String),
    /// It refused, or could not be reached.
    Failed(String),
    /// This node could not store the file: no other source would fare better.
    Local(String),
}

/// Fetches `entry` from the first source that gives it whole and true; the sources that
/// sent wrong bytes go to `liars`.
#[allow(clippy::too_many_arguments)]
async fn pull_file(
    net: &NetHandle,
    store: &Store,
    cluster: ClusterId,
    share: ShareToken,
    entry: &FileEntry,
    sources: Vec<(PeerId, Vec<Multiaddr>)>,
    copy: &Current,
    liars: &mut Vec<PeerId>,
) -> Result<u64, String> {
    let mut reasons = Vec::new();
    for (peer, addrs) in sources {
        match from_one(net, store, cluster, share, entry, peer, addrs, copy).await {
            Ok(()) => return Ok(entry.size),
            Err(SourceError::Lied(why)) => {
                warn!(%peer, file = %entry.name, cause = %why, "a node sent wrong bytes for a file");
                reasons.push(format!("node {peer} sent wrong bytes: {why}"));
                liars.push(peer);
            }
            Err(SourceError::Failed(why)) => reasons.push(format!("node {peer}: {why}")),
            Err(SourceError::Local(why)) => {
                reasons.push(why);
                break;
            }
        }
    }
    if reasons.is_empty() {
        reasons.push("no usable source was named".into());
    }
    Err(reasons.join("; "))
}

/// Asks a source for the chunk at `offset`, after `wait`.
async fn ask(
    net: NetHandle,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    fetch: Request,
    offset: u64,
    wait: Duration,
) -> (u64, crate::error::Result<Response>) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    (offset, net.request_via(peer, addrs, fetch).await)
}

/// Fetches `entry` from one source, [`CHUNKS_IN_FLIGHT`] chunks at a time, writing them in
/// order on the blocking pool.
#[allow(clippy::too_many_arguments)]
async fn from_one(
    net: &NetHandle,
    store: &Store,
    cluster: ClusterId,
    share: ShareToken,
    entry: &FileEntry,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    copy: &Current,
) -> Result<(), SourceError> {
    let (hash, size) = (entry.hash, entry.size);
    let begin = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.begin(hash, size)).await
    };
    let mut upload: Box<Upload> = match begin {
        Ok(Ok(u)) => Box::new(u),
        Ok(Err(e)) => return Err(SourceError::Local(format!("cannot store the file: {e}"))),
        Err(e) => return Err(SourceError::Local(format!("cannot store the file: {e}"))),
    };
    *copy.lock().unwrap_or_else(PoisonError::into_inner) = Some(upload.partial());
    let mut next = 0u64;
    let mut last_data = Instant::now();
    let mut asked_all = false;
    let mut in_flight = FuturesUnordered::new();
    let mut arrived: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    loop {
        while !asked_all && in_flight.len() + arrived.len() < CHUNKS_IN_FLIGHT {
            let fetch = Request::Fetch(Fetch { cluster, hash, offset: next, share: Some(share) });
            let (net, addrs, offset) = (net.clone(), addrs.clone(), next);
            in_flight.push(ask(net, peer, addrs, fetch, offset, Duration::ZERO));
            next = next.saturating_add(CHUNK_SIZE as u64);
            asked_all = next >= size;
        }
        let Some((offset, answer)) = in_flight.next().await else {
            return Err(SourceError::Failed("ended before the file was whole".into()));
        };
        match answer {
            Ok(Response::Data(d)) if d.hash == hash && d.offset == offset => {
                let want = usize::try_from((size - offset).min(CHUNK_SIZE as u64)).unwrap_or(CHUNK_SIZE);
                if d.data.len() != want {
                    let why = format!("a chunk at {offset} of {} bytes, not {want}", d.data.len());
                    return Err(SourceError::Lied(why));
                }
                arrived.insert(offset, d.data);
                last_data = Instant::now();
            }
            // The source's own copy is still arriving: ask again shortly, while it grows.
            Ok(Response::Refused(r)) if r.kind == RefusalKind::NotYet => {
                if last_data.elapsed() > STALL {
                    return Err(SourceError::Failed(format!("its copy stopped growing: {}", r.message)));
                }
                let fetch = Request::Fetch(Fetch { cluster, hash, offset, share: Some(share) });
                in_flight.push(ask(net.clone(), peer, addrs.clone(), fetch, offset, AGAIN));
            }
            Ok(Response::Data(_)) => return Err(SourceError::Lied("a chunk of another file or place".into())),
            Ok(Response::Refused(r)) => return Err(SourceError::Failed(r.message)),
            Ok(other) => return Err(SourceError::Failed(format!("unexpected answer {other:?}"))),
            Err(e) => return Err(SourceError::Failed(e.to_string())),
        }
        // Write what is in order.
        while let Some(data) = arrived.remove(&upload.received()) {
            let at = upload.received();
            let (back, outcome) = tokio::task::spawn_blocking(move || {
                let outcome = upload.write(at, &data);
                (upload, outcome)
            })
            .await
            .map_err(|e| SourceError::Local(format!("cannot store the file: {e}")))?;
            upload = back;
            match outcome {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(why) if upload.mismatched() => return Err(SourceError::Lied(why)),
                Err(why) => return Err(SourceError::Local(why)),
            }
        }
    }
}
