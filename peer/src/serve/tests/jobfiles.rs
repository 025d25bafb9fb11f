//! Jobs' own files on the node: declared inputs staged and linked for their job only,
//! returned files listed with the result and served in chunks to the cluster's client.

use super::harness::{Harness, file, job, reserve, wire};
use super::{PROG, refused};
use dispy_protocol::{
    CHUNK_SIZE, Chunk, ClusterId, Declare, Fetch, FileHash, JobOutcome, RefusalKind, Release, Request, Response, Submit,
};
use libp2p::PeerId;

/// A cluster with return globs, staged and ready.
async fn ready_returning(globs: &[&str]) -> (Harness, PeerId) {
    let mut h = Harness::start(2, |_| {});
    let client = PeerId::random();
    let mut r = reserve(1, vec![file("prog", PROG)]);
    if let Request::Reserve(r) = &mut r {
        r.returns = globs.iter().map(|g| g.to_string()).collect();
    }
    let Response::Reserved(reserved) = h.ask(client, r).await else { panic!("not reserved") };
    assert_eq!(reserved.missing.len(), 1);
    let chunk = Chunk { cluster: ClusterId(1), hash: file("prog", PROG).hash, offset: 0, data: PROG.to_vec() };
    assert!(matches!(h.ask(client, Request::Chunk(chunk)).await, Response::ChunkStored(_)));
    (h, client)
}

#[tokio::test(start_paused = true)]
async fn declared_inputs_are_staged_and_linked_for_their_job_only() {
    let (mut h, client) = ready_returning(&[]).await;
    let input = file("in.txt", b"input bytes");
    // Not declared: its chunks are refused.
    let early = Chunk { cluster: ClusterId(1), hash: input.hash, offset: 0, data: b"input bytes".to_vec() };
    assert_eq!(refused(&h.ask(client, Request::Chunk(early.clone())).await), Some(RefusalKind::BadFile));
    // A job naming it before it is staged is refused.
    let mut spec = job(5);
    spec.files = vec![input.clone()];
    let submit = Request::Submit(Submit { cluster: ClusterId(1), jobs: vec![spec.clone()] });
    assert_eq!(refused(&h.ask(client, submit.clone()).await), Some(RefusalKind::BadFile));
    let declare = Request::Declare(Declare { cluster: ClusterId(1), files: vec![input.clone()] });
    let Response::Declared(d) = h.ask(client, declare.clone()).await else { panic!("not declared") };
    assert_eq!(d.missing, vec![input.hash]);
    assert!(matches!(h.ask(client, Request::Chunk(early)).await, Response::ChunkStored(s) if s.complete));
    // Declared again (another job, same bytes): nothing to send.
    let Response::Declared(d) = h.ask(client, declare).await else { panic!("not declared") };
    assert!(d.missing.is_empty());
    assert!(matches!(h.ask(client, submit).await, Response::Accepted(_)));
    let started = h.started().await;
    assert_eq!(started.inputs, ["in.txt"]);
    started.finish(JobOutcome::Exited(0));
    assert_eq!(h.results(1).await[0].outcome, JobOutcome::Exited(0));
}

#[tokio::test(start_paused = true)]
async fn a_declaration_with_an_escaping_name_is_refused() {
    let (mut h, client) = ready_returning(&[]).await;
    let evil = file("../../etc/cron.d/x", b"* * * * * root sh");
    let declare = Request::Declare(Declare { cluster: ClusterId(1), files: vec![evil] });
    assert_eq!(refused(&h.ask(client, declare).await), Some(RefusalKind::BadPath));
    let other = PeerId::random();
    let declare = Request::Declare(Declare { cluster: ClusterId(1), files: vec![file("a", b"a")] });
    assert_eq!(refused(&h.ask(other, declare).await), Some(RefusalKind::UnknownCluster), "not its cluster");
}

