//! The embedded node: a real node (its own peer, store and executor) inside the client's
//! process, listening on loopback only, so a fresh machine runs jobs with no set-up.

use crate::error::{Error, Result};
use dispy_node::net::{self, NetConfig};
use dispy_node::serve::{ServeConfig, Server, Stop};
use libp2p::Multiaddr;
use libp2p::pnet::PreSharedKey;
use std::path::PathBuf;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running embedded node.
pub(crate) struct LocalNode {
    pub(crate) addr: Multiaddr,
    stop: tokio::sync::mpsc::UnboundedSender<Stop>,
    task: JoinHandle<()>,
    dest: PathBuf,
}

impl LocalNode {
    /// Starts a node on 127.0.0.1 with all this machine's CPUs and a private dest path.
    pub(crate) async fn start(psk: Option<PreSharedKey>) -> Result<LocalNode> {
        let cfg = NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().map_err(|e| Error::Config(format!("{e}")))?],
            psk,
            kad_server: true,
            ..NetConfig::default()
        };
        let (handle, events, event_loop) = net::new(cfg)?;
        let dest = std::env::temp_dir().join(format!("dispy-peer-local-{}-{:x}", std::process::id(), rand_u32()));
        let serve = ServeConfig {
            name: format!("{} (local)", crate::host_name()),
            cpus: crate::available_cpus(),
            dest: dest.clone(),
            max_file_size: None,
            max_output: crate::DEFAULT_MAX_OUTPUT,
            // The client's executable need not know the reaper mode: the embedded node's
            // jobs are killed by its own shutdown, and die with it only if it exits cleanly.
            reaper: None,
            drain_timeout: std::time::Duration::ZERO,
            serve_clusters: None,
            zombie_interval: std::time::Duration::from_secs(60),
            result_ttl: std::time::Duration::from_secs(3600),
        };
        let server = Server::new(serve, handle)?;
        tokio::spawn(event_loop.run());
        let (addr_tx, addr_rx) = oneshot::channel();
        let (stop, stop_rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            let _ = server
                .run(events, stop_rx, |addr| {
                    if let Some(tx) = addr_tx.take() {
                        let _ = tx.send(addr.clone());
                    }
                })
                .await;
        });
        let addr = addr_rx.await.map_err(|_| Error::Config("the local node stopped before listening".into()))?;
        Ok(LocalNode { addr, stop, task, dest })
    }

    /// Stops the node: its jobs are killed and its files deleted.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(Stop::Now);
        let _ = self.task.await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(self.dest)).await;
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish() as u32
}
