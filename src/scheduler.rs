//! The scheduler: one task per cluster that finds nodes, reserves and stages them, keeps
//! their CPU slots busy and gathers results. The [`crate::Cluster`] handle talks to it over
//! channels; it talks to the network through a [`NetHandle`].
//!
//! A node goes Greeting → Reserving → Staging → Ready; any refusal makes it Unusable with
//! the reason kept for error messages; losing its connection makes it Lost (its jobs are
//! re-queued when the cluster is reentrant, abandoned otherwise).

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

    fn unusable(&mut self, peer: PeerId, why: String) {
        if let Some(node) = self.nodes.get_mut(&peer) {
            warn!(node = %node.name, %peer, reason = %why, "node not used");
            node.phase = Phase::Unusable(why.clone());
            let node = node_ref(&node.name, &peer, node.ip);
            self.cluster_event(ClusterEvent::NodeUnusable { node, reason: why });
        }
        self.requeue_from(peer);
    }

    fn cluster_event(&self, ev: ClusterEvent) {
        if let Some(cb) = &self.s.on_cluster {
            cb(&ev);
        }
    }

    fn job_event(&self, id: JobId, status: JobStatus, node: Option<NodeRef>) {
        if let Some(cb) = &self.s.on_job {
            cb(&JobEvent { id, status, node });
        }
    }

    fn node_ref(&self, peer: &PeerId) -> Option<NodeRef> {
        self.nodes.get(peer).map(|n| node_ref(&n.name, peer, n.ip))
    }

    /// A job ended: its report goes to its handle (or the result stream) and callbacks.
    fn finish(&mut self, report: JobReport) {
        let id = report.id;
        let status = JobStatus::of(&report.outcome);
        let node = report.node.clone();
        // An ended job is forgotten: the client's memory stays flat however many jobs run,
        // and a late or repeated result finds nothing to finish.
        let Some(job) = self.jobs.remove(&id) else { return };
        self.pending -= 1;
        if let Some(journal) = &mut self.s.journal {
            journal.done(id);
        }
        match &job.view {
            Some(view) => {
                let report = Arc::new(report);
                view.send_modify(|v| {
                    v.status = status;
                    v.node = report.node.clone();
                    v.report = Some(report);
                });
            }
            None => {
                let _ = self.updates.send(Update::Job(Box::new(report)));
            }
        }
        self.job_event(id, status, node);
        self.answer_waiters();
    }

    fn answer_waiters(&mut self) {
        if self.pending == 0 || self.failure.is_some() {
            let answer = self.failure.clone().map_or(Ok(()), Err);
            for w in self.waiters.drain(..) {
                let _ = w.send(answer.clone());
            }
        }
    }

    fn node_infos(&self) -> Vec<NodeInfo> {
        self.order
            .iter()
            .filter_map(|p| self.nodes.get(p).map(|n| (p, n)))
            .map(|(p, n)| NodeInfo {
                node: node_ref(&n.name, p, n.ip),
                platform: n.platform.clone(),
                cpus: n.cpus,
                status: match &n.phase {
                    Phase::Greeting | Phase::Reserving | Phase::Staging => "starting".to_string(),
                    Phase::Ready => "ready".to_string(),
                    Phase::Unusable(why) => format!("unusable: {why}"),
                    Phase::Lost => "lost".to_string(),
                },
                jobs_done: n.jobs_done,
            })
            .collect()
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

    fn on_hello(&mut self, peer: PeerId, h: Hello) {
        if h.role != Role::Node {
            self.clients_seen.insert(peer);
            self.nodes.remove(&peer);
            self.order.retain(|p| *p != peer);
            return;
        }
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        node.name = h.name.clone();
        node.platform = format!("{}/{}", h.os, h.arch);
        let found = node_ref(&node.name, &peer, node.ip);
        self.cluster_event(ClusterEvent::NodeFound(found));
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        if h.wire_version != WIRE_VERSION {
            let why = format!(
                "speaks dispy protocol version {} (dispy-peer {}), this client speaks version {WIRE_VERSION} (dispy-peer {})",
                h.wire_version,
                h.software,
                env!("CARGO_PKG_VERSION")
            );
            return self.unusable(peer, why);
        }
        let ip = node.ip.map(|i| i.to_string());
        if !self.s.patterns.is_empty()
            && !self.s.patterns.iter().any(|p| p.matches(ip.as_deref(), &peer.to_string(), &h.name))
        {
            return self.unusable(peer, "not selected by --nodes".into());
        }
        if h.cpus == 0 {
            return self.unusable(peer, "serves no CPUs".into());
        }
        if let Some(filter) = &self.s.node_filter {
            let facts = NodeFacts {
                name: h.name.clone(),
                peer_id: peer.to_string(),
                ip: node.ip.map(|i| i.to_string()),
                os: h.os.clone(),
                arch: h.arch.clone(),
                cpus: h.cpus,
                memory_bytes: h.memory_bytes,
            };
            if !filter(&facts) {
                return self.unusable(peer, "rejected by the cluster's node filter".into());
            }
        }
        let here = format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH);
        if self.s.function.is_some() && node.platform != here {
            // A function travels as this program's compiled code: it runs only where this
            // binary does.
            let why = format!("runs {}, but this program's functions are built for {here}", node.platform);
            return self.unusable(peer, why);
        }
        node.phase = Phase::Reserving;
        let reserve = Request::Reserve(Reserve {
            cluster: self.s.cluster,
            cpus: self.s.cpus_per_node,
            program: self.s.program.clone(),
            function: self.s.function.clone(),
            files: self.s.files.iter().map(|f| f.entry.clone()).collect(),
        });
        self.spawn_request(peer, reserve, Internal::Reserved);
    }

    /// The node started these jobs: they are running (and count an attempt if it dies).
    fn on_started(&mut self, peer: PeerId, started: Vec<JobId>) {
        let node = self.node_ref(&peer);
        for id in started {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            if !matches!(job.state, JobState::OnNode(p) if p == peer) || job.started {
                continue;
            }
            job.started = true;
            if let Some(view) = &job.view {
                view.send_modify(|v| {
                    v.status = JobStatus::Running;
                    v.node = node.clone();
                });
            }
            self.job_event(id, JobStatus::Running, node.clone());
        }
    }

    fn on_results(&mut self, peer: PeerId, results: Vec<JobResult>) {
        for r in results {
            let Some(job) = self.jobs.get_mut(&r.id) else { continue };
            // Only the node the job is on may finish it: a late or repeated result is
            // dropped, so each job is reported once.
            if !matches!(job.state, JobState::OnNode(p) if p == peer) {
                continue;
            }
            if let JobOutcome::Declined(why) = &r.outcome {
                // The node gave it back unrun (draining): it goes elsewhere, no attempt spent.
                debug!(job = %r.id, reason = %why, "job given back");
                job.state = JobState::Queued;
                job.started = false;
                self.queue.push_front(r.id);
                if let Some(node) = self.nodes.get_mut(&peer) {
                    node.in_flight.remove(&r.id);
                    if node.phase == Phase::Ready {
                        node.phase = Phase::Unusable(why.clone());
                    }
                }
                continue;
            }
            let args = job.args.clone();
            let Some(node) = self.nodes.get_mut(&peer) else { continue };
            node.in_flight.remove(&r.id);
            node.jobs_done += 1;
            node.job_secs += r.end_us.saturating_sub(r.start_us) as f64 / 1e6;
            let report = JobReport {
                id: r.id,
                args,
                node: Some(node_ref(&node.name, &peer, node.ip)),
                outcome: r.outcome,
                stdout: r.stdout.bytes,
                stdout_truncated: r.stdout.truncated,
                stderr: r.stderr.bytes,
                stderr_truncated: r.stderr.truncated,
                start_us: r.start_us,
                end_us: r.end_us,
                value: r.value,
            };
            self.finish(report);
        }
    }

    /// Hands queued jobs to ready nodes with free capacity.
    fn dispatch(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let ready: Vec<PeerId> =
            self.order.iter().filter(|p| self.nodes.get(p).is_some_and(|n| n.phase == Phase::Ready)).copied().collect();
        let loads: Vec<Load> = ready
            .iter()
            .filter_map(|p| self.nodes.get(p))
            .map(|n| Load {
                cpus: n.cpus,
                in_flight: n.in_flight.len(),
                mean_job_secs: (n.jobs_done > 0).then(|| n.job_secs / n.jobs_done as f64),
            })
            .collect();
        let plan = policy::plan(&loads, self.queue.len());
        for (peer, count) in ready.into_iter().zip(plan) {
            if count == 0 {
                continue;
            }
            let mut specs = Vec::with_capacity(count);
            let mut skipped = Vec::new();
            // A suspect (a job whose node died while it ran) goes only to a node with a free
            // slot and no other suspect: it starts at once and alone among suspects, so the
            // next death is charged to the right job.
            let (cpus, mut load, mut has_suspect) = match self.nodes.get(&peer) {
                Some(n) => (
                    n.cpus.max(1) as usize,
                    n.in_flight.len(),
                    n.in_flight.iter().any(|id| self.jobs.get(id).is_some_and(|j| j.suspect)),
                ),
                None => continue,
            };
            while specs.len() < count {
                let Some(id) = self.queue.pop_front() else { break };
                let Some(job) = self.jobs.get_mut(&id) else { continue };
                if job.pinned.is_some_and(|p| p != peer) || (job.suspect && (has_suspect || load >= cpus)) {
                    skipped.push(id);
                    continue;
                }
                has_suspect |= job.suspect;
                load += 1;
                job.state = JobState::OnNode(peer);
                self.dispatch_seq += 1;
                job.dispatched = self.dispatch_seq;
                specs.push(JobSpec {
                    id,
                    args: job.args.clone(),
                    timeout_secs: self.s.timeout_secs,
                    input: job.input.clone(),
                });
            }
            for id in skipped.into_iter().rev() {
                self.queue.push_front(id);
            }
            if specs.is_empty() {
                continue;
            }
            let ids: Vec<JobId> = specs.iter().map(|j| j.id).collect();
            if let Some(node) = self.nodes.get_mut(&peer) {
                node.in_flight.extend(ids.iter().copied());
                if let Some(journal) = &mut self.s.journal {
                    journal.sent(&ids, &peer, node.addr.as_ref());
                    journal.flush();
                }
            }
            let (net, tx) = (self.net.clone(), self.internal_tx.clone());
            let request = Request::Submit(Submit { cluster: self.s.cluster, jobs: specs });
            tokio::spawn(async move {
                let answer = net.request(peer, request).await;
                let _ = tx.send(Internal::Submitted(peer, ids, answer));
            });
        }
    }

    /// Puts a node's unfinished jobs back in the queue (front, in order).
    fn requeue_from(&mut self, peer: PeerId) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        let mut ids: Vec<JobId> = node.in_flight.drain().collect();
        ids.sort();
        for id in ids.into_iter().rev() {
            if let Some(job) = self.jobs.get_mut(&id)
                && matches!(job.state, JobState::OnNode(p) if p == peer)
            {
                job.state = JobState::Queued;
                self.queue.push_front(id);
            }
        }
        self.dispatch();
    }

    fn lose(&mut self, peer: PeerId, why: &str) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        if matches!(node.phase, Phase::Unusable(_) | Phase::Lost) {
            node.phase = Phase::Lost;
            return;
        }
        node.phase = Phase::Lost;
        let name = node.name.clone();
        let ip = node.ip;
        self.cluster_event(ClusterEvent::NodeLost { node: node_ref(&name, &peer, ip), reason: why.to_string() });
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        if node.in_flight.is_empty() {
            info!(node = %name, %peer, reason = why, "node lost");
            return;
        }
        warn!(node = %name, %peer, reason = why, jobs = node.in_flight.len(), reentrant = self.s.reentrant, "node lost with jobs on it");
        if self.s.reentrant {
            // Jobs that were running count an attempt; one that has now been running on
            // max_retries nodes that all died is suspected of killing them and fails, so a
            // poison job cannot take the whole cluster down.
            // Running: those the node reported started, and — as it may have died before
            // saying so — the first `cpus` it received (it runs them in that order).
            let mut in_flight: Vec<(u64, JobId)> =
                node.in_flight.iter().filter_map(|id| self.jobs.get(id).map(|j| (j.dispatched, *id))).collect();
            in_flight.sort();
            let cpus = node.cpus.max(1) as usize;
            let mut poison = Vec::new();
            for (i, (_, id)) in in_flight.into_iter().enumerate() {
                let Some(job) = self.jobs.get_mut(&id) else { continue };
                if job.started || i < cpus {
                    job.attempts += 1;
                    job.suspect = true;
                    if job.attempts >= self.s.max_retries {
                        poison.push((id, job.attempts, job.args.clone()));
                    }
                }
                job.started = false;
            }
            for (id, attempts, args) in poison {
                if let Some(node) = self.nodes.get_mut(&peer) {
                    node.in_flight.remove(&id);
                }
                let outcome = JobOutcome::Crashed(format!(
                    "it was running on {attempts} nodes that all died (the last: {name}); giving up after max_retries {}",
                    self.s.max_retries
                ));
                warn!(job = %id, attempts, "giving up on a job whose nodes keep dying");
                self.finish(JobReport::unrun(id, args, Some(node_ref(&name, &peer, ip)), outcome));
            }
            self.requeue_from(peer);
            return;
        }
        let mut ids: Vec<JobId> = node.in_flight.drain().collect();
        ids.sort();
        for id in ids {
            let Some(job) = self.jobs.get(&id) else { continue };
            let outcome = JobOutcome::Abandoned(format!("node {name} was lost: {why}"));
            let report = JobReport::unrun(id, job.args.clone(), Some(node_ref(&name, &peer, ip)), outcome);
            self.finish(report);
        }
    }

    fn cancel(&mut self, ids: Vec<JobId>) {
        let mut per_node: HashMap<PeerId, Vec<JobId>> = HashMap::new();
        let mut queued = HashSet::new();
        for id in ids {
            let Some(job) = self.jobs.get(&id) else { continue };
            match job.state {
                JobState::Queued => {
                    queued.insert(id);
                }
                JobState::OnNode(peer) => per_node.entry(peer).or_default().push(id),
            }
        }
        // One pass over the queue, however many jobs are cancelled.
        self.queue.retain(|q| !queued.contains(q));
        let mut queued: Vec<JobId> = queued.into_iter().collect();
        queued.sort();
        for id in queued {
            let args = self.jobs.get(&id).map(|j| j.args.clone()).unwrap_or_default();
            self.finish(JobReport::unrun(id, args, None, JobOutcome::Cancelled));
        }
        for (peer, jobs) in per_node {
            let request = Request::Cancel(Cancel { cluster: self.s.cluster, jobs });
            let net = self.net.clone();
            tokio::spawn(async move {
                let _ = net.request(peer, request).await;
            });
        }
    }

    /// Whether some node is usable or on its way to it.
    fn has_node(&self) -> bool {
        self.nodes
            .values()
            .any(|n| matches!(n.phase, Phase::Greeting | Phase::Reserving | Phase::Staging | Phase::Ready))
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

    fn no_node_message(&self) -> String {
        let mut msg = format!(
            "no usable dispy node found within {:.1} s (--discover-timeout).\n  searched: {}",
            self.s.discover_timeout.as_secs_f64(),
            self.s.searched
        );
        let mut found = Vec::new();
        for (addr, why) in &self.dial_failures {
            found.push(format!("{addr}: {why}"));
        }
        for peer in &self.order {
            let Some(n) = self.nodes.get(peer) else { continue };
            let ip = n.ip.map(|i| format!(" at {i}")).unwrap_or_default();
            let state = match &n.phase {
                Phase::Unusable(why) => why.clone(),
                Phase::Lost => "lost".to_string(),
                _ => "usable".to_string(),
            };
            found.push(format!("node {}{ip}: {state}", n.name));
        }
        if !self.clients_seen.is_empty() {
            found.push(format!("{} other client(s), which run no jobs", self.clients_seen.len()));
        }
        if found.is_empty() {
            msg.push_str(
                "\n  found: nothing. Is `dispy-peer serve` running, with the same secret, reachable from here?",
            );
        } else {
            msg.push_str("\n  found:");
            for f in found {
                msg.push_str("\n    - ");
                msg.push_str(&f);
            }
        }
        msg
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
