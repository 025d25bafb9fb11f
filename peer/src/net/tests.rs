//! Two peers in one process over 127.0.0.1: what the event loop does with connections.

use super::{ConnLimits, NetConfig, NetEvent, NetHandle};
use dispy_protocol::{Hello, Request, Response};
use libp2p::Multiaddr;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

/// A node on 127.0.0.1 whose ungreeted connections close after `window`; its address.
async fn node(window: Duration) -> (NetHandle, UnboundedReceiver<NetEvent>, Multiaddr) {
    node_with(ConnLimits { greeting_window: window, ..ConnLimits::default() }).await
}

async fn node_with(limits: ConnLimits) -> (NetHandle, UnboundedReceiver<NetEvent>, Multiaddr) {
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        kad_server: true,
        limits,
        ..NetConfig::default()
    };
    let (net, mut events) = super::spawn(cfg).unwrap();
    let addr = loop {
        match timeout(Duration::from_secs(10), events.recv()).await.unwrap() {
            Some(NetEvent::Listening { addr }) => break addr,
            Some(_) => {}
            None => panic!("node stopped"),
        }
    };
    (net, events, addr)
}

/// Waits for the next connect (true) or disconnect (false) event.
async fn next_link(events: &mut UnboundedReceiver<NetEvent>, within: Duration) -> Option<bool> {
    timeout(within, async {
        loop {
            match events.recv().await {
                Some(NetEvent::Connected { .. }) => return true,
                Some(NetEvent::Disconnected { .. }) => return false,
                Some(_) => {}
                None => panic!("stopped"),
            }
        }
    })
    .await
    .ok()
}

/// `client` asks `node` something and gets its answer.
async fn greet(client: &NetHandle, node: &NetHandle, node_events: &mut UnboundedReceiver<NetEvent>) {
    let (asker, node_id) = (client.clone(), node.local_peer_id());
    let ask = tokio::spawn(async move { asker.request(node_id, Request::Hello(Hello::client("t".into()))).await });
    let channel = loop {
        match timeout(Duration::from_secs(10), node_events.recv()).await.unwrap() {
            Some(NetEvent::Request { channel, .. }) => break channel,
            Some(_) => {}
            None => panic!("node stopped"),
        }
    };
    node.respond(channel, Response::Ok).await.unwrap();
    assert!(matches!(ask.await.unwrap(), Ok(Response::Ok)));
}

#[tokio::test]
async fn a_connection_that_never_asks_anything_is_closed_and_one_that_greets_stays() {
    let (node_net, mut node_events, addr) = node(Duration::from_millis(500)).await;
    // A peer that connects and sends nothing.
    let (mute, mut mute_events) = super::spawn(NetConfig::default()).unwrap();
    mute.dial(addr.clone()).await.unwrap();
    assert_eq!(next_link(&mut mute_events, Duration::from_secs(10)).await, Some(true));
    assert_eq!(next_link(&mut mute_events, Duration::from_secs(5)).await, Some(false), "closed after the window");

    // A peer that greets keeps its connection well past the window.
    let (talker, mut talker_events) = super::spawn(NetConfig::default()).unwrap();
    talker.dial(addr).await.unwrap();
    assert_eq!(next_link(&mut talker_events, Duration::from_secs(10)).await, Some(true));
    greet(&talker, &node_net, &mut node_events).await;
    assert_eq!(next_link(&mut talker_events, Duration::from_secs(2)).await, None, "still connected");
    drop((talker, mute));
}

#[tokio::test]
async fn nodes_hold_no_idle_links_to_each_other_but_a_client_link_stays_through_silence() {
    let quick = ConnLimits { idle_timeout: Duration::from_millis(500), ..ConnLimits::default() };
    let (a, mut a_events, a_addr) = node_with(quick).await;
    let (b, mut b_events, _) = node_with(quick).await;
    // One node dials another (as Kademlia does): nothing keeps that link once it is idle.
    b.dial(a_addr.clone()).await.unwrap();
    assert_eq!(next_link(&mut b_events, Duration::from_secs(10)).await, Some(true));
    assert_eq!(next_link(&mut b_events, Duration::from_secs(5)).await, Some(false), "idle link closed");

    // A client that asked once keeps its link through a silence many times the idle timeout
    // (a long job says nothing until it ends).
    let (client, mut client_events) = super::spawn(NetConfig { limits: quick, ..NetConfig::default() }).unwrap();
    client.dial(a_addr).await.unwrap();
    assert_eq!(next_link(&mut client_events, Duration::from_secs(10)).await, Some(true));
    greet(&client, &a, &mut a_events).await;
    let a_id = a.local_peer_id();
    // (The client may meanwhile learn of b from a's Kademlia table and connect to it.)
    let closed = timeout(Duration::from_secs(3), async {
        while let Some(ev) = client_events.recv().await {
            if matches!(ev, NetEvent::Disconnected { peer } if peer == a_id) {
                return;
            }
        }
    });
    assert!(closed.await.is_err(), "the client's link to the node was closed");
    drop((a, b, client));
}

/// The texts libp2p gave on real failures: a node with another secret (both ends), and two
/// LAN nodes whose dials crossed (CI, 2026-12-03), which must not warn about secrets.
#[test]
fn only_failures_before_noise_could_read_are_blamed_on_the_secret() {
    let other_secret = [
        "Listen error: Failed to negotiate transport protocol(s): Multistream select failed: Protocol error: I/O error: Maximum frame length exceeded",
        "Listen error: Failed to negotiate transport protocol(s): Timeout has been reached",
        "Failed to negotiate transport protocol(s): [(/ip4/127.0.0.1/tcp/19701: : Handshake failed: Handshake failed: Handshake failed: Connection reset by peer (os error 104))]",
        "Failed to negotiate transport protocol(s): [(/ip4/127.0.0.1/tcp/19701: : Handshake failed: Handshake failed: Handshake failed: unexpected end of file)]",
    ];
    for cause in other_secret {
        assert!(super::secret_suspected(cause), "{cause}");
    }
    let not_the_secret = [
        "Failed to negotiate transport protocol(s): [(/ip4/10.102.0.3/tcp/9700/p2p/12D3KooWMPV5GYncmQN3EfyPKboiJywwJ9G9wAqfsfhrhmKsx7L6: : Handshake failed: Handshake failed: Handshake failed: input error)]",
        "Failed to negotiate transport protocol(s): [(/ip4/127.0.0.1/tcp/19701: : Connection refused (os error 111): Connection refused (os error 111): Connection refused (os error 111))]",
    ];
    for cause in not_the_secret {
        assert!(!super::secret_suspected(cause), "{cause}");
    }
}
