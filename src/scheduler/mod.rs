//! The scheduler: one task per cluster that finds nodes, reserves and stages them, keeps
//! their CPU slots busy and gathers results. The [`crate::Cluster`] handle talks to it over
//! channels; it talks to the network through a [`NetHandle`].
//!
//! Deciding and doing are apart. [`core::Core`] holds the state and decides, with no I/O:
//! each input (a command, a network event, an answer, a tick, with the time) returns
//! [`Effect`]s. [`Scheduler`], this file, is the driver: a `select!` loop that feeds the
//! core and carries its effects out (requests, staging, the local node, journal writes,
//! callbacks, reports to the handle).
//!
//! A node goes Greeting → Reserving → Staging → Ready; any refusal makes it Unusable with
//! the reason kept for error messages; losing its connection makes it Lost (its jobs are
//! re-queued when the cluster is reentrant, abandoned otherwise).

mod away;
mod core;
mod files;
mod jobs;
mod nodes;
#[cfg(test)]
mod tests;
mod watchdog;

pub(crate) use self::away::NODE_ZOMBIE;
pub use self::core::LocalMode;
pub(crate) use self::core::{Core, Effect, Failure, Settings};

use self::core::{Asked, Entry};
use crate::events::{ClusterCallback, JobCallback};
use crate::job::JobView;
use crate::journal::Journal;
use crate::local::LocalNode;
use crate::report::{JobReport, NodeInfo, Stats};
use crate::{fanout, fetch, stage};
use dispy_node::net::{NetEvent, NetHandle};
use dispy_protocol::{FileEntry, JobId, Response};
use libp2p::PeerId;
use libp2p::pnet::PreSharedKey;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

/// Sleeps until `deadline` (forever when `None`; the caller's `select!` guards that branch).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// A job as the cluster handle submits it: built here as the scheduler will hold it, so a
/// million queued at once are not held twice over on their way in.
pub(crate) struct NewJob {
    pub(crate) id: JobId,
    job: Box<core::Job>,
}

impl NewJob {
    /// `view`: present for jobs submitted with a handle, whose reports go there, not to the
    /// stream. `node`: only this node may run the job (`submit_to`).
    pub(crate) fn new(
        id: JobId,
        args: Vec<String>,
        input: Vec<u8>,
        view: Option<watch::Sender<JobView>>,
        node: Option<PeerId>,
    ) -> NewJob {
        let job = core::Job {
            args,
            input,
            started: false,
            attempts: 0,
            suspect: false,
            dispatched: 0,
            state: core::JobState::Queued,
            view,
            pinned: node.map(Box::new),
            files: Vec::new(),
            fetching: None,
            sent: None,
            cancel_asked: false,
        };
        NewJob { id, job: Box::new(job) }
    }

    /// Its own input files (`--each-file`, `submit_with`).
    pub(crate) fn with_files(mut self, files: Vec<crate::stage::LocalFile>) -> NewJob {
        self.job.files = files;
        self
    }
}

