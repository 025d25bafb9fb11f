//! Reaching peers behind NAT: how each peer is reached, which relays a node may reserve a
//! slot on, and the short wait a client gives a relayed link to become direct.
//!
//! libp2p does the work (autonat tells a node it is not reachable, relay v2 gives it an
//! address on a relay, dcutr punches a hole through both NATs); this module holds the
//! policy the event loop applies to their events, as plain state with time passed in.

use super::discovery::{without_peer, worth_dialing};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, relay};
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// How a client reaches a node.
///
/// ```
/// use dispy_node::net::Reach;
/// let relayed: libp2p::Multiaddr = "/ip4/10.0.0.1/tcp/9700/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit".parse().unwrap();
/// assert_eq!(Reach::of(&relayed), Reach::Relayed);
/// assert_eq!(Reach::of(&"/ip4/10.0.0.2/tcp/9700".parse().unwrap()), Reach::Direct);
/// assert_eq!(Reach::HolePunched.to_string(), "hole-punched");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reach {
    /// A connection of its own (LAN, routed, or a node with a public address).
    Direct,
    /// A direct connection opened through both NATs by dcutr, after a relayed start.
    HolePunched,
    /// Every byte passes through a relay node (`serve --relay`).
    Relayed,
}

impl Reach {
    /// The path a connection with this remote address takes.
    pub fn of(remote: &Multiaddr) -> Reach {
        if is_relayed(remote) { Reach::Relayed } else { Reach::Direct }
    }
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reach::Direct => "direct",
            Reach::HolePunched => "hole-punched",
            Reach::Relayed => "relayed",
        })
    }
}

/// Whether an address goes through a relay.
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// What a relay node (`serve --relay`) carries for others. libp2p's defaults (2 minutes,
/// 128 KiB a circuit) suit a relay that only brokers hole punching; a cluster's relay also
/// carries the jobs of nodes that cannot be reached otherwise, so it allows more, and the
/// limits keep it from carrying datasets by surprise.
///
/// ```
/// let limits = dispy_node::net::RelayLimits::default();
/// assert!(limits.circuit_bytes >= 16 << 20);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Nodes holding a slot (an address on this relay) at once.
    pub reservations: usize,
    /// Relayed connections at once.
    pub circuits: usize,
    /// Bytes one relayed connection may carry in each direction; past it, the relay
    /// closes it (the client reconnects; jobs in flight are sent again).
    pub circuit_bytes: u64,
    /// How long one relayed connection may last.
    pub circuit_duration: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            reservations: 128,
            circuits: 32,
            circuit_bytes: 64 << 20,
            circuit_duration: Duration::from_secs(3600),
        }
    }
}

impl RelayLimits {
    /// libp2p's relay configuration with these limits (and its default rate limits on
    /// reservations and circuits per peer and per IP).
    pub(crate) fn config(&self) -> relay::Config {
        relay::Config {
            max_reservations: self.reservations,
            max_circuits: self.circuits,
            max_circuit_bytes: self.circuit_bytes,
            max_circuit_duration: self.circuit_duration,
            ..relay::Config::default()
        }
    }
}

/// Relays a node reserves slots on when it learns it cannot be reached: two, so that one
/// relay going away leaves the node reachable while it finds another.
const RESERVATIONS: usize = 2;

/// Relays remembered (each a node that said it relays, with its addresses).
const KNOWN_RELAYS: usize = 32;

/// How long a client waits, after a relayed connection to a node, for the hole punch to
/// make it direct before it starts work over the relay: a path that changes under
/// requests in flight would fail them. dcutr needs about two round trips and a dial.
pub(crate) const HOLE_PUNCH_WAIT: Duration = Duration::from_secs(5);

/// The NAT state of one peer.
#[derive(Default)]
pub(crate) struct Nat {
    /// What autonat last concluded: `Some(false)` = not reachable from outside.
    public: Option<bool>,
    /// Relays known, with where they listen (not through other relays).
    relays: HashMap<PeerId, Vec<Multiaddr>>,
    /// Reservations asked or held: the relay of each relayed listener.
    reserved: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    /// Peers a client reached through a relay only, announced when the hole punch ends
    /// or the wait runs out: the relayed connection and when it was established.
    holding: HashMap<PeerId, (ConnectionId, Multiaddr, Instant)>,
    /// Hole-punched peers announced once their relayed connection has closed (a request
    /// sent before would go out on it half the time, and fail): the relayed connection,
    /// with the peer, its direct remote and when the close was asked.
    closing: HashMap<ConnectionId, (PeerId, Multiaddr, Instant)>,
}

