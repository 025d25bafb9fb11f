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

mod dns;
mod query;

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt, channel::mpsc};
use libp2p_core::{Multiaddr, multiaddr::Protocol};
use libp2p_identity::PeerId;
use libp2p_swarm::ListenAddresses;
use socket2::{Domain, Socket, Type};

use self::{
    dns::{build_query, build_query_response, build_service_discovery_response},
    query::MdnsPacket,
};
use crate::{
    Config,
    behaviour::{socket::AsyncSocket, timer::Builder},
};

/// Initial interval for starting probe
const INITIAL_TIMEOUT_INTERVAL: Duration = Duration::from_millis(500);

/// dispy-peer: RFC 6762 §5.2: "the interval between the first two queries MUST be at least one
/// second": the back-off restarts from here once the LAN has answered.
const ANSWERED_INTERVAL: Duration = Duration::from_secs(1);

/// dispy-peer: RFC 6762 §6: a response to a query that others may also answer is delayed "by a
/// random amount of time selected with uniform random distribution in the range 20-120 ms",
/// so that the n answers of a LAN of n peers spread over 100 ms instead of one burst.
const ANSWER_DELAY_MIN_MS: u64 = 20;
/// dispy-peer: upper end of the RFC 6762 §6 answer delay.
const ANSWER_DELAY_MAX_MS: u64 = 120;
/// dispy-peer: once a peer knows its LAN (see [`answer_delay`]), its answer window is this
/// much per peer it has heard: the density of RFC 6762's 100 ms window on a LAN of 200 peers.
const ANSWER_SPACING_PER_PEER: Duration = Duration::from_micros(500);
/// dispy-peer: the narrowest answer window (a LAN of one or two).
const ANSWER_WINDOW_MIN: Duration = Duration::from_millis(1);
/// dispy-peer: how long a peer listens before it trusts its count of the LAN: its first query's
/// answers and the others' announcements (RFC 6762 §8.3, one second apart) have come by then.
const LAN_LEARNING: Duration = Duration::from_secs(2);
/// dispy-peer: the most peers counted; beyond this the window is RFC 6762's anyway.
const MAX_HEARD: usize = 1024;

/// dispy-peer: RFC 6762 §8.3: "the Multicast DNS responder MUST send at least two unsolicited
/// responses, one second apart".
const ANNOUNCEMENTS: u8 = 2;
/// dispy-peer: the spacing of the RFC 6762 §8.3 announcements.
const ANNOUNCE_SPACING: Duration = Duration::from_secs(1);
/// dispy-peer: while the instance has no listen address on its interface yet there is nothing
/// to announce: look again after this, doubling up to [`ANNOUNCE_RECHECK_MAX`] (listen
/// addresses reach the behaviour without waking the interface task).
const ANNOUNCE_RECHECK_MIN: Duration = Duration::from_millis(100);
/// dispy-peer: the longest pause between two looks for a listen address to announce.
const ANNOUNCE_RECHECK_MAX: Duration = Duration::from_secs(8);

/// dispy-peer: peers' records a single interface keeps before the behaviour takes them; beyond
/// this a flood of (forged) answers is dropped instead of queued (the behaviour's own table is
/// bounded too). Each answer packet holds at most a handful of records, so a real LAN stays far
/// below this between two polls.
const MAX_PENDING_DISCOVERED: usize = 1024;

/// dispy-peer: queues discovered records up to [`MAX_PENDING_DISCOVERED`], dropping the rest
/// (without even decoding them: the iterator is lazy).
fn push_bounded<I: Iterator>(queue: &mut VecDeque<I::Item>, records: I) {
    let room = MAX_PENDING_DISCOVERED.saturating_sub(queue.len());
    queue.extend(records.take(room));
}

