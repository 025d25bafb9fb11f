//! [`Cluster`]: dispy's `JobCluster`. Build it for a program ([`Cluster::program`]) or a
//! Rust function ([`Cluster::function`]), submit jobs, await their results, close it for
//! the stats.

use crate::builder::{ClusterBuilder, Encoder};
use crate::error::{Error, Result};
use crate::job::{Decoder, Job, JobError, JobView};
use crate::report::NodeInfo;
use crate::report::{JobReport, Stats};
use crate::scheduler::NewJob;
use crate::scheduler::{Cmd, Update};
use crate::stage;
use dispy_protocol::JobId;
use futures::Stream;
use serde::{Serialize, de::DeserializeOwned};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Hashes each job's input files on the blocking pool (they may be large).
async fn describe_inputs(files: Vec<Vec<PathBuf>>) -> Result<Vec<Vec<stage::LocalFile>>> {
    tokio::task::spawn_blocking(move || stage::describe_inputs(&files))
        .await
        .map_err(|e| Error::Start(format!("hashing input files: {e}")))?
}

/// A cluster running one program on the mesh's nodes.
///
/// Dropping it without [`Cluster::close`] closes the cluster at once, without waiting for
/// its jobs: the nodes are released (their running jobs killed, the cluster's directories
/// deleted) and the cluster's peer stops. [`Job`] handles still held then report
/// [`Error::Closed`] if their jobs had not ended. `close` instead waits for the jobs (see
/// [`ClusterBuilder::close_timeout`]).
///
/// # Examples
/// ```no_run
/// # async fn demo() -> dispy::Result<()> {
/// let mut cluster = dispy::Cluster::program("./render.sh").file("scene.bin").start().await?;
/// for frame in 0..10 {
///     cluster.submit(vec![frame.to_string()]).await?;
/// }
/// while let Some(job) = cluster.next_result().await? {
///     println!("frame {}: {}", job.args[0], job.outcome);
/// }
/// println!("{}", cluster.close().await?);
/// # Ok(()) }
/// ```
pub struct Cluster<A = Vec<String>, R = ()> {
    cmds: mpsc::Sender<Cmd>,
    updates: mpsc::UnboundedReceiver<Update>,
    next_id: u64,
    outstanding: usize,
    close_timeout: Option<Duration>,
    encode: Encoder<A>,
    decode: Decoder<R>,
    web_url: Option<String>,
    /// The web monitor's feed: jobs' arguments as they are submitted.
    web_feed: Option<crate::web::feed::FeedTx>,
    cancelled: watch::Receiver<bool>,
    _t: PhantomData<fn(A) -> R>,
}

// The signature is `Encoder<Vec<String>>`'s, hence `&Vec`.
#[allow(clippy::ptr_arg)]
fn program_args(args: &Vec<String>) -> Result<(Vec<String>, Vec<u8>)> {
    Ok((args.clone(), Vec::new()))
}

fn program_result(_: &crate::JobReport) -> Result<(), JobError> {
    Ok(())
}

fn function_input<A: Serialize>(arg: &A) -> Result<(Vec<String>, Vec<u8>)> {
    let input = dispy_protocol::encode(arg).map_err(|e| Error::Encode(e.to_string()))?;
    Ok((Vec::new(), input))
}

fn function_result<R: DeserializeOwned>(report: &crate::JobReport) -> Result<R, JobError> {
    dispy_protocol::decode(&report.value).map_err(|e| JobError::Decode(e.to_string()))
}

impl Cluster<Vec<String>, ()> {
    /// Starts building a cluster that runs `path` (any executable or script) once per job,
    /// with each job's arguments.
    pub fn program(path: impl Into<PathBuf>) -> ClusterBuilder<Vec<String>, ()> {
        ClusterBuilder::new(path.into(), None, program_args, program_result)
    }
}

impl<A: Serialize, R: DeserializeOwned> Cluster<A, R> {
    /// Starts building a cluster that calls the Rust function `f` once per job, on the nodes.
    /// The function travels as this program's own executable, started there in worker mode:
    /// register it with [`crate::worker!`] at the top of `main`.
    ///
    /// # Examples
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// #[tokio::main]
    /// async fn main() -> dispy::Result<()> {
    ///     dispy::worker!(square);
    ///     let mut cluster = dispy::Cluster::function(square).start().await?;
    ///     let job = cluster.submit(7).await?;
    ///     assert_eq!(job.wait().await.unwrap(), 49);
    ///     cluster.close().await?;
    ///     Ok(())
    /// }
    /// ```
    pub fn function<F>(f: F) -> ClusterBuilder<A, R>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let _ = f;
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        ClusterBuilder::new(
            exe,
            Some(crate::worker::name_of::<F>().to_string()),
            function_input::<A>,
            function_result::<R>,
        )
    }
}

