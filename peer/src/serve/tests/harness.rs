//! A node with a detached network handle and a [`FakeRunner`], driven as a client peer would
//! (HyperQueue's `TestComm` style): every message in either direction goes through the wire
//! codec first.

use super::fake::{FakeJob, FakeRunner, FakeTask};
use crate::error::{Error, Result};
use crate::net::{Command, NetEvent, NetHandle, ReplyTo};
use crate::serve::{Node, ServeConfig, Stop};
use dispy_protocol::{
    Chunk, ClusterId, FileEntry, FileHash, JobId, JobSpec, Request, Reserve, Response, Results, Submit, decode, encode,
};
use libp2p::PeerId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Longest any wait may take (on the paused clock: a wait that would hang fails instead).
const WAIT: Duration = Duration::from_secs(600);

/// A message as the peer at the other end would see it.
pub(super) fn wire<T: Serialize + DeserializeOwned>(msg: &T) -> T {
    decode(&encode(msg).expect("encodes")).expect("decodes")
}

/// A file a test cluster sends.
pub(super) fn file(name: &str, data: &[u8]) -> FileEntry {
    FileEntry {
        name: name.into(),
        hash: FileHash(Sha256::digest(data).into()),
        size: data.len() as u64,
        executable: true,
    }
}

pub(super) fn job(id: u64) -> JobSpec {
    JobSpec { id: JobId(id), args: Vec::new(), timeout_secs: None, input: Vec::new(), files: Vec::new() }
}

pub(super) fn reserve(cluster: u64, files: Vec<FileEntry>) -> Request {
    Request::Reserve(Reserve {
        cluster: ClusterId(cluster),
        cpus: None,
        program: "prog".into(),
        function: None,
        files,
        setup: None,
        cleanup: None,
        setup_timeout_secs: None,
        returns: Vec::new(),
        owner: None,
        share: None,
    })
}

/// A result delivery the node asked for, waiting for the test's answer.
pub(super) struct Delivery {
    pub(super) peer: PeerId,
    pub(super) results: Results,
    reply: oneshot::Sender<Result<Response>>,
}

impl Delivery {
    pub(super) fn ack(self) -> Results {
        let _ = self.reply.send(Ok(wire(&Response::Ok)));
        self.results
    }

    pub(super) fn fail(self) -> Results {
        let _ = self.reply.send(Err(Error::Request { peer: self.peer.to_string(), reason: "unreachable".into() }));
        self.results
    }
}