/// dispy-peer: a random answer delay. RFC 6762 §6's 20–120 ms spreads a LAN's answers over
/// 100 ms whatever its size, which on a LAN of three makes every client wait ~70 ms for its
/// first node for nothing. So a peer that has listened for [`LAN_LEARNING`] and heard
/// `heard` others spreads its answer over a window that grows with them (0.5 ms a peer, from
/// 1 ms up to the RFC's 120 ms): the same answers a millisecond, only sooner on a small LAN.
/// Before that (a LAN starting at once, whose size nobody knows yet) it is the RFC's window.
fn answer_delay(heard: usize, listening: Duration) -> Duration {
    if listening < LAN_LEARNING {
        return Duration::from_millis(rand::random_range(ANSWER_DELAY_MIN_MS..=ANSWER_DELAY_MAX_MS));
    }
    let peers = u32::try_from(heard.saturating_add(1)).unwrap_or(u32::MAX);
    let window = ANSWER_SPACING_PER_PEER
        .saturating_mul(peers)
        .clamp(ANSWER_WINDOW_MIN, Duration::from_millis(ANSWER_DELAY_MAX_MS));
    window.mul_f64(rand::random::<f64>())
}

/// dispy-peer: the peers heard on an interface (their answers and announcements), to size the
/// answer window by. Bounded, and it never shrinks: a LAN that lost peers (or a flood of
/// forged names) only widens the window, up to the RFC's.
#[derive(Debug)]
struct Heard {
    peers: HashSet<PeerId>,
    since: Instant,
}

impl Heard {
    fn new() -> Self {
        Self { peers: HashSet::new(), since: Instant::now() }
    }

    fn note(&mut self, peer: &PeerId) {
        if self.peers.len() < MAX_HEARD {
            self.peers.insert(*peer);
        }
    }

    fn answer_delay(&self) -> Duration {
        answer_delay(self.peers.len(), self.since.elapsed())
    }
}

/// dispy-peer: when to query next (replaces upstream's `ProbeState`, which jumped to
/// `query_interval` at the first answer and stayed there).
///
/// RFC 6762 §5.2 continuous querying: "the intervals between successive queries MUST increase
/// by at least a factor of two", up to a cap (here the configured `query_interval`). Before the
/// first answer the gaps are upstream's probe (1 s, 2 s, 4 s, ... capped); the first answer
/// restarts the doubling from 1 s, so a peer that just found the LAN looks again soon (others
/// may still be starting) and then quiets down.
#[derive(Debug, Clone)]
struct QueryBackoff {
    /// The last gap between two queries.
    interval: Duration,
    /// The longest gap (`Config::query_interval` plus a little jitter).
    cap: Duration,
    /// Whether a peer has answered yet.
    answered: bool,
}

impl QueryBackoff {
    fn new(cap: Duration) -> Self {
        Self {
            interval: INITIAL_TIMEOUT_INTERVAL.min(cap),
            cap,
            answered: false,
        }
    }

    /// A query was sent (or, RFC 6762 §7.3, someone else's identical query was seen): the gap
    /// to the next one, twice the last, at most the cap.
    fn next_gap(&mut self) -> Duration {
        self.interval = (self.interval * 2).min(self.cap);
        self.interval
    }

    /// A peer answered: on the first answer, the gap to the next query (1 s, then doubling);
    /// `None` afterwards (the schedule goes on).
    fn on_answer(&mut self) -> Option<Duration> {
        if self.answered {
            return None;
        }
        self.answered = true;
        self.interval = ANSWERED_INTERVAL.min(self.cap);
        Some(self.interval)
    }
}

/// An mDNS instance for a networking interface. To discover all peers when having multiple
/// interfaces an [`InterfaceState`] is required for each interface.
#[derive(Debug)]
pub(crate) struct InterfaceState<U, T> {
    /// Address this instance is bound to.
    addr: IpAddr,
    /// Receive socket.
    recv_socket: U,
    /// Send socket.
    send_socket: U,

    listen_addresses: Arc<RwLock<ListenAddresses>>,

    query_response_sender: mpsc::Sender<(PeerId, Multiaddr, Instant)>,

