//! Crash recovery ([`recover`]) from a client's journal: it asks the nodes the journal
//! names for the results they still hold (a node keeps a gone client's jobs running for its
//! zombie interval, then keeps their results on disk for its result TTL), fetches the files
//! those results list as returned into the run's results folder, and says which jobs are
//! lost and need resubmitting.

use crate::error::{Error, Result};
use crate::fetch;
use crate::report::{JobReport, NodeRef, node_ref};
use crate::secret::Secret;
use dispy_node::net::{self, NetConfig, NetEvent, NetHandle, remote_ip};
use dispy_protocol::{ClusterId, Forget, JobId, JobResult, OwnerToken, Recover, Request, Response};
use libp2p::{Multiaddr, PeerId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::warn;

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
/// with the files they returned (saved as the run saved them, `<results dir>/<job>/<path>`,
/// each renamed into place once whole and verified; [`JobReport::returned`] lists them),
/// and lists the rest as lost. The nodes delete what was collected; a result whose files
/// could not all be fetched stays on its node (its report's `return_note` says which and
/// why), for another `recover`.
///
/// Cancel safety: dropping the future stops the collection; results already collected
/// from a node may then be deleted there without having been returned (run it again for
/// the rest, and resubmit what it lists as lost).
///
/// # Errors
/// [`Error::File`] / [`Error::Config`] for an unreadable or malformed journal; network
/// setup errors.
pub async fn recover(journal: &Path, secret: Secret, wait: Duration) -> Result<Recovery> {
    recover_as(journal, secret, wait, None).await
}

/// [`recover`] as the lasting identity `keypair` (the one the run used, from
/// [`dispy_node::net::identity::load_or_create`]): nodes that serve only some peers
/// (`serve --allow-peer`) answer only those.
///
/// # Errors
/// As [`recover`].
pub async fn recover_as(
    journal: &Path,
    secret: Secret,
    wait: Duration,
    keypair: Option<libp2p::identity::Keypair>,
) -> Result<Recovery> {
    let record = Record::read(journal)?;
    let pending: HashSet<u64> = record.args.keys().filter(|id| !record.done.contains(id)).copied().collect();
    // Dialled by address alone: a node restarted since (its results on disk) has a new
    // identity at the same address.
    let mut addrs: HashSet<Multiaddr> = HashSet::new();
    for id in &pending {
        if let Some((_, Some(addr))) = record.sent.get(id) {
            addrs.insert(addr.iter().filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_))).collect());
        }
    }
    let mut reports = Vec::new();
    if !addrs.is_empty() {
        let cfg = NetConfig {
            psk: secret.to_psk()?,
            peers: addrs.iter().cloned().collect(),
            keypair,
            ..NetConfig::default()
        };
        let (handle, mut events) = net::spawn(cfg)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut asked = HashSet::new();
        while asked.len() < addrs.len() {
            let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) => ev,
                _ => break,
            };
            // A client listens nowhere: every connection is one it dialled.
            let NetEvent::Connected { peer, remote, .. } = ev else { continue };
            if !asked.insert(peer) {
                continue;
            }
            let node = node_ref(&peer.to_string(), &peer, remote_ip(&remote));
            collect(&handle, peer, &node, &record, &pending, &mut reports).await;
        }
        handle.shutdown().await;
    }
    reports.sort_by_key(|r| r.id);
    let found: HashSet<u64> = reports.iter().map(|r| r.id.0).collect();
    let mut lost: Vec<(JobId, Vec<String>)> = pending
        .iter()
        .filter(|id| !found.contains(id))
        .map(|id| (JobId(*id), record.args.get(id).cloned().unwrap_or_default()))
        .collect();
    lost.sort();
    Ok(Recovery { reports, lost })
}

