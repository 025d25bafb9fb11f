//! The scheduler's decisions, with no I/O: [`Core`] is fed what happened (a command from
//! the cluster handle, a network event, an answer, a tick) together with the current time,
//! and returns [`Effect`]s for the driver (`super::Scheduler`) to carry out. It never
//! spawns, sleeps, reads the clock or touches the network, so its tests drive it alone.
//!
//! Jobs (`jobs`) and nodes (`nodes`) add their halves of `impl Core` beside this file.

use super::Cmd;
use crate::error::{Found, NoNodes, Searched};
use crate::events::{ClusterEvent, JobEvent, NodeFilter};
use crate::job::{JobStatus, JobView};
use crate::report::{JobReport, NodeRef, NodeStats, NodeStatus, Stats, node_ref};
use crate::select::NodePattern;
use crate::stage::LocalFile;
use dispy_node::net::{Reach, remote_ip};
use dispy_protocol::{
    ClusterId, FileEntry, FileHash, Hello, JobId, JobResult, Refusal, RefusalKind, Release, Request, Response,
};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

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

/// Everything the core needs that is fixed for the cluster's life.
pub(crate) struct Settings {
    pub(crate) cluster: ClusterId,
    /// The hash of the cluster's owner token, sent with each Reserve: a recovering client
    /// proves ownership of the cluster's results with the token (see `journal`).
    pub(crate) owner: Option<dispy_protocol::OwnerHash>,
    /// The cluster's share token, sent with each Reserve: nodes fetch the cluster's large
    /// files from each other with it. `None`: the client sends every copy.
    pub(crate) share: Option<dispy_protocol::ShareToken>,
    pub(crate) program: String,
    /// The setup and cleanup programs' names among `files` (program clusters).
    pub(crate) setup: Option<String>,
    pub(crate) cleanup: Option<String>,
    pub(crate) files: Vec<LocalFile>,
    pub(crate) patterns: Vec<NodePattern>,
    pub(crate) cpus_per_node: Option<u32>,
    pub(crate) timeout_secs: Option<f64>,
    pub(crate) reentrant: bool,
    /// Bytes the client sends a node it reaches only through a relay; a node needing more
    /// is not used (relays must not carry datasets by surprise).
    pub(crate) relay_limit: u64,
    /// A reentrant job fails once this many nodes died while it ran there.
    pub(crate) max_retries: u32,
    pub(crate) discover_timeout: Duration,
    /// Once the cluster has run, how long it waits for a node to come back when every node
    /// is lost or unreachable, before its pending jobs are reported not run (`--wait-nodes`).
    pub(crate) wait_nodes: Duration,
    pub(crate) local: LocalMode,
    /// Where nodes are looked for, for the "no nodes" error. Nodes were named (peers,
    /// bootstrap, patterns) when it says so: then a local node is never a fallback.
    pub(crate) searched: Searched,
    /// For a function cluster: the function's registered name.
    pub(crate) function: Option<String>,
    pub(crate) node_filter: Option<NodeFilter>,
    /// Emit [`Effect::Journal`] (a journal is being written).
    pub(crate) journal: bool,
    /// Emit [`Effect::JobEvent`] / [`Effect::ClusterEvent`] (callbacks are set).
    pub(crate) job_events: bool,
    pub(crate) cluster_events: bool,
    /// Files a job leaves that match these come back (`--return`)...
    pub(crate) returns: Vec<String>,
    /// ...into `<results_dir>/<job number>/`.
    pub(crate) results_dir: PathBuf,
}

