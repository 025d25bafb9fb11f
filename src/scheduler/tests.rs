//! The scheduler's core driven alone: no network, no task, no clock. Every request the core
//! asks for and every answer and request it is given passes through the real CBOR codec,
//! as it would on the wire. Time is passed in.

use super::core::{Asked, Entry, JobState};
use super::{Cmd, Core, Effect, Failure, LocalMode, NewJob, Settings};
use crate::error::{Found, Searched};
use crate::events::ClusterEvent;
use crate::job::{JobStatus, JobView};
use crate::report::{JobReport, NodeStatus};
use crate::select::NodePattern;
use crate::stage::LocalFile;
use dispy_node::net::Reach;
use dispy_protocol::{
    Accepted, ClusterId, FileEntry, FileHash, Hello, JobId, JobOutcome, JobResult, Output, Refusal, RefusalKind,
    Request, Reserved, Response, Results, Submit, decode, encode,
};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

const CLUSTER: ClusterId = ClusterId(0xc1);

/// What travels, after a trip through the codec.
fn wire<T: Serialize + DeserializeOwned>(v: &T) -> T {
    decode(&encode(v).expect("encodes")).expect("decodes")
}

fn peer(n: u8) -> PeerId {
    Keypair::ed25519_from_bytes([n; 32]).expect("key").public().to_peer_id()
}

fn addr(n: u8) -> Multiaddr {
    format!("/ip4/127.0.0.{n}/tcp/9700").parse().expect("addr")
}

fn file(name: &str, byte: u8, size: u64) -> LocalFile {
    LocalFile {
        path: name.into(),
        entry: FileEntry { name: name.into(), hash: FileHash([byte; 32]), size, executable: name == "prog" },
    }
}

mod partition;
mod provisional;
mod trust;

fn settings() -> Settings {
    Settings {
        owner: None,
        share: None,
        cluster: CLUSTER,
        program: "prog".into(),
        setup: None,
        cleanup: None,
        files: vec![file("prog", 1, 100), file("data.txt", 2, 5000)],
        patterns: Vec::new(),
        cpus_per_node: None,
        timeout_secs: None,
        reentrant: false,
        relay_limit: crate::builder::DEFAULT_RELAY_LIMIT,
        max_retries: 3,
        discover_timeout: Duration::from_secs(3),
        wait_nodes: Duration::from_secs(60),
        local: LocalMode::Never,
        searched: Searched { mdns: true, ..Searched::default() },
        function: None,
        node_filter: None,
        journal: true,
        job_events: true,
        cluster_events: true,
        returns: Vec::new(),
        results_dir: "results".into(),
    }
}

fn exited(id: JobId, code: i32) -> JobResult {
    JobResult {
        id,
        outcome: JobOutcome::Exited(code),
        stdout: Output { bytes: format!("out {}", id.0).into_bytes(), truncated: 0 },
        stderr: Output::default(),
        start_us: 1_000_000,
        end_us: 1_500_000,
        value: Vec::new(),
        returned: Vec::new(),
        return_note: None,
    }
}

/// The core, and what it asked for so far.
struct Sim {
    core: Core,
    t0: Instant,
    asks: VecDeque<(PeerId, Request, Asked)>,
    stages: Vec<(PeerId, Vec<LocalFile>, Option<Vec<JobId>>)>,
    fetches: Vec<(PeerId, JobId, Vec<FileEntry>, std::path::PathBuf)>,
    stopped_fetches: Vec<(PeerId, JobId)>,
    /// Files running jobs sent, to fetch at once.
    sent_fetches: Vec<(PeerId, JobId, FileEntry, std::path::PathBuf)>,
    reports: Vec<JobReport>,
    failures: Vec<Failure>,
    cluster_events: Vec<ClusterEvent>,
    job_events: Vec<(JobId, JobStatus)>,
    /// Provisional values the job-status callback saw.
    provisionals: Vec<(JobId, Vec<u8>)>,
    journal: Vec<Entry>,
    local_starts: usize,
    /// Addresses the core asked to dial again.
    dials: Vec<libp2p::Multiaddr>,
    next_job: u64,
}

impl Sim {
    fn new(s: Settings) -> Sim {
        let t0 = Instant::now();
        Sim {
            core: Core::new(s, t0, false),
            t0,
            asks: VecDeque::new(),
            stages: Vec::new(),
            fetches: Vec::new(),
            stopped_fetches: Vec::new(),
            sent_fetches: Vec::new(),
            reports: Vec::new(),
            failures: Vec::new(),
            cluster_events: Vec::new(),
            job_events: Vec::new(),
            provisionals: Vec::new(),
            journal: Vec::new(),
            local_starts: 0,
            dials: Vec::new(),
            next_job: 0,
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs)
    }

