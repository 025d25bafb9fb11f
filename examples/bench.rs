//! The library benchmark: starts its own `dispy-peer serve` (2 CPUs, 127.0.0.1, no mDNS) and
//! prints JSON lines `{"bench":"dispy-peer","metric":…,"value":…,"unit":…,"rep":…,"date":…}`,
//! the format of `../shared/bench/`, so it runs beside dispy in one pass.
//!
//! ```sh
//! cargo build --release --bin dispy-peer && cargo run --release --example bench
//! ```
//! Metrics: `fn_jobs_per_s` (20,000 trivial function jobs), `fn_round_trip_ms` (median of 50
//! single jobs on a warm cluster), `prog_jobs_per_s` (1000 `/bin/true`), `stage_mb_per_s`
//! (a 100 MiB dependency to a fresh node). env: `REPS` (3), `N_FN` (20000), `N_PROG` (1000),
//! `STAGE_MB` (100; 0 skips staging). Run it in a loopback-only namespace to keep it off the
//! LAN: `unshare -n sh -c 'ip link set lo up; exec target/release/examples/bench'`.
//!
//! With `BENCH_BOOTSTRAP=MULTIADDR` it starts no node of its own: the clusters find theirs
//! through that Kademlia bootstrap peer (`discover_timeout` 30 s, no mDNS), keeping to the
//! nodes matching `BENCH_NODES` (a `--nodes` pattern: a name, peer id or IP glob) when set,
//! with the secret `BENCH_SECRET` ("bench"). Staging then goes to those same nodes, which
//! keep what they were sent (each repetition sends a file of its own). `bench/relay.sh` runs
//! it this way across NAT routers (issue 15). Each cluster says on stderr how it reached its
//! nodes (`reach fn NAME hole-punched`: direct, hole-punched or relayed), from its stats
//! before closing, so the figures say which path they measured.

use dispy::{Cluster, LocalMode, NodePattern, Secret};

#[path = "support/node.rs"]
mod node;
use node::Node;
use std::process::Command;
use std::time::{Duration, Instant};

