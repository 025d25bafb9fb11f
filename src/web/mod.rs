//! The live web monitor of a cluster (`submit --web ADDR`, [`crate::ClusterBuilder::web`]):
//! one page of nodes and jobs, updated over Server-Sent Events, with cancel buttons.
//!
//! It never slows the cluster down. The scheduler only sends events into an unbounded
//! channel ([`feed`]); the monitor runs on a thread and runtime of its own, where one task
//! applies them to a bounded state ([`state`]), polls the scheduler's node figures a few
//! times a second without waiting on it, and publishes a full view and a delta of the
//! changed rows at most [`TICK`] apart; the HTTP server ([`server`], axum) reads only
//! those. Cancelling goes to the scheduler as `Cluster::cancel_ids` would.
//!
//! Endpoints: `GET /` (the page, [`page`]), `GET /events` (SSE), `GET /api/status` (JSON),
//! `POST /api/cancel/{job}`, `POST /api/cancel` (every job not ended). The cancel
//! endpoints need the token of the printed URL, on every address, loopback included:
//! loopback is shared by every user of the machine, and any web page open in a browser
//! can send it POST requests. Reading is open to whoever reaches the address.

mod error;
pub(crate) mod feed;
mod page;
mod server;
pub(crate) mod state;

pub use error::WebError;

use crate::scheduler::Cmd;
use feed::{Feed, FeedTx};
use state::{Monitor, View};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::debug;

/// How often the page is updated at most: changes in between are coalesced.
pub const TICK: Duration = Duration::from_millis(250);

/// Deltas buffered for a slow page; one that falls further behind gets a full view.
const DELTAS_BUFFERED: usize = 32;

/// How long a closed cluster's final view is given to reach open pages.
const FLUSH: Duration = Duration::from_millis(300);

/// After the cluster closed, how long the monitor serves the final view before it stops.
const LINGER: Duration = Duration::from_secs(2);

/// Parses `--web`'s address: `PORT` (bound on 127.0.0.1), `IP:PORT` or `[IPv6]:PORT`.
///
/// # Errors
/// [`WebError::Address`] when it is neither.
///
/// # Examples
/// ```
/// let a = dispy::web::parse_addr("8080").unwrap();
/// assert_eq!(a.to_string(), "127.0.0.1:8080");
/// assert_eq!(dispy::web::parse_addr("10.0.0.5:80").unwrap().port(), 80);
/// assert!(dispy::web::parse_addr("localhost").is_err());
/// ```
pub fn parse_addr(text: &str) -> Result<SocketAddr, WebError> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse().map_err(|_| WebError::Address(text.to_string()))
}

/// A started monitor, as the cluster builder keeps it.
pub(crate) struct Started {
    /// The URL to open, with the token.
    pub(crate) url: String,
    /// The scheduler's end of the feed.
    pub(crate) feed: FeedTx,
}

