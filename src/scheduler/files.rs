//! Jobs' own files in the scheduler: inputs (`--each-file`) are declared to the node the
//! job goes to, the ones it lacks are staged, and only then is the job submitted; a result
//! that lists returned files (`--return`) holds its job open until they are fetched.

use super::core::{Asked, Core, Effect, Job};
use crate::report::JobReport;
use crate::stage::LocalFile;
use dispy_protocol::{Declare, FileEntry, FileHash, JobId, JobOutcome, JobResult, JobSpec, Request, Submit};
use libp2p::PeerId;
use std::path::PathBuf;
use tracing::{debug, warn};

impl Core {
    /// Sends `specs` to `peer`: those without input files at once, the others after their
    /// files are declared (and staged where missing).
    pub(super) fn send_jobs(&mut self, peer: PeerId, specs: Vec<JobSpec>) {
        let (with_files, plain): (Vec<JobSpec>, Vec<JobSpec>) = specs.into_iter().partition(|s| !s.files.is_empty());
        if !plain.is_empty() {
            self.ask_submit(peer, plain);
        }
        if !with_files.is_empty() {
            let ids = with_files.iter().map(|s| s.id).collect();
            let mut files: Vec<_> = with_files.into_iter().flat_map(|s| s.files).collect();
            files.sort_by_key(|f| f.hash.0);
            files.dedup_by_key(|f| f.hash);
            let request = Request::Declare(Declare { cluster: self.s.cluster, files });
            self.out.push(Effect::Ask { peer, request, asked: Asked::Declare(ids) });
        }
    }

    fn ask_submit(&mut self, peer: PeerId, jobs: Vec<JobSpec>) {
        let ids = jobs.iter().map(|j| j.id).collect();
        let request = Request::Submit(Submit { cluster: self.s.cluster, jobs });
        self.out.push(Effect::Ask { peer, request, asked: Asked::Submit(ids) });
    }

    /// The node knows the jobs' inputs now and lacks `missing`: send those, then the jobs.
    pub(super) fn on_declared(&mut self, peer: PeerId, ids: Vec<JobId>, missing: Vec<FileHash>) {
        let mut files: Vec<LocalFile> = Vec::new();
        for id in &ids {
            let Some(job) = self.jobs.get(id).filter(|j| j.is_on(peer)) else { continue };
            for f in &job.files {
                if missing.contains(&f.entry.hash) && !files.iter().any(|x| x.entry.hash == f.entry.hash) {
                    files.push(f.clone());
                }
            }
        }
        if let Some(why) = self.over_relay_limit(peer, &files) {
            self.on_inputs_staged(peer, ids, Err(why));
        } else if files.is_empty() {
            self.on_inputs_staged(peer, ids, Ok(0));
        } else {
            self.out.push(Effect::Stage { peer, addr: None, files, jobs: Some(ids) });
        }
    }

    /// The jobs' inputs are on the node (or could not be sent): submit the jobs still
    /// meant for it.
    pub(super) fn on_inputs_staged(&mut self, peer: PeerId, ids: Vec<JobId>, outcome: Result<u64, String>) {
        if let Err(why) = outcome {
            return self.unusable(peer, format!("staging job input files failed: {why}"));
        }
        if let (Ok(sent), Some(node)) = (outcome, self.nodes.get_mut(&peer)) {
            node.staged_bytes += sent;
        }
        let specs: Vec<JobSpec> = ids
            .into_iter()
            .filter_map(|id| self.jobs.get(&id).filter(|j| j.is_on(peer)).map(|j| j.spec(id, self.s.timeout_secs)))
            .collect();
        if !specs.is_empty() {
            self.ask_submit(peer, specs);
        }
    }

