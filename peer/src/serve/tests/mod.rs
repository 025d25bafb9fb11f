//! Unit tests of the node, with no process and no swarm: a [`harness::Harness`] plays the
//! client peers and the network, a [`fake::FakeRunner`] the jobs, on a paused clock.

mod fake;
mod fuzz;
mod harness;
mod jobfiles;
mod jobnotes;
mod kept_files;
mod limits;
mod nested;
mod setup;
mod share;

use dispy_protocol::{
    CHUNK_SIZE, CHUNKS_IN_FLIGHT, Cancel, Chunk, ClusterId, Forget, Hello, JobId, JobOutcome, Recover, RefusalKind,
    Release, Request, Response, Role, WIRE_VERSION,
};
use harness::{Harness, file, reserve, settle, settle_until};
use libp2p::PeerId;
use std::time::Duration;

pub(super) const PROG: &[u8] = b"#!/bin/sh\necho hi\n";

pub(super) fn refused(r: &Response) -> Option<RefusalKind> {
    match r {
        Response::Refused(refusal) => Some(refusal.kind),
        _ => None,
    }
}

fn outcomes(results: &[dispy_protocol::JobResult]) -> Vec<(u64, JobOutcome)> {
    let mut v: Vec<(u64, JobOutcome)> = results.iter().map(|r| (r.id.0, r.outcome.clone())).collect();
    v.sort_by_key(|(id, _)| *id);
    v
}

/// A client with cluster 1 staged and ready.
async fn ready(cpus: u32, tune: impl FnOnce(&mut crate::serve::ServeConfig)) -> (Harness, PeerId) {
    let mut h = Harness::start(cpus, tune);
    let client = PeerId::random();
    h.stage(client, 1, &[("prog", PROG)], None).await;
    (h, client)
}

#[tokio::test(start_paused = true)]
async fn hello_describes_the_node() {
    let mut h = Harness::start(3, |c| c.max_file_size = Some(1000));
    let answer = h.ask(PeerId::random(), Request::Hello(Hello::client("me".into()))).await;
    let Response::Hello(hello) = answer else { panic!("{answer:?}") };
    assert_eq!((hello.role, hello.name.as_str(), hello.cpus, hello.free_cpus), (Role::Node, "test-node", 3, 3));
    assert_eq!((hello.wire_version, hello.max_file_size), (WIRE_VERSION, Some(1000)));
}

#[tokio::test(start_paused = true)]
async fn reserve_reports_missing_files_and_clamps_cpus() {
    let mut h = Harness::start(2, |_| {});
    let client = PeerId::random();
    let (prog, data) = (file("prog", PROG), file("data.txt", b"1 2 3"));
    let mut r = reserve(1, vec![prog.clone(), data.clone(), prog.clone()]);
    if let Request::Reserve(r) = &mut r {
        r.cpus = Some(9);
    }
    let Response::Reserved(reserved) = h.ask(client, r).await else { panic!("not reserved") };
    assert_eq!(reserved.cpus, 2, "clamped to the node's");
    assert_eq!(reserved.missing, vec![prog.hash, data.hash], "each missing file once");

    h.stage(client, 2, &[("prog", PROG)], Some(1)).await;
    let Response::Reserved(again) = h.ask(client, reserve(3, vec![prog.clone()])).await else { panic!() };
    assert!(again.missing.is_empty(), "a stored file is not asked for again");
}

#[tokio::test(start_paused = true)]
async fn reserve_refuses_bad_paths_large_files_and_a_missing_program() {
    let mut h = Harness::start(2, |c| c.max_file_size = Some(10));
    let client = PeerId::random();
    let escape = reserve(1, vec![file("prog", b"x"), file("../etc/passwd", b"y")]);
    assert_eq!(refused(&h.ask(client, escape).await), Some(RefusalKind::BadPath));
    let large = reserve(1, vec![file("prog", b"much more than ten bytes")]);
    assert_eq!(refused(&h.ask(client, large).await), Some(RefusalKind::TooLarge));
    let no_program = reserve(1, vec![file("other", b"x")]);
    assert_eq!(refused(&h.ask(client, no_program).await), Some(RefusalKind::BadFile));
    // None of them took a lease.
    assert_eq!(refused(&h.submit(client, 1, [1]).await), Some(RefusalKind::UnknownCluster));
}

