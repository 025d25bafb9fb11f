//! Errors of the peer runtime and the node.

use std::path::PathBuf;

/// What went wrong in the peer runtime or the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The secret file could not be read or holds no key. Fix the file; retrying will not help.
    #[error("secret file {path}: {reason}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// The swarm could not be built (transport or behaviour setup). Not retryable.
    #[error("could not build the libp2p swarm: {0}")]
    Setup(String),
    /// A listen address could not be bound (in use, not local, bad multiaddr).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A request to a peer failed (connection lost, timeout, peer does not speak dispy).
    /// Retrying may help once the peer is reachable again.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The peer's event loop has stopped; handles are useless from now on.
    #[error("the peer's network task has stopped")]
    NodeStopped,
    /// A file system operation of the node failed.
    #[error("{context}: {source}")]
    Io {
        /// What the node was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The node's dest path is used by another running node.
    #[error("dest path {0} is in use by another dispy-peer node; give each node its own --dest-path")]
    DestInUse(PathBuf),
    /// The node's dest path is not private: another user owns it or may write to it, and
    /// could plant files that jobs run or read every result. Fix the folder (the reason says
    /// how) or choose another `--dest-path`; retrying will not help.
    #[error("dest path {path} is not safe to use: {reason}")]
    UnsafeDest {
        /// The dest path.
        path: PathBuf,
        /// What is wrong, naming the folder at fault.
        reason: String,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// The result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