    fn absorb(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Ask { peer, request, asked } => self.asks.push_back((peer, wire(&request), asked)),
                Effect::Stage { peer, files, jobs, .. } => self.stages.push((peer, files, jobs)),
                Effect::Fetch { peer, job, files, dir } => self.fetches.push((peer, job, files, dir)),
                Effect::StopFetch { peer, job } => self.stopped_fetches.push((peer, job)),
                Effect::FetchSent { peer, job, file, dir } => self.sent_fetches.push((peer, job, file, dir)),
                Effect::Report(r) => self.reports.push(*r),
                Effect::Ended { view, report } => super::end_job(&view, report),
                Effect::Answer { waiters, answer } => {
                    for w in waiters {
                        let _ = w.send(answer.clone());
                    }
                }
                Effect::Fail(f) => self.failures.push(f),
                Effect::JobEvent(ev) => {
                    self.job_events.push((ev.id, ev.status));
                    self.provisionals.extend(ev.provisional.map(|v| (ev.id, v)));
                }
                Effect::ClusterEvent(ev) => self.cluster_events.push(ev),
                Effect::Journal(entry) => self.journal.push(entry),
                Effect::StartLocalNode => self.local_starts += 1,
                Effect::Dial { addr } => self.dials.push(addr),
            }
        }
    }

    /// Takes the oldest request asked of `peer`.
    fn ask_of(&mut self, peer: PeerId) -> (Request, Asked) {
        let pos = self.asks.iter().position(|(p, _, _)| *p == peer).expect("a request for the peer");
        let (_, request, asked) = self.asks.remove(pos).expect("present");
        (request, asked)
    }

    fn answer(&mut self, peer: PeerId, asked: Asked, response: Response) {
        let effects = self.core.on_answer(peer, asked, Ok(wire(&response)), self.t0);
        self.absorb(effects);
    }

    fn connect(&mut self, n: u8) -> PeerId {
        let p = peer(n);
        let effects = self.core.on_connected(p, &addr(n), Reach::Direct);
        self.absorb(effects);
        p
    }

    /// Connects peer `n` and answers the client's hello with `hello`.
    fn greet(&mut self, n: u8, hello: Hello) -> PeerId {
        let p = self.connect(n);
        let (request, asked) = self.ask_of(p);
        assert!(matches!(request, Request::Hello(ref h) if h.role == dispy_protocol::Role::Client), "{request:?}");
        self.answer(p, asked, Response::Hello(hello));
        p
    }

    /// Greets node `n` and takes the reserve it is asked.
    fn reserving(&mut self, n: u8, cpus: u32) -> PeerId {
        let p = self.greet(n, Hello::node(format!("node{n}"), cpus, cpus, None, None));
        let (request, asked) = self.ask_of(p);
        assert_eq!(asked, Asked::Reserve, "{request:?}");
        p
    }

    /// Connects node `n`, greets it and reserves it with nothing missing.
    fn node_up(&mut self, n: u8, cpus: u32) -> PeerId {
        let p = self.greet(n, Hello::node(format!("node{n}"), cpus, cpus, None, None));
        let (request, asked) = self.ask_of(p);
        let Request::Reserve(r) = request else { panic!("expected a reserve, got {request:?}") };
        assert_eq!((r.cluster, r.program.as_str(), r.files.len()), (CLUSTER, "prog", 2));
        self.answer(p, asked, Response::Reserved(Reserved { cpus, missing: Vec::new(), resumed: false }));
        p
    }

    fn submit(&mut self, n: usize) -> Vec<JobId> {
        self.submit_jobs(n, None, false).into_iter().map(|(id, _)| id).collect()
    }

    fn submit_jobs(
        &mut self,
        n: usize,
        node: Option<PeerId>,
        handles: bool,
    ) -> Vec<(JobId, Option<watch::Receiver<JobView>>)> {
        let mut jobs = Vec::new();
        let mut out = Vec::new();
        for _ in 0..n {
            let id = JobId(self.next_job);
            self.next_job += 1;
            let (view, rx) = match handles {
                true => {
                    let (tx, rx) = watch::channel(JobView::created());
                    (Some(tx), Some(rx))
                }
                false => (None, None),
            };
            jobs.push(NewJob::new(id, vec![id.0.to_string()], Vec::new(), view, node));
            out.push((id, rx));
        }
        let effects = self.core.on_cmd(Cmd::Submit { jobs }, self.t0);
        self.absorb(effects);
        out
    }

    /// Takes every Submit asked so far, per node.
    fn submits(&mut self) -> Vec<(PeerId, Submit, Asked)> {
        let mut out = Vec::new();
        self.asks.retain(|(p, r, a)| match r {
            Request::Submit(s) => {
                out.push((*p, s.clone(), a.clone()));
                false
            }
            _ => true,
        });
        out
    }

    /// The node sends starts and results; returns the client's answer.
    fn results(&mut self, from: PeerId, started: Vec<JobId>, results: Vec<JobResult>) -> Response {
        let request = wire(&Request::Results(Results { cluster: CLUSTER, started, results, provisional: Vec::new() }));
        let (response, effects) = self.core.on_request(from, request);
        self.absorb(effects);
        wire(&response)
    }

    fn status_of(&self, p: PeerId) -> NodeStatus {
        let infos = self.core_infos();
        infos.into_iter().find(|i| i.node.peer_id == p).map(|i| i.status).expect("node listed")
    }

    fn core_infos(&self) -> Vec<crate::report::NodeInfo> {
        self.core.node_infos()
    }
}

fn ids_of(s: &Submit) -> Vec<JobId> {
    s.jobs.iter().map(|j| j.id).collect()
}

#[test]
fn a_connected_peer_is_greeted_once_and_a_node_is_reserved_with_the_cluster_files() {
    let mut sim = Sim::new(settings());
    let p = sim.connect(1);
    let (request, asked) = sim.ask_of(p);
    assert_eq!(asked, Asked::Hello);
    assert!(matches!(request, Request::Hello(_)));
    // A second connection event for a peer being greeted asks nothing more.
    let effects = sim.core.on_connected(p, &addr(1), Reach::Direct);
    assert!(effects.is_empty());
    sim.answer(p, Asked::Hello, Response::Hello(Hello::node("n1".into(), 4, 4, None, None)));
    let (request, asked) = sim.ask_of(p);
    assert_eq!(asked, Asked::Reserve);
    let Request::Reserve(r) = request else { panic!("{request:?}") };
    let names: Vec<&str> = r.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["prog", "data.txt"]);
    assert!(matches!(&sim.cluster_events[0], ClusterEvent::NodeFound(n) if n.name == "n1"));
    assert_eq!(sim.status_of(p), NodeStatus::Starting);
}