/// Commands from the cluster handle.
pub(crate) enum Cmd {
    Submit {
        jobs: Vec<NewJob>,
    },
    Nodes {
        reply: oneshot::Sender<Vec<NodeInfo>>,
    },
    /// Answered once no job is pending (or with the failure if the cluster failed).
    Wait {
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    Cancel {
        ids: Vec<JobId>,
    },
    CancelAll,
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    /// Wait for the pending jobs (at most `timeout`, then cancel them), then release.
    Close {
        reply: oneshot::Sender<Stats>,
        timeout: Option<Duration>,
    },
}

/// After a close timeout cancelled the jobs still pending, how long their nodes get to
/// report them cancelled before the nodes are released anyway: a node kills a job's
/// process group and answers within milliseconds, so this is only reached when a node
/// stopped answering (its jobs' handles then see `Error::Closed`).
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// A close the driver is carrying out: it serves on until no job is pending.
struct Closing {
    reply: oneshot::Sender<Stats>,
    /// When the pending jobs are cancelled (`None`: wait as long as they run); once they
    /// are, when the nodes are released even if some cancellations went unanswered.
    deadline: Option<Instant>,
    cancelled: bool,
}

/// What the scheduler tells the cluster handle.
pub(crate) enum Update {
    Job(Box<JobReport>),
    Fatal(Failure),
}

/// What the driver does on the core's behalf beyond the network.
pub(crate) struct Hooks {
    pub(crate) on_job: Option<JobCallback>,
    pub(crate) on_cluster: Option<ClusterCallback>,
    pub(crate) journal: Option<Journal>,
    /// For a local node started as a fallback.
    pub(crate) psk: Option<PreSharedKey>,
    /// The web monitor's feed ([`crate::ClusterBuilder::web`]).
    pub(crate) web: Option<crate::web::feed::FeedTx>,
    /// Set when every job was cancelled at once ([`crate::Cluster::cancelled_all`]).
    pub(crate) cancelled_all: watch::Sender<bool>,
}

/// Spawned work reporting back to the driver.
enum Done {
    Answer(PeerId, Asked, Result<Response, String>),
    /// Staged: bytes sent, or why staging failed; and the job inputs this machine could
    /// not read (their jobs fail, the others go on).
    Staged(PeerId, Option<Vec<JobId>>, Result<u64, String>, Vec<(dispy_protocol::FileHash, String)>),
    Fetched(PeerId, JobId, Vec<std::path::PathBuf>, Vec<String>),
    /// A file a running job sent was fetched (where it was saved) or not.
    SentFetched(PeerId, JobId, Box<FileEntry>, Result<std::path::PathBuf, String>),
    LocalUp(crate::Result<LocalNode>),
}

/// The driver; see the module docs.
pub(crate) struct Scheduler {
    core: Core,
    hooks: Hooks,
    net: NetHandle,
    updates: mpsc::UnboundedSender<Update>,
    // Unbounded: each message answers a request or staging the driver itself started, so
    // their number is bounded by the work in flight; the loop must never wait on itself.
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    local: Option<LocalNode>,
    /// Jobs whose returned files are being fetched at once, at most.
    fetch_permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// The fetches under way, to stop one whose job left its node, and all at close.
    fetches: std::collections::HashMap<(PeerId, JobId), tokio::task::AbortHandle>,
    /// Which node's staging goes first.
    stage_lead: stage::StageLead,
    /// Which nodes hold which of the cluster's files (fan-out).
    holders: fanout::Holders,
}

/// Jobs whose returned files travel at once: enough to keep a link busy, few enough that
/// memory (chunks in flight per file) and open files stay small.
const FETCHES_AT_ONCE: usize = 4;

impl Scheduler {
    pub(crate) fn new(
        settings: Settings,
        hooks: Hooks,
        net: NetHandle,
        updates: mpsc::UnboundedSender<Update>,
        local: Option<LocalNode>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let core = Core::new(settings, Instant::now(), local.is_some());
        let fetch_permits = std::sync::Arc::new(tokio::sync::Semaphore::new(FETCHES_AT_ONCE));
        let fetches = std::collections::HashMap::new();
        let stage_lead = stage::StageLead::new();
        let holders = fanout::Holders::default();
        Scheduler { core, hooks, net, updates, done_tx, done_rx, local, fetch_permits, fetches, stage_lead, holders }
    }

    /// Runs until the handle closes the cluster (or is dropped, which closes it too).
    ///
    /// `Cmd::Close` does not stop the loop at once: as dispy's `close()`, the cluster goes
    /// on serving (results, heartbeats, dispatch) until no job is pending or the close
    /// timeout cancelled them, or the cluster failed (its jobs can never end). A handle
    /// dropped meanwhile (the application gave up on `close`) stops it at once, as a drop
    /// without `close` does.
    pub(crate) async fn run(mut self, mut events: mpsc::UnboundedReceiver<NetEvent>, mut cmds: mpsc::Receiver<Cmd>) {
        if let Some(local) = &self.local {
            let _ = self.net.dial(local.addr.clone()).await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut closing: Option<Closing> = None;
        loop {
            if closing.is_some() && (self.core.pending() == 0 || self.core.failed()) {
                break;
            }
            let deadline = closing.as_ref().and_then(|c| c.deadline);
            let effects = tokio::select! {
                Some(ev) = events.recv() => self.on_net_event(ev),
                Some(done) = self.done_rx.recv() => self.on_done(done).await,
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Close { reply, timeout }) => {
                        let deadline = timeout.map(|t| Instant::now() + t);
                        closing = Some(Closing { reply, deadline, cancelled: false });
                        Vec::new()
                    }
                    None => break,
                    Some(cmd) => {
                        // Asked for by the application or the web monitor (not the close
                        // timeout's): whoever feeds jobs stops feeding.
                        if matches!(cmd, Cmd::CancelAll) {
                            self.hooks.cancelled_all.send_replace(true);
                        }
                        self.core.on_cmd(cmd, Instant::now())
                    }
                },
                _ = tick.tick() => self.core.on_tick(Instant::now()),
                () = sleep_until(deadline), if deadline.is_some() => match closing.as_mut() {
                    Some(c) if !c.cancelled => {
                        debug!(pending = self.core.pending(), "close timeout: cancelling the pending jobs");
                        c.cancelled = true;
                        c.deadline = Some(Instant::now() + CANCEL_GRACE);
                        self.core.on_cmd(Cmd::CancelAll, Instant::now())
                    }
                    _ => {
                        warn!(pending = self.core.pending(), "nodes did not confirm cancelled jobs; releasing them");
                        let effects = self.core.on_close_unconfirmed();
                        self.carry_out(effects);
                        break;
                    }
                },
            };
            self.carry_out(effects);
        }
        self.close(closing.map(|c| c.reply)).await;
    }

