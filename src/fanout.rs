//! Fan-out: a cluster's large files reach its nodes through each other. The client sends a
//! file to one node; every other node that lacks it pulls it from the nodes that hold a
//! verified copy (`Pull`), so the client's link carries the file about once per cluster,
//! not once per node.
//!
//! Who holds what is the client's own knowledge ([`Holders`]): it staged or had pulled
//! every copy, so it needs no lookup (no Kademlia provider records to publish, trust or
//! expire). A copy still arriving is already a source: the next node trails it, chunk by
//! chunk, so the file spreads while the client is still sending it and the last node holds
//! it soon after the first. A node serves at most [`SERVING`] pulls at once, so copies
//! spread as a tree rather than a star on the first node. A node waits for a copy rather
//! than take the client's link again, unless every copy stalls for [`STALL`]. A node that
//! sends wrong bytes is reported by the puller and never named as a source again.

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
    /// Pulls each node is serving now.
    serving: HashMap<PeerId, usize>,
    /// Copies on their way (from the client or a pull).
    coming: HashMap<PeerId, Coming>,
}

/// A copy on its way to a node, which other nodes may already pull from as it grows.
struct Coming {
    addr: Option<Multiaddr>,
    /// Bytes the node holds so far, and when that last changed. A pull's progress is only
    /// heard every few seconds: a pull counts as growing while it runs (it ends by itself
    /// when its source stalls).
    bytes: Arc<AtomicU64>,
    last: u64,
    at: Instant,
    pulled: bool,
}

impl Copies {
    /// `peer`'s copy is on its way from `now`; returns its byte counter.
    fn start(&mut self, peer: PeerId, addr: Option<&Multiaddr>, pulled: bool, now: Instant) -> Arc<AtomicU64> {
        let bytes = Arc::<AtomicU64>::default();
        let coming = Coming { addr: addr.cloned(), bytes: bytes.clone(), last: 0, at: now, pulled };
        self.coming.insert(peer, coming);
        bytes
    }
}

impl Coming {
    fn growing(&mut self, now: Instant) -> bool {
        let bytes = self.bytes.load(Ordering::Relaxed);
        if bytes != self.last {
            (self.last, self.at) = (bytes, now);
        }
        self.pulled || now.saturating_duration_since(self.at) < STALL
    }
}

/// What a node's staging of one file does next.
enum Plan {
    /// Pull from these holders (the first is counted as serving); the counter is this
    /// node's copy's, as others see it.
    Pull(Vec<Source>, PeerId, Arc<AtomicU64>),
    /// A copy is under way and no holder is free: look again shortly.
    Wait,
    /// Take it from the client; the counter is this node's copy's.
    Send(Arc<AtomicU64>),
}

impl Holders {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holders first (least busy first), then copies under way that still grow: a node may
    /// trail a copy that is still arriving, so the file spreads while the client sends it.
    ///
    /// The node's own copy counts as under way from this moment (a pull or a send), so that
    /// nodes planning at the same instant never both take the client's link.
    fn plan(&self, hash: FileHash, peer: PeerId, addr: Option<&Multiaddr>, now: Instant) -> Plan {
        let mut inner = self.lock();
        let Inner { files, liars } = &mut *inner;
        let copies = files.entry(hash).or_default();
        let busy = |p: &PeerId| copies.serving.get(p).copied().unwrap_or(0);
        let mut candidates: Vec<(u8, usize, PeerId, Option<Multiaddr>)> = Vec::new();
        // A copy without an address is on a node reached through a relay: never a source.
        for (p, a) in &copies.held {
            if *p != peer && !liars.contains(p) && a.is_some() {
                candidates.push((0, busy(p), *p, a.clone()));
            }
        }
        let mut waiting_for = false;
        for (p, c) in copies.coming.iter_mut() {
            if *p != peer && !liars.contains(p) && c.addr.is_some() && c.growing(now) {
                waiting_for = true;
                // The client's own copies first: a shallower tree lags less.
                candidates.push((if c.pulled { 2 } else { 1 }, busy(p), *p, c.addr.clone()));
            }
        }
        let usable = candidates.iter().any(|c| c.0 == 0) || waiting_for;
        candidates.retain(|c| c.1 < SERVING);
        candidates.sort_by_key(|c| (c.0, c.1));
        if let Some(first) = candidates.first().map(|c| c.2) {
            let sources = candidates
                .iter()
                .take(dispy_protocol::share::MAX_SOURCES)
                .map(|(_, _, p, a)| Source { peer: p.to_bytes(), addrs: a.iter().map(|a| a.to_vec()).collect() })
                .collect();
            *copies.serving.entry(first).or_default() += 1;
            return Plan::Pull(sources, first, copies.start(peer, addr, true, now));
        }
        if usable {
            return Plan::Wait;
        }
        Plan::Send(copies.start(peer, addr, false, now))
    }

