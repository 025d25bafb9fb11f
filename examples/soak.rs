//! The soak benchmark: 100,000 trivial function jobs through one node of 2 CPUs, in waves,
//! with the client's and the node's resident memory sampled as they go. Prints JSON lines:
//! one per sample (`jobs_done`, `client_rss_kb`, `node_rss_kb`; every second and after
//! every twentieth of the jobs) and a summary with both sides' peaks.
//!
//! ```sh
//! cargo build --release --bin dispy-peer --example soak
//! unshare -n sh -c 'ip link set lo up; exec target/release/examples/soak'
//! # a million jobs queued at once:
//! N=1000000 WAVE=1000000 unshare -n sh -c 'ip link set lo up; exec target/release/examples/soak'
//! ```
//! env: `N` (100000), `WAVE` (5000 jobs submitted at a time).

use dispy::{Cluster, LocalMode, Secret};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "support/node.rs"]
mod node;
use node::Node;

fn trivial(x: u64) -> u64 {
    x ^ 1
}

/// `VmRSS` (resident now) or `VmHWM` (the peak) of a process, in kB.
fn mem_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    mem_kb(pid, "VmRSS:")
}

fn sample(done: u64, secs: f64, me: u32, node: u32) {
    println!(
        "{}",
        serde_json::json!({"jobs_done": done, "secs": (secs * 100.0).round() / 100.0,
                           "client_rss_kb": rss_kb(me), "node_rss_kb": rss_kb(node)})
    );
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
        // Samples also while a large wave is being queued or drained.
        let progress = Arc::new(AtomicU64::new(0));
        let seen = progress.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                sample(seen.load(Ordering::Relaxed), t.elapsed().as_secs_f64(), me, node_pid);
            }
        });
        let mut next_sample = 0u64;
        while done < n {
            let batch = wave.min(n - done);
            cluster.submit_all((done..done + batch).collect()).await.expect("submit");
            if batch == n {
                println!(
                    "{}",
                    serde_json::json!({"queued": n, "secs": t.elapsed().as_secs_f64(),
                                       "client_rss_kb": rss_kb(me), "client_peak_kb": mem_kb(me, "VmHWM:")})
                );
            }
            for _ in 0..batch {
                let r = cluster.next_result().await.expect("result").expect("a result per job");
                assert!(r.succeeded(), "{}", r.outcome);
                progress.fetch_add(1, Ordering::Relaxed);
            }
            done += batch;
            if done >= next_sample {
                sample(done, t.elapsed().as_secs_f64(), me, node_pid);
                next_sample += n / 20;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let node_peak_kb = mem_kb(node_pid, "VmHWM:");
        cluster.close().await.expect("close");
        println!(
            "{}",
            serde_json::json!({"summary": {"jobs": n, "secs": secs, "jobs_per_s": n as f64 / secs,
                               "client_rss_kb": rss_kb(me), "node_rss_kb": rss_kb(node_pid),
                               "client_peak_kb": mem_kb(me, "VmHWM:"), "node_peak_kb": node_peak_kb}})
        );
    });
}
