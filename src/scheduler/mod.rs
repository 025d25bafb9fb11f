//! The scheduler: one task per cluster that finds nodes, reserves and stages them, keeps
//! their CPU slots busy and gathers results. The [`crate::Cluster`] handle talks to it over
//! channels; it talks to the network through a [`NetHandle`].
//!
//! A node goes Greeting → Reserving → Staging → Ready; any refusal makes it Unusable with
//! the reason kept for error messages; losing its connection makes it Lost (its jobs are
//! re-queued when the cluster is reentrant, abandoned otherwise).

mod jobs;
mod nodes;

use crate::events::{ClusterCallback, ClusterEvent, JobCallback, JobEvent, NodeFacts, NodeFilter};
use crate::job::{JobStatus, JobView};
use crate::journal::Journal;
use crate::local::LocalNode;
use crate::policy::{self, Load};
use crate::report::{JobReport, NodeInfo, NodeRef, NodeStats, Stats, node_ref};
use crate::select::NodePattern;
use crate::stage::{self, LocalFile};
use dispy_node::net::{NetEvent, NetHandle, remote_ip};
use dispy_protocol::{
    Cancel, ClusterId, Hello, JobId, JobOutcome, JobResult, JobSpec, Refusal, RefusalKind, Release, Request, Reserve,
    Response, Role, Submit, WIRE_VERSION,
};
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// When to run an in-process node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LocalMode {
    /// Never: only remote nodes.
    Never,
    /// When no node is found within the discovery timeout (and no node was named).
    #[default]
    Fallback,
    /// Always, beside any remote nodes.
    Always,
}

/// Commands from the cluster handle.
/// A job as the cluster handle submits it.
pub(crate) struct NewJob {
    pub(crate) id: JobId,
    pub(crate) args: Vec<String>,
    pub(crate) input: Vec<u8>,
    /// Present for jobs submitted with a handle; their reports go there, not to the stream.
    pub(crate) view: Option<watch::Sender<JobView>>,
    /// Only this node may run the job (`submit_to`).
    pub(crate) node: Option<PeerId>,
}

pub(crate) enum Cmd {
    Submit {
        jobs: Vec<NewJob>,
    },
    Nodes {
        reply: oneshot::Sender<Vec<NodeInfo>>,
    },
    /// Answered once no job is pending (or with the error if the cluster failed).
    Wait {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Cancel {
        ids: Vec<JobId>,
    },
    CancelAll,
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    Close {
        reply: oneshot::Sender<Stats>,
    },
}

/// What the scheduler tells the cluster handle.
pub(crate) enum Update {
    Job(Box<JobReport>),
    Fatal(String),
}

/// Everything fixed for the cluster's life.
pub(crate) struct Settings {
    pub(crate) cluster: ClusterId,
    pub(crate) program: String,
    pub(crate) files: Vec<LocalFile>,
    pub(crate) patterns: Vec<NodePattern>,
    pub(crate) cpus_per_node: Option<u32>,
    pub(crate) timeout_secs: Option<f64>,
    pub(crate) reentrant: bool,
    /// A reentrant job fails once this many nodes died while it ran there.
    pub(crate) max_retries: u32,
    pub(crate) discover_timeout: Duration,
    pub(crate) local: LocalMode,
    /// Nodes were named (`--peer`, `--nodes`): never fall back to a local node.
    pub(crate) named: bool,
    /// What is being searched, for error messages.
    pub(crate) searched: String,
    pub(crate) psk: Option<PreSharedKey>,
    /// For a function cluster: the function's registered name.
    pub(crate) function: Option<String>,
    pub(crate) on_job: Option<JobCallback>,
    pub(crate) on_cluster: Option<ClusterCallback>,
    pub(crate) node_filter: Option<NodeFilter>,
    pub(crate) journal: Option<Journal>,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Greeting,
    Reserving,
    Staging,
    Ready,
    Unusable(String),
    Lost,
}

struct Node {
    ip: Option<IpAddr>,
    /// The address it was reached at, with its peer id (for the journal).
    addr: Option<Multiaddr>,
    name: String,
    /// `os/arch`, once greeted.
    platform: String,
    phase: Phase,
    cpus: u32,
    in_flight: HashSet<JobId>,
    jobs_done: u64,
    job_secs: f64,
    staged_bytes: u64,
}

enum JobState {
    Queued,
    OnNode(PeerId),
}

struct Job {
    args: Vec<String>,
    input: Vec<u8>,
    /// Its node reported it running (left the node's queue).
    started: bool,
    /// Nodes that died while it ran there.
    attempts: u32,
    /// It was charged a node's death: it runs alone among suspects from now on.
    suspect: bool,
    /// When it was last sent to a node (a global counter): a node runs a cluster's jobs in
    /// the order it receives them.
    dispatched: u64,
    state: JobState,
    view: Option<watch::Sender<JobView>>,
    pinned: Option<PeerId>,
}

enum Internal {
    Hello(PeerId, dispy_node::Result<Response>),
    Reserved(PeerId, dispy_node::Result<Response>),
    /// Bytes sent, or why staging failed.
    Staged(PeerId, Result<u64, String>),
    Submitted(PeerId, Vec<JobId>, dispy_node::Result<Response>),
    LocalUp(crate::Result<LocalNode>),
}

pub(crate) struct Scheduler {
    s: Settings,
    net: NetHandle,
    nodes: HashMap<PeerId, Node>,
    /// Peers in the order they joined, for stable stats.
    order: Vec<PeerId>,
    /// Connected peers that turned out to be clients.
    clients_seen: HashSet<PeerId>,
    dial_failures: HashMap<Multiaddr, String>,
    /// Jobs not ended yet.
    jobs: HashMap<JobId, Job>,
    /// Jobs ever submitted.
    submitted: u64,
    queue: VecDeque<JobId>,
    updates: mpsc::UnboundedSender<Update>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    started: Instant,
    /// Since when no node has been usable or on its way to it.
    nodeless_since: Option<Instant>,
    local: Option<LocalNode>,
    local_starting: bool,
    failed: bool,
    /// Counts dispatches, to order each node's jobs as it received them.
    dispatch_seq: u64,
    /// `Cluster::wait` callers.
    waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// Jobs not ended yet.
    pending: usize,
    failure: Option<String>,
}

impl Scheduler {
    pub(crate) fn new(
        s: Settings,
        net: NetHandle,
        updates: mpsc::UnboundedSender<Update>,
        local: Option<LocalNode>,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        Scheduler {
            s,
            net,
            nodes: HashMap::new(),
            order: Vec::new(),
            clients_seen: HashSet::new(),
            dial_failures: HashMap::new(),
            jobs: HashMap::new(),
            submitted: 0,
            queue: VecDeque::new(),
            updates,
            internal_tx,
            internal_rx,
            started: now,
            nodeless_since: Some(now),
            local,
            local_starting: false,
            failed: false,
            dispatch_seq: 0,
            waiters: Vec::new(),
            pending: 0,
            failure: None,
        }
    }

