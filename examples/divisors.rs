//! The seed's example as a Rust function: divisors from 2 to √n of the 50 odd numbers from
//! 1 + 10^13, one job each; prints `n factors` per job, then the cluster's stats.
//!
//! ```sh
//! cargo run --release --example divisors                    # a local node if none is found
//! DISPY_SECRET=lab cargo run --release --example divisors   # on a LAN of `serve --secret lab`
//! ```
//! The function travels to the nodes as this program's own executable: `dispy::worker!`
//! at the top of `main` is what lets a node start it as a worker.

use dispy::{Cluster, Secret};

/// The divisors of `n` between 2 and √n.
fn divisors(n: u64) -> Vec<u64> {
    (2..).take_while(|i| i * i <= n).filter(|i| n.is_multiple_of(*i)).collect()
}

fn main() -> dispy::Result<()> {
    dispy::worker!(divisors);
    // Warnings on stderr: among them, that no node answered and a local one runs the jobs.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libp2p_kad=error"));
    // Colours only on a terminal: piped into a file or a CI log, escape codes are noise.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| dispy::Error::Config(e.to_string()))?;
    runtime.block_on(run())
}

async fn run() -> dispy::Result<()> {
    let secret = std::env::var("DISPY_SECRET").map(Secret::Passphrase).unwrap_or_default();
    let mut cluster = Cluster::function(divisors).secret(secret).start().await?;
    let numbers: Vec<u64> = (0..50).map(|i| 1 + 10u64.pow(13) + 2 * i).collect();
    let mut jobs = Vec::new();
    for &n in &numbers {
        jobs.push((n, cluster.submit(n).await?));
    }
    for (n, job) in jobs {
        match job.wait().await {
            Ok(factors) => println!("{n} {factors:?}"),
            Err(e) => println!("{n} failed: {e}"),
        }
    }
    println!("{}", cluster.close().await?);
    Ok(())
}
