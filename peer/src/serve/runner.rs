//! How a job runs, behind [`Runner`]: the node decides which job runs when and where (in
//! `slots`); a runner makes it happen. [`ProcessRunner`] is the real one (program jobs through
//! `executor`, function jobs on `workers`); the unit tests use one whose jobs end when the
//! test says.
//!
//! The cost per job is one boxed future and, for function jobs, a dynamic call: nothing next
//! to a process spawn or a pipe round trip, and no extra task or thread hop.

use super::executor::{self, RunOutcome, RunSpec};
use super::jobnotes::JobNote;
use super::store::Store;
use super::workers;
use dispy_protocol::{FileEntry, JobId, JobOutcome, JobResult, JobSpec};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A job's run, to be spawned on the node's runtime.
pub(crate) type Run<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Starts jobs: program jobs one process each, function jobs on persistent workers.
pub(crate) trait Runner: Send + Sync {
    /// Runs a program job until it ends, times out or `cancel` fires (or its sender is
    /// dropped).
    fn run_program(&self, job: ProgramJob, cancel: oneshot::Receiver<()>) -> Run<JobResult>;

    /// Starts a function worker for `place`. The future makes and fills its directory on
    /// the blocking pool: a cluster of many files costs the node's task nothing.
    ///
    /// Its output is an error saying why the worker could not start, for the job's
    /// `FailedToStart`.
    fn start_worker(&self, place: WorkerPlace) -> Run<Result<Box<dyn FunctionWorker>, String>>;

    /// Runs a cluster's setup or cleanup program until it ends, times out or `cancel` fires
    /// (`task.spec` is `None` when the directory is only to be prepared).
    fn run_cluster_task(&self, task: ClusterTask, cancel: oneshot::Receiver<()>) -> Run<RunOutcome>;
}

/// A cluster's setup or cleanup program, in the cluster's directory (see `setup`).
#[derive(Debug)]
pub(crate) struct ClusterTask {
    /// The cluster's directory.
    pub(crate) dir: PathBuf,
    /// The cluster's files when `dir` is still to be made and filled.
    pub(crate) fill: Option<Vec<FileEntry>>,
    /// The program to run there, if any.
    pub(crate) spec: Option<RunSpec>,
}

/// A function worker that can take a job.
pub(crate) trait FunctionWorker: Send {
    /// Runs one job until it ends, times out or `cancel` fires, passing what the job sends
    /// meanwhile to `notes` (dropped when the call ends). Returns the result and the worker
    /// if it can take another job (dropping a worker kills it).
    fn call(
        self: Box<Self>,
        job: JobSpec,
        max_output: usize,
        cancel: oneshot::Receiver<()>,
        notes: mpsc::Sender<JobNote>,
    ) -> Run<(JobResult, Option<Box<dyn FunctionWorker>>)>;
}

/// A program job placed in its directory.
#[derive(Debug)]
pub(crate) struct ProgramJob {
    pub(crate) id: JobId,
    pub(crate) spec: RunSpec,
    /// The cluster's files when `spec.dir` is fresh: made and filled before the run (a
    /// reused directory holds them already).
    pub(crate) fill: Option<Arc<[FileEntry]>>,
    /// The job's own input files, linked in after.
    pub(crate) extra: Vec<FileEntry>,
}

/// Where and what a new function worker serves.
#[derive(Debug)]
pub(crate) struct WorkerPlace {
    pub(crate) files: Vec<FileEntry>,
    pub(crate) dir: PathBuf,
    pub(crate) program: String,
    pub(crate) function: String,
    /// The reaper's token, when the worker does not inherit it.
    pub(crate) token: Option<Arc<str>>,
}

/// Runs jobs as processes, with the cluster's files linked from the store.
#[derive(Debug)]
pub(crate) struct ProcessRunner {
    store: Store,
}

impl ProcessRunner {
    pub(crate) fn new(store: Store) -> Self {
        ProcessRunner { store }
    }
}

impl Runner for ProcessRunner {
    fn run_program(&self, job: ProgramJob, cancel: oneshot::Receiver<()>) -> Run<JobResult> {
        let store = self.store.clone();
        Box::pin(async move {
            // Links and copies, one per file: on the blocking pool, never on the node's task.
            let (fill, extra, dir) = (job.fill, job.extra, job.spec.dir.clone());
            let prepared = tokio::task::spawn_blocking(move || {
                match &fill {
                    Some(files) => prepare_dir(&store, &dir, files, "job"),
                    None => Ok(()),
                }
                .and_then(|()| store.copy_into(&dir, &extra))
            })
            .await
            .unwrap_or_else(|e| Err(format!("preparing the job directory failed: {e}")));
            if let Err(why) = prepared {
                return failed_to_start(job.id, why);
            }
            let run = executor::run(job.spec, cancel).await;
            JobResult {
                stdout: run.stdout,
                stderr: run.stderr,
                ..JobResult::new(job.id, run.outcome, run.start_us, run.end_us)
            }
        })
    }

