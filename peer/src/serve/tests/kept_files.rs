//! Returned files of a client that crashed: kept in the store with its kept results, served
//! to a recovering client of that cluster only, deleted when it forgets the results or at
//! the result TTL, across a restart of the node too.

use super::harness::{Harness, file, settle};
use super::{PROG, refused};
use dispy_protocol::{
    CHUNK_SIZE, ClusterId, Fetch, FileEntry, FileHash, Forget, JobId, JobOutcome, Recover, RefusalKind, Request,
    Response,
};
use libp2p::PeerId;
use std::path::Path;
use std::time::Duration;

/// Gives the blocking pool turns (on the paused clock) until `done` holds.
async fn until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..10_000 {
        if done() {
            return true;
        }
        settle().await;
        std::thread::yield_now();
    }
    done()
}

/// A cluster returning `*.bin` whose client crashes while job 1 runs; the job then leaves
/// `out.bin` (over a chunk) and ends. Returns the harness, the file's bytes and where the
/// store keeps it, once the zombie interval has ended and the result is kept on disk.
async fn crashed_client(
    tune: impl Fn(&mut crate::serve::ServeConfig) + Copy,
) -> (Harness, Vec<u8>, FileHash, std::path::PathBuf) {
    let mut h = Harness::start(1, tune);
    let client = PeerId::random();
    h.stage_with(client, 1, &[("prog", PROG)], |r| r.returns = vec!["*.bin".into()]).await;
    assert!(matches!(h.submit(client, 1, [1]).await, Response::Accepted(_)));
    let job = h.started().await;
    let data: Vec<u8> = (0..CHUNK_SIZE + 10).map(|i| (i % 253) as u8).collect();
    std::fs::write(job.dir.clone().expect("a job directory").join("out.bin"), &data).expect("the job writes");
    h.disconnected(client);
    job.finish(JobOutcome::Exited(0));
    let hash = file("out.bin", &data).hash;
    let stored = h.dest.path().join("store").join(hash.to_hex());
    assert!(until(|| stored.exists()).await, "the returned file is in the store");

    // Within the zombie interval a recovering client (another peer) gets it from the lease.
    let rescuer = PeerId::random();
    let fetch = Request::Fetch(Fetch { cluster: ClusterId(1), hash, offset: 0, share: None });
    assert!(matches!(h.ask(rescuer, fetch).await, Response::Data(_)), "served while the client is gone");

    tokio::time::sleep(Duration::from_secs(6)).await;
    let kept = h.dest.path().join(format!("results/{}/1.cbor", ClusterId(1).hidden_name()));
    assert!(until(|| kept.exists()).await, "the undelivered result is kept");
    (h, data, hash, stored)
}

/// Fetches a whole file as a recovering client does.
async fn fetch_all(h: &mut Harness, peer: PeerId, cluster: u64, f: &FileEntry) -> Result<Vec<u8>, RefusalKind> {
    let mut out = Vec::new();
    while (out.len() as u64) < f.size {
        let fetch = Fetch { cluster: ClusterId(cluster), hash: f.hash, offset: out.len() as u64, share: None };
        match h.ask(peer, Request::Fetch(fetch)).await {
            Response::Data(d) => out.extend(d.data),
            other => return Err(refused(&other).expect("data or a refusal")),
        }
    }
    Ok(out)
}

async fn recover(h: &mut Harness, peer: PeerId) -> Vec<dispy_protocol::JobResult> {
    match h.ask(peer, Request::Recover(Recover { cluster: ClusterId(1), token: None })).await {
        Response::Recovered(r) => r.results,
        other => panic!("not recovered: {other:?}"),
    }
}

fn listed(dest: &Path, hash: &FileHash) -> bool {
    dest.join(format!("results/{}/returned/{}", ClusterId(1).hidden_name(), hash.to_hex())).is_dir()
}

