//! Wiring a node to its network: the one place `dispy-peer serve` and the embedded node
//! both start one.

use super::{Node, ServeConfig, Stop};
use crate::error::Result;
use crate::net::{self, NetConfig, NetEvent};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A node with its network up (listeners bound, the swarm task spawned), ready to
/// [`run`](RunningNode::run).
pub struct RunningNode {
    node: Node,
    events: mpsc::UnboundedReceiver<NetEvent>,
    net_task: JoinHandle<()>,
    peer_id: PeerId,
}

/// Builds the node's network and the node, and spawns the swarm's task on the current
/// runtime (call it inside one).
///
/// # Errors
/// The network's ([`crate::Error::Setup`], [`crate::Error::Listen`]) or the node's
/// ([`crate::Error::DestInUse`], [`crate::Error::Io`]); nothing runs then.
pub fn start(net: NetConfig, cfg: ServeConfig) -> Result<RunningNode> {
    let (handle, events, event_loop) = net::new(net)?;
    let peer_id = handle.local_peer_id();
    let node = Node::new(cfg, handle)?;
    let net_task = tokio::spawn(event_loop.run());
    Ok(RunningNode { node, events, net_task, peer_id })
}

impl RunningNode {
    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Serves until `stop` says (see [`Node::run`]), then waits for the swarm's task to end.
    /// `on_listening` sees each listen address as it comes up.
    ///
    /// # Errors
    /// As [`Node::run`].
    pub async fn run(self, stop: mpsc::UnboundedReceiver<Stop>, on_listening: impl FnMut(&Multiaddr)) -> Result<()> {
        self.node.run(self.events, stop, on_listening).await?;
        let _ = self.net_task.await;
        Ok(())
    }
}
