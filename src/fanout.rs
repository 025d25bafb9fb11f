//! Fan-out: a cluster's large files reach its nodes through each other. The client sends a
//! file to one node; every other node that lacks it pulls it from the nodes that hold a
//! verified copy (`Pull`), so the client's link carries the file about once per cluster,
//! not once per node.
//!
//! Who holds what is the client's own knowledge ([`Holders`]): it staged or had pulled
//! every copy, so it needs no lookup (no Kademlia provider records to publish, trust or
//! expire). A holder serves at most [`SERVING`] pulls at once, so copies spread as a tree
//! (each new copy is a new source) rather than a star on the first node. A node waits for a
//! copy under way rather than take the client's link again, unless that copy stalls for
//! [`STALL`]. A node that sends wrong bytes is reported by the puller and never named as a
//! source again.

use crate::stage::{self, LocalFile, SendError};
use dispy_node::net::NetHandle;
use dispy_protocol::{ClusterId, FileHash, Pull, PullState, Request, Response, Source};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Files below this go from the client to each node: their time is a few round trips.
pub(crate) const SHARE_MIN_BYTES: u64 = 4 << 20;

/// Pulls one holder serves at once, at most.
pub(crate) const SERVING: usize = 2;

/// A copy under way that has not grown for this long is no longer waited for.
pub(crate) const STALL: Duration = Duration::from_secs(5);

/// How often a node waiting for a copy looks again.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// Who holds which of the cluster's files; shared by the stagings of all its nodes.
#[derive(Clone, Default)]
pub(crate) struct Holders(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    files: HashMap<FileHash, Copies>,
    /// Nodes that sent wrong bytes: never a source again.
    liars: HashSet<PeerId>,
}

#[derive(Default)]
struct Copies {
    /// Nodes with a verified copy, and where the client reaches them.
    held: Vec<(PeerId, Option<Multiaddr>)>,
    /// Pulls each holder is serving now.
    serving: HashMap<PeerId, usize>,
    /// Copies on their way (from the client or a pull): bytes so far, and when they last
    /// grew.
    coming: HashMap<PeerId, (Arc<AtomicU64>, u64, Instant)>,
}

/// What a node's staging of one file does next.
enum Plan {
    /// Pull from these holders (the first is counted as serving).
    Pull(Vec<Source>, PeerId),
    /// A copy is under way and no holder is free: look again shortly.
    Wait,
    /// Take it from the client.
    Send,
}

impl Holders {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn plan(&self, hash: FileHash, peer: PeerId, now: Instant) -> Plan {
        let mut inner = self.lock();
        let Inner { files, liars } = &mut *inner;
        let copies = files.entry(hash).or_default();
        let mut free: Vec<&(PeerId, Option<Multiaddr>)> = copies
            .held
            .iter()
            .filter(|(p, _)| *p != peer && !liars.contains(p))
            .filter(|(p, _)| copies.serving.get(p).copied().unwrap_or(0) < SERVING)
            .collect();
        free.sort_by_key(|(p, _)| copies.serving.get(p).copied().unwrap_or(0));
        if let Some(first) = free.first().map(|(p, _)| *p) {
            let sources = free
                .iter()
                .take(dispy_protocol::share::MAX_SOURCES)
                .map(|(p, a)| Source { peer: p.to_bytes(), addrs: a.iter().map(|a| a.to_vec()).collect() })
                .collect();
            *copies.serving.entry(first).or_default() += 1;
            return Plan::Pull(sources, first);
        }
        // Copies under way that still grow are worth waiting for.
        for (bytes, last, at) in copies.coming.values_mut() {
            let now_bytes = bytes.load(Ordering::Relaxed);
            if now_bytes != *last {
                (*last, *at) = (now_bytes, now);
            }
        }
        let growing = copies.coming.iter().any(|(p, (_, _, at))| *p != peer && now.duration_since(*at) < STALL);
        let held_by_others = copies.held.iter().any(|(p, _)| *p != peer && !liars.contains(p));
        if growing || held_by_others { Plan::Wait } else { Plan::Send }
    }

