//! A peer holding the secret but sending garbage, or messages in an order no dispy client
//! sends them: the node logs what it dropped, keeps its promises, and goes on serving. The
//! raw peer here ([`RawPeer`], also used by `node_limits`) is a real libp2p peer (same
//! transport) with a codec that sends arbitrary bytes on dispy's protocol.

use crate::util::*;
use dispy_protocol::{
    CHUNK_SIZE, CHUNKS_IN_FLIGHT, Cancel, Chunk, ChunkStored, ClusterId, FileEntry, FileHash, JobId, JobOutcome,
    JobResult, JobSpec, Release, Request, Reserve, Response, Submit,
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use sha2::Digest;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Duration;

#[derive(Clone, Default)]
struct RawCodec;

async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    io.read_to_end(&mut v).await?;
    Ok(v)
}

async fn write_all<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.close().await
}

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_all(io).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_all(io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        write_all(io, &req).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_all(io, &res).await
    }
}

/// A real libp2p peer holding the test secret that speaks dispy's protocol as raw bytes:
/// whatever it is told to send, in the order it is told.
pub(crate) struct RawPeer {
    swarm: libp2p::Swarm<request_response::Behaviour<RawCodec>>,
    node: PeerId,
    /// Requests the node sent (already answered `Ok`), oldest first.
    inbox: VecDeque<Vec<u8>>,
    /// Answers that came while waiting for another.
    answers: HashMap<OutboundRequestId, Result<Vec<u8>, String>>,
}

impl RawPeer {
    pub(crate) async fn connect(addr: &Multiaddr) -> Result<RawPeer, String> {
        let psk = dispy_node::psk::from_secret("test-secret").unwrap();
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|key| {
                dispy_node::net::transport(key, Some(psk))
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .unwrap()
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    RawCodec,
                    [(StreamProtocol::new(dispy_protocol::PROTOCOL_NAME), ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
                )
            })
            .unwrap()
            // As a real client: a connection idle between a result and the next request
            // stays (libp2p's default of zero closes it in that gap, racing the request).
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm.dial(addr.clone()).unwrap();
        let connected = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => return Err(format!("dial error: {error}")),
                    _ => {}
                }
            }
        });
        let node = connected.await.map_err(|_| "no connection within 30 s".to_string())??;
        Ok(RawPeer { swarm, node, inbox: VecDeque::new(), answers: HashMap::new() })
    }

    /// Sends `payload` as one request and waits for whatever comes back (`Err`: no answer).
    pub(crate) async fn request(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let id = self.send(payload);
        self.answer(id).await
    }

    /// Sends a request without waiting for its answer.
    pub(crate) fn send(&mut self, payload: Vec<u8>) -> OutboundRequestId {
        self.swarm.behaviour_mut().send_request(&self.node, payload)
    }

    /// Waits for the answer to a request sent earlier (`Err`: none came).
    pub(crate) async fn answer(&mut self, id: OutboundRequestId) -> Result<Vec<u8>, String> {
        assert!(self.answered(id, Duration::from_secs(60)).await, "the raw request got no answer within 60 s");
        self.answers.remove(&id).expect("answered")
    }

    /// Whether the answer to `id` (or its failure) has come, waiting up to `within`.
    pub(crate) async fn answered(&mut self, id: OutboundRequestId, within: Duration) -> bool {
        let _ = tokio::time::timeout(within, async {
            while !self.answers.contains_key(&id) {
                let (request_id, answer) = match self.next_event().await {
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    } => {
                        // The raw codec reads to the end: a stream closed unanswered reads as empty.
                        let closed = response.is_empty();
                        (
                            request_id,
                            if closed { Err("stream closed without an answer".to_string()) } else { Ok(response) },
                        )
                    }
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        (request_id, Err(error.to_string()))
                    }
                    _ => continue,
                };
                self.answers.insert(request_id, answer);
            }
        })
        .await;
        self.answers.contains_key(&id)
    }

    /// The next request the node sends, answered `Ok`.
    pub(crate) async fn next_inbound(&mut self, within: Duration) -> Option<Request> {
        tokio::time::timeout(within, async {
            while self.inbox.is_empty() {
                self.next_event().await;
            }
        })
        .await
        .ok()?;
        self.inbox.pop_front().map(|bytes| dispy_protocol::decode(&bytes).expect("the node sent a malformed request"))
    }

    /// Drives the swarm to its next protocol event, answering the node's requests `Ok`.
    async fn next_event(&mut self) -> request_response::Event<Vec<u8>, Vec<u8>> {
        loop {
            if let SwarmEvent::Behaviour(ev) = self.swarm.select_next_some().await {
                if let request_response::Event::Message {
                    message: request_response::Message::Request { request, channel, .. },
                    ..
                } = ev
                {
                    let ok = dispy_protocol::encode(&Response::Ok).unwrap();
                    let _ = self.swarm.behaviour_mut().send_response(channel, ok);
                    self.inbox.push_back(request);
                    continue;
                }
                return ev;
            }
        }
    }
}

