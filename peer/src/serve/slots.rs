//! CPU slots: a cluster's jobs from submit to end. Jobs queue per lease ([`Runs`]), start as
//! slots free up (programs in their job directories, functions on persistent workers, both
//! through the node's [`Runner`](super::runner::Runner)), and come back here when they end.

use super::jobdirs::{JobDirs, Trash};
use super::jobfiles::collect;
use super::jobnotes::{NOTES_IN_FLIGHT, Relay};
use super::lease::{Lease, Leases};
use super::runner::{FunctionWorker, ProgramJob, WorkerPlace, failed_to_start, unrun};
use super::{Completion, Ctx, executor};
use dispy_protocol::{ClusterId, FileHash, JobId, JobOutcome, JobResult, JobSpec};
use futures::future::Either;
use libp2p::PeerId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, debug_span};

/// Jobs a cluster may have cancelled before they arrived: far more than a client has on
/// its way to a node, and a bound on what a client's cancels of finished jobs can cost.
const MAX_CANCELLED_EARLY: usize = 100_000;

/// One lease's jobs on their way through the slots.
pub(super) struct Runs {
    /// Jobs in submission order. A cancelled job leaves `queued` at once and this queue
    /// when it reaches the front (or at the next compaction): a cancel costs O(1) per id.
    queue: VecDeque<JobSpec>,
    /// The jobs of `queue` still to run.
    queued: HashSet<JobId>,
    /// Bytes of arguments and input the jobs of `queue` hold (what a client's queue costs
    /// the node's memory, for its limit).
    queued_bytes: u64,
    /// Running jobs, with what kills each.
    running: HashMap<JobId, oneshot::Sender<()>>,
    /// Jobs cancelled before their Submit arrived.
    cancelled_early: HashSet<JobId>,
    /// Function workers waiting for a job.
    idle_workers: Vec<Box<dyn FunctionWorker>>,
    /// Numbers worker directories.
    workers_started: u64,
    /// Program jobs' directories.
    job_dirs: JobDirs,
}

/// A job has ended (or ended without running).
pub(super) struct JobDone {
    pub(super) cluster: ClusterId,
    pub(super) result: JobResult,
    /// False for a job that ended before it took a slot (cancelled or declined).
    pub(super) held_slot: bool,
    /// A function worker that can take the next job.
    pub(super) worker: Option<Box<dyn FunctionWorker>>,
    /// A program job's directory, for the cluster's next job if still clean then.
    pub(super) dir: Option<PathBuf>,
}

impl JobDone {
    /// A job that ends without having run.
    pub(super) fn unstarted(cluster: ClusterId, id: JobId, outcome: JobOutcome) -> Completion {
        let result = unrun(id, outcome);
        Completion::JobDone(JobDone { cluster, result, held_slot: false, worker: None, dir: None })
    }
}

impl Runs {
    pub(super) fn new(dir: PathBuf) -> Self {
        Runs {
            queue: VecDeque::new(),
            queued: HashSet::new(),
            queued_bytes: 0,
            running: HashMap::new(),
            cancelled_early: HashSet::new(),
            idle_workers: Vec::new(),
            workers_started: 0,
            job_dirs: JobDirs::new(dir),
        }
    }

    /// Queues submitted jobs; returns those already cancelled, which end at once. A job
    /// already queued or running here (a client sending it twice) is not queued again: a
    /// second copy would replace the first's kill switch and kill it.
    pub(super) fn queue(&mut self, jobs: Vec<JobSpec>) -> Vec<JobId> {
        let mut cancelled = Vec::new();
        for job in jobs {
            if self.cancelled_early.remove(&job.id) {
                cancelled.push(job.id);
            } else if self.queued.contains(&job.id) || self.running.contains_key(&job.id) {
                debug!(job = %job.id, "job sent twice; the copy is dropped");
            } else {
                self.queued.insert(job.id);
                self.queued_bytes += job_bytes(&job);
                self.queue.push_back(job);
            }
        }
        cancelled
    }

    /// The next queued job still to run.
    fn pop_queued(&mut self) -> Option<JobSpec> {
        while let Some(job) = self.queue.pop_front() {
            self.queued_bytes = self.queued_bytes.saturating_sub(job_bytes(&job));
            if self.queued.remove(&job.id) {
                return Some(job);
            }
        }
        None
    }

    /// Jobs queued, and the bytes they hold.
    pub(super) fn queued(&self) -> (usize, u64) {
        (self.queued.len(), self.queued_bytes)
    }

