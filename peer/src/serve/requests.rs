//! Requests whose handling needs more than the node's memory: those that look files up in
//! the store first (Reserve, Declare, Submit: see `lookup`), and a recovering client's
//! Recover and Forget (results on disk, bound to their owner: see `owner`). The disk work
//! runs on the blocking pool; the node's task only checks sizes, limits and ownership, in
//! time linear in the request.

use super::delivery;
use super::lease::check_reserve_size;
use super::limits::over;
use super::lookup::{Stored, Waiting, distinct};
use super::owner::{Access, access, may_use_kept};
use super::slots::JobDone;
use super::{Completion, Node};
use crate::net::ReplyTo;
use dispy_protocol::{
    Cancel, ClusterId, Forget, JobId, JobOutcome, JobSpec, MAX_ITEMS_PER_REQUEST, Recover, Refusal, RefusalKind,
    Response, Submit, job::checked_timeout,
};
use libp2p::PeerId;
use std::collections::HashSet;

/// The answer to a request whose answer the node held while it worked on it.
pub(super) struct Answered {
    pub(super) peer: PeerId,
    pub(super) channel: ReplyTo,
    pub(super) response: Response,
    /// The cluster a recover was for (one runs per cluster at a time).
    pub(super) recovered: Option<ClusterId>,
}

fn refused(r: Refusal) -> Response {
    Response::Refused(r)
}

fn too_many(what: &str, n: usize) -> Refusal {
    Refusal::new(
        RefusalKind::BadRequest,
        format!(
            "a request of {n} {what} is over the limit of {MAX_ITEMS_PER_REQUEST} per request; send fewer at a time"
        ),
    )
}

/// Checks a Submit's counts and every job's time limit (before any of it is queued).
fn check_submit(s: &Submit) -> Result<(), Refusal> {
    let files: usize = s.jobs.iter().map(|j| j.files.len()).sum();
    if s.jobs.len().saturating_add(files) > MAX_ITEMS_PER_REQUEST {
        return Err(too_many("jobs and job files", s.jobs.len().saturating_add(files)));
    }
    for job in &s.jobs {
        if let Err(why) = checked_timeout(job.timeout_secs) {
            let why = format!("job {}: {why}; set a shorter timeout, or none", job.id);
            return Err(Refusal::new(RefusalKind::BadRequest, why));
        }
    }
    Ok(())
}

/// Bytes a batch of jobs will hold while queued.
fn jobs_bytes(jobs: &[JobSpec]) -> u64 {
    jobs.iter().map(|j| (j.input.len() + j.args.iter().map(|a| a.len() + 24).sum::<usize>()) as u64).sum()
}

impl Node {
    /// Looks up a Reserve's, Declare's or Submit's files on the blocking pool, then handles
    /// it ([`Node::looked_up`]); one with nothing to look up is handled at once.
    pub(super) fn look_up(&mut self, peer: PeerId, waiting: Waiting, channel: ReplyTo) -> Option<(ReplyTo, Response)> {
        let files = match &waiting {
            Waiting::Reserve(r) => {
                if let Err(why) = check_reserve_size(r) {
                    return Some((channel, refused(why)));
                }
                distinct(r.files.iter().map(|f| (&f.hash, f.size)))
            }
            Waiting::Declare(d) => {
                if d.files.len() > MAX_ITEMS_PER_REQUEST {
                    return Some((channel, refused(too_many("files", d.files.len()))));
                }
                if let Err(refusal) = self.leases.owned(peer, d.cluster) {
                    return Some((channel, *refusal));
                }
                distinct(d.files.iter().map(|f| (&f.hash, f.size)))
            }
            Waiting::Submit(s) => {
                if let Err(why) = check_submit(s) {
                    return Some((channel, refused(why)));
                }
                let lease = match self.leases.owned(peer, s.cluster) {
                    Ok(lease) => lease,
                    Err(refusal) => return Some((channel, *refusal)),
                };
                let jobs = s.jobs.iter().flat_map(|j| j.files.iter());
                distinct(lease.files_to_look_up().iter().chain(jobs).map(|f| (&f.hash, f.size)))
            }
        };
        if files.is_empty() && !matches!(waiting, Waiting::Reserve(_)) {
            let response = self.looked_up(peer, waiting, Stored::default());
            return Some((channel, response));
        }
        if let Err(why) = self.hold(peer) {
            return Some((channel, refused(why)));
        }
        let (store, kept, done) = (self.ctx.store.clone(), self.ctx.kept.clone(), self.ctx.done.clone());
        let reserving = match &waiting {
            Waiting::Reserve(r) => Some(r.cluster),
            _ => None,
        };
        tokio::task::spawn_blocking(move || {
            let stored = match reserving {
                Some(cluster) => Stored::look_for_reserve(&store, &kept, cluster, &files),
                None => Stored::look(&store, &files),
            };
            let _ = done.send(Completion::LookedUp { peer, waiting, stored, channel });
        });
        None
    }

    /// Handles a request whose files were looked up.
    pub(super) fn looked_up(&mut self, peer: PeerId, waiting: Waiting, stored: Stored) -> Response {
        if self.stopping || self.draining {
            let why = format!("node {} is shutting down", self.cfg.name);
            return refused(Refusal::new(RefusalKind::ShuttingDown, why));
        }
        match waiting {
            Waiting::Reserve(r) => self.leases.reserve(&self.cfg, &stored, peer, r),
            Waiting::Declare(d) => match self.leases.owned(peer, d.cluster) {
                Err(refusal) => *refusal,
                Ok(lease) => lease.job_files.declare(d.files, &stored, self.cfg.max_file_size),
            },
            Waiting::Submit(s) => self.submit(peer, s, &stored),
        }
    }

