//! How the node runs and ends, and how leases end: the node's loop and its stop, release,
//! clients gone for good, draining, `--serve N`.
//! (The node's own: these span its leases; each part ends its own state, in
//! `Lease::release`, `Runs::kill_all` and `Outbox::take_undelivered`.)

use super::slots::JobDone;
use super::{Node, Stop, load};
use crate::error::Result;
use crate::net::NetEvent;
use dispy_protocol::{ClusterId, FileEntry, FileHash, JobOutcome, JobResult};
use libp2p::{Multiaddr, PeerId};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Kept results older than the TTL are looked for this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Node {
    /// Serves until `shutdown` resolves, then kills running jobs, removes job directories
    /// and returns. `on_listening` sees each listen address as it comes up.
    ///
    /// [`Stop::Drain`] first stops taking clusters and jobs, gives queued jobs back to their
    /// clients and lets running ones finish (at most `cfg.drain_timeout`); [`Stop::Now`] (or
    /// the drain's end) kills running process groups, waits for their tasks (bounded),
    /// deletes the job directories and stops the network.
    ///
    /// # Errors
    /// None today; the signature leaves room for a fatal one.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<NetEvent>,
        mut stop: mpsc::UnboundedReceiver<Stop>,
        mut on_listening: impl FnMut(&Multiaddr),
    ) -> Result<()> {
        load::start_sampler(self.cfg.dest.clone(), &self.machine);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The tick watches leases, jobs and a drain; an idle node sleeps until an event
        // comes, and owes one tick after each (which sees what the event changed: the last
        // lease gone under `--serve N`, the gauges).
        let mut tick_owed = true;
        loop {
            let watching = tick_owed || drain_deadline.is_some() || !self.idle();
            tokio::select! {
                ev = events.recv() => { tick_owed = true; match ev {
                    Some(NetEvent::Listening { addr }) => on_listening(&addr),
                    Some(ev) => self.on_net_event(ev),
                    None => break,
                }},
                Some(msg) = self.completions.recv() => { tick_owed = true; self.on_completion(msg) },
                _ = sweep.tick() => self.sweep_kept(),
                s = stop.recv() => match s {
                    Some(Stop::Drain) if drain_deadline.is_none() => {
                        info!(timeout = ?self.cfg.drain_timeout, "draining: running jobs finish, no new ones are taken");
                        drain_deadline = Some(tokio::time::Instant::now() + self.cfg.drain_timeout);
                        self.drain();
                    }
                    _ => break,
                },
                _ = tick.tick(), if watching => {
                    tick_owed = false;
                    self.record_load();
                    self.release_gone_clients();
                    self.save_waiting_results();
                    if self.served_enough() && drain_deadline.is_none() {
                        info!(clusters = self.served, "served the clusters asked for; draining");
                        drain_deadline = Some(tokio::time::Instant::now() + self.cfg.drain_timeout);
                        self.drain();
                    }
                    if let Some(deadline) = drain_deadline {
                        if self.drained() {
                            info!("drained");
                            break;
                        }
                        if tokio::time::Instant::now() >= deadline {
                            warn!("drain timeout: killing the jobs still running");
                            break;
                        }
                    }
                }
            }
        }
        self.stopping = true;
        let ids: Vec<ClusterId> = self.leases.0.keys().copied().collect();
        for id in ids {
            self.release(id);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.free < self.cfg.cpus || self.leases.0.values().any(|c| c.setup.busy()) {
            match tokio::time::timeout_at(deadline, self.completions.recv()).await {
                Ok(Some(msg)) => self.on_completion(msg),
                _ => break,
            }
        }
        let _ = std::fs::remove_dir_all(&self.jobs_root);
        self.ctx.net.shutdown().await;
        info!("node stopped");
        Ok(())
    }

    /// Stops taking work and gives every queued job back to its client.
    pub(super) fn drain(&mut self) {
        self.draining = true;
        let why = format!("node {} is draining", self.cfg.name);
        for (id, c) in &mut self.leases.0 {
            for job in c.runs.take_queued() {
                self.ctx.report(JobDone::unstarted(*id, job.id, JobOutcome::Declined(why.clone())));
            }
        }
    }

    /// Whether a drain is complete: no job runs and every result was delivered.
    pub(super) fn drained(&self) -> bool {
        self.free == self.cfg.cpus && self.leases.0.values().all(|c| c.outbox.is_empty() && !c.runs.has_queued())
    }

    /// Releases the leases whose client has been away longer than the zombie interval.
    pub(super) fn release_gone_clients(&mut self) {
        let limit = self.cfg.zombie_interval;
        let gone: Vec<(ClusterId, PeerId)> = self
            .leases
            .0
            .iter()
            .filter(|(_, c)| !c.released && c.gone_since.is_some_and(|t| t.elapsed() >= limit))
            .map(|(id, c)| (*id, c.client))
            .collect();
        for (id, client) in gone {
            info!(cluster = %id.tag(), %client, "client has gone; killing its jobs and deleting its files");
            // What it never collected is kept on disk for `recover`: those waiting and those
            // still on their way to the gone client.
            let Some(c) = self.leases.0.get_mut(&id) else { continue };
            let results: Vec<JobResult> = c.outbox.take_undelivered();
            let owner = c.owner;
            // The files those results list stay with them (see `kept`): no longer the
            // lease's, so its release leaves them.
            let kept_files: HashSet<FileHash> =
                results.iter().flat_map(|r| r.returned.iter().map(|f| f.hash)).collect();
            c.job_files.hand_over(&kept_files);
            // A client that crashed does not come back for its files: those it sent that no
            // other cluster uses are deleted (a normal release keeps them cached).
            let staged: Vec<FileHash> = c.uploads.staged.iter().filter(|h| !kept_files.contains(h)).copied().collect();
            let in_use = self.leases.files_in_use(id);
            let (kept, store) = (self.ctx.kept.clone(), self.ctx.store.clone());
            if !results.is_empty() {
                info!(cluster = %id.tag(), results = results.len(), files = kept_files.len(), ttl = ?self.cfg.result_ttl, "keeping undelivered results");
            }
            // In this order: a file the results list is recorded before any deletion looks.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = kept.save(id, owner, &results) {
                    warn!(cluster = %id.tag(), cause = %e, "cannot keep undelivered results");
                }
                kept.drop_files(&store, staged, &in_use);
            });
            self.release(id);
        }
    }

    /// Deletes kept results older than their TTL, with the files only they listed.
    fn sweep_kept(&self) {
        let (kept, ttl, store) = (self.ctx.kept.clone(), self.cfg.result_ttl, self.ctx.store.clone());
        let in_use = self.leases.all_files_in_use();
        tokio::task::spawn_blocking(move || {
            let freed = kept.sweep(ttl);
            kept.drop_files(&store, freed, &in_use);
        });
    }

    /// Whether nothing runs or is held: no lease, every slot free.
    fn idle(&self) -> bool {
        self.leases.0.is_empty() && self.free == self.cfg.cpus
    }

    /// `--serve N`: N clusters were served and none is left.
    pub(super) fn served_enough(&self) -> bool {
        self.cfg.serve_clusters.is_some_and(|n| self.served >= n && self.leases.0.is_empty())
    }

    /// Kills a lease's jobs and drops it once they are gone.
    pub(super) fn release(&mut self, id: ClusterId) {
        let Some(c) = self.leases.0.get_mut(&id) else { return };
        c.release();
        // Its jobs' own files (inputs and returns) go, unless another lease holds them or
        // kept results list them: a job's input is rarely another's, and only a recovering
        // client fetches a released cluster's returns (those its kept results list).
        let mine: Vec<FileHash> = c.job_files.hashes().collect();
        if !mine.is_empty() {
            let in_use = self.leases.files_in_use(id);
            let (kept, store) = (self.ctx.kept.clone(), self.ctx.store.clone());
            tokio::task::spawn_blocking(move || kept.drop_files(&store, mine, &in_use));
        }
        self.drop_if_done(id);
    }

    /// Drops a released lease whose jobs and deliveries have all ended, with its directory.
    pub(super) fn drop_if_done(&mut self, id: ClusterId) {
        if self.cleanup_if_due(id) {
            return;
        }
        let done = self.leases.0.get(&id).is_some_and(|c| c.done());
        if let Some(c) = done.then(|| self.leases.0.remove(&id)).flatten() {
            self.served += u64::from(c.ran);
            // Removing its links moved its files' change times, which the store reads as
            // doubt (see `Store::has`): those no other lease links are hashed again now, in
            // the background, rather than on the next cluster's Reserve, which would wait.
            let in_use = self.leases.files_in_use(id);
            let files: Vec<FileEntry> = c.files.into_iter().filter(|f| !in_use.contains(&f.hash)).collect();
            let (dir, store) = (c.dir, self.ctx.store.clone());
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir_all(&dir);
                for f in &files {
                    store.reseal(&f.hash, f.size);
                }
            });
            debug!(cluster = %id, "cluster released");
        }
    }
}