    /// Fails the jobs whose inputs could not be read here; they leave `peer`.
    pub(super) fn inputs_unreadable(&mut self, peer: PeerId, jobs: &[JobId], unreadable: &[(FileHash, String)]) {
        for id in jobs {
            let Some(job) = self.jobs.get(id).filter(|j| j.is_on(peer)) else { continue };
            let Some((_, why)) = unreadable.iter().find(|(h, _)| job.files.iter().any(|f| f.entry.hash == *h)) else {
                continue;
            };
            let (outcome, args) = (JobOutcome::FailedToStart(format!("its input file: {why}")), job.args.clone());
            if let Some(node) = self.nodes.get_mut(&peer) {
                node.in_flight.remove(id);
            }
            self.finish(JobReport::unrun(*id, args, None, outcome));
        }
    }

    /// A result with returned files: the job stays open on its node until they are here.
    /// Returns the result when there is nothing to fetch.
    pub(super) fn fetch_returns(&mut self, peer: PeerId, r: JobResult) -> Option<JobResult> {
        if r.returned.is_empty() {
            return Some(r);
        }
        let job = self.jobs.get_mut(&r.id)?;
        // Files it sent while running that are here already are not fetched again.
        let files: Vec<FileEntry> = r
            .returned
            .iter()
            .filter(|f| !job.sent.as_ref().is_some_and(|s| s.contains_key(&(f.hash, f.name.clone()))))
            .cloned()
            .collect();
        let job_id = r.id;
        job.fetching = Some(Box::new(r));
        if files.is_empty() {
            self.fetched(peer, job_id, Vec::new(), Vec::new());
        } else {
            let dir = self.s.results_dir.join(job_id.0.to_string());
            self.out.push(Effect::Fetch { peer, job: job_id, files, dir });
        }
        None
    }

    /// A file a running job sent was fetched, or not: a failure is not the job's, as its
    /// result lists the file again and the file is fetched with the others then.
    pub(super) fn sent_fetched(&mut self, peer: PeerId, id: JobId, file: FileEntry, saved: Result<PathBuf, String>) {
        let Some(job) = self.jobs.get_mut(&id).filter(|j| j.is_on(peer)) else { return };
        match saved {
            Ok(path) => {
                job.sent.get_or_insert_default().insert((file.hash, file.name), path);
            }
            Err(why) => {
                debug!(job = %id, %peer, file = %file.name, cause = %why, "a file sent is fetched with the result")
            }
        }
    }

    /// A job's returned files were fetched (or some could not be): it ends now.
    pub(super) fn fetched(&mut self, peer: PeerId, id: JobId, saved: Vec<PathBuf>, failed: Vec<String>) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        // A fetch from a node the job has left since (lost, and the job re-queued) is stale.
        if !job.is_on(peer) {
            return;
        }
        let Some(result) = job.fetching.take() else { return };
        if !failed.is_empty() {
            warn!(job = %id, %peer, failed = failed.len(), "returned files could not be saved");
        }
        let args = job.args.clone();
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        node.in_flight.remove(&id);
        let mut report = JobReport::from_result(*result, args, Some(node.node_ref(&peer)));
        let mut returned: Vec<PathBuf> = job.sent.take().into_iter().flat_map(|s| s.into_values()).collect();
        returned.sort();
        returned.extend(saved);
        report.returned = returned;
        if !failed.is_empty() {
            report.note_not_saved(&failed.join("; "));
        }
        self.finish(report);
        // Its end reaches the journal's disk now, not with the next results: after a crash,
        // `recover` must not call a job lost whose files are saved.
        if self.s.journal {
            self.out.push(Effect::Journal(super::core::Entry::Flush));
        }
        // Its slot on the node is free now.
        self.dispatch();
    }
}

impl Job {
    /// The spec the job travels as.
    pub(super) fn spec(&self, id: JobId, timeout_secs: Option<f64>) -> JobSpec {
        JobSpec {
            id,
            args: self.args.clone(),
            timeout_secs,
            input: self.input.clone(),
            files: self.files.iter().map(|f| f.entry.clone()).collect(),
        }
    }
}