    /// `peer`'s copy of `hash` is on its way; returns its byte counter.
    fn coming(&self, hash: FileHash, peer: PeerId) -> Arc<AtomicU64> {
        let counter = Arc::new(AtomicU64::new(0));
        let entry = (counter.clone(), 0, Instant::now());
        self.lock().files.entry(hash).or_default().coming.insert(peer, entry);
        counter
    }

    /// `peer`'s copy ended: held (verified) or not.
    fn arrived(&self, hash: FileHash, peer: PeerId, addr: Option<&Multiaddr>, held: bool) {
        let mut inner = self.lock();
        let copies = inner.files.entry(hash).or_default();
        copies.coming.remove(&peer);
        if held && !copies.held.iter().any(|(p, _)| *p == peer) {
            copies.held.push((peer, addr.cloned()));
        }
    }

    /// A pull from `source` ended; `liars` sent wrong bytes.
    fn served(&self, hash: FileHash, source: PeerId, liars: &[PeerId]) {
        let mut inner = self.lock();
        if let Some(n) = inner.files.entry(hash).or_default().serving.get_mut(&source) {
            *n = n.saturating_sub(1);
        }
        inner.liars.extend(liars.iter().copied());
    }

    /// Nodes that sent wrong bytes so far.
    #[cfg(test)]
    fn liars(&self) -> Vec<PeerId> {
        self.lock().liars.iter().copied().collect()
    }
}

/// Stages one of the cluster's files on `peer`: pulled from other nodes when some hold it
/// (or will shortly), else sent by the client; `fanout` off: always sent by the client.
/// Returns the bytes the client sent.
pub(crate) async fn stage_file(
    net: &NetHandle,
    holders: &Holders,
    fanout: bool,
    peer: PeerId,
    addr: Option<&Multiaddr>,
    cluster: ClusterId,
    file: &LocalFile,
) -> Result<u64, SendError> {
    let hash = file.entry.hash;
    if !fanout || file.entry.size < SHARE_MIN_BYTES {
        stage::send_file(net, peer, cluster, file, &AtomicU64::new(0)).await?;
        holders.arrived(hash, peer, addr, true);
        return Ok(file.entry.size);
    }
    loop {
        match holders.plan(hash, peer, Instant::now()) {
            Plan::Wait => tokio::time::sleep(WAIT_STEP).await,
            Plan::Pull(sources, first) => {
                let progress = holders.coming(hash, peer);
                let outcome = pull(net, peer, cluster, hash, sources, &progress).await;
                let liars = match &outcome {
                    Err(PullError::Failed { liars, .. } | PullError::Lied(liars)) => liars.clone(),
                    _ => Vec::new(),
                };
                holders.served(hash, first, &liars);
                let held = matches!(outcome, Ok(()) | Err(PullError::Lied(_)));
                holders.arrived(hash, peer, addr, held);
                match outcome {
                    Ok(()) => return Ok(0),
                    Err(PullError::Lied(liars)) => {
                        warn!(node = %peer, file = %file.entry.name, ?liars, "nodes sent wrong bytes for a file; they are no longer asked for it");
                        return Ok(0);
                    }
                    Err(PullError::Failed { why, liars }) => {
                        warn!(node = %peer, file = %file.entry.name, cause = %why, ?liars, "a pull from other nodes failed; trying again");
                        if liars.is_empty() {
                            // Not a liar's doing (the source left, the node's disk): the
                            // client sends it, rather than ask the same again.
                            return send(net, holders, peer, addr, cluster, file).await;
                        }
                    }
                    Err(PullError::Unsupported(why)) => {
                        info!(node = %peer, cause = %why, "the node does not pull; sending the file");
                        return send(net, holders, peer, addr, cluster, file).await;
                    }
                    Err(PullError::Remote(why)) => return Err(SendError::Remote(why)),
                }
            }
            Plan::Send => return send(net, holders, peer, addr, cluster, file).await,
        }
    }
}