    /// Kills running jobs and drops queued ones, returned to be reported `Cancelled`. A job
    /// not seen yet (`ended` says which have) is cancelled when it arrives. O(1) per id.
    pub(super) fn cancel(&mut self, jobs: Vec<JobId>, ended: impl Fn(JobId) -> bool) -> Vec<JobId> {
        let mut cancelled = Vec::new();
        for id in jobs {
            if let Some(kill) = self.running.remove(&id) {
                let _ = kill.send(());
            } else if self.queued.remove(&id) {
                cancelled.push(id);
            } else if !ended(id) && self.cancelled_early.len() < MAX_CANCELLED_EARLY {
                // Submit and Cancel travel on streams of their own: the jobs
                // may still be on their way. They are cancelled on arrival.
                self.cancelled_early.insert(id);
            }
        }
        // Cancelled jobs leave the queue as they reach its front; a queue mostly made of
        // them is compacted, in time linear in its length, so it never holds much more
        // than its live jobs.
        if self.queue.len() > 2 * self.queued.len() + 1024 {
            let queued = &self.queued;
            self.queue.retain(|j| queued.contains(&j.id));
            self.queued_bytes = self.queue.iter().map(job_bytes).sum();
        }
        cancelled
    }

    /// Takes the queued jobs away (a drain gives them back to the client).
    pub(super) fn take_queued(&mut self) -> Vec<JobSpec> {
        let mut jobs = Vec::with_capacity(self.queued.len());
        while let Some(job) = self.pop_queued() {
            jobs.push(job);
        }
        jobs
    }