    pub(crate) async fn run(mut self, mut events: mpsc::UnboundedReceiver<NetEvent>, mut cmds: mpsc::Receiver<Cmd>) {
        if let Some(local) = &self.local {
            let _ = self.net.dial(local.addr.clone()).await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let close_reply = loop {
            tokio::select! {
                Some(ev) = events.recv() => self.on_net_event(ev),
                Some(msg) = self.internal_rx.recv() => self.on_internal(msg).await,
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Close { reply }) => break Some(reply),
                    None => break None,
                    Some(cmd) => self.on_cmd(cmd),
                },
                _ = tick.tick() => self.on_tick(),
            }
        };
        self.close(close_reply).await;
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Submit { jobs } => {
                for j in jobs {
                    self.submitted += 1;
                    self.jobs.insert(
                        j.id,
                        Job {
                            args: j.args,
                            input: j.input,
                            started: false,
                            attempts: 0,
                            suspect: false,
                            dispatched: 0,
                            state: JobState::Queued,
                            view: j.view,
                            pinned: j.node,
                        },
                    );
                    if let Some(journal) = &mut self.s.journal {
                        journal.job(j.id, &self.jobs[&j.id].args);
                    }
                    self.queue.push_back(j.id);
                    self.pending += 1;
                    self.job_event(j.id, JobStatus::Created, None);
                }
                if let Some(journal) = &mut self.s.journal {
                    journal.flush();
                }
                self.dispatch();
            }
            Cmd::Nodes { reply } => {
                let _ = reply.send(self.node_infos());
            }
            Cmd::Wait { reply } => {
                self.waiters.push(reply);
                self.answer_waiters();
            }
            Cmd::Cancel { ids } => self.cancel(ids),
            Cmd::CancelAll => {
                let ids: Vec<JobId> = self.jobs.keys().copied().collect();
                self.cancel(ids);
            }
            Cmd::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Cmd::Close { .. } => {}
        }
    }

    fn on_net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected { peer, remote } => {
                if self.clients_seen.contains(&peer) {
                    return;
                }
                let fresh = match self.nodes.get(&peer) {
                    None => true,
                    Some(n) => n.phase == Phase::Lost,
                };
                if !fresh {
                    return;
                }
                if !self.nodes.contains_key(&peer) {
                    self.order.push(peer);
                }
                let ip = remote_ip(&remote);
                let addr = match remote.iter().last() {
                    Some(libp2p::multiaddr::Protocol::P2p(_)) => remote.clone(),
                    _ => remote.clone().with(libp2p::multiaddr::Protocol::P2p(peer)),
                };
                let node = self.nodes.entry(peer).or_insert_with(|| Node {
                    ip,
                    addr: Some(addr.clone()),
                    name: peer.to_string(),
                    platform: String::new(),
                    phase: Phase::Greeting,
                    cpus: 0,
                    in_flight: HashSet::new(),
                    jobs_done: 0,
                    job_secs: 0.0,
                    staged_bytes: 0,
                });
                node.phase = Phase::Greeting;
                node.ip = ip;
                node.addr = Some(addr);
                let hello = Request::Hello(self.hello());
                self.spawn_request(peer, hello, Internal::Hello);
            }
            NetEvent::Disconnected { peer } => self.lose(peer, "its connection closed"),
            NetEvent::Request { peer, request, channel } => {
                let response = match request {
                    Request::Results(r) if r.cluster == self.s.cluster => {
                        self.on_started(peer, r.started);
                        self.on_results(peer, r.results);
                        if let Some(journal) = &mut self.s.journal {
                            journal.flush();
                        }
                        Response::Ok
                    }
                    Request::Hello(_) => Response::Hello(self.hello()),
                    _ => Response::Refused(Refusal::new(
                        RefusalKind::WrongRole,
                        "this peer is a client; it runs no jobs",
                    )),
                };
                let net = self.net.clone();
                tokio::spawn(async move {
                    let _ = net.respond(channel, response).await;
                });
                self.dispatch();
            }
            NetEvent::DialFailed { addr, reason, .. } => {
                self.dial_failures.insert(addr, reason);
            }
            NetEvent::Listening { .. } => {}
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            wire_version: WIRE_VERSION,
            software: env!("CARGO_PKG_VERSION").to_string(),
            role: Role::Client,
            name: crate::host_name(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpus: 0,
            free_cpus: 0,
            max_file_size: None,
            memory_bytes: None,
        }
    }

    fn spawn_request(
        &self,
        peer: PeerId,
        request: Request,
        wrap: fn(PeerId, dispy_node::Result<Response>) -> Internal,
    ) {
        let net = self.net.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let answer = net.request(peer, request).await;
            let _ = tx.send(wrap(peer, answer));
        });
    }

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Hello(peer, answer) => match answer {
                Ok(Response::Hello(h)) => self.on_hello(peer, h),
                Ok(other) => self.unusable(peer, format!("unexpected answer to hello: {other:?}")),
                // A peer that does not speak dispy (or left at once) is not a node.
                Err(e) => {
                    debug!(%peer, cause = %e, "hello failed");
                    self.nodes.remove(&peer);
                    self.order.retain(|p| *p != peer);
                }
            },
            Internal::Reserved(peer, answer) => match answer {
                Ok(Response::Reserved(r)) => {
                    let Some(node) = self.nodes.get_mut(&peer) else { return };
                    if node.phase != Phase::Reserving {
                        return;
                    }
                    node.cpus = r.cpus.min(self.s.cpus_per_node.unwrap_or(u32::MAX)).max(1);
                    if r.missing.is_empty() {
                        node.phase = Phase::Ready;
                        info!(node = %node.name, cpus = node.cpus, "node ready");
                        let ev =
                            ClusterEvent::NodeReady { node: node_ref(&node.name, &peer, node.ip), cpus: node.cpus };
                        self.cluster_event(ev);
                        self.dispatch();
                    } else {
                        node.phase = Phase::Staging;
                        let files: Vec<LocalFile> =
                            self.s.files.iter().filter(|f| r.missing.contains(&f.entry.hash)).cloned().collect();
                        let (net, tx, cluster) = (self.net.clone(), self.internal_tx.clone(), self.s.cluster);
                        tokio::spawn(async move {
                            let mut outcome = Ok(0);
                            for f in &files {
                                match stage::send_file(&net, peer, cluster, f).await {
                                    Ok(()) => outcome = outcome.map(|sent| sent + f.entry.size),
                                    Err(e) => {
                                        outcome = Err(e);
                                        break;
                                    }
                                }
                            }
                            let _ = tx.send(Internal::Staged(peer, outcome));
                        });
                    }
                }
                Ok(Response::Refused(r)) => self.unusable(peer, r.message),
                Ok(other) => self.unusable(peer, format!("unexpected answer to reserve: {other:?}")),
                Err(e) => self.unusable(peer, e.to_string()),
            },
            Internal::Staged(peer, outcome) => match outcome {
                Ok(sent) => {
                    if let Some(node) = self.nodes.get_mut(&peer) {
                        node.staged_bytes += sent;
                        if node.phase == Phase::Staging {
                            node.phase = Phase::Ready;
                            info!(node = %node.name, cpus = node.cpus, "node staged and ready");
                            let ev =
                                ClusterEvent::NodeReady { node: node_ref(&node.name, &peer, node.ip), cpus: node.cpus };
                            self.cluster_event(ev);
                        }
                    }
                    self.dispatch();
                }
                Err(why) => self.unusable(peer, format!("staging failed: {why}")),
            },
            Internal::Submitted(peer, ids, answer) => match answer {
                Ok(Response::Accepted(_)) => {}
                // The connection broke under the request: the node is lost (and may have
                // started the jobs), which `lose` handles as any loss.
                Err(e) => self.lose(peer, &format!("the connection broke while sending jobs: {e}")),
                other => {
                    let why = match other {
                        Ok(Response::Refused(r)) => r.message,
                        Ok(r) => format!("unexpected answer to submit: {r:?}"),
                        Err(e) => e.to_string(),
                    };
                    warn!(%peer, reason = %why, jobs = ids.len(), "node did not take jobs; re-queueing them");
                    self.unusable(peer, why);
                }
            },
            Internal::LocalUp(local) => {
                self.local_starting = false;
                match local {
                    Ok(local) => {
                        let _ = self.net.dial(local.addr.clone()).await;
                        self.local = Some(local);
                        self.nodeless_since = Some(Instant::now());
                    }
                    Err(e) => self.fail(format!("could not start a local node: {e}")),
                }
            }
        }
    }

    fn on_tick(&mut self) {
        if self.failed {
            return;
        }
        let now = Instant::now();
        if self.has_node() {
            self.nodeless_since = None;
            return;
        }
        let since = *self.nodeless_since.get_or_insert(now);
        if now.duration_since(since) < self.s.discover_timeout || self.local_starting {
            return;
        }
        let never_found = self.nodes.is_empty() && self.local.is_none();
        if never_found && !self.s.named && self.s.local == LocalMode::Fallback {
            // Shown on stderr by the CLI's default log level: the user asked for nodes
            // implicitly and must learn that the jobs run here instead.
            warn!(
                "no dispy node found within {:.1} s; running the jobs on a local node on this machine",
                self.s.discover_timeout.as_secs_f64()
            );
            self.local_starting = true;
            let (tx, psk) = (self.internal_tx.clone(), self.s.psk);
            tokio::spawn(async move {
                let _ = tx.send(Internal::LocalUp(LocalNode::start(psk).await));
            });
            return;
        }
        if self.queue.is_empty() && self.jobs.is_empty() && self.submitted > 0 {
            return;
        }
        let msg = self.no_node_message();
        self.fail(msg);
    }

    fn fail(&mut self, msg: String) {
        self.failed = true;
        for job in self.jobs.values() {
            if let Some(view) = &job.view {
                view.send_modify(|v| v.cluster_error = Some(msg.clone()));
            }
        }
        let _ = self.updates.send(Update::Fatal(msg.clone()));
        self.failure = Some(msg);
        self.answer_waiters();
    }

    fn stats(&self) -> Stats {
        let nodes = self
            .order
            .iter()
            .filter_map(|p| self.nodes.get(p).map(|n| (p, n)))
            .filter(|(_, n)| n.jobs_done > 0 || n.phase == Phase::Ready)
            .map(|(p, n)| NodeStats {
                node: NodeRef { name: n.name.clone(), peer_id: p.to_string(), ip: n.ip.map(|i| i.to_string()) },
                cpus: n.cpus,
                jobs: n.jobs_done,
                job_secs: n.job_secs,
                staged_bytes: n.staged_bytes,
            })
            .collect();
        Stats { nodes, wall_secs: self.started.elapsed().as_secs_f64() }
    }

    /// Releases every node (they kill leftover jobs and delete the cluster's directories),
    /// then stops the local node and the network.
    async fn close(mut self, reply: Option<oneshot::Sender<Stats>>) {
        let stats = self.stats();
        let mut releases = Vec::new();
        for (peer, node) in &self.nodes {
            if matches!(node.phase, Phase::Lost) {
                continue;
            }
            let (net, peer) = (self.net.clone(), *peer);
            let request = Request::Release(Release { cluster: self.s.cluster });
            releases.push(async move { net.request(peer, request).await });
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(releases)).await;
        if let Some(local) = self.local.take() {
            local.stop().await;
        }
        self.net.shutdown().await;
        if let Some(reply) = reply {
            let _ = reply.send(stats);
        }
    }
}
