//! [`Cluster`]: dispy's `JobCluster`. Build it for a program ([`Cluster::program`]) or a
//! Rust function ([`Cluster::function`]), submit jobs, await their results, close it for
//! the stats.

use crate::error::{Error, Result, Searched};
use crate::events::{ClusterCallback, ClusterEvent, JobCallback, JobEvent, NodeFacts, NodeFilter};
use crate::job::{Decoder, Job, JobError, JobView};
use crate::local::LocalNode;
use crate::report::NodeInfo;
use crate::report::{JobReport, Stats};
use crate::scheduler::NewJob;
use crate::scheduler::{Cmd, Hooks, LocalMode, Scheduler, Settings, Update};
use crate::secret::Secret;
use crate::select::NodePattern;
use crate::stage;
use dispy_node::net::{self, NetConfig};
use dispy_protocol::{ClusterId, JobId};
use futures::Stream;
use libp2p::Multiaddr;
use serde::{Serialize, de::DeserializeOwned};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Turns a job's argument into what travels: program arguments, or CBOR input.
type Encoder<A> = fn(&A) -> Result<(Vec<String>, Vec<u8>)>;

/// Options of a cluster; see [`Cluster::program`] and [`Cluster::function`].
#[must_use = "a cluster builder does nothing until `.start()`"]
pub struct ClusterBuilder<A, R> {
    program: PathBuf,
    function: Option<String>,
    encode: Encoder<A>,
    decode: Decoder<R>,
    on_job: Option<JobCallback>,
    on_cluster: Option<ClusterCallback>,
    node_filter: Option<NodeFilter>,
    files: Vec<PathBuf>,
    setup: Option<PathBuf>,
    cleanup: Option<PathBuf>,
    peers: Vec<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
    patterns: Vec<NodePattern>,
    secret: Secret,
    mdns: bool,
    discover_timeout: Duration,
    local: LocalMode,
    cpus_per_node: Option<u32>,
    timeout: Option<Duration>,
    reentrant: bool,
    max_retries: u32,
    heartbeat: Duration,
    journal: Option<PathBuf>,
    returns: Vec<String>,
    results_dir: PathBuf,
    close_timeout: Option<Duration>,
}

impl<A, R> ClusterBuilder<A, R> {
    /// Adds a dependency file, present in every job's directory under its base name. A
    /// directory brings the tree of its regular files under its base name (`data/a.txt`,
    /// `data/sub/b.bin`; empty directories are not sent, a symbolic link inside is an error).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    /// A program run once on each node before the cluster's first job there (dispy's
    /// `setup`), in the cluster's directory on that node, whose path it and every job get in
    /// `DISPY_CLUSTER_DIR` (beside the cluster's files, which it holds too; the node's name is
    /// in `DISPY_NODE_NAME`). Jobs start on a node only after its setup exited 0; a setup
    /// that fails (or runs past [`Self::timeout`]) makes that node unusable for the cluster,
    /// with the exit status and the end of its stderr as the reason, and its jobs go to the
    /// other nodes. Program clusters only.
    pub fn setup(mut self, program: impl Into<PathBuf>) -> Self {
        self.setup = Some(program.into());
        self
    }

    /// A program run on each node where the cluster was set up when the cluster releases
    /// it (closing, or the node deciding its client is gone), in `DISPY_CLUSTER_DIR`, for at
    /// most 30 s, before the cluster's directories are deleted (dispy's `cleanup`). Its
    /// failure is logged by the node. Program clusters only.
    pub fn cleanup(mut self, program: impl Into<PathBuf>) -> Self {
        self.cleanup = Some(program.into());
        self
    }

    /// Names a node by address (`/ip4/10.0.0.5/tcp/9700`, optionally with `/p2p/<id>`).
    pub fn peer(mut self, addr: Multiaddr) -> Self {
        self.peers.push(addr);
        self
    }

    /// A Kademlia bootstrap peer: nodes beyond the LAN are found through it.
    pub fn bootstrap(mut self, addr: Multiaddr) -> Self {
        self.bootstrap.push(addr);
        self
    }

    /// Uses only nodes matching this pattern (IP glob, peer id or name); repeatable.
    pub fn nodes(mut self, pattern: NodePattern) -> Self {
        self.patterns.push(pattern);
        self
    }

