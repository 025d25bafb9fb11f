//! What running function jobs send before their result: provisional values delivered in
//! order and ahead of the result, bounded per job; sent files kept like returns and served.

use super::harness::{Harness, file, reserve, wire};
use super::{PROG, refused};
use crate::serve::jobnotes::{JobNote, MAX_PROVISIONAL_PER_JOB};
use dispy_protocol::{ClusterId, Fetch, JobId, JobOutcome, JobResult, Provisional, RefusalKind, Request, Response};
use libp2p::PeerId;
use sha2::{Digest, Sha256};

/// A function cluster, staged and ready.
async fn function_cluster() -> (Harness, PeerId) {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    let mut r = reserve(1, vec![file("prog", PROG)]);
    if let Request::Reserve(r) = &mut r {
        r.function = Some("f".into());
    }
    h.ask(client, r).await;
    h.stage(client, 1, &[("prog", PROG)], None).await;
    (h, client)
}

/// Acknowledges deliveries until job `id`'s result comes: the provisional values seen
/// first (none may come after), and the result.
async fn until_result(h: &mut Harness, id: JobId) -> (Vec<Provisional>, JobResult) {
    let mut values = Vec::new();
    loop {
        let r = h.delivery().await.ack();
        values.extend(r.provisional);
        if let Some(result) = r.results.into_iter().find(|r| r.id == id) {
            return (values, result);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn provisional_values_reach_the_client_in_order_before_the_result_and_are_bounded() {
    let (mut h, client) = function_cluster().await;
    h.submit(client, 1, [1]).await;
    let job = h.started().await;
    let notes = job.notes.clone().expect("a function job");
    for i in 0..MAX_PROVISIONAL_PER_JOB + 2 {
        notes.send(JobNote::Provisional(vec![(i % 250) as u8])).await.expect("relayed");
    }
    drop(notes);
    job.finish(JobOutcome::Returned);
    let (values, result) = until_result(&mut h, JobId(1)).await;
    assert_eq!(values.len(), MAX_PROVISIONAL_PER_JOB, "the rest are dropped");
    assert!(values.iter().all(|p| p.job == JobId(1)));
    let expected: Vec<Vec<u8>> = (0..MAX_PROVISIONAL_PER_JOB).map(|i| vec![(i % 250) as u8]).collect();
    assert_eq!(values.into_iter().map(|p| p.value).collect::<Vec<_>>(), expected, "in order");
    let note = result.return_note.expect("a note");
    assert!(note.contains("2 provisional values dropped"), "{note}");
}

#[tokio::test(start_paused = true)]
async fn a_sent_file_is_kept_listed_with_the_result_and_fetchable_and_a_link_is_not() {
    let (mut h, client) = function_cluster().await;
    h.submit(client, 1, [1]).await;
    let job = h.started().await;
    let notes = job.notes.clone().expect("a function job");
    let dir = h.dest.path().join("worker-sent");
    std::fs::create_dir_all(&dir).expect("dir");
    let data = b"sent while running".to_vec();
    std::fs::write(dir.join("r.txt"), &data).expect("write");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("evil.txt")).expect("symlink");
    notes.send(JobNote::File { path: dir.join("r.txt"), name: "r.txt".into() }).await.expect("relayed");
    notes.send(JobNote::File { path: dir.join("evil.txt"), name: "evil.txt".into() }).await.expect("relayed");
    drop(notes);
    job.finish(JobOutcome::Returned);
    let (_, result) = until_result(&mut h, JobId(1)).await;
    assert_eq!(result.returned.len(), 1, "{result:?}");
    let sent = &result.returned[0];
    assert_eq!((sent.name.as_str(), sent.size), ("r.txt", data.len() as u64));
    assert_eq!(sent.hash.0, <[u8; 32]>::from(Sha256::digest(&data)));
    let note = result.return_note.expect("the link is named");
    assert!(note.contains("evil.txt: not sent: not a regular file"), "{note}");
    let fetch = Request::Fetch(Fetch { cluster: ClusterId(1), hash: sent.hash, offset: 0, share: None });
    let Response::Data(got) = h.ask(client, fetch.clone()).await else { panic!("no data") };
    assert_eq!(got.data, data);
    // Only the cluster's client may fetch it.
    assert_eq!(refused(&wire(&h.ask(PeerId::random(), fetch).await)), Some(RefusalKind::UnknownCluster));
}
