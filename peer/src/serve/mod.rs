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
//! - `requests`: requests that need the disk before their answer (`lookup`: store
//!   look-ups; recover and forget, bound to the cluster's `owner`), and cancel.
//! - `limits`: what one client may hold on the node ([`PeerLimits`]); `load`: the machine's
//!   load, free memory and disk for the Hello, sampled off the node's task.
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
mod limits;
mod load;
mod lookup;
mod owner;
pub(crate) mod private;
pub mod reaper;
mod requests;
mod runner;
pub mod setup;
mod share;
mod slots;
mod start;
pub mod store;
pub(crate) mod sys;
#[cfg(test)]
mod tests;
mod uploads;
mod workers;

pub use config::ServeConfig;
pub use limits::PeerLimits;
pub use private::default_dest;
pub use start::{RunningNode, start};

use crate::error::{Error, Result};
use crate::net::{NetEvent, NetHandle, ReplyTo};
use delivery::ResultsSent;
use dispy_protocol::{ClusterId, FileHash, Hello, Refusal, RefusalKind, Request, Response, WIRE_VERSION};
use jobdirs::Trash;
use kept::KeptResults;
use lease::Leases;
use libp2p::PeerId;
use runner::{ProcessRunner, Runner};
use slots::JobDone;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;
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
    /// A request's files were looked up in the store: it can be handled.
    LookedUp {
        peer: PeerId,
        waiting: lookup::Waiting,
        stored: lookup::Stored,
        channel: ReplyTo,
    },
    /// The answer to a request the node held while it worked on it.
    Answered(requests::Answered),
    /// A file was fetched from other nodes of its cluster, or could not be.
    Pulled(share::PullDone),
    /// A client waiting on a pull is due word of how far it got.
    PullDue {
        cluster: ClusterId,
        hash: FileHash,
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
    /// Shared with the jobs' tasks, which start their runs once their directory is settled.
    runner: Arc<dyn Runner>,
    /// Finished jobs' directories, removed in batches on the blocking pool.
    trash: Trash,
    /// `cfg.max_output`.
    max_output: usize,
    /// `cfg.max_return`.
    max_return: Option<u64>,
    /// `cfg.job_token`, shared by the jobs' specs.
    job_token: Option<Arc<str>>,
    /// `cfg.metrics`.
    metrics: Option<crate::metrics::NodeMetrics>,
}