/// Sends `payload` as one request on a new connection and says what came back.
async fn send_raw(addr: &Multiaddr, payload: Vec<u8>) -> String {
    let mut peer = match RawPeer::connect(addr).await {
        Ok(peer) => peer,
        Err(e) => return e,
    };
    match peer.request(payload).await {
        Ok(answer) => format!("answer: {answer:?}"),
        Err(e) => format!("failure: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_messages_are_dropped_and_the_node_goes_on() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("sturdy"));
    let addr: Multiaddr = node.addr.parse().unwrap();

    let garbage = send_raw(&addr, b"\xff\xfe\x00 definitely not cbor".to_vec()).await;
    assert!(garbage.starts_with("failure"), "garbage got {garbage}");
    assert!(
        node.proc.wait_stderr("dropped a malformed inbound request", Duration::from_secs(10)),
        "{}",
        node.proc.stderr()
    );

    // A well-formed CBOR value of the wrong shape.
    let wrong = dispy_protocol::encode(&vec!["not", "a", "request"]).unwrap();
    let wrong = send_raw(&addr, wrong).await;
    assert!(wrong.starts_with("failure"), "wrong shape got {wrong}");

    let oversized = vec![0u8; dispy_protocol::MAX_MESSAGE_SIZE as usize + 1024];
    let big = send_raw(&addr, oversized).await;
    assert!(big.starts_with("failure"), "oversized got {big}");
    assert!(node.proc.wait_stderr("larger than the limit", Duration::from_secs(20)), "{}", node.proc.stderr());

    // Still serving.
    let prog = script(dir.path(), "ok.sh", "echo still-serving");
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr]);
    let out = tokio::task::spawn_blocking(move || run("submit", cmd, Duration::from_secs(60))).await.unwrap();
    out.expect_code(0);
    assert!(out.stdout.contains("still-serving"), "{}", out.stdout);
}

/// Encodes and sends a request; decodes the answer.
pub(crate) async fn ask(peer: &mut RawPeer, request: &Request) -> Response {
    let answer = peer.request(dispy_protocol::encode(request).unwrap()).await.unwrap();
    dispy_protocol::decode(&answer).unwrap()
}

/// Reserves `cluster` with one file, the program `job.sh`.
pub(crate) async fn reserve(peer: &mut RawPeer, cluster: ClusterId, program: &[u8]) -> FileHash {
    reserve_owned(peer, cluster, program, None).await
}

/// [`reserve`], with the hash of the cluster's owner token.
async fn reserve_owned(
    peer: &mut RawPeer,
    cluster: ClusterId,
    program: &[u8],
    owner: Option<dispy_protocol::OwnerHash>,
) -> FileHash {
    let hash = FileHash(sha2::Sha256::digest(program).into());
    let file = FileEntry { name: "job.sh".into(), hash, size: program.len() as u64, executable: true };
    let reserve = Reserve {
        cluster,
        cpus: None,
        program: "job.sh".into(),
        function: None,
        files: vec![file],
        setup: None,
        cleanup: None,
        setup_timeout_secs: None,
        returns: vec![],
        owner,
        share: None,
    };
    let answer = ask(peer, &Request::Reserve(reserve)).await;
    assert!(matches!(answer, Response::Reserved(_)), "{answer:?}");
    hash
}

/// Submits one job and waits for its result among the node's `Results` (its start must
/// not be reported if `must_not_start`).
pub(crate) async fn run_job(
    peer: &mut RawPeer,
    node: &Node,
    cluster: ClusterId,
    job: JobId,
    must_not_start: bool,
) -> JobResult {
    let spec = JobSpec { id: job, args: vec![], timeout_secs: None, input: vec![], files: vec![] };
    let answer = ask(peer, &Request::Submit(Submit { cluster, jobs: vec![spec] })).await;
    assert!(matches!(answer, Response::Accepted(_)), "{answer:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match peer.next_inbound(left).await {
            Some(Request::Results(r)) => match r.results.into_iter().find(|r| r.id == job) {
                Some(result) => return result,
                None => assert!(!(must_not_start && r.started.contains(&job)), "job {job} was started"),
            },
            Some(other) => panic!("unexpected request from the node: {other:?}"),
            None => panic!("no result for job {job} within 10 s:\n{}", node.proc.stderr()),
        }
    }
}

