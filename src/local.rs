//! The embedded node: a real node (its own peer, store and executor) inside the client's
//! process, listening on loopback only, so a fresh machine runs jobs with no set-up.

use crate::error::{Error, Result};
use crate::own_thread;
use dispy_node::net::NetConfig;
use dispy_node::serve::{self, ServeConfig, Stop, reaper};
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use std::path::PathBuf;
use tokio::sync::oneshot;

/// A running embedded node.
pub(crate) struct LocalNode {
    pub(crate) addr: Multiaddr,
    stop: tokio::sync::mpsc::UnboundedSender<Stop>,
    stopped: oneshot::Receiver<()>,
    dest: PathBuf,
}

impl LocalNode {
    /// Starts a node on 127.0.0.1 with all this machine's CPUs and a private dest path, on
    /// a thread and single-threaded runtime of its own, as `dispy-peer serve` runs: the
    /// client's tasks and the node's never wait for each other's turn.
    ///
    /// The node serves `client` alone: any local user can reach a loopback port, and with
    /// no secret (the default) nothing else would stop them from running programs as this
    /// user. Noise proves each peer's id, so another peer's requests are refused, named.
    pub(crate) async fn start(psk: Option<PreSharedKey>, client: PeerId) -> Result<LocalNode> {
        let cfg = NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().map_err(|e| Error::Config(format!("{e}")))?],
            psk,
            kad_server: true,
            allowed_peers: Some(std::iter::once(client).collect()),
            ..NetConfig::default()
        };
        let dest = std::env::temp_dir().join(format!("dispy-peer-local-{}-{:x}", std::process::id(), rand_u32()));
        let reaper_exe = reaper::can_reap().then(std::env::current_exe).and_then(Result::ok);
        // The client's executable serves as the reaper when its `main` lets it (as
        // `dispy-peer` and `dispy::worker!` do), so the jobs die with the client however it
        // ends, and the node's folder goes; otherwise only its clean shutdown kills them.
        // The token goes on each job: this process has other threads, so its environment
        // cannot change.
        let serve = ServeConfig {
            max_output: crate::DEFAULT_MAX_OUTPUT,
            job_token: reaper_exe.as_ref().map(|_| reaper::new_token()),
            reaper: reaper_exe,
            private_dest: true,
            drain_timeout: std::time::Duration::ZERO,
            result_ttl: std::time::Duration::from_secs(3600),
            ..ServeConfig::new(format!("{} (local)", crate::host_name()), crate::available_cpus(), dest.clone())
        };
        let (addr_tx, addr_rx) = oneshot::channel::<Result<Multiaddr>>();
        let (stop, stop_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stopped_tx, stopped) = oneshot::channel();
        own_thread::spawn("dispy-local-node", "the local node", addr_tx, move |addr_tx| async move {
            let node = match serve::start(cfg, serve) {
                Ok(node) => node,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.into()));
                    return;
                }
            };
            let mut addr_tx = Some(addr_tx);
            let _ = node
                .run(stop_rx, |addr| {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(Ok(addr.clone()));
                    }
                })
                .await;
            let _ = stopped_tx.send(());
        })?;
        let addr = addr_rx.await.map_err(|_| Error::Config("the local node stopped before listening".into()))??;
        Ok(LocalNode { addr, stop, stopped, dest })
    }

    /// Stops the node: its jobs are killed and its files deleted.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(Stop::Now);
        let _ = self.stopped.await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(self.dest)).await;
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispy_node::net::NetHandle;
    use dispy_protocol::{Hello, RefusalKind, Request, Response};
    use libp2p::identity::Keypair;
    use std::time::Duration;

    /// A peer with this identity and no secret, dialled to `addr`: its answer to a Hello.
    async fn hello_from(keypair: Keypair, addr: &Multiaddr) -> Response {
        let cfg = NetConfig { keypair: Some(keypair), peers: vec![addr.clone()], ..NetConfig::default() };
        let (net, mut events): (NetHandle, _) = dispy_node::net::spawn(cfg).expect("network");
        let peer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await {
                    Some(dispy_node::net::NetEvent::Connected { peer, .. }) => return peer,
                    Some(_) => {}
                    None => panic!("network stopped"),
                }
            }
        })
        .await
        .expect("connected within 10 s");
        let answer = net.request(peer, Request::Hello(Hello::client("t".into()))).await.expect("an answer");
        net.shutdown().await;
        answer
    }

    #[tokio::test]
    async fn the_embedded_node_serves_its_own_client_only() {
        let me = Keypair::generate_ed25519();
        let node = LocalNode::start(None, me.public().to_peer_id()).await.expect("local node");
        let addr = node.addr.clone();
        assert!(matches!(hello_from(me, &addr).await, Response::Hello(_)), "its own client is served");
        let stranger = Keypair::generate_ed25519();
        let id = stranger.public().to_peer_id();
        match hello_from(stranger, &addr).await {
            Response::Refused(r) => {
                assert_eq!(r.kind, RefusalKind::NotAllowed);
                assert!(r.message.contains(&id.to_string()), "the refusal names the peer: {}", r.message);
            }
            other => panic!("another local user's peer was served: {other:?}"),
        }
        node.stop().await;
    }
}