impl Nat {
    /// Autonat's conclusion: `Some(true)` reachable, `Some(false)` not, `None` unknown.
    pub(crate) fn set_public(&mut self, public: Option<bool>) {
        self.public = public;
    }

    /// Whether the node is known not to be reachable from outside.
    pub(crate) fn unreachable(&self) -> bool {
        self.public == Some(false)
    }

    /// A peer said (identify) that it relays; `addrs` are its listen addresses.
    pub(crate) fn relay_seen(&mut self, peer: PeerId, addrs: &[Multiaddr], over_loopback: bool) {
        let addrs: Vec<Multiaddr> = addrs
            .iter()
            .filter(|a| !is_relayed(a) && worth_dialing(a, over_loopback))
            .take(8)
            .map(without_peer)
            .collect();
        if addrs.is_empty() || (self.relays.len() >= KNOWN_RELAYS && !self.relays.contains_key(&peer)) {
            return;
        }
        self.relays.insert(peer, addrs);
    }

    /// The relayed listen addresses to ask for now: one per relay not reserved on yet,
    /// until [`RESERVATIONS`] are held, while the node is unreachable.
    pub(crate) fn wanted(&self) -> Vec<(PeerId, Multiaddr)> {
        if !self.unreachable() {
            return Vec::new();
        }
        let missing = RESERVATIONS.saturating_sub(self.reserved.len());
        self.relays
            .iter()
            .filter(|(p, _)| !self.reserved.values().any(|r| r == *p))
            .filter_map(|(p, addrs)| {
                addrs.first().map(|a| (*p, a.clone().with(Protocol::P2p(*p)).with(Protocol::P2pCircuit)))
            })
            .take(missing)
            .collect()
    }

    /// A reservation was asked for (its listener).
    pub(crate) fn reserving(&mut self, listener: libp2p::core::transport::ListenerId, relay: PeerId) {
        self.reserved.insert(listener, relay);
    }

    /// A relayed listener closed (the relay refused or went away): the relay is forgotten
    /// until it says again that it relays, and another is tried.
    pub(crate) fn listener_closed(&mut self, listener: libp2p::core::transport::ListenerId) -> Option<PeerId> {
        let relay = self.reserved.remove(&listener)?;
        self.relays.remove(&relay);
        Some(relay)
    }

    /// A relay that cannot be used (its address did not make a listener): forgotten until
    /// it says again that it relays.
    pub(crate) fn forget_relay(&mut self, relay: &PeerId) {
        self.relays.remove(relay);
    }

    /// Whether any relay is known.
    pub(crate) fn knows_relays(&self) -> bool {
        !self.relays.is_empty()
    }

    /// The listeners to close: the node turned out reachable.
    pub(crate) fn release_all(&mut self) -> Vec<libp2p::core::transport::ListenerId> {
        self.reserved.drain().map(|(l, _)| l).collect()
    }

    /// A client's first connection to `peer` is relayed: hold its announcement.
    pub(crate) fn hold(&mut self, peer: PeerId, connection: ConnectionId, remote: Multiaddr, now: Instant) {
        self.holding.insert(peer, (connection, remote, now));
    }

    /// Stops holding `peer`: its relayed connection and remote, if it was held.
    pub(crate) fn release(&mut self, peer: &PeerId) -> Option<(ConnectionId, Multiaddr)> {
        self.holding.remove(peer).map(|(c, r, _)| (c, r))
    }

    /// A held peer was hole-punched: it is announced at `remote` once `relayed` closes.
    pub(crate) fn announce_when_closed(
        &mut self,
        relayed: ConnectionId,
        peer: PeerId,
        remote: Multiaddr,
        now: Instant,
    ) {
        self.closing.insert(relayed, (peer, remote, now));
    }

    /// A connection closed: the peer to announce and its direct remote, if it was the
    /// relayed connection of a hole-punched peer.
    pub(crate) fn closed(&mut self, connection: ConnectionId) -> Option<(PeerId, Multiaddr)> {
        self.closing.remove(&connection).map(|(p, r, _)| (p, r))
    }

