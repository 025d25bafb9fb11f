//! Status callbacks: what a cluster tells its owner as it goes (dispy's `job_status` and
//! `cluster_status` callbacks).

use crate::job::JobStatus;
use crate::report::NodeRef;
use dispy_protocol::JobId;
use std::sync::Arc;

/// A job changed status.
#[derive(Clone, Debug)]
pub struct JobEvent {
    /// Which job.
    pub id: JobId,
    /// Its new status.
    pub status: JobStatus,
    /// The node involved, if any.
    pub node: Option<NodeRef>,
    /// A provisional value the running job sent ([`crate::provisional`]), CBOR-encoded;
    /// the status is then `Running`. Read it with [`JobEvent::provisional_value`].
    pub provisional: Option<Vec<u8>>,
}

impl JobEvent {
    /// The provisional value this event carries, decoded as the type the job sent; `None`
    /// for a plain status change.
    ///
    /// # Errors
    /// [`crate::JobError::Decode`] when the value is not a `T`.
    ///
    /// # Examples
    /// ```
    /// # fn on_status(ev: &dispy::JobEvent) {
    /// if let Ok(Some(done)) = ev.provisional_value::<u32>() {
    ///     println!("job {} is {done}% done", ev.id);
    /// }
    /// # }
    /// ```
    pub fn provisional_value<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, crate::JobError> {
        crate::job::decode_provisional(self.provisional.as_deref())
    }
}

/// Something happened to a node of the cluster.
#[derive(Clone, Debug)]
pub enum ClusterEvent {
    /// A node answered (connected, greeted).
    NodeFound(NodeRef),
    /// A node is reserved and staged: it takes jobs now.
    NodeReady {
        /// The node.
        node: NodeRef,
        /// CPU slots it gives the cluster.
        cpus: u32,
        /// What it was doing and had free when it answered (clients, queued jobs, load
        /// average, free memory and disk), if it said.
        load: Option<dispy_protocol::NodeLoad>,
    },
    /// A node will not be used; the text says why (another OS/arch, excluded by a
    /// pattern, refused a file, ...).
    NodeUnusable {
        /// The node.
        node: NodeRef,
        /// Why.
        reason: String,
    },
    /// A node's connection was lost.
    NodeLost {
        /// The node.
        node: NodeRef,
        /// Why.
        reason: String,
    },
    /// A node that took jobs went silent: it takes no new jobs and is redialled; its
    /// jobs wait for it (or, reentrant, run elsewhere) until it is back or lost.
    NodeUnreachable {
        /// The node.
        node: NodeRef,
        /// Why.
        reason: String,
    },
}

/// What a node filter sees of a node (`ClusterBuilder::node_filter`).
#[derive(Clone, Debug)]
pub struct NodeFacts {
    /// Its name.
    pub name: String,
    /// Its peer id.
    pub peer_id: libp2p::PeerId,
    /// The IP the client reached it at.
    pub ip: Option<std::net::IpAddr>,
    /// `std::env::consts::OS` there.
    pub os: String,
    /// `std::env::consts::ARCH` there.
    pub arch: String,
    /// CPU slots it serves.
    pub cpus: u32,
    /// Its memory, if it reports it.
    pub memory_bytes: Option<u64>,
    /// What it is doing and has free as it answered (clients, queued jobs, load average,
    /// free memory and disk), if it reports it.
    pub load: Option<dispy_protocol::NodeLoad>,
}

/// Decides whether the cluster uses a node.
pub type NodeFilter = Arc<dyn Fn(&NodeFacts) -> bool + Send + Sync>;

/// A job-status callback. Called on the scheduler's task: keep it quick.
pub type JobCallback = Arc<dyn Fn(&JobEvent) + Send + Sync>;

/// A cluster-status callback. Called on the scheduler's task: keep it quick.
pub type ClusterCallback = Arc<dyn Fn(&ClusterEvent) + Send + Sync>;
