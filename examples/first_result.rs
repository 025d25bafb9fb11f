//! How long a client takes from its process start to its first job's result on a LAN found
//! by mDNS: a function cluster (this executable is the code that travels) or a program
//! cluster (`/bin/true`). Used by `bench/first.sh`, which runs it in a network namespace on a
//! bridge of `serve` nodes.
//!
//! ```sh
//! cargo build --release --example first_result
//! ip netns exec CLIENT_NS target/release/examples/first_result function   # mDNS: only in a namespace
//! ```
//! Prints one JSON line `{"kind","first_result_s","staged_bytes"}` and exits 0, or exits 1
//! when no result came within `PROBE_TIMEOUT` seconds (30). env: `PROBE_SECRET` (`bench`) or
//! `PROBE_SECRET_FILE` (a key file: no key derivation at start), `PROBE_TIMEOUT`,
//! `PROBE_CLOSE` (`0`: exit without closing the cluster), `PROBE_LOG` (a log filter such as
//! `dispy=debug`: the path's timeline on stderr, in wall-clock time as the nodes' logs, from a
//! first line "probe started").

use dispy::{Cluster, ClusterBuilder, LocalMode, Secret};
use std::time::{Duration, Instant};

/// The function job: trivial, so that the figure is the path to the first result.
fn plus_one(x: u64) -> u64 {
    x + 1
}

/// Starts `builder`'s cluster on the LAN, runs one job with `arg`: the time since `start`
/// when its result came.
async fn first_result<A, R>(
    builder: ClusterBuilder<A, R>,
    arg: A,
    secret: Secret,
    timeout: u64,
    start: Instant,
) -> dispy::Result<Duration> {
    let mut cluster = builder
        .mdns(true)
        .local(LocalMode::Never)
        .secret(secret)
        .discover_timeout(Duration::from_secs(timeout))
        .start()
        .await?;
    let job = cluster.submit(arg).await?;
    job.wait().await.map_err(|e| dispy::Error::Config(format!("the job failed: {e}")))?;
    let first = start.elapsed();
    // As a program does when it is done (`PROBE_CLOSE=0`: leave as if killed, and the nodes
    // keep the cluster until its client is given up).
    if std::env::var("PROBE_CLOSE").map_or(true, |v| v != "0") {
        cluster.close().await?;
    }
    Ok(first)
}

fn main() {
    dispy::worker!(plus_one);
    let start = Instant::now();
    if let Ok(filter) = std::env::var("PROBE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
        tracing::info!("probe started");
    }
    let kind = std::env::args().nth(1).unwrap_or_default();
    let secret = match std::env::var_os("PROBE_SECRET_FILE") {
        Some(file) => Secret::File(file.into()),
        None => Secret::Passphrase(std::env::var("PROBE_SECRET").unwrap_or_else(|_| "bench".into())),
    };
    let timeout: u64 = std::env::var("PROBE_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let outcome = rt.block_on(async {
        let run = async {
            match kind.as_str() {
                "function" => first_result(Cluster::function(plus_one), 1, secret, timeout, start).await,
                "program" => first_result(Cluster::program("/bin/true"), Vec::new(), secret, timeout, start).await,
                _ => Err(dispy::Error::Config("usage: first_result function|program".into())),
            }
        };
        tokio::time::timeout(Duration::from_secs(timeout), run).await
    });
    match outcome {
        Ok(Ok(t)) => {
            let exe = std::env::current_exe().ok().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
            let staged = if kind == "function" { exe } else { std::fs::metadata("/bin/true").ok().map(|m| m.len()) };
            let secs = (t.as_secs_f64() * 1e4).round() / 1e4;
            println!("{}", serde_json::json!({"kind": kind, "first_result_s": secs, "staged_bytes": staged}));
        }
        Ok(Err(e)) => {
            eprintln!("first_result: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("first_result: no result within {timeout} s");
            std::process::exit(1);
        }
    }
}
