//! Errors of the client library.

use crate::report::{NodeRef, NodeStatus};
use libp2p::Multiaddr;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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
    /// The configuration is unusable (bad multiaddr, a file that is no regular file, a
    /// malformed journal, ...). Fix it; retrying will not help.
    #[error("{0}")]
    Config(String),
    /// A thread or runtime the cluster needs could not start (the system is out of threads
    /// or memory). Retrying may help once resources free up.
    #[error("{0}")]
    Start(String),
    /// A job's argument could not be encoded for the wire. Retrying will not help.
    #[error("cannot encode the job's argument: {0}")]
    Encode(String),
    /// No usable node was found in time. The value says what was searched and found;
    /// retrying helps once a node is running, holds the same secret and is reachable.
    #[error("{0}")]
    NoNodes(Box<NoNodes>),
    /// The local node (the fallback when none is found) could not start, e.g. no room for
    /// its files in the temporary directory. Fix that; retrying as is will not help.
    #[error("{0}")]
    LocalNode(String),
    /// The peer runtime failed.
    #[error(transparent)]
    Node(#[from] dispy_node::Error),
    /// The cluster's scheduler task has stopped.
    #[error("the cluster is closed")]
    Closed,
    /// [`crate::provisional`] or [`crate::send_file`] was called outside a function job
    /// running on a node (the name says which). Retrying will not help.
    #[error("dispy::{0} works only inside a function job running on a node")]
    NotInJob(&'static str),
    /// A running job could not send something to its node (too large, the pipe to the
    /// node is gone, the file could not be copied); the text says why. The job may go on.
    #[error("{0}")]
    JobSide(String),
    /// The web monitor ([`crate::ClusterBuilder::web`]) could not start; its doc says
    /// whether retrying helps.
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
}

/// The result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a cluster searched and found when no usable node turned up within its discovery
/// timeout ([`Error::NoNodes`]). Its `Display` is the message `dispy-peer submit` prints.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NoNodes {
    /// How long it looked (`--discover-timeout`).
    pub waited: Duration,
    /// Where it looked.
    pub searched: Searched,
    /// What answered, and why none of it was usable.
    pub found: Vec<Found>,
    /// The cluster had run jobs: every node was lost and none came back within `waited`
    /// (`--wait-nodes`), rather than none found at first (`--discover-timeout`).
    pub after_run: bool,
}

/// Where a cluster looks for nodes.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Searched {
    /// mDNS on the LAN.
    pub mdns: bool,
    /// Peers named by address (`--peer`).
    pub peers: Vec<Multiaddr>,
    /// Kademlia bootstrap peers (`--bootstrap`).
    pub bootstrap: Vec<Multiaddr>,
    /// A local node started with the cluster (`--local`).
    pub local: bool,
    /// Only nodes matching these (`--nodes`).
    pub patterns: Vec<String>,
}

impl Searched {
    /// Nodes were named (peers, bootstrap, patterns): a local node is then never a fallback.
    pub fn named(&self) -> bool {
        !self.peers.is_empty() || !self.bootstrap.is_empty() || !self.patterns.is_empty()
    }
}

/// Something found while looking for nodes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Found {
    /// A named address could not be dialled.
    DialFailed {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A node answered; its status says why it is not usable (or that it was lost).
    Node {
        /// The node.
        node: NodeRef,
        /// Where it stands.
        status: NodeStatus,
    },
    /// This many other clients answered; they run no jobs.
    Clients(usize),
}

impl fmt::Display for Searched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |addrs: &[Multiaddr]| addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if self.mdns {
            parts.push("mDNS on the LAN".to_string());
        }
        if !self.peers.is_empty() {
            parts.push(format!("peers {}", join(&self.peers)));
        }
        if !self.bootstrap.is_empty() {
            parts.push(format!("Kademlia through {}", join(&self.bootstrap)));
        }
        if self.local {
            parts.push("a local node".into());
        }
        if !self.patterns.is_empty() {
            parts.push(format!("nodes matching {}", self.patterns.join(", ")));
        }
        if parts.is_empty() {
            return f.write_str("nothing (mDNS off, no peers given)");
        }
        f.write_str(&parts.join("; "))
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::DialFailed { addr, reason } => write!(f, "{addr}: {reason}"),
            Found::Node { node, status } => {
                let ip = node.ip.as_ref().map(|i| format!(" at {i}")).unwrap_or_default();
                let state = match status {
                    NodeStatus::Unusable(why) => why.clone(),
                    NodeStatus::Lost => "lost".to_string(),
                    NodeStatus::Unreachable => "unreachable".to_string(),
                    _ => "usable".to_string(),
                };
                write!(f, "node {}{ip}: {state}", node.name)
            }
            Found::Clients(n) => {
                let clients = crate::report::count(u64::try_from(*n).unwrap_or(u64::MAX), "other client");
                write!(f, "{clients}, which run no jobs")
            }
        }
    }
}

impl fmt::Display for NoNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.waited.as_secs_f64();
        if self.after_run {
            write!(f, "every node was lost and none came back within {secs:.1} s (--wait-nodes)")?;
        } else {
            write!(f, "no usable dispy node found within {secs:.1} s (--discover-timeout)")?;
        }
        write!(f, ".\n  searched: {}", self.searched)?;
        if self.found.is_empty() {
            return f.write_str(
                "\n  found: nothing. Is `dispy-peer serve` running, with the same secret, reachable from here?",
            );
        }
        f.write_str("\n  found:")?;
        for found in &self.found {
            write!(f, "\n    - {found}")?;
        }
        Ok(())
    }
}
