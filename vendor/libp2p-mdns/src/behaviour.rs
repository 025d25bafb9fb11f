// Copyright 2018 Parity Technologies (UK) Ltd.
//
// Permission is hereby granted, free of charge, to any person obtaining a
// copy of this software and associated documentation files (the "Software"),
// to deal in the Software without restriction, including without limitation
// the rights to use, copy, modify, merge, publish, distribute, sublicense,
// and/or sell copies of the Software, and to permit persons to whom the
// Software is furnished to do so, subject to the following conditions:
//
// The above copyright notice and this permission notice shall be included in
// all copies or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS
// OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
// FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
// AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
// LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING
// FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
// DEALINGS IN THE SOFTWARE.

mod iface;
mod socket;
mod timer;

use std::{
    cmp,
    collections::{
        hash_map,
        VecDeque,
        hash_map::{Entry, HashMap},
    },
    convert::Infallible,
    fmt,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Instant,
};

use futures::{Stream, StreamExt, channel::mpsc};
use if_watch::IfEvent;
use libp2p_core::{Endpoint, Multiaddr, transport::PortUse};
use libp2p_identity::PeerId;
use libp2p_swarm::{
    ConnectionDenied, ConnectionId, ListenAddresses, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, behaviour::FromSwarm, dummy,
};

use self::iface::InterfaceState;
use crate::{
    Config,
    behaviour::{socket::AsyncSocket, timer::Builder},
};

/// An abstraction to allow for compatibility with various async runtimes.
pub trait Provider: 'static {
    /// The Async Socket type.
    type Socket: AsyncSocket;
    /// The Async Timer type.
    type Timer: Builder + Stream;
    /// The IfWatcher type.
    type Watcher: Stream<Item = std::io::Result<IfEvent>> + fmt::Debug + Unpin;

    type TaskHandle: Abort;

    /// Create a new instance of the `IfWatcher` type.
    fn new_watcher() -> Result<Self::Watcher, std::io::Error>;

    #[track_caller]
    fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self::TaskHandle;
}

#[allow(unreachable_pub)] // Not re-exported.
pub trait Abort {
    fn abort(self);
}

/// The type of a [`Behaviour`] using the `tokio` implementation.
#[cfg(feature = "tokio")]
pub mod tokio {
    use std::future::Future;

    use if_watch::tokio::IfWatcher;
    use tokio::task::JoinHandle;

    use super::Provider;
    use crate::behaviour::{Abort, socket::tokio::TokioUdpSocket, timer::tokio::TokioTimer};

    #[doc(hidden)]
    pub enum Tokio {}

    impl Provider for Tokio {
        type Socket = TokioUdpSocket;
        type Timer = TokioTimer;
        type Watcher = IfWatcher;
        type TaskHandle = JoinHandle<()>;

        fn new_watcher() -> Result<Self::Watcher, std::io::Error> {
            IfWatcher::new()
        }

        fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self::TaskHandle {
            tokio::spawn(task)
        }
    }

    impl Abort for JoinHandle<()> {
        fn abort(self) {
            JoinHandle::abort(&self)
        }
    }

    pub type Behaviour = super::Behaviour<Tokio>;
}

/// dispy-peer: the most (peer, address) records kept. A LAN of 256 peers with a few addresses
/// each needs ~1000; beyond the bound, new records are dropped (known ones are still
/// refreshed) until some expire, so a flood of forged answers costs bounded memory.
const MAX_RECORDS: usize = 4096;

/// dispy-peer: the discovered (peer, address) records and when each expires, in a map (upstream
/// kept a list and searched it linearly for every record received: quadratic in a flood), at
/// most [`MAX_RECORDS`] of them.
#[derive(Debug, Default)]
struct Records {
    /// Per peer, its addresses and their expiry.
    by_peer: HashMap<PeerId, HashMap<Multiaddr, Instant>>,
    /// Records in `by_peer`, in all.
    len: usize,
    /// No record expires before this (a lower bound: refreshes only push expiries later), so
    /// that `expire` scans the table only when something may have expired.
    next_expiry: Option<Instant>,
}