#[test]
fn nodes_that_never_answer_do_not_delay_the_others() {
    let mut sim = Sim::new(settings());
    let ids = sim.submit(4);
    // Dozens of nodes connect; one never answers its greeting, one never answers its
    // reservation: every request is its own task, so neither holds up anyone.
    let mute = sim.connect(1);
    assert_eq!(sim.ask_of(mute).1, Asked::Hello);
    let stuck = sim.reserving(2, 4);
    let ups: Vec<PeerId> = (3..40).map(|n| sim.node_up(n, 1)).collect();
    let submits = sim.submits();
    let to: HashSet<PeerId> = submits.iter().map(|(p, _, _)| *p).collect();
    let jobs: usize = submits.iter().map(|(_, s, _)| s.jobs.len()).sum();
    assert_eq!(jobs, ids.len(), "every job went out");
    assert!(to.iter().all(|p| ups.contains(p)), "only to nodes that answered");
    assert!(!to.contains(&mute) && !to.contains(&stuck));
}

#[test]
fn a_node_holding_every_file_is_ready_and_gets_the_queued_jobs() {
    let mut sim = Sim::new(settings());
    let ids = sim.submit(3);
    assert!(sim.submits().is_empty(), "no node yet");
    let p = sim.node_up(1, 4);
    assert!(sim.cluster_events.iter().any(|e| matches!(e, ClusterEvent::NodeReady { cpus: 4, .. })));
    let submits = sim.submits();
    assert_eq!(submits.len(), 1);
    let (to, s, asked) = &submits[0];
    assert_eq!((*to, s.cluster), (p, CLUSTER));
    assert_eq!(ids_of(s), ids);
    assert_eq!(*asked, Asked::Submit(ids.clone()));
    assert_eq!(s.jobs[2].args, ["2"]);
}

#[test]
fn only_missing_files_are_staged_and_the_node_is_ready_after() {
    let mut sim = Sim::new(settings());
    let p = sim.reserving(1, 2);
    sim.answer(
        p,
        Asked::Reserve,
        Response::Reserved(Reserved { cpus: 2, missing: vec![FileHash([2; 32])], resumed: false }),
    );
    assert_eq!(sim.stages.len(), 1);
    let names: Vec<&str> = sim.stages[0].1.iter().map(|f| f.entry.name.as_str()).collect();
    assert_eq!(sim.stages[0].2, None, "the cluster's files");
    assert_eq!(names, ["data.txt"]);
    sim.submit(1);
    assert!(sim.submits().is_empty(), "jobs wait for staging");
    let effects = sim.core.on_staged(p, None, Ok(5000));
    sim.absorb(effects);
    assert_eq!(sim.status_of(p), NodeStatus::Ready);
    assert_eq!(sim.submits().len(), 1);
    let stats = sim.core.stats(sim.at(1.0));
    assert_eq!(stats.nodes[0].staged_bytes, 5000);
}

#[test]
fn a_staging_failure_makes_the_node_unusable_with_the_reason() {
    let mut sim = Sim::new(settings());
    let p = sim.reserving(1, 2);
    sim.answer(
        p,
        Asked::Reserve,
        Response::Reserved(Reserved { cpus: 2, missing: vec![FileHash([1; 32])], resumed: false }),
    );
    let effects = sim.core.on_staged(p, None, Err("file data.txt is over the limit".into()));
    sim.absorb(effects);
    assert_eq!(sim.status_of(p), NodeStatus::Unusable("staging failed: file data.txt is over the limit".into()));
}

#[test]
fn a_refused_reservation_and_a_node_of_another_protocol_version_are_unusable() {
    let mut sim = Sim::new(settings());
    let p = sim.reserving(1, 2);
    let refusal = Refusal::new(RefusalKind::TooLarge, "file data.txt is 5000 bytes, over node n1's --max-file-size");
    sim.answer(p, Asked::Reserve, Response::Refused(refusal));
    assert!(matches!(sim.status_of(p), NodeStatus::Unusable(ref w) if w.contains("--max-file-size")));

    let mut old = Hello::node("n2".into(), 2, 2, None, None);
    old.wire_version += 1;
    let q = sim.greet(2, old);
    assert!(matches!(sim.status_of(q), NodeStatus::Unusable(ref w) if w.contains("speaks dispy protocol version")));
    assert!(sim.asks.is_empty(), "neither is reserved: {:?}", sim.asks);
}

#[test]
fn patterns_filters_and_platforms_decide_which_nodes_are_used() {
    let mut s = settings();
    s.patterns = vec![NodePattern::new("worker-*")];
    s.node_filter = Some(std::sync::Arc::new(|n: &crate::NodeFacts| n.cpus >= 2));
    let mut sim = Sim::new(s);
    let [a, b, c] = [(1, "gpu-1", 8), (2, "worker-1", 1), (3, "worker-2", 2)]
        .map(|(n, name, cpus)| sim.greet(n, Hello::node(name.into(), cpus, cpus, None, None)));
    assert_eq!(sim.status_of(a), NodeStatus::Unusable("not selected by --nodes".into()));
    assert_eq!(sim.status_of(b), NodeStatus::Unusable("rejected by the cluster's node filter".into()));
    assert_eq!(sim.ask_of(c).1, Asked::Reserve);

    let mut s = settings();
    s.function = Some("square".into());
    let mut sim = Sim::new(s);
    let mut other = Hello::node("arm".into(), 2, 2, None, None);
    other.os = "plan9".into();
    let p = sim.greet(1, other);
    assert!(matches!(sim.status_of(p), NodeStatus::Unusable(ref w) if w.starts_with("runs plan9/")));
}

