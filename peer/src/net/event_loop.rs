//! The task that owns the swarm. It only moves data: swarm events out as [`NetEvent`]s,
//! [`Command`]s in; policy lives with the node and the scheduler.

use super::behaviour::{Behaviour, BehaviourEvent};
use super::bounded::{Recent, Throttle, Waiting};
use super::discovery::{Backoff, DialQueue, ip_of, without_peer, worth_dialing};
use super::handle::{Census, Command, Reply, ReplyTo};
use super::limits::ConnLimits;
use super::nat::{Nat, Reach};
use super::refresh::{NODE_REFRESH, Refresh, key_in_bucket, with_room};
use super::{NetConfig, NetEvent, error_chain, secret_suspected};
use crate::error::{Error, Result};
use dispy_protocol::{KAD_PROTOCOL_NAME, Refusal, RefusalKind, Response};
use futures::StreamExt;
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, ListenError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, kad, mdns, ping, relay};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn};

mod relaying;

/// A configured peer address we keep a connection to.
struct Target {
    addr: Multiaddr,
    peer: Option<PeerId>,
    connected: bool,
    dialing: Option<ConnectionId>,
    backoff: Backoff,
    /// Feed this peer to Kademlia once connected.
    bootstrap: bool,
    /// A bootstrap peer that was reached: the DHT was joined through it, and its link may
    /// now idle out like any other (it is not dialed again).
    joined: bool,
}

/// Owns the swarm; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<NetEvent>,
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Response>>>,
    targets: Vec<Target>,
    /// Dials asked by a command, by connection, to report their failure.
    dials: HashMap<ConnectionId, Multiaddr>,
    /// Remote address of each live connection, to judge the addresses peers report.
    connections: HashMap<ConnectionId, Multiaddr>,
    /// Each peer's connections that count as alive: a connection that failed its heartbeat
    /// leaves this set at once, though closing it may take a while on a dead link.
    live: HashMap<PeerId, HashSet<ConnectionId>>,
    /// When each live connection last answered a ping (or was established).
    last_alive: HashMap<ConnectionId, (PeerId, Instant)>,
    /// No answered ping for this long: the connection is dead.
    silence_limit: Duration,
    /// Peers found (mDNS, Kademlia) that a client dials, a bounded batch at a time.
    found: DialQueue,
    /// A node: answers Kademlia, and remembers the peers it finds instead of dialing them.
    kad_server: bool,
    /// Handshake failures logged at warn level (by address or remote IP), once an hour each.
    handshake_logged: Throttle<String>,
    /// Refused connections (limits) logged at warn level, once a minute per remote IP.
    refusal_logged: Throttle<String>,
    fingerprint: String,
    /// `cfg.allowed_peers`: when set, only these peers' requests reach the node.
    allowed: Option<HashSet<PeerId>>,
    limits: ConnLimits,
    /// Peers that have shown they belong (a request let through, one of ours sent to them,
    /// or a configured peer): their connections may idle as long as they like, also
    /// after a reconnection (a client whose jobs run for hours may have nothing to say).
    admitted: Recent<PeerId>,
    /// Inbound connections of peers not admitted yet, with when they were established:
    /// closed after `limits.greeting_window`.
    unadmitted: HashMap<ConnectionId, (PeerId, Instant)>,
    /// Inbound requests handed to the node and not answered yet.
    waiting: Waiting<InboundRequestId>,
    /// `cfg.metrics`: libp2p's series and the handshake failures, when a node exposes them.
    metrics: Option<crate::metrics::Metrics>,
    /// Connections established since the start (`Census::handshakes`).
    handshakes: u64,
    /// Reachability, relays and hole punches.
    nat: Nat,
    /// The peer listens: its first dials wait for the listener, so that they leave from
    /// the listening port (what peers observe is then what a hole punch can reach).
    listening: bool,
    /// A node's routing-table refresh rounds (clients use Kademlia's own bootstrap).
    refresh: Option<Refresh>,
}

