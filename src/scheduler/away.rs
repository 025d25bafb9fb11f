//! Nodes that go away and come back, and jobs that must end however the run does.
//!
//! A node that took jobs and goes silent is not forgotten at once: a Wi-Fi roam or a
//! switch reboot lasts seconds, and the node keeps a gone client's jobs and results for
//! its zombie interval. So the node goes [`Phase::Away`]: it takes no new jobs and is
//! redialled; a non-reentrant cluster's jobs stay pending on it, a reentrant cluster's run
//! elsewhere meanwhile. If it comes back holding the cluster (`Reserved::resumed`), its
//! jobs carry on and its results arrive once (a result only counts from the node its job
//! is on). Past its zombie interval (its hello says how long; [`NODE_ZOMBIE`] if it does
//! not) it is lost, as before. A node whose address refuses connections has stopped: it
//! is lost at once.
//!
//! Whatever ends a run, every job gets a report ([`Core::end_pending`]).

use super::core::{Core, Effect, Failure, JobState, Phase};
use crate::events::ClusterEvent;
use crate::report::JobReport;
use dispy_protocol::{Cancel, Hello, JobId, JobOutcome, Request};
use libp2p::PeerId;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tracing::{info, warn};

use super::core::Asked;

/// How long a node keeps a gone client's jobs (`serve`'s default zombie interval): a node
/// away this long has ended them, so they are abandoned.
pub(crate) const NODE_ZOMBIE: Duration = Duration::from_secs(60);

/// The longest zombie interval a node is believed: a node cannot make the client keep its
/// jobs pending for longer.
const MAX_ZOMBIE: Duration = Duration::from_secs(3600);

/// A node's zombie interval, from its hello (bounded by [`MAX_ZOMBIE`]).
pub(super) fn zombie_of(h: &Hello) -> Duration {
    h.zombie_secs.map_or(NODE_ZOMBIE, |s| Duration::from_secs(s).min(MAX_ZOMBIE))
}

/// How often nodes that went away are redialled while jobs are pending.
const REDIAL_EVERY: Duration = Duration::from_secs(2);

impl Failure {
    /// Why the pending jobs did not run, for their reports: one line, with what was found
    /// and why it was not usable (a failed setup, say), which the user can act on.
    pub(super) fn why(&self) -> String {
        match self {
            Failure::NoNodes(n) => {
                let secs = n.waited.as_secs_f64();
                let head = if n.after_run {
                    format!("every node was lost and none came back within {secs:.1} s")
                } else {
                    format!("no usable dispy node found within {secs:.1} s")
                };
                if n.found.is_empty() {
                    return head;
                }
                let found: Vec<String> = n.found.iter().map(ToString::to_string).collect();
                format!("{head}; found: {}", found.join("; "))
            }
            Failure::LocalNode(why) => why.clone(),
        }
    }
}

