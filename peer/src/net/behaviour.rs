//! The libp2p behaviour and transport every dispy peer runs.
//!
//! Transport: TCP → pnet (the cluster key) → noise → yamux. pnet sits below noise, so a peer
//! without the key never completes a connection and no behaviour ever sees it.

use super::NetConfig;
use super::codec::DispyCodec;
use super::gate::Gate;
use super::limits::{DIAL_TIMEOUT, INBOUND_HANDSHAKE_TIMEOUT};
use crate::error::{Error, Result};
use dispy_protocol::{KAD_PROTOCOL_NAME, PROTOCOL_NAME};
use futures::future::Either;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::transport::timeout::TransportTimeout;
use libp2p::core::upgrade::Version;
use libp2p::core::{Transport, muxing::StreamMuxerBox, transport::Boxed};
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, behaviour::toggle::Toggle};
use libp2p::{
    PeerId, StreamProtocol, Swarm, autonat, connection_limits, dcutr, identify, identity, kad, mdns, noise, ping,
    relay, tcp, yamux,
};
use std::time::Duration;

/// Requests are answered at once by design (long work is acknowledged and reported later),
/// so a request that takes this long means the peer is in trouble.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Inbound substreams above this are dropped by libp2p with only a warning: keep it well
/// above the scheduler's in-flight depth.
const MAX_CONCURRENT_STREAMS: usize = 1024;

/// How often a client refreshes its routing table: it looks for nodes while it runs.
/// (Nodes refresh theirs in rounds of their own: `super::refresh`.)
const CLIENT_REFRESH: Duration = Duration::from_secs(3);

/// The peer's behaviours; the derive generates `BehaviourEvent`.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// First at the door: a few pending-handshake slots per remote IP.
    gate: Gate,
    /// Pending and established connections, in all and per peer.
    limits: connection_limits::Behaviour,
    /// Which connections stay while idle (clients' and configured peers').
    pub(crate) keep: super::keep::Behaviour,
    pub(crate) rr: request_response::Behaviour<DispyCodec>,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Whether this peer can be reached from outside (probed through connected peers).
    pub(crate) autonat: autonat::Behaviour,
    /// Dials and listens through relays (the `/p2p-circuit` addresses).
    pub(crate) relay_client: relay::client::Behaviour,
    /// Relays for others: a node started with `serve --relay`.
    pub(crate) relay: Toggle<relay::Behaviour>,
    /// Upgrades a relayed connection to a direct one through both NATs.
    pub(crate) dcutr: dcutr::Behaviour,
}

/// The transport every dispy peer uses: TCP → pnet (when a key is given) → noise → yamux,
/// with a short deadline on inbound handshakes (a connection that sends nothing holds its
/// descriptor that long at most). Public so that tools and tests can build a raw peer that
/// speaks to real nodes.
///
/// # Errors
/// Noise key setup failures.
pub fn transport(
    key: &identity::Keypair,
    psk: Option<libp2p::pnet::PreSharedKey>,
) -> std::result::Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let noise = noise::Config::new(key)?;
    // `/memory/N` addresses reach peers of the same process: the simulations of meshes of
    // a thousand peers run on it, through the same key, encryption and multiplexing.
    let base = tcp::tokio::Transport::new(tcp::Config::default())
        .or_transport(MemoryTransport::default())
        .map_err(|e| std::io::Error::other(e.to_string()));
    // Boxed so that both cases share the upgrade chain below.
    let base = match psk {
        Some(psk) => base
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .map(|socket, _| Either::Left(socket))
            .map_err(|e| std::io::Error::other(e.to_string()))
            .boxed(),
        None => base.map(|socket, _| Either::Right(socket)).boxed(),
    };
    let upgraded = base
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    // Dials get the swarm's longer connection timeout on top (see `build_swarm`).
    Ok(TransportTimeout::with_ingoing_timeout(upgraded, INBOUND_HANDSHAKE_TIMEOUT).boxed())
}

/// Autonat as a lab needs it: private addresses count (a lab behind a router is exactly the
/// case), a first answer within seconds of the first connection, and probes rare once the
/// answer is sure. Dial-backs only ever go to the asking peer's observed IP (libp2p's
/// server rule), so a peer cannot point a node at a third party. Only nodes answer probes:
/// a client's dial-back would open a second link to each node that asks, kept as long as
/// the first (a client keeps its nodes' links), so a client refuses (the node's status
/// stays as it was: a refusal is not an answer).
fn autonat_config(serve: bool) -> autonat::Config {
    autonat::Config {
        throttle_clients_global_max: if serve { autonat::Config::default().throttle_clients_global_max } else { 0 },
        only_global_ips: false,
        boot_delay: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
        retry_interval: Duration::from_secs(30),
        refresh_interval: Duration::from_secs(600),
        confidence_max: 1,
        ..autonat::Config::default()
    }
}

