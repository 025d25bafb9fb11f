//! The door before the handshake: a few pending-handshake slots per remote IP.
//!
//! libp2p's `connection_limits` caps pending inbound connections in all, but one host
//! flooding idle TCP connections (it needs no secret: pnet runs after accept) would then
//! hold every slot, and a client with the secret would find the door shut. Here each IP
//! gets a few slots; a connection past them is dropped right after accept, before any
//! handshake work, and a flooder can only delay its own connections.

use super::discovery::ip_of;
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    dummy,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

/// Pending inbound connections by remote IP (pure bookkeeping, tested alone).
#[derive(Debug, Default)]
pub(crate) struct PendingSlots {
    per_ip: u32,
    total: u32,
    by_conn: HashMap<ConnectionId, IpAddr>,
    by_ip: HashMap<IpAddr, u32>,
}

/// Why a pending connection was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The IP holds all its slots.
    #[error("{ip} already has {held} connections in their handshake (at most {limit} per address)")]
    PerIp { ip: IpAddr, held: u32, limit: u32 },
    /// Every slot is taken.
    #[error("{held} connections are already in their handshake (at most {limit})")]
    Total { held: u32, limit: u32 },
}

impl PendingSlots {
    pub(crate) fn new(per_ip: u32, total: u32) -> Self {
        PendingSlots { per_ip, total, ..Default::default() }
    }

    /// Takes a slot for `conn` from `ip`, or says why not.
    pub(crate) fn take(&mut self, conn: ConnectionId, ip: IpAddr) -> Result<(), Refused> {
        let held = self.by_ip.get(&ip).copied().unwrap_or(0);
        if held >= self.per_ip {
            return Err(Refused::PerIp { ip, held, limit: self.per_ip });
        }
        let total = u32::try_from(self.by_conn.len()).unwrap_or(u32::MAX);
        if total >= self.total {
            return Err(Refused::Total { held: total, limit: self.total });
        }
        self.by_conn.insert(conn, ip);
        *self.by_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    /// The handshake of `conn` ended (either way); a connection never seen is ignored.
    pub(crate) fn release(&mut self, conn: ConnectionId) {
        let Some(ip) = self.by_conn.remove(&conn) else { return };
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.by_conn.len()
    }
}

/// The behaviour: refuses pending inbound connections past their IP's slots.
pub(crate) struct Gate {
    slots: PendingSlots,
}

impl Gate {
    pub(crate) fn new(per_ip: u32, total: u32) -> Self {
        Gate { slots: PendingSlots::new(per_ip, total) }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match ip_of(remote_addr) {
            Some(ip) => self.slots.take(connection_id, ip).map_err(ConnectionDenied::new),
            None => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.slots.release(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A handshake that failed, timed out or was denied by another behaviour.
        if let FromSwarm::ListenFailure(f) = event {
            self.slots.release(f.connection_id);
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_slot() {
        let mut s = PendingSlots::new(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let ids: Vec<ConnectionId> = (0..6).map(|_| ConnectionId::new_unchecked(rand::random())).collect();
        s.take(ids[0], a).unwrap();
        s.take(ids[1], a).unwrap();
        assert!(matches!(s.take(ids[2], a), Err(Refused::PerIp { held: 2, .. })));
        s.take(ids[3], b).unwrap();
        assert!(matches!(s.take(ids[4], b), Err(Refused::Total { .. })), "the total still holds");
        // A slot comes back when its handshake ends; a refused or unknown one changes nothing.
        s.release(ids[2]);
        s.release(ids[5]);
        assert_eq!(s.held(), 3);
        s.release(ids[0]);
        s.take(ids[2], a).unwrap();
        for id in &ids {
            s.release(*id);
        }
        assert_eq!(s.held(), 0);
        assert!(s.by_ip.is_empty(), "no entry left behind for an address");
    }
}