impl Ctx {
    fn respond(&self, channel: ReplyTo, response: Response) {
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.respond(channel, response).await;
        });
    }

    /// Answers with what `work` makes of the disk, run on the blocking pool; `what` names
    /// what was read, should the work itself fail.
    fn respond_blocking(&self, channel: ReplyTo, what: String, work: impl FnOnce() -> Response + Send + 'static) {
        let net = self.net.clone();
        tokio::spawn(async move {
            let response = tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
                Response::Refused(Refusal::new(RefusalKind::Internal, format!("cannot read {what}: {e}")))
            });
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
    /// Held for the node's life: a second node on the same dest path fails to start.
    _lock: std::fs::File,
    /// Requests whose answer the node holds, by peer (see [`PeerLimits::pending`]).
    pending: HashMap<PeerId, usize>,
    /// Clusters with a recover under way (one at a time each).
    recovering: HashSet<ClusterId>,
    /// The machine's memory, read once at start (a Hello reads no file on the node's task).
    memory_bytes: Option<u64>,
    /// The machine's load, free memory and disk, sampled off the node's task (`load`).
    machine: load::Latest,
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
        private::prepare_dest(&cfg.dest).map_err(|reason| Error::UnsafeDest { path: cfg.dest.clone(), reason })?;
        if sys::euid() == 0 {
            // Jobs run as the node's user: say plainly what that means here.
            warn!(
                "serving as root: every job runs as root, with no isolation from the host, the node or other clients' jobs; run nodes as an unprivileged user"
            );
        }
        let lock_path = cfg.dest.join("node.lock");
        let lock = std::fs::OpenOptions::new()
            .mode(0o600)
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
        private::private_subdir(&jobs_root).map_err(|reason| Error::UnsafeDest { path: cfg.dest.clone(), reason })?;
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
            runner: Arc::from(runner(&store)),
            store,
            kept,
            trash: Trash::default(),
            max_output: cfg.max_output,
            max_return: cfg.max_return,
            job_token: cfg.job_token.as_deref().map(Arc::from),
            metrics: cfg.metrics.clone(),
        };
        let node = Node {
            _reaper: reaper,
            ctx,
            leases: Leases::default(),
            served: 0,
            draining: false,
            free: cfg.cpus,
            cfg,
            jobs_root,
            completions,
            stopping: false,
            _lock: lock,
            pending: HashMap::new(),
            recovering: HashSet::new(),
            memory_bytes: load::meminfo_bytes("MemTotal:"),
            machine: load::Latest::default(),
        };
        // A scrape before the first sample sees the node's slots, not zero.
        node.record_load();
        Ok(node)
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
                    info!(cluster = %id.tag(), client = %peer, zombie_interval = ?self.cfg.zombie_interval, "client disconnected; keeping its jobs");
                    c.gone_since.get_or_insert(now);
                }
            }
            NetEvent::Connected { peer, remote, reach } => {
                debug!(%peer, %remote, %reach, "peer connected");
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
                    info!(cluster = %id.tag(), client = %peer, "client is back; delivering its results");
                    self.flush(id);
                }
            }
            NetEvent::DialFailed { addr, reason, .. } => debug!(%addr, %reason, "dial failed"),
            NetEvent::Listening { .. } | NetEvent::Reached { .. } => {}
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
            Request::Reserve(_) | Request::Submit(_) | Request::Chunk(_) | Request::Declare(_) | Request::Pull(_)
                if self.stopping || self.draining =>
            {
                refuse(RefusalKind::ShuttingDown, format!("node {} is shutting down", self.cfg.name))
            }
            _ if self.stopping => refuse(RefusalKind::ShuttingDown, format!("node {} is shutting down", self.cfg.name)),
            Request::Reserve(r) => return self.look_up(peer, lookup::Waiting::Reserve(r), channel),
            Request::Chunk(c) => {
                let uploads = self.leases.usage(peer).uploads;
                let limit = self.cfg.limits.uploads;
                let lease = match self.leases.owned(peer, c.cluster) {
                    Ok(lease) => lease,
                    Err(refusal) => return Some((channel, *refusal)),
                };
                if uploads >= limit && lease.uploads.would_open(&c.hash) {
                    let why = limits::over("files arriving at once", limit, &self.cfg.name);
                    return Some((channel, Response::Refused(why)));
                }
                let entry: Vec<_> = lease.file(&c.hash).cloned().into_iter().collect();
                return lease.uploads.chunk(c.cluster, &entry, c, channel, &self.ctx);
            }
            Request::Submit(s) => return self.look_up(peer, lookup::Waiting::Submit(s), channel),
            Request::Cancel(c) => self.cancel(peer, c),
            Request::Release(r) => match self.leases.owned(peer, r.cluster) {
                Err(refusal) => *refusal,
                Ok(_) => {
                    self.release(r.cluster);
                    Response::Ok
                }
            },
            Request::Results(_) => refuse(RefusalKind::WrongRole, "this peer is a node; it takes no results".into()),
            Request::Recover(r) => return self.recover(peer, r, channel),
            Request::Declare(d) => return self.look_up(peer, lookup::Waiting::Declare(d), channel),
            Request::Fetch(f) => {
                return match f.share {
                    Some(share) => self.serve_shared(f, share, channel),
                    None => self.fetch(peer, f, channel),
                };
            }
            Request::Pull(p) => return self.pull(peer, p, channel),
            Request::Forget(f) => return self.forget(peer, f, channel),
        };
        Some((channel, response))
    }

    fn on_completion(&mut self, msg: Completion) {
        match msg {
            Completion::JobDone(done) => {
                let cluster = done.cluster;
                if let Some(m) = &self.ctx.metrics {
                    m.job_ended(&done.result.outcome);
                    m.returned(done.result.returned.iter().map(|f| f.size).sum());
                }
                let (held_slot, unused) = slots::job_done(self.leases.0.get_mut(&cluster), done, &mut self.ctx.trash);
                if held_slot {
                    self.free += 1;
                }
                self.trim_idle_workers();
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
            Completion::LookedUp { peer, waiting, stored, channel } => {
                self.release_hold(peer);
                let response = self.looked_up(peer, waiting, stored);
                self.ctx.respond(channel, response);
            }
            Completion::Answered(answered) => self.answered(answered),
            Completion::Pulled(done) => self.pulled(done),
            Completion::PullDue { cluster, hash } => self.pull_due(cluster, hash),
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
    fn delete_unused(&mut self, cluster: ClusterId, unused: Vec<FileHash>) {
        if unused.is_empty() {
            return;
        }
        let mut unused: HashSet<FileHash> = unused.into_iter().collect();
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

    /// Keeps at most one idle function worker per CPU slot on the node, over all clusters:
    /// past that, the cluster holding the most idle workers loses one. (Each cluster keeps
    /// its workers for its next jobs; without this, many function clusters would keep
    /// clusters × CPUs processes alive.)
    fn trim_idle_workers(&mut self) {
        let cap = self.cfg.cpus as usize;
        let mut idle: usize = self.leases.0.values().map(|c| c.runs.idle_workers()).sum();
        while idle > cap {
            let Some(c) = self.leases.0.values_mut().max_by_key(|c| c.runs.idle_workers()) else { break };
            c.runs.stop_idle_worker();
            idle -= 1;
        }
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
            c.outbox.save_waiting(*id, c.owner, &self.ctx.kept);
        }
    }

    /// Sets the metrics' gauges: slots, running jobs, clients holding a lease.
    fn record_load(&self) {
        let Some(m) = &self.ctx.metrics else { return };
        let clients = self.leases.0.values().filter(|c| !c.released).map(|c| c.client).collect::<HashSet<PeerId>>();
        m.set_load(self.cfg.cpus, self.cfg.cpus.saturating_sub(self.free), clients.len());
    }

    fn hello(&self) -> Hello {
        let zombie_secs = Some(self.cfg.zombie_interval.as_secs());
        let live = || self.leases.0.values().filter(|c| !c.released);
        let clients = live().map(|c| c.client).collect::<HashSet<PeerId>>().len();
        let jobs_queued: u64 = live().map(|c| c.runs.queued().0 as u64).sum();
        let load = self.machine.read().load(u32::try_from(clients).unwrap_or(u32::MAX), jobs_queued);
        Hello {
            zombie_secs,
            load: Some(Box::new(load)),
            ..Hello::node(self.cfg.name.clone(), self.cfg.cpus, self.free, self.cfg.max_file_size, self.memory_bytes)
        }
    }
}
