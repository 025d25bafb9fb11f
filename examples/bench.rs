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
//! `STAGE_MB` (100). Run it in a loopback-only namespace to keep it off the LAN:
//! `unshare -n sh -c 'ip link set lo up; exec target/release/examples/bench'`.

use dispy::{Cluster, LocalMode, Secret};

#[path = "support/node.rs"]
mod node;
use node::Node;
use std::process::Command;
use std::time::Instant;

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

fn configure<A, R>(b: dispy::ClusterBuilder<A, R>, node: &Node) -> dispy::ClusterBuilder<A, R> {
    b.mdns(false)
        .local(LocalMode::Never)
        .secret(Secret::Passphrase("bench".into()))
        .peer(node.addr.parse().expect("multiaddr"))
}

fn main() {
    dispy::worker!(noop);
    let date = Command::new("date").arg("-Is").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let date = date.unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for rep in 1..=env_num("REPS", 3) {
        rt.block_on(async {
            let node = Node::start();
            let (jobs_per_s, rtt_ms) = functions(&node, env_num("N_FN", 20000)).await.expect("function jobs");
            emit("fn_jobs_per_s", jobs_per_s, "jobs/s", rep, &date);
            emit("fn_round_trip_ms", rtt_ms, "ms", rep, &date);
            emit(
                "prog_jobs_per_s",
                programs(&node, env_num("N_PROG", 1000)).await.expect("program jobs"),
                "jobs/s",
                rep,
                &date,
            );
            drop(node);
            let fresh = Node::start();
            emit(
                "stage_mb_per_s",
                staging(&fresh, env_num("STAGE_MB", 100)).await.expect("staging"),
                "MB/s",
                rep,
                &date,
            );
        });
    }
}

async fn functions(node: &Node, n: u64) -> dispy::Result<(f64, f64)> {
    let mut cluster = configure(Cluster::function(noop), node).start().await?;
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

async fn programs(node: &Node, n: u64) -> dispy::Result<f64> {
    let mut cluster = configure(Cluster::program("/bin/true"), node).start().await?;
    cluster.submit(vec![]).await?.wait().await.expect("warm-up job");
    let t = Instant::now();
    cluster.submit_all((0..n).map(|_| Vec::new()).collect()).await?;
    while let Some(r) = cluster.next_result().await? {
        assert!(r.succeeded(), "{}", r.outcome);
    }
    let per_s = n as f64 / t.elapsed().as_secs_f64();
    cluster.close().await?;
    Ok(per_s)
}

async fn staging(node: &Node, mb: u64) -> dispy::Result<f64> {
    let dir = tempfile::tempdir().map_err(|e| dispy::Error::Config(e.to_string()))?;
    let dep = dir.path().join("dep.bin");
    let mut data = vec![0u8; (mb as usize) << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&dep, &data).map_err(|e| dispy::Error::Config(e.to_string()))?;
    drop(data);
    let t = Instant::now();
    let mut cluster = configure(Cluster::program("/bin/true").file(&dep), node).start().await?;
    cluster.submit(vec![]).await?.wait().await.expect("job after staging");
    let secs = t.elapsed().as_secs_f64();
    cluster.close().await?;
    Ok(mb as f64 * 1.048576 / secs)
}
