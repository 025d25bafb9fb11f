//! Errors of the client library.

use std::path::PathBuf;

/// What went wrong for a cluster as a whole (a job's own failure is in its report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A program or dependency file cannot be read. Fix the path; retrying will not help.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is unusable (bad multiaddr, empty secret, ...).
    #[error("{0}")]
    Config(String),
    /// No usable node was found in time. The message lists what was searched and found.
    #[error("{0}")]
    NoNodes(String),
    /// The peer runtime failed.
    #[error(transparent)]
    Node(#[from] dispy_node::Error),
    /// The cluster's scheduler task has stopped.
    #[error("the cluster is closed")]
    Closed,
}

/// The result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
