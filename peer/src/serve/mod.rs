//! The node: takes clusters from clients, stages their files, runs their jobs in CPU slots
//! and sends the results back.
//!
//! [`Server::run`] is one task reading [`NetEvent`]s and its own completions. It never
//! waits on the network or the disk itself: job runs, chunk writes and result deliveries
//! are spawned and report back over a channel.
//!
//! Layout: this file holds the state and routes requests; `requests` answers a client's
//! requests about its cluster, `uploads` takes its files' chunks, `slots` starts jobs in
//! CPU slots (in directories from `jobdirs`), `delivery` gets results to clients,
//! `lifecycle` ends clusters and the node, [`store`] the staged files, `executor` and
//! `workers` the processes, [`reaper`] the companion that outlives a crash, `kept` results
//! kept for recovery.

mod delivery;
pub(crate) mod executor;
mod jobdirs;
mod kept;
mod lifecycle;
pub mod reaper;
mod requests;
mod slots;
pub mod store;
mod sys;
mod uploads;
mod workers;

use crate::error::{Error, Result};
use crate::net::{NetEvent, NetHandle};
use dispy_protocol::{
    Accepted, ClusterId, FileEntry, FileHash, Hello, JobId, JobOutcome, JobResult, JobSpec, MAX_RESULT_BATCH_BYTES,
    Refusal, RefusalKind, Request, Reserved, Response, Results, Role, WIRE_VERSION,
};
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;
use store::{Store, Upload, check_name};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, debug_span, info, warn};

/// How to stop a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Take nothing new, let running jobs finish (the first SIGTERM).
    Drain,
    /// Kill running jobs and stop (the second SIGTERM).
    Now,
}

/// How a node serves.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Name shown to clients.
    pub name: String,
    /// CPU slots: at most this many jobs run at once.
    pub cpus: u32,
    /// Where the store and the job directories live.
    pub dest: PathBuf,
    /// Largest file accepted, if limited.
    pub max_file_size: Option<u64>,
    /// Bytes of stdout (and of stderr) kept per job; the rest is counted and dropped.
    pub max_output: usize,
    /// An executable that runs [`reaper::run_if_reaper`] first in `main` (the node's own):
    /// started as the reaper that kills the jobs if the node dies without cleaning up.
    pub reaper: Option<PathBuf>,
    /// The token set in every job's environment for the reaper to find them by, for a node
    /// that cannot carry it in its own environment (the embedded one: its process has other
    /// threads); `None`: jobs inherit the node's [`reaper::TOKEN_ENV`].
    pub job_token: Option<String>,
    /// The dest path is this node's alone (the embedded node's): a reaper deletes it.
    pub private_dest: bool,
    /// How long a drain waits for running jobs before killing them.
    pub drain_timeout: Duration,
    /// Stop (draining) after serving this many clusters.
    pub serve_clusters: Option<u64>,
    /// A client disconnected this long is gone: its jobs are killed, its files deleted.
    pub zombie_interval: Duration,
    /// Results a gone client never collected are kept this long for `recover`.
    pub result_ttl: Duration,
}

/// What spawned work reports back to the server task.
enum Internal {
    /// `held_slot` is false for a job cancelled before it started; `worker` is a function
    /// worker that can take the next job.
    JobDone {
        cluster: ClusterId,
        result: JobResult,
        held_slot: bool,
        worker: Option<Box<workers::Worker>>,
        /// A program job's directory, for the cluster's next job if still clean then.
        dir: Option<PathBuf>,
    },
    ChunkDone {
        cluster: ClusterId,
        hash: FileHash,
        upload: Box<Upload>,
        outcome: std::result::Result<bool, String>,
        channel: ResponseChannel<Response>,
    },
    /// `batch` empty: a message that carried only job starts.
    /// `seq` numbers the batch in the cluster's `delivering`.
    ResultsSent {
        cluster: ClusterId,
        batch: Vec<JobResult>,
        started: Vec<JobId>,
        delivered: bool,
        seq: u64,
    },
    Flush {
        cluster: ClusterId,
    },
}