/// The test's side of one node.
pub(super) struct Harness {
    pub(super) node: JoinHandle<Result<()>>,
    events: mpsc::UnboundedSender<NetEvent>,
    commands: mpsc::Receiver<Command>,
    pub(super) stop: mpsc::UnboundedSender<Stop>,
    jobs: mpsc::UnboundedReceiver<FakeJob>,
    tasks: mpsc::UnboundedReceiver<FakeTask>,
    replies: HashMap<u64, Response>,
    deliveries: VecDeque<Delivery>,
    /// Deliveries to these peers fail at once, as the swarm's would to a peer it lost.
    pub(super) unreachable: HashSet<PeerId>,
    /// Other nodes, by what they serve to the node's fetches (a file's bytes, right or
    /// wrong); a fetch from any other peer fails as from one unreachable.
    pub(super) sources: HashMap<PeerId, Vec<u8>>,
    /// The fetches the node made, in order.
    pub(super) fetched: Vec<(PeerId, dispy_protocol::Fetch)>,
    next_reply: u64,
    pub(super) dest: tempfile::TempDir,
    /// Function workers alive.
    pub(super) workers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Harness {
    /// A node of `cpus` slots, the rest of its configuration set by `tune`.
    pub(super) fn start(cpus: u32, tune: impl FnOnce(&mut ServeConfig)) -> Harness {
        Harness::start_in(tempfile::tempdir().expect("temp dir"), cpus, tune)
    }

    /// Stops the node at once (as a crash would, but cleanly) and starts a new one on the
    /// same dest path, configured by `tune`.
    pub(super) async fn restart(self, cpus: u32, tune: impl FnOnce(&mut ServeConfig)) -> Harness {
        let Harness { node, stop, dest, mut commands, .. } = self;
        let _ = stop.send(Stop::Now);
        // Its last commands (the network's shutdown) need no answer.
        let drain = tokio::spawn(async move { while commands.recv().await.is_some() {} });
        let stopped = tokio::time::timeout(WAIT, node).await;
        assert!(matches!(stopped, Ok(Ok(Ok(())))), "the node stops");
        drain.abort();
        Harness::start_in(dest, cpus, tune)
    }

    fn start_in(dest: tempfile::TempDir, cpus: u32, tune: impl FnOnce(&mut ServeConfig)) -> Harness {
        let mut cfg = ServeConfig::new("test-node", cpus, dest.path());
        tune(&mut cfg);
        let (net, commands) = NetHandle::detached();
        let (started, jobs) = mpsc::unbounded_channel();
        let (tasks_tx, tasks) = mpsc::unbounded_channel();
        let workers = std::sync::Arc::default();
        let runner = FakeRunner { started, tasks: tasks_tx, workers: std::sync::Arc::clone(&workers) };
        let node = Node::with_runner(cfg, net, |_| Box::new(runner)).expect("node starts");
        let (events, events_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = mpsc::unbounded_channel();
        let node = tokio::spawn(node.run(events_rx, stop_rx, |_| {}));
        Harness {
            node,
            events,
            commands,
            stop,
            jobs,
            tasks,
            replies: HashMap::new(),
            deliveries: VecDeque::new(),
            unreachable: HashSet::new(),
            sources: HashMap::new(),
            fetched: Vec::new(),
            next_reply: 0,
            dest,
            workers,
        }
    }

    /// Sends a request from `peer`; its answer is collected under the returned number.
    pub(super) fn send(&mut self, peer: PeerId, request: Request) -> u64 {
        self.next_reply += 1;
        let channel = ReplyTo::test(self.next_reply);
        let _ = self.events.send(NetEvent::Request { peer, request: wire(&request), channel });
        self.next_reply
    }

    /// The answer to request `id`.
    pub(super) async fn answer(&mut self, id: u64) -> Response {
        loop {
            if let Some(r) = self.replies.remove(&id) {
                return r;
            }
            self.pump().await;
        }
    }

    /// Sends a request and waits for its answer.
    pub(super) async fn ask(&mut self, peer: PeerId, request: Request) -> Response {
        let id = self.send(peer, request);
        self.answer(id).await
    }

    pub(super) fn connected(&self, peer: PeerId) {
        let _ = self.events.send(NetEvent::Connected {
            peer,
            remote: "/ip4/127.0.0.1/tcp/1".parse().expect("addr"),
            reach: crate::net::Reach::Direct,
        });
    }

    pub(super) fn disconnected(&mut self, peer: PeerId) {
        self.unreachable.insert(peer);
        let _ = self.events.send(NetEvent::Disconnected { peer });
    }

    /// Takes one command the node gave its network.
    pub(super) async fn pump(&mut self) {
        let cmd = tokio::time::timeout(WAIT, self.commands.recv()).await.expect("the node said nothing");
        match cmd.expect("the node dropped its network") {
            Command::Respond { channel, response } => {
                let id = channel.test_id().expect("a test reply slot");
                assert!(self.replies.insert(id, wire(&response)).is_none(), "request {id} answered twice");
            }
            Command::Request { peer, request, reply, .. } => match wire(&request) {
                Request::Results(results) => {
                    let delivery = Delivery { peer, results, reply };
                    if self.unreachable.contains(&peer) {
                        delivery.fail();
                    } else {
                        self.deliveries.push_back(delivery);
                    }
                }
                Request::Fetch(f) => {
                    let answer = match self.sources.get(&peer) {
                        Some(bytes) => {
                            let start = usize::try_from(f.offset).unwrap_or(usize::MAX).min(bytes.len());
                            let end = (start + dispy_protocol::CHUNK_SIZE).min(bytes.len());
                            let data = bytes[start..end].to_vec();
                            Ok(wire(&Response::Data(dispy_protocol::Data { hash: f.hash, offset: f.offset, data })))
                        }
                        None => Err(Error::Request { peer: peer.to_string(), reason: "unreachable".into() }),
                    };
                    self.fetched.push((peer, f));
                    let _ = reply.send(answer);
                }
                other => panic!("the node asked {other:?}"),
            },
            Command::Shutdown => {}
            other => panic!("unexpected command {other:?}"),
        }
    }

    /// Takes the answers that came and were not asked for by number.
    pub(super) fn drain_replies(&mut self) -> Vec<Response> {
        self.replies.drain().map(|(_, r)| r).collect()
    }

    /// Acknowledges every result delivery that has come; returns how many results they held.
    pub(super) fn ack_all(&mut self) -> usize {
        self.deliveries.drain(..).map(|d| d.ack().results.len()).sum()
    }

    /// The next result delivery.
    pub(super) async fn delivery(&mut self) -> Delivery {
        loop {
            if let Some(d) = self.deliveries.pop_front() {
                return d;
            }
            self.pump().await;
        }
    }

    /// Acknowledges deliveries until `n` results have come; returns them in order.
    pub(super) async fn results(&mut self, n: usize) -> Vec<dispy_protocol::JobResult> {
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(self.delivery().await.ack().results);
        }
        out
    }

    /// Whether a delivery comes within `within`.
    pub(super) async fn quiet_for(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.deliveries.is_empty() {
            if tokio::time::timeout_at(deadline, self.pump()).await.is_err() {
                return true;
            }
        }
        false
    }

    /// The next job the node starts.
    pub(super) async fn started(&mut self) -> FakeJob {
        tokio::time::timeout(WAIT, self.jobs.recv()).await.expect("no job started").expect("runner gone")
    }

    /// The next setup or cleanup program the node starts.
    pub(super) async fn task(&mut self) -> FakeTask {
        tokio::time::timeout(WAIT, self.tasks.recv()).await.expect("no setup or cleanup started").expect("runner gone")
    }

    /// A setup or cleanup started since the last look, if any, once the node is idle.
    pub(super) async fn maybe_task(&mut self) -> Option<FakeTask> {
        settle().await;
        self.tasks.try_recv().ok()
    }

    /// A job started since the last look, if any, once the node has nothing left to do.
    pub(super) async fn maybe_started(&mut self) -> Option<FakeJob> {
        settle().await;
        self.jobs.try_recv().ok()
    }

    /// Reserves `cluster` for `peer` with `files`, the first being the program, and stages
    /// them in one chunk each.
    pub(super) async fn stage(&mut self, peer: PeerId, cluster: u64, files: &[(&str, &[u8])], cpus: Option<u32>) {
        self.stage_with(peer, cluster, files, |r| r.cpus = cpus).await;
    }

    /// [`Harness::stage`], with the Reserve set by `tune`.
    pub(super) async fn stage_with(
        &mut self,
        peer: PeerId,
        cluster: u64,
        files: &[(&str, &[u8])],
        tune: impl FnOnce(&mut Reserve),
    ) {
        let entries: Vec<FileEntry> = files.iter().map(|(n, d)| file(n, d)).collect();
        let mut r = reserve(cluster, entries.clone());
        if let Request::Reserve(r) = &mut r {
            r.program = files[0].0.into();
            tune(r);
        }
        let Response::Reserved(reserved) = self.ask(peer, r).await else { panic!("not reserved") };
        for (entry, (_, data)) in entries.iter().zip(files) {
            if !reserved.missing.contains(&entry.hash) {
                continue;
            }
            let chunk = Chunk { cluster: ClusterId(cluster), hash: entry.hash, offset: 0, data: data.to_vec() };
            let stored = self.ask(peer, Request::Chunk(chunk)).await;
            assert!(matches!(&stored, Response::ChunkStored(s) if s.complete), "{stored:?}");
        }
    }

    /// Submits jobs `ids` to `cluster`.
    pub(super) async fn submit(&mut self, peer: PeerId, cluster: u64, ids: impl IntoIterator<Item = u64>) -> Response {
        let jobs = ids.into_iter().map(job).collect();
        self.ask(peer, Request::Submit(Submit { cluster: ClusterId(cluster), jobs })).await
    }
}

/// Lets the node's work (on the blocking pool too) run until `done` holds, for at most 100
/// turns; says whether it did.
pub(super) async fn settle_until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        settle().await;
    }
    done()
}

/// Lets every task run until all wait (the paused clock moves on only then).
pub(super) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}
