//! A peer holding the secret but sending garbage: the node logs what it dropped and goes
//! on serving. The raw peer here is a real libp2p peer (same transport) with a codec that
//! sends arbitrary bytes on dispy's protocol.

use crate::util::*;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
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

/// Sends `payload` as one request and waits for whatever comes back.
async fn send_raw(addr: &Multiaddr, payload: Vec<u8>) -> String {
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
                [(StreamProtocol::new(dispy_protocol::PROTOCOL_NAME), ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            )
        })
        .unwrap()
        .build();
    swarm.dial(addr.clone()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    swarm.behaviour_mut().send_request(&peer_id, payload.clone());
                }
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => {
                    // The raw codec reads to the end, so a stream closed unanswered reads as empty.
                    if response.is_empty() {
                        return "failure: stream closed without an answer".to_string();
                    }
                    return format!("answer: {response:?}");
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                    return format!("failure: {error}");
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => return format!("dial error: {error}"),
                _ => {}
            }
        }
    })
    .await;
    outcome.expect("the raw request neither failed nor got an answer within 60 s")
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
