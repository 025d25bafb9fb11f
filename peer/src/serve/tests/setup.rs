//! A cluster's setup and cleanup programs on one node: once per cluster, jobs after setup,
//! a failed setup gives the jobs back, cleanup at release.

use super::harness::{Harness, settle};
use super::{PROG, outcomes, refused};
use crate::serve::setup::{CLUSTER_DIR_ENV, NODE_NAME_ENV};
use dispy_protocol::{ClusterId, JobOutcome, RefusalKind, Release, Request, Response};
use libp2p::PeerId;
use std::time::Duration;

/// A node of `cpus` slots with cluster 1 staged, its setup `prep.sh` and cleanup `tidy.sh`.
async fn with_setup(cpus: u32) -> (Harness, PeerId) {
    let mut h = Harness::start(cpus, |_| {});
    let client = PeerId::random();
    let files: &[(&str, &[u8])] = &[("prog", PROG), ("prep.sh", b"#!/bin/sh\n"), ("tidy.sh", b"#!/bin/sh\n:\n")];
    h.stage_with(client, 1, files, |r| {
        r.setup = Some("prep.sh".into());
        r.cleanup = Some("tidy.sh".into());
        r.setup_timeout_secs = Some(3600.0);
    })
    .await;
    (h, client)
}

#[tokio::test(start_paused = true)]
async fn jobs_wait_for_the_setup_which_runs_once_per_cluster() {
    let (mut h, client) = with_setup(2).await;
    assert!(matches!(h.submit(client, 1, [1, 2]).await, Response::Accepted(_)));
    let setup = h.task().await;
    assert_eq!(setup.program, "prep.sh");
    let dir = setup.env.iter().find(|(k, _)| k == CLUSTER_DIR_ENV).map(|(_, v)| v.clone()).expect("cluster dir");
    assert!(dir.ends_with("/shared"), "{dir}");
    assert!(!dir.contains(&ClusterId(1).to_string()), "the folder names no cluster id: {dir}");
    assert!(setup.env.contains(&(NODE_NAME_ENV.into(), "test-node".into())), "{:?}", setup.env);
    assert!(h.maybe_started().await.is_none(), "a job started before its setup ended");
    setup.finish(JobOutcome::Exited(0), b"");
    let (a, b) = (h.started().await, h.started().await);
    a.finish(JobOutcome::Exited(0));
    b.finish(JobOutcome::Exited(0));
    h.results(2).await;
    // More jobs, in later Submits: no second setup.
    h.submit(client, 1, [3]).await;
    h.started().await.finish(JobOutcome::Exited(0));
    h.results(1).await;
    assert!(h.maybe_task().await.is_none(), "setup ran again");
}

#[tokio::test(start_paused = true)]
async fn a_failed_setup_gives_the_jobs_back_and_refuses_later_ones() {
    let (mut h, client) = with_setup(1).await;
    h.submit(client, 1, [1, 2]).await;
    h.task().await.finish(JobOutcome::Exited(3), b"noise\ncannot find the license server\n");
    let results = h.results(2).await;
    for (id, outcome) in outcomes(&results) {
        let JobOutcome::Declined(why) = outcome else { panic!("job {id}: {outcome:?}") };
        assert!(why.contains("setup prep.sh failed on node test-node: exit 3"), "{why}");
        assert!(why.ends_with("cannot find the license server"), "{why}");
    }
    assert!(h.maybe_started().await.is_none(), "a job ran after a failed setup");
    let Response::Refused(r) = h.submit(client, 1, [3]).await else { panic!("accepted") };
    assert_eq!(r.kind, RefusalKind::SetupFailed);
    assert!(r.message.contains("exit 3"), "{}", r.message);
    // Something was set up: cleanup still runs at release.
    assert_eq!(h.ask(client, Request::Release(Release { cluster: ClusterId(1) })).await, Response::Ok);
    assert_eq!(h.task().await.program, "tidy.sh");
}

#[tokio::test(start_paused = true)]
async fn cleanup_runs_at_release_before_the_directory_goes() {
    let (mut h, client) = with_setup(1).await;
    h.submit(client, 1, [1, 2]).await;
    h.task().await.finish(JobOutcome::Exited(0), b"");
    let running = h.started().await;
    assert_eq!(h.ask(client, Request::Release(Release { cluster: ClusterId(1) })).await, Response::Ok);
    let cleanup = h.task().await;
    assert_eq!(cleanup.program, "tidy.sh");
    settle().await;
    assert!(running.killed(), "jobs are killed at release");
    assert!(cleanup.env.iter().any(|(k, _)| k == CLUSTER_DIR_ENV));
    // A failing cleanup is only logged.
    cleanup.finish(JobOutcome::Exited(1), b"tidy failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.maybe_task().await.is_none());
    assert!(h.maybe_started().await.is_none(), "the queued job never ran");
}

#[tokio::test(start_paused = true)]
async fn a_cluster_released_before_any_job_runs_no_setup_or_cleanup() {
    let (mut h, client) = with_setup(1).await;
    assert_eq!(h.ask(client, Request::Release(Release { cluster: ClusterId(1) })).await, Response::Ok);
    assert!(h.maybe_task().await.is_none(), "nothing was set up, so nothing is cleaned up");
}

#[tokio::test(start_paused = true)]
async fn a_setup_program_must_be_among_the_files_and_a_program_cluster() {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    let mut r = super::reserve(1, vec![super::file("prog", PROG)]);
    if let Request::Reserve(r) = &mut r {
        r.setup = Some("missing.sh".into());
    }
    assert_eq!(refused(&h.ask(client, r.clone()).await), Some(RefusalKind::BadFile));
    if let Request::Reserve(r) = &mut r {
        r.setup = Some("prog".into());
        r.function = Some("f".into());
    }
    assert_eq!(refused(&h.ask(client, r).await), Some(RefusalKind::BadFile));
}