    /// Buffer used for receiving data from the main socket.
    /// RFC6762 discourages packets larger than the interface MTU, but allows sizes of up to 9000
    /// bytes, if it can be ensured that all participating devices can handle such large packets.
    /// For computers with several interfaces and IP addresses responses can easily reach sizes in
    /// the range of 3000 bytes, so 4096 seems sensible for now. For more information see
    /// [rfc6762](https://tools.ietf.org/html/rfc6762#page-46).
    recv_buffer: [u8; 4096],
    /// Buffers pending to send on the main socket.
    send_buffer: VecDeque<Vec<u8>>,
    /// Discovery timer.
    timeout: T,
    /// dispy-peer: the gaps between queries (RFC 6762 §5.2).
    backoff: QueryBackoff,
    /// dispy-peer: the answer to the queries seen since the last answer went out, due when its
    /// timer fires (RFC 6762 §6), with the id of the first of those queries. One answer at a
    /// time: it is multicast, so it serves every query that arrived meanwhile, and a flood of
    /// queries costs one pending answer.
    pending_answer: Option<(T, u16)>,
    /// dispy-peer: the RFC 6762 §8.3 announcements still to send, and the timer of the next.
    announcements_left: u8,
    /// dispy-peer: fires when the next announcement is due (or when to look again for a listen
    /// address to announce).
    announce_timer: Option<T>,
    /// dispy-peer: the current pause between two looks for a listen address to announce.
    announce_recheck: Duration,
    /// dispy-peer: the peers heard here, for the answer delay (RFC 6762 §6).
    heard: Heard,
    /// dispy-peer: the address our queries leave from, to tell them from others' (RFC 6762 §7.3).
    send_addr: SocketAddr,
    /// Multicast address.
    multicast_addr: IpAddr,
    /// Discovered addresses.
    discovered: VecDeque<(PeerId, Multiaddr, Instant)>,
    /// TTL
    ttl: Duration,
    local_peer_id: PeerId,
}

