//! Crash recovery ([`recover`]) from a client's journal: it asks the nodes the journal
//! names for the results they still hold (a node keeps a gone client's jobs running for its
//! zombie interval, then keeps their results on disk for its result TTL), and says which
//! jobs are lost and need resubmitting.

use crate::error::{Error, Result};
use crate::report::{JobReport, node_ref};
use crate::secret::Secret;
use dispy_node::net::{self, NetConfig, NetEvent, remote_ip};
use dispy_protocol::{ClusterId, Forget, JobId, OwnerToken, Recover, Request, Response};
use libp2p::{Multiaddr, PeerId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

/// Rounds in a row that may bring a node's results for no job the journal waits for (jobs
/// that ended after all) before `recover` stops asking it.
const MAX_IDLE_RECOVER_ROUNDS: u32 = 16;

/// What [`recover`] found.
#[derive(Debug)]
pub struct Recovery {
    /// Results collected from the nodes, for jobs the journal had not seen end.
    pub reports: Vec<JobReport>,
    /// Jobs that ended nowhere: their node had no result for them (or could not be
    /// reached). Resubmit them.
    pub lost: Vec<(JobId, Vec<String>)>,
}

/// Reads a journal, collects from its nodes the results of the jobs it had not seen end,
/// and lists the rest as lost. The nodes delete what was collected.
///
/// Cancel safety: dropping the future stops the collection; results already collected
/// from a node may then be deleted there without having been returned (run it again for
/// the rest, and resubmit what it lists as lost).
///
/// # Errors
/// [`Error::File`] / [`Error::Config`] for an unreadable or malformed journal; network
/// setup errors.
pub async fn recover(journal: &Path, secret: Secret, wait: Duration) -> Result<Recovery> {
    let file = std::fs::File::open(journal).map_err(|source| Error::File { path: journal.to_path_buf(), source })?;
    let bad = |what: &str| Error::Config(format!("{} is not a dispy journal: {what}", journal.display()));
    let mut cluster: Option<ClusterId> = None;
    let mut token: Option<OwnerToken> = None;
    let mut args: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut sent: HashMap<u64, (PeerId, Option<Multiaddr>)> = HashMap::new();
    let mut done: HashSet<u64> = HashSet::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|source| Error::File { path: journal.to_path_buf(), source })?;
        // A crash can cut the last line short: skip what does not parse.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if let Some(c) = v.get("cluster").and_then(|c| c.as_str()) {
            cluster = Some(ClusterId(u64::from_str_radix(c, 16).map_err(|_| bad("bad cluster id"))?));
            // Journals of older versions have none: their nodes need none.
            if let Some(t) = v.get("owner").and_then(|t| t.as_str()) {
                token = Some(t.parse().map_err(|_| bad("bad owner token"))?);
            }
        } else if let Some(id) = v.get("job").and_then(|j| j.as_u64()) {
            let a = v.get("args").and_then(|a| serde_json::from_value(a.clone()).ok()).unwrap_or_default();
            args.insert(id, a);
        } else if let Some(id) = v.get("sent").and_then(|j| j.as_u64()) {
            let peer = v.get("peer").and_then(|p| p.as_str()).and_then(|p| p.parse().ok());
            let addr = v.get("addr").and_then(|a| a.as_str()).and_then(|a| a.parse().ok());
            if let Some(peer) = peer {
                sent.insert(id, (peer, addr));
            }
        } else if let Some(id) = v.get("done").and_then(|j| j.as_u64()) {
            done.insert(id);
        }
    }
    let cluster = cluster.ok_or_else(|| bad("no cluster line"))?;
    let pending: HashSet<u64> = args.keys().filter(|id| !done.contains(id)).copied().collect();
    // Dialled by address alone: a node restarted since (its results on disk) has a new
    // identity at the same address.
    let mut addrs: HashSet<Multiaddr> = HashSet::new();
    for id in &pending {
        if let Some((_, Some(addr))) = sent.get(id) {
            addrs.insert(addr.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect());
        }
    }
    let mut reports = Vec::new();
    let mut collected: HashSet<JobId> = HashSet::new();
    if !addrs.is_empty() {
        let cfg = NetConfig { psk: secret.to_psk()?, peers: addrs.iter().cloned().collect(), ..NetConfig::default() };
        let (handle, mut events) = net::spawn(cfg)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut asked = HashSet::new();
        while asked.len() < addrs.len() {
            let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) => ev,
                _ => break,
            };
            // A client listens nowhere: every connection is one it dialled.
            let NetEvent::Connected { peer, remote } = ev else { continue };
            if !asked.insert(peer) {
                continue;
            }
            // Ask until the node has nothing more (answers are bounded in size), or a round
            // brings no result not seen before, or too many rounds in a row bring none the
            // journal waits for: a node that keeps answering the same results (or whose
            // deletion keeps failing), or endless made-up ones, cannot keep the client
            // asking forever.
            let mut rounds = Rounds::default();
            loop {
                let answer = handle.request(peer, Request::Recover(Recover { cluster, token })).await;
                let r = match answer {
                    Ok(Response::Recovered(r)) => r,
                    Ok(Response::Refused(why)) => {
                        tracing::warn!(%peer, reason = %why, "the node refused to hand over results");
                        break;
                    }
                    _ => break,
                };
                if r.results.is_empty() {
                    break;
                }
                let before = collected.len();
                let ids: Vec<JobId> = r.results.iter().map(|x| x.id).collect();
                for x in r.results {
                    if !pending.contains(&x.id.0) || !collected.insert(x.id) {
                        continue;
                    }
                    let args = args.get(&x.id.0).cloned().unwrap_or_default();
                    let node = node_ref(&peer.to_string(), &peer, remote_ip(&remote));
                    reports.push(JobReport::from_result(x, args, Some(node)));
                }
                let again = rounds.again(&ids, collected.len() - before);
                let _ = handle.request(peer, Request::Forget(Forget { cluster, jobs: ids, token })).await;
                if !again {
                    break;
                }
            }
        }
        handle.shutdown().await;
    }
    reports.sort_by_key(|r| r.id);
    let mut lost: Vec<(JobId, Vec<String>)> = pending
        .iter()
        .filter(|id| !collected.contains(&JobId(**id)))
        .map(|id| (JobId(*id), args.get(id).cloned().unwrap_or_default()))
        .collect();
    lost.sort();
    Ok(Recovery { reports, lost })
}

