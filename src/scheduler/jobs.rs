//! The scheduler's jobs: taking them in, handing them to nodes, taking their starts and
//! results, ending, cancelling and reporting them.

use super::NewJob;
use super::core::{Asked, Core, Effect, Entry, Failure, Job, JobState, Phase};
use crate::events::JobEvent;
use crate::job::JobStatus;
use crate::policy::{self, Load};
use crate::report::JobReport;
use dispy_protocol::{
    Cancel, FileEntry, JobId, JobOutcome, JobResult, JobSpec, MAX_MESSAGE_SIZE, Provisional, Request,
};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tracing::debug;

/// Bytes of jobs sent in one Submit, at most (but a job is always sent, alone if it is
/// larger): a batch far under the message limit, which an oversized batch would break, and
/// under what a node buffers comfortably per request.
pub(super) const SUBMIT_BATCH_BYTES: usize = 4 << 20;

/// The largest job: its Submit alone must fit in a message, with room for the envelope.
pub(super) const MAX_JOB_BYTES: usize = MAX_MESSAGE_SIZE as usize - (64 << 10);

/// An upper bound of a job's encoded size (CBOR: field names, length headers and the
/// contents), computed without encoding it.
pub(super) fn job_bytes<'a>(args: &[String], input: &[u8], files: impl Iterator<Item = &'a FileEntry>) -> usize {
    let args: usize = args.iter().map(|a| a.len() + 9).sum();
    let files: usize = files.map(|f| f.name.len() + 160).sum();
    128 + args + input.len() + files
}

/// Splits jobs into batches of at most [`SUBMIT_BATCH_BYTES`] each (a larger job alone), in
/// order.
pub(super) fn batches(specs: Vec<JobSpec>) -> Vec<Vec<JobSpec>> {
    let mut out: Vec<Vec<JobSpec>> = Vec::new();
    let mut bytes = 0;
    for spec in specs {
        let size = job_bytes(&spec.args, &spec.input, spec.files.iter());
        match out.last_mut() {
            Some(batch) if bytes + size <= SUBMIT_BATCH_BYTES => {
                bytes += size;
                batch.push(spec);
            }
            _ => {
                bytes = size;
                out.push(vec![spec]);
            }
        }
    }
    out
}

impl Job {
    /// Whether `peer` holds the job.
    pub(super) fn is_on(&self, peer: PeerId) -> bool {
        self.state.node() == Some(peer)
    }
}

impl Core {
    pub(super) fn submit(&mut self, jobs: Vec<NewJob>) {
        self.jobs.reserve(jobs.len());
        for NewJob { id, job } in jobs {
            self.submitted += 1;
            if self.s.journal {
                self.out.push(Effect::Journal(Entry::Job { id, args: job.args.clone() }));
            }
            self.jobs.insert(id, job);
            self.job_event(id, JobStatus::Created, None);
            let Some(job) = self.jobs.get(&id) else { continue };
            let size = job_bytes(&job.args, &job.input, job.files.iter().map(|f| &f.entry));
            if size > MAX_JOB_BYTES {
                // No message could carry it: it would break every connection it is sent on.
                let why = format!(
                    "its arguments and input take about {size} bytes, more than the {MAX_JOB_BYTES} a job message may \
                     carry; pass large data in a file instead"
                );
                self.finish(JobReport::unrun(id, job.args.clone(), None, JobOutcome::NotRun(why)));
                continue;
            }
            self.queue.push_back(id);
        }
        if self.s.journal {
            self.out.push(Effect::Journal(Entry::Flush));
        }
        // Nothing will run them: they end at once, reported not run.
        if let Some(failure) = &self.failure {
            let why = failure.why();
            self.end_pending(&why);
            return;
        }
        self.dispatch();
    }

    /// A job ended: its report goes to its handle (or the result stream) and callbacks.
    pub(super) fn finish(&mut self, report: JobReport) {
        let id = report.id;
        let status = JobStatus::of(&report.outcome);
        let node = report.node.clone();
        // An ended job is forgotten: the client's memory stays flat however many jobs run,
        // and a late or repeated result finds nothing to finish.
        let Some(job) = self.jobs.remove(&id) else { return };
        if self.s.journal {
            self.out.push(Effect::Journal(Entry::Done(id)));
        }
        // The status callback runs first: whoever waits on the job or the stream sees its
        // end only after the callback did.
        self.job_event(id, status, node);
        match job.view {
            Some(view) => self.out.push(Effect::Ended { view, report: Arc::new(report) }),
            None => self.out.push(Effect::Report(Box::new(report))),
        }
        self.answer_waiters();
    }

