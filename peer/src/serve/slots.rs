//! CPU slots: starting queued jobs (programs in their job directories, functions on
//! persistent workers) as slots free up.

use super::*;

impl Server {
    /// Starts queued jobs while slots are free, taking from the cluster with the fewest
    /// running jobs first so that clients sharing a node share it fairly.
    pub(super) fn schedule(&mut self) {
        let mut started_in = Vec::new();
        self.start_jobs(&mut started_in);
        started_in.dedup();
        for id in started_in {
            self.flush(id);
        }
    }

    pub(super) fn start_jobs(&mut self, started_in: &mut Vec<ClusterId>) {
        while self.free > 0 && !self.stopping {
            let next = self
                .clusters
                .iter()
                .filter(|(_, c)| !c.released && !c.queue.is_empty() && (c.running.len() as u32) < c.cpus)
                .min_by_key(|(_, c)| c.running.len())
                .map(|(id, _)| *id);
            let Some(id) = next else { return };
            let Some(cluster) = self.clusters.get_mut(&id) else { return };
            let Some(job) = cluster.queue.pop_front() else { return };
            let (kill_tx, kill_rx) = oneshot::channel();
            cluster.running.insert(job.id, kill_tx);
            cluster.started.push(job.id);
            cluster.starts_since.get_or_insert_with(std::time::Instant::now);
            self.free -= 1;
            started_in.push(id);
            let tx = self.internal_tx.clone();
            let job_id = job.id;
            // Debug level: at the default level the span is not even built (it cost ~3 % of
            // the node's time per `/bin/true` job).
            let span = debug_span!("job", cluster = %id, job = %job_id);
            let max_output = self.cfg.max_output;
            if let Some(function) = cluster.function.clone() {
                let worker = match cluster.idle_workers.pop() {
                    Some(w) => Ok(Box::new(w)),
                    None => {
                        cluster.workers_started += 1;
                        let dir = cluster.dir.join(format!("worker-{}", cluster.workers_started));
                        let token = self.cfg.job_token.as_deref();
                        start_worker(&self.store, &cluster.files, &dir, &cluster.program, &function, token)
                    }
                };
                tokio::spawn(
                    async move {
                        let (result, worker) = match worker {
                            Ok(w) => w.call(&job, max_output, kill_rx).await,
                            Err(why) => (failed_to_start(job_id, why), None),
                        };
                        debug!(outcome = %result.outcome, "job ended");
                        let worker = worker.map(Box::new);
                        let _ = tx.send(Internal::JobDone { cluster: id, result, held_slot: true, worker, dir: None });
                    }
                    .instrument(span),
                );
                continue;
            }
            let dir = cluster.job_dirs.take(&self.store, &cluster.files, &mut self.trash);
            let spec = executor::RunSpec {
                program: dir.path.join(&cluster.program),
                args: job.args,
                dir: dir.path.clone(),
                timeout: job.timeout_secs.filter(|t| t.is_finite() && *t > 0.0).map(Duration::from_secs_f64),
                max_output,
                token: self.job_token.clone(),
            };
            // Only a fresh directory is filled.
            let fill = dir.fresh.then(|| cluster.files.clone());
            let store = self.store.clone();
            tokio::spawn(
                async move {
                    let result = run_job(&store, fill.as_deref(), spec, kill_rx, job_id).await;
                    debug!(outcome = %result.outcome, "job ended");
                    let done =
                        Internal::JobDone { cluster: id, result, held_slot: true, worker: None, dir: Some(dir.path) };
                    let _ = tx.send(done);
                }
                .instrument(span),
            );
        }
    }
}

/// Runs the job in its directory, first made and filled with `fill` if given (a reused one
/// holds the files already); the server reuses or removes the directory later.
pub(super) async fn run_job(
    store: &Store,
    fill: Option<&[FileEntry]>,
    spec: executor::RunSpec,
    kill: oneshot::Receiver<()>,
    id: JobId,
) -> JobResult {
    let prepared = match fill {
        Some(files) => prepare_dir(store, &spec.dir, files, "job"),
        None => Ok(()),
    };
    let run = match prepared {
        Ok(()) => executor::run(spec, kill).await,
        Err(why) => return failed_to_start(id, why),
    };
    JobResult {
        id,
        outcome: run.outcome,
        stdout: run.stdout,
        stderr: run.stderr,
        start_us: run.start_us,
        end_us: run.end_us,
        value: Vec::new(),
    }
}

/// Makes a job's or worker's directory (`what`) and links the cluster's files into it.
fn prepare_dir(
    store: &Store,
    dir: &std::path::Path,
    files: &[FileEntry],
    what: &str,
) -> std::result::Result<(), String> {
    // The cluster's folder exists after its first job: one mkdir, not a walk up the path.
    std::fs::create_dir(dir)
        .or_else(|_| std::fs::create_dir_all(dir))
        .map_err(|e| format!("cannot create the {what} directory {}: {e}", dir.display()))?;
    store.link_into(dir, files)
}

/// The result of a job that could not start.
pub(super) fn failed_to_start(id: JobId, why: String) -> JobResult {
    unrun(id, JobOutcome::FailedToStart(why))
}

/// The result of a job that ended without running.
pub(super) fn unrun(id: JobId, outcome: JobOutcome) -> JobResult {
    let now = executor::now_us();
    JobResult {
        id,
        outcome,
        stdout: Default::default(),
        stderr: Default::default(),
        start_us: now,
        end_us: now,
        value: Vec::new(),
    }
}

/// Starts a function worker in its own directory holding the cluster's files.
pub(super) fn start_worker(
    store: &Store,
    files: &[FileEntry],
    dir: &std::path::Path,
    program: &str,
    function: &str,
    token: Option<&str>,
) -> std::result::Result<Box<workers::Worker>, String> {
    prepare_dir(store, dir, files, "worker")?;
    workers::Worker::spawn(&dir.join(program), dir, function, token)
        .map(Box::new)
        .map_err(|e| format!("cannot start a worker for {function}: {e}"))
}