fn noop(x: u64) -> u64 {
    x
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn emit(metric: &str, value: f64, unit: &str, rep: u64, date: &str) {
    println!(
        "{}",
        serde_json::json!({"bench": "dispy-peer", "metric": metric, "value": (value * 100.0).round() / 100.0,
                           "unit": unit, "rep": rep, "date": date})
    );
}

/// Nodes found through a bootstrap peer instead of a node of our own (`BENCH_BOOTSTRAP`).
#[derive(Clone)]
struct Bootstrap {
    addr: libp2p::Multiaddr,
    nodes: Option<String>,
    secret: String,
}

impl Bootstrap {
    fn from_env() -> Option<Bootstrap> {
        let addr = std::env::var("BENCH_BOOTSTRAP").ok().filter(|a| !a.is_empty())?;
        Some(Bootstrap {
            addr: addr.parse().expect("BENCH_BOOTSTRAP: a multiaddr (/ip4/…/tcp/…/p2p/…)"),
            nodes: std::env::var("BENCH_NODES").ok().filter(|n| !n.is_empty()),
            secret: std::env::var("BENCH_SECRET").unwrap_or_else(|_| "bench".into()),
        })
    }
}

/// Where a repetition's clusters find their node.
enum Target {
    /// A `dispy-peer serve` of our own on 127.0.0.1, stopped on drop.
    Local(Node),
    /// Found through a bootstrap peer.
    Remote(Bootstrap),
}

impl Target {
    /// A fresh node of our own, or the bootstrap's nodes.
    fn new(bootstrap: &Option<Bootstrap>) -> Target {
        match bootstrap {
            Some(b) => Target::Remote(b.clone()),
            None => Target::Local(Node::start()),
        }
    }
}

fn configure<A, R>(b: dispy::ClusterBuilder<A, R>, target: &Target) -> dispy::ClusterBuilder<A, R> {
    let b = b.mdns(false).local(LocalMode::Never);
    match target {
        Target::Local(node) => b.secret(Secret::Passphrase("bench".into())).peer(node.addr.parse().expect("multiaddr")),
        Target::Remote(r) => {
            let b = b
                .secret(Secret::Passphrase(r.secret.clone()))
                .bootstrap(r.addr.clone())
                .discover_timeout(Duration::from_secs(30));
            match &r.nodes {
                Some(pattern) => b.nodes(NodePattern::new(pattern.clone())),
                None => b,
            }
        }
    }
}

/// Says on stderr how the cluster reached each node it used (`reach LABEL NAME REACH`).
fn report_reach(label: &str, stats: &dispy::Stats) {
    for n in &stats.nodes {
        eprintln!("reach {label} {} {}", n.node.name, n.reach);
    }
}

fn main() {
    dispy::worker!(noop);
    let date = Command::new("date").arg("-Is").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let date = date.unwrap_or_default();
    let bootstrap = Bootstrap::from_env();
    let stage_mb = env_num("STAGE_MB", 100);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for rep in 1..=env_num("REPS", 3) {
        rt.block_on(async {
            let target = Target::new(&bootstrap);
            let (jobs_per_s, rtt_ms) = functions(&target, env_num("N_FN", 20000)).await.expect("function jobs");
            emit("fn_jobs_per_s", jobs_per_s, "jobs/s", rep, &date);
            emit("fn_round_trip_ms", rtt_ms, "ms", rep, &date);
            emit(
                "prog_jobs_per_s",
                programs(&target, env_num("N_PROG", 1000)).await.expect("program jobs"),
                "jobs/s",
                rep,
                &date,
            );
            drop(target);
            if stage_mb > 0 {
                let fresh = Target::new(&bootstrap);
                emit("stage_mb_per_s", staging(&fresh, stage_mb, rep).await.expect("staging"), "MB/s", rep, &date);
            }
        });
    }
}

async fn functions(target: &Target, n: u64) -> dispy::Result<(f64, f64)> {
    let mut cluster = configure(Cluster::function(noop), target).start().await?;
    // Warm: the executable is staged and both workers are up.
    let warm: Vec<_> = futures_join(&mut cluster, 0..4).await?;
    for j in warm {
        j.wait().await.expect("warm-up job");
    }
    let t = Instant::now();
    let jobs = futures_join(&mut cluster, 0..n).await?;
    for j in jobs {
        j.wait().await.expect("job");
    }
    let per_s = n as f64 / t.elapsed().as_secs_f64();
    let mut rtts = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        cluster.submit(i).await?.wait().await.expect("job");
        rtts.push(t.elapsed());
    }
    rtts.sort();
    report_reach("fn", &cluster.stats().await?);
    cluster.close().await?;
    Ok((per_s, rtts[rtts.len() / 2].as_secs_f64() * 1e3))
}

async fn futures_join(
    cluster: &mut Cluster<u64, u64>,
    range: std::ops::Range<u64>,
) -> dispy::Result<Vec<dispy::Job<u64>>> {
    let mut jobs = Vec::new();
    for i in range {
        jobs.push(cluster.submit(i).await?);
    }
    Ok(jobs)
}

async fn programs(target: &Target, n: u64) -> dispy::Result<f64> {
    let mut cluster = configure(Cluster::program("/bin/true"), target).start().await?;
    cluster.submit(vec![]).await?.wait().await.expect("warm-up job");
    let t = Instant::now();
    cluster.submit_all((0..n).map(|_| Vec::new()).collect()).await?;
    while let Some(r) = cluster.next_result().await? {
        assert!(r.succeeded(), "{}", r.outcome);
    }
    let per_s = n as f64 / t.elapsed().as_secs_f64();
    report_reach("prog", &cluster.stats().await?);
    cluster.close().await?;
    Ok(per_s)
}

/// Stages an `mb` MiB file, different for each repetition (a remote node keeps what an
/// earlier repetition sent it), and returns MB/s from the cluster's start to its first result.
async fn staging(target: &Target, mb: u64, rep: u64) -> dispy::Result<f64> {
    let dir = tempfile::tempdir().map_err(|e| dispy::Error::Config(e.to_string()))?;
    let dep = dir.path().join("dep.bin");
    let mut data = vec![0u8; (mb as usize) << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15 ^ rep;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&dep, &data).map_err(|e| dispy::Error::Config(e.to_string()))?;
    drop(data);
    let t = Instant::now();
    let mut cluster = configure(Cluster::program("/bin/true").file(&dep), target).start().await?;
    cluster.submit(vec![]).await?.wait().await.expect("job after staging");
    let secs = t.elapsed().as_secs_f64();
    report_reach("stage", &cluster.stats().await?);
    cluster.close().await?;
    Ok(mb as f64 * 1.048576 / secs)
}