/// Builds the swarm; nothing runs until the event loop polls it.
pub(crate) fn build_swarm(cfg: &NetConfig, keypair: identity::Keypair) -> Result<Swarm<Behaviour>> {
    let psk = cfg.psk;
    let kad_server = cfg.kad_server;
    let refresh = cfg.kad_refresh.unwrap_or(CLIENT_REFRESH);
    let mdns_on = cfg.mdns;
    let heartbeat = cfg.heartbeat.max(Duration::from_millis(100));
    let lim = cfg.limits;
    let allowed: Vec<PeerId> = cfg.allowed_peers.iter().flatten().copied().collect();
    let relay_limits = cfg.relay;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            transport(key, psk).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| Error::Setup(e.to_string()))?
        // A relayed connection runs inside the pnet-protected link to the relay (a cluster
        // member), with noise end to end: the relay sees only ciphertext.
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Setup(e.to_string()))?
        .with_behaviour(
            |key, relay_client| -> std::result::Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let local = key.public().to_peer_id();
                let rr = request_response::Behaviour::with_codec(
                    DispyCodec,
                    [(StreamProtocol::new(PROTOCOL_NAME), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(REQUEST_TIMEOUT)
                        .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
                );
                let mut kcfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL_NAME));
                // Clients look often while they run. Nodes refresh in rounds of their own (see
                // `super::refresh`): libp2p's bootstrap grows with the mesh (a lookup per bucket).
                kcfg.set_periodic_bootstrap_interval((!kad_server).then_some(refresh));
                if kad_server {
                    // A node's table takes peers only through `EventLoop::route` (identify, mDNS),
                    // never by Kademlia's own check of a full bucket, which dials (see there).
                    kcfg.set_kbucket_inserts(kad::BucketInserts::Manual);
                }
                let mut kad = kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kcfg);
                // Auto mode stays Client until an external address is confirmed, which never
                // happens on a LAN without autonat: nodes must answer queries, so force Server.
                // Transient clients stay out of everyone's routing table.
                kad.set_mode(Some(if kad_server { kad::Mode::Server } else { kad::Mode::Client }));
                // Pushed when listen addresses change: a node that takes a slot on a relay has its
                // new address in the relay's routing table at once, where clients look it up.
                // No address cache: identify's would offer every address a peer listens on to
                // every later dial of it, 127.0.0.1 included, so each Kademlia dial to a LAN peer
                // also dialed this host's own listener (a wasted handshake with itself, logged as
                // a secret mismatch). The event loop hands Kademlia the addresses worth dialing.
                let identify = identify::Behaviour::new(
                    identify::Config::new(dispy_protocol::IDENTIFY_PROTOCOL.into(), key.public())
                        .with_push_listen_addr_updates(true)
                        .with_cache_size(0),
                );
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(
                        // The cap of the query back-off (vendor/libp2p-mdns: gaps 1 s, 2 s, 4 s...
                        // up to this). A node only needs LAN peers for Kademlia's address book, and
                        // sees newcomers by their announcements and by the answers to clients'
                        // queries: 90 s keeps an idle LAN of 256 nodes near 3 answers/s (one
                        // query per interval on the whole LAN, others' queries counting as ours),
                        // well inside the records' 6 min TTL. A client looks for nodes while it
                        // runs: 3 s finds a node started mid-run within seconds at 256 answers per
                        // 3 s, spread over 20-120 ms each.
                        mdns::Config {
                            query_interval: Duration::from_secs(if kad_server { 90 } else { 3 }),
                            ..Default::default()
                        },
                        local,
                    )?)
                } else {
                    None
                };
                let ping = ping::Behaviour::new(ping::Config::new().with_interval(heartbeat).with_timeout(heartbeat));
                let mut limits = connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(lim.pending_incoming))
                        .with_max_pending_outgoing(Some(lim.pending_outgoing))
                        .with_max_established(Some(lim.established))
                        .with_max_established_per_peer(Some(lim.established_per_peer)),
                );
                // The peers a node admits by name are never shut out by strangers' connections.
                for peer in &allowed {
                    limits.bypass_peer_id(peer);
                }
                let gate = Gate::new(lim.pending_per_ip, lim.pending_incoming);
                let autonat = autonat::Behaviour::new(local, autonat_config(kad_server));
                let relay = relay_limits.map(|l| relay::Behaviour::new(local, l.config()));
                let dcutr = dcutr::Behaviour::new(local);
                Ok(Behaviour {
                    gate,
                    limits,
                    keep: Default::default(),
                    rr,
                    kad,
                    identify,
                    ping,
                    mdns: mdns.into(),
                    autonat,
                    relay_client,
                    relay: relay.into(),
                    dcutr,
                })
            },
        )
        .map_err(|e| Error::Setup(e.to_string()))?
        // Client-node connections carry long quiet stretches (a job running for hours): the
        // keep behaviour holds them; liveness comes from heartbeats, not from idling out.
        .with_swarm_config(|c| c.with_idle_connection_timeout(lim.idle_timeout))
        .with_connection_timeout(DIAL_TIMEOUT)
        .build();
    Ok(swarm)
}
