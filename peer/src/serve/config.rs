//! How a node serves: [`ServeConfig`], with the defaults `dispy-peer serve` uses.

use super::limits::PeerLimits;
use std::path::PathBuf;
use std::time::Duration;

/// How a node serves.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Name shown to clients.
    pub name: String,
    /// CPU slots: at most this many jobs run at once.
    pub cpus: u32,
    /// Where the store and the job directories live.
    pub dest: PathBuf,
    /// Largest file accepted, if limited.
    pub max_file_size: Option<u64>,
    /// Bytes of stdout (and of stderr) kept per job; the rest is counted and dropped.
    pub max_output: usize,
    /// Bytes of files one job may return, if limited; past it files stay behind, named in
    /// the job's report.
    pub max_return: Option<u64>,
    /// An executable that runs [`super::reaper::run_if_reaper`] first in `main` (the node's own):
    /// started as the reaper that kills the jobs if the node dies without cleaning up.
    pub reaper: Option<PathBuf>,
    /// The token set in every job's environment for the reaper to find them by, for a node
    /// that cannot carry it in its own environment (the embedded one: its process has other
    /// threads); `None`: jobs inherit the node's [`super::reaper::TOKEN_ENV`].
    pub job_token: Option<String>,
    /// The dest path is this node's alone (the embedded node's): a reaper deletes it.
    pub private_dest: bool,
    /// How long a drain waits for running jobs before killing them.
    pub drain_timeout: Duration,
    /// Stop (draining) after serving this many clusters.
    pub serve_clusters: Option<u64>,
    /// A client disconnected this long is gone: its jobs are killed, its files deleted.
    pub zombie_interval: Duration,
    /// Results a gone client never collected are kept this long for `recover`.
    pub result_ttl: Duration,
    /// What one client may hold on the node at once.
    pub limits: PeerLimits,
    /// Where the node counts its jobs, clients and bytes (`serve --metrics`); `None` counts
    /// nothing.
    pub metrics: Option<crate::metrics::NodeMetrics>,
}

impl ServeConfig {
    /// A node named `name` serving `cpus` slots from `dest`, with `dispy-peer serve`'s
    /// defaults for the rest: no file size limit, 1 MiB of output kept per stream, no reaper,
    /// a 60 s drain and zombie interval, results kept a day, [`PeerLimits::default`].
    pub fn new(name: impl Into<String>, cpus: u32, dest: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            name: name.into(),
            cpus,
            dest: dest.into(),
            max_file_size: None,
            max_output: 1 << 20,
            max_return: None,
            reaper: None,
            job_token: None,
            private_dest: false,
            drain_timeout: Duration::from_secs(60),
            serve_clusters: None,
            zombie_interval: Duration::from_secs(60),
            result_ttl: Duration::from_secs(86_400),
            limits: PeerLimits::default(),
            metrics: None,
        }
    }
}
