//! The dispy peer runtime and the node.
//!
//! Every dispy process is a libp2p peer built by [`net`]: one task owns the swarm
//! ([`net::EventLoop`]); everything else holds a [`net::NetHandle`] and reads
//! [`net::NetEvent`]s. A node (`dispy-peer serve`) adds [`serve`]: a [`serve::Node`] leases
//! CPUs to clients' clusters, stages their files by content hash ([`serve::store`]), runs
//! their jobs in CPU slots through a runner (processes in production, a stand-in in the unit
//! tests) and sends the results back. [`serve::start`] wires a node to its network; the node
//! itself only sees a [`net::NetHandle`] and [`net::NetEvent`]s, so its tests drive it with
//! no swarm.
//!
//! # Layout
//! - [`net`]: transport (TCP → pnet → noise → yamux), behaviours, event loop, handle;
//!   [`net::spawn`] builds and starts it.
//! - [`psk`]: the cluster secret as a private-network key.
//! - [`serve`]: the node: leases, uploads, CPU slots, setup/cleanup, delivery, lifecycle, store, runners.
//! - [`error`]: [`Error`] and [`Result`].
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod error;
pub mod metrics;
pub mod net;
pub mod psk;
pub mod serve;

pub use error::{Error, Result};
pub use libp2p::{Multiaddr, PeerId};

/// This process's effective user id: who owns what it makes, for the checks of folders whose
/// contents are run (the node's dest, the client's worker images).
///
/// ```
/// let me = dispy_node::euid();
/// let dir = tempfile::tempdir().unwrap();
/// assert_eq!(std::os::unix::fs::MetadataExt::uid(&dir.path().metadata().unwrap()), me);
/// ```
pub fn euid() -> u32 {
    serve::sys::euid()
}

/// Makes `dir`, whose parent is private already, with mode 0700, or checks that it is a folder
/// of this user's that no one else may write to and narrows it to 0700: for folders whose
/// contents are run (the node's store, the client's worker images).
///
/// # Errors
/// Why it cannot be made or is not safe to use, naming the folder.
///
/// ```
/// let top = tempfile::tempdir().unwrap();
/// dispy_node::private_subdir(&top.path().join("mine")).unwrap();
/// std::fs::write(top.path().join("file"), b"").unwrap();
/// assert!(dispy_node::private_subdir(&top.path().join("file")).is_err());
/// ```
pub fn private_subdir(dir: &std::path::Path) -> std::result::Result<(), String> {
    serve::private::private_subdir(dir)
}