    /// `peer`'s copy of `hash` is on its way (`pulled`: from other nodes); returns its byte
    /// counter.
    fn coming(&self, hash: FileHash, peer: PeerId, addr: Option<&Multiaddr>, pulled: bool) -> Arc<AtomicU64> {
        self.lock().files.entry(hash).or_default().start(peer, addr, pulled, Instant::now())
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
        match holders.plan(hash, peer, addr, Instant::now()) {
            Plan::Wait => tokio::time::sleep(WAIT_STEP).await,
            Plan::Pull(sources, first, progress) => {
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
                            let progress = holders.coming(hash, peer, addr, false);
                            return send(net, holders, &progress, peer, addr, cluster, file).await;
                        }
                    }
                    Err(PullError::Unsupported(why)) => {
                        info!(node = %peer, cause = %why, "the node does not pull; sending the file");
                        let progress = holders.coming(hash, peer, addr, false);
                        return send(net, holders, &progress, peer, addr, cluster, file).await;
                    }
                    Err(PullError::Remote(why)) => return Err(SendError::Remote(why)),
                }
            }
            Plan::Send(progress) => return send(net, holders, &progress, peer, addr, cluster, file).await,
        }
    }
}

/// Sends `file` from the client; `progress` is the copy's counter, from [`Holders::coming`]
/// or a plan.
async fn send(
    net: &NetHandle,
    holders: &Holders,
    progress: &AtomicU64,
    peer: PeerId,
    addr: Option<&Multiaddr>,
    cluster: ClusterId,
    file: &LocalFile,
) -> Result<u64, SendError> {
    let outcome = stage::send_file(net, peer, cluster, file, progress).await;
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

    /// Where a node is reached (directly; a copy with no address is behind a relay).
    static ADDR: std::sync::LazyLock<Multiaddr> =
        std::sync::LazyLock::new(|| "/ip4/10.0.0.1/tcp/9700".parse().expect("addr"));

    fn at() -> Option<&'static Multiaddr> {
        Some(&ADDR)
    }

    #[test]
    fn copies_spread_as_a_tree_that_trails_the_first_and_liars_are_passed_over() {
        let h = Holders::default();
        let hash = FileHash([1; 32]);
        let (a, b, c, d, e) = (peer(), peer(), peer(), peer(), peer());
        let t0 = Instant::now();
        // Nobody holds it: the first node takes it from the client...
        assert!(matches!(h.plan(hash, a, at(), t0), Plan::Send(_)));
        h.coming(hash, a, at(), false).store(1, Ordering::Relaxed);
        // ...and the next two trail that copy as it arrives; a serves no more than two.
        let Plan::Pull(_, first, _) = h.plan(hash, b, at(), t0) else { panic!("b pulls") };
        assert_eq!(first, a);
        let Plan::Pull(_, first, _) = h.plan(hash, c, at(), t0) else { panic!("c pulls") };
        assert_eq!(first, a);
        h.coming(hash, b, at(), true);
        h.coming(hash, c, at(), true);
        // The fourth trails b or c, the copies under way that serve nobody yet.
        let Plan::Pull(sources, first, _) = h.plan(hash, d, at(), t0) else { panic!("d pulls") };
        assert!(first == b || first == c, "{first}");
        assert_eq!(sources.len(), 2, "a is busy");
        // a's copy arrives; b lied to d: b is never a source again.
        h.arrived(hash, a, at(), true);
        h.served(hash, a, &[]);
        h.served(hash, first, &[b]);
        let Plan::Pull(sources, first, _) = h.plan(hash, e, at(), t0) else { panic!("e pulls") };
        assert_eq!(first, a, "a holder before a copy under way");
        assert!(sources.iter().all(|s| s.peer != b.to_bytes()));
        assert_eq!(h.liars(), [b]);

        // Two nodes planning at once: one takes the client's link, the other trails it.
        let other = FileHash([2; 32]);
        assert!(matches!(h.plan(other, a, at(), t0), Plan::Send(_)));
        assert!(matches!(h.plan(other, c, at(), t0), Plan::Pull(_, first, _) if first == a));
        h.arrived(other, c, at(), false);
        h.served(other, a, &[]);
        // A copy from the client that stops growing is not waited for.
        assert!(matches!(h.plan(other, b, at(), Instant::now() + STALL + Duration::from_secs(1)), Plan::Send(_)));
    }

    #[test]
    fn a_copy_on_a_node_behind_a_relay_is_never_a_source() {
        let h = Holders::default();
        let hash = FileHash([3; 32]);
        let (relayed, other) = (peer(), peer());
        let t0 = Instant::now();
        assert!(matches!(h.plan(hash, relayed, None, t0), Plan::Send(_)));
        h.coming(hash, relayed, None, false).store(1, Ordering::Relaxed);
        assert!(matches!(h.plan(hash, other, at(), t0), Plan::Send(_)), "the relay would carry it");
        h.arrived(hash, relayed, None, true);
        let third = peer();
        let Plan::Pull(_, first, _) = h.plan(hash, third, at(), t0) else { panic!("pulls from the direct copy") };
        assert_eq!(first, other);
    }
}