/// dispy-peer: what [`Records::insert`] did with a record.
#[derive(Debug, PartialEq, Eq)]
enum Inserted {
    /// A new record.
    New,
    /// A known record, its expiry pushed later if the new one is.
    Refreshed,
    /// A new record dropped: the table is full.
    Dropped,
}

impl Records {
    /// Adds or refreshes a record; constant time.
    fn insert(&mut self, peer: PeerId, addr: Multiaddr, expires: Instant) -> Inserted {
        let full = self.len >= MAX_RECORDS;
        let addrs = match self.by_peer.entry(peer) {
            hash_map::Entry::Occupied(e) => e.into_mut(),
            hash_map::Entry::Vacant(_) if full => return Inserted::Dropped,
            hash_map::Entry::Vacant(e) => e.insert(HashMap::new()),
        };
        match addrs.entry(addr) {
            hash_map::Entry::Occupied(mut e) => {
                let cur = e.get_mut();
                *cur = cmp::max(*cur, expires);
                Inserted::Refreshed
            }
            hash_map::Entry::Vacant(_) if full => Inserted::Dropped,
            hash_map::Entry::Vacant(e) => {
                e.insert(expires);
                self.len += 1;
                self.next_expiry = Some(self.next_expiry.map_or(expires, |n| n.min(expires)));
                Inserted::New
            }
        }
    }

    /// Removes the records expired at `now` (a scan only when one may have) and returns them.
    fn expire(&mut self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        let mut expired = Vec::new();
        if self.next_expiry.is_none_or(|n| n > now) {
            return expired;
        }
        let mut next = None;
        self.by_peer.retain(|peer, addrs| {
            addrs.retain(|addr, expires| {
                if *expires <= now {
                    expired.push((*peer, addr.clone()));
                    return false;
                }
                next = Some(next.map_or(*expires, |n: Instant| n.min(*expires)));
                true
            });
            !addrs.is_empty()
        });
        self.len -= expired.len();
        self.next_expiry = next;
        expired
    }

    /// A peer's addresses.
    fn addresses(&self, peer: &PeerId) -> impl Iterator<Item = &Multiaddr> {
        self.by_peer.get(peer).into_iter().flat_map(|a| a.keys())
    }
}

/// A `NetworkBehaviour` for mDNS. Automatically discovers peers on the local network and adds
/// them to the topology.
#[derive(Debug)]
pub struct Behaviour<P>
where
    P: Provider,
{
    /// InterfaceState config.
    config: Config,

    /// Iface watcher.
    if_watch: P::Watcher,

    /// Handles to tasks running the mDNS queries.
    if_tasks: HashMap<IpAddr, P::TaskHandle>,

    query_response_receiver: mpsc::Receiver<(PeerId, Multiaddr, Instant)>,
    query_response_sender: mpsc::Sender<(PeerId, Multiaddr, Instant)>,

    /// Nodes that we have discovered, the address, and when their TTL expires.
    ///
    /// dispy-peer: a bounded map (see [`Records`]).
    discovered_nodes: Records,

    /// Future that fires when the TTL of at least one node in `discovered_nodes` expires.
    ///
    /// `None` if `discovered_nodes` is empty.
    closest_expiration: Option<P::Timer>,

    /// The current set of listen addresses.
    ///
    /// This is shared across all interface tasks using an [`RwLock`].
    /// The [`Behaviour`] updates this upon new [`FromSwarm`]
    /// events where as [`InterfaceState`]s read from it to answer inbound mDNS queries.
    listen_addresses: Arc<RwLock<ListenAddresses>>,

    local_peer_id: PeerId,

    /// Pending behaviour events to be emitted.
    pending_events: VecDeque<ToSwarm<Event, Infallible>>,
}

