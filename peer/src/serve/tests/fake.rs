//! A runner whose jobs end when the test says: no process starts.

use crate::serve::executor::RunOutcome;
use crate::serve::jobnotes::JobNote;
use crate::serve::runner::{ClusterTask, FunctionWorker, ProgramJob, Run, Runner, WorkerPlace};
use dispy_protocol::{JobId, JobOutcome, JobResult, JobSpec};
use tokio::sync::{mpsc, oneshot};

/// A job that started; it ends with [`FakeJob::finish`], or `Cancelled` when the node
/// kills it.
#[derive(Debug)]
pub(super) struct FakeJob {
    pub(super) id: JobId,
    /// A function job (on a worker) rather than a program job.
    pub(super) function: bool,
    /// A program job's directory (made, empty: no file is linked) and own input files.
    pub(super) dir: Option<std::path::PathBuf>,
    pub(super) inputs: Vec<String>,
    /// A function job's way to send notes as its worker would (provisional values, files).
    pub(super) notes: Option<mpsc::Sender<JobNote>>,
    finish: oneshot::Sender<JobOutcome>,
}

impl FakeJob {
    pub(super) fn finish(self, outcome: JobOutcome) {
        let _ = self.finish.send(outcome);
    }

    /// The node has killed it (the run ended and stopped listening).
    pub(super) fn killed(&self) -> bool {
        self.finish.is_closed()
    }
}

/// A setup or cleanup program that started; it ends with [`FakeTask::finish`].
#[derive(Debug)]
pub(super) struct FakeTask {
    /// The program's file name.
    pub(super) program: String,
    /// The environment it was given.
    pub(super) env: Vec<(String, String)>,
    finish: oneshot::Sender<(JobOutcome, Vec<u8>)>,
}

impl FakeTask {
    /// Ends it with `outcome`, having written `stderr`.
    pub(super) fn finish(self, outcome: JobOutcome, stderr: &[u8]) {
        let _ = self.finish.send((outcome, stderr.to_vec()));
    }
}

/// Reports each job, setup and cleanup it starts to the test, which holds its end.
pub(super) struct FakeRunner {
    pub(super) started: mpsc::UnboundedSender<FakeJob>,
    pub(super) tasks: mpsc::UnboundedSender<FakeTask>,
    /// Function workers alive (started and not dropped).
    pub(super) workers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Waits for the test's outcome or the node's cancel.
fn fake_run(
    job: FakeJobInfo,
    started: &mpsc::UnboundedSender<FakeJob>,
    cancel: oneshot::Receiver<()>,
) -> Run<JobResult> {
    let FakeJobInfo { id, function, dir, inputs, notes } = job;
    let (finish, outcome) = oneshot::channel();
    let _ = started.send(FakeJob { id, function, dir, inputs, notes, finish });
    Box::pin(async move {
        let outcome = tokio::select! {
            o = outcome => o.unwrap_or_else(|_| JobOutcome::Crashed("the test dropped the job".into())),
            _ = cancel => JobOutcome::Cancelled,
        };
        JobResult {
            id,
            outcome,
            stdout: Default::default(),
            stderr: Default::default(),
            start_us: 1,
            end_us: 2,
            value: Vec::new(),
            returned: Vec::new(),
            return_note: None,
        }
    })
}

/// What a started job tells the test.
struct FakeJobInfo {
    id: JobId,
    function: bool,
    dir: Option<std::path::PathBuf>,
    inputs: Vec<String>,
    notes: Option<mpsc::Sender<JobNote>>,
}

impl Runner for FakeRunner {
    fn run_program(&self, job: ProgramJob, cancel: oneshot::Receiver<()>) -> Run<JobResult> {
        // The directory exists, as a real run's does: a test may leave files in it.
        let _ = std::fs::create_dir_all(&job.spec.dir);
        let inputs = job.extra.iter().map(|f| f.name.clone()).collect();
        let info = FakeJobInfo { id: job.id, function: false, dir: Some(job.spec.dir), inputs, notes: None };
        fake_run(info, &self.started, cancel)
    }

    fn start_worker(&self, _place: WorkerPlace) -> Run<Result<Box<dyn FunctionWorker>, String>> {
        self.workers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let worker: Box<dyn FunctionWorker> =
            Box::new(FakeWorker { started: self.started.clone(), alive: self.workers.clone() });
        Box::pin(async move { Ok(worker) })
    }

    fn run_cluster_task(&self, task: ClusterTask, cancel: oneshot::Receiver<()>) -> Run<RunOutcome> {
        // Making the directory alone ends at once, as it would on a disk.
        let Some(spec) = task.spec else { return Box::pin(async { RunOutcome::unrun(JobOutcome::Exited(0), 1) }) };
        let (finish, end) = oneshot::channel();
        let program = spec.program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let env = spec.env.iter().flat_map(|e| e.iter());
        let env = env.map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned())).collect();
        let _ = self.tasks.send(FakeTask { program, env, finish });
        Box::pin(async move {
            let (outcome, stderr) = tokio::select! {
                end = end => end.unwrap_or_else(|_| (JobOutcome::Crashed("the test dropped it".into()), Vec::new())),
                _ = cancel => (JobOutcome::Cancelled, Vec::new()),
            };
            let mut run = RunOutcome::unrun(outcome, 1);
            run.stderr.bytes = stderr;
            run
        })
    }
}

struct FakeWorker {
    started: mpsc::UnboundedSender<FakeJob>,
    alive: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl FunctionWorker for FakeWorker {
    fn call(
        self: Box<Self>,
        job: JobSpec,
        _max_output: usize,
        cancel: oneshot::Receiver<()>,
        notes: mpsc::Sender<JobNote>,
    ) -> Run<(JobResult, Option<Box<dyn FunctionWorker>>)> {
        let info = FakeJobInfo { id: job.id, function: true, dir: None, inputs: Vec::new(), notes: Some(notes) };
        let run = fake_run(info, &self.started, cancel);
        Box::pin(async move {
            let result = run.await;
            // Like a real worker: one that was cancelled is not reused.
            let keep = result.outcome != JobOutcome::Cancelled;
            (result, keep.then_some(self as Box<dyn FunctionWorker>))
        })
    }
}
