//! A peer holding the secret but sending garbage, or messages in an order no dispy client
//! sends them: the node logs what it dropped, keeps its promises, and goes on serving. The raw peer here is a real libp2p peer (same transport) with a codec that
//! sends arbitrary bytes on dispy's protocol.

use crate::util::*;
use dispy_protocol::{
    Cancel, Chunk, ClusterId, FileEntry, FileHash, JobId, JobOutcome, JobSpec, Release, Request, Reserve, Response,
    Submit,
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use sha2::Digest;
use std::collections::VecDeque;
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
struct RawPeer {
    swarm: libp2p::Swarm<request_response::Behaviour<RawCodec>>,
    node: PeerId,
    /// Requests the node sent (already answered `Ok`), oldest first.
    inbox: VecDeque<Vec<u8>>,
}

impl RawPeer {
    async fn connect(addr: &Multiaddr) -> Result<RawPeer, String> {
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
        Ok(RawPeer { swarm, node, inbox: VecDeque::new() })
    }

    /// Sends `payload` as one request and waits for whatever comes back (`Err`: no answer).
    async fn request(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let id = self.swarm.behaviour_mut().send_request(&self.node, payload);
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match self.next_event().await {
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    } if request_id == id => {
                        // The raw codec reads to the end: a stream closed unanswered reads as empty.
                        return if response.is_empty() {
                            Err("stream closed without an answer".to_string())
                        } else {
                            Ok(response)
                        };
                    }
                    request_response::Event::OutboundFailure { request_id, error, .. } if request_id == id => {
                        return Err(error.to_string());
                    }
                    _ => {}
                }
            }
        });
        answer.await.expect("the raw request neither failed nor got an answer within 60 s")
    }

    /// The next request the node sends, answered `Ok`.
    async fn next_inbound(&mut self, within: Duration) -> Option<Request> {
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

/// Submit and Cancel travel on streams of their own, so a Cancel can arrive first: the job
/// is cancelled on arrival, never run.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_that_overtakes_its_submit_cancels_the_job_on_arrival() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("ordered"));
    let mut peer = RawPeer::connect(&node.addr.parse().unwrap()).await.unwrap();
    let cluster = ClusterId(0x5eed);
    let program = b"#!/bin/sh\necho ran; sleep 30\n".to_vec();
    let hash = FileHash(sha2::Sha256::digest(&program).into());
    let file = FileEntry { name: "job.sh".into(), hash, size: program.len() as u64, executable: true };
    let mut ask = async |request: Request| -> Response {
        let answer = peer.request(dispy_protocol::encode(&request).unwrap()).await.unwrap();
        dispy_protocol::decode(&answer).unwrap()
    };
    let reserve = Reserve { cluster, cpus: None, program: "job.sh".into(), function: None, files: vec![file] };
    assert!(matches!(ask(Request::Reserve(reserve)).await, Response::Reserved(_)));
    let chunk = Chunk { cluster, hash, offset: 0, data: program };
    assert!(matches!(ask(Request::Chunk(chunk)).await, Response::ChunkStored(c) if c.complete));
    let job = JobId(3);
    assert_eq!(ask(Request::Cancel(Cancel { cluster, jobs: vec![job] })).await, Response::Ok);
    let spec = JobSpec { id: job, args: vec![], timeout_secs: None, input: vec![] };
    assert!(matches!(ask(Request::Submit(Submit { cluster, jobs: vec![spec] })).await, Response::Accepted(_)));

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let result = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match peer.next_inbound(left).await {
            Some(Request::Results(r)) => match r.results.into_iter().find(|r| r.id == job) {
                Some(result) => break result,
                None => assert!(!r.started.contains(&job), "the cancelled job was started"),
            },
            Some(other) => panic!("unexpected request from the node: {other:?}"),
            None => panic!("no result for the cancelled job within 10 s:\n{}", node.proc.stderr()),
        }
    };
    assert_eq!(result.outcome, JobOutcome::Cancelled);
    assert!(result.stdout.bytes.is_empty(), "the job ran");
    let release = Request::Release(Release { cluster });
    let answer = peer.request(dispy_protocol::encode(&release).unwrap()).await.unwrap();
    assert_eq!(dispy_protocol::decode::<Response>(&answer).unwrap(), Response::Ok);
}
