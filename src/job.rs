//! [`Job`]: the handle of one submitted job, and its [`JobStatus`] and [`JobError`].

use crate::report::{JobReport, NodeRef};
use dispy_protocol::{JobId, JobOutcome};
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;

/// Where a job is in its life (dispy's job states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum JobStatus {
    /// Queued on the client, waiting for a CPU slot.
    Created,
    /// Accepted by a node (running, or next in its queue).
    Running,
    /// Ended well: a program exited 0, a function returned.
    Finished,
    /// Ended badly: non-zero exit, signal, panic, timeout, could not start, worker crashed.
    Failed,
    /// Cancelled by the client.
    Cancelled,
    /// Its node was lost and the cluster is not reentrant.
    Abandoned,
    /// It never ran: no node was left to run it, or the run stopped first.
    NotRun,
}

impl JobStatus {
    /// The status a job ends with.
    pub fn of(outcome: &JobOutcome) -> JobStatus {
        match outcome {
            JobOutcome::Exited(0) | JobOutcome::Returned => JobStatus::Finished,
            JobOutcome::Cancelled => JobStatus::Cancelled,
            JobOutcome::Abandoned(_) => JobStatus::Abandoned,
            JobOutcome::NotRun(_) => JobStatus::NotRun,
            _ => JobStatus::Failed,
        }
    }

    /// The status in lower case (`finished`, `failed`, ...), as `submit --json` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Created => "created",
            JobStatus::Running => "running",
            JobStatus::Finished => "finished",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Abandoned => "abandoned",
            JobStatus::NotRun => "not run",
        }
    }

    /// Whether the job has ended.
    pub fn is_done(self) -> bool {
        !matches!(self, JobStatus::Created | JobStatus::Running)
    }
}

/// Why a job produced no result.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// A program exited non-zero or was killed by a signal.
    #[error("{0}")]
    Program(JobOutcome),
    /// A function panicked.
    #[error("panicked: {message}")]
    Panicked {
        /// The panic message, with its location.
        message: String,
        /// The backtrace.
        trace: String,
    },
    /// Killed after the cluster's per-job timeout.
    #[error("timed out")]
    TimedOut,
    /// Cancelled by the client.
    #[error("cancelled")]
    Cancelled,
    /// Its node was lost; the text names it and why.
    #[error("abandoned: {0}")]
    Abandoned(String),
    /// It could not start, or its worker died; the text says why.
    #[error("{0}")]
    NotRun(String),
    /// The function's result could not be decoded into the expected type.
    #[error("cannot decode the job's result: {0}")]
    Decode(String),
    /// The cluster failed as a whole (no node found, or closed).
    #[error("{0}")]
    Cluster(String),
}

impl JobError {
    pub(crate) fn of(outcome: &JobOutcome) -> Option<JobError> {
        Some(match outcome {
            JobOutcome::Exited(0) | JobOutcome::Returned => return None,
            JobOutcome::Exited(_) | JobOutcome::Signaled(_) => JobError::Program(outcome.clone()),
            JobOutcome::Panicked { message, trace } => {
                JobError::Panicked { message: message.clone(), trace: trace.clone() }
            }
            JobOutcome::TimedOut => JobError::TimedOut,
            JobOutcome::Cancelled => JobError::Cancelled,
            JobOutcome::Abandoned(why) => JobError::Abandoned(why.clone()),
            JobOutcome::FailedToStart(why) => JobError::NotRun(why.clone()),
            JobOutcome::Crashed(why) => JobError::NotRun(format!("crashed: {why}")),
            JobOutcome::Declined(why) => JobError::NotRun(format!("declined: {why}")),
            JobOutcome::NotRun(why) => JobError::NotRun(why.clone()),
        })
    }
}

/// What a job's handle sees; updated by the scheduler.
#[derive(Clone, Debug)]
pub(crate) struct JobView {
    pub(crate) status: JobStatus,
    pub(crate) node: Option<NodeRef>,
    pub(crate) report: Option<Arc<JobReport>>,
    /// Set when the cluster failed before the job ended.
    pub(crate) cluster_error: Option<String>,
    /// The latest provisional value the job sent (CBOR).
    pub(crate) provisional: Option<Vec<u8>>,
}

/// Decodes a provisional value, if there is one.
pub(crate) fn decode_provisional<T: serde::de::DeserializeOwned>(value: Option<&[u8]>) -> Result<Option<T>, JobError> {
    value.map(|v| dispy_protocol::decode(v).map_err(|e| JobError::Decode(e.to_string()))).transpose()
}

