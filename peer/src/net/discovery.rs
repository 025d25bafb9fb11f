//! Pure helpers for finding peers: dial backoff and which addresses to believe.

use super::bounded::Budget;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;
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

/// Which peers found by mDNS to dial. mDNS answers are unauthenticated and free to forge:
/// a flood of made-up peer ids must cost a bounded map and a few dials a second, never a
/// dial per answer. Real peers are few and answer again every query interval, so one that
/// is skipped now is dialed at its next answer.
#[derive(Debug)]
pub(crate) struct LanDials {
    backoff: HashMap<PeerId, Backoff>,
    budget: Budget,
}

impl LanDials {
    /// Peers remembered for backoff.
    const PEERS: usize = 256;
    /// A LAN of a few hundred machines comes up within seconds at this pace.
    const BURST: u32 = 32;
    const PER_SEC: u32 = 8;

    pub(crate) fn new(now: Instant) -> Self {
        LanDials { backoff: HashMap::new(), budget: Budget::new(Self::BURST, Self::PER_SEC, now) }
    }

    /// Whether to dial `peer`, just found on the LAN, now (recorded as an attempt if so).
    pub(crate) fn may_dial(&mut self, peer: PeerId, now: Instant) -> bool {
        if self.backoff.len() >= Self::PEERS && !self.backoff.contains_key(&peer) {
            // Keep the peers whose backoff still runs; the others start afresh if seen again.
            self.backoff.retain(|_, b| !b.due(now));
            if self.backoff.len() >= Self::PEERS {
                return false;
            }
        }
        if !self.backoff.get(&peer).is_none_or(|b| b.due(now)) || !self.budget.take(now) {
            return false;
        }
        self.backoff.entry(peer).or_insert_with(|| Backoff::new(now)).attempted(now);
        true
    }

    /// A dial to `peer` failed: it waits longer before the next.
    pub(crate) fn failed(&mut self, peer: &PeerId, now: Instant) {
        if let Some(b) = self.backoff.get_mut(peer) {
            b.failed(now);
        }
    }

    /// `peer` is connected: nothing to remember.
    pub(crate) fn connected(&mut self, peer: &PeerId) {
        self.backoff.remove(peer);
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
/// over loopback too; link-local and unspecified addresses are never routable.
pub(crate) fn worth_dialing(addr: &Multiaddr, reached_over_loopback: bool) -> bool {
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

/// Removes a trailing `/p2p/<id>` so addresses compare equal however they were written.
pub(crate) fn without_peer(addr: &Multiaddr) -> Multiaddr {
    addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()
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
    fn a_flood_of_spoofed_lan_peers_costs_a_bounded_map_and_few_dials() {
        let t0 = Instant::now();
        let mut lan = LanDials::new(t0);
        let mut dials = 0;
        // 100 000 made-up peers over 10 s.
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            if lan.may_dial(PeerId::random(), now) {
                dials += 1;
            }
            assert!(lan.backoff.len() <= LanDials::PEERS);
        }
        assert!(dials <= LanDials::BURST + 10 * LanDials::PER_SEC + 1, "{dials} dials");
        // A real peer found after the flood is still dialed once the budget refills.
        let later = t0 + Duration::from_secs(60);
        let real = PeerId::random();
        assert!(lan.may_dial(real, later));
        assert!(!lan.may_dial(real, later), "one attempt at a time");
        lan.failed(&real, later);
        lan.connected(&real);
        assert!(!lan.backoff.contains_key(&real));
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
