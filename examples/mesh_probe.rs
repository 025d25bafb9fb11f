//! How long a client takes to find the nodes of a LAN and to have them ready (reserved and
//! staged), timed from this process's start with the library's cluster events. Used by
//! `bench/mesh.sh`, which runs it in a network namespace on a bridge of `serve` nodes.
//!
//! ```sh
//! cargo build --example mesh_probe
//! ip netns exec CLIENT_NS target/debug/examples/mesh_probe 64   # mDNS: only in a namespace
//! ```
//! Prints one JSON line: `{"expected","found","ready","first_found_s","all_found_s",
//! "all_ready_s"}` (`null` for what did not happen), then exits 0 if all `N` nodes became
//! ready within `PROBE_TIMEOUT` seconds (60), 1 otherwise. The cluster runs `/bin/true` and is
//! sent no job. env: `PROBE_SECRET` (`bench`), `PROBE_TIMEOUT`.

use dispy::{Cluster, ClusterEvent, LocalMode, Secret};
use libp2p::PeerId;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A node event and when it came, in seconds since the probe started.
enum Seen {
    Found(PeerId, f64),
    Ready(PeerId, f64),
}

fn main() {
    let start = Instant::now();
    let expected: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).expect("usage: mesh_probe N");
    let secret = std::env::var("PROBE_SECRET").unwrap_or_else(|_| "bench".into());
    let timeout: u64 = std::env::var("PROBE_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let all_ready = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let cluster = Cluster::program("/bin/true")
            .mdns(true)
            .local(LocalMode::Never)
            .secret(Secret::Passphrase(secret))
            .discover_timeout(Duration::from_secs(timeout))
            .on_cluster_status(move |e| {
                let t = start.elapsed().as_secs_f64();
                let seen = match e {
                    ClusterEvent::NodeFound(n) => Seen::Found(n.peer_id, t),
                    ClusterEvent::NodeReady { node, .. } => Seen::Ready(node.peer_id, t),
                    _ => return,
                };
                // The receiver lives until the probe ends; a send after that is moot.
                let _ = tx.send(seen);
            })
            .start()
            .await
            .expect("cluster start");
        let (mut found, mut ready) = (HashSet::new(), HashSet::new());
        let (mut first_found, mut all_found, mut all_ready) = (None, None, None);
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        while all_ready.is_none() {
            tokio::select! {
                _ = &mut deadline => break,
                seen = rx.recv() => match seen {
                    Some(Seen::Found(peer, t)) => {
                        first_found.get_or_insert(t);
                        if found.insert(peer) && found.len() == expected {
                            all_found = Some(t);
                        }
                    }
                    Some(Seen::Ready(peer, t)) => {
                        if ready.insert(peer) && ready.len() == expected {
                            all_ready = Some(t);
                        }
                    }
                    None => break,
                },
            }
        }
        let round = |t: Option<f64>| t.map(|t| (t * 1000.0).round() / 1000.0);
        println!(
            "{}",
            serde_json::json!({"expected": expected, "found": found.len(), "ready": ready.len(),
                               "first_found_s": round(first_found), "all_found_s": round(all_found),
                               "all_ready_s": round(all_ready)})
        );
        // Not `close`: with no job sent there is nothing to wait for.
        drop(cluster);
        all_ready.is_some()
    });
    std::process::exit(if all_ready { 0 } else { 1 });
}
