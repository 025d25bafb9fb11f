//! The node: takes clusters from clients, stages their files, runs their jobs in CPU slots
//! and sends the results back.
//!
//! [`Node::run`] is one task reading [`NetEvent`]s and its own completions. It never waits
//! on the network or the disk itself: job runs, chunk writes and result deliveries are
//! spawned and report back over a channel as `Completion`s, each handled by the file that
//! started the work.
//!
//! # Layout
//! - this file: the [`Node`] and the routing of requests, network events and completions
//!   to the parts below; `config`: [`ServeConfig`]; `start`: [`start`] wires a node to its
//!   network.
//! - `lease`: a client's lease on the node (`Lease`), and the leases by cluster: reserve,
//!   ownership.
//! - `uploads`: a lease's files arriving in chunks (`Uploads`).
//! - `slots`: a lease's jobs from submit to end (`Runs`), started in CPU slots in
//!   directories from `jobdirs`, through a `runner`.
//! - `setup`: a program cluster's setup and cleanup programs, once per cluster.
//! - `runner`: how a job runs (`Runner`): processes through `executor` and `workers`, or a
//!   test's stand-in (`tests`, which drive a node with no process and no swarm).
//! - `delivery`: a lease's results on their way to its client (`Outbox`), retries, results
//!   kept for recovery (`kept`).
//! - `lifecycle`: the node's loop ([`Node::run`]) and how leases and the node end:
//!   release, clients gone, drain, `--serve N`.
//! - [`store`]: the staged files; [`reaper`]: the companion that outlives a crash.

mod config;
mod delivery;
pub(crate) mod executor;
mod jobdirs;
mod jobfiles;
mod jobnotes;
mod kept;
mod lease;
mod lifecycle;
pub mod reaper;
mod runner;
pub mod setup;
mod slots;
mod start;
pub mod store;
mod sys;
#[cfg(test)]
mod tests;
mod uploads;
mod workers;

pub use config::ServeConfig;
pub use start::{RunningNode, start};

use crate::error::{Error, Result};
use crate::net::{NetEvent, NetHandle, ReplyTo};
use delivery::ResultsSent;
use dispy_protocol::{ClusterId, FileHash, Hello, JobOutcome, Refusal, RefusalKind, Request, Response, WIRE_VERSION};
use jobdirs::Trash;
use kept::KeptResults;
use lease::Leases;
use libp2p::PeerId;
use runner::{ProcessRunner, Runner};
use slots::JobDone;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use uploads::ChunkWritten;

/// How to stop a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Take nothing new, let running jobs finish (the first SIGTERM).
    Drain,
    /// Kill running jobs and stop (the second SIGTERM).
    Now,
}

/// What spawned work reports back to the node's task.
enum Completion {
    JobDone(JobDone),
    ChunkWritten(ChunkWritten),
    ResultsSent(ResultsSent),
    /// A running function job sent a provisional value or a file for its client.
    Provisional {
        cluster: ClusterId,
        provisional: dispy_protocol::Provisional,
    },
    /// A cluster's setup or cleanup program ended.
    ClusterTask(setup::TaskDone),
    /// Time to send what waits for the cluster's client (a start that lingered, a retry).
    FlushDue {
        cluster: ClusterId,
    },
}

/// What the parts of the node use to act: the ways out of its task.
struct Ctx {
    net: NetHandle,
    /// Where spawned work reports back. Unbounded: every message answers work the node
    /// started itself, which is bounded by its slots, chunk windows and leases.
    done: mpsc::UnboundedSender<Completion>,
    store: Store,
    kept: KeptResults,
    runner: Box<dyn Runner>,
    /// Finished jobs' directories, removed in batches on the blocking pool.
    trash: Trash,
    /// `cfg.max_output`.
    max_output: usize,
    /// `cfg.max_return`.
    max_return: Option<u64>,
    /// `cfg.job_token`, shared by the jobs' specs.
    job_token: Option<Arc<str>>,
}