    fn start_worker(&self, place: WorkerPlace) -> Run<Result<Box<dyn FunctionWorker>, String>> {
        let store = self.store.clone();
        Box::pin(async move {
            let (dir, files) = (place.dir.clone(), place.files);
            tokio::task::spawn_blocking(move || prepare_dir(&store, &dir, &files, "worker"))
                .await
                .unwrap_or_else(|e| Err(format!("preparing the worker directory failed: {e}")))?;
            let token = place.token.as_deref();
            let worker = workers::Worker::spawn(&place.dir.join(&place.program), &place.dir, &place.function, token)
                .map_err(|e| format!("cannot start a worker for {}: {e}", place.function))?;
            Ok(Box::new(worker) as Box<dyn FunctionWorker>)
        })
    }

    fn run_cluster_task(&self, task: ClusterTask, cancel: oneshot::Receiver<()>) -> Run<RunOutcome> {
        let store = self.store.clone();
        Box::pin(async move {
            let start_us = executor::now_us();
            if let Some(files) = task.fill {
                let dir = task.dir.clone();
                let prepared = tokio::task::spawn_blocking(move || prepare_dir(&store, &dir, &files, "cluster"))
                    .await
                    .unwrap_or_else(|e| Err(format!("preparing the cluster directory failed: {e}")));
                if let Err(why) = prepared {
                    return RunOutcome::unrun(JobOutcome::FailedToStart(why), start_us);
                }
            }
            match task.spec {
                Some(spec) => executor::run(spec, cancel).await,
                None => RunOutcome::unrun(JobOutcome::Exited(0), start_us),
            }
        })
    }
}

impl FunctionWorker for workers::Worker {
    fn call(
        self: Box<Self>,
        job: JobSpec,
        max_output: usize,
        cancel: oneshot::Receiver<()>,
        notes: mpsc::Sender<JobNote>,
    ) -> Run<(JobResult, Option<Box<dyn FunctionWorker>>)> {
        Box::pin(async move {
            let (result, worker) = (*self).call(&job, max_output, cancel, notes).await;
            (result, worker.map(|w| Box::new(w) as Box<dyn FunctionWorker>))
        })
    }
}

/// Makes a job's or worker's directory (`what`) and links the cluster's files into it.
fn prepare_dir(store: &Store, dir: &Path, files: &[FileEntry], what: &str) -> Result<(), String> {
    make_new_dir(dir, what)?;
    store.link_into(dir, files)
}

/// Makes `dir` (0700) and, if missing, its parent (the cluster's folder) — never through a
/// symbolic link, and never adopting a `dir` that exists already: the name is new, so
/// something there was planted, and `create_dir_all` would follow it out of the job root.
fn make_new_dir(dir: &Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let make = |d: &Path| std::fs::DirBuilder::new().mode(0o700).create(d);
    let cannot = |e: std::io::Error| format!("cannot create the {what} directory {}: {e}", dir.display());
    let parent = dir.parent().ok_or_else(|| format!("the {what} directory {} has no parent", dir.display()))?;
    if let Err(e) = make(parent)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(cannot(e));
    }
    // One lstat, not a walk up the path: the folders above are the node's own (private).
    if !std::fs::symlink_metadata(parent).is_ok_and(|m| m.file_type().is_dir()) {
        return Err(format!("{} is not a plain directory (a symbolic link?); refusing to use it", parent.display()));
    }
    make(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!("the new {what} directory {} exists already (planted?); refusing to use it", dir.display())
        }
        _ => cannot(e),
    })
}

/// The result of a job that could not start.
pub(crate) fn failed_to_start(id: JobId, why: String) -> JobResult {
    unrun(id, JobOutcome::FailedToStart(why))
}

/// The result of a job that ended without running.
pub(crate) fn unrun(id: JobId, outcome: JobOutcome) -> JobResult {
    let now = executor::now_us();
    JobResult::new(id, outcome, now, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_directory_planted_as_a_link_is_refused_not_followed() {
        let top = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let cluster = top.path().join("cluster");
        make_new_dir(&cluster.join("job-1"), "job").expect("parent and directory made");
        std::os::unix::fs::symlink(outside.path(), cluster.join("job-2")).unwrap();
        let err = make_new_dir(&cluster.join("job-2"), "job").unwrap_err();
        assert!(err.contains("exists already"), "{err}");
        let linked = top.path().join("linked");
        std::os::unix::fs::symlink(outside.path(), &linked).unwrap();
        let err = make_new_dir(&linked.join("job-1"), "job").unwrap_err();
        assert!(err.contains("not a plain directory"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing made outside");
    }
}
