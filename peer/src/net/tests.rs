//! Two peers in one process over 127.0.0.1: what the event loop does with connections.

use super::{ConnLimits, NetConfig, NetEvent, NetHandle};
use dispy_protocol::{Hello, Request, Response};
use libp2p::Multiaddr;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

/// A node on 127.0.0.1 whose ungreeted connections close after `window`; its address.
async fn node(window: Duration) -> (NetHandle, UnboundedReceiver<NetEvent>, Multiaddr) {
    let cfg = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        kad_server: true,
        limits: ConnLimits { greeting_window: window, ..ConnLimits::default() },
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
    let node_id = node_net.local_peer_id();
    let asker = talker.clone();
    let ask = tokio::spawn(async move { asker.request(node_id, Request::Hello(Hello::client("t".into()))).await });
    let channel = loop {
        match timeout(Duration::from_secs(10), node_events.recv()).await.unwrap() {
            Some(NetEvent::Request { channel, .. }) => break channel,
            Some(_) => {}
            None => panic!("node stopped"),
        }
    };
    node_net.respond(channel, Response::Ok).await.unwrap();
    assert!(matches!(ask.await.unwrap(), Ok(Response::Ok)));
    assert_eq!(next_link(&mut talker_events, Duration::from_secs(2)).await, None, "still connected");
    drop((talker, mute));
}
