//! The cloneable handle through which tasks talk to the swarm's [`super::EventLoop`].

use crate::error::{Error, Result};
use dispy_protocol::{Request, Response};
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

/// Where the answer to a [`super::NetEvent::Request`] goes: hand it back to
/// [`NetHandle::respond`]. Opaque, so that a test can play the swarm and make its own.
#[derive(Debug)]
pub struct ReplyTo(pub(crate) Reply);

/// What a [`ReplyTo`] holds.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A request that came through the swarm.
    Swarm(ResponseChannel<Response>),
    /// A request a test made up; the number is the test's, to match the answer to it.
    #[cfg(test)]
    Test(u64),
}

impl ReplyTo {
    pub(crate) fn swarm(channel: ResponseChannel<Response>) -> Self {
        ReplyTo(Reply::Swarm(channel))
    }

    /// A reply slot a test matches by `id`.
    #[cfg(test)]
    pub(crate) fn test(id: u64) -> Self {
        ReplyTo(Reply::Test(id))
    }

    /// The test's number for this reply slot, if a test made it.
    #[cfg(test)]
    pub(crate) fn test_id(&self) -> Option<u64> {
        match self.0 {
            Reply::Test(id) => Some(id),
            Reply::Swarm(_) => None,
        }
    }
}

/// What the event loop is asked to do. Each variant that answers carries its reply sender.
#[derive(Debug)]
pub(crate) enum Command {
    Request { peer: PeerId, addrs: Vec<Multiaddr>, request: Request, reply: oneshot::Sender<Result<Response>> },
    Respond { channel: ReplyTo, response: Response },
    Dial { addr: Multiaddr },
    Disconnect { peer: PeerId },
    ConnectedPeers { reply: oneshot::Sender<Vec<PeerId>> },
    Census { reply: oneshot::Sender<Census> },
    Shutdown,
}

/// What a peer holds of the mesh right now: what `status` and the metrics show, and what
/// the simulations check.
#[derive(Clone, Debug, Default)]
pub struct Census {
    /// Established connections.
    pub connections: u32,
    /// Dials in flight.
    pub dialing: u32,
    /// The peers in Kademlia's routing table.
    pub routing: Vec<PeerId>,
    /// Kademlia queries in flight (a joining node's bootstrap is a few dozen lookups).
    pub queries: u32,
    /// Connections established since the peer started (each one a handshake): what
    /// finding and joining the mesh has cost.
    pub handshakes: u64,
}

/// Talks to the swarm task. Cheap to clone; every method fails with [`Error::NodeStopped`]
/// once the event loop has ended.
#[derive(Clone, Debug)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    local: PeerId,
}

impl NetHandle {
    pub(crate) fn new(tx: mpsc::Sender<Command>, local: PeerId) -> Self {
        NetHandle { tx, local }
    }

    /// A handle with no swarm behind it: the test holding the receiver plays the event loop
    /// (it answers `Command::Request`s and reads `Command::Respond`s).
    #[cfg(test)]
    pub(crate) fn detached() -> (NetHandle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(1024);
        (NetHandle::new(tx, PeerId::random()), rx)
    }

    /// This peer's id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    async fn send(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).await.map_err(|_| Error::NodeStopped)
    }

    /// Sends a request and waits for the answer.
    ///
    /// Cancel safety: dropping the future drops the answer, not the request, which the
    /// peer still receives and acts on.
    ///
    /// # Errors
    /// [`Error::Request`] when the peer cannot be reached or does not answer in time.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { peer, addrs: Vec::new(), request, reply }).await?;
        rx.await.map_err(|_| Error::NodeStopped)?
    }

    /// [`NetHandle::request`] to a peer that may not be connected yet, dialing `addrs` if
    /// needed (besides what the swarm knows of the peer): a node fetching a file from
    /// another node its client named.
    ///
    /// # Errors
    /// As [`NetHandle::request`].
    pub async fn request_via(&self, peer: PeerId, addrs: Vec<Multiaddr>, request: Request) -> Result<Response> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { peer, addrs, request, reply }).await?;
        rx.await.map_err(|_| Error::NodeStopped)?
    }

    /// Answers a request received as [`super::NetEvent::Request`]. An answer to a peer that
    /// has gone is dropped (logged at debug).
    ///
    /// # Errors
    /// [`Error::NodeStopped`] only.
    pub async fn respond(&self, channel: ReplyTo, response: Response) -> Result<()> {
        self.send(Command::Respond { channel, response }).await
    }

    /// Dials an address once (failures arrive as events for configured peers only).
    ///
    /// # Errors
    /// [`Error::NodeStopped`] only.
    pub async fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.send(Command::Dial { addr }).await
    }

    /// Closes every connection to a peer.
    ///
    /// # Errors
    /// [`Error::NodeStopped`] only.
    pub async fn disconnect(&self, peer: PeerId) -> Result<()> {
        self.send(Command::Disconnect { peer }).await
    }

    /// The peers connected right now.
    ///
    /// # Errors
    /// [`Error::NodeStopped`] only.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ConnectedPeers { reply }).await?;
        rx.await.map_err(|_| Error::NodeStopped)
    }

    /// What this peer holds of the mesh right now.
    ///
    /// # Errors
    /// [`Error::NodeStopped`] only.
    pub async fn census(&self) -> Result<Census> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Census { reply }).await?;
        rx.await.map_err(|_| Error::NodeStopped)
    }

    /// Stops the event loop; connections close.
    pub async fn shutdown(&self) {
        let _ = self.send(Command::Shutdown).await;
    }
}