/// What the driver is asked to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Send `request` to `peer`; the answer comes back through [`Core::on_answer`] with
    /// `asked` (answers to [`Asked::Cancel`] need not).
    Ask { peer: PeerId, request: Request, asked: Asked },
    /// Send `files` to `peer` in chunks: the cluster's (`jobs` is `None`) or these jobs'
    /// inputs. The outcome comes back through [`Core::on_staged`].
    /// `addr`: where the client reaches the node (other nodes pull the cluster's files from
    /// it once it holds them).
    Stage { peer: PeerId, addr: Option<Multiaddr>, files: Vec<LocalFile>, jobs: Option<Vec<JobId>> },
    /// Fetch the files job `job` returned on `peer` into `dir`; the outcome comes back
    /// through [`Core::on_fetched`].
    Fetch { peer: PeerId, job: JobId, files: Vec<FileEntry>, dir: PathBuf },
    /// Give up that fetch: the job left the node (lost, or re-queued). What it wrote so
    /// far goes.
    StopFetch { peer: PeerId, job: JobId },
    /// Fetch a file job `job` sent while it runs, once (no retry: its result lists the
    /// file again); the outcome comes back through [`Core::on_sent_fetched`].
    FetchSent { peer: PeerId, job: JobId, file: FileEntry, dir: PathBuf },
    /// A job submitted without a handle ended: its report goes to the result stream.
    Report(Box<JobReport>),
    /// A job submitted with a handle ended: its report goes to the handle (after the
    /// effects before it, callbacks included).
    Ended { view: watch::Sender<JobView>, report: Arc<JobReport> },
    /// Answer `Cluster::wait` callers.
    Answer { waiters: Vec<oneshot::Sender<Result<(), Failure>>>, answer: Result<(), Failure> },
    /// The cluster cannot go on.
    Fail(Failure),
    /// Call the job-status callback.
    JobEvent(JobEvent),
    /// Call the cluster-status callback.
    ClusterEvent(ClusterEvent),
    /// Append to the journal.
    Journal(Entry),
    /// Start the embedded node; the outcome comes back through [`Core::on_local_node`].
    StartLocalNode,
    /// Dial a node that went away, to find out whether it is back (the outcome comes back
    /// as a connection, or not at all).
    Dial { addr: Multiaddr },
}

/// What a request was, so its answer can be routed back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Asked {
    Hello,
    Reserve,
    /// These jobs.
    Submit(Vec<JobId>),
    /// These jobs' input files.
    Declare(Vec<JobId>),
    /// Nothing waits for the answer.
    Cancel,
}

/// A journal line (see `crate::journal`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    Job {
        id: JobId,
        args: Vec<String>,
    },
    Sent {
        ids: Vec<JobId>,
        peer: PeerId,
        addr: Option<Multiaddr>,
    },
    Done(JobId),
    /// Make what was written survive a crash of this process.
    Flush,
}

/// Why the cluster stopped.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    NoNodes(Box<NoNodes>),
    LocalNode(String),
}

impl From<Failure> for crate::Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::NoNodes(n) => crate::Error::NoNodes(n),
            Failure::LocalNode(why) => crate::Error::LocalNode(why),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    Greeting,
    Reserving,
    Staging,
    Ready,
    Unusable(String),
    /// Silent since its connection broke: no new jobs, redialled, its jobs kept pending
    /// until its zombie interval (`Node::zombie`) has passed since `Node::away_since`.
    Away,
    Lost,
}

impl Phase {
    pub(super) fn status(&self) -> NodeStatus {
        match self {
            Phase::Greeting | Phase::Reserving | Phase::Staging => NodeStatus::Starting,
            Phase::Ready => NodeStatus::Ready,
            Phase::Unusable(why) => NodeStatus::Unusable(why.clone()),
            Phase::Away => NodeStatus::Unreachable,
            Phase::Lost => NodeStatus::Lost,
        }
    }
}

pub(super) struct Node {
    pub(super) ip: Option<IpAddr>,
    /// The address it was reached at, with its peer id (for the journal).
    pub(super) addr: Option<Multiaddr>,
    pub(super) name: String,
    /// `os/arch`, once greeted.
    pub(super) platform: String,
    pub(super) phase: Phase,
    pub(super) cpus: u32,
    pub(super) in_flight: HashSet<JobId>,
    pub(super) jobs_done: u64,
    pub(super) job_secs: f64,
    pub(super) staged_bytes: u64,
    /// How the client reaches it.
    pub(super) reach: Reach,
    /// It took jobs once: losing it makes the client wait and redial rather than forget.
    pub(super) was_ready: bool,
    /// Since when it has been unreachable (kept while it is greeted again, until it takes
    /// the cluster back).
    pub(super) away_since: Option<Instant>,
    /// How long it keeps a silent client's jobs (its zombie interval, from its hello).
    pub(super) zombie: Duration,
    /// What it was doing and had free when it greeted us.
    pub(super) load: Option<dispy_protocol::NodeLoad>,
}

