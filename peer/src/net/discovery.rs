//! Pure helpers for finding peers: dial backoff and which addresses to believe.

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Exponential backoff for re-dialing an address that failed, so a peer with another
/// secret or a node that is down costs a dial now and then, never a storm.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Instant,
    delay: Duration,
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(30);

    pub(crate) fn new(now: Instant) -> Self {
        Backoff { next: now, delay: Self::FIRST, failures: 0 }
    }

    /// Whether a dial may be tried now.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records a failure: the next try waits twice as long as the last, up to a cap.
    pub(crate) fn failed(&mut self, now: Instant) {
        self.failures += 1;
        self.next = now + self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
    }

    /// Records an attempt in flight: nothing else is tried until it resolves or a while passes.
    pub(crate) fn attempted(&mut self, now: Instant) {
        self.next = now + super::limits::DIAL_TIMEOUT + Duration::from_secs(1);
    }

    /// Back to eager dialing (after a connection that worked).
    pub(crate) fn reset(&mut self, now: Instant) {
        *self = Backoff::new(now);
    }
}

/// Peers a client found (on the LAN or through Kademlia) and will dial: a bounded queue
/// drained a few dozen dials at a time, so that 256 nodes answering one query are all
/// dialed within a second or two and none is dropped, while answers that anyone may forge
/// (mDNS is unauthenticated) cost a bounded queue and at most [`DialQueue::PARALLEL`]
/// dials in flight, never a dial per answer.
#[derive(Debug)]
pub(crate) struct DialQueue {
    queue: VecDeque<PeerId>,
    /// Addresses of each queued peer (empty: ask the swarm's behaviours, i.e. Kademlia).
    queued: HashMap<PeerId, Vec<Multiaddr>>,
    in_flight: HashMap<ConnectionId, PeerId>,
    backoff: HashMap<PeerId, Backoff>,
}

impl DialQueue {
    /// Dials in flight at once: enough to reach a LAN of 256 nodes in a few round trips.
    pub(crate) const PARALLEL: usize = 32;
    /// Peers waiting for a dial; one found while the queue is full is queued again at its
    /// next answer (real peers answer every query).
    pub(crate) const QUEUE: usize = 4096;
    /// Addresses kept per queued peer.
    const ADDRS: usize = 8;

    pub(crate) fn new() -> Self {
        DialQueue { queue: VecDeque::new(), queued: HashMap::new(), in_flight: HashMap::new(), backoff: HashMap::new() }
    }

    /// Queues a dial to `peer` (at `addr` when given) unless one is queued, in flight or
    /// backing off after a failure. Returns whether it is queued now.
    pub(crate) fn offer(&mut self, peer: PeerId, addr: Option<Multiaddr>, now: Instant) -> bool {
        if let Some(addrs) = self.queued.get_mut(&peer) {
            if let Some(a) = addr
                && addrs.len() < Self::ADDRS
                && !addrs.contains(&a)
            {
                addrs.push(a);
            }
            return true;
        }
        if self.in_flight.values().any(|p| *p == peer)
            || !self.backoff.get(&peer).is_none_or(|b| b.due(now))
            || self.queue.len() >= Self::QUEUE
        {
            return false;
        }
        self.queue.push_back(peer);
        self.queued.insert(peer, addr.into_iter().collect());
        true
    }

    /// The next peer to dial, if a dial slot is free; report the dial with [`Self::started`].
    pub(crate) fn next(&mut self) -> Option<(PeerId, Vec<Multiaddr>)> {
        if self.in_flight.len() >= Self::PARALLEL {
            return None;
        }
        let peer = self.queue.pop_front()?;
        let addrs = self.queued.remove(&peer).unwrap_or_default();
        Some((peer, addrs))
    }

    /// A dial to `peer` is in flight as `connection`.
    pub(crate) fn started(&mut self, connection: ConnectionId, peer: PeerId, now: Instant) {
        self.in_flight.insert(connection, peer);
        self.backoff.entry(peer).or_insert_with(|| Backoff::new(now)).attempted(now);
        self.bound_backoff(now);
    }

    /// A dial resolved: connected (the peer's backoff is forgotten) or failed (it waits
    /// longer before the next). Other connections are ignored.
    pub(crate) fn resolved(&mut self, connection: ConnectionId, ok: bool, now: Instant) {
        let Some(peer) = self.in_flight.remove(&connection) else { return };
        if ok {
            self.backoff.remove(&peer);
        } else if let Some(b) = self.backoff.get_mut(&peer) {
            b.failed(now);
        }
    }

    /// Whether nothing waits for a dial slot and no dial is in flight.
    pub(crate) fn idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty()
    }

    /// Peers waiting and dials in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.queue.len(), self.in_flight.len())
    }

    /// Backoff entries are kept only while they still delay something.
    fn bound_backoff(&mut self, now: Instant) {
        if self.backoff.len() > Self::QUEUE {
            self.backoff.retain(|_, b| !b.due(now));
        }
    }
}