#[test]
fn a_node_filter_sees_the_load_a_node_reports() {
    let mut s = settings();
    // Nodes with at least 1 GiB of disk free; one that does not say is not used.
    s.node_filter = Some(std::sync::Arc::new(|n: &crate::NodeFacts| {
        n.load.as_ref().and_then(|l| l.disk_free_bytes).is_some_and(|d| d >= 1 << 30)
    }));
    let mut sim = Sim::new(s);
    let hello = |name: &str, disk: Option<u64>| Hello {
        load: disk.map(|d| Box::new(dispy_protocol::NodeLoad { disk_free_bytes: Some(d), ..Default::default() })),
        ..Hello::node(name.into(), 2, 2, None, None)
    };
    let full = sim.greet(1, hello("full", Some(1 << 20)));
    let roomy = sim.greet(2, hello("roomy", Some(1 << 40)));
    let old = sim.greet(3, hello("old", None));
    let rejected = NodeStatus::Unusable("rejected by the cluster's node filter".into());
    assert_eq!(sim.status_of(full), rejected);
    assert_eq!(sim.status_of(old), rejected);
    assert_eq!(sim.ask_of(roomy).1, Asked::Reserve);
    // Ready, the node's event carries what it reported.
    sim.answer(roomy, Asked::Reserve, Response::Reserved(Reserved { cpus: 2, missing: Vec::new(), resumed: false }));
    let ready_load = sim.cluster_events.iter().find_map(|e| match e {
        ClusterEvent::NodeReady { load, .. } => Some(load.clone()),
        _ => None,
    });
    assert_eq!(ready_load.flatten().and_then(|l| l.disk_free_bytes), Some(1 << 40));
}

#[test]
fn a_client_peer_is_not_a_node_and_is_counted_apart() {
    let mut sim = Sim::new(settings());
    let p = sim.greet(1, Hello::client("laptop".into()));
    assert!(sim.core_infos().is_empty());
    let effects = sim.core.on_connected(p, &addr(1), Reach::Direct);
    assert!(effects.is_empty(), "a known client is not greeted again");
    let found = sim.core.no_nodes().found;
    assert!(matches!(found[..], [Found::Clients(1)]), "{found:?}");
}

#[test]
fn jobs_are_spread_over_ready_nodes_in_batches_and_none_is_sent_twice() {
    let mut sim = Sim::new(settings());
    let (a, b) = (sim.node_up(1, 2), sim.node_up(2, 2));
    let ids = sim.submit(40);
    let submits = sim.submits();
    let to: HashSet<PeerId> = submits.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(to, HashSet::from([a, b]), "both nodes get work");
    let sent: Vec<JobId> = submits.iter().flat_map(|(_, s, _)| ids_of(s)).collect();
    let unique: HashSet<JobId> = sent.iter().copied().collect();
    assert_eq!(unique.len(), sent.len(), "no job twice");
    assert!(sent.len() >= 4 && sent.len() <= ids.len(), "each node's slots are filled: {}", sent.len());
    // What was not sent waits; a result frees a slot and more is sent.
    let (_, first, _) = &submits[0];
    let from = submits[0].0;
    let done: Vec<JobResult> = ids_of(first).into_iter().map(|id| exited(id, 0)).collect();
    let answer = sim.results(from, Vec::new(), done);
    assert_eq!(answer, Response::Ok);
    if sent.len() < ids.len() {
        assert!(!sim.submits().is_empty(), "freed slots are refilled");
    }
}

#[test]
fn results_are_reported_once_and_only_from_the_node_holding_the_job() {
    let mut sim = Sim::new(settings());
    let (a, b) = (sim.node_up(1, 1), sim.node_up(2, 1));
    let ids = sim.submit(1);
    let (holder, _, _) = sim.submits().remove(0);
    let other = if holder == a { b } else { a };
    sim.results(other, Vec::new(), vec![exited(ids[0], 0)]);
    assert!(sim.reports.is_empty(), "a node that does not hold the job cannot end it");
    sim.results(holder, vec![ids[0]], vec![exited(ids[0], 3)]);
    sim.results(holder, Vec::new(), vec![exited(ids[0], 0)]);
    assert_eq!(sim.reports.len(), 1);
    let r = &sim.reports[0];
    assert_eq!((r.id, &r.outcome, r.stdout.as_slice()), (ids[0], &JobOutcome::Exited(3), b"out 0".as_slice()));
    assert_eq!(r.node.as_ref().map(|n| n.peer_id), Some(holder));
    assert_eq!(
        sim.job_events,
        [(ids[0], JobStatus::Created), (ids[0], JobStatus::Running), (ids[0], JobStatus::Failed)]
    );
    let stats = sim.core.stats(sim.at(2.0));
    let node = stats.nodes.iter().find(|n| n.node.peer_id == holder).expect("holder");
    assert_eq!((node.jobs, node.job_secs), (1, 0.5));
    assert_eq!(stats.wall_secs, 2.0);
}

