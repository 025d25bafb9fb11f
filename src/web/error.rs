//! [`WebError`]: why the web monitor could not start.

use std::net::SocketAddr;

/// Why the web monitor could not start (the cluster does not start either).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// `--web` names no address (`PORT`, `IP:PORT` or `[IPv6]:PORT`). Fix the option;
    /// retrying will not help.
    #[error("{0:?} is not a web monitor address (PORT, IP:PORT or [IPv6]:PORT)")]
    Address(String),
    /// The address cannot be bound (in use, not this machine's, a port below 1024).
    /// Retrying may help once the port is free.
    #[error("cannot serve the web monitor on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Its thread or runtime could not start (the system's limits); retrying may help.
    #[error("cannot start the web monitor: {0}")]
    Start(String),
}
