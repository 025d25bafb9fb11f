//! Per-client limits: what one peer may hold on a node at once, so that a peer holding the
//! secret (another tenant, or a client gone wrong) cannot take the node from the others.
//! Each refusal goes to that peer only, with [`RefusalKind::OverLimit`] and a message
//! naming the limit; other peers are served as before.
//!
//! What is counted: clusters (leases), jobs queued, bytes held in memory (queued jobs'
//! arguments and inputs, results waiting for the client), files arriving at once, and
//! requests whose answer the node holds while it works on them (look-ups, recovers).
//! Requests in flight on the network are bounded by the network layer's stream limits.

use super::lease::Leases;
use dispy_protocol::{Refusal, RefusalKind};
use libp2p::PeerId;

/// What one client may hold on a node at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    /// Clusters (leases not yet released).
    pub clusters: usize,
    /// Jobs queued (not yet running), over all its clusters.
    pub queued_jobs: usize,
    /// Bytes held in memory for it: queued jobs' arguments and inputs, and results
    /// waiting for it.
    pub held_bytes: u64,
    /// Files arriving at once (each holds a partial file open).
    pub uploads: usize,
    /// Requests whose answer the node is working on (store look-ups, recovers).
    pub pending: usize,
}

impl Default for PeerLimits {
    /// Far above what a dispy client uses (it keeps a node's CPUs × 16 + 16 jobs there, a
    /// few clusters, files by the dozen), low enough that a handful of peers cannot
    /// exhaust a node's memory or descriptors.
    fn default() -> Self {
        PeerLimits { clusters: 64, queued_jobs: 100_000, held_bytes: 1 << 30, uploads: 64, pending: 256 }
    }
}

/// What a client holds now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) clusters: usize,
    pub(super) queued_jobs: usize,
    pub(super) held_bytes: u64,
    pub(super) uploads: usize,
}

impl Leases {
    /// What `peer` holds now, over its leases (linear in the node's leases).
    pub(super) fn usage(&self, peer: PeerId) -> Usage {
        let mut u = Usage::default();
        for c in self.0.values().filter(|c| c.client == peer && !c.released) {
            let (queued, bytes) = c.runs.queued();
            u.clusters += 1;
            u.queued_jobs += queued;
            u.held_bytes = u.held_bytes.saturating_add(bytes).saturating_add(c.outbox.held_bytes());
            u.uploads += c.uploads.open() + c.pulls.open();
        }
        u
    }
}

/// A refusal for a peer over `what`'s limit of `limit`.
pub(super) fn over(what: &str, limit: impl std::fmt::Display, node: &str) -> Refusal {
    Refusal::new(
        RefusalKind::OverLimit,
        format!(
            "over node {node}'s limit of {limit} {what} per client; wait for earlier work to end, or release clusters"
        ),
    )
}

impl PeerLimits {
    /// Whether `peer`, holding `usage`, may add `jobs` jobs of `bytes` bytes.
    ///
    /// # Errors
    /// The refusal naming the limit it would pass.
    pub(super) fn admit_jobs(&self, usage: &Usage, jobs: usize, bytes: u64, node: &str) -> Result<(), Refusal> {
        if usage.queued_jobs.saturating_add(jobs) > self.queued_jobs {
            return Err(over("queued jobs", self.queued_jobs, node));
        }
        if usage.held_bytes.saturating_add(bytes) > self.held_bytes {
            return Err(over("bytes of queued jobs and undelivered results", self.held_bytes, node));
        }
        Ok(())
    }
}