impl<P> Behaviour<P>
where
    P: Provider,
{
    /// Builds a new `Mdns` behaviour.
    pub fn new(config: Config, local_peer_id: PeerId) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel(10); // Chosen arbitrarily.

        Ok(Self {
            config,
            if_watch: P::new_watcher()?,
            if_tasks: Default::default(),
            query_response_receiver: rx,
            query_response_sender: tx,
            discovered_nodes: Default::default(),
            closest_expiration: Default::default(),
            listen_addresses: Default::default(),
            local_peer_id,
            pending_events: Default::default(),
        })
    }

    /// Returns true if the given `PeerId` is in the list of nodes discovered through mDNS.
    #[deprecated(note = "Use `discovered_nodes` iterator instead.")]
    pub fn has_node(&self, peer_id: &PeerId) -> bool {
        self.discovered_nodes().any(|p| p == peer_id)
    }

    /// Returns the list of nodes that we have discovered through mDNS and that are not expired.
    ///
    /// dispy-peer: each peer once (upstream listed a peer once per address).
    pub fn discovered_nodes(&self) -> impl ExactSizeIterator<Item = &PeerId> {
        self.discovered_nodes.by_peer.keys()
    }

    /// Expires a node before the ttl.
    #[deprecated(note = "Unused API. Will be removed in the next release.")]
    pub fn expire_node(&mut self, peer_id: &PeerId) {
        let now = Instant::now();
        if let Some(addrs) = self.discovered_nodes.by_peer.get_mut(peer_id) {
            for expires in addrs.values_mut() {
                *expires = now;
            }
            self.discovered_nodes.next_expiry = Some(now);
        }
        self.closest_expiration = Some(P::Timer::at(now));
    }
}

impl<P> NetworkBehaviour for Behaviour<P>
where
    P: Provider,
{
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        _addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let Some(peer_id) = maybe_peer else {
            return Ok(vec![]);
        };

        Ok(self.discovered_nodes.addresses(&peer_id).cloned().collect())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        ev: THandlerOutEvent<Self>,
    ) {
        libp2p_core::util::unreachable(ev)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.listen_addresses
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .on_swarm_event(&event);
    }

    #[tracing::instrument(level = "trace", name = "NetworkBehaviour::poll", skip(self, cx))]
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            // Check for pending events and emit them.
            if let Some(event) = self.pending_events.pop_front() {
                return Poll::Ready(event);
            }

            // Poll ifwatch.
            while let Poll::Ready(Some(event)) = Pin::new(&mut self.if_watch).poll_next(cx) {
                match event {
                    Ok(IfEvent::Up(inet)) => {
                        let addr = inet.addr();
                        if addr.is_loopback() {
                            continue;
                        }
                        if addr.is_ipv4() && self.config.enable_ipv6
                            || addr.is_ipv6() && !self.config.enable_ipv6
                        {
                            continue;
                        }
                        if let Entry::Vacant(e) = self.if_tasks.entry(addr) {
                            match InterfaceState::<P::Socket, P::Timer>::new(
                                addr,
                                self.config.clone(),
                                self.local_peer_id,
                                self.listen_addresses.clone(),
                                self.query_response_sender.clone(),
                            ) {
                                Ok(iface_state) => {
                                    e.insert(P::spawn(iface_state));
                                }
                                Err(err) => {
                                    tracing::error!("failed to create `InterfaceState`: {}", err)
                                }
                            }
                        }
                    }
                    Ok(IfEvent::Down(inet)) => {
                        if let Some(handle) = self.if_tasks.remove(&inet.addr()) {
                            tracing::info!(instance=%inet.addr(), "dropping instance");

                            handle.abort();
                        }
                    }
                    Err(err) => tracing::error!("if watch returned an error: {}", err),
                }
            }
            // Emit discovered event.
            let mut discovered = Vec::new();

            while let Poll::Ready(Some((peer, addr, expiration))) =
                self.query_response_receiver.poll_next_unpin(cx)
            {
                match self
                    .discovered_nodes
                    .insert(peer, addr.clone(), expiration)
                {
                    Inserted::Refreshed => {}
                    Inserted::Dropped => {
                        tracing::debug!(%peer, address=%addr, "mDNS record table full: dropped");
                    }
                    Inserted::New => {
                        tracing::info!(%peer, address=%addr, "discovered peer on address");
                        discovered.push((peer, addr.clone()));

                        self.pending_events
                            .push_back(ToSwarm::NewExternalAddrOfPeer {
                                peer_id: peer,
                                address: addr,
                            });
                    }
                }
            }

            if !discovered.is_empty() {
                let event = Event::Discovered(discovered);
                // Push to the front of the queue so that the behavior event is reported before
                // the individual discovered addresses.
                self.pending_events
                    .push_front(ToSwarm::GenerateEvent(event));
                continue;
            }
            // Emit expired event.
            let now = Instant::now();
            let expired = self.discovered_nodes.expire(now);
            for (peer, addr) in &expired {
                tracing::info!(%peer, address=%addr, "expired peer on address");
            }
            if !expired.is_empty() {
                let event = Event::Expired(expired);
                self.pending_events.push_back(ToSwarm::GenerateEvent(event));
                continue;
            }
            if let Some(closest_expiration) = self.discovered_nodes.next_expiry {
                let mut timer = P::Timer::at(closest_expiration);
                let _ = Pin::new(&mut timer).poll_next(cx);

                self.closest_expiration = Some(timer);
            }

            return Poll::Pending;
        }
    }
}