struct Cluster {
    client: PeerId,
    program: String,
    /// For a function cluster, the function its workers serve.
    function: Option<String>,
    /// Function workers waiting for a job.
    idle_workers: Vec<workers::Worker>,
    /// Numbers worker directories.
    workers_started: u64,
    /// Program jobs' directories.
    job_dirs: jobdirs::JobDirs,
    /// Jobs cancelled before their Submit arrived.
    cancelled_early: HashSet<JobId>,
    /// Whether all its files were found stored (by a Submit).
    files_ready: bool,
    /// Since when its client has been disconnected.
    gone_since: Option<std::time::Instant>,
    /// Since when the oldest result not on disk has waited in `results`.
    unsaved_since: Option<std::time::Instant>,
    /// Results in `results` or `delivering` that are also on disk.
    saved: HashSet<JobId>,
    /// Result batches on their way to the client, by number, with when they left.
    delivering: HashMap<u64, (std::time::Instant, Vec<JobResult>)>,
    /// Files this cluster's client sent (they stay cached after a normal release).
    staged: Vec<FileHash>,
    /// Files refused while arriving, with why: their later chunks are refused too.
    refused_files: HashMap<FileHash, String>,
    files: Vec<FileEntry>,
    cpus: u32,
    dir: PathBuf,
    queue: VecDeque<JobSpec>,
    running: HashMap<JobId, oneshot::Sender<()>>,
    uploads: HashMap<FileHash, uploads::Incoming>,
    results: VecDeque<JobResult>,
    /// Jobs started since the last message to the client.
    started: Vec<JobId>,
    /// Result messages in flight.
    sending: usize,
    /// Start-only messages in flight (at most one): they never hold results back.
    sending_starts: usize,
    /// When the oldest unsent start happened, and whether a timer will flush it.
    starts_since: Option<std::time::Instant>,
    starts_timer: bool,
    released: bool,
}

/// The node's state; see the module docs.
pub struct Server {
    cfg: ServeConfig,
    net: NetHandle,
    store: Store,
    jobs_root: PathBuf,
    clusters: HashMap<ClusterId, Cluster>,
    free: u32,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    stopping: bool,
    /// Finished jobs' directories, removed in batches on the blocking pool.
    trash: jobdirs::Trash,
    /// Kept for the node's life: its pipe closing is what wakes the reaper.
    _reaper: Option<reaper::Reaper>,
    /// `cfg.job_token`, shared by the jobs' specs.
    job_token: Option<std::sync::Arc<str>>,
    /// Clusters released so far.
    served: u64,
    kept: kept::KeptResults,
    last_sweep: std::time::Instant,
    /// Numbers result batches on disk.
    batch_seq: u64,
    draining: bool,
    /// Held for the node's life: a second node on the same dest path fails to start.
    _lock: std::fs::File,
}