impl Node {
    pub(super) fn node_ref(&self, peer: &PeerId) -> NodeRef {
        node_ref(&self.name, peer, self.ip)
    }
}

/// Where a job is. The node is boxed, as are a job's other rarely used parts: the client
/// holds every queued job at once (a million in a `submit_all`), and a job is 128 bytes
/// this way, not ~330 with two peer ids of 80 bytes and an empty map inline.
pub(super) enum JobState {
    Queued,
    OnNode(Box<PeerId>),
}

impl JobState {
    pub(super) fn on(peer: PeerId) -> JobState {
        JobState::OnNode(Box::new(peer))
    }

    /// The node holding the job, if any.
    pub(super) fn node(&self) -> Option<PeerId> {
        match self {
            JobState::Queued => None,
            JobState::OnNode(peer) => Some(**peer),
        }
    }
}

pub(super) struct Job {
    pub(super) args: Vec<String>,
    pub(super) input: Vec<u8>,
    /// Its node reported it running (left the node's queue).
    pub(super) started: bool,
    /// Nodes that died while it ran there.
    pub(super) attempts: u32,
    /// It was charged a node's death: it runs alone among suspects from now on.
    pub(super) suspect: bool,
    /// When it was last sent to a node (a global counter): a node runs a cluster's jobs in
    /// the order it receives them.
    pub(super) dispatched: u64,
    pub(super) state: JobState,
    pub(super) view: Option<watch::Sender<JobView>>,
    pub(super) pinned: Option<Box<PeerId>>,
    /// Its own input files (`--each-file`).
    pub(super) files: Vec<LocalFile>,
    /// Its result, held while its returned files are fetched.
    pub(super) fetching: Option<Box<JobResult>>,
    /// Files it sent while running (`dispy::send_file`) that are saved here already, by
    /// hash and name: the fetch of its returned files skips them. Boxed: 8 bytes a job
    /// instead of an empty map's 48 (see [`JobState`]).
    #[allow(clippy::box_collection)]
    pub(super) sent: Option<Box<HashMap<(FileHash, String), PathBuf>>>,
    /// Its node was asked to cancel it: if the node goes away before confirming, it ends
    /// cancelled here (the node kills it when its zombie interval ends).
    pub(super) cancel_asked: bool,
}

/// The scheduler's state; see the module docs.
pub(crate) struct Core {
    pub(super) s: Settings,
    pub(super) nodes: HashMap<PeerId, Node>,
    /// Peers in the order they joined, for stable stats.
    pub(super) order: Vec<PeerId>,
    /// Connected peers that turned out to be clients.
    pub(super) clients_seen: HashSet<PeerId>,
    pub(super) dial_failures: HashMap<Multiaddr, String>,
    /// Jobs not ended yet (boxed: a table of a million grows by copying pointers).
    pub(super) jobs: HashMap<JobId, Box<Job>>,
    /// Jobs ever submitted.
    pub(super) submitted: u64,
    pub(super) queue: VecDeque<JobId>,
    pub(super) started: Instant,
    /// Since when no node has been usable or on its way to it.
    pub(super) nodeless_since: Option<Instant>,
    /// An embedded node runs (or is starting).
    pub(super) has_local: bool,
    pub(super) local_starting: bool,
    /// Counts dispatches, to order each node's jobs as it received them.
    pub(super) dispatch_seq: u64,
    /// `Cluster::wait` callers.
    pub(super) waiters: Vec<oneshot::Sender<Result<(), Failure>>>,
    pub(super) failure: Option<Failure>,
    /// Some node has been ready: losing them all makes the cluster wait `wait_nodes`
    /// (rather than `discover_timeout`), saying so once per wait.
    pub(super) ran: bool,
    pub(super) wait_said: bool,
    /// Reentrant jobs re-queued from a node that went away, by that node: if it comes
    /// back with them still queued here, they carry on there.
    pub(super) left_behind: HashMap<PeerId, Vec<JobId>>,
    /// When nodes that went away were last redialled.
    pub(super) redialled: Option<Instant>,
    /// Jobs whose Submit (or Declare) broke with the connection, by node: it may hold them
    /// or not, so they are sent again if it comes back holding the cluster.
    pub(super) unconfirmed: HashMap<PeerId, Vec<JobId>>,
    /// What the handlers decided, taken by the driver after each input.
    pub(super) out: Vec<Effect>,
    /// Running jobs' deadlines on the client's side (see `watchdog`).
    pub(super) watchdog: super::watchdog::Watchdog,
}