#[tokio::test(start_paused = true)]
async fn a_crashed_clients_returned_files_stay_with_its_results_until_it_forgets_them() {
    let (mut h, data, hash, stored) = crashed_client(|c| c.zombie_interval = Duration::from_secs(5)).await;
    // Released with its results kept: the file stays, recorded beside them.
    settle().await;
    assert!(stored.exists(), "kept with the result");
    assert!(listed(h.dest.path(), &hash));

    let rescuer = PeerId::random();
    let results = recover(&mut h, rescuer).await;
    assert_eq!(results.len(), 1);
    let entry = results[0].returned.first().cloned().expect("the result lists the file");
    assert_eq!((entry.name.as_str(), entry.hash), ("out.bin", hash));
    assert_eq!(fetch_all(&mut h, rescuer, 1, &entry).await, Ok(data));
    // Only for that cluster, only files its results list.
    assert_eq!(fetch_all(&mut h, rescuer, 2, &entry).await, Err(RefusalKind::BadFile));
    let other = FileEntry { hash: FileHash([5; 32]), ..entry.clone() };
    assert_eq!(fetch_all(&mut h, rescuer, 1, &other).await, Err(RefusalKind::BadFile));

    let forget = Request::Forget(Forget { cluster: ClusterId(1), jobs: vec![JobId(1)], token: None });
    assert_eq!(h.ask(rescuer, forget).await, Response::Ok);
    assert!(until(|| !stored.exists()).await, "forgotten with its result");
    assert!(!listed(h.dest.path(), &hash));
    assert_eq!(fetch_all(&mut h, rescuer, 1, &entry).await, Err(RefusalKind::BadFile));
    assert!(recover(&mut h, rescuer).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn kept_returned_files_survive_a_restart_of_the_node_and_go_at_the_result_ttl() {
    let tune = |c: &mut crate::serve::ServeConfig| {
        c.zombie_interval = Duration::from_secs(5);
        c.result_ttl = Duration::ZERO;
    };
    let (h, data, hash, stored) = crashed_client(tune).await;
    let mut h = h.restart(1, tune).await;
    assert!(stored.exists(), "still in the store after the restart");
    let rescuer = PeerId::random();
    let results = recover(&mut h, rescuer).await;
    let entry = results[0].returned[0].clone();
    assert_eq!(fetch_all(&mut h, rescuer, 1, &entry).await, Ok(data), "served by the restarted node");
    // Never collected: the TTL (zero here) ends the result and its file at the next sweep.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(until(|| !stored.exists()).await, "deleted at the TTL");
    assert!(!listed(h.dest.path(), &hash));
    assert_eq!(fetch_all(&mut h, rescuer, 1, &entry).await, Err(RefusalKind::BadFile));
}

#[tokio::test(start_paused = true)]
async fn files_of_results_on_disk_delivered_after_a_release_still_go_at_the_result_ttl() {
    let mut h = Harness::start(1, |c| c.result_ttl = Duration::ZERO);
    let client = PeerId::random();
    h.stage_with(client, 1, &[("prog", PROG)], |r| r.returns = vec!["*.bin".into()]).await;
    assert!(matches!(h.submit(client, 1, [1]).await, Response::Accepted(_)));
    let job = h.started().await;
    std::fs::write(job.dir.clone().expect("a job directory").join("out.bin"), b"late").expect("the job writes");
    job.finish(JobOutcome::Exited(0));
    // The client is slow: the result, still on its way, goes to disk with its file.
    let delivery = h.delivery().await;
    let hash = file("out.bin", b"late").hash;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(until(|| listed(h.dest.path(), &hash)).await, "recorded with the result on disk");
    let release = Request::Release(dispy_protocol::Release { cluster: ClusterId(1) });
    assert_eq!(h.ask(client, release).await, Response::Ok);
    delivery.ack();
    settle().await;
    let stored = h.dest.path().join("store").join(hash.to_hex());
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(until(|| !stored.exists()).await, "no file is left behind in the store");
}
