//! Which connections stay open while idle.
//!
//! The swarm closes a connection that no handler keeps alive and that carries no stream for
//! its idle timeout. Kademlia's and discovery's connections between nodes should close that
//! way (a mesh of n nodes must not hold n² links), while a client's link to a node must stay
//! through hours of silence (a long job says nothing until it ends). This behaviour keeps
//! alive exactly the connections of the peers the event loop names with [`Behaviour::keep`].

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

/// Keeps the named peers' connections open; every other connection may idle out.
#[derive(Default)]
pub(crate) struct Behaviour {
    /// Peers whose connections stay; a peer leaves with its last connection.
    kept: HashSet<PeerId>,
    /// Each peer's open connections (to reach their handlers).
    connections: HashMap<PeerId, HashSet<ConnectionId>>,
    notify: VecDeque<(PeerId, ConnectionId)>,
}

impl Behaviour {
    /// Keeps every connection of `peer`, open now or opened later while any stays open.
    pub(crate) fn keep(&mut self, peer: PeerId) {
        if !self.kept.insert(peer) {
            return;
        }
        for c in self.connections.get(&peer).into_iter().flatten() {
            self.notify.push_back((peer, *c));
        }
    }

    fn handler(&mut self, peer: PeerId, connection: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().insert(connection);
        Handler { keep: self.kept.contains(&peer) }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            let Some(conns) = self.connections.get_mut(&closed.peer_id) else { return };
            conns.remove(&closed.connection_id);
            if conns.is_empty() {
                self.connections.remove(&closed.peer_id);
                self.kept.remove(&closed.peer_id);
            }
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.notify.pop_front() {
            Some((peer_id, c)) => {
                Poll::Ready(ToSwarm::NotifyHandler { peer_id, handler: NotifyHandler::One(c), event: Keep })
            }
            None => Poll::Pending,
        }
    }
}

/// Tells a connection's handler to keep it from now on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep;

/// Speaks no protocol; only answers whether its connection should stay.
pub(crate) struct Handler {
    keep: bool,
}

impl libp2p::swarm::ConnectionHandler for Handler {
    type FromBehaviour = Keep;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep
    }

    fn on_behaviour_event(&mut self, _: Keep) {
        self.keep = true;
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        Poll::Pending
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<DeniedUpgrade, DeniedUpgrade>) {
        // Denied upgrades never negotiate: nothing arrives here that needs an answer.
        let _ = event;
    }
}