/// The IP of a multiaddr, if it has one.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// Whether an address a remote peer reports for itself is worth dialing from here.
/// Loopback addresses of a remote host point at ourselves unless we reached that peer
/// over loopback too; link-local and unspecified addresses are never routable; in-process
/// (`/memory/`) addresses are, within the process (simulations).
pub(crate) fn worth_dialing(addr: &Multiaddr, reached_over_loopback: bool) -> bool {
    if matches!(addr.iter().next(), Some(Protocol::Memory(_))) {
        return true;
    }
    match ip_of(addr) {
        Some(std::net::IpAddr::V4(ip)) => {
            !ip.is_unspecified() && !ip.is_link_local() && (reached_over_loopback || !ip.is_loopback())
        }
        Some(std::net::IpAddr::V6(ip)) => {
            !ip.is_unspecified()
                && (ip.segments()[0] & 0xffc0) != 0xfe80
                && (reached_over_loopback || !ip.is_loopback())
        }
        None => false,
    }
}

/// Removes a trailing `/p2p/<id>` so addresses compare equal however they were written
/// (only the last: in `/ip4/../p2p/<relay>/p2p-circuit` the relay's id is part of the path).
pub(crate) fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        assert!(b.due(t0));
        b.failed(t0);
        assert!(!b.due(t0));
        assert!(b.due(t0 + Duration::from_millis(250)));
        for _ in 0..20 {
            b.failed(t0);
        }
        assert!(b.due(t0 + Duration::from_secs(30)));
        assert_eq!(b.failures, 21);
        b.reset(t0);
        assert!(b.due(t0));
    }

    #[test]
    fn a_burst_of_found_peers_is_dialed_in_bounded_batches_and_none_is_lost() {
        let t0 = Instant::now();
        let mut q = DialQueue::new();
        let peers: Vec<PeerId> = (0..256).map(|_| PeerId::random()).collect();
        for p in &peers {
            assert!(q.offer(*p, Some("/ip4/10.0.0.1/tcp/1".parse().unwrap()), t0));
            // The same answer again (a second address, a repeated query) queues nothing more.
            assert!(q.offer(*p, Some("/ip4/10.0.0.2/tcp/1".parse().unwrap()), t0));
        }
        assert_eq!(q.len(), (256, 0));
        let mut dialed = Vec::new();
        let mut conn = 0;
        while dialed.len() < 256 {
            let mut batch = Vec::new();
            while let Some((p, addrs)) = q.next() {
                assert_eq!(addrs.len(), 2);
                conn += 1;
                let c = ConnectionId::new_unchecked(conn);
                q.started(c, p, t0);
                batch.push((c, p));
            }
            assert!(batch.len() <= DialQueue::PARALLEL, "{} dials at once", batch.len());
            assert!(!batch.is_empty());
            for (c, p) in batch {
                q.resolved(c, true, t0);
                dialed.push(p);
            }
        }
        dialed.sort();
        let mut want = peers.clone();
        want.sort();
        assert_eq!(dialed, want, "every peer dialed once");
        assert_eq!(q.len(), (0, 0));
    }

    #[test]
    fn a_flood_of_forged_peers_costs_a_bounded_queue_and_few_dials_at_once() {
        let t0 = Instant::now();
        let mut q = DialQueue::new();
        for i in 0..100_000u64 {
            q.offer(PeerId::random(), None, t0 + Duration::from_micros(i));
            let (waiting, flying) = q.len();
            assert!(waiting <= DialQueue::QUEUE && flying <= DialQueue::PARALLEL);
        }
        let mut n = 0;
        while let Some((p, _)) = q.next() {
            n += 1;
            q.started(ConnectionId::new_unchecked(n), p, t0);
        }
        assert_eq!(n, DialQueue::PARALLEL);
        // A failed peer backs off; found again at once, it is not queued.
        let p = q.in_flight[&ConnectionId::new_unchecked(1)];
        q.resolved(ConnectionId::new_unchecked(1), false, t0);
        assert!(!q.offer(p, None, t0));
        assert!(q.backoff.len() <= DialQueue::QUEUE + 1);
        // Once its backoff passed (and the queue drained), it is queued again.
        q.queue.clear();
        q.queued.clear();
        assert!(q.offer(p, None, t0 + Duration::from_secs(31)));
    }

    #[test]
    fn remote_loopback_and_link_local_addresses_are_ignored() {
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let lan: Multiaddr = "/ip4/10.77.0.2/tcp/1".parse().unwrap();
        let ll: Multiaddr = "/ip4/169.254.1.1/tcp/1".parse().unwrap();
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/1".parse().unwrap();
        assert!(!worth_dialing(&lo, false));
        assert!(worth_dialing(&lo, true));
        assert!(worth_dialing(&lan, false));
        assert!(!worth_dialing(&ll, true));
        assert!(!worth_dialing(&any, true));
    }
}