impl Ctx {
    fn respond(&self, channel: ReplyTo, response: Response) {
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.respond(channel, response).await;
        });
    }

    fn report(&self, completion: Completion) {
        let _ = self.done.send(completion);
    }

    fn report_after(&self, wait: Duration, completion: Completion) {
        let done = self.done.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = done.send(completion);
        });
    }
}

/// The node's state; see the module docs.
pub struct Node {
    cfg: ServeConfig,
    ctx: Ctx,
    leases: Leases,
    jobs_root: PathBuf,
    /// CPU slots not running a job.
    free: u32,
    completions: mpsc::UnboundedReceiver<Completion>,
    stopping: bool,
    draining: bool,
    /// Kept for the node's life: its pipe closing is what wakes the reaper.
    _reaper: Option<reaper::Reaper>,
    /// Clusters released so far.
    served: u64,
    last_sweep: tokio::time::Instant,
    /// Held for the node's life: a second node on the same dest path fails to start.
    _lock: std::fs::File,
}

impl Node {
    /// Prepares the dest path (store, job directories) and takes its lock. Jobs run as
    /// processes.
    ///
    /// # Errors
    /// [`Error::DestInUse`] if another node uses `dest`; [`Error::Io`] if it cannot be made.
    pub fn new(cfg: ServeConfig, net: NetHandle) -> Result<Node> {
        Node::with_runner(cfg, net, |store| Box::new(ProcessRunner::new(store.clone())))
    }

    /// [`Node::new`] with the runner `runner` makes from the store.
    fn with_runner(cfg: ServeConfig, net: NetHandle, runner: impl FnOnce(&Store) -> Box<dyn Runner>) -> Result<Node> {
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
        let jobs_root = Node::jobs_root(&cfg.dest);
        // Job directories of an earlier run are stale: their jobs died with that node.
        let _ = std::fs::remove_dir_all(&jobs_root);
        std::fs::create_dir_all(&jobs_root)
            .map_err(|e| Error::io(format!("cannot create {}", jobs_root.display()), e))?;
        let (done, completions) = mpsc::unbounded_channel();
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
        let kept = KeptResults::open(&cfg.dest).map_err(|e| Error::io("cannot open the results folder", e))?;
        let ctx = Ctx {
            net,
            done,
            runner: runner(&store),
            store,
            kept,
            trash: Trash::default(),
            max_output: cfg.max_output,
            max_return: cfg.max_return,
            job_token: cfg.job_token.as_deref().map(Arc::from),
        };
        Ok(Node {
            _reaper: reaper,
            ctx,
            leases: Leases::default(),
            last_sweep: tokio::time::Instant::now(),
            served: 0,
            draining: false,
            free: cfg.cpus,
            cfg,
            jobs_root,
            completions,
            stopping: false,
            _lock: lock,
        })
    }

    /// Where the job directories live.
    fn jobs_root(dest: &Path) -> PathBuf {
        dest.join("jobs")
    }