#[test]
fn jobs_of_a_node_away_past_its_zombie_interval_are_abandoned_when_the_cluster_is_not_reentrant() {
    let mut sim = Sim::new(settings());
    let p = sim.node_up(1, 2);
    let ids = sim.submit(2);
    sim.submits();
    let effects = sim.core.on_disconnected(p, sim.at(1.0));
    sim.absorb(effects);
    assert!(sim.reports.is_empty(), "they may still run there");
    assert_eq!(sim.status_of(p), NodeStatus::Unreachable);
    let effects = sim.core.on_tick(sim.at(60.9));
    sim.absorb(effects);
    assert!(sim.reports.is_empty(), "within the node's zombie interval");
    let effects = sim.core.on_tick(sim.at(61.0));
    sim.absorb(effects);
    assert_eq!(sim.reports.len(), 2);
    for r in &sim.reports {
        let want = "node node1 was lost: unreachable for 60 s, past its zombie interval";
        assert!(matches!(&r.outcome, JobOutcome::Abandoned(w) if w == want), "{:?}", r.outcome);
    }
    assert_eq!(sim.reports.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert!(sim.cluster_events.iter().any(|e| matches!(e, ClusterEvent::NodeLost { .. })));
    assert_eq!(sim.status_of(p), NodeStatus::Lost);
}

#[test]
fn a_reentrant_cluster_reruns_a_lost_nodes_jobs_elsewhere() {
    let mut s = settings();
    s.reentrant = true;
    let mut sim = Sim::new(s);
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    assert_eq!(sim.submits()[0].0, a);
    let b = sim.node_up(2, 1);
    let effects = sim.core.on_disconnected(a, sim.at(1.0));
    sim.absorb(effects);
    assert!(sim.reports.is_empty(), "nothing is lost");
    let submits = sim.submits();
    assert_eq!((submits[0].0, ids_of(&submits[0].1)), (b, ids.clone()));
    sim.results(b, vec![ids[0]], vec![exited(ids[0], 0)]);
    assert_eq!(sim.reports[0].outcome, JobOutcome::Exited(0));
}

#[test]
fn a_job_whose_nodes_keep_dying_fails_after_max_retries() {
    let mut s = settings();
    s.reentrant = true;
    s.max_retries = 2;
    let mut sim = Sim::new(s);
    let ids = sim.submit(1);
    for n in 1..=2u8 {
        let p = sim.node_up(n, 1);
        let submits = sim.submits();
        assert_eq!(ids_of(&submits[0].1), ids);
        sim.results(p, vec![ids[0]], Vec::new());
        let effects = sim.core.on_disconnected(p, sim.at(1.0));
        sim.absorb(effects);
    }
    assert_eq!(sim.reports.len(), 1);
    assert!(
        matches!(&sim.reports[0].outcome, JobOutcome::Crashed(w) if w.contains("running on 2 nodes that all died")),
        "{:?}",
        sim.reports[0].outcome
    );
}

#[test]
fn a_declined_job_goes_back_to_the_queue_and_its_node_takes_no_more() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    let declined = JobResult { outcome: JobOutcome::Declined("node n1 is draining".into()), ..exited(ids[0], 0) };
    sim.results(a, Vec::new(), vec![declined]);
    assert!(sim.reports.is_empty(), "a declined job is not reported");
    assert_eq!(sim.status_of(a), NodeStatus::Unusable("node n1 is draining".into()));
    let b = sim.node_up(2, 1);
    let submits = sim.submits();
    assert_eq!((submits[0].0, ids_of(&submits[0].1)), (b, ids));
}

#[test]
fn a_refused_submit_makes_the_node_unusable_and_requeues_its_jobs() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    sim.submit(1);
    let (_, _, asked) = sim.submits().remove(0);
    sim.answer(a, asked, Response::Refused(Refusal::new(RefusalKind::BadFile, "files not staged yet: prog")));
    assert_eq!(sim.status_of(a), NodeStatus::Unusable("files not staged yet: prog".into()));
    assert!(sim.core.queue.len() == 1 && matches!(sim.core.jobs[&JobId(0)].state, JobState::Queued));
    // Accepted needs nothing further.
    let b = sim.node_up(2, 1);
    let (_, _, asked) = sim.submits().remove(0);
    sim.answer(b, asked, Response::Accepted(Accepted { count: 1 }));
    assert_eq!(sim.status_of(b), NodeStatus::Ready);
}

#[test]
fn a_pinned_job_runs_only_on_its_node() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 4);
    let jobs = sim.submit_jobs(1, Some(peer(2)), false);
    assert!(sim.submits().is_empty(), "node 1 may not run it");
    let b = sim.node_up(2, 4);
    let submits = sim.submits();
    assert_eq!((submits[0].0, ids_of(&submits[0].1)), (b, vec![jobs[0].0]));
    assert_ne!(a, b);
}

#[test]
fn cancelling_ends_a_queued_job_at_once_and_asks_the_node_for_a_sent_one() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    let pinned = sim.submit_jobs(1, Some(peer(9)), false)[0].0;
    let effects = sim.core.on_cmd(Cmd::Cancel { ids: vec![ids[0], pinned] }, sim.t0);
    sim.absorb(effects);
    assert_eq!(
        sim.reports.iter().map(|r| (r.id, r.outcome.clone())).collect::<Vec<_>>(),
        [(pinned, JobOutcome::Cancelled)]
    );
    let (request, asked) = sim.ask_of(a);
    assert_eq!(asked, Asked::Cancel);
    assert!(matches!(request, Request::Cancel(ref c) if c.jobs == ids));
    // The node reports it cancelled.
    let cancelled = JobResult { outcome: JobOutcome::Cancelled, ..exited(ids[0], 0) };
    sim.results(a, Vec::new(), vec![cancelled]);
    assert_eq!(sim.reports[1].outcome, JobOutcome::Cancelled);
}

#[test]
fn with_no_node_in_time_the_cluster_fails_saying_what_was_searched_and_found() {
    let mut s = settings();
    s.searched = Searched { peers: vec![addr(7)], ..Searched::default() };
    let mut sim = Sim::new(s);
    sim.submit(1);
    let (tx, mut waiter) = oneshot::channel();
    let effects = sim.core.on_cmd(Cmd::Wait { reply: tx }, sim.t0);
    sim.absorb(effects);
    sim.core.on_dial_failed(addr(7), "Connection refused".into(), true);
    let effects = sim.core.on_tick(sim.at(2.9));
    sim.absorb(effects);
    assert!(sim.failures.is_empty() && sim.local_starts == 0, "not yet");
    let effects = sim.core.on_tick(sim.at(3.0));
    sim.absorb(effects);
    assert_eq!(sim.local_starts, 0, "nodes were named: no local fallback");
    let [Failure::NoNodes(n)] = &sim.failures[..] else { panic!("{:?}", sim.failures) };
    let msg = n.to_string();
    assert!(msg.starts_with("no usable dispy node found within 3.0 s (--discover-timeout)."), "{msg}");
    assert!(msg.contains("searched: peers /ip4/127.0.0.7/tcp/9700"), "{msg}");
    assert!(msg.contains("- /ip4/127.0.0.7/tcp/9700: Connection refused"), "{msg}");
    assert!(matches!(waiter.try_recv(), Ok(Err(Failure::NoNodes(_)))));
    // Failed once: later ticks add nothing.
    let effects = sim.core.on_tick(sim.at(10.0));
    assert!(effects.is_empty());
}