/// Collects from one node the results it holds for the journal's pending jobs, with their
/// returned files, and has it forget each result whose files are all saved here.
async fn collect(
    handle: &NetHandle,
    peer: PeerId,
    node: &NodeRef,
    record: &Record,
    pending: &HashSet<u64>,
    reports: &mut Vec<JobReport>,
) {
    let (cluster, token) = (record.cluster, record.token);
    let mut reported: HashSet<JobId> = reports.iter().map(|r| r.id).collect();
    // Ask until the node has nothing more (answers are bounded in size), or a round brings
    // no result not seen before (a result kept because its files did not arrive comes
    // again), or too many rounds in a row bring none the journal waits for: a node that
    // keeps answering the same results, or endless made-up ones, cannot keep the client
    // asking forever.
    let mut rounds = Rounds::default();
    loop {
        let answer = handle.request(peer, Request::Recover(Recover { cluster, token })).await;
        let r = match answer {
            Ok(Response::Recovered(r)) => r,
            Ok(Response::Refused(why)) => {
                warn!(%peer, reason = %why, "the node refused to hand over results");
                break;
            }
            _ => break,
        };
        if r.results.is_empty() {
            break;
        }
        let ids: Vec<JobId> = r.results.iter().map(|x| x.id).collect();
        let fresh: Vec<JobResult> = r.results.into_iter().filter(|x| !rounds.seen.contains(&x.id)).collect();
        let before = reports.len();
        let mut collected = Vec::new();
        for x in fresh {
            let id = x.id;
            if !pending.contains(&id.0) || !reported.insert(id) {
                collected.push(id);
                continue;
            }
            let files = x.returned.clone();
            let args = record.args.get(&id.0).cloned().unwrap_or_default();
            let mut report = JobReport::from_result(x, args, Some(node.clone()));
            let (saved, failed) = fetch::fetch_all(handle, peer, cluster, &files, &record.job_dir(id), false).await;
            report.returned = saved;
            if failed.is_empty() {
                collected.push(id);
            } else {
                warn!(job = %id, %peer, failed = failed.len(), "returned files could not be fetched; the node keeps them");
                report.note_not_saved(&format!(
                    "{}; node {} keeps this result and its files until its --result-ttl: run recover again",
                    failed.join("; "),
                    node.name
                ));
            }
            reports.push(report);
        }
        let again = rounds.again(&ids, reports.len() - before);
        // Only now: what is forgotten is safe here.
        if !collected.is_empty() {
            let _ = handle.request(peer, Request::Forget(Forget { cluster, jobs: collected, token })).await;
        }
        if !again {
            break;
        }
    }
}

/// Whether to ask a node for more results after a Recover round (see `collect`).
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

/// What a journal says.
struct Record {
    cluster: ClusterId,
    /// The cluster's owner token (journals of older versions have none: their nodes need
    /// none).
    token: Option<OwnerToken>,
    /// Where the run saved returned files (`None`: a journal from before it was recorded).
    results_dir: Option<PathBuf>,
    args: BTreeMap<u64, Vec<String>>,
    sent: HashMap<u64, (PeerId, Option<Multiaddr>)>,
    done: HashSet<u64>,
}

impl Record {
    fn read(journal: &Path) -> Result<Record> {
        let file =
            std::fs::File::open(journal).map_err(|source| Error::File { path: journal.to_path_buf(), source })?;
        let bad = |what: &str| Error::Config(format!("{} is not a dispy journal: {what}", journal.display()));
        let mut cluster: Option<ClusterId> = None;
        let mut token: Option<OwnerToken> = None;
        let mut results_dir = None;
        let mut args: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut sent: HashMap<u64, (PeerId, Option<Multiaddr>)> = HashMap::new();
        let mut done: HashSet<u64> = HashSet::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|source| Error::File { path: journal.to_path_buf(), source })?;
            // A crash can cut the last line short: skip what does not parse.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if let Some(c) = v.get("cluster").and_then(|c| c.as_str()) {
                cluster = Some(ClusterId(u64::from_str_radix(c, 16).map_err(|_| bad("bad cluster id"))?));
                if let Some(t) = v.get("owner").and_then(|t| t.as_str()) {
                    token = Some(t.parse().map_err(|_| bad("bad owner token"))?);
                }
            } else if let Some(dir) = v.get("results_dir").and_then(|d| d.as_str()) {
                results_dir = Some(PathBuf::from(dir));
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
        Ok(Record { cluster, token, results_dir, args, sent, done })
    }

    /// Where a job's returned files go: as the original run saved them
    /// (`<results dir>/<job>/`); a journal that names no folder gets `submit`'s default.
    fn job_dir(&self, id: JobId) -> PathBuf {
        self.results_dir.clone().unwrap_or_else(|| PathBuf::from("dispy-results")).join(id.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;

    #[test]
    fn the_journal_names_the_results_folder_absolute_and_a_cut_last_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let mut j = Journal::create(&path, ClusterId(0xab), &OwnerToken([7; 32]), "prog").expect("journal");
        j.returns(Path::new("out"), &["*.gz".into()]);
        j.job(JobId(3), &["x".into()]);
        j.done(JobId(3));
        j.flush();
        drop(j);
        let mut cut = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        std::io::Write::write_all(&mut cut, br#"{"done": "#).expect("write");
        let record = Record::read(&path).expect("reads");
        assert_eq!(record.cluster, ClusterId(0xab));
        assert_eq!(record.token.map(|t| t.to_hex()), Some(OwnerToken([7; 32]).to_hex()));
        let want = std::env::current_dir().expect("cwd").join("out").join("3");
        assert_eq!(record.job_dir(JobId(3)), want, "where submit saved them, wherever recover runs");
        assert!(record.done.contains(&3));
    }

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