impl Server {
    /// Prepares the dest path (store, job directories) and takes its lock.
    ///
    /// # Errors
    /// [`Error::DestInUse`] if another node uses `dest`; [`Error::Io`] if it cannot be made.
    pub fn new(cfg: ServeConfig, net: NetHandle) -> Result<Server> {
        std::fs::create_dir_all(&cfg.dest)
            .map_err(|e| Error::io(format!("cannot create {}", cfg.dest.display()), e))?;
        let lock_path = cfg.dest.join("node.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("cannot open {}", lock_path.display()), e))?;
        if lock.try_lock().is_err() {
            return Err(Error::DestInUse(cfg.dest.clone()));
        }
        let store = Store::open(&cfg.dest).map_err(|e| Error::io("cannot open the file store", e))?;
        let jobs_root = cfg.dest.join("jobs");
        // Job directories of an earlier run are stale: their jobs died with that node.
        let _ = std::fs::remove_dir_all(&jobs_root);
        std::fs::create_dir_all(&jobs_root)
            .map_err(|e| Error::io(format!("cannot create {}", jobs_root.display()), e))?;
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let reaper = match &cfg.reaper {
            Some(exe) => {
                match reaper::Reaper::start(
                    exe,
                    cfg.job_token.as_deref(),
                    cfg.private_dest.then_some(cfg.dest.as_path()),
                ) {
                    Ok(r) => Some(r),
                    // The embedded node runs without: its jobs still die with a clean exit.
                    Err(e) if cfg.private_dest => {
                        warn!(exe = %exe.display(), cause = %e, "cannot start the reaper; a crash would leave the local jobs running");
                        None
                    }
                    Err(e) => return Err(Error::io(format!("cannot start the reaper {}", exe.display()), e)),
                }
            }
            None => None,
        };
        let kept = kept::KeptResults::open(&cfg.dest).map_err(|e| Error::io("cannot open the results folder", e))?;
        Ok(Server {
            _reaper: reaper,
            job_token: cfg.job_token.as_deref().map(std::sync::Arc::from),
            kept,
            last_sweep: std::time::Instant::now(),
            batch_seq: 0,
            served: 0,
            draining: false,
            free: cfg.cpus,
            cfg,
            net,
            store,
            jobs_root,
            clusters: HashMap::new(),
            internal_tx,
            internal_rx,
            stopping: false,
            trash: jobdirs::Trash::default(),
            _lock: lock,
        })
    }

    /// Serves until `shutdown` resolves, then kills running jobs, removes job directories
    /// and returns. `on_listening` sees each listen address as it comes up.
    ///
    /// [`Stop::Drain`] first stops taking clusters and jobs, gives queued jobs back to their
    /// clients and lets running ones finish (at most `cfg.drain_timeout`); [`Stop::Now`] (or
    /// the drain's end) kills running process groups, waits for their tasks (bounded),
    /// deletes the job directories and stops the network.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<NetEvent>,
        mut stop: mpsc::UnboundedReceiver<Stop>,
        mut on_listening: impl FnMut(&Multiaddr),
    ) -> Result<()> {
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(NetEvent::Listening { addr }) => on_listening(&addr),
                    Some(ev) => self.on_net_event(ev),
                    None => break,
                },
                Some(msg) = self.internal_rx.recv() => self.on_internal(msg),
                s = stop.recv() => match s {
                    Some(Stop::Drain) if drain_deadline.is_none() => {
                        info!(timeout = ?self.cfg.drain_timeout, "draining: running jobs finish, no new ones are taken");
                        drain_deadline = Some(tokio::time::Instant::now() + self.cfg.drain_timeout);
                        self.drain();
                    }
                    _ => break,
                },
                _ = tick.tick() => {
                    self.reap_zombies();
                    self.save_waiting_results();
                    if self.served_enough() && drain_deadline.is_none() {
                        info!(clusters = self.served, "served the clusters asked for; draining");
                        drain_deadline = Some(tokio::time::Instant::now() + self.cfg.drain_timeout);
                        self.drain();
                    }
                    if let Some(deadline) = drain_deadline {
                        if self.drained() {
                            info!("drained");
                            break;
                        }
                        if tokio::time::Instant::now() >= deadline {
                            warn!("drain timeout: killing the jobs still running");
                            break;
                        }
                    }
                }
            }
        }
        self.stopping = true;
        let ids: Vec<ClusterId> = self.clusters.keys().copied().collect();
        for id in ids {
            self.release(id);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.free < self.cfg.cpus {
            match tokio::time::timeout_at(deadline, self.internal_rx.recv()).await {
                Ok(Some(msg)) => self.on_internal(msg),
                _ => break,
            }
        }
        let _ = std::fs::remove_dir_all(&self.jobs_root);
        self.net.shutdown().await;
        info!("node stopped");
        Ok(())
    }

    fn hello(&self) -> Hello {
        Hello {
            wire_version: WIRE_VERSION,
            software: env!("CARGO_PKG_VERSION").to_string(),
            role: Role::Node,
            name: self.cfg.name.clone(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpus: self.cfg.cpus,
            free_cpus: self.free,
            max_file_size: self.cfg.max_file_size,
            memory_bytes: memory_bytes(),
        }
    }

    fn respond(&self, channel: ResponseChannel<Response>, response: Response) {
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.respond(channel, response).await;
        });
    }

    fn on_net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Request { peer, request, channel } => {
                let response = self.on_request(peer, request, channel);
                if let Some((channel, response)) = response {
                    self.respond(channel, response);
                }
            }
            NetEvent::Disconnected { peer } => {
                // Not gone yet: a partition heals, a client reconnects. Its jobs go on and
                // their results wait for it, for the zombie interval.
                let now = std::time::Instant::now();
                for (id, c) in self.clusters.iter_mut().filter(|(_, c)| c.client == peer && !c.released) {
                    info!(cluster = %id, client = %peer, zombie_interval = ?self.cfg.zombie_interval, "client disconnected; keeping its jobs");
                    c.gone_since.get_or_insert(now);
                }
            }
            NetEvent::Connected { peer, remote } => {
                debug!(%peer, %remote, "peer connected");
                let back: Vec<ClusterId> = self
                    .clusters
                    .iter_mut()
                    .filter(|(_, c)| c.client == peer && c.gone_since.is_some())
                    .map(|(id, c)| {
                        c.gone_since = None;
                        *id
                    })
                    .collect();
                for id in back {
                    info!(cluster = %id, client = %peer, "client is back; delivering its results");
                    self.flush(id);
                }
            }
            NetEvent::DialFailed { addr, reason, .. } => debug!(%addr, %reason, "dial failed"),
            NetEvent::Listening { .. } => {}
        }
    }

    /// Handles a request; returns the answer unless spawned work will send it.
    fn on_request(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) -> Option<(ResponseChannel<Response>, Response)> {
        let refuse = |kind, msg: String| Response::Refused(Refusal::new(kind, msg));
        let response = match request {
            Request::Hello(h) => {
                if h.wire_version != WIRE_VERSION {
                    warn!(%peer, theirs = h.wire_version, ours = WIRE_VERSION, "peer speaks another protocol version");
                }
                Response::Hello(self.hello())
            }
            Request::Reserve(_) | Request::Submit(_) | Request::Chunk(_) if self.stopping || self.draining => {
                refuse(RefusalKind::ShuttingDown, format!("node {} is shutting down", self.cfg.name))
            }
            _ if self.stopping => refuse(RefusalKind::ShuttingDown, format!("node {} is shutting down", self.cfg.name)),
            Request::Reserve(r) => self.reserve(peer, r),
            Request::Chunk(c) => return self.chunk(peer, c, channel),
            Request::Submit(s) => self.submit(peer, s),
            Request::Cancel(c) => self.cancel(peer, c),
            Request::Release(r) => match self.owned(peer, r.cluster) {
                Err(refusal) => *refusal,
                Ok(_) => {
                    self.release(r.cluster);
                    Response::Ok
                }
            },
            Request::Results(_) => refuse(RefusalKind::WrongRole, "this peer is a node; it takes no results".into()),
            Request::Recover(r) => {
                self.recover(peer, r, channel);
                return None;
            }
            Request::Forget(f) => self.forget(f),
        };
        Some((channel, response))
    }

    /// Reports a job that ends without having run.
    fn unstarted(&self, cluster: ClusterId, id: JobId, outcome: JobOutcome) {
        let result = slots::unrun(id, outcome);
        let _ = self.internal_tx.send(Internal::JobDone { cluster, result, held_slot: false, worker: None, dir: None });
    }

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::JobDone { cluster, result, held_slot, worker, dir } => {
                if held_slot {
                    self.free += 1;
                }
                if let Some(c) = self.clusters.get_mut(&cluster) {
                    match dir {
                        Some(dir) if !c.released => c.job_dirs.give_back(dir),
                        Some(dir) => self.trash.push(dir),
                        None => {}
                    }
                    c.running.remove(&result.id);
                    if !c.released {
                        c.results.push_back(result);
                        c.unsaved_since.get_or_insert_with(std::time::Instant::now);
                        // A worker of a released cluster is dropped here, which kills it.
                        c.idle_workers.extend(worker.map(|w| *w));
                    }
                }
                self.flush(cluster);
                self.reap(cluster);
                self.schedule();
            }
            Internal::ChunkDone { cluster, hash, upload, outcome, channel } => {
                self.chunk_done(cluster, hash, upload, outcome, channel)
            }
            Internal::ResultsSent { cluster, batch, started, delivered, seq } => {
                if let Some(c) = self.clusters.get_mut(&cluster) {
                    c.delivering.remove(&seq);
                    // Acknowledged: what was kept on disk for it goes.
                    if delivered {
                        let on_disk: Vec<JobId> = batch.iter().map(|r| r.id).filter(|id| c.saved.remove(id)).collect();
                        if !on_disk.is_empty() {
                            let kept = self.kept.clone();
                            tokio::task::spawn_blocking(move || kept.forget(cluster, &on_disk));
                        }
                    }
                }
                if let Some(c) = self.clusters.get_mut(&cluster) {
                    if batch.is_empty() {
                        c.sending_starts -= 1;
                    } else {
                        c.sending -= 1;
                    }
                    if !delivered && !c.released {
                        for r in batch.into_iter().rev() {
                            c.results.push_front(r);
                        }
                        c.started.splice(0..0, started);
                        let tx = self.internal_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let _ = tx.send(Internal::Flush { cluster });
                        });
                        return;
                    }
                }
                self.flush(cluster);
                self.reap(cluster);
            }
            Internal::Flush { cluster } => {
                if let Some(c) = self.clusters.get_mut(&cluster) {
                    c.starts_timer = false;
                }
                self.flush(cluster)
            }
        }
    }
}

/// Total memory from `/proc/meminfo`, if readable.
fn memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = info.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(kb * 1024)
}
