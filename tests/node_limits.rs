//! A peer holding the secret that asks a node for too much in one request, or holds too
//! much there: the node refuses it with a clear message, in time linear in the request,
//! and another client's jobs keep completing meanwhile (the node's loop never stalls).

use crate::malformed::{RawPeer, ask};
use crate::util::*;
use dispy_protocol::{
    Cancel, Chunk, ChunkStored, ClusterId, FileEntry, FileHash, JobId, JobOutcome, JobSpec, MAX_ITEMS_PER_REQUEST,
    RefusalKind, Release, Request, Reserve, Response, Submit,
};
use sha2::Digest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest a client's job may take while another peer floods the node. Far below what a
/// stalled loop costs (a client gives a node up after about 8.5 s without heartbeats).
const MAX_JOB_TIME: Duration = Duration::from_secs(5);

fn hash_of(data: &[u8]) -> FileHash {
    FileHash(sha2::Sha256::digest(data).into())
}

/// Reserves `cluster` with `program` as `job.sh` on at most `cpus` slots, and stages it.
async fn stage(peer: &mut RawPeer, cluster: ClusterId, program: &[u8], cpus: Option<u32>) {
    let hash = hash_of(program);
    let file = FileEntry { name: "job.sh".into(), hash, size: program.len() as u64, executable: true };
    let r = Reserve { cpus, files: vec![file], ..reserve_of(cluster) };
    let answer = ask(peer, &Request::Reserve(r)).await;
    assert!(matches!(answer, Response::Reserved(_)), "{answer:?}");
    let chunk = Chunk { cluster, hash, offset: 0, data: program.to_vec() };
    let stored = ask(peer, &Request::Chunk(chunk)).await;
    assert!(matches!(stored, Response::ChunkStored(ChunkStored { complete: true, .. })), "{stored:?}");
}

fn reserve_of(cluster: ClusterId) -> Reserve {
    Reserve {
        cluster,
        cpus: None,
        program: "job.sh".into(),
        function: None,
        files: Vec::new(),
        setup: None,
        cleanup: None,
        setup_timeout_secs: None,
        returns: vec![],
        owner: None,
        share: None,
    }
}

fn job(id: u64) -> JobSpec {
    JobSpec { id: JobId(id), args: vec![], timeout_secs: None, input: vec![], files: vec![] }
}

/// A short file name for number `k`: one to three printable characters (no `/` or `.`),
/// so that a million entries fit in one message.
fn short_name(mut k: usize) -> String {
    let alphabet: Vec<char> = ('!'..='~').filter(|c| !matches!(c, '/' | '.')).collect();
    let mut name = String::new();
    loop {
        name.push(alphabet[k % alphabet.len()]);
        k /= alphabet.len();
        if k == 0 {
            return name;
        }
        k -= 1;
    }
}