/// Whether a routing-table bucket holds as many peers as Kademlia keeps (its k).
fn bucket_full(b: &kad::KBucketRef<'_, kad::KBucketKey<PeerId>, kad::Addresses>) -> bool {
    b.num_entries() >= kad::K_VALUE.get()
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::UnboundedSender<NetEvent>,
        cfg: NetConfig,
    ) -> Self {
        let now = Instant::now();
        let target = |addr: &Multiaddr, bootstrap: bool| Target {
            addr: addr.clone(),
            peer: addr.iter().find_map(|p| match p {
                Protocol::P2p(id) => Some(id),
                _ => None,
            }),
            connected: false,
            dialing: None,
            backoff: Backoff::new(now),
            bootstrap,
            joined: false,
        };
        let mut targets: Vec<Target> = cfg.bootstrap.iter().map(|a| target(a, true)).collect();
        targets.extend(cfg.peers.iter().map(|a| target(a, false)));
        let fingerprint = match cfg.psk {
            Some(psk) => psk.fingerprint().to_string(),
            None => "none (open mesh)".to_string(),
        };
        EventLoop {
            swarm,
            commands,
            events,
            pending_requests: HashMap::new(),
            targets,
            dials: HashMap::new(),
            connections: HashMap::new(),
            live: HashMap::new(),
            last_alive: HashMap::new(),
            // Two missed pings (libp2p's own failure report can take 10 s more, as opening a
            // new ping stream on a dead link waits for its negotiation timeout).
            silence_limit: cfg.heartbeat.max(Duration::from_millis(100)) * 2 + Duration::from_millis(500),
            found: DialQueue::new(),
            kad_server: cfg.kad_server,
            handshake_logged: Throttle::new(Duration::from_secs(3600), 1024),
            refusal_logged: Throttle::new(Duration::from_secs(60), 1024),
            fingerprint,
            allowed: cfg.allowed_peers.clone(),
            limits: cfg.limits,
            // Far more than a node's clients at once; a peer forgotten early must only greet.
            admitted: Recent::new(4096),
            unadmitted: HashMap::new(),
            waiting: Waiting::new(cfg.limits.requests_per_peer, cfg.limits.requests),
            metrics: cfg.metrics,
            handshakes: 0,
            nat: Nat::default(),
            listening: !cfg.listen.is_empty(),
            refresh: cfg.kad_server.then(|| Refresh::new(cfg.kad_refresh.unwrap_or(NODE_REFRESH), now, rand::random())),
        }
    }

    /// Runs until [`super::NetHandle::shutdown`] or until every handle is dropped.
    pub async fn run(mut self) {
        let first =
            tokio::time::Instant::now() + if self.listening { Duration::from_millis(100) } else { Duration::ZERO };
        let mut redial = tokio::time::interval_at(first, Duration::from_millis(250));
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let refresh_at = |r: &Option<Refresh>| {
            r.as_ref()
                .map(|r| tokio::time::Instant::from_std(r.next()))
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365))
        };
        let refresh_timer = tokio::time::sleep_until(refresh_at(&self.refresh));
        tokio::pin!(refresh_timer);
        loop {
            tokio::select! {
                () = &mut refresh_timer, if self.refresh.is_some() => {
                    self.refresh_routes();
                    refresh_timer.as_mut().reset(refresh_at(&self.refresh));
                }
                event = self.swarm.select_next_some() => {
                    self.on_swarm_event(event);
                    // A round that ended over its budget puts the next off (clients have no
                    // rounds: no clock read on their hot path).
                    if self.refresh.is_some() {
                        let at = refresh_at(&self.refresh);
                        if refresh_timer.deadline() != at {
                            refresh_timer.as_mut().reset(at);
                        }
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown) | None => break,
                    Some(cmd) => self.on_command(cmd),
                },
                _ = redial.tick(), if self.watching() => {
                    self.redial();
                    self.dial_found();
                    self.check_heartbeats();
                    self.close_ungreeted();
                    self.announce_overdue();
                    self.reserve();
                }
            }
        }
        // Outstanding callers learn that the runtime is gone instead of waiting forever.
        for (_, reply) in self.pending_requests.drain() {
            let _ = reply.send(Err(Error::NodeStopped));
        }
        debug!("network event loop stopped");
    }

    /// Hands Kademlia an address of `peer`, unless its bucket is full without it. There,
    /// libp2p would hold the peer as pending and dial the bucket's oldest entry to see
    /// whether it lives (idle links have closed, so it always dials); the dialed node, learning
    /// of this one the same way, dials its own oldest, and so on: a chain of connections as
    /// long as the share of the mesh outside each table, so it grew with the mesh (218
    /// connections per idle node in 600 s at 256 nodes, 57 at 64: docs/BENCHMARKS.md). A full
    /// bucket keeps its old contacts, as Kademlia prefers; one that dies leaves when a request
    /// to it fails, and the next peer heard of takes its slot.
    fn route(&mut self, peer: PeerId, addr: Multiaddr) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let full =
            kad.kbucket(peer).is_some_and(|b| bucket_full(&b) && !b.iter().any(|e| *e.node.key.preimage() == peer));
        if !full {
            kad.add_address(&peer, addr);
        }
    }

    /// A node's refresh round: lookups of its own key and of one farther bucket's with room.
    fn refresh_routes(&mut self) {
        let Some(refresh) = self.refresh.as_mut() else { return };
        let local = *self.swarm.local_peer_id();
        let kad = &mut self.swarm.behaviour_mut().kad;
        // Buckets come closest first.
        let closest = kad.kbuckets().next().and_then(|b| b.range().0.ilog2());
        let full: Vec<u32> = kad.kbuckets().filter(bucket_full).filter_map(|b| b.range().0.ilog2()).collect();
        let now = Instant::now();
        let bucket = refresh.round(now, &with_room(closest, &full), rand::random());
        debug!(?closest, ?bucket, next_in = ?refresh.next().saturating_duration_since(now), "refreshing the routing table");
        refresh.looking_up(kad.get_closest_peers(local));
        if let Some(b) = bucket {
            refresh.looking_up(kad.get_closest_peers(key_in_bucket(local, b)));
        }
    }

    /// Whether the housekeeping tick has anything to watch: links to check, dials to make
    /// or retry, holds to end. An idle node has none and sleeps until an event comes
    /// (four wake-ups a second per idle node were most of an idle mesh's CPU).
    fn watching(&self) -> bool {
        !self.last_alive.is_empty()
            || !self.unadmitted.is_empty()
            || !self.found.idle()
            || self.targets.iter().any(|t| !t.connected && !t.joined)
            || !self.nat.idle()
    }

    fn emit(&self, event: NetEvent) {
        // The receiver is gone only while the process shuts down; nothing to do then.
        let _ = self.events.send(event);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Request { peer, addrs, request, reply } => {
                // We have business with this peer: its connection stays.
                self.admit(peer);
                let id = self.swarm.behaviour_mut().rr.send_request_with_addresses(&peer, request, addrs);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond { channel: ReplyTo(Reply::Swarm(channel)), response } => {
                if self.swarm.behaviour_mut().rr.send_response(channel, response).is_err() {
                    debug!("response dropped: the asking peer has gone");
                }
            }
            #[cfg(test)]
            Command::Respond { channel: ReplyTo(Reply::Test(_)), .. } => {}
            Command::Dial { addr } => {
                let opts = DialOpts::from(addr.clone());
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, addr);
                    }
                    Err(e) => warn!(%addr, cause = %error_chain(&e), "dial failed"),
                }
            }
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Census { reply } => {
                let info = self.swarm.network_info();
                let (connections, dialing) =
                    (info.connection_counters().num_established(), info.connection_counters().num_pending_outgoing());
                let routing = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .kbuckets()
                    .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                    .collect();
                let queries = u32::try_from(self.swarm.behaviour_mut().kad.iter_queries().count()).unwrap_or(u32::MAX);
                let _ = reply.send(Census { connections, dialing, routing, queries, handshakes: self.handshakes });
            }
            Command::Shutdown => {}
        }
    }

    /// Dials configured peers that are not connected and whose backoff has passed.
    fn redial(&mut self) {
        let now = Instant::now();
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            if t.connected || t.joined || t.dialing.is_some() || !t.backoff.due(now) {
                continue;
            }
            if let Some(peer) = t.peer
                && self.swarm.is_connected(&peer)
            {
                continue;
            }
            let opts = DialOpts::unknown_peer_id().address(t.addr.clone()).build();
            let id = opts.connection_id();
            let addr = t.addr.clone();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.targets[i].dialing = Some(id);
                    self.targets[i].backoff.attempted(now);
                }
                Err(e) => {
                    self.targets[i].backoff.failed(now);
                    debug!(%addr, cause = %error_chain(&e), "dial not started");
                }
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(m) = &self.metrics {
            m.swarm.record(&event);
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let local = *self.swarm.local_peer_id();
                let addr = address.with(Protocol::P2p(local));
                self.emit(NetEvent::Listening { addr });
            }
            // Counted as dials start: a lookup's last dials land after it ends (within
            // milliseconds, at 128 nodes 6 % of them), and are its cost all the same.
            SwarmEvent::Dialing { .. } => {
                if let Some(r) = &mut self.refresh {
                    r.dialed();
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                let remote = endpoint.get_remote_address().clone();
                self.connections.insert(connection_id, remote.clone());
                self.dials.remove(&connection_id);
                self.handshakes += 1;
                let now = Instant::now();
                self.found.resolved(connection_id, true, now);
                self.dial_found();
                let mut bootstrap = false;
                let mut configured = false;
                for t in &mut self.targets {
                    if t.dialing == Some(connection_id) || t.peer == Some(peer_id) {
                        t.dialing = None;
                        t.connected = true;
                        t.peer = Some(peer_id);
                        t.backoff.reset(now);
                        // A bootstrap peer serves once: the DHT is joined through it, then its
                        // link idles out (held open on both sides, and re-joined at every
                        // reconnection, it fed a storm of queries). Other configured peers
                        // keep their link.
                        configured |= !t.bootstrap;
                        if t.bootstrap && !t.joined {
                            t.joined = true;
                            bootstrap = true;
                            let addr = without_peer(&t.addr);
                            self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                        }
                    }
                }
                if bootstrap && let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                    debug!(cause = %e, "kademlia bootstrap not started");
                }
                debug!(peer = %peer_id, %remote, established = num_established.get(), "connection established");
                self.last_alive.insert(connection_id, (peer_id, Instant::now()));
                if configured || self.admitted.contains(&peer_id) {
                    // A peer we were told to stay connected to, or one back after a
                    // reconnection: its new connection stays too.
                    self.admit(peer_id);
                } else if endpoint.is_listener() {
                    self.unadmitted.insert(connection_id, (peer_id, Instant::now()));
                }
                let conns = self.live.entry(peer_id).or_default();
                conns.insert(connection_id);
                if conns.len() == 1 {
                    let reach = Reach::of(&remote);
                    if reach == Reach::Relayed && !self.kad_server {
                        // Work starts once the hole punch has had its chance.
                        self.nat.hold(peer_id, connection_id, remote, now);
                    } else {
                        self.emit(NetEvent::Connected { peer: peer_id, remote, reach });
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, cause, .. } => {
                self.connections.remove(&connection_id);
                self.unadmitted.remove(&connection_id);
                if num_established == 0 {
                    self.forget_peer(peer_id);
                }
                debug!(peer = %peer_id, cause = ?cause, remaining = num_established, "connection closed");
                self.connection_gone(peer_id, connection_id);
                self.relayed_closed(connection_id);
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                self.on_dial_error(connection_id, peer_id, &error);
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                let ip = ip_of(&send_back_addr).map(|ip| ip.to_string()).unwrap_or_default();
                if let ListenError::Denied { cause } = &error {
                    // A limit said no: a flood, or a burst past the node's budget. Each refusal
                    // cost nothing beyond the accept; one line a minute per address says so.
                    if self.refusal_logged.allow(ip.clone(), Instant::now()) {
                        warn!(remote = %send_back_addr, cause = %error_chain(cause), "refusing incoming connections (limit reached)");
                    } else {
                        trace!(remote = %send_back_addr, "incoming connection refused (limit)");
                    }
                } else {
                    let cause = error_chain(&error);
                    if secret_suspected(&cause) {
                        self.log_handshake_failure(format!("in:{ip}"), &send_back_addr.to_string(), &cause);
                    } else {
                        debug!(remote = %send_back_addr, %cause, "incoming handshake failed; the keys matched");
                    }
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::ListenerError { error, .. } => warn!(cause = %error_chain(&error), "listener error"),
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                if let Some(relay) = self.nat.listener_closed(listener_id) {
                    let cause = reason.err().map(|e| error_chain(&e)).unwrap_or_else(|| "closed".into());
                    warn!(%relay, %cause, "lost the slot on a relay; looking for another");
                    self.reserve();
                }
            }
            other => trace!(?other, "swarm event"),
        }
    }

    /// Closes connections whose peer has not answered a ping for too long.
    fn check_heartbeats(&mut self) {
        let now = Instant::now();
        let silent: Vec<(ConnectionId, PeerId)> = self
            .last_alive
            .iter()
            .filter(|(_, (_, t))| now.duration_since(*t) > self.silence_limit)
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        for (connection, peer) in silent {
            warn!(%peer, silent_for = ?self.silence_limit, "peer stopped answering heartbeats; closing its connection");
            self.connection_gone(peer, connection);
            self.swarm.close_connection(connection);
        }
    }

    /// Closes inbound connections whose peer said nothing useful within the greeting window:
    /// without this, anyone with the secret (or anyone at all, on an open mesh) could hold
    /// connections, and their descriptors, for the swarm's long idle timeout.
    fn close_ungreeted(&mut self) {
        let now = Instant::now();
        let late: Vec<(ConnectionId, PeerId)> = self
            .unadmitted
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) > self.limits.greeting_window)
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        for (connection, peer) in late {
            debug!(%peer, "closing a connection that sent no request in time");
            self.unadmitted.remove(&connection);
            self.swarm.close_connection(connection);
        }
    }

    /// The peer belongs: its connections may stay idle.
    fn admit(&mut self, peer: PeerId) {
        if self.admitted.insert(peer) {
            self.unadmitted.retain(|_, (p, _)| *p != peer);
        }
        self.swarm.behaviour_mut().keep.keep(peer);
    }

    /// Dials found peers while dial slots are free.
    fn dial_found(&mut self) {
        let now = Instant::now();
        while let Some((peer, addrs)) = self.found.next() {
            if self.swarm.is_connected(&peer) {
                continue;
            }
            // Discovery is unauthenticated: the peer counts only once a connection
            // (pnet + noise) is established, never on being found alone. Without addresses
            // the swarm asks its behaviours (Kademlia knows where the peer listens).
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .extend_addresses_through_behaviour()
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let id = opts.connection_id();
            if self.swarm.dial(opts).is_ok() {
                self.found.started(id, peer, now);
            }
        }
    }

    /// The peer's last connection closed: its requests no longer count.
    fn forget_peer(&mut self, peer: PeerId) {
        self.waiting.forget(&peer);
    }

    /// A connection stopped counting; the peer is gone when none is left.
    fn connection_gone(&mut self, peer: PeerId, connection: ConnectionId) {
        self.last_alive.remove(&connection);
        let Some(conns) = self.live.get_mut(&peer) else { return };
        if !conns.remove(&connection) || !conns.is_empty() {
            return;
        }
        self.live.remove(&peer);
        for t in &mut self.targets {
            if t.peer == Some(peer) {
                t.connected = false;
            }
        }
        if self.nat.release(&peer).is_some() {
            // Never announced: its relayed link went before the hole punch ended.
            return;
        }
        self.emit(NetEvent::Disconnected { peer });
    }

    /// One warning per remote (address or IP) naming the likely cause; later ones at debug,
    /// so a peer with another secret never floods the log.
    fn log_handshake_failure(&mut self, key: String, remote: &str, cause: &str) {
        if let Some(m) = &self.metrics {
            m.node.handshake_failed();
        }
        if self.handshake_logged.allow(key, Instant::now()) {
            warn!(
                %remote,
                fingerprint = %self.fingerprint,
                %cause,
                "a peer failed the network-key handshake: it probably uses a different secret \
                 (local network key fingerprint {})",
                self.fingerprint
            );
        } else {
            debug!(%remote, %cause, "handshake failed again");
        }
    }

    fn on_dial_error(&mut self, connection_id: ConnectionId, peer: Option<PeerId>, error: &DialError) {
        let now = Instant::now();
        let cause = error_chain(error);
        let handshake = matches!(error, DialError::Transport(_)) && secret_suspected(&cause);
        self.found.resolved(connection_id, false, now);
        let mut configured = None;
        for t in &mut self.targets {
            if t.dialing == Some(connection_id) {
                t.dialing = None;
                t.backoff.failed(now);
                configured = Some(t.addr.clone());
            }
        }
        let configured = configured.or_else(|| self.dials.remove(&connection_id));
        // A dial that timed out to a peer found by discovery, a hole punch or a reachability
        // probe is most often an address behind a NAT or firewall that drops it: no warning.
        let handshake = handshake && (configured.is_some() || !cause.contains("Timeout"));
        if handshake {
            // Configured peers are warned about each; peers found by discovery (mDNS answers
            // are free to forge, in any number) share one warning.
            let (key, remote) = match (&configured, peer) {
                (Some(addr), _) => (addr.to_string(), addr.to_string()),
                (None, Some(p)) => ("discovered".to_string(), p.to_string()),
                (None, None) => ("discovered".to_string(), String::new()),
            };
            self.log_handshake_failure(format!("out:{key}"), &remote, &cause);
        } else {
            debug!(peer = ?peer, addr = ?configured, %cause, "dial failed");
        }
        let refused = cause.contains("Connection refused") || matches!(error, DialError::WrongPeerId { .. });
        if let Some(addr) = configured {
            let reason = if handshake {
                format!("the secure handshake failed ({cause}); the peer probably uses a different secret")
            } else {
                cause
            };
            self.emit(NetEvent::DialFailed { addr, reason, handshake, refused });
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        if let Some(m) = &self.metrics {
            match &event {
                BehaviourEvent::Kad(e) => m.swarm.record(e),
                BehaviourEvent::Identify(e) => m.swarm.record(e),
                BehaviourEvent::Ping(e) => m.swarm.record(e),
                _ => {}
            }
        }
        match event {
            BehaviourEvent::Rr(event) => self.on_rr_event(event),
            BehaviourEvent::Gate(never) | BehaviourEvent::Limits(never) | BehaviourEvent::Keep(never) => match never {},
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let now = Instant::now();
                for (peer, addr) in found {
                    if self.kad_server {
                        // Nodes need no links to each other, only to clients: a LAN peer is
                        // remembered for Kademlia (which hands it to whoever asks), not dialed.
                        self.route(peer, without_peer(&addr));
                    } else if !self.swarm.is_connected(&peer) && !self.found.offer(peer, Some(addr), now) {
                        trace!(%peer, "found on the LAN; not queued (dialing, backing off, or queue full)");
                    }
                }
                self.dial_found();
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Identify(identify::Event::Received { connection_id, peer_id, info }) => {
                let kad_proto = StreamProtocol::new(KAD_PROTOCOL_NAME);
                if !info.protocols.contains(&kad_proto) {
                    return;
                }
                let over_loopback =
                    self.connections.get(&connection_id).and_then(ip_of).is_some_and(|ip| ip.is_loopback());
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) && peer_id != *self.swarm.local_peer_id() {
                    self.nat.relay_seen(peer_id, &info.listen_addrs, over_loopback);
                    self.reserve();
                }
                for addr in info.listen_addrs {
                    if worth_dialing(&addr, over_loopback) {
                        self.route(peer_id, without_peer(&addr));
                    }
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, is_new_peer: true, .. }) => {
                trace!(%peer, "kademlia learned a peer");
                // A client looks at every node it learns of; nodes only route.
                if !self.kad_server && !self.swarm.is_connected(&peer) {
                    self.found.offer(peer, None, Instant::now());
                    self.dial_found();
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, step, stats, .. }) if step.last => {
                trace!(?id, requests = stats.num_requests(), "kademlia query done");
                if let Some(r) = &mut self.refresh
                    && let Some(dials) = r.finished(id)
                {
                    let next_in = r.next().saturating_duration_since(Instant::now());
                    debug!(dials, ?next_in, "routing table refreshed");
                    if let Some(m) = &self.metrics {
                        m.node.refreshed(dials);
                    }
                }
            }
            BehaviourEvent::Kad(event) => trace!(?event, "kademlia"),
            BehaviourEvent::Autonat(event) => self.on_autonat(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client(event),
            BehaviourEvent::Relay(event) => self.on_relay(event),
            BehaviourEvent::Dcutr(event) => self.on_dcutr(event),
            BehaviourEvent::Ping(ping::Event { connection, result: Err(ping::Failure::Unsupported), .. }) => {
                // Not a dispy peer's behaviour, but not a sign of death either: such a peer
                // is judged by its connection alone.
                self.last_alive.remove(&connection);
            }
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(e) }) => {
                // libp2p reports a failed ping but keeps the connection: a peer that stopped
                // answering is gone for our purposes. Closing may hang on a dead link, so the
                // loss is announced now.
                warn!(%peer, cause = %e, "peer stopped answering heartbeats; closing its connection");
                self.connection_gone(peer, connection);
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Ping(ping::Event { connection, result: Ok(_), .. }) => {
                if let Some((_, t)) = self.last_alive.get_mut(&connection) {
                    *t = Instant::now();
                }
            }
        }
    }

    fn on_rr_event(&mut self, event: request_response::Event<dispy_protocol::Request, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request_id, request, channel }, .. } => {
                self.on_request(peer, request_id, request, channel);
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(Error::Request { peer: peer.to_string(), reason: error_chain(&error) }));
                }
            }
            Event::InboundFailure { peer, error, request_id, .. } => {
                self.answered(request_id);
                // Covers malformed and oversized requests: the peer is told nothing more
                // than a closed stream, and the node goes on.
                warn!(%peer, cause = %error_chain(&error), "dropped an inbound request that failed");
            }
            Event::ResponseSent { request_id, .. } => self.answered(request_id),
        }
    }

    /// An inbound request: refused here when the peer is not admitted by id or has too many
    /// waiting, else handed to the node.
    fn on_request(
        &mut self,
        peer: PeerId,
        id: InboundRequestId,
        request: dispy_protocol::Request,
        channel: ResponseChannel<Response>,
    ) {
        if let Some(allowed) = &self.allowed
            && !allowed.contains(&peer)
        {
            if self.refusal_logged.allow(format!("peer:{peer}"), Instant::now()) {
                warn!(%peer, "refused a request from a peer not on this node's list of allowed peers");
            }
            let message = format!(
                "this node serves only the peers it was told to admit (serve --allow-peer, or the embedded \
                 node of another client); peer {peer} is not one of them"
            );
            self.refuse(channel, RefusalKind::NotAllowed, message);
            return;
        }
        if let Err(message) = self.waiting.take(peer, id) {
            if self.refusal_logged.allow(format!("busy:{peer}"), Instant::now()) {
                warn!(%peer, %message, "refusing a peer's requests");
            }
            self.refuse(channel, RefusalKind::Overloaded, message);
            return;
        }
        self.admit(peer);
        self.emit(NetEvent::Request { peer, request, channel: ReplyTo::swarm(channel) });
    }

    fn refuse(&mut self, channel: ResponseChannel<Response>, kind: RefusalKind, message: String) {
        let response = Response::Refused(Refusal::new(kind, message));
        if self.swarm.behaviour_mut().rr.send_response(channel, response).is_err() {
            debug!("refusal dropped: the asking peer has gone");
        }
    }

    /// An inbound request was answered or failed: it no longer counts against its peer.
    fn answered(&mut self, id: InboundRequestId) {
        self.waiting.answered(&id);
    }
}