async fn send(
    net: &NetHandle,
    holders: &Holders,
    peer: PeerId,
    addr: Option<&Multiaddr>,
    cluster: ClusterId,
    file: &LocalFile,
) -> Result<u64, SendError> {
    let progress = holders.coming(file.entry.hash, peer);
    let outcome = stage::send_file(net, peer, cluster, file, &progress).await;
    holders.arrived(file.entry.hash, peer, addr, outcome.is_ok());
    outcome.map(|()| file.entry.size)
}

fn peer_ids(bytes: &[Vec<u8>]) -> Vec<PeerId> {
    bytes.iter().filter_map(|b| PeerId::from_bytes(b).ok()).collect()
}

/// Why a pull did not give the node its file, or what it found on the way.
enum PullError {
    /// The node holds the file, from an honest source after these sent wrong bytes.
    Lied(Vec<PeerId>),
    /// No source gave it; `liars` sent wrong bytes.
    Failed { why: String, liars: Vec<PeerId> },
    /// The node refused to pull (an older node, or one that does not share).
    Unsupported(String),
    /// The node could not be reached.
    Remote(String),
}

/// Asks `peer` to pull `hash` from `sources`, and waits for the outcome (the node answers
/// at least every few seconds while it pulls; a pull that stops growing is given up).
async fn pull(
    net: &NetHandle,
    peer: PeerId,
    cluster: ClusterId,
    hash: FileHash,
    sources: Vec<Source>,
    progress: &AtomicU64,
) -> Result<(), PullError> {
    let request = Request::Pull(Pull { cluster, hash, from: sources });
    let mut last = None;
    loop {
        match net.request(peer, request.clone()).await {
            Ok(Response::Pulled(p)) => match p.state {
                PullState::Done if p.liars.is_empty() => return Ok(()),
                PullState::Done => return Err(PullError::Lied(peer_ids(&p.liars))),
                PullState::Running => {
                    if last == Some(p.received) {
                        let why = format!("no byte arrived in a while ({} so far)", p.received);
                        return Err(PullError::Failed { why, liars: Vec::new() });
                    }
                    progress.store(p.received, Ordering::Relaxed);
                    last = Some(p.received);
                }
                PullState::Failed(why) => return Err(PullError::Failed { why, liars: peer_ids(&p.liars) }),
            },
            Ok(Response::Refused(r)) => return Err(PullError::Unsupported(r.message)),
            Ok(other) => return Err(PullError::Unsupported(format!("unexpected answer to a pull: {other:?}"))),
            Err(e) => return Err(PullError::Remote(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn copies_spread_as_a_tree_and_liars_are_passed_over() {
        let h = Holders::default();
        let hash = FileHash([1; 32]);
        let (a, b, c, d) = (peer(), peer(), peer(), peer());
        let t0 = Instant::now();
        // Nobody holds it: the first node takes it from the client; others wait for it.
        assert!(matches!(h.plan(hash, a, t0), Plan::Send));
        let sent = h.coming(hash, a);
        sent.store(1, Ordering::Relaxed);
        assert!(matches!(h.plan(hash, b, t0), Plan::Wait));
        // A copy that stops growing is not waited for.
        assert!(matches!(h.plan(hash, b, t0 + STALL + Duration::from_secs(1)), Plan::Send));
        h.arrived(hash, a, None, true);
        // a serves two pulls at once, then the third waits.
        let Plan::Pull(_, first) = h.plan(hash, b, t0) else { panic!("b pulls") };
        assert_eq!(first, a);
        assert!(matches!(h.plan(hash, c, t0), Plan::Pull(..)));
        h.coming(hash, b);
        assert!(matches!(h.plan(hash, d, t0), Plan::Wait));
        // b's copy arrives: b is a source now, and the least busy goes first.
        h.served(hash, a, &[]);
        h.arrived(hash, b, None, true);
        let Plan::Pull(sources, first) = h.plan(hash, d, t0) else { panic!("d pulls") };
        assert_eq!(first, b);
        assert_eq!(sources.len(), 2);
        // b lied to d: never a source again.
        h.served(hash, b, &[b]);
        let Plan::Pull(sources, first) = h.plan(hash, d, t0) else { panic!("d pulls again") };
        assert_eq!(first, a);
        assert_eq!(sources.len(), 1);
        assert_eq!(h.liars(), [b]);
    }
}