    /// Queues jobs, once the cluster's files are all stored.
    fn submit(&mut self, peer: PeerId, s: Submit, stored: &Stored) -> Response {
        let usage = self.leases.usage(peer);
        if let Err(why) = self.cfg.limits.admit_jobs(&usage, s.jobs.len(), jobs_bytes(&s.jobs), &self.cfg.name) {
            return refused(why);
        }
        let lease = match self.leases.owned(peer, s.cluster) {
            Err(refusal) => return *refusal,
            Ok(lease) => lease,
        };
        let count = u32::try_from(s.jobs.len()).unwrap_or(u32::MAX);
        match lease.submit(s.jobs, stored) {
            Err(refusal) => return refused(refusal),
            Ok(cancelled) => {
                for id in cancelled {
                    self.ctx.report(JobDone::unstarted(s.cluster, id, JobOutcome::Cancelled));
                }
            }
        }
        self.start_setup_if_due(s.cluster);
        self.schedule();
        Response::Accepted(dispy_protocol::Accepted { count })
    }

    /// Stops jobs: O(1) per id.
    pub(super) fn cancel(&mut self, peer: PeerId, c: Cancel) -> Response {
        if c.jobs.len() > MAX_ITEMS_PER_REQUEST {
            return refused(too_many("job ids", c.jobs.len()));
        }
        match self.leases.owned(peer, c.cluster) {
            Err(refusal) => *refusal,
            Ok(lease) => {
                let held = lease.outbox.held();
                for id in lease.runs.cancel(c.jobs, |id| held.contains(&id)) {
                    self.ctx.report(JobDone::unstarted(c.cluster, id, JobOutcome::Cancelled));
                }
                Response::Ok
            }
        }
    }

    /// Counts a request whose answer the node holds for `peer`.
    ///
    /// # Errors
    /// The refusal, when `peer` has its limit of them.
    fn hold(&mut self, peer: PeerId) -> Result<(), Refusal> {
        let n = self.pending.entry(peer).or_default();
        if *n >= self.cfg.limits.pending {
            return Err(over("requests being worked on", self.cfg.limits.pending, &self.cfg.name));
        }
        *n += 1;
        Ok(())
    }

    /// A held request was answered.
    pub(super) fn release_hold(&mut self, peer: PeerId) {
        if let Some(n) = self.pending.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending.remove(&peer);
            }
        }
    }

    /// A recovering client asks for a cluster's results: those waiting in memory and those
    /// on disk, if it owns them; read on the blocking pool, one recover per cluster at a time.
    pub(super) fn recover(&mut self, peer: PeerId, r: Recover, channel: ReplyTo) -> Option<(ReplyTo, Response)> {
        let lease = self.leases.0.get(&r.cluster);
        let access = match access(r.cluster, lease, peer, r.token) {
            Ok(a) => a,
            Err(why) => return Some((channel, refused(why))),
        };
        let held = lease.map(|c| c.outbox.waiting()).unwrap_or_default();
        if self.recovering.contains(&r.cluster) {
            let why =
                format!("a recover of cluster {} is under way on this node; ask again once it is answered", r.cluster);
            return Some((channel, refused(Refusal::new(RefusalKind::OverLimit, why))));
        }
        if let Err(why) = self.hold(peer) {
            return Some((channel, refused(why)));
        }
        self.recovering.insert(r.cluster);
        delivery::recover(peer, r.cluster, access, held, &self.ctx, channel);
        None
    }

    /// Recovered results are safe with their client: they go, from memory at once and from
    /// disk on the blocking pool, if the asker owns them.
    pub(super) fn forget(&mut self, peer: PeerId, f: Forget, channel: ReplyTo) -> Option<(ReplyTo, Response)> {
        if f.jobs.len() > MAX_ITEMS_PER_REQUEST {
            return Some((channel, refused(too_many("job ids", f.jobs.len()))));
        }
        let lease = self.leases.0.get_mut(&f.cluster);
        let access = match access(f.cluster, lease.as_deref(), peer, f.token) {
            Ok(a) => a,
            Err(why) => return Some((channel, refused(why))),
        };
        let jobs: HashSet<JobId> = f.jobs.iter().copied().collect();
        if let Some(lease) = lease {
            lease.outbox.forget(&jobs);
        }
        if let Err(why) = self.hold(peer) {
            return Some((channel, refused(why)));
        }
        let (kept, done) = (self.ctx.kept.clone(), self.ctx.done.clone());
        tokio::task::spawn_blocking(move || {
            let response = match may_use_kept(f.cluster, access, kept.owner(f.cluster)) {
                Ok(true) => {
                    kept.forget(f.cluster, &f.jobs);
                    Response::Ok
                }
                Ok(false) => Response::Ok,
                Err(why) => refused(why),
            };
            let _ = done.send(Completion::Answered(Answered { peer, channel, response, recovered: None }));
        });
        None
    }

    /// A held request's answer is ready.
    pub(super) fn answered(&mut self, a: Answered) {
        self.release_hold(a.peer);
        if let Some(cluster) = a.recovered {
            self.recovering.remove(&cluster);
        }
        self.ctx.respond(a.channel, a.response);
    }
}

/// Whether `access` may read results kept for `cluster`, for [`delivery::recover`].
pub(super) fn kept_for(cluster: ClusterId, access: Access, kept: &super::kept::KeptResults) -> Result<bool, Refusal> {
    may_use_kept(cluster, access, kept.owner(cluster))
}
