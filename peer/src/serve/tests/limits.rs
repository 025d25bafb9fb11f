//! Per-client limits, ownership of results, and requests too large: each refusal goes to
//! the peer at fault with a message naming the limit, while other peers are served.

use super::harness::{Harness, file, job, reserve, settle, settle_until};
use super::{PROG, outcomes, refused};
use crate::serve::PeerLimits;
use dispy_protocol::{
    Cancel, ClusterId, Forget, JobId, JobOutcome, MAX_ITEMS_PER_REQUEST, OwnerToken, Recover, RefusalKind, Request,
    Response, Submit,
};
use libp2p::PeerId;
use std::time::Duration;

fn reserve_owned(cluster: u64, owner: &OwnerToken) -> Request {
    let mut r = reserve(cluster, vec![file("prog", PROG)]);
    if let Request::Reserve(r) = &mut r {
        r.owner = Some(owner.hash());
    }
    r
}

#[tokio::test(start_paused = true)]
async fn a_peer_over_its_cluster_cap_is_refused_while_another_is_served() {
    let mut h = Harness::start(2, |c| c.limits = PeerLimits { clusters: 2, ..PeerLimits::default() });
    let (greedy, other) = (PeerId::random(), PeerId::random());
    h.stage(greedy, 1, &[("prog", PROG)], None).await;
    h.stage(greedy, 2, &[("prog", PROG)], None).await;
    let third = h.ask(greedy, reserve(3, vec![file("prog", PROG)])).await;
    let Response::Refused(why) = &third else { panic!("{third:?}") };
    assert_eq!(why.kind, RefusalKind::OverLimit);
    assert!(why.message.contains("limit of 2 clusters per client"), "{}", why.message);
    // Resuming a cluster it holds is not a new one.
    assert!(matches!(h.ask(greedy, reserve(1, vec![file("prog", PROG)])).await, Response::Reserved(_)));
    // Another client is served as before.
    h.stage(other, 4, &[("prog", PROG)], None).await;
    assert!(matches!(h.submit(other, 4, [1]).await, Response::Accepted(_)));
    h.started().await.finish(JobOutcome::Exited(0));
    assert_eq!(outcomes(&h.results(1).await), vec![(1, JobOutcome::Exited(0))]);
}

#[tokio::test(start_paused = true)]
async fn a_peer_over_its_queued_jobs_or_bytes_is_refused_while_another_is_served() {
    let limits = PeerLimits { queued_jobs: 10, held_bytes: 10_000, ..PeerLimits::default() };
    let mut h = Harness::start(1, |c| c.limits = limits);
    let (greedy, other) = (PeerId::random(), PeerId::random());
    h.stage(greedy, 1, &[("prog", PROG)], None).await;
    h.stage(other, 2, &[("prog", PROG)], None).await;
    assert!(matches!(h.submit(greedy, 1, 0..8).await, Response::Accepted(_)));
    let over = h.submit(greedy, 1, 8..12).await;
    let Response::Refused(why) = &over else { panic!("{over:?}") };
    assert_eq!(why.kind, RefusalKind::OverLimit);
    assert!(why.message.contains("queued jobs"), "{}", why.message);
    let mut fat = job(100);
    fat.input = vec![0; 20_000];
    let submit = Request::Submit(Submit { cluster: ClusterId(1), jobs: vec![fat] });
    let Response::Refused(why) = h.ask(greedy, submit).await else { panic!("a fat job was taken") };
    assert!(why.message.contains("bytes"), "{}", why.message);
    // The other client's jobs are taken, and run.
    assert!(matches!(h.submit(other, 2, [99]).await, Response::Accepted(_)));
    for _ in 0..9 {
        let job = h.started().await;
        let id = job.id;
        job.finish(JobOutcome::Exited(0));
        if id == JobId(99) {
            return;
        }
    }
    panic!("the other client's job never ran");
}

#[tokio::test(start_paused = true)]
async fn requests_over_the_item_limit_are_refused_at_once() {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    h.stage(client, 1, &[("prog", PROG)], None).await;
    let n = MAX_ITEMS_PER_REQUEST + 1;
    let cancel = Request::Cancel(Cancel { cluster: ClusterId(1), jobs: (0..n as u64).map(JobId).collect() });
    let Response::Refused(why) = h.ask(client, cancel).await else { panic!("a huge cancel was taken") };
    assert_eq!(why.kind, RefusalKind::BadRequest);
    assert!(why.message.contains(&format!("{n} job ids")), "{}", why.message);
    let submit = Request::Submit(Submit { cluster: ClusterId(1), jobs: (0..n as u64).map(job).collect() });
    assert_eq!(refused(&h.ask(client, submit).await), Some(RefusalKind::BadRequest));
    let files = (0..n).map(|i| file(&format!("f{i}"), &i.to_le_bytes())).collect();
    assert_eq!(refused(&h.ask(client, reserve(2, files)).await), Some(RefusalKind::BadRequest));
    // At the limit, a cancel is taken (and costs O(1) per id).
    let cancel = Request::Cancel(Cancel { cluster: ClusterId(1), jobs: (0..n as u64 - 1).map(JobId).collect() });
    assert_eq!(h.ask(client, cancel).await, Response::Ok);
}

