//! What the client believes of a node: no more CPUs than it announced or than any node has,
//! and never a Submit too large to send, whatever the jobs carry.

use super::*;
use crate::scheduler::jobs::{MAX_JOB_BYTES, SUBMIT_BATCH_BYTES};
use crate::scheduler::nodes::MAX_NODE_CPUS;

fn job(id: u64, args: Vec<String>, input: Vec<u8>) -> NewJob {
    NewJob::new(JobId(id), args, input, None, None)
}

#[test]
fn a_node_claiming_a_billion_cpus_is_believed_to_have_at_most_1024() {
    let mut sim = Sim::new(settings());
    let p = sim.reserving(1, 1_000_000_000);
    sim.answer(p, Asked::Reserve, Response::Reserved(Reserved { cpus: u32::MAX, missing: Vec::new(), resumed: false }));
    assert_eq!(sim.core_infos()[0].cpus, MAX_NODE_CPUS);
    sim.submit(10 * MAX_NODE_CPUS as usize);
    let sent: usize = sim.submits().iter().map(|(_, s, _)| s.jobs.len()).sum();
    assert!(sent <= 2 * MAX_NODE_CPUS as usize, "{sent} jobs handed to one node that says it has a billion CPUs");

    // A reservation granting more than the greeting announced gets what was announced.
    let q = sim.reserving(2, 4);
    sim.answer(q, Asked::Reserve, Response::Reserved(Reserved { cpus: 4096, missing: Vec::new(), resumed: false }));
    let infos = sim.core_infos();
    assert_eq!(infos.iter().find(|i| i.node.peer_id == q).map(|i| i.cpus), Some(4));
}

#[test]
fn a_batch_of_large_jobs_is_split_into_submits_that_fit() {
    let mut sim = Sim::new(settings());
    let p = sim.node_up(1, 64);
    // 128 jobs of 256 KiB of arguments each: 32 MiB, once sent in one Submit.
    let big = "x".repeat(256 << 10);
    let jobs: Vec<NewJob> = (0..128).map(|i| job(i, vec![big.clone()], Vec::new())).collect();
    let effects = sim.core.on_cmd(Cmd::Submit { jobs }, sim.t0);
    sim.absorb(effects);
    let submits = sim.submits();
    assert!(submits.len() >= 8, "{} submits", submits.len());
    let mut ids = Vec::new();
    for (peer, s, _) in &submits {
        assert_eq!(*peer, p);
        let bytes = encode(&Request::Submit(s.clone())).expect("fits a message").len();
        assert!(bytes <= SUBMIT_BATCH_BYTES + 4096, "a Submit of {bytes} bytes");
        ids.extend(ids_of(s));
    }
    assert_eq!(ids, (0..128).map(JobId).collect::<Vec<_>>(), "every job sent once, in order");
}

#[test]
fn a_job_too_large_for_any_message_ends_unrun_saying_why() {
    let mut sim = Sim::new(settings());
    sim.node_up(1, 2);
    let jobs = vec![job(0, vec!["ok".into()], Vec::new()), job(1, Vec::new(), vec![0; MAX_JOB_BYTES + 1])];
    let effects = sim.core.on_cmd(Cmd::Submit { jobs }, sim.t0);
    sim.absorb(effects);
    let sent: Vec<JobId> = sim.submits().iter().flat_map(|(_, s, _)| ids_of(s)).collect();
    assert_eq!(sent, [JobId(0)]);
    assert_eq!(sim.reports.len(), 1);
    let r = &sim.reports[0];
    assert_eq!(r.id, JobId(1));
    assert!(matches!(&r.outcome, JobOutcome::NotRun(why) if why.contains("pass large data in a file")), "{r:?}");
}

#[test]
fn a_node_that_keeps_a_job_past_its_timeout_is_given_up() {
    let mut s = settings();
    s.timeout_secs = Some(10.0);
    let mut sim = Sim::new(s);
    let p = sim.node_up(1, 2);
    let ids = sim.submit(2);
    assert_eq!(sim.submits().len(), 1);
    // The node says the first started, then goes quiet (it still answers pings).
    assert_eq!(sim.results(p, vec![ids[0]], Vec::new()), Response::Ok);
    let effects = sim.core.on_tick(sim.at(1.0));
    sim.absorb(effects);
    let effects = sim.core.on_tick(sim.at(70.0));
    sim.absorb(effects);
    assert!(sim.reports.is_empty(), "within the timeout and its grace");
    let effects = sim.core.on_tick(sim.at(71.5));
    sim.absorb(effects);
    assert_eq!(sim.reports.len(), 2, "both jobs held there end");
    let abandoned = sim.reports.iter().find(|r| r.id == ids[0]).expect("the job that ran");
    assert!(
        matches!(&abandoned.outcome, JobOutcome::Abandoned(why) if why.contains("past its timeout")),
        "{abandoned:?}"
    );
    assert_eq!(sim.status_of(p), NodeStatus::Lost);
}

#[test]
fn a_job_with_no_timeout_may_run_as_long_as_it_likes() {
    let mut sim = Sim::new(settings());
    let p = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.results(p, ids.clone(), Vec::new());
    for secs in [1.0, 1e6] {
        let effects = sim.core.on_tick(sim.at(secs));
        sim.absorb(effects);
    }
    assert!(sim.reports.is_empty());
    assert_eq!(sim.status_of(p), NodeStatus::Ready);
}