    /// Answers `Cluster::wait` callers once no job is pending, or the cluster failed.
    pub(super) fn answer_waiters(&mut self) {
        if (self.jobs.is_empty() || self.failure.is_some()) && !self.waiters.is_empty() {
            let answer: Result<(), Failure> = self.failure.clone().map_or(Ok(()), Err);
            let waiters = std::mem::take(&mut self.waiters);
            self.out.push(Effect::Answer { waiters, answer });
        }
    }

    /// The node started these jobs: they are running (and count an attempt if it dies).
    pub(super) fn on_started(&mut self, peer: PeerId, started: Vec<JobId>) {
        let node = self.nodes.get(&peer).map(|n| n.node_ref(&peer));
        for id in started {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            if !job.is_on(peer) || job.started {
                continue;
            }
            job.started = true;
            self.watchdog.started(id);
            if let Some(view) = &job.view {
                view.send_modify(|v| {
                    v.status = JobStatus::Running;
                    v.node = node.clone();
                });
            }
            self.job_event(id, JobStatus::Running, node.clone());
        }
    }

    /// Running jobs sent provisional values: each becomes the job's latest and an event,
    /// in order; a file sent is fetched at once. A value from a node the job is not on, or
    /// for a job that ended, is stale.
    pub(super) fn on_provisional(&mut self, peer: PeerId, values: Vec<Provisional>) {
        for p in values {
            let Some(job) = self.jobs.get_mut(&p.job).filter(|j| j.is_on(peer) && j.fetching.is_none()) else {
                continue;
            };
            if let Some(file) = p.file {
                let dir = self.s.results_dir.join(p.job.0.to_string());
                self.out.push(Effect::FetchSent { peer, job: p.job, file, dir });
                continue;
            }
            if let Some(view) = &job.view {
                view.send_modify(|v| v.provisional = Some(p.value.clone()));
            }
            if self.s.job_events {
                let node = self.nodes.get(&peer).map(|n| n.node_ref(&peer));
                let ev = JobEvent { id: p.job, status: JobStatus::Running, node, provisional: Some(p.value) };
                self.out.push(Effect::JobEvent(ev));
            }
        }
    }

    pub(super) fn on_results(&mut self, peer: PeerId, results: Vec<JobResult>) {
        self.adopt_early(peer, &results);
        for r in results {
            let Some(job) = self.jobs.get_mut(&r.id) else { continue };
            // Only the node the job is on may finish it: a late or repeated result is
            // dropped, so each job is reported once.
            if !job.is_on(peer) {
                continue;
            }
            if let JobOutcome::Declined(why) = &r.outcome {
                // The node gave it back unrun (draining): it goes elsewhere, no attempt spent.
                debug!(job = %r.id, reason = %why, "job given back");
                job.state = JobState::Queued;
                job.started = false;
                self.queue.push_front(r.id);
                if let Some(node) = self.nodes.get_mut(&peer) {
                    node.in_flight.remove(&r.id);
                }
                self.gave_back(peer, why);
                continue;
            }
            // A repeated result of a job whose files are being fetched changes nothing.
            if job.fetching.is_some() {
                continue;
            }
            // Its start notice may travel in another message and arrive after the result:
            // a job is seen running before it is seen ending, whatever the order.
            if !job.started && !matches!(r.outcome, JobOutcome::Cancelled) {
                self.on_started(peer, vec![r.id]);
            }
            let Some(node) = self.nodes.get_mut(&peer) else { continue };
            node.jobs_done += 1;
            node.job_secs += r.end_us.saturating_sub(r.start_us) as f64 / 1e6;
            let Some(r) = self.fetch_returns(peer, r) else { continue };
            let Some(job) = self.jobs.get(&r.id) else { continue };
            let args = job.args.clone();
            let Some(node) = self.nodes.get_mut(&peer) else { continue };
            node.in_flight.remove(&r.id);
            let report = JobReport::from_result(r, args, Some(node.node_ref(&peer)));
            self.finish(report);
        }
    }

