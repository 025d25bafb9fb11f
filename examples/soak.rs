//! The soak benchmark: 100,000 trivial function jobs through one node of 2 CPUs, in waves,
//! with the client's and the node's resident memory sampled as they go. Prints JSON lines:
//! one per sample (`jobs_done`, `client_rss_kb`, `node_rss_kb`) and a summary.
//!
//! ```sh
//! cargo build --release --bin dispy-peer --example soak
//! unshare -n sh -c 'ip link set lo up; exec target/release/examples/soak'
//! ```
//! env: `N` (100000), `WAVE` (5000 jobs submitted at a time).

use dispy::{Cluster, LocalMode, Secret};
use std::time::Instant;

#[path = "support/node.rs"]
mod node;
use node::Node;

fn trivial(x: u64) -> u64 {
    x ^ 1
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    dispy::worker!(trivial);
    let n: u64 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let wave: u64 = std::env::var("WAVE").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let node = Node::start();
        let node_pid = node.child.id();
        let mut cluster = Cluster::function(trivial)
            .mdns(false)
            .local(LocalMode::Never)
            .secret(Secret::Passphrase("bench".into()))
            .peer(node.addr.parse().expect("multiaddr"))
            .start()
            .await
            .expect("cluster");
        let me = std::process::id();
        let t = Instant::now();
        let mut done = 0u64;
        let mut next_sample = 0u64;
        while done < n {
            let batch = wave.min(n - done);
            cluster.submit_all((done..done + batch).collect()).await.expect("submit");
            for _ in 0..batch {
                let r = cluster.next_result().await.expect("result").expect("a result per job");
                assert!(r.succeeded(), "{}", r.outcome);
            }
            done += batch;
            if done >= next_sample {
                println!(
                    "{}",
                    serde_json::json!({"jobs_done": done, "secs": t.elapsed().as_secs_f64(),
                                       "client_rss_kb": rss_kb(me), "node_rss_kb": rss_kb(node_pid)})
                );
                next_sample += n / 20;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        cluster.close().await.expect("close");
        println!(
            "{}",
            serde_json::json!({"summary": {"jobs": n, "secs": secs, "jobs_per_s": n as f64 / secs,
                               "client_rss_kb": rss_kb(me), "node_rss_kb": rss_kb(node_pid)}})
        );
    });
}
