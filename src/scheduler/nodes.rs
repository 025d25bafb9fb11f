//! The scheduler's nodes: greeting, filtering and reserving them, losing them (re-queue,
//! abandon, charge attempts).

use super::core::{Asked, Core, Effect, JobState, Phase};
use crate::events::{ClusterEvent, NodeFacts};
use crate::report::{JobReport, NodeInfo, NodeRef};
use crate::stage::LocalFile;
use dispy_node::net::Reach;
use dispy_protocol::{Hello, JobId, JobOutcome, Request, Reserve, Reserved, Role, WIRE_VERSION};
use libp2p::PeerId;
use tracing::{info, warn};

/// The most CPUs the client believes a node has, whatever it says: a node that claims more
/// would otherwise be handed the whole queue, to sit on or to lose (charging each reentrant
/// job an attempt). Far above any one machine a cluster borrows today.
pub(super) const MAX_NODE_CPUS: u32 = 1024;

impl Core {
    pub(super) fn unusable(&mut self, peer: PeerId, why: String) {
        if let Some(node) = self.nodes.get_mut(&peer) {
            warn!(node = %node.name, %peer, reason = %why, "node not used");
            node.phase = Phase::Unusable(why.clone());
            let node = node.node_ref(&peer);
            self.cluster_event(ClusterEvent::NodeUnusable { node, reason: why });
        }
        self.requeue_from(peer);
    }

    /// A node gave jobs back unrun (it is draining, or the cluster's setup failed there):
    /// it takes no more of this cluster's jobs, and the user is told why once.
    pub(super) fn gave_back(&mut self, peer: PeerId, why: &str) {
        let Some(node) = self.nodes.get_mut(&peer).filter(|n| n.phase == Phase::Ready) else { return };
        warn!(node = %node.name, %peer, reason = %why, "node not used");
        node.phase = Phase::Unusable(why.to_string());
        let node = node.node_ref(&peer);
        self.cluster_event(ClusterEvent::NodeUnusable { node, reason: why.to_string() });
    }

    pub(super) fn node_infos(&self) -> Vec<NodeInfo> {
        self.order
            .iter()
            .filter_map(|p| self.nodes.get(p).map(|n| (p, n)))
            .map(|(p, n)| NodeInfo {
                node: n.node_ref(p),
                platform: n.platform.clone(),
                cpus: n.cpus,
                status: n.phase.status(),
                jobs_done: n.jobs_done,
                reach: n.reach,
            })
            .collect()
    }

