//! Looking around the mesh without running anything: what `dispy-peer nodes` shows.

use crate::error::Result;
use crate::secret::Secret;
use dispy_node::net::{self, NetConfig, NetEvent};
use dispy_protocol::{Hello, Request, Response, Role};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use std::time::Duration;

/// A node found on the mesh.
#[derive(Clone, Debug, Serialize)]
pub struct FoundNode {
    /// Its name.
    pub name: String,
    /// Its peer id.
    #[serde(serialize_with = "crate::report::as_text")]
    pub peer_id: PeerId,
    /// The address it was reached at.
    pub addr: String,
    /// CPU slots it serves.
    pub cpus: u32,
    /// CPU slots free right now.
    pub free_cpus: u32,
    /// Its OS.
    pub os: String,
    /// Its architecture.
    pub arch: String,
    /// Its dispy-peer version.
    pub version: String,
    /// How it was reached: direct, hole-punched through NAT, or through a relay.
    pub reach: dispy_node::net::Reach,
    /// Its clients, queued jobs, load average, free memory and disk (`dispy-peer status`);
    /// `None` from an older node.
    pub load: Option<dispy_protocol::NodeLoad>,
}

/// Where to look.
#[derive(Clone, Debug, Default)]
pub struct DiscoverOptions {
    /// Multicast DNS on the LAN.
    pub mdns: bool,
    /// Addresses to dial.
    pub peers: Vec<Multiaddr>,
    /// Kademlia bootstrap peers.
    pub bootstrap: Vec<Multiaddr>,
    /// The cluster secret.
    pub secret: Secret,
    /// This peer's lasting identity, for nodes that serve only some peers
    /// (`serve --allow-peer`); a fresh one when `None`.
    pub identity: Option<libp2p::identity::Keypair>,
}

/// Lists the nodes that answer within `wait`, sorted by name.
///
/// Cancel safety: safe; dropping the future stops the search and its peer.
///
/// # Errors
/// A bad secret or network setup.
pub async fn discover(opts: DiscoverOptions, wait: Duration) -> Result<Vec<FoundNode>> {
    let cfg = NetConfig {
        keypair: opts.identity,
        psk: opts.secret.to_psk()?,
        mdns: opts.mdns,
        peers: opts.peers,
        listen: crate::builder::listen_beyond_lan(&opts.bootstrap),
        bootstrap: opts.bootstrap,
        ..NetConfig::default()
    };
    let (handle, mut events) = net::spawn(cfg)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(PeerId, Multiaddr, dispy_node::net::Reach, Hello)>();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let mut found: Vec<FoundNode> = Vec::new();
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            Some(ev) = events.recv() => {
                if let NetEvent::Connected { peer, remote, reach } = ev {
                    let (h, tx) = (handle.clone(), tx.clone());
                    tokio::spawn(async move {
                        let hello = Request::Hello(Hello::client(crate::host::host_name()));
                        if let Ok(Response::Hello(info)) = h.request(peer, hello).await {
                            let _ = tx.send((peer, remote, reach, info));
                        }
                    });
                }
            }
            Some((peer, remote, reach, h)) = rx.recv() => {
                if h.role == Role::Node && !found.iter().any(|f| f.peer_id == peer) {
                    found.push(FoundNode {
                        name: h.name,
                        peer_id: peer,
                        addr: remote.to_string(),
                        cpus: h.cpus,
                        free_cpus: h.free_cpus,
                        os: h.os,
                        arch: h.arch,
                        version: h.software,
                        reach,
                        load: h.load.map(|l| *l),
                    });
                }
            }
        }
    }
    handle.shutdown().await;
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}