impl<U, T> InterfaceState<U, T>
where
    U: AsyncSocket,
    T: Builder + futures::Stream,
{
    /// Builds a new [`InterfaceState`].
    pub(crate) fn new(
        addr: IpAddr,
        config: Config,
        local_peer_id: PeerId,
        listen_addresses: Arc<RwLock<ListenAddresses>>,
        query_response_sender: mpsc::Sender<(PeerId, Multiaddr, Instant)>,
    ) -> io::Result<Self> {
        tracing::info!(address=%addr, "creating instance on iface address");
        let recv_socket = match addr {
            IpAddr::V4(addr) => {
                let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(socket2::Protocol::UDP))?;
                socket.set_reuse_address(true)?;
                #[cfg(unix)]
                socket.set_reuse_port(true)?;
                socket.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5353).into())?;
                socket.set_multicast_loop_v4(true)?;
                socket.set_multicast_ttl_v4(255)?;
                socket.join_multicast_v4(&crate::IPV4_MDNS_MULTICAST_ADDRESS, &addr)?;
                size_recv_buffer(&socket, addr.into());
                U::from_std(UdpSocket::from(socket))?
            }
            IpAddr::V6(_) => {
                let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(socket2::Protocol::UDP))?;
                socket.set_reuse_address(true)?;
                #[cfg(unix)]
                socket.set_reuse_port(true)?;
                socket.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 5353).into())?;
                socket.set_multicast_loop_v6(true)?;
                // TODO: find interface matching addr.
                socket.join_multicast_v6(&crate::IPV6_MDNS_MULTICAST_ADDRESS, 0)?;
                size_recv_buffer(&socket, addr);
                U::from_std(UdpSocket::from(socket))?
            }
        };
        let bind_addr = match addr {
            IpAddr::V4(_) => SocketAddr::new(addr, 0),
            IpAddr::V6(_addr) => {
                // TODO: if-watch should return the scope_id of an address
                // as a workaround we bind to unspecified, which means that
                // this probably won't work when using multiple interfaces.
                // SocketAddr::V6(SocketAddrV6::new(addr, 0, 0, scope_id))
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
            }
        };
        let send_socket = UdpSocket::bind(bind_addr)?;
        // dispy-peer: our own queries come back by multicast loop; RFC 6762 §7.3 needs to tell
        // them from others'.
        let send_addr = SocketAddr::new(addr, send_socket.local_addr()?.port());
        let send_socket = U::from_std(send_socket)?;

        // randomize timer to prevent all converging and firing at the same time.
        let query_interval = {
            let jitter = rand::random_range(0..100);
            config.query_interval + Duration::from_millis(jitter)
        };
        let multicast_addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(crate::IPV4_MDNS_MULTICAST_ADDRESS),
            IpAddr::V6(_) => IpAddr::V6(crate::IPV6_MDNS_MULTICAST_ADDRESS),
        };
        Ok(Self {
            addr,
            recv_socket,
            send_socket,
            listen_addresses,
            query_response_sender,
            recv_buffer: [0; 4096],
            send_buffer: Default::default(),
            discovered: Default::default(),
            // dispy-peer: one query now; `on_timeout` re-arms the timer after each.
            timeout: T::at(Instant::now()),
            backoff: QueryBackoff::new(query_interval),
            pending_answer: None,
            announcements_left: ANNOUNCEMENTS,
            announce_timer: Some(T::at(Instant::now())),
            announce_recheck: ANNOUNCE_RECHECK_MIN,
            heard: Heard::new(),
            send_addr,
            multicast_addr,
            ttl: config.ttl,
            local_peer_id,
        })
    }

    /// dispy-peer: the next query goes out `gap` from now.
    fn rearm_query(&mut self, gap: Duration) {
        tracing::trace!(address=%self.addr, ?gap, "next query");
        self.timeout = T::at(Instant::now() + gap);
    }

    /// Our listen addresses that are reachable on this interface, as answer packets (empty
    /// when there is none).
    fn answer_packets(&self, query_id: u16) -> Vec<Vec<u8>> {
        // Only send addresses that belong to this interface.
        // This prevents advertising loopback or other interface addresses
        // to peers that can't reach them.
        let iface_ip = self.addr;
        let read = self
            .listen_addresses
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let relevant_addrs: Vec<&Multiaddr> = read
            .iter()
            .filter(|multiaddr| addr_matches_interface(multiaddr, iface_ip))
            .collect();
        if relevant_addrs.is_empty() {
            return Vec::new();
        }
        build_query_response(query_id, self.local_peer_id, relevant_addrs, self.ttl)
    }

    /// dispy-peer: RFC 6762 §8.3 announcing: once there is an address to announce, send the
    /// unsolicited response (id 0, §18.1) [`ANNOUNCEMENTS`] times, [`ANNOUNCE_SPACING`] apart,
    /// so that peers already running see us without querying often.
    fn on_announce_timer(&mut self) {
        let packets = self.answer_packets(0);
        if packets.is_empty() {
            // No listen address on this interface yet: look again later.
            self.announce_timer = Some(T::at(Instant::now() + self.announce_recheck));
            self.announce_recheck = (self.announce_recheck * 2).min(ANNOUNCE_RECHECK_MAX);
            return;
        }
        tracing::debug!(address=%self.addr, "announcing on iface");
        self.send_buffer.extend(packets);
        self.announcements_left = self.announcements_left.saturating_sub(1);
        self.announce_timer = (self.announcements_left > 0)
            .then(|| T::at(Instant::now() + ANNOUNCE_SPACING));
    }

    fn mdns_socket(&self) -> SocketAddr {
        SocketAddr::new(self.multicast_addr, 5353)
    }
}