    /// Hole-punched peers whose relayed connection takes too long to close: announced
    /// anyway (a dead relay may never confirm the close).
    pub(crate) fn overdue_closing(&mut self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        let late: Vec<ConnectionId> = self
            .closing
            .iter()
            .filter(|(_, (_, _, t))| now.duration_since(*t) >= HOLE_PUNCH_WAIT)
            .map(|(c, _)| *c)
            .collect();
        late.into_iter().filter_map(|c| self.closed(c)).collect()
    }

    /// Whether nothing waits on time: no peer held or closing, no reservation wanted.
    pub(crate) fn idle(&self) -> bool {
        self.holding.is_empty() && self.closing.is_empty() && self.wanted().is_empty()
    }

    /// Held peers whose wait ran out.
    pub(crate) fn overdue(&self, now: Instant) -> Vec<PeerId> {
        self.holding
            .iter()
            .filter(|(_, (_, _, t))| now.duration_since(*t) >= HOLE_PUNCH_WAIT)
            .map(|(p, _)| *p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::transport::ListenerId;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("addr")
    }

    #[test]
    fn an_unreachable_node_reserves_on_two_relays_and_replaces_one_that_closes() {
        let mut nat = Nat::default();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        nat.relay_seen(a, &[addr("/ip4/10.0.0.1/tcp/1")], false);
        nat.relay_seen(b, &[addr("/ip4/10.0.0.2/tcp/1"), addr("/ip4/127.0.0.1/tcp/1")], false);
        // A relay known only through another relay, or only on loopback, is no use.
        nat.relay_seen(c, &[addr("/ip4/127.0.0.1/tcp/1")], false);
        assert!(nat.wanted().is_empty(), "a node reachable or not yet probed reserves nothing");
        nat.set_public(Some(false));
        let wanted = nat.wanted();
        assert_eq!(wanted.len(), 2, "{wanted:?}");
        assert!(wanted.iter().all(|(_, a)| is_relayed(a)));
        let (l1, l2) = (ListenerId::next(), ListenerId::next());
        nat.reserving(l1, wanted[0].0);
        nat.reserving(l2, wanted[1].0);
        assert!(nat.wanted().is_empty());
        assert_eq!(nat.listener_closed(l1), Some(wanted[0].0));
        assert!(nat.wanted().is_empty(), "the closed relay is forgotten, no third one known");
        nat.relay_seen(wanted[0].0, &[addr("/ip4/10.0.0.9/tcp/1")], false);
        assert_eq!(nat.wanted().len(), 1, "a relay that says so again is tried again");
        nat.set_public(Some(true));
        assert!(nat.wanted().is_empty());
        assert_eq!(nat.release_all(), vec![l2]);
    }

    #[test]
    fn a_held_relayed_peer_is_released_when_the_wait_runs_out() {
        let mut nat = Nat::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        nat.hold(peer, ConnectionId::new_unchecked(1), addr("/ip4/10.0.0.1/tcp/1/p2p-circuit"), t0);
        assert!(nat.overdue(t0 + HOLE_PUNCH_WAIT / 2).is_empty());
        assert_eq!(nat.overdue(t0 + HOLE_PUNCH_WAIT), vec![peer]);
        assert_eq!(nat.release(&peer).map(|(c, _)| c), Some(ConnectionId::new_unchecked(1)));
        assert!(nat.release(&peer).is_none());
        // Hole-punched: announced when the relayed connection closes, or after the wait.
        let direct = addr("/ip4/10.0.0.2/tcp/9700");
        nat.announce_when_closed(ConnectionId::new_unchecked(1), peer, direct.clone(), t0);
        assert_eq!(nat.closed(ConnectionId::new_unchecked(2)), None);
        assert_eq!(nat.closed(ConnectionId::new_unchecked(1)), Some((peer, direct.clone())));
        nat.announce_when_closed(ConnectionId::new_unchecked(3), peer, direct.clone(), t0);
        assert!(nat.overdue_closing(t0 + HOLE_PUNCH_WAIT / 2).is_empty());
        assert_eq!(nat.overdue_closing(t0 + HOLE_PUNCH_WAIT), vec![(peer, direct)]);
        assert_eq!(nat.closed(ConnectionId::new_unchecked(3)), None);
    }
}