    /// A peer introduced itself: a node this cluster may use is reserved.
    pub(super) fn on_hello(&mut self, peer: PeerId, h: Hello) {
        if h.role != Role::Node {
            self.clients_seen.insert(peer);
            self.nodes.remove(&peer);
            self.order.retain(|p| *p != peer);
            return;
        }
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        node.name = h.name.clone();
        node.platform = format!("{}/{}", h.os, h.arch);
        node.zombie = super::away::zombie_of(&h);
        node.load = h.load.as_deref().cloned();
        let (found, ip) = (node.node_ref(&peer), node.ip);
        let platform = node.platform.clone();
        self.cluster_event(ClusterEvent::NodeFound(found));
        if h.wire_version != WIRE_VERSION {
            let why = format!(
                "speaks dispy protocol version {} (dispy-peer {}), this client speaks version {WIRE_VERSION} (dispy-peer {})",
                h.wire_version,
                h.software,
                env!("CARGO_PKG_VERSION")
            );
            return self.unusable(peer, why);
        }
        let ip_text = ip.map(|i| i.to_string());
        if !self.s.patterns.is_empty()
            && !self.s.patterns.iter().any(|p| p.matches(ip_text.as_deref(), &peer.to_string(), &h.name))
        {
            return self.unusable(peer, "not selected by --nodes".into());
        }
        if h.cpus == 0 {
            return self.unusable(peer, "serves no CPUs".into());
        }
        if self.nodes.get(&peer).is_some_and(|n| n.reach == Reach::Relayed) {
            warn!(
                node = %h.name,
                %peer,
                limit = %crate::report::human_bytes(self.s.relay_limit),
                "node reached only through a relay (its NAT allowed no hole punch): its jobs run, and the files sent \
                 to it are capped at the relay limit (--relay-limit)"
            );
        }
        if let Some(filter) = &self.s.node_filter {
            let facts = NodeFacts {
                name: h.name.clone(),
                peer_id: peer,
                ip,
                os: h.os.clone(),
                arch: h.arch.clone(),
                cpus: h.cpus,
                memory_bytes: h.memory_bytes,
                load: h.load.as_deref().cloned(),
            };
            if !filter(&facts) {
                return self.unusable(peer, "rejected by the cluster's node filter".into());
            }
        }
        let here = format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH);
        if self.s.function.is_some() && platform != here {
            // A function travels as this program's compiled code: it runs only where this
            // binary does.
            let why = format!("runs {platform}, but this program's functions are built for {here}");
            return self.unusable(peer, why);
        }
        if let Some(node) = self.nodes.get_mut(&peer) {
            node.phase = Phase::Reserving;
            // What it announced bounds what its reservation may grant (see `on_reserved`).
            node.cpus = h.cpus.min(MAX_NODE_CPUS);
        }
        let request = Request::Reserve(Reserve {
            cluster: self.s.cluster,
            cpus: self.s.cpus_per_node,
            program: self.s.program.clone(),
            function: self.s.function.clone(),
            files: self.s.files.iter().map(|f| f.entry.clone()).collect(),
            setup: self.s.setup.clone(),
            cleanup: self.s.cleanup.clone(),
            setup_timeout_secs: self.s.setup.as_ref().and(self.s.timeout_secs),
            returns: self.s.returns.clone(),
            owner: self.s.owner,
            share: self.s.share,
        });
        self.out.push(Effect::Ask { peer, request, asked: Asked::Reserve });
    }

    /// A node took the cluster: it is ready, or first gets the files it lacks.
    pub(super) fn on_reserved(&mut self, peer: PeerId, r: Reserved) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        if node.phase != Phase::Reserving {
            return;
        }
        // Never more than it announced in its greeting, nor than MAX_NODE_CPUS.
        let granted = r.cpus.min(node.cpus);
        if granted < r.cpus {
            warn!(node = %node.name, %peer, claimed = r.cpus, believed = granted, "node claims more CPUs than it announced or than any node has; using fewer");
        }
        node.cpus = granted.min(self.s.cpus_per_node.unwrap_or(u32::MAX)).max(1);
        let missing = r.missing;
        self.came_back(peer, r.resumed);
        if missing.is_empty() {
            self.ready(peer, "node ready");
            self.dispatch();
            return;
        }
        let files: Vec<LocalFile> = self.s.files.iter().filter(|f| missing.contains(&f.entry.hash)).cloned().collect();
        if let Some(why) = self.over_relay_limit(peer, &files) {
            return self.unusable(peer, why);
        }
        let mut addr = None;
        if let Some(node) = self.nodes.get_mut(&peer) {
            node.phase = Phase::Staging;
            // Other nodes never pull from a node behind a relay (the relay would carry it).
            addr = node.addr.clone().filter(|_| node.reach != Reach::Relayed);
        }
        self.out.push(Effect::Stage { peer, addr, files, jobs: None });
    }

    /// Why `files` may not be sent to `peer`: it is reached through a relay only and they
    /// add up past the cluster's relay limit (counting what it was sent already).
    pub(super) fn over_relay_limit(&self, peer: PeerId, files: &[LocalFile]) -> Option<String> {
        let node = self.nodes.get(&peer).filter(|n| n.reach == Reach::Relayed)?;
        let bytes = node.staged_bytes + files.iter().map(|f| f.entry.size).sum::<u64>();
        (bytes > self.s.relay_limit).then(|| {
            format!(
                "it is reached only through a relay (its NAT allowed no hole punch), and its files add up to {}, \
                 over the relay limit of {}: raise it (submit --relay-limit MIB, Cluster::relay_limit) or give \
                 the node a reachable address",
                crate::report::human_bytes(bytes),
                crate::report::human_bytes(self.s.relay_limit)
            )
        })
    }

    pub(super) fn ready(&mut self, peer: PeerId, what: &str) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        node.phase = Phase::Ready;
        node.was_ready = true;
        self.ran = true;
        self.nodeless_since = None;
        info!(node = %node.name, cpus = node.cpus, "{what}");
        let ev = ClusterEvent::NodeReady { node: node.node_ref(&peer), cpus: node.cpus, load: node.load.clone() };
        self.cluster_event(ev);
    }

    /// Puts a node's unfinished jobs back in the queue (front, in order).
    pub(super) fn requeue_from(&mut self, peer: PeerId) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        let mut ids: Vec<JobId> = node.in_flight.drain().collect();
        ids.sort();
        for id in ids.into_iter().rev() {
            if let Some(job) = self.jobs.get_mut(&id)
                && job.is_on(peer)
            {
                job.state = JobState::Queued;
                // Files it returned there are out of reach now: it runs again.
                if job.fetching.take().is_some() {
                    self.out.push(Effect::StopFetch { peer, job: id });
                }
                self.queue.push_front(id);
            }
        }
        self.dispatch();
    }

    pub(super) fn lose(&mut self, peer: PeerId, why: &str) {
        self.left_behind.remove(&peer);
        self.unconfirmed.remove(&peer);
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        node.away_since = None;
        if matches!(node.phase, Phase::Unusable(_) | Phase::Lost) {
            node.phase = Phase::Lost;
            return;
        }
        node.phase = Phase::Lost;
        let (name, lost) = (node.name.clone(), node.node_ref(&peer));
        let (in_flight, cpus) = (node.in_flight.len(), node.cpus.max(1) as usize);
        self.cluster_event(ClusterEvent::NodeLost { node: lost.clone(), reason: why.to_string() });
        if in_flight == 0 {
            info!(node = %name, %peer, reason = why, "node lost");
            return;
        }
        warn!(node = %name, %peer, reason = why, jobs = in_flight, reentrant = self.s.reentrant, "node lost with jobs on it");
        if self.s.reentrant {
            self.rerun_from(peer, &name, &lost, cpus);
            return;
        }
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        let mut ids: Vec<JobId> = node.in_flight.drain().collect();
        ids.sort();
        for id in ids {
            let Some(job) = self.jobs.get(&id) else { continue };
            if job.fetching.is_some() {
                self.out.push(Effect::StopFetch { peer, job: id });
            }
            let outcome = JobOutcome::Abandoned(format!("node {name} was lost: {why}"));
            self.finish(JobReport::unrun(id, job.args.clone(), Some(lost.clone()), outcome));
        }
    }

    /// A reentrant cluster's node died or went away: its jobs go back to the queue (run
    /// elsewhere), those that were running charged an attempt; returns the ones re-queued.
    pub(super) fn rerun_from(&mut self, peer: PeerId, name: &str, lost: &NodeRef, cpus: usize) -> Vec<JobId> {
        let Some(node) = self.nodes.get(&peer) else { return Vec::new() };
        // Jobs that were running count an attempt; one that has now been running on
        // max_retries nodes that all died is suspected of killing them and fails, so a
        // poison job cannot take the whole cluster down.
        // Running: those the node reported started, and — as it may have died before
        // saying so — the first `cpus` it received (it runs them in that order).
        let mut sent: Vec<(u64, JobId)> =
            node.in_flight.iter().filter_map(|id| self.jobs.get(id).map(|j| (j.dispatched, *id))).collect();
        sent.sort();
        let mut poison = Vec::new();
        for (i, (_, id)) in sent.into_iter().enumerate() {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            if job.started || i < cpus {
                job.attempts += 1;
                job.suspect = true;
                if job.attempts >= self.s.max_retries {
                    poison.push((id, job.attempts, job.args.clone()));
                }
            }
            job.started = false;
        }
        for (id, attempts, args) in poison {
            if let Some(node) = self.nodes.get_mut(&peer) {
                node.in_flight.remove(&id);
            }
            let outcome = JobOutcome::Crashed(format!(
                "it was running on {attempts} nodes that all died (the last: {name}); giving up after max_retries {}",
                self.s.max_retries
            ));
            warn!(job = %id, attempts, "giving up on a job whose nodes keep dying");
            self.finish(JobReport::unrun(id, args, Some(lost.clone()), outcome));
        }
        let requeued: Vec<JobId> =
            self.nodes.get(&peer).map(|n| n.in_flight.iter().copied().collect()).unwrap_or_default();
        self.requeue_from(peer);
        requeued
    }

    /// Whether some node is usable or on its way to it.
    pub(super) fn has_node(&self) -> bool {
        self.nodes
            .values()
            .any(|n| matches!(n.phase, Phase::Greeting | Phase::Reserving | Phase::Staging | Phase::Ready))
    }
}