#[tokio::test(start_paused = true)]
async fn returned_files_are_listed_and_served_in_chunks_to_the_client_only() {
    let (mut h, client) = ready_returning(&["*.bin"]).await;
    assert!(matches!(h.submit(client, 1, [1]).await, Response::Accepted(_)));
    let started = h.started().await;
    let data: Vec<u8> = (0..CHUNK_SIZE + 10).map(|i| (i % 251) as u8).collect();
    let dir = started.dir.clone().expect("a program job's directory");
    std::fs::write(dir.join("out.bin"), &data).expect("the job writes");
    std::fs::write(dir.join("notes.txt"), b"stays").expect("the job writes");
    started.finish(JobOutcome::Exited(1));
    let result = h.results(1).await.remove(0);
    assert_eq!(result.outcome, JobOutcome::Exited(1), "returned whatever the outcome");
    assert_eq!(result.returned.len(), 1);
    let out = &result.returned[0];
    assert_eq!((out.name.as_str(), out.size), ("out.bin", data.len() as u64));
    let fetch = |offset| Request::Fetch(Fetch { cluster: ClusterId(1), hash: out.hash, offset, share: None });
    let Response::Data(first) = h.ask(client, fetch(0)).await else { panic!("no data") };
    let Response::Data(rest) = h.ask(client, fetch(CHUNK_SIZE as u64)).await else { panic!("no data") };
    assert_eq!([first.data, rest.data].concat(), data);
    // Only the cluster's client, only files its jobs returned.
    assert_eq!(refused(&h.ask(PeerId::random(), fetch(0)).await), Some(RefusalKind::UnknownCluster));
    let other = Request::Fetch(Fetch { cluster: ClusterId(1), hash: FileHash([3; 32]), offset: 0, share: None });
    assert_eq!(refused(&h.ask(client, other).await), Some(RefusalKind::BadFile));
    // Released: the file leaves the store.
    let stored = h.dest.path().join("store").join(out.hash.to_hex());
    assert!(stored.exists());
    assert_eq!(wire(&h.ask(client, Request::Release(Release { cluster: ClusterId(1) })).await), Response::Ok);
    // The removal runs on the blocking pool: give it turns (on the paused clock).
    for _ in 0..10_000 {
        if !stored.exists() {
            break;
        }
        super::harness::settle().await;
        std::thread::yield_now();
    }
    assert!(!stored.exists(), "a released cluster's returned file is deleted");
}

#[tokio::test(start_paused = true)]
async fn an_input_leaves_the_store_when_no_job_needs_it_but_not_while_one_is_announced() {
    let (mut h, client) = ready_returning(&[]).await;
    let input = file("in.txt", b"input bytes");
    let stored = h.dest.path().join("store").join(input.hash.to_hex());
    let declare = Request::Declare(Declare { cluster: ClusterId(1), files: vec![input.clone()] });
    let chunk = Chunk { cluster: ClusterId(1), hash: input.hash, offset: 0, data: b"input bytes".to_vec() };
    let with_input = |id| {
        let mut spec = job(id);
        spec.files = vec![input.clone()];
        Request::Submit(Submit { cluster: ClusterId(1), jobs: vec![spec] })
    };
    assert!(matches!(h.ask(client, declare.clone()).await, Response::Declared(_)));
    assert!(matches!(h.ask(client, Request::Chunk(chunk.clone())).await, Response::ChunkStored(_)));
    assert!(matches!(h.ask(client, with_input(1)).await, Response::Accepted(_)));
    let first = h.started().await;
    // The next job with the same input is announced while the first runs: the input stays.
    let Response::Declared(d) = h.ask(client, declare.clone()).await else { panic!("not declared") };
    assert!(d.missing.is_empty());
    first.finish(JobOutcome::Exited(0));
    h.results(1).await;
    assert!(stored.exists(), "announced for job 2");
    assert!(matches!(h.ask(client, with_input(2)).await, Response::Accepted(_)));
    h.started().await.finish(JobOutcome::Exited(0));
    h.results(1).await;
    // No job needs it now: it goes (on the blocking pool).
    for _ in 0..10_000 {
        if !stored.exists() {
            break;
        }
        super::harness::settle().await;
        std::thread::yield_now();
    }
    assert!(!stored.exists(), "an input no job needs leaves the store");
    // Needed again later: declared as missing, and sent again.
    let Response::Declared(d) = h.ask(client, declare).await else { panic!("not declared") };
    assert_eq!(d.missing, vec![input.hash]);
}
