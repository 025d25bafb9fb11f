//! Program jobs through the library: ship `examples/divisors.sh` to the nodes, run it for
//! a few numbers, print each result as it arrives and the stats table.
//!
//! ```sh
//! cargo run --release --example programs            # local node if none is found
//! DISPY_SECRET=lab cargo run --release --example programs   # with `serve --secret lab` nodes
//! ```
//! mDNS looks for nodes on the LAN; with no node found in 3 s the jobs run on a local node.

use dispy::{Cluster, Secret};

#[tokio::main]
async fn main() -> dispy::Result<()> {
    let secret = std::env::var("DISPY_SECRET").map(Secret::Passphrase).unwrap_or_default();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/divisors.sh");
    let mut cluster = Cluster::program(script).secret(secret).start().await?;
    let numbers: Vec<u64> = (0..10).map(|i| 1_000_000_000_001 + 2 * i).collect();
    cluster.submit_all(numbers.iter().map(|n| vec![n.to_string()]).collect()).await?;
    while let Some(job) = cluster.next_result().await? {
        let node = job.node.as_ref().map_or("-", |n| n.name.as_str());
        print!("{} on {node}: {}", job.args[0], String::from_utf8_lossy(&job.stdout));
    }
    println!("{}", cluster.close().await?);
    Ok(())
}