#[test]
fn with_nothing_named_a_local_node_is_the_fallback_and_its_failure_is_reported() {
    let mut s = settings();
    s.local = LocalMode::Fallback;
    let mut sim = Sim::new(s);
    let effects = sim.core.on_tick(sim.at(3.5));
    sim.absorb(effects);
    assert_eq!(sim.local_starts, 1);
    let effects = sim.core.on_tick(sim.at(9.0));
    sim.absorb(effects);
    assert_eq!(sim.local_starts, 1, "started once");
    assert!(sim.failures.is_empty(), "not while it starts");
    let effects = sim.core.on_local_node(Err("no space left on device".into()), sim.at(9.5));
    sim.absorb(effects);
    let [Failure::LocalNode(why)] = &sim.failures[..] else { panic!("{:?}", sim.failures) };
    assert_eq!(why, "could not start a local node: no space left on device");
}

#[test]
fn a_node_found_in_time_keeps_the_cluster_alive() {
    let mut sim = Sim::new(settings());
    sim.node_up(1, 1);
    let effects = sim.core.on_tick(sim.at(60.0));
    sim.absorb(effects);
    assert!(sim.failures.is_empty());
}

#[test]
fn handle_jobs_report_on_their_view_and_waiters_are_answered_when_all_ended() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 2);
    let jobs = sim.submit_jobs(2, None, true);
    sim.submits();
    let (tx, mut waiter) = oneshot::channel();
    let effects = sim.core.on_cmd(Cmd::Wait { reply: tx }, sim.t0);
    sim.absorb(effects);
    let (id0, view0) = (jobs[0].0, jobs[0].1.clone().expect("view"));
    sim.results(a, vec![id0], Vec::new());
    assert_eq!(view0.borrow().status, JobStatus::Running);
    sim.results(a, Vec::new(), vec![exited(id0, 0), exited(jobs[1].0, 0)]);
    assert!(sim.reports.is_empty(), "handle jobs are not on the stream");
    let view = view0.borrow();
    assert_eq!(view.status, JobStatus::Finished);
    assert_eq!(view.report.as_ref().map(|r| r.stdout.clone()), Some(b"out 0".to_vec()));
    assert!(matches!(waiter.try_recv(), Ok(Ok(()))));
}

#[test]
fn the_journal_records_jobs_where_they_went_and_when_they_ended() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.results(a, vec![ids[0]], vec![exited(ids[0], 0)]);
    let lines: Vec<&Entry> = sim.journal.iter().filter(|e| **e != Entry::Flush).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(*lines[0], Entry::Job { id: ids[0], args: vec!["0".into()] });
    assert!(matches!(lines[1], Entry::Sent { ids: sent, peer, addr: Some(_) } if *sent == ids && *peer == a));
    assert_eq!(*lines[2], Entry::Done(ids[0]));
    assert_eq!(sim.journal.last(), Some(&Entry::Flush), "flushed after the results");
}

#[test]
fn a_closing_cluster_releases_every_node_not_lost() {
    let mut sim = Sim::new(settings());
    let (a, b) = (sim.node_up(1, 1), sim.node_up(2, 1));
    let effects = sim.core.on_disconnected(b, sim.at(1.0));
    sim.absorb(effects);
    let releases = sim.core.releases();
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0].0, a);
    assert!(matches!(wire(&releases[0].1), Request::Release(r) if r.cluster == CLUSTER));
}

#[test]
fn requests_a_client_does_not_serve_are_refused() {
    let mut sim = Sim::new(settings());
    let p = peer(3);
    let (response, _) = sim.core.on_request(p, wire(&Request::Release(dispy_protocol::Release { cluster: CLUSTER })));
    assert!(matches!(wire(&response), Response::Refused(r) if r.kind == RefusalKind::WrongRole));
    let other = Request::Results(Results {
        cluster: ClusterId(1),
        started: Vec::new(),
        results: Vec::new(),
        provisional: Vec::new(),
    });
    let (response, _) = sim.core.on_request(p, wire(&other));
    assert!(matches!(response, Response::Refused(_)), "results of another cluster are not taken");
    let (response, _) = sim.core.on_request(p, wire(&Request::Hello(Hello::client("x".into()))));
    assert!(matches!(wire(&response), Response::Hello(h) if h.role == dispy_protocol::Role::Client));
}

/// Submits jobs, each with its own input file, in one batch.
fn submit_with_files(sim: &mut Sim, files: &[(&str, u8)]) -> Vec<JobId> {
    let mut jobs = Vec::new();
    for (name, byte) in files {
        let id = JobId(sim.next_job);
        sim.next_job += 1;
        let files = vec![file(name, *byte, 10)];
        jobs.push(NewJob::new(id, vec![name.to_string()], Vec::new(), None, None).with_files(files));
    }
    let ids = jobs.iter().map(|j| j.id).collect();
    let effects = sim.core.on_cmd(Cmd::Submit { jobs }, sim.t0);
    sim.absorb(effects);
    ids
}

#[test]
fn a_jobs_input_is_declared_staged_to_its_node_only_then_the_job_is_sent() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 2);
    let [x, y] = submit_with_files(&mut sim, &[("x.txt", 7), ("y.txt", 8)])[..] else { panic!("two jobs") };
    assert!(sim.submits().is_empty(), "not before its files");
    let (request, asked) = sim.ask_of(a);
    assert_eq!(asked, Asked::Declare(vec![x, y]));
    let Request::Declare(d) = request else { panic!("{request:?}") };
    assert_eq!(d.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["x.txt", "y.txt"]);
    // The node holds y.txt already: only x.txt travels.
    sim.answer(a, asked, Response::Declared(dispy_protocol::Declared { missing: vec![FileHash([7; 32])] }));
    let (to, files, jobs) = sim.stages.pop().expect("staged");
    assert_eq!((to, jobs), (a, Some(vec![x, y])));
    assert_eq!(files.iter().map(|f| f.entry.name.as_str()).collect::<Vec<_>>(), ["x.txt"]);
    assert!(sim.submits().is_empty(), "not before they arrive");
    let effects = sim.core.on_staged(a, Some(vec![x, y]), Ok(10));
    sim.absorb(effects);
    let submits = sim.submits();
    assert_eq!(ids_of(&submits[0].1), vec![x, y]);
    assert_eq!(submits[0].1.jobs[0].files[0].name, "x.txt");
    assert_eq!(sim.core.stats(sim.at(1.0)).nodes[0].staged_bytes, 10);
}