    /// The cluster's secret (default: none).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = secret;
        self
    }

    /// Look for nodes on the LAN by multicast DNS (default on).
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// How long to look for a first node before falling back or failing (default 3 s).
    pub fn discover_timeout(mut self, t: Duration) -> Self {
        self.discover_timeout = t;
        self
    }

    /// When to run an in-process node (default [`LocalMode::Fallback`]).
    pub fn local(mut self, mode: LocalMode) -> Self {
        self.local = mode;
        self
    }

    /// Uses at most this many CPUs of each node.
    pub fn cpus_per_node(mut self, cpus: u32) -> Self {
        self.cpus_per_node = Some(cpus);
        self
    }

    /// How often connections are pinged (default 4 s): a node silent for about twice this
    /// is lost, and its jobs re-queued or abandoned.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Brings back the files a job leaves that match `glob` (relative to its directory;
    /// `*` and `?` within a name, `**` for any depth), whatever the job's outcome: they are
    /// saved as `<results dir>/<job number>/<path>` and listed in its report
    /// ([`JobReport::returned`]). Repeatable.
    pub fn returns(mut self, glob: impl Into<String>) -> Self {
        self.returns.push(glob.into());
        self
    }

    /// Where returned files are saved (default `./dispy-results`).
    pub fn results_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.results_dir = dir.into();
        self
    }

    /// Records the cluster and its jobs in `path` as they go, so that after a crash
    /// [`crate::recover`] can collect the results the nodes still hold.
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(path.into());
        self
    }

    /// How long [`Cluster::close`] waits for the jobs not ended yet before it cancels them
    /// (default: no limit, as dispy's `close()`: it waits as long as they run).
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = Some(t);
        self
    }

    /// Kills a job (its whole process group) that runs longer than this.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Re-runs a lost node's jobs elsewhere instead of abandoning them.
    pub fn reentrant(mut self, on: bool) -> Self {
        self.reentrant = on;
        self
    }

    /// With [`ClusterBuilder::reentrant`]: a job fails once this many nodes died while it
    /// ran on them (default 3), so a job that kills its node cannot take the cluster down.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n.max(1);
        self
    }

    /// Calls `f` at every job status change (created, running, and how it ended).
    pub fn on_job_status(mut self, f: impl Fn(&JobEvent) + Send + Sync + 'static) -> Self {
        self.on_job = Some(Arc::new(f));
        self
    }

    /// Uses only nodes for which `f` returns true (name, IP, OS/arch, CPUs, memory).
    ///
    /// # Examples
    /// ```no_run
    /// let b = dispy::Cluster::program("./job.sh")
    ///     .node_filter(|n| n.cpus >= 4 && n.memory_bytes.unwrap_or(0) >= 8 << 30);
    /// ```
    pub fn node_filter(mut self, f: impl Fn(&NodeFacts) -> bool + Send + Sync + 'static) -> Self {
        self.node_filter = Some(Arc::new(f));
        self
    }

    /// Calls `f` when a node is found, ready, unusable (with the reason) or lost.
    pub fn on_cluster_status(mut self, f: impl Fn(&ClusterEvent) + Send + Sync + 'static) -> Self {
        self.on_cluster = Some(Arc::new(f));
        self
    }

    /// Hashes the files, joins the mesh and starts looking for nodes. The cluster's peer and
    /// scheduler run on a thread of their own, so they keep answering nodes' heartbeats even
    /// while the application blocks its runtime.
    ///
    /// Cancel safety: dropping the future before it completes stops what was started (the
    /// cluster's thread ends with its command channel; a local node started with
    /// [`LocalMode::Always`] stops with it).
    ///
    /// # Errors
    /// [`Error::File`] for a missing or unreadable program or file, or a results directory
    /// that cannot be made (no node is contacted),
    /// [`Error::Config`] / [`Error::Node`] for a bad secret or network setup,
    /// [`Error::Start`] when its thread cannot start.
    pub async fn start(self) -> Result<Cluster<A, R>> {
        if self.function.is_some() && (self.setup.is_some() || self.cleanup.is_some()) {
            return Err(Error::Config("setup and cleanup programs are for program clusters".into()));
        }
        let files = self.files.clone();
        let executables: Vec<PathBuf> =
            std::iter::once(&self.program).chain(&self.setup).chain(&self.cleanup).cloned().collect();
        let (mut names, files) = tokio::task::spawn_blocking(move || {
            let executables: Vec<&std::path::Path> = executables.iter().map(PathBuf::as_path).collect();
            stage::describe(&executables, &files)
        })
        .await
        .map_err(|e| Error::Start(format!("hashing files: {e}")))??;
        let cleanup_name = self.cleanup.is_some().then(|| names.pop()).flatten();
        let setup_name = self.setup.is_some().then(|| names.pop()).flatten();
        let program_name = names.pop().unwrap_or_default();
        if !self.returns.is_empty() {
            // A folder returned files cannot be saved in is known now, not after the jobs ran.
            let dir = self.results_dir.clone();
            std::fs::create_dir_all(&dir).map_err(|source| Error::File { path: dir, source })?;
        }
        let psk = self.secret.to_psk()?;
        let local = match self.local {
            LocalMode::Always => Some(LocalNode::start(psk).await?),
            _ => None,
        };
        let searched = Searched {
            mdns: self.mdns,
            peers: self.peers.clone(),
            bootstrap: self.bootstrap.clone(),
            local: local.is_some(),
            patterns: self.patterns.iter().map(|p| p.as_str().to_string()).collect(),
        };
        let cfg = NetConfig {
            psk,
            mdns: self.mdns,
            bootstrap: self.bootstrap.clone(),
            peers: self.peers.clone(),
            kad_server: false,
            heartbeat: self.heartbeat,
            ..NetConfig::default()
        };
        let cluster = ClusterId(rand_id());
        let journal = match &self.journal {
            Some(path) => Some(crate::journal::Journal::create(path, cluster, &program_name)?),
            None => None,
        };
        let settings = Settings {
            cluster,
            journal: journal.is_some(),
            job_events: self.on_job.is_some(),
            cluster_events: self.on_cluster.is_some(),
            program: program_name,
            setup: setup_name,
            cleanup: cleanup_name,
            files,
            patterns: self.patterns,
            cpus_per_node: self.cpus_per_node,
            timeout_secs: self.timeout.map(|t| t.as_secs_f64()),
            reentrant: self.reentrant,
            max_retries: self.max_retries,
            discover_timeout: self.discover_timeout,
            local: self.local,
            searched,
            function: self.function,
            node_filter: self.node_filter,
            returns: self.returns,
            results_dir: self.results_dir,
        };
        let hooks = Hooks { on_job: self.on_job, on_cluster: self.on_cluster, journal, psk };
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        // Unbounded: the scheduler must never wait on an application that is not reading
        // (heartbeats and other clusters' work would stall). It holds at most one report per
        // job the application submitted and has not taken yet.
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        // The cluster's peer and scheduler run on a thread and single-threaded runtime of
        // their own: an application that blocks its runtime's workers never delays their
        // heartbeats, and their tasks never hop between threads. Everything is built there,
        // so the swarm's sockets belong to that runtime and no runtime is ever dropped
        // inside the application's.
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        crate::own_thread::spawn("dispy-cluster", "the cluster", ready_tx, move |ready_tx| async move {
            let (handle, events) = match net::spawn(cfg) {
                Ok(parts) => parts,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let scheduler = Scheduler::new(settings, hooks, handle, up_tx, local);
            let _ = ready_tx.send(Ok(()));
            scheduler.run(events, cmd_rx).await;
        })?;
        ready_rx.await.map_err(|_| Error::Start("the cluster's thread stopped while starting".into()))??;
        Ok(Cluster {
            cmds: cmd_tx,
            updates: up_rx,
            next_id: 0,
            outstanding: 0,
            close_timeout: self.close_timeout,
            encode: self.encode,
            decode: self.decode,
            _t: PhantomData,
        })
    }
}

