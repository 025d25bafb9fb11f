//! A mesh of nodes in one process: the real behaviours, key, encryption and multiplexing
//! over the in-process `/memory/` transport. What Kademlia makes of it: how many hops a
//! lookup takes, how many connections a node holds, what joining costs a node and what
//! finding every node costs a client. 100 nodes by default, to keep the suite short;
//! `DISPY_SIM_NODES=1000` is the lab-scale run (docs/BENCHMARKS.md has its figures and
//! command).
//!
//! Nodes join in waves (a wave starts once the one before has joined), as machines come
//! up over minutes rather than in one instant: on 2 shared CPUs, a thousand bootstraps at
//! once would only measure the scheduler. The routing tables' periodic refresh is set far
//! beyond the run: at 300 s, a thousand nodes would refresh ~3 times a second, each round
//! ~50 handshakes, on the 2 CPUs real machines would each have to themselves (the namespace
//! benchmarks measure the refresh's cost).

use super::{Census, ConnLimits, NetConfig, NetEvent, NetHandle};
use dispy_protocol::{Hello, Request};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId, kad};
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

struct Peer {
    net: NetHandle,
    addr: Multiaddr,
}

fn config(port: u64, bootstrap: Option<&Peer>, kad_server: bool) -> NetConfig {
    NetConfig {
        kad_refresh: kad_server.then_some(Duration::from_secs(3600)),
        listen: if kad_server { vec![Multiaddr::empty().with(Protocol::Memory(port))] } else { Vec::new() },
        psk: Some(PreSharedKey::new([7; 32])),
        kad_server,
        bootstrap: bootstrap.map(|b| b.addr.clone()).into_iter().collect(),
        // Links that nothing keeps close quickly, so the steady state shows within the test.
        limits: ConnLimits { idle_timeout: Duration::from_secs(2), ..ConnLimits::default() },
        ..NetConfig::default()
    }
}

/// The process's resident memory, in bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    pages * 4096
}

async fn census_all(peers: &[Peer]) -> Vec<Census> {
    let mut out = Vec::with_capacity(peers.len());
    for (i, p) in peers.iter().enumerate() {
        // A node whose event loop stops answering is a bug to name, not a hang.
        match tokio::time::timeout(Duration::from_secs(30), p.net.census()).await {
            Ok(census) => out.push(census.expect("a census")),
            Err(_) => panic!("node {i} ({}) did not answer a census within 30 s", p.net.local_peer_id()),
        }
    }
    out
}