impl<U, T> Future for InterfaceState<U, T>
where
    U: AsyncSocket,
    T: Builder + futures::Stream,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();

        loop {
            // 1st priority: Low latency: Create packet ASAP after timeout.
            if this.timeout.poll_next_unpin(cx).is_ready() {
                tracing::trace!(address=%this.addr, "sending query on iface");
                this.send_buffer.push_back(build_query());
                let gap = this.backoff.next_gap();
                this.rearm_query(gap);
                // dispy-peer: poll the new timer (registers the waker) even if the send
                // below is pending.
                continue;
            }

            // dispy-peer: the delayed answer (RFC 6762 §6) and the announcements (§8.3).
            if let Some((timer, query_id)) = &mut this.pending_answer
                && timer.poll_next_unpin(cx).is_ready()
            {
                let query_id = *query_id;
                this.pending_answer = None;
                let packets = this.answer_packets(query_id);
                this.send_buffer.extend(packets);
                continue;
            }
            if let Some(timer) = &mut this.announce_timer
                && timer.poll_next_unpin(cx).is_ready()
            {
                this.on_announce_timer();
                continue;
            }

            // 2nd priority: Keep local buffers small: Send packets to remote.
            if let Some(packet) = this.send_buffer.pop_front() {
                match this.send_socket.poll_write(cx, &packet, this.mdns_socket()) {
                    Poll::Ready(Ok(_)) => {
                        tracing::trace!(address=%this.addr, "sent packet on iface address");
                        continue;
                    }
                    Poll::Ready(Err(err)) => {
                        tracing::error!(address=%this.addr, "error sending packet on iface address {}", err);
                        continue;
                    }
                    Poll::Pending => {
                        this.send_buffer.push_front(packet);
                    }
                }
            }

            // 3rd priority: Keep local buffers small: Return discovered addresses.
            if this.query_response_sender.poll_ready_unpin(cx).is_ready()
                && let Some(discovered) = this.discovered.pop_front()
            {
                match this.query_response_sender.try_send(discovered) {
                    Ok(()) => {}
                    Err(e) if e.is_disconnected() => {
                        return Poll::Ready(());
                    }
                    Err(e) => {
                        this.discovered.push_front(e.into_inner());
                    }
                }

                continue;
            }

            // 4th priority: Remote work: Answer incoming requests.
            match this
                .recv_socket
                .poll_read(cx, &mut this.recv_buffer)
                .map_ok(|(len, from)| MdnsPacket::new_from_bytes(&this.recv_buffer[..len], from))
            {
                Poll::Ready(Ok(Ok(Some(MdnsPacket::Query(query))))) => {
                    tracing::trace!(
                        address=%this.addr,
                        remote_address=%query.remote_addr(),
                        "received query from remote address on address"
                    );

                    // dispy-peer: RFC 6762 §6: answer after a random 20–120 ms, not at once
                    // (upstream did); a query that arrives while an answer is pending is
                    // served by that (multicast) answer.
                    if this.pending_answer.is_none() {
                        let timer = T::at(Instant::now() + this.heard.answer_delay());
                        this.pending_answer = Some((timer, query.query_id()));
                    }
                    // dispy-peer: RFC 6762 §7.3 duplicate question suppression: another
                    // peer's query for the same name (we send no known answers, so theirs
                    // is as good as ours) draws the answers we would have drawn: treat ours
                    // as sent.
                    if *query.remote_addr() != this.send_addr {
                        let gap = this.backoff.next_gap();
                        this.rearm_query(gap);
                    }
                    continue;
                }
                Poll::Ready(Ok(Ok(Some(MdnsPacket::Response(response))))) => {
                    tracing::trace!(
                        address=%this.addr,
                        remote_address=%response.remote_addr(),
                        "received response from remote address on address"
                    );

                    // dispy-peer: bounded; a flood beyond it is dropped (it would only be
                    // dropped later by the behaviour's bounded table anyway).
                    let before = this.discovered.len();
                    let heard = &mut this.heard;
                    push_bounded(
                        &mut this.discovered,
                        response
                            .extract_discovered(Instant::now(), this.local_peer_id)
                            .inspect(|(peer, _, _)| heard.note(peer)),
                    );

                    // dispy-peer: RFC 6762 §5.2: the first answer restarts the back-off from
                    // 1 s (upstream jumped to `query_interval` and re-armed at every answer).
                    if this.discovered.len() > before
                        && let Some(gap) = this.backoff.on_answer()
                    {
                        this.rearm_query(gap);
                    }
                    continue;
                }
                Poll::Ready(Ok(Ok(Some(MdnsPacket::ServiceDiscovery(disc))))) => {
                    tracing::trace!(
                        address=%this.addr,
                        remote_address=%disc.remote_addr(),
                        "received service discovery from remote address on address"
                    );

                    this.send_buffer
                        .push_back(build_service_discovery_response(disc.query_id(), this.ttl));
                    continue;
                }
                Poll::Ready(Err(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    // No more bytes available on the socket to read
                    continue;
                }
                Poll::Ready(Err(err)) => {
                    tracing::error!("failed reading datagram: {}", err);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(Err(err))) => {
                    tracing::debug!("Parsing mdns packet failed: {:?}", err);
                    continue;
                }
                Poll::Ready(Ok(Ok(None))) => continue,
                Poll::Pending => {}
            }

            return Poll::Pending;
        }
    }
}

