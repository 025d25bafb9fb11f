//! The event loop's part in NAT traversal: autonat's verdict, slots on relays, relaying for
//! others, and hole punches (policy in [`crate::net::nat`]).

use super::EventLoop;
use crate::net::NetEvent;
use crate::net::error_chain;
use crate::net::nat::{Reach, is_relayed};
use libp2p::swarm::ConnectionId;
use libp2p::{PeerId, autonat, dcutr, relay};
use std::time::Instant;
use tracing::{debug, info, trace, warn};

impl EventLoop {
    pub(super) fn on_autonat(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { new, .. } = event else {
            trace!(?event, "autonat");
            return;
        };
        match new {
            autonat::NatStatus::Public(addr) => {
                info!(%addr, "reachable from outside at this address");
                self.nat.set_public(Some(true));
                for listener in self.nat.release_all() {
                    self.swarm.remove_listener(listener);
                }
            }
            autonat::NatStatus::Private => {
                info!("not reachable from outside this network (NAT or firewall): taking a slot on a relay");
                self.nat.set_public(Some(false));
                self.reserve();
                if self.nat.wanted().is_empty() && !self.nat.knows_relays() {
                    // Relays are met through Kademlia: a lookup connects to the nodes
                    // nearest, and each says (identify) whether it relays.
                    if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                        debug!(cause = %e, "no relay known, and no peer to look for one through");
                    }
                }
            }
            autonat::NatStatus::Unknown => self.nat.set_public(None),
        }
    }

    /// Asks relays for slots while the node is unreachable and holds fewer than it wants.
    pub(super) fn reserve(&mut self) {
        for (relay, addr) in self.nat.wanted() {
            match self.swarm.listen_on(addr.clone()) {
                Ok(listener) => {
                    debug!(%relay, %addr, "asking a relay for a slot");
                    self.nat.reserving(listener, relay);
                }
                Err(e) => {
                    warn!(%addr, cause = %error_chain(&e), "cannot listen through a relay");
                    self.nat.forget_relay(&relay);
                }
            }
        }
    }

    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal: false, .. } => {
                info!(relay = %relay_peer_id, "reachable through a relay");
            }
            event => trace!(?event, "relay client"),
        }
    }

    /// This node relays (`serve --relay`).
    pub(super) fn on_relay(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                // Its link carries the slot: it stays open, quiet or not.
                debug!(peer = %src_peer_id, "gave a node a slot on this relay");
                self.admit(src_peer_id);
            }
            relay::Event::ReservationReqDenied { src_peer_id, .. }
            | relay::Event::CircuitReqDenied { src_peer_id, .. } => {
                if self.refusal_logged.allow(format!("relay:{src_peer_id}"), Instant::now()) {
                    warn!(peer = %src_peer_id, "relay limits reached: refused a slot or a relayed connection (serve --relay-circuits)");
                }
            }
            relay::Event::CircuitReqAccepted { src_peer_id, dst_peer_id } => {
                debug!(src = %src_peer_id, dst = %dst_peer_id, "relaying a connection");
            }
            relay::Event::CircuitClosed { src_peer_id, dst_peer_id, error } => {
                debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "relayed connection ended");
            }
            event => trace!(?event, "relay"),
        }
    }

    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) {
        let peer = event.remote_peer_id;
        match event.result {
            Ok(connection) => self.hole_punched(peer, connection),
            Err(e) => {
                debug!(%peer, cause = %error_chain(&e), "hole punch failed; the link stays relayed");
                if !self.kad_server {
                    self.announce_held(peer);
                }
            }
        }
    }

    /// A direct connection replaced a relayed one. The client closes the relayed link (a
    /// request-response peer spreads requests over all of a peer's connections: left open,
    /// the relay would carry half the traffic) and says how the node is reached now.
    fn hole_punched(&mut self, peer: PeerId, connection: ConnectionId) {
        let Some(remote) = self.connections.get(&connection).cloned() else { return };
        info!(%peer, %remote, "hole punched: the relayed link is now direct");
        if self.kad_server {
            return;
        }
        let relayed: Vec<ConnectionId> = self.links(&peer).filter(|(_, a)| is_relayed(a)).map(|(c, _)| c).collect();
        let held = self.nat.release(&peer).is_some();
        let reach = Reach::HolePunched;
        match relayed.first() {
            // Announced once the relayed link is gone, so that no first request goes out on it.
            Some(first) if held => self.nat.announce_when_closed(*first, peer, remote, Instant::now()),
            _ if held => self.emit(NetEvent::Connected { peer, remote, reach }),
            _ => self.emit(NetEvent::Reached { peer, reach, remote }),
        }
        for c in relayed {
            self.swarm.close_connection(c);
        }
    }

    /// A connection closed: announces a hole-punched peer whose relayed link it was.
    pub(super) fn relayed_closed(&mut self, connection: ConnectionId) {
        if let Some((peer, remote)) = self.nat.closed(connection)
            && self.live.contains_key(&peer)
        {
            self.emit(NetEvent::Connected { peer, remote, reach: Reach::HolePunched });
        }
    }

    /// Announces a held peer: over a direct connection if one came up meanwhile, else
    /// relayed.
    fn announce_held(&mut self, peer: PeerId) {
        let Some((_, relayed_remote)) = self.nat.release(&peer) else { return };
        let direct = self.links(&peer).find(|(_, a)| !is_relayed(a)).map(|(_, a)| a.clone());
        let (remote, reach) = match direct {
            Some(remote) => (remote, Reach::Direct),
            None => (relayed_remote, Reach::Relayed),
        };
        if reach == Reach::Relayed {
            info!(%peer, "reached through a relay only (no hole punch): large transfers to it are bounded");
        }
        self.emit(NetEvent::Connected { peer, remote, reach });
    }

    /// `peer`'s live connections, with their remote addresses.
    fn links(&self, peer: &PeerId) -> impl Iterator<Item = (ConnectionId, &libp2p::Multiaddr)> {
        self.live.get(peer).into_iter().flatten().filter_map(|c| self.connections.get(c).map(|a| (*c, a)))
    }

    /// Held peers whose hole punch took too long are announced as they are.
    pub(super) fn announce_overdue(&mut self) {
        let now = Instant::now();
        for peer in self.nat.overdue(now) {
            self.announce_held(peer);
        }
        for (peer, remote) in self.nat.overdue_closing(now) {
            self.emit(NetEvent::Connected { peer, remote, reach: Reach::HolePunched });
        }
    }
}