#[test]
fn inputs_that_cannot_be_staged_send_the_jobs_elsewhere() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let x = submit_with_files(&mut sim, &[("x.txt", 7)])[0];
    let (_, asked) = sim.ask_of(a);
    sim.answer(a, asked, Response::Declared(dispy_protocol::Declared { missing: vec![FileHash([7; 32])] }));
    let effects = sim.core.on_staged(a, Some(vec![x]), Err("x.txt changed while being sent".into()));
    sim.absorb(effects);
    assert!(matches!(sim.status_of(a), NodeStatus::Unusable(ref w) if w.contains("x.txt changed")));
    assert!(matches!(sim.core.jobs[&x].state, JobState::Queued));
    let b = sim.node_up(2, 1);
    let (request, _) = sim.ask_of(b);
    assert!(matches!(request, Request::Declare(_)), "declared again to the next node");
}

#[test]
fn a_result_with_returned_files_ends_its_job_once_they_are_fetched() {
    let mut s = settings();
    s.returns = vec!["*.gz".into()];
    let mut sim = Sim::new(s);
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    let out = FileEntry { name: "out/a.gz".into(), hash: FileHash([9; 32]), size: 3, executable: false };
    let result = JobResult { returned: vec![out.clone()], ..exited(ids[0], 0) };
    sim.results(a, vec![ids[0]], vec![result.clone()]);
    assert!(sim.reports.is_empty(), "not before its files are here");
    let (peer, job, files, dir) = sim.fetches.pop().expect("a fetch");
    assert_eq!((peer, job, files, dir), (a, ids[0], vec![out], std::path::PathBuf::from("results/0")));
    // A repeated result changes nothing.
    sim.results(a, Vec::new(), vec![result]);
    assert!(sim.fetches.is_empty());
    let saved = vec![std::path::PathBuf::from("results/0/out/a.gz")];
    let effects = sim.core.on_fetched(a, ids[0], saved.clone(), Vec::new());
    sim.absorb(effects);
    assert_eq!(sim.reports.len(), 1);
    assert_eq!(sim.reports[0].returned, saved);
    let ends: Vec<&Entry> = sim.journal.iter().skip_while(|e| **e != Entry::Done(ids[0])).collect();
    assert_eq!(ends, [&Entry::Done(ids[0]), &Entry::Flush], "its end is flushed to the journal at once");
}

#[test]
fn a_node_lost_while_its_returns_are_fetched_reruns_the_job_and_the_stale_fetch_is_dropped() {
    let mut s = settings();
    s.reentrant = true;
    s.returns = vec!["*".into()];
    let mut sim = Sim::new(s);
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    let out = FileEntry { name: "o".into(), hash: FileHash([9; 32]), size: 3, executable: false };
    sim.results(a, vec![ids[0]], vec![JobResult { returned: vec![out], ..exited(ids[0], 0) }]);
    let effects = sim.core.on_disconnected(a, sim.at(1.0));
    sim.absorb(effects);
    assert_eq!(sim.stopped_fetches, [(a, ids[0])], "the fetch from the lost node stops");
    let effects = sim.core.on_fetched(a, ids[0], Vec::new(), vec!["o: connection closed".into()]);
    sim.absorb(effects);
    assert!(sim.reports.is_empty(), "the job runs again instead");
    let b = sim.node_up(2, 1);
    let submits = sim.submits();
    assert_eq!((submits[0].0, ids_of(&submits[0].1)), (b, ids.clone()));
    // Its new result (with files) is taken, not mistaken for a repeat.
    let out = FileEntry { name: "o".into(), hash: FileHash([8; 32]), size: 3, executable: false };
    sim.results(b, vec![ids[0]], vec![JobResult { returned: vec![out], ..exited(ids[0], 0) }]);
    assert_eq!(sim.fetches.iter().map(|f| f.0).collect::<Vec<_>>(), [a, b], "fetched from the new node");
    let effects = sim.core.on_fetched(b, ids[0], vec!["results/0/o".into()], Vec::new());
    sim.absorb(effects);
    assert_eq!(sim.reports.len(), 1);
}

#[test]
fn files_that_could_not_be_saved_are_named_in_the_report() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    let out = FileEntry { name: "big".into(), hash: FileHash([9; 32]), size: 3, executable: false };
    let result =
        JobResult { returned: vec![out], return_note: Some("x: is a symbolic link".into()), ..exited(ids[0], 0) };
    sim.results(a, vec![ids[0]], vec![result]);
    let effects = sim.core.on_fetched(a, ids[0], Vec::new(), vec!["big: no space left on device".into()]);
    sim.absorb(effects);
    assert_eq!(
        sim.reports[0].return_note.as_deref(),
        Some("x: is a symbolic link; not saved: big: no space left on device")
    );
    assert_eq!(sim.reports[0].outcome, JobOutcome::Exited(0), "the job's own result is kept");
}

