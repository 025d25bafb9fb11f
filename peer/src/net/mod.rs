//! The peer runtime: one task ([`EventLoop`]) owns the libp2p swarm; everything else holds
//! a cloneable [`NetHandle`] that sends it commands, and reads [`NetEvent`]s.
//!
//! Clients and nodes run the same runtime; only [`NetConfig`] differs (nodes answer
//! Kademlia queries, clients only ask).

mod behaviour;
mod bounded;
mod codec;
pub(crate) mod discovery;
mod event_loop;
mod gate;
mod handle;
pub mod identity;
mod keep;
mod limits;
mod nat;
mod refresh;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use behaviour::transport;
pub use codec::DispyCodec;
pub use event_loop::EventLoop;
#[cfg(test)]
pub(crate) use handle::Command;
pub use handle::{Census, NetHandle, ReplyTo};
pub use limits::{ConnLimits, fd_limit, raise_fd_limit};
pub use nat::{Reach, RelayLimits};

use crate::error::{Error, Result};
use dispy_protocol::Request;
use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

/// How a peer joins the mesh.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The peer's identity; a fresh one when `None`.
    pub keypair: Option<Keypair>,
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/9700`, `/ip4/127.0.0.1/tcp/0`, ...).
    pub listen: Vec<Multiaddr>,
    /// The cluster key; `None` = an open mesh.
    pub psk: Option<PreSharedKey>,
    /// Discover peers on the LAN by multicast DNS.
    pub mdns: bool,
    /// Kademlia bootstrap peers, also dialed (and re-dialed) like `peers`.
    pub bootstrap: Vec<Multiaddr>,
    /// Peers to stay connected to: dialed at start and re-dialed with backoff when lost.
    pub peers: Vec<Multiaddr>,
    /// Answer Kademlia queries (nodes); clients only ask.
    pub kad_server: bool,
    /// Every connection is pinged this often; one with no answered ping for twice this is
    /// closed, so a peer that vanished without a word (power cut, partition) is noticed
    /// within about twice this.
    pub heartbeat: std::time::Duration,
    /// When set, only these peers' requests are served; any other peer's are refused with
    /// a message naming its id (`serve --allow-peer`, and the embedded node, which serves
    /// only its own client).
    pub allowed_peers: Option<std::collections::HashSet<PeerId>>,
    /// Connection and request limits; by default sized from the descriptor limit.
    pub limits: ConnLimits,
    /// Where the swarm records libp2p's metrics and handshake failures (`serve --metrics`);
    /// `None` (clients) records nothing.
    pub metrics: Option<crate::metrics::Metrics>,
    /// How often Kademlia refreshes the routing table; `None`: about every 300 s on a node
    /// (two lookups a round, see `refresh`), 3 s on a client (a full bootstrap: it looks
    /// for nodes while it runs).
    pub kad_refresh: Option<std::time::Duration>,
    /// Relay connections for peers that cannot be reached otherwise (`serve --relay`),
    /// within these limits; `None`: relay nothing.
    pub relay: Option<RelayLimits>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            keypair: None,
            listen: Vec::new(),
            psk: None,
            mdns: false,
            bootstrap: Vec::new(),
            peers: Vec::new(),
            kad_server: false,
            heartbeat: DEFAULT_HEARTBEAT,
            allowed_peers: None,
            limits: ConnLimits::default(),
            metrics: None,
            kad_refresh: None,
            relay: None,
        }
    }
}

/// The default heartbeat: a silent peer is noticed within about 9 s.
pub const DEFAULT_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(4);

/// Something the network saw.
// Requests are the events that count, and each is moved once: boxing them would cost an
// allocation per request to save bytes on the rare small events.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum NetEvent {
    /// A listener is up; the address ends with `/p2p/<local peer id>`.
    Listening {
        /// The full address.
        addr: Multiaddr,
    },
    /// The first connection to a peer is established (its secret and identity checked).
    Connected {
        /// The peer.
        peer: PeerId,
        /// The remote address of that connection.
        remote: Multiaddr,
        /// How the peer is reached. A client announces a node it reached through a relay
        /// only once the hole punch has ended (made the link direct, or failed), or after
        /// a few seconds, so that work never starts on a path about to change.
        reach: Reach,
    },
    /// A peer's path changed after [`NetEvent::Connected`]: a late hole punch made a
    /// relayed link direct.
    Reached {
        /// The peer.
        peer: PeerId,
        /// The new path.
        reach: Reach,
        /// The remote address of the connection now used.
        remote: Multiaddr,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A peer asks something; answer with [`NetHandle::respond`].
    Request {
        /// Who asks.
        peer: PeerId,
        /// What.
        request: Request,
        /// Where the answer goes.
        channel: ReplyTo,
    },
    /// A dial to an address given in the configuration, or asked with
    /// [`NetHandle::dial`], failed.
    DialFailed {
        /// The address.
        addr: Multiaddr,
        /// Why, for people.
        reason: String,
        /// The connection opened but the secure handshake did not complete: most likely the
        /// peer holds another secret.
        handshake: bool,
        /// Nothing listens at the address, or another peer answers there: the peer that
        /// was there has stopped (as opposed to being out of reach).
        refused: bool,
    },
}

/// Builds the runtime: the handle, the event stream and the loop to spawn. Listeners are
/// bound here, so a busy port is reported before any task runs.
///
/// # Errors
/// [`Error::Setup`] for a broken configuration, [`Error::Listen`] for an address that
/// cannot be bound.
pub fn new(cfg: NetConfig) -> Result<(NetHandle, mpsc::UnboundedReceiver<NetEvent>, EventLoop)> {
    let keypair = cfg.keypair.clone().unwrap_or_else(Keypair::generate_ed25519);
    let local = keypair.public().to_peer_id();
    let mut swarm = behaviour::build_swarm(&cfg, keypair)?;
    for addr in &cfg.listen {
        swarm.listen_on(addr.clone()).map_err(|e| Error::Listen { addr: addr.to_string(), reason: error_chain(&e) })?;
    }
    // Commands are bounded: a flood of callers waits instead of growing memory.
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    // Events are not: the swarm task must never wait on a slow consumer (it would stall
    // every connection), and inbound traffic is already bounded by libp2p's stream limits.
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let handle = NetHandle::new(cmd_tx, local);
    let event_loop = EventLoop::new(swarm, cmd_rx, ev_tx, cfg);
    Ok((handle, ev_rx, event_loop))
}

/// [`new`], with the event loop spawned on the current runtime: the handle and the events.
///
/// # Errors
/// As [`new`].
pub fn spawn(cfg: NetConfig) -> Result<(NetHandle, mpsc::UnboundedReceiver<NetEvent>)> {
    let (handle, events, event_loop) = new(cfg)?;
    tokio::spawn(event_loop.run());
    Ok((handle, events))
}

/// The IP address in a multiaddr, if any (for `--nodes` patterns and reports).
pub fn remote_ip(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    discovery::ip_of(addr)
}

/// An error and its sources on one line, each text once: libp2p nests the useful part
/// several levels deep, and a message that already quotes its source (thiserror's
/// `"...: {source}"`) does not repeat it.
///
/// ```
/// let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
/// assert_eq!(dispy_node::net::error_chain(&io), "gone");
/// ```
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Whether a failed connection points at a different secret: it failed after TCP connected
/// (a reset, garbage, a timeout) but before noise could read a message. A refused or
/// unreachable address says nothing about secrets, and a noise message that arrived whole
/// but made no sense (snow's "input error", "decrypt error") came through pnet readable, so
/// both ends hold the same key: on a LAN that is two nodes dialing each other at the same
/// instant from their listening ports (TCP port reuse), which makes the two dials one TCP
/// connection on which both ends speak first; the next dial works.
pub(crate) fn secret_suspected(cause: &str) -> bool {
    const NOT_THE_SECRET: [&str; 6] = [
        "Connection refused",
        "No route to host",
        "Network is unreachable",
        "Cannot assign",
        "input error",
        "decrypt error",
    ];
    !NOT_THE_SECRET.iter().any(|s| cause.contains(s))
}