/// Runs jobs one after another on the victim's cluster until `stop`; returns how many
/// completed and the longest any took.
async fn keep_running_jobs(peer: &mut RawPeer, cluster: ClusterId, stop: &AtomicBool) -> (u64, Duration) {
    let (mut done, mut longest) = (0, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let id = JobId(done);
        let answer = ask(peer, &Request::Submit(Submit { cluster, jobs: vec![job(done)] })).await;
        assert!(matches!(answer, Response::Accepted(_)), "{answer:?}");
        loop {
            let left = (started + MAX_JOB_TIME * 4).saturating_duration_since(Instant::now());
            match peer.next_inbound(left).await {
                Some(Request::Results(r)) => {
                    if let Some(result) = r.results.iter().find(|r| r.id == id) {
                        assert_eq!(result.outcome, JobOutcome::Exited(0));
                        break;
                    }
                }
                Some(other) => panic!("unexpected request from the node: {other:?}"),
                None => panic!("job {id} got no result within {:?}", MAX_JOB_TIME * 4),
            }
        }
        longest = longest.max(started.elapsed());
        done += 1;
    }
    (done, longest)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_million_file_reserve_and_ten_million_id_cancel_do_not_stall_another_client() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("flooded"));
    let addr = node.addr.parse().unwrap();
    let (mut attacker, mut victim) = (RawPeer::connect(&addr).await.unwrap(), RawPeer::connect(&addr).await.unwrap());

    // The attacker holds a cluster with 2000 jobs queued behind one running.
    let busy = ClusterId(0xa77ac);
    stage(&mut attacker, busy, b"#!/bin/sh\nsleep 30\n", Some(1)).await;
    let jobs = (0..2000).map(job).collect();
    assert!(matches!(
        ask(&mut attacker, &Request::Submit(Submit { cluster: busy, jobs })).await,
        Response::Accepted(_)
    ));
    let victims = ClusterId(0x600d);
    stage(&mut victim, victims, b"#!/bin/sh\necho ok\n", None).await;

    // Encoded before the clock starts: a million entries (700k distinct files, each named
    // in one to three characters so that the message fits the 64 MiB limit), ten million
    // distinct job ids, and requests right at the per-request limit.
    let program = hash_of(b"#!/bin/sh\nsleep 30\n");
    let entry = |k: usize| FileEntry {
        name: if k == 0 { "job.sh".into() } else { short_name(k) },
        hash: if k == 0 { program } else { hash_of(&k.to_le_bytes()) },
        size: if k == 0 { 19 } else { 1 },
        executable: false,
    };
    let huge = Reserve { files: (0..1_000_000).map(|i| entry(i % 700_000)).collect(), ..reserve_of(ClusterId(0xb16)) };
    let huge = dispy_protocol::encode(&Request::Reserve(huge)).expect("a million entries fit one message");
    let at_limit = Reserve { files: (0..MAX_ITEMS_PER_REQUEST).map(entry).collect(), ..reserve_of(ClusterId(0xb17)) };
    let at_limit = dispy_protocol::encode(&Request::Reserve(at_limit)).unwrap();
    let ten_million = Cancel { cluster: busy, jobs: (0..10_000_000).map(JobId).collect() };
    let ten_million = dispy_protocol::encode(&Request::Cancel(ten_million)).unwrap();
    let cancel_at_limit = Cancel { cluster: busy, jobs: (0..MAX_ITEMS_PER_REQUEST as u64).rev().map(JobId).collect() };

    let stop = AtomicBool::new(false);
    let attack = async {
        let started = Instant::now();
        let answer: Response = dispy_protocol::decode(&attacker.request(huge).await.unwrap()).unwrap();
        assert!(
            matches!(&answer, Response::Refused(r) if r.kind == RefusalKind::BadRequest && r.message.contains("1000000 files")),
            "{answer:?}"
        );
        let answer: Response = dispy_protocol::decode(&attacker.request(at_limit).await.unwrap()).unwrap();
        let Response::Reserved(r) = answer else { panic!("{answer:?}") };
        assert_eq!(r.missing.len(), MAX_ITEMS_PER_REQUEST - 1, "every file but the program is missing");
        let answer: Response = dispy_protocol::decode(&attacker.request(ten_million).await.unwrap()).unwrap();
        assert!(
            matches!(&answer, Response::Refused(r) if r.kind == RefusalKind::BadRequest && r.message.contains("10000000 job ids")),
            "{answer:?}"
        );
        assert_eq!(ask(&mut attacker, &Request::Cancel(cancel_at_limit)).await, Response::Ok);
        for cluster in [busy, ClusterId(0xb17)] {
            assert_eq!(ask(&mut attacker, &Request::Release(Release { cluster })).await, Response::Ok);
        }
        stop.store(true, Ordering::Relaxed);
        started.elapsed()
    };
    let (attack_took, (jobs_done, longest)) = tokio::join!(attack, keep_running_jobs(&mut victim, victims, &stop));
    eprintln!("attack answered in {attack_took:?}; the victim ran {jobs_done} jobs, the longest in {longest:?}");
    assert!(jobs_done >= 3, "the victim's jobs kept completing ({jobs_done} in {attack_took:?})");
    assert!(longest < MAX_JOB_TIME, "a victim's job took {longest:?}:\n{}", node.proc.stderr());
    assert_eq!(ask(&mut victim, &Request::Release(Release { cluster: victims })).await, Response::Ok);
}