impl Core {
    /// A core that starts looking for nodes at `now`; `has_local`: an embedded node was
    /// started with the cluster.
    pub(crate) fn new(s: Settings, now: Instant, has_local: bool) -> Self {
        Core {
            s,
            nodes: HashMap::new(),
            order: Vec::new(),
            clients_seen: HashSet::new(),
            dial_failures: HashMap::new(),
            jobs: HashMap::new(),
            submitted: 0,
            queue: VecDeque::new(),
            started: now,
            nodeless_since: Some(now),
            has_local,
            local_starting: false,
            dispatch_seq: 0,
            waiters: Vec::new(),
            failure: None,
            ran: false,
            wait_said: false,
            left_behind: HashMap::new(),
            redialled: None,
            unconfirmed: HashMap::new(),
            out: Vec::new(),
            watchdog: Default::default(),
        }
    }

    /// The cluster's id.
    pub(crate) fn cluster(&self) -> ClusterId {
        self.s.cluster
    }

    /// The cluster's share token, when its nodes may pass its files between them.
    pub(crate) fn share(&self) -> Option<dispy_protocol::ShareToken> {
        self.s.share
    }

    fn effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// A command from the cluster handle (all but `Close`, which the driver carries out).
    pub(crate) fn on_cmd(&mut self, cmd: Cmd, now: Instant) -> Vec<Effect> {
        match cmd {
            Cmd::Submit { jobs } => self.submit(jobs),
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
                let _ = reply.send(self.stats(now));
            }
            Cmd::Close { .. } => {}
        }
        self.effects()
    }

    /// A peer connected (first connection): a new or returning peer is greeted.
    pub(crate) fn on_connected(&mut self, peer: PeerId, remote: &Multiaddr, reach: Reach) -> Vec<Effect> {
        let fresh = self.nodes.get(&peer).is_none_or(|n| matches!(n.phase, Phase::Lost | Phase::Away));
        if self.clients_seen.contains(&peer) || !fresh {
            return self.effects();
        }
        if !self.nodes.contains_key(&peer) {
            self.order.push(peer);
        }
        // A relayed address starts with the relay's IP, not the node's (unknown then).
        let ip = if reach == Reach::Relayed { None } else { remote_ip(remote) };
        let addr = match remote.iter().last() {
            Some(Protocol::P2p(_)) => remote.clone(),
            _ => remote.clone().with(Protocol::P2p(peer)),
        };
        let node = self.nodes.entry(peer).or_insert_with(|| Node {
            ip,
            addr: None,
            name: peer.to_string(),
            platform: String::new(),
            phase: Phase::Greeting,
            cpus: 0,
            in_flight: HashSet::new(),
            jobs_done: 0,
            job_secs: 0.0,
            staged_bytes: 0,
            reach,
            was_ready: false,
            away_since: None,
            zombie: super::away::NODE_ZOMBIE,
            load: None,
        });
        node.phase = Phase::Greeting;
        node.ip = ip;
        node.addr = Some(addr);
        node.reach = reach;
        let request = Request::Hello(Hello::client(crate::host::host_name()));
        self.out.push(Effect::Ask { peer, request, asked: Asked::Hello });
        self.effects()
    }

    /// A node's path changed (a late hole punch made a relayed link direct).
    pub(crate) fn on_reached(&mut self, peer: PeerId, reach: Reach, remote: &Multiaddr) -> Vec<Effect> {
        if let Some(node) = self.nodes.get_mut(&peer) {
            debug!(node = %node.name, %peer, %reach, "node's path changed");
            node.reach = reach;
            if reach != Reach::Relayed {
                node.ip = remote_ip(remote);
            }
        }
        self.effects()
    }

    /// The last connection to a peer closed: a node that took jobs is waited for (see
    /// [`Phase::Away`]), any other is lost.
    pub(crate) fn on_disconnected(&mut self, peer: PeerId, now: Instant) -> Vec<Effect> {
        self.went_away(peer, now, "its connection closed");
        self.effects()
    }

    /// A dial failed: kept for the "no nodes" error. `refused`: the address answered that
    /// nothing listens there, so a node away at that address has stopped (see
    /// [`Core::refused`]).
    pub(crate) fn on_dial_failed(&mut self, addr: Multiaddr, reason: String, refused: bool) -> Vec<Effect> {
        if refused {
            self.refused(&addr);
        }
        self.dial_failures.insert(addr, reason);
        self.effects()
    }

    /// A peer asks something: nodes send results and job starts. Returns the answer.
    pub(crate) fn on_request(&mut self, peer: PeerId, request: Request) -> (Response, Vec<Effect>) {
        let response = match request {
            Request::Results(r) if r.cluster == self.s.cluster => {
                self.on_started(peer, r.started);
                self.on_provisional(peer, r.provisional);
                self.on_results(peer, r.results);
                if self.s.journal {
                    self.out.push(Effect::Journal(Entry::Flush));
                }
                Response::Ok
            }
            Request::Hello(_) => Response::Hello(Hello::client(crate::host::host_name())),
            _ => Response::Refused(Refusal::new(RefusalKind::WrongRole, "this peer is a client; it runs no jobs")),
        };
        self.dispatch();
        (response, self.effects())
    }

    /// The answer to an [`Effect::Ask`] (`Err`: why the request failed).
    pub(crate) fn on_answer(
        &mut self,
        peer: PeerId,
        asked: Asked,
        answer: Result<Response, String>,
        now: Instant,
    ) -> Vec<Effect> {
        match asked {
            Asked::Hello => match answer {
                Ok(Response::Hello(h)) => self.on_hello(peer, h),
                Ok(other) => self.unusable(peer, format!("unexpected answer to hello: {other:?}")),
                // A peer that does not speak dispy (or left at once) is not a node.
                Err(e) => {
                    debug!(%peer, cause = %e, "hello failed");
                    self.nodes.remove(&peer);
                    self.order.retain(|p| *p != peer);
                }
            },
            Asked::Reserve => match answer {
                Ok(Response::Reserved(r)) => self.on_reserved(peer, r),
                Ok(Response::Refused(r)) => self.unusable(peer, r.message),
                Ok(other) => self.unusable(peer, format!("unexpected answer to reserve: {other:?}")),
                Err(e) => self.unusable(peer, e),
            },
            Asked::Submit(ids) => match answer {
                Ok(Response::Accepted(_)) => {}
                // The connection broke under the request (a partition, or the node died):
                // the node goes away as on a closed connection (see `away`).
                Err(e) => self.unconfirmed(peer, ids, now, &format!("the connection broke while sending jobs: {e}")),
                Ok(other) => {
                    let why = match other {
                        Response::Refused(r) => r.message,
                        r => format!("unexpected answer to submit: {r:?}"),
                    };
                    warn!(%peer, reason = %why, jobs = ids.len(), "node did not take jobs; re-queueing them");
                    self.unusable(peer, why);
                }
            },
            Asked::Declare(ids) => match answer {
                Ok(Response::Declared(d)) => self.on_declared(peer, ids, d.missing),
                Ok(Response::Refused(r)) => self.unusable(peer, r.message),
                Ok(other) => self.unusable(peer, format!("unexpected answer to declare: {other:?}")),
                Err(e) => {
                    self.unconfirmed(peer, ids, now, &format!("the connection broke while declaring job files: {e}"))
                }
            },
            Asked::Cancel => {}
        }
        self.effects()
    }

    /// Staging a node ended: bytes sent, or why it failed. `jobs`: as in [`Effect::Stage`].
    pub(crate) fn on_staged(
        &mut self,
        peer: PeerId,
        jobs: Option<Vec<JobId>>,
        outcome: Result<u64, String>,
    ) -> Vec<Effect> {
        if let Some(jobs) = jobs {
            self.on_inputs_staged(peer, jobs, outcome);
            return self.effects();
        }
        match outcome {
            Ok(sent) => {
                if let Some(node) = self.nodes.get_mut(&peer) {
                    node.staged_bytes += sent;
                    if node.phase == Phase::Staging {
                        self.ready(peer, "node staged and ready");
                    }
                }
                self.dispatch();
            }
            Err(why) => self.unusable(peer, format!("staging failed: {why}")),
        }
        self.effects()
    }

    /// Job inputs this machine could not read while staging them to `peer`: the jobs of
    /// `jobs` that need one fail (the node is not to blame); call before [`Core::on_staged`].
    pub(crate) fn on_inputs_unreadable(
        &mut self,
        peer: PeerId,
        jobs: &[JobId],
        unreadable: &[(FileHash, String)],
    ) -> Vec<Effect> {
        self.inputs_unreadable(peer, jobs, unreadable);
        self.effects()
    }

    /// Fetching a job's returned files ended: the paths saved, and why others were not.
    pub(crate) fn on_fetched(
        &mut self,
        peer: PeerId,
        job: JobId,
        saved: Vec<PathBuf>,
        failed: Vec<String>,
    ) -> Vec<Effect> {
        self.fetched(peer, job, saved, failed);
        self.effects()
    }

    /// A file a running job sent was fetched (`Ok`, where it was saved) or not.
    pub(crate) fn on_sent_fetched(
        &mut self,
        peer: PeerId,
        job: JobId,
        file: FileEntry,
        saved: Result<PathBuf, String>,
    ) -> Vec<Effect> {
        self.sent_fetched(peer, job, file, saved);
        self.effects()
    }

    /// The embedded node asked for by [`Effect::StartLocalNode`] is up (and dialled), or
    /// could not start.
    pub(crate) fn on_local_node(&mut self, outcome: Result<(), String>, now: Instant) -> Vec<Effect> {
        self.local_starting = false;
        match outcome {
            Ok(()) => {
                self.has_local = true;
                self.nodeless_since = Some(now);
            }
            Err(e) => self.fail(Failure::LocalNode(format!("could not start a local node: {e}"))),
        }
        self.effects()
    }

    /// Time passed: nodes away too long are lost, the others redialled; with no usable
    /// node for the discovery timeout (or, once the cluster ran, `wait_nodes`), fall back
    /// to a local node or fail.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Vec<Effect> {
        if self.failure.is_some() {
            return self.effects();
        }
        self.expire_away(now);
        self.redial(now);
        self.watch_overdue(now);
        if self.has_node() {
            self.nodeless_since = None;
            self.wait_said = false;
            return self.effects();
        }
        let since = *self.nodeless_since.get_or_insert(now);
        let waiting = self.waiting_for_nodes();
        let limit = if waiting { self.s.wait_nodes } else { self.s.discover_timeout };
        if waiting && !self.wait_said && !self.jobs.is_empty() {
            self.wait_said = true;
            // On stderr at the CLI's default log level: the user sees why nothing moves.
            warn!(
                pending = self.jobs.len(),
                "every node is lost or unreachable; waiting up to {:.0} s for one to come back (--wait-nodes)",
                limit.as_secs_f64()
            );
        }
        if now.duration_since(since) < limit || self.local_starting {
            return self.effects();
        }
        let never_found = self.nodes.is_empty() && !self.has_local;
        if never_found && !self.s.searched.named() && self.s.local == LocalMode::Fallback {
            // Shown on stderr by the CLI's default log level: the user asked for nodes
            // implicitly and must learn that the jobs run here instead.
            warn!(
                "no dispy node found within {:.1} s; running the jobs on a local node on this machine",
                self.s.discover_timeout.as_secs_f64()
            );
            self.local_starting = true;
            self.out.push(Effect::StartLocalNode);
            return self.effects();
        }
        if self.queue.is_empty() && self.jobs.is_empty() && self.submitted > 0 {
            return self.effects();
        }
        let failure = Failure::NoNodes(Box::new(self.no_nodes()));
        self.fail(failure);
        self.effects()
    }

    /// The cluster cannot go on: the failure is told first, then every pending job ends
    /// with a report (not run, or abandoned on the node that had it), so none is forgotten.
    pub(super) fn fail(&mut self, failure: Failure) {
        let why = failure.why();
        self.out.push(Effect::Fail(failure.clone()));
        self.failure = Some(failure);
        self.end_pending(&why);
        self.answer_waiters();
    }

    /// With no usable node, whether to wait `wait_nodes` for one to come back: some node
    /// that ran jobs is lost or unreachable. Nodes found unusable (a setup that failed)
    /// will not come back: then only the discovery timeout applies.
    fn waiting_for_nodes(&self) -> bool {
        self.ran && self.nodes.values().any(|n| n.was_ready && matches!(n.phase, Phase::Away | Phase::Lost))
    }

    /// What was searched and found, when no node is usable.
    pub(super) fn no_nodes(&self) -> NoNodes {
        let mut found: Vec<Found> = self
            .dial_failures
            .iter()
            .map(|(addr, why)| Found::DialFailed { addr: addr.clone(), reason: why.clone() })
            .collect();
        for peer in &self.order {
            if let Some(n) = self.nodes.get(peer) {
                found.push(Found::Node { node: n.node_ref(peer), status: n.phase.status() });
            }
        }
        if !self.clients_seen.is_empty() {
            found.push(Found::Clients(self.clients_seen.len()));
        }
        let after_run = self.waiting_for_nodes();
        let waited = if after_run { self.s.wait_nodes } else { self.s.discover_timeout };
        NoNodes { waited, searched: self.s.searched.clone(), found, after_run }
    }

    /// dispy's `stats()` figures as of `now`.
    pub(crate) fn stats(&self, now: Instant) -> Stats {
        let nodes = self
            .order
            .iter()
            .filter_map(|p| self.nodes.get(p).map(|n| (p, n)))
            .filter(|(_, n)| n.jobs_done > 0 || n.phase == Phase::Ready)
            .map(|(p, n)| NodeStats {
                node: n.node_ref(p),
                cpus: n.cpus,
                jobs: n.jobs_done,
                job_secs: n.job_secs,
                staged_bytes: n.staged_bytes,
                reach: n.reach,
            })
            .collect();
        Stats { nodes, wall_secs: now.saturating_duration_since(self.started).as_secs_f64() }
    }

    /// Jobs submitted and not ended yet (queued, sent or running): a closing cluster waits
    /// for this to reach 0 before it releases its nodes.
    pub(crate) fn pending(&self) -> usize {
        self.jobs.len()
    }

    /// Whether the cluster failed (no node in time, no local node): its pending jobs can
    /// never end, so closing does not wait for them.
    pub(crate) fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// The requests that release every node still reachable (the cluster is closing).
    pub(crate) fn releases(&self) -> Vec<(PeerId, Request)> {
        self.nodes
            .iter()
            .filter(|(_, n)| !matches!(n.phase, Phase::Lost | Phase::Away))
            .map(|(peer, _)| (*peer, Request::Release(Release { cluster: self.s.cluster })))
            .collect()
    }

    pub(super) fn job_event(&mut self, id: JobId, status: JobStatus, node: Option<NodeRef>) {
        if self.s.job_events {
            self.out.push(Effect::JobEvent(JobEvent { id, status, node, provisional: None }));
        }
    }

    pub(super) fn cluster_event(&mut self, ev: ClusterEvent) {
        if self.s.cluster_events {
            self.out.push(Effect::ClusterEvent(ev));
        }
    }
}
