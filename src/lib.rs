//! dispy's job, as a libp2p mesh: distribute a program and its files across the machines
//! of a LAN (or beyond), run it once per argument set, and gather the results.
//!
//! ```no_run
//! # async fn demo() -> dispy::Result<()> {
//! use dispy::{Cluster, Secret};
//! let mut cluster = Cluster::program("./count.sh")
//!     .file("words.txt")
//!     .secret(Secret::Passphrase("lab-42".into()))
//!     .start()
//!     .await?;
//! cluster.submit(vec!["alpha".into()]).await?;
//! while let Some(job) = cluster.next_result().await? {
//!     print!("{}", String::from_utf8_lossy(&job.stdout));
//! }
//! cluster.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`Cluster`] / [`ClusterBuilder`] (`cluster`): the handle users hold.
//! - `scheduler`: the task that finds nodes, stages files and keeps CPU slots busy;
//!   `policy`: its pure dispatch arithmetic.
//! - `stage`: content hashes and chunked file transfer; `hashcache`: large files' hashes
//!   remembered between runs.
//! - `local`: the embedded node for machines with none; `own_thread`: the thread and runtime
//!   that it and each cluster's peer and scheduler run on.
//! - [`discover()`]: list the nodes that answer.
//! - [`report`]: job reports and the stats table.
//! - [`blocking`]: [`BlockingCluster`], for programs that are not async.
//! - [`select`]: `--nodes` patterns.
//! - [`mod@worker`]: worker mode, which carries Rust functions to the nodes ([`worker!`]).
//!
//! The node side and the peer runtime live in `dispy-node`; the wire in `dispy-protocol`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod blocking;
mod cluster;
mod discover;
mod error;
pub mod events;
mod hashcache;
mod job;
mod journal;
mod local;
mod own_thread;
mod policy;
pub mod report;
mod scheduler;
pub mod select;
mod stage;
pub mod worker;

pub use blocking::BlockingCluster;
pub use cluster::{Cluster, ClusterBuilder, Secret};
pub use discover::{DiscoverOptions, FoundNode, discover};
pub use dispy_protocol::{JobId, JobOutcome};
pub use error::{Error, Result};
pub use events::{ClusterEvent, JobEvent, NodeFacts};
pub use job::{Job, JobError, JobStatus};
pub use journal::{Recovery, recover};
pub use report::{JobReport, NodeInfo, NodeRef, NodeStats, Stats};
pub use scheduler::LocalMode;
pub use select::NodePattern;

/// Bytes of stdout (and of stderr) a node keeps per job by default.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;

/// This machine's host name, for node names and greetings.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// CPUs of this machine.
pub fn available_cpus() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}