#[tokio::test(start_paused = true)]
async fn another_clients_cluster_is_refused() {
    let (mut h, _client) = ready(2, |_| {}).await;
    let other = PeerId::random();
    assert_eq!(refused(&h.ask(other, reserve(1, vec![file("prog", PROG)])).await), Some(RefusalKind::UnknownCluster));
    assert_eq!(refused(&h.submit(other, 1, [1]).await), Some(RefusalKind::UnknownCluster));
    let cancel = Request::Cancel(Cancel { cluster: ClusterId(1), jobs: vec![JobId(1)] });
    assert_eq!(refused(&h.ask(other, cancel).await), Some(RefusalKind::UnknownCluster));
}

#[tokio::test(start_paused = true)]
async fn chunks_out_of_order_are_held_and_written_in_order() {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    let data: Vec<u8> = (0..30u8).collect();
    let entry = file("prog", &data);
    let Response::Reserved(r) = h.ask(client, reserve(1, vec![entry.clone()])).await else { panic!() };
    assert_eq!(r.missing, vec![entry.hash]);
    let chunk = |offset: usize| {
        Request::Chunk(Chunk {
            cluster: ClusterId(1),
            hash: entry.hash,
            offset: offset as u64,
            data: data[offset..offset + 10].to_vec(),
        })
    };
    let (last, middle) = (h.send(client, chunk(20)), h.send(client, chunk(10)));
    settle().await;
    let first = h.ask(client, chunk(0)).await;
    assert!(matches!(&first, Response::ChunkStored(s) if !s.complete), "{first:?}");
    assert!(matches!(h.answer(middle).await, Response::ChunkStored(s) if !s.complete));
    assert!(matches!(h.answer(last).await, Response::ChunkStored(s) if s.complete && s.hash == entry.hash));
    let stored = std::fs::read(h.dest.path().join("store").join(entry.hash.to_hex())).expect("stored");
    assert_eq!(stored, data);
    assert!(matches!(h.submit(client, 1, [1]).await, Response::Accepted(a) if a.count == 1));
}

#[tokio::test(start_paused = true)]
async fn chunks_past_the_window_or_too_large_are_refused() {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    let (a, b) = (file("prog", &[7u8; 100]), file("b", &[8u8; 50]));
    h.ask(client, reserve(1, vec![a.clone(), b.clone()])).await;
    let chunk = |f: &dispy_protocol::FileEntry, offset: u64, len: usize| {
        Request::Chunk(Chunk { cluster: ClusterId(1), hash: f.hash, offset, data: vec![7u8; len] })
    };
    // A gap at 0: the next CHUNKS_IN_FLIGHT are held, one more is over the window.
    for i in 1..=CHUNKS_IN_FLIGHT as u64 {
        h.send(client, chunk(&a, i * 10, 10));
    }
    let over = h.ask(client, chunk(&a, 50, 10)).await;
    assert_eq!(refused(&over), Some(RefusalKind::BadFile), "{over:?}");
    let Response::Refused(huge) = h.ask(client, chunk(&b, 0, CHUNK_SIZE + 1)).await else { panic!("taken") };
    assert!(huge.message.contains("chunk size"), "{}", huge.message);
    // More bytes than declared: the file is refused, and so is what follows of it.
    let Response::Refused(past) = h.ask(client, chunk(&b, 0, 60)).await else { panic!("taken") };
    assert!(past.message.contains("declared size"), "{}", past.message);
    let Response::Refused(after) = h.ask(client, chunk(&b, 0, 50)).await else { panic!("taken") };
    assert!(after.message.contains("was refused"), "{}", after.message);
    assert_eq!(refused(&h.submit(client, 1, [1]).await), Some(RefusalKind::BadFile));
}