    fn on_net_event(&mut self, ev: NetEvent) -> Vec<Effect> {
        match ev {
            NetEvent::Connected { peer, remote, reach } => self.core.on_connected(peer, &remote, reach),
            NetEvent::Reached { peer, reach, remote } => self.core.on_reached(peer, reach, &remote),
            NetEvent::Disconnected { peer } => self.core.on_disconnected(peer, Instant::now()),
            NetEvent::Request { peer, request, channel } => {
                let (response, effects) = self.core.on_request(peer, request);
                let net = self.net.clone();
                tokio::spawn(async move {
                    let _ = net.respond(channel, response).await;
                });
                effects
            }
            NetEvent::DialFailed { addr, reason, refused, .. } => self.core.on_dial_failed(addr, reason, refused),
            NetEvent::Listening { .. } => Vec::new(),
        }
    }

    async fn on_done(&mut self, done: Done) -> Vec<Effect> {
        match done {
            Done::Answer(peer, asked, answer) => self.core.on_answer(peer, asked, answer, Instant::now()),
            Done::Staged(peer, jobs, outcome, unreadable) => {
                let mut effects = match &jobs {
                    Some(ids) if !unreadable.is_empty() => self.core.on_inputs_unreadable(peer, ids, &unreadable),
                    _ => Vec::new(),
                };
                effects.extend(self.core.on_staged(peer, jobs, outcome));
                effects
            }
            Done::Fetched(peer, job, saved, failed) => {
                self.fetches.remove(&(peer, job));
                self.core.on_fetched(peer, job, saved, failed)
            }
            Done::SentFetched(peer, job, file, saved) => self.core.on_sent_fetched(peer, job, *file, saved),
            Done::LocalUp(Ok(local)) => {
                let _ = self.net.dial(local.addr.clone()).await;
                self.local = Some(local);
                self.core.on_local_node(Ok(()), Instant::now())
            }
            Done::LocalUp(Err(e)) => self.core.on_local_node(Err(e.to_string()), Instant::now()),
        }
    }

    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Ask { peer, request, asked } => {
                    let (net, tx) = (self.net.clone(), self.done_tx.clone());
                    tokio::spawn(async move {
                        let answer = net.request(peer, request).await.map_err(|e| e.to_string());
                        if asked != Asked::Cancel {
                            let _ = tx.send(Done::Answer(peer, asked, answer));
                        }
                    });
                }
                Effect::Stage { peer, addr, files, jobs } => {
                    let (net, tx, cluster) = (self.net.clone(), self.done_tx.clone(), self.core.cluster());
                    // The cluster's own files take turns between nodes, or pass between
                    // them (those the client sends once need no turns); jobs' inputs do
                    // neither.
                    let fanout = jobs.is_none() && self.core.share().is_some();
                    let bytes = match jobs {
                        Some(_) => 0,
                        None => {
                            files.iter().map(|f| f.entry.size).filter(|s| !fanout || *s < fanout::SHARE_MIN_BYTES).sum()
                        }
                    };
                    let (lead, holders) = (self.stage_lead.clone(), self.holders.clone());
                    tokio::spawn(lead.run(bytes, async move {
                        let (mut sent, mut unreadable) = (0, Vec::new());
                        for f in &files {
                            match fanout::stage_file(&net, &holders, fanout, peer, addr.as_ref(), cluster, f).await {
                                Ok(bytes) => sent += bytes,
                                // A job's own input that vanished fails that job only.
                                Err(stage::SendError::Local(why)) if jobs.is_some() => {
                                    unreadable.push((f.entry.hash, why));
                                }
                                Err(e) => {
                                    let _ = tx.send(Done::Staged(peer, jobs, Err(e.to_string()), unreadable));
                                    return;
                                }
                            }
                        }
                        let _ = tx.send(Done::Staged(peer, jobs, Ok(sent), unreadable));
                    }));
                }
                Effect::Fetch { peer, job, files, dir } => {
                    let (net, tx, cluster) = (self.net.clone(), self.done_tx.clone(), self.core.cluster());
                    let permits = self.fetch_permits.clone();
                    let task = tokio::spawn(async move {
                        // A few jobs' files at a time: each file has its chunks in flight.
                        let _permit = permits.acquire_owned().await;
                        let (saved, failed) = fetch::fetch_all(&net, peer, cluster, &files, &dir, true).await;
                        let _ = tx.send(Done::Fetched(peer, job, saved, failed));
                    });
                    self.fetches.insert((peer, job), task.abort_handle());
                }
                Effect::FetchSent { peer, job, file, dir } => {
                    let (net, tx, cluster) = (self.net.clone(), self.done_tx.clone(), self.core.cluster());
                    let permits = self.fetch_permits.clone();
                    // Not tracked for StopFetch: it tries once and ends by itself.
                    tokio::spawn(async move {
                        let _permit = permits.acquire_owned().await;
                        let saved = fetch::fetch_once(&net, peer, cluster, &file, &dir).await;
                        let _ = tx.send(Done::SentFetched(peer, job, Box::new(file), saved));
                    });
                }
                Effect::StopFetch { peer, job } => {
                    if let Some(task) = self.fetches.remove(&(peer, job)) {
                        task.abort();
                    }
                }
                Effect::Ended { view, report } => {
                    if let Some(web) = &self.hooks.web {
                        web.report(&report);
                    }
                    end_job(&view, report);
                }
                Effect::Answer { waiters, answer } => {
                    for w in waiters {
                        let _ = w.send(answer.clone());
                    }
                }
                Effect::Report(report) => {
                    if let Some(web) = &self.hooks.web {
                        web.report(&report);
                    }
                    let _ = self.updates.send(Update::Job(report));
                }
                Effect::Fail(failure) => {
                    let _ = self.updates.send(Update::Fatal(failure));
                }
                Effect::JobEvent(ev) => {
                    if let Some(web) = &self.hooks.web {
                        web.job(&ev);
                    }
                    if let Some(cb) = &self.hooks.on_job {
                        cb(&ev);
                    }
                }
                Effect::ClusterEvent(ev) => {
                    if let Some(web) = &self.hooks.web {
                        web.node(&ev);
                    }
                    if let Some(cb) = &self.hooks.on_cluster {
                        cb(&ev);
                    }
                }
                Effect::Journal(entry) => {
                    if let Some(journal) = &mut self.hooks.journal {
                        match entry {
                            Entry::Job { id, args } => journal.job(id, &args),
                            Entry::Sent { ids, peer, addr } => journal.sent(&ids, &peer, addr.as_ref()),
                            Entry::Done(id) => journal.done(id),
                            Entry::Flush => journal.flush(),
                        }
                    }
                }
                Effect::Dial { addr } => {
                    let net = self.net.clone();
                    tokio::spawn(async move {
                        let _ = net.dial(addr).await;
                    });
                }
                Effect::StartLocalNode => {
                    let (tx, psk, me) = (self.done_tx.clone(), self.hooks.psk, self.net.local_peer_id());
                    tokio::spawn(async move {
                        let _ = tx.send(Done::LocalUp(LocalNode::start(psk, me).await));
                    });
                }
            }
        }
    }

    /// Releases every node (they kill leftover jobs and delete the cluster's directories),
    /// then stops the local node and the network.
    async fn close(mut self, reply: Option<oneshot::Sender<Stats>>) {
        let stats = self.core.stats(Instant::now());
        // Files still on their way are not waited for: their partial copies go.
        for (_, task) in self.fetches.drain() {
            task.abort();
        }
        let releases = self.core.releases().into_iter().map(|(peer, request)| {
            let net = self.net.clone();
            async move { net.request(peer, request).await }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(releases)).await;
        if let Some(journal) = &mut self.hooks.journal {
            journal.flush();
        }
        if let Some(local) = self.local.take() {
            local.stop().await;
        }
        self.net.shutdown().await;
        if let Some(reply) = reply {
            let _ = reply.send(stats);
        }
    }
}

/// Shows a job's end to its handle.
pub(crate) fn end_job(view: &watch::Sender<JobView>, report: std::sync::Arc<JobReport>) {
    let status = crate::job::JobStatus::of(&report.outcome);
    view.send_modify(|v| {
        v.status = status;
        v.node = report.node.clone();
        v.report = Some(report);
    });
}