    fn on_net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Request { peer, request, channel } => {
                if let Some((channel, response)) = self.on_request(peer, request, channel) {
                    self.ctx.respond(channel, response);
                }
            }
            NetEvent::Disconnected { peer } => {
                // Not gone yet: a partition heals, a client reconnects. Its jobs go on and
                // their results wait for it, for the zombie interval.
                let now = tokio::time::Instant::now();
                for (id, c) in self.leases.0.iter_mut().filter(|(_, c)| c.client == peer && !c.released) {
                    info!(cluster = %id, client = %peer, zombie_interval = ?self.cfg.zombie_interval, "client disconnected; keeping its jobs");
                    c.gone_since.get_or_insert(now);
                }
            }
            NetEvent::Connected { peer, remote } => {
                debug!(%peer, %remote, "peer connected");
                let back: Vec<ClusterId> = self
                    .leases
                    .0
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
    fn on_request(&mut self, peer: PeerId, request: Request, channel: ReplyTo) -> Option<(ReplyTo, Response)> {
        let refuse = |kind, msg: String| Response::Refused(Refusal::new(kind, msg));
        let response = match request {
            Request::Hello(h) => {
                if h.wire_version != WIRE_VERSION {
                    warn!(%peer, theirs = h.wire_version, ours = WIRE_VERSION, "peer speaks another protocol version");
                }
                Response::Hello(self.hello())
            }
            Request::Reserve(_) | Request::Submit(_) | Request::Chunk(_) | Request::Declare(_)
                if self.stopping || self.draining =>
            {
                refuse(RefusalKind::ShuttingDown, format!("node {} is shutting down", self.cfg.name))
            }
            _ if self.stopping => refuse(RefusalKind::ShuttingDown, format!("node {} is shutting down", self.cfg.name)),
            Request::Reserve(r) => self.leases.reserve(&self.cfg, &self.ctx.store, peer, r),
            Request::Chunk(c) => {
                let lease = match self.leases.owned(peer, c.cluster) {
                    Ok(lease) => lease,
                    Err(refusal) => return Some((channel, *refusal)),
                };
                let entry: Vec<_> = lease.file(&c.hash).cloned().into_iter().collect();
                return lease.uploads.chunk(c.cluster, &entry, c, channel, &self.ctx);
            }
            Request::Submit(s) => self.submit(peer, s),
            Request::Cancel(c) => match self.leases.owned(peer, c.cluster) {
                Err(refusal) => *refusal,
                Ok(lease) => {
                    let outbox = &lease.outbox;
                    for id in lease.runs.cancel(c.jobs, |id| outbox.holds(id)) {
                        self.ctx.report(JobDone::unstarted(c.cluster, id, JobOutcome::Cancelled));
                    }
                    Response::Ok
                }
            },
            Request::Release(r) => match self.leases.owned(peer, r.cluster) {
                Err(refusal) => *refusal,
                Ok(_) => {
                    self.release(r.cluster);
                    Response::Ok
                }
            },
            Request::Results(_) => refuse(RefusalKind::WrongRole, "this peer is a node; it takes no results".into()),
            Request::Recover(r) => {
                let held = self.leases.0.get(&r.cluster).map(|c| c.outbox.waiting()).unwrap_or_default();
                delivery::recover(peer, r, held, &self.ctx.kept, &self.ctx.net, channel);
                return None;
            }
            Request::Declare(d) => match self.leases.owned(peer, d.cluster) {
                Err(refusal) => *refusal,
                Ok(lease) => lease.job_files.declare(d.files, &self.ctx.store, self.cfg.max_file_size),
            },
            Request::Fetch(f) => return self.fetch(peer, f, channel),
            Request::Forget(f) => {
                let in_use = self.leases.all_files_in_use();
                let outbox = self.leases.0.get_mut(&f.cluster).map(|c| &mut c.outbox);
                delivery::forget(f, outbox, &self.ctx.kept, &self.ctx.store, in_use)
            }
        };
        Some((channel, response))
    }

    /// Queues jobs, once the cluster's files are all stored.
    fn submit(&mut self, peer: PeerId, s: dispy_protocol::Submit) -> Response {
        let lease = match self.leases.owned(peer, s.cluster) {
            Err(refusal) => return *refusal,
            Ok(lease) => lease,
        };
        let count = s.jobs.len() as u32;
        match lease.submit(s.jobs, &self.ctx.store) {
            Err(refusal) => return Response::Refused(refusal),
            Ok(cancelled) => {
                for id in cancelled {
                    self.ctx.report(JobDone::unstarted(s.cluster, id, JobOutcome::Cancelled));
                }
            }
        }
        self.start_setup_if_due(s.cluster);
        self.schedule();
        Response::Accepted(dispy_protocol::Accepted { count })
    }

    fn on_completion(&mut self, msg: Completion) {
        match msg {
            Completion::JobDone(done) => {
                let cluster = done.cluster;
                let (held_slot, unused) = slots::job_done(self.leases.0.get_mut(&cluster), done, &mut self.ctx.trash);
                if held_slot {
                    self.free += 1;
                }
                self.delete_unused(cluster, unused);
                self.flush(cluster);
                self.drop_if_done(cluster);
                self.schedule();
            }
            Completion::ChunkWritten(written) => {
                if let Some(c) = self.leases.0.get_mut(&written.cluster) {
                    c.uploads.written(written, &self.ctx);
                }
            }
            Completion::ResultsSent(sent) => {
                let cluster = sent.cluster;
                let go_on = match self.leases.0.get_mut(&cluster) {
                    Some(c) => c.outbox.sent(sent, c.released, &self.ctx),
                    None => true,
                };
                if go_on {
                    self.flush(cluster);
                    self.drop_if_done(cluster);
                }
            }
            Completion::Provisional { cluster, provisional } => {
                if let Some(c) = self.leases.0.get_mut(&cluster).filter(|c| !c.released) {
                    // A file sent may be fetched from now on.
                    if let Some(file) = &provisional.file {
                        c.job_files.keep(std::slice::from_ref(file));
                    }
                    c.outbox.push_provisional(provisional);
                }
                self.flush(cluster);
            }
            Completion::ClusterTask(done) => self.cluster_task_done(done),
            Completion::FlushDue { cluster } => {
                if let Some(c) = self.leases.0.get_mut(&cluster) {
                    c.outbox.starts_due();
                }
                self.flush(cluster)
            }
        }
    }

    /// Deletes jobs' input files no job needs any more, unless a lease holds them as its
    /// own files: a run of a million inputs keeps only those of its jobs under way.
    fn delete_unused(&mut self, cluster: ClusterId, mut unused: Vec<FileHash>) {
        if unused.is_empty() {
            return;
        }
        let mut in_use = self.leases.files_in_use(cluster);
        if let Some(c) = self.leases.0.get_mut(&cluster) {
            in_use.extend(c.files.iter().map(|f| f.hash).chain(c.job_files.hashes()));
            unused.retain(|h| !in_use.contains(h));
            // Sent and gone again: the same bytes may be sent anew for a later job.
            c.uploads.staged.retain(|h| !unused.contains(h));
        }
        unused.retain(|h| !in_use.contains(h));
        let store = self.ctx.store.clone();
        tokio::task::spawn_blocking(move || {
            for h in unused {
                let _ = std::fs::remove_file(store.path(&h));
            }
        });
    }

    /// Starts queued jobs in the free slots and sends their starts.
    fn schedule(&mut self) {
        if self.stopping {
            return;
        }
        for id in slots::start_jobs(&mut self.leases, &mut self.free, &mut self.ctx) {
            self.flush(id);
        }
    }

    /// Sends what waits for a cluster's client.
    fn flush(&mut self, id: ClusterId) {
        if let Some(c) = self.leases.0.get_mut(&id).filter(|c| !c.released) {
            c.outbox.flush(id, c.client, &self.ctx);
        }
    }

    /// Writes to disk the results that have waited too long for their client.
    fn save_waiting_results(&mut self) {
        // Released: its client took what it wanted; a batch still travelling is moot.
        for (id, c) in self.leases.0.iter_mut().filter(|(_, c)| !c.released) {
            c.outbox.save_waiting(*id, &self.ctx.kept);
        }
    }

    fn hello(&self) -> Hello {
        let zombie_secs = Some(self.cfg.zombie_interval.as_secs());
        Hello {
            zombie_secs,
            ..Hello::node(self.cfg.name.clone(), self.cfg.cpus, self.free, self.cfg.max_file_size, memory_bytes())
        }
    }
}

/// Total memory from `/proc/meminfo`, if readable.
fn memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = info.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(kb * 1024)
}