#[test]
fn a_slot_held_by_a_job_whose_files_are_fetched_is_refilled_once_they_are_here() {
    let mut s = settings();
    s.returns = vec!["*".into()];
    let mut sim = Sim::new(s);
    let a = sim.node_up(1, 1);
    let ids = sim.submit(5);
    let sent: Vec<JobId> = sim.submits().iter().flat_map(|(_, s, _)| ids_of(s)).collect();
    assert_eq!(sent.len(), 2, "one CPU: one running, one queued on the node");
    let out = FileEntry { name: "o".into(), hash: FileHash([9; 32]), size: 3, executable: false };
    let results: Vec<JobResult> =
        sent.iter().map(|id| JobResult { returned: vec![out.clone()], ..exited(*id, 0) }).collect();
    sim.results(a, sent.clone(), results);
    assert!(sim.submits().is_empty(), "their slots are held while their files travel");
    for id in &sent {
        let effects = sim.core.on_fetched(a, *id, vec!["x".into()], Vec::new());
        sim.absorb(effects);
    }
    let more: Vec<JobId> = sim.submits().iter().flat_map(|(_, s, _)| ids_of(s)).collect();
    assert!(!more.is_empty(), "the next jobs go out once the files are here");
    assert!(more.iter().all(|id| ids.contains(id) && !sent.contains(id)));
}

#[test]
fn pending_counts_jobs_until_each_ended_however_it_ended() {
    let mut sim = Sim::new(settings());
    assert_eq!(sim.core.pending(), 0);
    let a = sim.node_up(1, 1);
    let ids = sim.submit(3);
    assert_eq!(sim.core.pending(), 3, "queued and sent jobs are pending");
    sim.results(a, vec![ids[0]], vec![exited(ids[0], 0)]);
    assert_eq!(sim.core.pending(), 2);
    let effects = sim.core.on_cmd(Cmd::Cancel { ids: vec![ids[1], ids[2]] }, sim.t0);
    sim.absorb(effects);
    let sent: Vec<JobId> = sim.submits().iter().flat_map(|(_, s, _)| ids_of(s)).collect();
    let on_node = ids[1..].iter().filter(|id| sent.contains(id)).count();
    assert_eq!(sim.core.pending(), on_node, "a queued job ends when cancelled; a sent one when its node says so");
    let cancelled: Vec<JobResult> = ids[1..]
        .iter()
        .filter(|id| sent.contains(id))
        .map(|&id| JobResult { outcome: JobOutcome::Cancelled, ..exited(id, 0) })
        .collect();
    sim.results(a, Vec::new(), cancelled);
    assert_eq!(sim.core.pending(), 0);
    assert!(!sim.core.failed());
}

#[test]
fn an_input_that_vanished_here_fails_its_job_only_and_the_node_stays() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 2);
    let [x, y] = submit_with_files(&mut sim, &[("x.txt", 7), ("y.txt", 8)])[..] else { panic!("two jobs") };
    let (_, asked) = sim.ask_of(a);
    let missing = vec![FileHash([7; 32]), FileHash([8; 32])];
    sim.answer(a, asked, Response::Declared(dispy_protocol::Declared { missing }));
    let gone = [(FileHash([7; 32]), "cannot read in/x.txt: No such file or directory".to_string())];
    let effects = sim.core.on_inputs_unreadable(a, &[x, y], &gone);
    sim.absorb(effects);
    let effects = sim.core.on_staged(a, Some(vec![x, y]), Ok(10));
    sim.absorb(effects);
    assert_eq!(sim.reports.len(), 1);
    assert_eq!(sim.reports[0].id, x);
    assert!(
        matches!(&sim.reports[0].outcome, JobOutcome::FailedToStart(w) if w.contains("in/x.txt: No such file")),
        "{:?}",
        sim.reports[0].outcome
    );
    assert_eq!(sim.status_of(a), NodeStatus::Ready, "the node is not to blame");
    let submits = sim.submits();
    assert_eq!(ids_of(&submits[0].1), vec![y], "the other job goes on");
}

/// A queued job's footprint: the client holds every queued job at once (a million in one
/// `submit_all`), so what each costs here is its memory per job (issue 14's 300 MB for a
/// million, with the table's slots and the job's input).
#[test]
fn a_queued_job_costs_the_scheduler_under_160_bytes() {
    let job = std::mem::size_of::<super::core::Job>();
    let slot = std::mem::size_of::<(JobId, Box<super::core::Job>)>();
    eprintln!("Job {job} bytes, table slot {slot} bytes");
    assert!(job <= 160, "a Job takes {job} bytes");
    assert!(slot <= 16, "a table slot takes {slot} bytes");
}

#[test]
fn a_node_reached_only_through_a_relay_gets_files_up_to_the_relay_limit_and_says_why_not_past_it() {
    let mut s = settings();
    let data = s.files.iter().find(|f| f.entry.name == "data.txt").expect("data.txt").entry.size;
    s.relay_limit = data - 1;
    let mut sim = Sim::new(s);
    let missing = || Response::Reserved(Reserved { cpus: 2, missing: vec![FileHash([2; 32])], resumed: false });
    // Reached through a relay: over the limit, never staged.
    let p = sim.reserving(1, 2);
    let effects = sim.core.on_reached(p, Reach::Relayed, &addr(1));
    sim.absorb(effects);
    sim.answer(p, Asked::Reserve, missing());
    assert!(sim.stages.is_empty(), "nothing goes through the relay past its limit");
    let NodeStatus::Unusable(why) = sim.status_of(p) else { panic!("{:?}", sim.status_of(p)) };
    assert!(why.contains("only through a relay") && why.contains("--relay-limit"), "{why}");
    // The same files to a node hole-punched (direct): staged, whatever their size.
    let q = sim.reserving(2, 2);
    let effects = sim.core.on_reached(q, Reach::HolePunched, &addr(2));
    sim.absorb(effects);
    sim.answer(q, Asked::Reserve, missing());
    assert_eq!(sim.stages.len(), 1);
    assert_eq!(sim.stages[0].0, q);
    let stats = sim.core.stats(sim.at(1.0));
    assert!(stats.nodes.is_empty() || stats.nodes.iter().all(|n| n.reach == Reach::HolePunched), "{stats:?}");
}
