//! The dispy peer runtime and the node.
//!
//! Every dispy process is a libp2p peer built by [`net`]: one task owns the swarm
//! ([`net::EventLoop`]); everything else holds a [`net::NetHandle`] and reads
//! [`net::NetEvent`]s. A node (`dispy-peer serve`) adds [`serve`]: it accepts clusters,
//! stages their files by content hash ([`serve::store`]) and runs their jobs in CPU slots
//! (`serve::executor`, `serve::workers`).
//!
//! # Layout
//! - [`net`]: transport (TCP → pnet → noise → yamux), behaviours, event loop, handle.
//! - [`psk`]: the cluster secret as a private-network key.
//! - [`serve`]: the node: clusters, store, executor.
//! - [`error`]: [`Error`] and [`Result`].
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod error;
pub mod net;
pub mod psk;
pub mod serve;

pub use error::{Error, Result};
pub use libp2p::{Multiaddr, PeerId};