/// Event that can be produced by the `Mdns` behaviour.
#[derive(Debug, Clone)]
pub enum Event {
    /// Discovered nodes through mDNS.
    Discovered(Vec<(PeerId, Multiaddr)>),

    /// The given combinations of `PeerId` and `Multiaddr` have expired.
    ///
    /// Each discovered record has a time-to-live. When this TTL expires and the address hasn't
    /// been refreshed, we remove it from the list and emit it as an `Expired` event.
    Expired(Vec<(PeerId, Multiaddr)>),
}

/// dispy-peer: tests of the bounded record table.
#[cfg(test)]
mod dispy_tests {
    use std::time::Duration;

    use super::*;

    fn addr(i: usize) -> Multiaddr {
        format!("/ip4/10.{}.{}.{}/tcp/4001", (i >> 16) & 255, (i >> 8) & 255, i & 255)
            .parse()
            .unwrap()
    }

    #[test]
    fn a_forged_flood_costs_bounded_memory() {
        let mut records = Records::default();
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        // A real peer first, then 50,000 forged records: new peers, and many addresses of one.
        let real = PeerId::random();
        assert_eq!(records.insert(real, addr(0), later), Inserted::New);
        let forged = PeerId::random();
        let mut dropped = 0;
        for i in 1..50_000 {
            let peer = if i % 2 == 0 { forged } else { PeerId::random() };
            match records.insert(peer, addr(i), later) {
                Inserted::Dropped => dropped += 1,
                Inserted::New => {}
                Inserted::Refreshed => panic!("record {i} was new"),
            }
        }
        assert_eq!(records.len, MAX_RECORDS);
        let held: usize = records.by_peer.values().map(HashMap::len).sum();
        assert_eq!(held, MAX_RECORDS);
        assert_eq!(dropped, 50_000 - MAX_RECORDS);
        // Full, a known record is still refreshed, and found by its peer.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(records.insert(real, addr(0), much_later), Inserted::Refreshed);
        assert_eq!(records.addresses(&real).collect::<Vec<_>>(), vec![&addr(0)]);
        // Expiry frees the room: only the refreshed record outlives `later`.
        assert!(records.expire(now).is_empty());
        assert_eq!(records.expire(later).len(), MAX_RECORDS - 1);
        assert_eq!(records.len, 1);
        assert_eq!(records.by_peer.len(), 1);
        assert_eq!(records.next_expiry, Some(much_later));
        assert_eq!(records.insert(forged, addr(1), later), Inserted::New);
    }

    #[test]
    fn a_refresh_never_shortens_a_record() {
        let mut records = Records::default();
        let now = Instant::now();
        let peer = PeerId::random();
        records.insert(peer, addr(1), now + Duration::from_secs(60));
        records.insert(peer, addr(1), now + Duration::from_secs(10));
        assert!(records.expire(now + Duration::from_secs(30)).is_empty());
        assert_eq!(records.expire(now + Duration::from_secs(60)), vec![(peer, addr(1))]);
        assert_eq!(records.len, 0);
        assert_eq!(records.next_expiry, None);
    }
}