#[tokio::test(start_paused = true)]
async fn a_job_sent_twice_runs_once_and_is_not_killed_by_its_copy() {
    let mut h = Harness::start(2, |_| {});
    let client = PeerId::random();
    h.stage(client, 1, &[("prog", PROG)], None).await;
    assert!(matches!(h.submit(client, 1, [1, 1]).await, Response::Accepted(_)));
    let first = h.started().await;
    assert!(h.maybe_started().await.is_none(), "the copy in the same batch did not run");
    assert!(matches!(h.submit(client, 1, [1]).await, Response::Accepted(_)));
    assert!(h.maybe_started().await.is_none(), "nor a copy while it runs");
    assert!(!first.killed(), "the copy did not kill it");
    first.finish(JobOutcome::Exited(0));
    assert_eq!(outcomes(&h.results(1).await), vec![(1, JobOutcome::Exited(0))]);
}

/// A client back from a partition sends again the jobs it is not sure arrived: one that
/// ended meanwhile, its result still waiting for the client, does not run again.
#[tokio::test(start_paused = true)]
async fn a_job_sent_again_after_it_ended_does_not_run_twice() {
    let mut h = Harness::start(1, |c| c.zombie_interval = Duration::from_secs(60));
    let client = PeerId::random();
    h.stage(client, 1, &[("prog", PROG)], None).await;
    assert!(matches!(h.submit(client, 1, [1]).await, Response::Accepted(_)));
    let job = h.started().await;
    h.disconnected(client);
    job.finish(JobOutcome::Exited(0));
    settle().await;
    assert!(matches!(h.submit(client, 1, [1]).await, Response::Accepted(_)));
    assert!(h.maybe_started().await.is_none(), "its result waits: it is not run again");
}

/// A client that crashed comes back under a new identity with the token from its journal;
/// another peer, with no token or a wrong one, is refused, and the results stay.
#[tokio::test(start_paused = true)]
async fn recover_and_forget_are_for_the_clusters_owner_only() {
    let mut h = Harness::start(1, |c| c.zombie_interval = Duration::from_secs(5));
    let (client, stranger, restarted) = (PeerId::random(), PeerId::random(), PeerId::random());
    let token = OwnerToken([7; 32]);
    assert!(matches!(h.ask(client, reserve_owned(1, &token)).await, Response::Reserved(_)));
    h.stage(client, 1, &[("prog", PROG)], None).await;
    h.submit(client, 1, [1]).await;
    let job = h.started().await;
    h.disconnected(client);
    job.finish(JobOutcome::Exited(0));
    settle().await;

    // While the lease lives (the client is away within its zombie interval).
    let cluster = ClusterId(1);
    for (who, t) in [(stranger, None), (stranger, Some(OwnerToken([8; 32])))] {
        let answer = h.ask(who, Request::Recover(Recover { cluster, token: t })).await;
        let Response::Refused(why) = &answer else { panic!("a stranger recovered: {answer:?}") };
        assert_eq!(why.kind, RefusalKind::NotOwner);
        assert!(why.message.contains("owner token"), "{}", why.message);
        let forget = Request::Forget(Forget { cluster, jobs: vec![JobId(1)], token: t });
        assert_eq!(refused(&h.ask(who, forget).await), Some(RefusalKind::NotOwner));
    }

    // After it, from disk: the same, and a reserve of the id by another owner is refused.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let kept = h.dest.path().join(format!("results/{}/1.cbor", cluster.hidden_name()));
    assert!(settle_until(|| kept.exists()).await, "the result is kept on disk");
    for t in [None, Some(OwnerToken([8; 32]))] {
        let answer = h.ask(stranger, Request::Recover(Recover { cluster, token: t })).await;
        assert_eq!(refused(&answer), Some(RefusalKind::NotOwner), "{answer:?}");
        let forget = Request::Forget(Forget { cluster, jobs: vec![JobId(1)], token: t });
        assert_eq!(refused(&h.ask(stranger, forget).await), Some(RefusalKind::NotOwner));
    }
    let squat = h.ask(stranger, reserve_owned(1, &OwnerToken([8; 32]))).await;
    assert_eq!(refused(&squat), Some(RefusalKind::NotOwner), "{squat:?}");
    assert!(kept.exists(), "nothing was forgotten");

    // The owner, under a new identity, with its token.
    let Response::Recovered(r) = h.ask(restarted, Request::Recover(Recover { cluster, token: Some(token) })).await
    else {
        panic!("the owner could not recover")
    };
    assert_eq!(outcomes(&r.results), vec![(1, JobOutcome::Exited(0))]);
    let forget = Request::Forget(Forget { cluster, jobs: vec![JobId(1)], token: Some(token) });
    assert_eq!(h.ask(restarted, forget).await, Response::Ok);
    assert!(settle_until(|| !kept.exists()).await, "forgotten");
}