impl JobView {
    pub(crate) fn created() -> Self {
        JobView { status: JobStatus::Created, node: None, report: None, cluster_error: None, provisional: None }
    }
}

/// Turns a finished job's report into the typed result.
pub(crate) type Decoder<R> = fn(&JobReport) -> Result<R, JobError>;

/// A submitted job. Await it (or call [`Job::wait`]) for its result; its output, node and
/// times stay readable afterwards.
///
/// # Examples
/// ```no_run
/// # async fn demo(mut cluster: dispy::Cluster<u64, u64>) -> dispy::Result<()> {
/// let job = cluster.submit(12).await?;
/// match job.wait().await {
///     Ok(square) => println!("{square} from {:?}", job.node()),
///     Err(e) => eprintln!("job {} failed: {e}", job.id()),
/// }
/// # Ok(()) }
/// ```
pub struct Job<R> {
    id: JobId,
    view: watch::Receiver<JobView>,
    decode: Decoder<R>,
    _r: PhantomData<fn() -> R>,
}

impl<R> Job<R> {
    pub(crate) fn new(id: JobId, view: watch::Receiver<JobView>, decode: Decoder<R>) -> Self {
        Job { id, view, decode, _r: PhantomData }
    }

    /// The job's number in its cluster.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Where the job is now.
    pub fn status(&self) -> JobStatus {
        self.view.borrow().status
    }

    /// The node it ran on (or runs on).
    pub fn node(&self) -> Option<NodeRef> {
        self.view.borrow().node.clone()
    }

    /// The full report once the job has ended: stdout, stderr, outcome (exit code, signal,
    /// panic and trace), start and end times.
    pub fn report(&self) -> Option<Arc<JobReport>> {
        self.view.borrow().report.clone()
    }

    /// The latest provisional value the job sent while it ran ([`crate::provisional`],
    /// dispy's provisional result), decoded as `T` (the type the function sent, which need
    /// not be its result type); `Ok(None)` before the first.
    ///
    /// # Errors
    /// [`JobError::Decode`] when the value is not a `T`.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(mut cluster: dispy::Cluster<u64, u64>) -> dispy::Result<()> {
    /// let job = cluster.submit(12).await?;
    /// if let Ok(Some(step)) = job.provisional::<u64>() {
    ///     println!("job {} reached step {step}", job.id());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn provisional<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, JobError> {
        decode_provisional(self.view.borrow().provisional.as_deref())
    }

    /// What the job wrote to stdout (empty until it ends).
    pub fn stdout(&self) -> Vec<u8> {
        self.report().map(|r| r.stdout.clone()).unwrap_or_default()
    }

    /// What the job wrote to stderr (empty until it ends).
    pub fn stderr(&self) -> Vec<u8> {
        self.report().map(|r| r.stderr.clone()).unwrap_or_default()
    }

    /// Waits for the end and returns the result.
    ///
    /// Cancel safety: safe; the job goes on, and a later call waits again.
    ///
    /// # Errors
    /// [`JobError`] for every way a job can fail.
    pub async fn wait(&self) -> Result<R, JobError> {
        let mut view = self.view.clone();
        let ended = view.wait_for(|v| v.status.is_done() || v.cluster_error.is_some()).await;
        let v = match ended {
            Ok(v) => v.clone(),
            Err(_) => return Err(JobError::Cluster("the cluster was dropped before the job ended".into())),
        };
        match (&v.report, &v.cluster_error) {
            (Some(report), _) => match JobError::of(&report.outcome) {
                Some(e) => Err(e),
                None => (self.decode)(report),
            },
            (None, Some(e)) => Err(JobError::Cluster(e.clone())),
            (None, None) => Err(JobError::Cluster("the job ended without a report".into())),
        }
    }

    /// Blocks until the end: [`Job::wait`] for programs that are not async. Must not be
    /// called from inside an async task (it would block that task's thread).
    ///
    /// # Errors
    /// As [`Job::wait`].
    pub fn result(&self) -> Result<R, JobError> {
        futures::executor::block_on(self.wait())
    }
}

impl<R: Send + 'static> IntoFuture for Job<R> {
    type Output = Result<R, JobError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.wait().await })
    }
}

impl<R> std::fmt::Debug for Job<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("id", &self.id).field("status", &self.status()).finish()
    }
}