/// Hashes each job's input files on the blocking pool (they may be large).
async fn describe_inputs(files: Vec<Vec<PathBuf>>) -> Result<Vec<Vec<stage::LocalFile>>> {
    tokio::task::spawn_blocking(move || stage::describe_inputs(&files))
        .await
        .map_err(|e| Error::Start(format!("hashing input files: {e}")))?
}

fn rand_id() -> u64 {
    rand::random()
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

impl<A, R> ClusterBuilder<A, R> {
    fn new(program: PathBuf, function: Option<String>, encode: Encoder<A>, decode: Decoder<R>) -> Self {
        ClusterBuilder {
            program,
            function,
            encode,
            decode,
            on_job: None,
            on_cluster: None,
            node_filter: None,
            files: Vec::new(),
            setup: None,
            cleanup: None,
            peers: Vec::new(),
            bootstrap: Vec::new(),
            patterns: Vec::new(),
            secret: Secret::None,
            mdns: true,
            discover_timeout: Duration::from_secs(3),
            local: LocalMode::Fallback,
            cpus_per_node: None,
            timeout: None,
            reentrant: false,
            max_retries: 3,
            heartbeat: dispy_node::net::DEFAULT_HEARTBEAT,
            journal: None,
            returns: Vec::new(),
            results_dir: PathBuf::from("dispy-results"),
            close_timeout: None,
        }
    }
}

impl<A, R> Cluster<A, R> {
    fn new_job(
        &mut self,
        arg: &A,
        with_handle: bool,
        node: Option<libp2p::PeerId>,
    ) -> Result<(NewJob, Option<watch::Receiver<JobView>>)> {
        let (args, input) = (self.encode)(arg)?;
        let id = JobId(self.next_id);
        self.next_id += 1;
        let (view, rx) = if with_handle {
            let (tx, rx) = watch::channel(JobView::created());
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Ok((NewJob { id, args, input, view, node, files: Vec::new() }, rx))
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
        let (mut job, rx) = self.new_job(&arg, true, None)?;
        job.files = inputs.pop().unwrap_or_default();
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
            let mut job = self.new_job(a, false, None)?.0;
            job.files = files;
            batch.push(job);
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
        rx.await.map_err(|_| Error::Closed)
    }
}

impl<A, R> std::fmt::Debug for ClusterBuilder<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("program", &self.program)
            .field("function", &self.function)
            .field("files", &self.files)
            .field("setup", &self.setup)
            .field("cleanup", &self.cleanup)
            .field("peers", &self.peers)
            .field("bootstrap", &self.bootstrap)
            .field("patterns", &self.patterns)
            .field("mdns", &self.mdns)
            .field("local", &self.local)
            .field("cpus_per_node", &self.cpus_per_node)
            .field("timeout", &self.timeout)
            .field("reentrant", &self.reentrant)
            .field("close_timeout", &self.close_timeout)
            .finish_non_exhaustive()
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
