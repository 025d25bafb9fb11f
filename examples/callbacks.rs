//! Callbacks and cancellation: watch nodes come and jobs change state, cancel the jobs that
//! run too long, and read each job's status and output afterwards.
//!
//! ```sh
//! cargo run --release --example callbacks            # a local node if none is found
//! ```

use dispy::{Cluster, ClusterEvent, JobStatus};
use std::time::Duration;

/// Sleeps `ms` milliseconds, saying so on stdout.
fn nap(ms: u64) -> u64 {
    println!("napping {ms} ms");
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn main() -> dispy::Result<()> {
    dispy::worker!(nap);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| dispy::Error::Config(e.to_string()))?;
    runtime.block_on(run())
}

async fn run() -> dispy::Result<()> {
    let mut cluster = Cluster::function(nap)
        .on_cluster_status(|e| match e {
            ClusterEvent::NodeReady { node, cpus, .. } => eprintln!("node {} ready with {cpus} CPUs", node.name),
            ClusterEvent::NodeUnusable { node, reason } => eprintln!("node {} not used: {reason}", node.name),
            ClusterEvent::NodeLost { node, reason } => eprintln!("node {} lost: {reason}", node.name),
            ClusterEvent::NodeUnreachable { node, reason } => eprintln!("node {} unreachable: {reason}", node.name),
            ClusterEvent::NodeFound(_) => {}
        })
        .on_job_status(|e| eprintln!("job {} is {}", e.id, e.status.as_str()))
        .start()
        .await?;
    let mut jobs = Vec::new();
    for ms in [100, 200, 5_000, 300, 10_000] {
        jobs.push(cluster.submit(ms).await?);
    }
    // Once the first job is back (a node is up), give the others a second, then cancel
    // whatever still runs.
    let _ = jobs[0].wait().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for job in &jobs {
        if !job.status().is_done() {
            cluster.cancel(job).await?;
        }
    }
    for job in &jobs {
        let outcome = job.wait().await;
        let out = String::from_utf8_lossy(&job.stdout()).trim().to_string();
        match (job.status(), outcome) {
            (JobStatus::Finished, Ok(ms)) => println!("job {}: slept {ms} ms ({out})", job.id()),
            (status, Err(e)) => println!("job {}: {} ({e})", job.id(), status.as_str()),
            (status, Ok(_)) => println!("job {}: {}", job.id(), status.as_str()),
        }
    }
    println!("{}", cluster.close().await?);
    Ok(())
}