/// Whether to ask a node for more results after a Recover round (see `recover`).
#[derive(Debug, Default)]
struct Rounds {
    seen: HashSet<JobId>,
    idle: u32,
}

impl Rounds {
    /// After a round that answered `ids`, `wanted` of them for jobs the journal waits for.
    fn again(&mut self, ids: &[JobId], wanted: usize) -> bool {
        let fresh = ids.iter().filter(|id| self.seen.insert(**id)).count();
        self.idle = if wanted > 0 { 0 } else { self.idle + 1 };
        fresh > 0 && self.idle <= MAX_IDLE_RECOVER_ROUNDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_answering_the_same_or_endless_results_is_not_asked_forever() {
        let mut r = Rounds::default();
        assert!(r.again(&[JobId(1), JobId(2)], 2));
        assert!(!r.again(&[JobId(1), JobId(2)], 0), "the same results again");
        let mut r = Rounds::default();
        let rounds = (0..1000u64).take_while(|n| r.again(&[JobId(n + 100)], 0)).count();
        assert_eq!(rounds, MAX_IDLE_RECOVER_ROUNDS as usize, "made-up results the journal never sent");
        let mut r = Rounds::default();
        assert!((0..100u64).all(|n| r.again(&[JobId(n)], 1)), "each round brings a wanted result");
    }
}