/// Submit and Cancel travel on streams of their own, so a Cancel can arrive first: the job
/// is cancelled on arrival, never run.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_that_overtakes_its_submit_cancels_the_job_on_arrival() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("ordered"));
    let mut peer = RawPeer::connect(&node.addr.parse().unwrap()).await.unwrap();
    let cluster = ClusterId(0x5eed);
    let program = b"#!/bin/sh\necho ran; sleep 30\n".to_vec();
    let hash = reserve(&mut peer, cluster, &program).await;
    let stored = ask(&mut peer, &Request::Chunk(Chunk { cluster, hash, offset: 0, data: program })).await;
    assert!(matches!(stored, Response::ChunkStored(ChunkStored { complete: true, .. })), "{stored:?}");
    let job = JobId(3);
    assert_eq!(ask(&mut peer, &Request::Cancel(Cancel { cluster, jobs: vec![job] })).await, Response::Ok);
    let result = run_job(&mut peer, &node, cluster, job, true).await;
    assert_eq!(result.outcome, JobOutcome::Cancelled);
    assert!(result.stdout.bytes.is_empty(), "the job ran");
    assert_eq!(ask(&mut peer, &Request::Release(Release { cluster })).await, Response::Ok);
}

/// A file's chunks travel on streams of their own and may arrive in any order: the node
/// holds early ones (at most `CHUNKS_IN_FLIGHT`, refusing more) and writes them in order.
#[tokio::test(flavor = "multi_thread")]
async fn chunks_out_of_order_are_written_in_order_within_a_bounded_window() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("window"));
    let mut peer = RawPeer::connect(&node.addr.parse().unwrap()).await.unwrap();
    // A script, then comment bytes up to five and a half chunks.
    let mut program = b"#!/bin/sh\necho assembled; exit 0\n#".to_vec();
    program.resize(CHUNK_SIZE * 5 + CHUNK_SIZE / 2, b'#');
    let chunk = |cluster: ClusterId, i: usize| {
        let hash = FileHash(sha2::Sha256::digest(&program).into());
        let data = program[i * CHUNK_SIZE..program.len().min((i + 1) * CHUNK_SIZE)].to_vec();
        dispy_protocol::encode(&Request::Chunk(Chunk { cluster, hash, offset: (i * CHUNK_SIZE) as u64, data })).unwrap()
    };
    let stored = |answer: Result<Vec<u8>, String>| match dispy_protocol::decode(&answer.unwrap()).unwrap() {
        Response::ChunkStored(s) => s.complete,
        other => panic!("not stored: {other:?}"),
    };
    assert_eq!(CHUNKS_IN_FLIGHT, 4, "the test holds exactly four chunks");

    // Four chunks past a gap are held, unanswered; a fifth is one too many.
    let greedy = ClusterId(0x0dd);
    reserve(&mut peer, greedy, &program).await;
    let held: Vec<_> = (1..=4).map(|i| peer.send(chunk(greedy, i))).collect();
    assert!(!peer.answered(held[0], Duration::from_millis(500)).await, "a chunk past a gap was answered");
    let over = peer.send(chunk(greedy, 5));
    let refused: Response = dispy_protocol::decode(&peer.answer(over).await.unwrap()).unwrap();
    assert!(
        matches!(&refused, Response::Refused(r) if r.message.contains("chunks of one file in flight")),
        "{refused:?}"
    );
    assert_eq!(ask(&mut peer, &Request::Release(Release { cluster: greedy })).await, Response::Ok);

    // Within the window: chunks 1 to 3 wait for chunk 0, then all are written.
    let cluster = ClusterId(0x0dd2);
    reserve(&mut peer, cluster, &program).await;
    let early: Vec<_> = (1..=3).map(|i| peer.send(chunk(cluster, i))).collect();
    assert!(!peer.answered(early[0], Duration::from_millis(300)).await, "a chunk past a gap was answered");
    let first = peer.send(chunk(cluster, 0));
    for id in std::iter::once(first).chain(early) {
        assert!(!stored(peer.answer(id).await), "complete too early");
    }
    let (fourth, last) = (peer.send(chunk(cluster, 4)), peer.send(chunk(cluster, 5)));
    let completes = [stored(peer.answer(fourth).await), stored(peer.answer(last).await)];
    assert_eq!(completes.iter().filter(|c| **c).count(), 1, "one answer says the file is complete");

    let result = run_job(&mut peer, &node, cluster, JobId(0), false).await;
    assert_eq!((result.outcome, result.stdout.bytes), (JobOutcome::Exited(0), b"assembled\n".to_vec()));
    assert_eq!(ask(&mut peer, &Request::Release(Release { cluster })).await, Response::Ok);

    // A file whose bytes do not match its hash is refused once complete, and a chunk of it
    // still on its way is refused at once, not held for an upload that never ends.
    let liar = ClusterId(0x0dd3);
    let mut other = program.clone();
    other[0] = b'X';
    let hash = reserve(&mut peer, liar, &program).await;
    let lie = |offset: usize, len: usize| {
        let data = other[offset..offset + len].to_vec();
        Request::Chunk(Chunk { cluster: liar, hash, offset: offset as u64, data })
    };
    let mut answers = Vec::new();
    for i in 0..6 {
        let len = CHUNK_SIZE.min(other.len() - i * CHUNK_SIZE);
        answers.push(ask(&mut peer, &lie(i * CHUNK_SIZE, len)).await);
    }
    assert!(matches!(&answers[5], Response::Refused(r) if r.message.contains("does not match")), "{answers:?}");
    let stale = ask(&mut peer, &lie(CHUNK_SIZE, CHUNK_SIZE)).await;
    assert!(matches!(&stale, Response::Refused(r) if r.message.contains("was refused")), "{stale:?}");
    assert_eq!(ask(&mut peer, &Request::Release(Release { cluster: liar })).await, Response::Ok);
}