/// dispy-peer: the receive buffer asked of the kernel for the mDNS socket. The answers to one
/// query (one per peer, each a datagram of a few hundred bytes but ~2 KiB of kernel memory)
/// arrive within RFC 6762 §6's 100 ms window: the kernel's default (~208 KiB on Linux) holds
/// about a hundred of them, so a LAN of 256 peers overflowed it while our task was busy.
/// 4 MiB holds ~2000; the kernel caps it at `net.core.rmem_max`.
const RECV_BUFFER_BYTES: usize = 4 << 20;

/// dispy-peer: sizes the receive socket's buffer for a burst of answers; the kernel may give
/// less (`net.core.rmem_max`): the effective size is logged at debug. Failing is not fatal.
fn size_recv_buffer(socket: &Socket, addr: IpAddr) {
    if let Err(err) = socket.set_recv_buffer_size(RECV_BUFFER_BYTES) {
        tracing::debug!(address=%addr, "cannot size the mDNS receive buffer: {}", err);
    }
    match socket.recv_buffer_size() {
        Ok(bytes) => tracing::debug!(
            address=%addr,
            asked = RECV_BUFFER_BYTES,
            effective = bytes,
            "mDNS receive buffer (capped by net.core.rmem_max)"
        ),
        Err(err) => tracing::debug!(address=%addr, "cannot read the mDNS receive buffer size: {}", err),
    }
}

/// Returns `true` if the first protocol component of `addr` is an IP address equal to
/// `iface_ip`.
///
/// Used when answering mDNS queries to advertise only the listening addresses that are
/// reachable on the interface the query arrived on, instead of every listening address.
fn addr_matches_interface(addr: &Multiaddr, iface_ip: IpAddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(v4)) => IpAddr::V4(v4) == iface_ip,
        Some(Protocol::Ip6(v6)) => IpAddr::V6(v6) == iface_ip,
        _ => false,
    }
}

/// dispy-peer: tests of our changes (RFC 6762 §5.2 back-off, §6 answer delay, bounded queue).
#[cfg(test)]
mod dispy_tests {
    use super::*;