/// Rounds of Kademlia's iterative lookup from `from` to `to` over the routing tables, as
/// libp2p-kad runs it: each round asks the ALPHA nearest peers not asked yet among the K
/// nearest known, each answering with the K nearest to the target in its table; `None` if
/// no peer is left to ask before the target is known. (A greedy walk, one peer a step, is
/// stricter than Kademlia: it can stop at a peer whose table lacks a nearer one, which the
/// other answers of the same round cover.)
fn lookup_rounds(tables: &HashMap<PeerId, Vec<PeerId>>, from: PeerId, to: PeerId) -> Option<u32> {
    const ALPHA: usize = 3;
    const K: usize = 20;
    let target = kad::KBucketKey::from(to);
    let dist = |p: &PeerId| kad::KBucketKey::from(*p).distance(&target);
    let nearest = |peers: &mut Vec<PeerId>| {
        peers.sort_by_key(|p| dist(p));
        peers.dedup();
    };
    let mut known: Vec<PeerId> = tables.get(&from)?.clone();
    nearest(&mut known);
    let mut asked: HashSet<PeerId> = HashSet::from([from]);
    let mut rounds = 0;
    while from != to && !known.contains(&to) {
        let ask: Vec<PeerId> = known.iter().take(K).filter(|p| !asked.contains(*p)).take(ALPHA).copied().collect();
        if ask.is_empty() || rounds > 32 {
            return None;
        }
        rounds += 1;
        for p in ask {
            asked.insert(p);
            let mut answer = tables.get(&p).cloned().unwrap_or_default();
            nearest(&mut answer);
            known.extend(answer.into_iter().take(K));
        }
        nearest(&mut known);
    }
    Some(rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_of_nodes_routes_in_a_few_hops_and_holds_no_idle_links() {
    let n: usize = std::env::var("DISPY_SIM_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let wave = n.min(100);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    // Memory ports are process-wide: a range of our own.
    let base = 1_000_000 + rng.gen_range(0..1_000_000u64) * 10_000;
    let started = Instant::now();
    let rss_before = rss();
    eprintln!("starting {n} nodes in waves of {wave}");
    let mut nodes: Vec<Peer> = Vec::with_capacity(n);
    let mut peak = 0;
    let mut census = Vec::new();
    while nodes.len() < n {
        let first = nodes.len();
        for i in first..(first + wave).min(n) {
            // Each node knows one node that came before it, as a LAN's nodes each know one
            // bootstrap address in some other room.
            let boot = (i > 0).then(|| &nodes[rng.gen_range(0..i)]);
            let port = base + u64::try_from(i).expect("a small index");
            let (net, events) = super::spawn(config(port, boot, true)).expect("a node");
            drop(events); // nodes here only route; nothing to read.
            let addr = Multiaddr::empty().with(Protocol::Memory(port)).with(Protocol::P2p(net.local_peer_id()));
            nodes.push(Peer { net, addr });
        }
        // Let the wave's bootstraps end; watch the connections meanwhile. A bootstrap is a
        // few dozen lookups, each link a fresh handshake: the bound is on progress, not pace.
        let mut joined = vec![false; nodes.len()];
        let mut last_progress = Instant::now();
        census = loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let census = census_all(&nodes).await;
            peak = peak.max(census.iter().map(|c| c.connections).max().unwrap_or(0));
            let mut newly = 0;
            for (done, c) in joined.iter_mut().zip(&census) {
                if !*done && c.queries == 0 && c.routing.len() >= 20.min(nodes.len() - 1) {
                    *done = true;
                    newly += 1;
                }
            }
            if newly > 0 {
                last_progress = Instant::now();
            }
            let waiting = joined.iter().filter(|d| !**d).count();
            eprintln!(
                "{:?}: {} nodes up, {waiting} still joining (fewer than 20 peers known or a query in flight); peak connections {peak}",
                started.elapsed(),
                nodes.len()
            );
            assert!(
                last_progress.elapsed() < Duration::from_secs(120),
                "no node finished joining for 2 minutes; {waiting} still joining"
            );
            if waiting == 0 {
                break census;
            }
        };
    }
    let settled = started.elapsed();
    let per_node_memory = rss().saturating_sub(rss_before) / n as u64;
    let joins: Vec<u64> = census.iter().map(|c| c.handshakes).collect();
    let mean_join = joins.iter().sum::<u64>() as f64 / n as f64;
    let tables: HashMap<PeerId, Vec<PeerId>> =
        nodes.iter().zip(&census).map(|(p, c)| (p.net.local_peer_id(), c.routing.clone())).collect();
    let sizes: Vec<usize> = census.iter().map(|c| c.routing.len()).collect();
    let mean_table = sizes.iter().sum::<usize>() as f64 / n as f64;

    // Lookups between random pairs.
    let ids: Vec<PeerId> = nodes.iter().map(|p| p.net.local_peer_id()).collect();
    let mut hops = Vec::new();
    let mut stuck = 0;
    for _ in 0..500 {
        let (a, b) = (ids[rng.gen_range(0..n)], ids[rng.gen_range(0..n)]);
        match lookup_rounds(&tables, a, b) {
            Some(h) => hops.push(h),
            None => stuck += 1,
        }
    }
    hops.sort_unstable();
    let mean_hops = f64::from(hops.iter().sum::<u32>()) / hops.len().max(1) as f64;
    let max_hops = hops.last().copied().unwrap_or(0);

    // Once its lookups end, a node's links to other nodes idle out: each is seen holding
    // none. (Not all at one instant: a late lookup may come round meanwhile.)
    let mut quiet = vec![false; n];
    let mut last_progress = Instant::now();
    let busiest = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = census_all(&nodes).await;
        let mut newly = 0;
        for (q, c) in quiet.iter_mut().zip(&idle) {
            if !*q && c.connections == 0 {
                *q = true;
                newly += 1;
            }
        }
        if newly > 0 {
            last_progress = Instant::now();
        }
        let busiest = quiet.iter().zip(&idle).filter(|(q, _)| !**q).map(|(_, c)| c.connections).max().unwrap_or(0);
        if busiest == 0 || last_progress.elapsed() > Duration::from_secs(60) {
            break busiest;
        }
    };
    let never_quiet = quiet.iter().filter(|q| !**q).count();
    let node_handshakes: u64 = census_all(&nodes).await.iter().map(|c| c.handshakes).sum();

    // A client joins through one node and dials every node Kademlia shows it, a bounded
    // batch at a time: how long until it holds a link to every node, and at what cost.
    let rss_client = rss();
    let joined_at = Instant::now();
    // As a real client does, it greets each node it reaches: the node then keeps the link
    // (these nodes have no service behind them, so the greeting goes unanswered).
    let (client, mut client_events) = super::spawn(config(0, Some(&nodes[n / 2]), false)).expect("a client");
    let greeter = client.clone();
    let greeting = tokio::spawn(async move {
        while let Some(event) = client_events.recv().await {
            if let NetEvent::Connected { peer, .. } = event {
                let net = greeter.clone();
                tokio::spawn(async move {
                    let _ = net.request(peer, Request::Hello(Hello::client("sim-client".into()))).await;
                });
            }
        }
    });
    let mut last = (0, Instant::now());
    let seen = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let seen = client.census().await.expect("client census");
        if seen.connections > last.0 {
            last = (seen.connections, Instant::now());
        }
        let all = usize::try_from(seen.connections).unwrap_or(0) >= n;
        if all || last.1.elapsed() > Duration::from_secs(30) {
            break seen;
        }
    };
    let found_all = joined_at.elapsed();
    let client_memory = rss().saturating_sub(rss_client);
    let steady = census_all(&nodes).await;
    let steady_max = steady.iter().map(|c| c.connections).max().unwrap_or(0);
    let node_handshakes_after: u64 = steady.iter().map(|c| c.handshakes).sum();
    let distinct: HashSet<&PeerId> = tables.values().flatten().collect();
    eprintln!(
        "{n} nodes: settled in {settled:?}, {} MB per node; handshakes to join: mean {mean_join:.0}, max {}; \
         routing table mean {mean_table:.1} (min {}), {} peers known in all; lookups: mean {mean_hops:.2} rounds, \
         max {max_hops}, stuck {stuck}/500; connections per node: peak {peak}, nodes never seen without links \
         {never_quiet} (busiest {busiest}); a client: linked to {} nodes in {found_all:?} with {} handshakes ({} by \
         the nodes meanwhile), {:.1} kB of memory per node, {} in its table; nodes then hold at most {steady_max}",
        per_node_memory >> 20,
        joins.iter().max().unwrap_or(&0),
        sizes.iter().min().unwrap_or(&0),
        distinct.len(),
        seen.connections,
        seen.handshakes,
        node_handshakes_after.saturating_sub(node_handshakes),
        client_memory as f64 / 1024.0 / n as f64,
        seen.routing.len(),
    );
    assert_eq!(distinct.len(), n, "every node is in someone's routing table");
    assert_eq!(stuck, 0, "every lookup reaches its target");
    assert!(mean_hops <= 4.0 && max_hops <= 8, "lookups take a few hops: mean {mean_hops:.2}, max {max_hops}");
    assert_eq!(never_quiet, 0, "an idle node holds no links to other nodes (the busiest held {busiest})");
    // While a wave joins, the nodes nearest the newcomers' keys serve many lookups at once
    // (peaks of ~100 at 100 nodes, ~320 at 600-900); the limit every node enforces holds.
    let bound = ConnLimits::default().established;
    assert!(peak <= bound, "no node holds more connections than its limit of {bound}: {peak}");
    // Discovery: a link to every node, each dialed about once (a greeted node keeps its
    // link; the bootstrap node's first link and a dial lost under load come on top).
    assert_eq!(usize::try_from(seen.connections).unwrap_or(0), n, "the client reaches every node");
    let bound = 2 * u64::try_from(n).unwrap_or(u64::MAX);
    assert!(
        seen.handshakes <= bound,
        "finding {n} nodes costs the client at most {bound} handshakes: {}",
        seen.handshakes
    );
    assert!(steady_max <= 3, "a node holds its link to the client and little more: {steady_max}");
    client.shutdown().await;
    greeting.abort();
    for p in nodes {
        p.net.shutdown().await;
    }
}