    /// Kills every job and idle worker and drops the queue.
    pub(super) fn kill_all(&mut self) {
        self.queue.clear();
        self.queued.clear();
        self.queued_bytes = 0;
        // A dropped worker is killed.
        self.idle_workers.clear();
        for (_, kill) in self.running.drain() {
            let _ = kill.send(());
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.running.is_empty()
    }

    pub(super) fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Function workers waiting for a job.
    pub(super) fn idle_workers(&self) -> usize {
        self.idle_workers.len()
    }

    /// Stops one idle worker (a dropped worker is killed).
    pub(super) fn stop_idle_worker(&mut self) {
        self.idle_workers.pop();
    }
}

/// What a queued job holds in memory, roughly: its arguments and input.
fn job_bytes(job: &JobSpec) -> u64 {
    let args: usize = job.args.iter().map(|a| a.len() + 24).sum();
    (args + job.input.len() + job.files.len() * 96) as u64
}

/// Starts queued jobs while slots are free, taking from the client with the fewest running
/// jobs first (then its cluster with the fewest), so that clients sharing a node share it
/// fairly however many clusters each holds. Returns the clusters that started jobs (their
/// starts are to be sent).
pub(super) fn start_jobs(leases: &mut Leases, free: &mut u32, ctx: &mut Ctx) -> Vec<ClusterId> {
    let mut started_in = Vec::new();
    if *free == 0 {
        return started_in;
    }
    let mut by_client: HashMap<PeerId, usize> = HashMap::new();
    for c in leases.0.values() {
        *by_client.entry(c.client).or_default() += c.runs.running.len();
    }
    while *free > 0 {
        let next = leases
            .0
            .iter()
            .filter(|(_, c)| !c.released && c.runs.has_queued() && (c.runs.running.len() as u32) < c.cpus)
            .filter(|(_, c)| c.setup.ready())
            .min_by_key(|(_, c)| (by_client.get(&c.client).copied().unwrap_or(0), c.runs.running.len()))
            .map(|(id, _)| *id);
        let Some(id) = next else { break };
        let Some(lease) = leases.0.get_mut(&id) else { break };
        let Some(job) = lease.runs.pop_queued() else { break };
        *by_client.entry(lease.client).or_default() += 1;
        *free -= 1;
        start(id, lease, job, ctx);
        started_in.push(id);
    }
    started_in.dedup();
    started_in
}

/// Starts one job of `lease` in a slot already taken.
fn start(id: ClusterId, lease: &mut Lease, job: JobSpec, ctx: &mut Ctx) {
    let (kill_tx, kill_rx) = oneshot::channel();
    if let Some(m) = &ctx.metrics {
        m.job_started();
    }
    lease.ran = true;
    let runs = &mut lease.runs;
    runs.running.insert(job.id, kill_tx);
    lease.outbox.job_started(job.id);
    let done = ctx.done.clone();
    let job_id = job.id;
    // Debug level: at the default level the span is not even built (it cost ~3 % of
    // the node's time per `/bin/true` job).
    let span = debug_span!("job", cluster = %id, job = %job_id);
    let max_output = ctx.max_output;
    if let Some(function) = &lease.function {
        if !job.files.is_empty() {
            // A function's worker serves job after job in one directory: a job's own files
            // have no place of their own there.
            let result = failed_to_start(job_id, "a function job cannot have input files of its own".into());
            ctx.report(Completion::JobDone(JobDone { cluster: id, result, held_slot: true, worker: None, dir: None }));
            return;
        }
        let worker = match runs.idle_workers.pop() {
            Some(w) => Either::Left(w),
            None => {
                runs.workers_started += 1;
                let place = WorkerPlace {
                    files: lease.files.clone(),
                    dir: lease.dir.join(format!("worker-{}", runs.workers_started)),
                    program: lease.program.clone(),
                    function: function.clone(),
                    token: ctx.job_token.clone(),
                };
                Either::Right(ctx.runner.start_worker(place))
            }
        };
        let (notes_tx, notes_rx) = mpsc::channel(NOTES_IN_FLIGHT);
        let relay =
            Relay { cluster: id, job: job_id, store: ctx.store.clone(), max_bytes: ctx.max_return, done: done.clone() };
        tokio::spawn(
            async move {
                let call = async move {
                    let worker = match worker {
                        Either::Left(idle) => Ok(idle),
                        Either::Right(starting) => starting.await,
                    };
                    match worker {
                        Ok(w) => w.call(job, max_output, kill_rx, notes_tx).await,
                        Err(why) => (failed_to_start(job_id, why), None),
                    }
                };
                // The result leaves after every note: the client sees a job's provisional
                // values before its result, and its sent files among its returned ones.
                let ((mut result, worker), sent) = tokio::join!(call, relay.run(notes_rx));
                result.returned.extend(sent.files);
                result.return_note = sent.note;
                debug!(outcome = %result.outcome, "job ended");
                let _ =
                    done.send(Completion::JobDone(JobDone { cluster: id, result, held_slot: true, worker, dir: None }));
            }
            .instrument(span),
        );
        return;
    }
    let dir = runs.job_dirs.take();
    let (runner, store, files) = (ctx.runner.clone(), ctx.store.clone(), lease.shared_files.clone());
    let (program, token, env) = (lease.program.clone(), ctx.job_token.clone(), lease.setup.job_env());
    let globs = (!lease.job_files.globs.is_empty()).then(|| lease.job_files.globs.clone());
    let max_return = ctx.max_return;
    tokio::spawn(
        async move {
            // A used directory is checked (and a new one named if it is not clean) on the
            // blocking pool, never on the node's task.
            let (path, fresh) = match dir.reuse {
                None => (dir.path, true),
                Some(reuse) => {
                    let (store, files, used) = (store.clone(), files.clone(), dir.path);
                    let fallback = used.clone();
                    tokio::task::spawn_blocking(move || reuse.settle(used, &store, &files))
                        .await
                        .unwrap_or((fallback, false))
                }
            };
            let timeout = job.timeout();
            let spec = executor::RunSpec {
                program: path.join(&program),
                args: job.args,
                dir: path.clone(),
                timeout,
                max_output,
                token,
                env,
            };
            // Only a fresh directory is filled; the job's own files join either.
            let fill = fresh.then(|| files.clone());
            let mut result = runner.run_program(ProgramJob { id: job_id, spec, fill, extra: job.files }, kill_rx).await;
            let returns = globs.map(|globs| {
                let path = path.clone();
                move || collect(&path, &globs, &store, max_return)
            });
            if let Some(returns) = returns {
                // Whatever the outcome: a failed job's partial output is what its user wants
                // to look at.
                match tokio::task::spawn_blocking(returns).await {
                    Ok(got) => (result.returned, result.return_note) = (got.files, got.note),
                    Err(e) => result.return_note = Some(format!("collecting returned files failed: {e}")),
                }
            }
            debug!(outcome = %result.outcome, "job ended");
            let done_job = JobDone { cluster: id, result, held_slot: true, worker: None, dir: Some(path) };
            let _ = done.send(Completion::JobDone(done_job));
        }
        .instrument(span),
    );
}

/// A job has ended: its slot, directory and worker go back, its result to the outbox.
/// Returns whether it held a slot, and its input files no other job of the lease needs.
pub(super) fn job_done(lease: Option<&mut Lease>, done: JobDone, trash: &mut Trash) -> (bool, Vec<FileHash>) {
    let JobDone { result, held_slot, worker, dir, .. } = done;
    let Some(c) = lease else { return (held_slot, Vec::new()) };
    match dir {
        Some(dir) if !c.released => c.runs.job_dirs.give_back(dir),
        Some(dir) => trash.push(dir),
        None => {}
    }
    c.runs.running.remove(&result.id);
    c.job_files.keep(&result.returned);
    let unused = c.job_files.ended(result.id);
    if !c.released {
        c.outbox.push_result(result);
        // A worker of a released cluster is dropped here, which kills it.
        c.runs.idle_workers.extend(worker);
    }
    (held_slot, unused)
}