/// Binds `addr` and starts the monitor on a thread of its own. It stops once the feed
/// closes (the cluster's handle and its scheduler are both gone) and [`LINGER`] has passed;
/// `Cluster::close` first has it publish the final view ([`feed::Feed::Closed`]).
///
/// # Errors
/// [`WebError::Bind`] when the address cannot be bound; [`WebError::Start`] when the thread
/// cannot start.
pub(crate) async fn start(addr: SocketAddr, cmds: mpsc::WeakSender<Cmd>) -> Result<Started, WebError> {
    let token = new_token();
    let (feed_tx, feed_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel::<crate::Result<SocketAddr>>();
    let server_token = token.clone();
    crate::own_thread::spawn("dispy-web", "the web monitor", ready_tx, move |ready_tx| async move {
        let listener = match tokio::net::TcpListener::bind(addr).await.and_then(|l| Ok((l.local_addr()?, l))) {
            Ok(bound) => bound,
            Err(source) => {
                let _ = ready_tx.send(Err(WebError::Bind { addr, source }.into()));
                return;
            }
        };
        let _ = ready_tx.send(Ok(listener.0));
        run(listener.1, server_token, feed_rx, cmds).await;
    })
    .map_err(|e| WebError::Start(e.to_string()))?;
    let bound = match ready_rx.await {
        Ok(Ok(bound)) => bound,
        Ok(Err(crate::Error::Web(e))) => return Err(e),
        Ok(Err(e)) => return Err(WebError::Start(e.to_string())),
        Err(_) => return Err(WebError::Start("its thread stopped while starting".into())),
    };
    Ok(Started { url: format!("http://{bound}/?token={token}"), feed: FeedTx(feed_tx) })
}

/// What the aggregator publishes for the server.
#[derive(Clone)]
pub(crate) struct Published {
    /// The latest full view (the page's first render, `/api/status`, a page that lagged).
    pub(crate) full: watch::Receiver<Arc<View>>,
    /// Deltas as JSON, in order.
    pub(crate) deltas: broadcast::Sender<Arc<String>>,
}

async fn run(
    listener: tokio::net::TcpListener,
    token: String,
    mut feed: mpsc::UnboundedReceiver<Feed>,
    cmds: mpsc::WeakSender<Cmd>,
) {
    let mut monitor = Monitor::new(now_ms());
    let (full_tx, full_rx) = watch::channel(Arc::new(monitor.full(now_ms())));
    let (deltas, _) = broadcast::channel(DELTAS_BUFFERED);
    let published = Published { full: full_rx, deltas: deltas.clone() };
    let server = tokio::spawn(server::serve(listener, server::AppState::new(token, published, cmds.clone())));
    let (poll_tx, mut poll_rx) = mpsc::channel::<(Vec<crate::NodeInfo>, crate::Stats)>(1);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = feed.recv() => match msg {
                Some(Feed::Closed(done)) => {
                    monitor.close();
                    publish(&mut monitor, &full_tx, &deltas);
                    // Time for the pages' streams to write it out.
                    tokio::spawn(async move {
                        tokio::time::sleep(FLUSH).await;
                        let _ = done.send(());
                    });
                }
                Some(msg) => {
                    let extra = returned_sizes(&msg);
                    monitor.apply(msg, extra, now_ms());
                }
                None => break,
            },
            Some((infos, stats)) = poll_rx.recv() => monitor.poll(&infos, &stats, now_ms()),
            _ = tick.tick() => {
                poll(&cmds, &poll_tx);
                publish(&mut monitor, &full_tx, &deltas);
            }
        }
    }
    monitor.close();
    publish(&mut monitor, &full_tx, &deltas);
    debug!("the cluster closed; the web monitor stops");
    tokio::time::sleep(LINGER).await;
    server.abort();
}

/// Asks the scheduler for its node figures, unless a poll is still out; never waits on it.
fn poll(cmds: &mpsc::WeakSender<Cmd>, answers: &mpsc::Sender<(Vec<crate::NodeInfo>, crate::Stats)>) {
    let Ok(permit) = answers.clone().try_reserve_owned() else {
        return;
    };
    let Some(cmds) = cmds.upgrade() else {
        return;
    };
    let (nodes_tx, nodes_rx) = oneshot::channel();
    let (stats_tx, stats_rx) = oneshot::channel();
    // A full command queue means a busy scheduler: skip this round.
    if cmds.try_send(Cmd::Nodes { reply: nodes_tx }).is_err() || cmds.try_send(Cmd::Stats { reply: stats_tx }).is_err()
    {
        return;
    }
    tokio::spawn(async move {
        if let (Ok(infos), Ok(stats)) = (nodes_rx.await, stats_rx.await) {
            permit.send((infos, stats));
        }
    });
}

fn publish(monitor: &mut Monitor, full: &watch::Sender<Arc<View>>, deltas: &broadcast::Sender<Arc<String>>) {
    if !monitor.is_dirty() {
        return;
    }
    let now = now_ms();
    let delta = monitor.delta(now);
    full.send_replace(Arc::new(monitor.full(now)));
    match serde_json::to_string(&delta) {
        // No page listening is fine.
        Ok(json) => {
            let _ = deltas.send(Arc::new(json));
        }
        Err(e) => debug!(cause = %e, "cannot encode a web monitor delta"),
    }
}

/// Sizes of the files an ended job returned (read here, never on the scheduler's thread).
fn returned_sizes(feed: &Feed) -> u64 {
    match feed {
        Feed::Ended(e) => e.returned.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum(),
        _ => 0,
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// 128 random bits from the OS, as hex.
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
