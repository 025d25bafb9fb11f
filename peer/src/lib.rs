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