    #[test]
    fn answer_delay_stays_within_rfc_6762_section_6() {
        // A peer still learning its LAN, whatever it has heard.
        let learning = LAN_LEARNING - Duration::from_millis(1);
        let delays: Vec<Duration> = (0..10_000).map(|i| answer_delay(i % 3, learning)).collect();
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*min >= Duration::from_millis(20), "{min:?}");
        assert!(*max <= Duration::from_millis(120), "{max:?}");
        // Spread over the window, not a constant: 10,000 draws land in both ends.
        assert!(*min < Duration::from_millis(30), "{min:?}");
        assert!(*max > Duration::from_millis(110), "{max:?}");
    }

    #[test]
    fn a_peer_that_knows_its_lan_answers_within_half_a_millisecond_a_peer() {
        let spread = |heard: usize| {
            let delays: Vec<Duration> = (0..10_000).map(|_| answer_delay(heard, LAN_LEARNING)).collect();
            (*delays.iter().min().unwrap(), *delays.iter().max().unwrap())
        };
        let ms = Duration::from_millis;
        // A LAN of three (itself and two heard): within 1.5 ms of the query, not 20–120 ms.
        let us = Duration::from_micros;
        let (min, max) = spread(2);
        assert!(min < us(100) && max <= us(1500) && max > us(1400), "{min:?}..{max:?}");
        // Alone: the narrowest window.
        let (_, max) = spread(0);
        assert!(max <= ms(1) && max > us(900), "{max:?}");
        // 63 others: 32 ms, the density of the RFC's window on a LAN of 200.
        let (_, max) = spread(63);
        assert!(max <= ms(32) && max > ms(30), "{max:?}");
        // A large LAN (or a flood of forged names) gets the RFC's 120 ms at most.
        let (_, max) = spread(usize::MAX);
        assert!(max <= ms(120) && max > ms(115), "{max:?}");
    }

    #[test]
    fn the_peers_heard_are_bounded() {
        let mut heard = Heard::new();
        for _ in 0..MAX_HEARD + 10 {
            heard.note(&PeerId::random());
        }
        let one = PeerId::random();
        heard.note(&one);
        assert_eq!(heard.peers.len(), MAX_HEARD);
    }

    fn secs(gaps: &[f64]) -> Vec<Duration> {
        gaps.iter().map(|s| Duration::from_secs_f64(*s)).collect()
    }

    #[test]
    fn queries_back_off_by_doubling_up_to_the_cap() {
        let mut b = QueryBackoff::new(Duration::from_secs(90));
        // Probing (nobody answered yet): upstream's 1, 2, 4 s...
        let probe: Vec<Duration> = (0..3).map(|_| b.next_gap()).collect();
        assert_eq!(probe, secs(&[1.0, 2.0, 4.0]));
        // The first answer restarts from 1 s, then doubles up to the cap and stays there.
        assert_eq!(b.on_answer(), Some(Duration::from_secs(1)));
        let gaps: Vec<Duration> = (0..9).map(|_| b.next_gap()).collect();
        assert_eq!(gaps, secs(&[2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 90.0, 90.0, 90.0]));
        // Later answers do not restart it.
        assert_eq!(b.on_answer(), None);
        assert_eq!(b.next_gap(), Duration::from_secs(90));
    }

    #[test]
    fn a_small_cap_bounds_every_gap() {
        let mut b = QueryBackoff::new(Duration::from_millis(2500));
        let probe: Vec<Duration> = (0..4).map(|_| b.next_gap()).collect();
        assert_eq!(probe, secs(&[1.0, 2.0, 2.5, 2.5]));
        assert_eq!(b.on_answer(), Some(Duration::from_secs(1)));
        let gaps: Vec<Duration> = (0..3).map(|_| b.next_gap()).collect();
        assert_eq!(gaps, secs(&[2.0, 2.5, 2.5]));
        // A cap below 1 s is a cap too.
        let mut b = QueryBackoff::new(Duration::from_millis(300));
        assert_eq!(b.next_gap(), Duration::from_millis(300));
        assert_eq!(b.on_answer(), Some(Duration::from_millis(300)));
    }

    #[test]
    fn the_discovered_queue_is_bounded() {
        let mut queue = VecDeque::new();
        let mut pulled = 0;
        // A lazy flood: only what fits is even produced.
        push_bounded(&mut queue, (0..1_000_000).inspect(|_| pulled += 1));
        assert_eq!(queue.len(), MAX_PENDING_DISCOVERED);
        assert_eq!(pulled, MAX_PENDING_DISCOVERED);
        queue.pop_front();
        push_bounded(&mut queue, 0..10);
        assert_eq!(queue.len(), MAX_PENDING_DISCOVERED);
    }
}