impl<A, R> Cluster<A, R> {
    /// The handle of a started cluster ([`ClusterBuilder::start`]).
    pub(crate) fn from_parts(
        cmds: mpsc::Sender<Cmd>,
        updates: mpsc::UnboundedReceiver<Update>,
        close_timeout: Option<Duration>,
        encode: Encoder<A>,
        decode: Decoder<R>,
    ) -> Self {
        Cluster {
            cmds,
            updates,
            next_id: 0,
            outstanding: 0,
            close_timeout,
            encode,
            decode,
            web_url: None,
            web_feed: None,
            cancelled: watch::channel(false).1,
            _t: PhantomData,
        }
    }

    /// With the scheduler's word that every job was cancelled at once.
    pub(crate) fn with_cancelled(mut self, cancelled: watch::Receiver<bool>) -> Self {
        self.cancelled = cancelled;
        self
    }

    /// With its web monitor: its URL, and its feed for the jobs' arguments.
    pub(crate) fn with_web(mut self, url: Option<String>, feed: Option<crate::web::feed::FeedTx>) -> Self {
        self.web_url = url;
        self.web_feed = feed;
        self
    }

    /// The URL of the cluster's web monitor ([`ClusterBuilder::web`](crate::ClusterBuilder::web)),
    /// with the token its cancel buttons need: give it only to people who may cancel jobs.
    pub fn web_url(&self) -> Option<&str> {
        self.web_url.as_deref()
    }