/// File names that would land outside the job directory, however they are nested, are
/// refused at Reserve: nothing is staged, no lease is taken.
#[tokio::test(flavor = "multi_thread")]
async fn names_escaping_the_job_directory_are_refused() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("paths"));
    let mut peer = RawPeer::connect(&node.addr.parse().unwrap()).await.unwrap();
    let program = b"#!/bin/sh\n".to_vec();
    let hash = FileHash(sha2::Sha256::digest(&program).into());
    let file = |name: &str| FileEntry { name: name.into(), hash, size: program.len() as u64, executable: true };
    for (i, bad) in ["../x", "a/../../x", "data/sub/../../../x", "/etc/x", "a//b", "a/./b"].into_iter().enumerate() {
        let cluster = ClusterId(0xbad0 + i as u64);
        let reserve = Reserve {
            cluster,
            cpus: None,
            program: "job.sh".into(),
            function: None,
            files: vec![file("job.sh"), file(bad)],
            setup: None,
            cleanup: None,
            setup_timeout_secs: None,
            returns: vec![],
            owner: None,
            share: None,
        };
        let answer = ask(&mut peer, &Request::Reserve(reserve)).await;
        assert!(
            matches!(&answer, Response::Refused(r) if r.kind == dispy_protocol::RefusalKind::BadPath && r.message.contains(bad)),
            "{bad}: {answer:?}"
        );
        let jobs = vec![JobSpec { id: JobId(1), args: vec![], timeout_secs: None, input: vec![], files: vec![] }];
        let submit = ask(&mut peer, &Request::Submit(Submit { cluster, jobs })).await;
        assert!(matches!(submit, Response::Refused(_)), "{bad}: a lease was taken: {submit:?}");
    }
    assert!(!dir.path().join("x").exists() && !dir.path().join("node-paths/x").exists());
}

/// A cluster's results are its owner's: another identity (another tenant holding the
/// secret, who learnt the id) cannot read or drop them, with a token or without.
#[tokio::test(flavor = "multi_thread")]
async fn recover_and_forget_from_another_identity_are_refused() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("owned"));
    let addr = node.addr.parse().unwrap();
    let mut owner = RawPeer::connect(&addr).await.unwrap();
    let mut stranger = RawPeer::connect(&addr).await.unwrap();
    let cluster = ClusterId(0x0e1e);
    let token = dispy_protocol::OwnerToken([9; 32]);
    reserve_owned(&mut owner, cluster, b"#!/bin/sh\necho mine\n", Some(token.hash())).await;
    for t in [None, Some(dispy_protocol::OwnerToken([1; 32]))] {
        let recover = Request::Recover(dispy_protocol::Recover { cluster, token: t });
        let answer = ask(&mut stranger, &recover).await;
        assert!(
            matches!(&answer, Response::Refused(r) if r.kind == dispy_protocol::RefusalKind::NotOwner
                && r.message.contains("not yours")),
            "{answer:?}"
        );
        let forget = Request::Forget(dispy_protocol::Forget { cluster, jobs: vec![JobId(0)], token: t });
        let answer = ask(&mut stranger, &forget).await;
        assert!(
            matches!(&answer, Response::Refused(r) if r.kind == dispy_protocol::RefusalKind::NotOwner),
            "{answer:?}"
        );
    }
    // The owner may, by identity or (as a restarted client would) by token.
    let recover = Request::Recover(dispy_protocol::Recover { cluster, token: None });
    assert!(matches!(ask(&mut owner, &recover).await, Response::Recovered(_)));
    let recover = Request::Recover(dispy_protocol::Recover { cluster, token: Some(token) });
    assert!(matches!(ask(&mut stranger, &recover).await, Response::Recovered(_)));
    assert_eq!(ask(&mut owner, &Request::Release(Release { cluster })).await, Response::Ok);
}