    /// Hands queued jobs to ready nodes with free capacity.
    pub(super) fn dispatch(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let ready: Vec<PeerId> =
            self.order.iter().filter(|p| self.nodes.get(p).is_some_and(|n| n.phase == Phase::Ready)).copied().collect();
        let loads: Vec<Load> = ready
            .iter()
            .filter_map(|p| self.nodes.get(p))
            .map(|n| Load {
                cpus: n.cpus,
                in_flight: n.in_flight.len(),
                mean_job_secs: (n.jobs_done > 0).then(|| n.job_secs / n.jobs_done as f64),
            })
            .collect();
        let plan = policy::plan(&loads, self.queue.len());
        let mut pinned_elsewhere = false;
        for (&peer, &count) in ready.iter().zip(&plan) {
            if count > 0 {
                pinned_elsewhere |= self.dispatch_to(peer, count, false);
            }
        }
        // The plan counts jobs, not who may run them: a job pinned to a node the plan gave
        // nothing would wait for a plan that does. Each node takes its own pinned jobs
        // into whatever room it has left.
        if pinned_elsewhere {
            for (peer, load) in ready.into_iter().zip(loads) {
                let planned = self.nodes.get(&peer).map_or(0, |n| n.in_flight.len());
                let room = policy::capacity(load.cpus, load.mean_job_secs).saturating_sub(planned);
                if room > 0 {
                    self.dispatch_to(peer, room, true);
                }
            }
        }
    }

    /// Sends up to `count` queued jobs to `peer` in one Submit (`only_pinned`: only jobs
    /// pinned to it). Returns whether a job pinned to another node was passed over.
    fn dispatch_to(&mut self, peer: PeerId, count: usize, only_pinned: bool) -> bool {
        let mut specs = Vec::with_capacity(count);
        let mut skipped = Vec::new();
        // A suspect (a job whose node died while it ran there) goes only to a node with a
        // free slot and no other suspect: it starts at once and alone among suspects, so
        // the next death is charged to the right job.
        let (cpus, mut load, mut has_suspect) = match self.nodes.get(&peer) {
            Some(n) => (
                n.cpus.max(1) as usize,
                n.in_flight.len(),
                n.in_flight.iter().any(|id| self.jobs.get(id).is_some_and(|j| j.suspect)),
            ),
            None => return false,
        };
        let mut pinned_elsewhere = false;
        while specs.len() < count {
            let Some(id) = self.queue.pop_front() else { break };
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            let elsewhere = job.pinned.as_deref().is_some_and(|p| *p != peer);
            pinned_elsewhere |= elsewhere;
            if elsewhere || (only_pinned && job.pinned.is_none()) || (job.suspect && (has_suspect || load >= cpus)) {
                skipped.push(id);
                continue;
            }
            has_suspect |= job.suspect;
            load += 1;
            job.state = JobState::on(peer);
            self.dispatch_seq += 1;
            job.dispatched = self.dispatch_seq;
            specs.push(job.spec(id, self.s.timeout_secs));
        }
        for id in skipped.into_iter().rev() {
            self.queue.push_front(id);
        }
        if specs.is_empty() {
            return pinned_elsewhere;
        }
        let ids: Vec<JobId> = specs.iter().map(|j| j.id).collect();
        if let Some(node) = self.nodes.get_mut(&peer) {
            node.in_flight.extend(ids.iter().copied());
            if self.s.journal {
                let addr = node.addr.clone();
                self.out.push(Effect::Journal(Entry::Sent { ids: ids.clone(), peer, addr }));
                self.out.push(Effect::Journal(Entry::Flush));
            }
        }
        for batch in batches(specs) {
            self.send_jobs(peer, batch);
        }
        pinned_elsewhere
    }

    /// Cancels jobs: queued ones end here at once, the others are cancelled on their node
    /// (those on a node that is away end here at once too: it cannot confirm).
    pub(super) fn cancel(&mut self, ids: Vec<JobId>) {
        let mut per_node: HashMap<PeerId, Vec<JobId>> = HashMap::new();
        let mut queued = HashSet::new();
        for id in ids {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            match job.state.node() {
                None => {
                    queued.insert(id);
                }
                Some(peer) => {
                    job.cancel_asked = true;
                    per_node.entry(peer).or_default().push(id);
                }
            }
        }
        // One pass over the queue, however many jobs are cancelled.
        self.queue.retain(|q| !queued.contains(q));
        let mut queued: Vec<JobId> = queued.into_iter().collect();
        queued.sort();
        for id in queued {
            let args = self.jobs.get(&id).map(|j| j.args.clone()).unwrap_or_default();
            self.finish(JobReport::unrun(id, args, None, JobOutcome::Cancelled));
        }
        for (peer, mut jobs) in per_node {
            jobs.sort();
            if self.nodes.get(&peer).is_some_and(|n| n.phase == Phase::Away) {
                self.end_cancelled(peer, &jobs);
                continue;
            }
            let request = Request::Cancel(Cancel { cluster: self.s.cluster, jobs });
            self.out.push(Effect::Ask { peer, request, asked: Asked::Cancel });
        }
    }
}