impl Core {
    /// A node's connection closed: a node that took jobs goes away (see the module docs),
    /// any other is lost.
    pub(super) fn went_away(&mut self, peer: PeerId, now: Instant, why: &str) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        let waitable = node.was_ready
            && matches!(node.phase, Phase::Ready | Phase::Greeting | Phase::Reserving | Phase::Staging | Phase::Away);
        if !waitable {
            return self.lose(peer, why);
        }
        node.phase = Phase::Away;
        let first = node.away_since.is_none();
        node.away_since.get_or_insert(now);
        let (name, gone, cpus, zombie) =
            (node.name.clone(), node.node_ref(&peer), node.cpus.max(1) as usize, node.zombie);
        let addr = node.addr.clone();
        // A cancel it was asked for will not be confirmed: the job ends cancelled here, and
        // the node kills it when it is back (or when its zombie interval ends).
        let mut cancelled: Vec<JobId> =
            node.in_flight.iter().filter(|id| self.jobs.get(id).is_some_and(|j| j.cancel_asked)).copied().collect();
        cancelled.sort();
        self.end_cancelled(peer, &cancelled);
        if !first {
            return;
        }
        // Dialled at once: a node that stopped refuses, and is known lost in a moment.
        if let Some(addr) = addr {
            self.redialled = Some(now);
            self.out.push(Effect::Dial { addr });
        }
        let jobs = self.nodes.get(&peer).map_or(0, |n| n.in_flight.len());
        self.cluster_event(ClusterEvent::NodeUnreachable { node: gone.clone(), reason: why.to_string() });
        if self.s.reentrant {
            warn!(node = %name, %peer, reason = why, jobs, "node unreachable; its jobs run elsewhere meanwhile, and it is redialled");
            let requeued = self.rerun_from(peer, &name, &gone, cpus);
            if !requeued.is_empty() {
                self.left_behind.entry(peer).or_default().extend(requeued);
            }
        } else {
            warn!(
                node = %name, %peer, reason = why, jobs,
                "node unreachable; its jobs wait for it up to {:.0} s (its zombie interval), and it is redialled",
                zombie.as_secs_f64()
            );
        }
    }

    /// A request sending jobs `ids` to `peer` broke with the connection: the node may hold
    /// them or not. It goes away (see [`Core::went_away`]); back holding the cluster, it is
    /// sent them again ([`Core::came_back`]; a node runs a job id once).
    pub(super) fn unconfirmed(&mut self, peer: PeerId, ids: Vec<JobId>, now: Instant, why: &str) {
        self.unconfirmed.entry(peer).or_default().extend(ids);
        self.went_away(peer, now, why);
    }

    /// Jobs whose cancel `peer` will not confirm end cancelled now.
    pub(super) fn end_cancelled(&mut self, peer: PeerId, ids: &[JobId]) {
        let node = self.nodes.get(&peer).map(|n| n.node_ref(&peer));
        for &id in ids {
            if let Some(n) = self.nodes.get_mut(&peer) {
                n.in_flight.remove(&id);
            }
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            if job.fetching.take().is_some() {
                self.out.push(Effect::StopFetch { peer, job: id });
            }
            let args = job.args.clone();
            // Killed on the node when it hears of the cluster again: remembered for then.
            self.left_behind.entry(peer).or_default().push(id);
            self.finish(JobReport::unrun(id, args, node.clone(), JobOutcome::Cancelled));
        }
    }

    /// Nodes away for longer than their zombie interval have ended the cluster's jobs:
    /// they are lost (non-reentrant jobs still on them are abandoned).
    pub(super) fn expire_away(&mut self, now: Instant) {
        let expired: Vec<(PeerId, Duration)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.phase != Phase::Ready && n.away_since.is_some_and(|t| now.duration_since(t) >= n.zombie))
            .map(|(p, n)| (*p, n.zombie))
            .collect();
        for (peer, zombie) in expired {
            let why = format!("unreachable for {:.0} s, past its zombie interval", zombie.as_secs_f64());
            self.lose(peer, &why);
        }
    }

    /// A dial to `addr` was refused: a node away at that address has stopped (its process
    /// is gone, so are its jobs) and is lost now rather than at the end of its zombie
    /// interval.
    pub(super) fn refused(&mut self, addr: &libp2p::Multiaddr) {
        let stopped: Vec<PeerId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.phase == Phase::Away && n.addr.as_ref() == Some(addr))
            .map(|(p, _)| *p)
            .collect();
        for peer in stopped {
            self.lose(peer, "it stopped (its address refuses connections)");
        }
    }

    /// While jobs are pending, nodes that took jobs and went away are dialled again every
    /// [`REDIAL_EVERY`]: the peers given are dialled once at the start, and a node back
    /// on the LAN may not announce itself again soon.
    pub(super) fn redial(&mut self, now: Instant) {
        if self.jobs.is_empty() || self.redialled.is_some_and(|t| now.duration_since(t) < REDIAL_EVERY) {
            return;
        }
        self.redialled = Some(now);
        let addrs: Vec<_> = self
            .order
            .iter()
            .filter_map(|p| self.nodes.get(p))
            .filter(|n| n.was_ready && matches!(n.phase, Phase::Away | Phase::Lost))
            .filter_map(|n| n.addr.clone())
            .collect();
        self.out.extend(addrs.into_iter().map(|addr| Effect::Dial { addr }));
    }

    /// A node took the cluster again: `resumed`, it still holds the cluster's jobs and
    /// results, which carry on; otherwise (it restarted, or its zombie interval ended)
    /// the jobs it had are gone.
    pub(super) fn came_back(&mut self, peer: PeerId, resumed: bool) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        let was_away = node.away_since.take().is_some();
        let behind = self.left_behind.remove(&peer).unwrap_or_default();
        if !was_away && behind.is_empty() {
            return;
        }
        let (name, back) = (node.name.clone(), node.node_ref(&peer));
        let unconfirmed = self.unconfirmed.remove(&peer).unwrap_or_default();
        if resumed {
            info!(node = %name, jobs = node.in_flight.len(), "node back; its jobs carry on there");
            self.reclaim(peer, behind);
            // Those it may never have received go again (it ignores the ones it has).
            let timeout = self.s.timeout_secs;
            let specs: Vec<_> = unconfirmed
                .into_iter()
                .filter(|id| self.jobs.get(id).is_some_and(|j| j.is_on(peer)))
                .filter_map(|id| self.jobs.get(&id).map(|j| j.spec(id, timeout)))
                .collect();
            for batch in super::jobs::batches(specs) {
                self.send_jobs(peer, batch);
            }
            return;
        }
        let mut ids: Vec<JobId> = node.in_flight.drain().collect();
        ids.sort();
        if !ids.is_empty() {
            warn!(node = %name, jobs = ids.len(), "node back without the cluster (it restarted?); its jobs are abandoned");
        }
        for id in ids {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            if job.fetching.take().is_some() {
                self.out.push(Effect::StopFetch { peer, job: id });
            }
            let args = job.args.clone();
            let why =
                format!("node {name} came back without the cluster's jobs (it restarted, or kept them no longer)");
            self.finish(JobReport::unrun(id, args, Some(back.clone()), JobOutcome::Abandoned(why)));
        }
    }

    /// A reentrant cluster's jobs that ran on `peer` before it went away: those still
    /// queued here carry on there (it still runs them); the others ran elsewhere, ended or
    /// were cancelled meanwhile, and are cancelled there, so none is reported twice.
    fn reclaim(&mut self, peer: PeerId, behind: Vec<JobId>) {
        let (mut adopt, mut cancel) = (HashSet::new(), Vec::new());
        for id in behind {
            match self.jobs.get(&id).map(|j| &j.state) {
                Some(JobState::Queued) => {
                    adopt.insert(id);
                }
                // Its result came back early (see `adopt_early`).
                Some(JobState::OnNode(p)) if **p == peer => {}
                _ => cancel.push(id),
            }
        }
        self.adopt(peer, adopt);
        if !cancel.is_empty() {
            cancel.sort();
            let request = Request::Cancel(Cancel { cluster: self.s.cluster, jobs: cancel });
            self.out.push(Effect::Ask { peer, request, asked: Asked::Cancel });
        }
    }

    /// Results from `peer` for jobs it had before it went away that are queued here (not
    /// yet run elsewhere): the node may deliver them as soon as it is reconnected, before
    /// it takes the cluster back, and they count (they are its jobs again).
    pub(super) fn adopt_early(&mut self, peer: PeerId, results: &[dispy_protocol::JobResult]) {
        let Some(behind) = self.left_behind.get_mut(&peer) else { return };
        let queued = |id: &JobId| self.jobs.get(id).is_some_and(|j| matches!(j.state, JobState::Queued));
        let ids: HashSet<JobId> = results.iter().map(|r| r.id).filter(|id| queued(id) && behind.contains(id)).collect();
        if ids.is_empty() {
            return;
        }
        behind.retain(|id| !ids.contains(id));
        self.adopt(peer, ids);
    }

    /// Queued jobs that `peer` holds go back on it.
    fn adopt(&mut self, peer: PeerId, ids: HashSet<JobId>) {
        if ids.is_empty() {
            return;
        }
        // One pass over the queue, however many come back.
        self.queue.retain(|id| !ids.contains(id));
        let mut ids: Vec<JobId> = ids.into_iter().collect();
        ids.sort();
        for id in ids {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            job.state = JobState::on(peer);
            self.dispatch_seq += 1;
            job.dispatched = self.dispatch_seq;
            if let Some(node) = self.nodes.get_mut(&peer) {
                node.in_flight.insert(id);
            }
        }
    }

    /// Ends every pending job with a report: queued ones not run, the others abandoned on
    /// the node that has them. `why`: what stopped the run.
    pub(super) fn end_pending(&mut self, why: &str) {
        self.queue.clear();
        let mut ids: Vec<JobId> = self.jobs.keys().copied().collect();
        ids.sort();
        for id in ids {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            let args = job.args.clone();
            let (node, outcome) = match job.state.node() {
                None => (None, JobOutcome::NotRun(why.to_string())),
                Some(peer) => {
                    if job.fetching.take().is_some() {
                        self.out.push(Effect::StopFetch { peer, job: id });
                    }
                    let node = self.nodes.get_mut(&peer).map(|n| {
                        n.in_flight.remove(&id);
                        n.node_ref(&peer)
                    });
                    let name = node.as_ref().map_or_else(|| peer.to_string(), |n| n.name.clone());
                    (node, JobOutcome::Abandoned(format!("still on node {name} when the run stopped: {why}")))
                }
            };
            self.finish(JobReport::unrun(id, args, node, outcome));
        }
    }

    /// Closing: the nodes did not confirm the cancels asked within the grace period (they
    /// are unreachable): the jobs end cancelled here (their nodes kill them when their
    /// zombie interval ends).
    pub(crate) fn on_close_unconfirmed(&mut self) -> Vec<Effect> {
        let mut ids: Vec<JobId> = self.jobs.keys().copied().collect();
        ids.sort();
        let mut per_node: std::collections::HashMap<PeerId, Vec<JobId>> = std::collections::HashMap::new();
        for id in ids {
            match self.jobs.get(&id).map(|j| &j.state) {
                Some(JobState::OnNode(peer)) => per_node.entry(**peer).or_default().push(id),
                Some(JobState::Queued) => {
                    let args = self.jobs.get(&id).map(|j| j.args.clone()).unwrap_or_default();
                    self.finish(JobReport::unrun(id, args, None, JobOutcome::Cancelled));
                }
                None => {}
            }
        }
        for (peer, ids) in per_node {
            self.end_cancelled(peer, &ids);
        }
        std::mem::take(&mut self.out)
    }
}