#[tokio::test(start_paused = true)]
async fn submit_is_refused_until_the_files_are_staged() {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    h.ask(client, reserve(1, vec![file("prog", PROG)])).await;
    let Response::Refused(r) = h.submit(client, 1, [1]).await else { panic!("accepted") };
    assert_eq!(r.kind, RefusalKind::BadFile);
    assert!(r.message.contains("prog"), "{}", r.message);
    assert!(h.maybe_started().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn jobs_start_up_to_the_clusters_cpus() {
    let mut h = Harness::start(4, |_| {});
    let client = PeerId::random();
    h.stage(client, 1, &[("prog", PROG)], Some(2)).await;
    assert!(matches!(h.submit(client, 1, [1, 2, 3]).await, Response::Accepted(a) if a.count == 3));
    let (a, b) = (h.started().await, h.started().await);
    assert_eq!((a.id, b.id), (JobId(1), JobId(2)));
    assert!(!a.function);
    assert!(h.maybe_started().await.is_none(), "the cluster holds 2 of the node's 4 CPUs");
    let Response::Hello(hello) = h.ask(client, Request::Hello(Hello::client("me".into()))).await else { panic!() };
    assert_eq!(hello.free_cpus, 2);
    a.finish(JobOutcome::Exited(0));
    let c = h.started().await;
    assert_eq!(c.id, JobId(3));
    b.finish(JobOutcome::Exited(3));
    let results = h.results(2).await;
    assert_eq!(outcomes(&results), vec![(1, JobOutcome::Exited(0)), (2, JobOutcome::Exited(3))]);
    assert!(!c.killed());
}

#[tokio::test(start_paused = true)]
async fn two_clusters_share_the_node_fairly() {
    let (mut h, a) = ready(2, |_| {}).await;
    let b = PeerId::random();
    h.stage(b, 2, &[("prog", PROG)], None).await;
    h.submit(a, 1, [1, 2, 3, 4]).await;
    let (first, _second) = (h.started().await, h.started().await);
    h.submit(b, 2, [101, 102]).await;
    assert!(h.maybe_started().await.is_none(), "both slots are taken");
    first.finish(JobOutcome::Exited(0));
    // Cluster 1 runs one job, cluster 2 none: the free slot goes to cluster 2.
    assert_eq!(h.started().await.id, JobId(101));
}

#[tokio::test(start_paused = true)]
async fn cancel_kills_running_jobs_and_drops_queued_ones() {
    let (mut h, client) = ready(1, |_| {}).await;
    h.submit(client, 1, [1, 2]).await;
    let running = h.started().await;
    let cancel = Request::Cancel(Cancel { cluster: ClusterId(1), jobs: vec![JobId(2)] });
    assert_eq!(h.ask(client, cancel).await, Response::Ok);
    let cancel = Request::Cancel(Cancel { cluster: ClusterId(1), jobs: vec![JobId(1)] });
    assert_eq!(h.ask(client, cancel).await, Response::Ok);
    let results = h.results(2).await;
    assert_eq!(outcomes(&results), vec![(1, JobOutcome::Cancelled), (2, JobOutcome::Cancelled)]);
    assert!(running.killed());
    assert!(h.maybe_started().await.is_none(), "the queued job never started");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_that_overtakes_its_submit_cancels_the_job_on_arrival() {
    let (mut h, client) = ready(1, |_| {}).await;
    let cancel = Request::Cancel(Cancel { cluster: ClusterId(1), jobs: vec![JobId(7)] });
    assert_eq!(h.ask(client, cancel).await, Response::Ok);
    assert!(matches!(h.submit(client, 1, [7, 8]).await, Response::Accepted(a) if a.count == 2));
    assert_eq!(h.started().await.id, JobId(8));
    let results = h.results(1).await;
    assert_eq!(outcomes(&results), vec![(7, JobOutcome::Cancelled)]);
}

#[tokio::test(start_paused = true)]
async fn a_drain_declines_queued_jobs_and_lets_running_ones_finish() {
    let (mut h, client) = ready(1, |_| {}).await;
    h.submit(client, 1, [1, 2, 3]).await;
    let running = h.started().await;
    h.stop.send(crate::serve::Stop::Drain).expect("node runs");
    let declined = h.results(2).await;
    for (id, outcome) in outcomes(&declined) {
        assert!(id == 2 || id == 3);
        assert!(matches!(outcome, JobOutcome::Declined(why) if why.contains("draining")));
    }
    assert_eq!(refused(&h.submit(client, 1, [4]).await), Some(RefusalKind::ShuttingDown));
    assert!(!h.node.is_finished(), "a job still runs");
    running.finish(JobOutcome::Exited(0));
    assert_eq!(outcomes(&h.results(1).await), vec![(1, JobOutcome::Exited(0))]);
    let stopped = tokio::time::timeout(Duration::from_secs(5), &mut h.node).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "drained nodes stop");
}

#[tokio::test(start_paused = true)]
async fn a_client_gone_past_the_zombie_interval_loses_its_jobs_but_not_its_results() {
    let (mut h, client) = ready(2, |c| c.zombie_interval = Duration::from_secs(5)).await;
    h.submit(client, 1, [1, 2]).await;
    let (done, running) = (h.started().await, h.started().await);
    h.disconnected(client);
    done.finish(JobOutcome::Exited(0));
    settle().await;
    assert!(!running.killed(), "within the zombie interval");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(running.killed(), "past it");
    let kept = h.dest.path().join(format!("results/{}/1.cbor", ClusterId(1).hidden_name()));
    assert!(settle_until(|| kept.exists()).await, "the undelivered result is kept on disk");
    assert!(!kept.with_file_name("2.cbor").exists(), "a killed job leaves no result");

    // The client comes back and recovers it; then forgets it.
    h.unreachable.clear();
    h.connected(client);
    let Response::Recovered(r) = h.ask(client, Request::Recover(Recover { cluster: ClusterId(1), token: None })).await
    else {
        panic!("not recovered")
    };
    assert_eq!(outcomes(&r.results), vec![(1, JobOutcome::Exited(0))]);
    let forget = Request::Forget(Forget { cluster: ClusterId(1), jobs: vec![JobId(1)], token: None });
    assert_eq!(h.ask(client, forget).await, Response::Ok);
    assert!(settle_until(|| !kept.exists()).await, "forgotten");
    let Response::Recovered(r) = h.ask(client, Request::Recover(Recover { cluster: ClusterId(1), token: None })).await
    else {
        panic!()
    };
    assert!(r.results.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_client_back_within_the_zombie_interval_gets_its_results() {
    let (mut h, client) = ready(1, |c| c.zombie_interval = Duration::from_secs(5)).await;
    h.submit(client, 1, [1]).await;
    let job = h.started().await;
    h.disconnected(client);
    job.finish(JobOutcome::Exited(4));
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.unreachable.clear();
    h.connected(client);
    // It reserves again, as a reconnecting client does: the cluster goes on.
    let Response::Reserved(r) = h.ask(client, reserve(1, vec![file("prog", PROG)])).await else { panic!() };
    assert_eq!(r.cpus, 1);
    assert_eq!(outcomes(&h.results(1).await), vec![(1, JobOutcome::Exited(4))]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(matches!(h.submit(client, 1, [2]).await, Response::Accepted(_)), "the lease is still held");
}

#[tokio::test(start_paused = true)]
async fn a_failed_delivery_is_retried_after_a_second_and_delivered_once() {
    let (mut h, client) = ready(1, |_| {}).await;
    h.submit(client, 1, [1]).await;
    let job = h.started().await;
    // Its start goes first, on its own: no start timer is left to resend the results early.
    assert_eq!(h.delivery().await.ack().started, vec![JobId(1)]);
    job.finish(JobOutcome::Exited(0));
    let first = h.delivery().await;
    let failed_at = tokio::time::Instant::now();
    assert_eq!(outcomes(&first.fail().results), vec![(1, JobOutcome::Exited(0))]);
    let again = h.delivery().await;
    assert!(failed_at.elapsed() >= Duration::from_secs(1), "retried after {:?}", failed_at.elapsed());
    assert_eq!(outcomes(&again.ack().results), vec![(1, JobOutcome::Exited(0))]);
    assert!(h.quiet_for(Duration::from_secs(10)).await, "delivered exactly once");
}

#[tokio::test(start_paused = true)]
async fn a_start_is_sent_alone_after_its_linger() {
    let (mut h, client) = ready(1, |_| {}).await;
    let submitted = tokio::time::Instant::now();
    h.submit(client, 1, [1]).await;
    let job = h.started().await;
    let starts = h.delivery().await;
    assert!(submitted.elapsed() >= Duration::from_millis(2), "sent after {:?}", submitted.elapsed());
    let starts = starts.ack();
    assert_eq!((starts.started, starts.results.len()), (vec![JobId(1)], 0));
    job.finish(JobOutcome::Exited(0));
    let done = h.delivery().await.ack();
    assert_eq!((done.started.len(), outcomes(&done.results)), (0, vec![(1, JobOutcome::Exited(0))]));
}

#[tokio::test(start_paused = true)]
async fn a_quick_jobs_start_rides_with_its_result() {
    let (mut h, client) = ready(1, |_| {}).await;
    h.submit(client, 1, [1]).await;
    h.started().await.finish(JobOutcome::Exited(0));
    let d = h.delivery().await.ack();
    assert_eq!((d.started, outcomes(&d.results)), (vec![JobId(1)], vec![(1, JobOutcome::Exited(0))]));
}

#[tokio::test(start_paused = true)]
async fn a_function_cluster_reuses_its_worker() {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    let mut r = reserve(1, vec![file("prog", PROG)]);
    if let Request::Reserve(r) = &mut r {
        r.function = Some("square".into());
    }
    h.ask(client, r).await;
    h.stage(client, 1, &[("prog", PROG)], None).await;
    h.submit(client, 1, [1, 2]).await;
    let first = h.started().await;
    assert!(first.function);
    first.finish(JobOutcome::Returned);
    let second = h.started().await;
    assert_eq!((second.id, second.function), (JobId(2), true));
    second.finish(JobOutcome::Returned);
    assert_eq!(outcomes(&h.results(2).await), vec![(1, JobOutcome::Returned), (2, JobOutcome::Returned)]);
}

#[tokio::test(start_paused = true)]
async fn serve_n_drains_after_n_clusters() {
    let (mut h, client) = ready(1, |c| c.serve_clusters = Some(1)).await;
    h.submit(client, 1, [1]).await;
    h.started().await.finish(JobOutcome::Exited(0));
    h.results(1).await;
    settle().await;
    assert!(!h.node.is_finished(), "the cluster is still held");
    assert_eq!(h.ask(client, Request::Release(Release { cluster: ClusterId(1) })).await, Response::Ok);
    let stopped = tokio::time::timeout(Duration::from_secs(5), &mut h.node).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "stopped after one cluster");
    assert!(!h.dest.path().join("jobs").exists(), "job directories removed");
}

#[tokio::test(start_paused = true)]
async fn a_time_limit_no_duration_can_hold_is_refused_and_the_node_lives_on() {
    for function in [None, Some("demo::square".to_string())] {
        let mut h = Harness::start(2, |_| {});
        let client = PeerId::random();
        let f = function.clone();
        h.stage_with(client, 1, &[("prog", PROG)], |r| r.function = f).await;
        let huge = std::time::Duration::MAX.as_secs_f64();
        for t in [1e20, huge, f64::MAX, f64::NAN, -5.0, 0.0, f64::INFINITY, f64::NEG_INFINITY] {
            let mut bad = harness::job(7);
            bad.timeout_secs = Some(t);
            let jobs = vec![harness::job(1), bad];
            let submit = Request::Submit(dispy_protocol::Submit { cluster: ClusterId(1), jobs });
            let answer = h.ask(client, submit).await;
            let Response::Refused(why) = &answer else { panic!("{t}: {answer:?}") };
            assert_eq!(why.kind, RefusalKind::BadRequest, "{t}");
            assert!(why.message.contains("job 7") && why.message.contains("time limit"), "{}", why.message);
        }
        assert!(h.maybe_started().await.is_none(), "no job of a refused batch runs");
        // The node lives on with its slots: both take the next jobs at once.
        let mut ok = harness::job(2);
        ok.timeout_secs = Some(3600.0);
        let submit = Request::Submit(dispy_protocol::Submit { cluster: ClusterId(1), jobs: vec![ok, harness::job(3)] });
        assert!(matches!(h.ask(client, submit).await, Response::Accepted(_)));
        let (a, b) = (h.started().await, h.started().await);
        a.finish(JobOutcome::Exited(0));
        b.finish(JobOutcome::Exited(0));
        assert_eq!(h.results(2).await.len(), 2);
        assert!(!h.node.is_finished());
    }
}

#[tokio::test(start_paused = true)]
async fn a_setup_time_limit_no_duration_can_hold_is_refused() {
    let mut h = Harness::start(1, |_| {});
    let mut r = reserve(1, vec![file("prog", PROG)]);
    if let Request::Reserve(r) = &mut r {
        r.setup = Some("prog".into());
        r.setup_timeout_secs = Some(1e20);
    }
    assert_eq!(refused(&h.ask(PeerId::random(), r).await), Some(RefusalKind::BadRequest));
}