    fn new_job(
        &mut self,
        arg: &A,
        with_handle: bool,
        node: Option<libp2p::PeerId>,
    ) -> Result<(NewJob, Option<watch::Receiver<JobView>>)> {
        let (args, input) = (self.encode)(arg)?;
        let id = JobId(self.next_id);
        self.next_id += 1;
        if let Some(web) = &self.web_feed {
            web.args(id, &args);
        }
        let (view, rx) = if with_handle {
            let (tx, rx) = watch::channel(JobView::created());
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Ok((NewJob::new(id, args, input, view, node), rx))
    }

    /// Queues a job; returns its handle at once. Await the handle for the result.
    ///
    /// Cancel safety: if the future is dropped before it completes, the job may or may not
    /// have been queued.
    ///
    /// # Errors
    /// [`Error::Closed`] if the cluster's scheduler has stopped; [`Error::Encode`] if the
    /// argument cannot be encoded.
    pub async fn submit(&mut self, arg: A) -> Result<Job<R>> {
        self.submit_job(arg, None).await
    }

    /// Queues a job that only the node `peer` (a [`NodeInfo`]'s `node.peer_id`) may run.
    ///
    /// Cancel safety: as [`Cluster::submit`].
    ///
    /// # Errors
    /// As [`Cluster::submit`].
    pub async fn submit_to(&mut self, peer: libp2p::PeerId, arg: A) -> Result<Job<R>> {
        self.submit_job(arg, Some(peer)).await
    }

    /// Queues a job with input files of its own (dispy's `dispy_job_depends`): they go only
    /// to the node that runs the job (content-addressed: bytes a node holds are not sent
    /// again) and sit in its directory under their base names. Program clusters only.
    ///
    /// Cancel safety: as [`Cluster::submit`].
    ///
    /// # Errors
    /// As [`Cluster::submit`], and [`Error::File`] / [`Error::Config`] for a file that is
    /// missing, unreadable or not a regular file (the job is not queued).
    pub async fn submit_with(&mut self, arg: A, files: Vec<PathBuf>) -> Result<Job<R>> {
        let mut inputs = describe_inputs(vec![files]).await?;
        let (job, rx) = self.new_job(&arg, true, None)?;
        let job = job.with_files(inputs.pop().unwrap_or_default());
        let id = job.id;
        self.cmds.send(Cmd::Submit { jobs: vec![job] }).await.map_err(|_| Error::Closed)?;
        let rx = rx.ok_or(Error::Closed)?;
        Ok(Job::new(id, rx, self.decode))
    }

    /// [`Cluster::submit_all`] for jobs with input files of their own (see
    /// [`Cluster::submit_with`]); what `dispy-peer submit --each-file` runs.
    ///
    /// Cancel safety: as [`Cluster::submit_all`].
    ///
    /// # Errors
    /// As [`Cluster::submit_with`]; no job is queued if a file is bad.
    pub async fn submit_all_with(&mut self, jobs: Vec<(A, Vec<PathBuf>)>) -> Result<Vec<JobId>> {
        let (args, files): (Vec<A>, Vec<Vec<PathBuf>>) = jobs.into_iter().unzip();
        let inputs = describe_inputs(files).await?;
        let mut batch = Vec::with_capacity(args.len());
        for (a, files) in args.iter().zip(inputs) {
            batch.push(self.new_job(a, false, None)?.0.with_files(files));
        }
        let ids: Vec<JobId> = batch.iter().map(|j| j.id).collect();
        self.outstanding += ids.len();
        self.cmds.send(Cmd::Submit { jobs: batch }).await.map_err(|_| Error::Closed)?;
        Ok(ids)
    }

    async fn submit_job(&mut self, arg: A, node: Option<libp2p::PeerId>) -> Result<Job<R>> {
        let (job, rx) = self.new_job(&arg, true, node)?;
        let id = job.id;
        self.cmds.send(Cmd::Submit { jobs: vec![job] }).await.map_err(|_| Error::Closed)?;
        let rx = rx.ok_or(Error::Closed)?;
        Ok(Job::new(id, rx, self.decode))
    }

    /// Queues many jobs at once without handles: their reports come from
    /// [`Cluster::next_result`] (or [`Cluster::results`]) in completion order (what
    /// `dispy-peer submit` prints).
    ///
    /// Cancel safety: if the future is dropped before it completes, none or all of the jobs
    /// were queued.
    ///
    /// # Errors
    /// [`Error::Closed`] if the cluster's scheduler has stopped.
    pub async fn submit_all(&mut self, args: Vec<A>) -> Result<Vec<JobId>> {
        let mut batch = Vec::with_capacity(args.len());
        for a in &args {
            batch.push(self.new_job(a, false, None)?.0);
        }
        let ids: Vec<JobId> = batch.iter().map(|j| j.id).collect();
        self.outstanding += ids.len();
        self.cmds.send(Cmd::Submit { jobs: batch }).await.map_err(|_| Error::Closed)?;
        Ok(ids)
    }

    /// The nodes found so far, with their state.
    ///
    /// Cancel safety: safe; nothing changes.
    ///
    /// # Errors
    /// [`Error::Closed`] if the scheduler stopped.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Nodes { reply }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Waits until every job submitted so far has ended.
    ///
    /// Cancel safety: safe; the jobs go on.
    ///
    /// # Errors
    /// [`Error::NoNodes`] if the cluster failed; [`Error::Closed`] if the scheduler stopped.
    pub async fn wait(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Wait { reply }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?.map_err(Error::from)
    }

    /// The next job to finish, in completion order; `None` once every submitted job has
    /// been reported.
    ///
    /// Cancel safety: safe; a result not yet taken stays queued.
    ///
    /// # Errors
    /// [`Error::NoNodes`] when no usable node could be found in time (the value says what
    /// was searched and found), [`Error::LocalNode`] when the fallback local node could not
    /// start; [`Error::Closed`] if the scheduler stopped.
    pub async fn next_result(&mut self) -> Result<Option<JobReport>> {
        if self.outstanding == 0 {
            return Ok(None);
        }
        match self.updates.recv().await {
            Some(Update::Job(report)) => {
                self.outstanding -= 1;
                Ok(Some(*report))
            }
            Some(Update::Fatal(failure)) => Err(failure.into()),
            None => Err(Error::Closed),
        }
    }

    /// The reports of jobs submitted with [`Cluster::submit_all`], as a [`Stream`] in
    /// completion order; it ends once every such job has been reported, or after the
    /// first error (see [`Cluster::next_result`]).
    ///
    /// Cancel safety: safe; a result not yet taken stays queued.
    ///
    /// # Examples
    /// ```no_run
    /// use futures::StreamExt;
    /// # async fn demo(mut cluster: dispy::Cluster) -> dispy::Result<()> {
    /// cluster.submit_all(vec![vec!["a".into()], vec!["b".into()]]).await?;
    /// let reports: Vec<_> = cluster.results().collect().await;
    /// assert_eq!(reports.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn results(&mut self) -> impl Stream<Item = Result<JobReport>> + '_ {
        futures::stream::unfold(Some(self), |cluster| async move {
            let cluster = cluster?;
            match cluster.next_result().await {
                Ok(Some(report)) => Some((Ok(report), Some(cluster))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    /// Cancels jobs: queued ones at once, running ones by killing their process groups.
    /// Each still gets a report, with outcome `Cancelled`.
    ///
    /// Cancel safety: if the future is dropped before it completes, the jobs may or may not
    /// be cancelled.
    ///
    /// # Errors
    /// [`Error::Closed`] if the scheduler stopped.
    pub async fn cancel_ids(&self, ids: Vec<JobId>) -> Result<()> {
        self.cmds.send(Cmd::Cancel { ids }).await.map_err(|_| Error::Closed)
    }

    /// Tells when every job was cancelled at once, by [`Cluster::cancel_all`] or by the web
    /// monitor's "Cancel all": a program that feeds jobs as it goes stops feeding then (as
    /// `dispy-peer submit --args-file` stops reading its file).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo(mut cluster: dispy::Cluster, mut lines: tokio::sync::mpsc::Receiver<Vec<String>>) -> dispy::Result<()> {
    /// let mut cancelled = cluster.cancelled_all();
    /// loop {
    ///     tokio::select! {
    ///         Some(args) = lines.recv(), if !cancelled.happened() => { cluster.submit_all(vec![args]).await?; }
    ///         () = cancelled.wait() => break,
    ///         else => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn cancelled_all(&self) -> CancelledAll {
        CancelledAll(self.cancelled.clone())
    }

    /// Cancels every job not ended yet (dispy's `cancel` of each pending job).
    ///
    /// Cancel safety: as [`Cluster::cancel_ids`].
    ///
    /// # Errors
    /// [`Error::Closed`] if the scheduler stopped.
    pub async fn cancel_all(&self) -> Result<()> {
        self.cmds.send(Cmd::CancelAll).await.map_err(|_| Error::Closed)
    }

    /// Cancels one job (see [`Cluster::cancel_ids`]): a running one is killed with its whole
    /// process group (for functions: its worker, which a fresh one replaces).
    ///
    /// Cancel safety: as [`Cluster::cancel_ids`].
    ///
    /// # Errors
    /// [`Error::Closed`] if the scheduler stopped.
    pub async fn cancel(&self, job: &Job<R>) -> Result<()> {
        self.cancel_ids(vec![job.id()]).await
    }

    /// The figures so far.
    ///
    /// Cancel safety: safe; nothing changes.
    ///
    /// # Errors
    /// [`Error::Closed`] if the scheduler stopped.
    pub async fn stats(&self) -> Result<Stats> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Stats { reply }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Waits for every job not ended yet to end (as dispy's `close()`), then releases the
    /// nodes (they delete the cluster's files) and returns the final figures. Past the
    /// builder's [`ClusterBuilder::close_timeout`] the jobs still pending are cancelled:
    /// their reports say `Cancelled`, then the nodes are released. To stop at once,
    /// [`Cluster::cancel_all`] first: `close` then waits only for the nodes to confirm.
    ///
    /// The jobs' results reach their [`Job`] handles; results of [`Cluster::submit_all`]
    /// jobs not taken with [`Cluster::next_result`] before closing are dropped. If the
    /// cluster failed (no node found), `close` does not wait: those jobs can never end.
    ///
    /// Cancel safety: once called, the cluster closes whether or not the future is polled
    /// to the end; dropping the future stops the waiting and closes at once, as dropping
    /// the cluster does (running jobs are killed).
    ///
    /// # Errors
    /// [`Error::Closed`] if the scheduler had already stopped.
    pub async fn close(self) -> Result<Stats> {
        let (reply, rx) = oneshot::channel();
        let timeout = self.close_timeout;
        self.cmds.send(Cmd::Close { reply, timeout }).await.map_err(|_| Error::Closed)?;
        let stats = rx.await.map_err(|_| Error::Closed)?;
        if let Some(web) = &self.web_feed {
            web.closed().await;
        }
        Ok(stats)
    }
}

impl<A, R> std::fmt::Debug for Cluster<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("submitted", &self.next_id)
            .field("outstanding", &self.outstanding)
            .field("closed", &self.cmds.is_closed())
            .finish_non_exhaustive()
    }
}

// A cluster and its jobs move between tasks and threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Cluster<Vec<String>, ()>>();
    send_sync::<Cluster<u64, u64>>();
    send_sync::<Job<u64>>();
};

/// Whether every job of a cluster was cancelled at once ([`Cluster::cancelled_all`]).
#[derive(Clone, Debug)]
pub struct CancelledAll(watch::Receiver<bool>);

impl CancelledAll {
    /// Whether it has happened.
    pub fn happened(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until it happens (never, if the cluster ends first).
    ///
    /// Cancel safety: safe.
    pub async fn wait(&mut self) {
        if self.0.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
