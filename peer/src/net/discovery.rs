//! Pure helpers for finding peers: dial backoff and which addresses to believe.

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
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
        self.next = now + super::behaviour::CONNECTION_TIMEOUT + Duration::from_secs(1);
    }

    /// Back to eager dialing (after a connection that worked).
    pub(crate) fn reset(&mut self, now: Instant) {
        *self = Backoff::new(now);
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
