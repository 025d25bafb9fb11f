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
//! - [`Cluster`] (`cluster`): the handle users hold, built and started by [`ClusterBuilder`]
//!   (`builder`); [`Secret`]
//!   (`secret`): the cluster's secret as users give it.
//! - `scheduler`: the task that finds nodes, stages files and keeps CPU slots busy. Its
//!   decisions are `scheduler::core`, a state machine with no I/O (inputs and the time in,
//!   effects out, unit-tested alone through the real codec); `scheduler/mod.rs` is the driver
//!   that carries the effects out. `policy`: its pure dispatch arithmetic.
//! - `stage`: content hashes and chunked file transfer; `hashcache`: large files' hashes
//!   remembered between runs.
//! - `local`: the embedded node for machines with none; `own_thread`: the thread and runtime
//!   that it and each cluster's peer and scheduler run on.
//! - `journal`: the run's record; [`recover()`] (`recover`): results back after a crash.
//! - [`discover()`]: list the nodes that answer.
//! - [`report`]: job reports, node status and the stats table; [`Error`] (`error`), with
//!   [`NoNodes`] saying what was searched and found.
//! - [`blocking`]: [`BlockingCluster`], for programs that are not async.
//! - [`select`]: `--nodes` patterns; `host`: this machine's name and CPUs.
//! - [`web`]: the live web monitor of a cluster ([`ClusterBuilder::web`], `submit --web`).
//! - [`mod@worker`]: worker mode, which carries Rust functions to the nodes ([`worker!`]);
//!   `in_job`: what a running function job sends before it returns ([`provisional()`],
//!   [`send_file()`]).
//!
//! The node side and the peer runtime live in `dispy-node`; the wire in `dispy-protocol`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

pub mod blocking;
mod builder;
mod cluster;
mod discover;
mod error;
pub mod events;
mod fanout;
mod fetch;
mod hashcache;
mod host;
mod image;
mod in_job;
mod job;
mod journal;
mod local;
mod own_thread;
mod policy;
mod recover;
pub mod report;
mod scheduler;
mod secret;
pub mod select;
mod stage;
pub mod web;
pub mod worker;

pub use blocking::BlockingCluster;
pub use builder::ClusterBuilder;
pub use cluster::{CancelledAll, Cluster};
pub use discover::{DiscoverOptions, FoundNode, discover};
pub use dispy_node::net::Reach;
pub use dispy_protocol::{JobId, JobOutcome, NodeLoad};
pub use error::{Error, Found, NoNodes, Result, Searched};
pub use events::{ClusterEvent, JobEvent, NodeFacts};
pub use host::{DEFAULT_MAX_OUTPUT, available_cpus, host_name};
pub use in_job::{provisional, send_file};
pub use job::{Job, JobError, JobStatus};
pub use recover::{Recovery, recover, recover_as};
pub use report::{JobReport, NodeInfo, NodeRef, NodeStats, NodeStatus, Stats};
pub use scheduler::LocalMode;
pub use secret::Secret;
pub use select::NodePattern;