#[tokio::test(start_paused = true)]
async fn reserve_and_release_in_a_loop_does_not_end_a_serve_n_node() {
    let mut h = Harness::start(1, |c| c.serve_clusters = Some(1));
    let spammer = PeerId::random();
    for cluster in 1..=3 {
        h.stage(spammer, cluster, &[("prog", PROG)], None).await;
        let release = Request::Release(dispy_protocol::Release { cluster: ClusterId(cluster) });
        assert_eq!(h.ask(spammer, release).await, Response::Ok);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!h.node.is_finished(), "clusters that ran nothing are not served");
}

#[tokio::test(start_paused = true)]
async fn a_peer_over_its_open_uploads_is_refused_while_another_uploads() {
    let mut h = Harness::start(1, |c| c.limits = PeerLimits { uploads: 1, ..PeerLimits::default() });
    let (greedy, other) = (PeerId::random(), PeerId::random());
    let (a, b) = (file("prog", b"#!/bin/sh\nA\n"), file("b.txt", b"bbbb"));
    assert!(matches!(h.ask(greedy, reserve(1, vec![a.clone(), b.clone()])).await, Response::Reserved(_)));
    // A chunk past a gap keeps the first file's upload open, unanswered.
    let held = dispy_protocol::Chunk { cluster: ClusterId(1), hash: a.hash, offset: 2, data: b"in/sh\nA\n".to_vec() };
    h.send(greedy, Request::Chunk(held));
    let second = dispy_protocol::Chunk { cluster: ClusterId(1), hash: b.hash, offset: 0, data: b"bbbb".to_vec() };
    let answer = h.ask(greedy, Request::Chunk(second)).await;
    let Response::Refused(why) = &answer else { panic!("{answer:?}") };
    assert_eq!(why.kind, RefusalKind::OverLimit);
    assert!(why.message.contains("files arriving at once"), "{}", why.message);
    // Another peer stages its own files meanwhile.
    h.stage(other, 2, &[("prog", b"#!/bin/sh\nB\n")], None).await;
}

/// Idle function workers are kept per cluster for its next jobs, but no more than the
/// node's CPUs over all clusters: many function clusters do not pile up processes.
#[tokio::test(start_paused = true)]
async fn idle_function_workers_are_at_most_the_nodes_cpus() {
    use std::sync::atomic::Ordering;
    let mut h = Harness::start(2, |_| {});
    for cluster in 1..=3 {
        let client = PeerId::random();
        h.stage_with(client, cluster, &[("prog", PROG)], |r| r.function = Some("demo::f".into())).await;
        assert!(matches!(h.submit(client, cluster, [1, 2]).await, Response::Accepted(_)));
        let (a, b) = (h.started().await, h.started().await);
        a.finish(JobOutcome::Returned);
        b.finish(JobOutcome::Returned);
        h.results(2).await;
        settle().await;
        assert!(
            h.workers.load(Ordering::SeqCst) <= 2,
            "cluster {cluster}: {} workers",
            h.workers.load(Ordering::SeqCst)
        );
    }
}

/// A cluster released while its results travel, and reserved again under the same id
/// before they arrive: the old delivery's end must not upset the new lease's counts (it
/// underflowed, a panic in debug builds).
#[tokio::test(start_paused = true)]
async fn a_delivery_ending_after_its_cluster_was_reserved_again_upsets_nothing() {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    h.stage(client, 1, &[("prog", PROG)], None).await;
    h.submit(client, 1, [1]).await;
    h.started().await.finish(JobOutcome::Exited(0));
    let travelling = h.delivery().await;
    assert_eq!(h.ask(client, Request::Release(dispy_protocol::Release { cluster: ClusterId(1) })).await, Response::Ok);
    h.stage(client, 1, &[("prog", PROG)], None).await;
    travelling.ack();
    settle().await;
    assert!(!h.node.is_finished(), "the node lives on");
    assert!(matches!(h.submit(client, 1, [2]).await, Response::Accepted(_)));
    h.started().await.finish(JobOutcome::Exited(0));
    assert_eq!(outcomes(&h.results(1).await), vec![(2, JobOutcome::Exited(0))]);
}
