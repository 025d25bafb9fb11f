//! Nodes that go away and come back: a silent node is waited for (its jobs pending, it is
//! redialled) until its zombie interval; one that comes back holding the cluster carries
//! on and each result counts once; whatever ends a run, every job gets a report.

use super::*;

/// Node `n` is back: connected, greeted and reserved again; `resumed`: it still holds
/// the cluster.
fn back(sim: &mut Sim, n: u8, resumed: bool) -> PeerId {
    let p = sim.reserving(n, 1);
    sim.answer(p, Asked::Reserve, Response::Reserved(Reserved { cpus: 1, missing: Vec::new(), resumed }));
    p
}

fn away(sim: &mut Sim, p: PeerId, at: f64) {
    let effects = sim.core.on_disconnected(p, sim.at(at));
    sim.absorb(effects);
}

/// A reentrant cluster's core.
fn reentrant() -> Sim {
    let mut s = settings();
    s.reentrant = true;
    Sim::new(s)
}

fn tick(sim: &mut Sim, at: f64) {
    let effects = sim.core.on_tick(sim.at(at));
    sim.absorb(effects);
}

#[test]
fn a_silent_node_keeps_its_jobs_is_redialled_and_its_results_count_once_it_is_back() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(2);
    assert_eq!(ids_of(&sim.submits()[0].1).len(), 2);
    away(&mut sim, a, 1.0);
    assert_eq!(sim.status_of(a), NodeStatus::Unreachable);
    assert!(sim.cluster_events.iter().any(|e| matches!(e, ClusterEvent::NodeUnreachable { .. })));
    for t in [1.1, 2.0, 3.2, 5.0, 45.0] {
        tick(&mut sim, t);
    }
    assert_eq!(sim.dials, vec![addr(1).with(libp2p::multiaddr::Protocol::P2p(a)); 3], "redialled every 2 s");
    assert!(sim.reports.is_empty() && sim.failures.is_empty(), "45 s away: still waited for");
    let more = sim.submit(1);
    assert!(sim.submits().is_empty(), "an unreachable node takes no new job");
    back(&mut sim, 1, true);
    assert_eq!(sim.status_of(a), NodeStatus::Ready);
    // Both jobs ran on through the partition; their results arrive, one of them twice.
    sim.results(a, ids.clone(), vec![exited(ids[0], 0), exited(ids[1], 0)]);
    sim.results(a, Vec::new(), vec![exited(ids[1], 0)]);
    let submits = sim.submits();
    assert_eq!(ids_of(&submits[0].1), more, "the job queued meanwhile goes to it now");
    sim.results(a, more.clone(), vec![exited(more[0], 0)]);
    let reported: Vec<JobId> = sim.reports.iter().map(|r| r.id).collect();
    assert_eq!(reported, [ids[0], ids[1], more[0]], "each once");
    tick(&mut sim, 200.0);
    assert!(sim.failures.is_empty());
}

#[test]
fn a_node_back_without_the_cluster_abandons_the_jobs_it_had_when_not_reentrant() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    away(&mut sim, a, 1.0);
    back(&mut sim, 1, false);
    let [r] = &sim.reports[..] else { panic!("{:?}", sim.reports) };
    assert_eq!(r.id, ids[0]);
    assert!(matches!(&r.outcome, JobOutcome::Abandoned(w) if w.contains("came back without the cluster's jobs")));
    // A late result from before its restart cannot report the job again.
    sim.results(a, Vec::new(), vec![exited(ids[0], 0)]);
    assert_eq!(sim.reports.len(), 1);
}

#[test]
fn a_reentrant_job_left_on_a_silent_node_carries_on_there_when_it_comes_back_before_running_elsewhere() {
    let mut sim = reentrant();
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    away(&mut sim, a, 1.0);
    assert!(sim.submits().is_empty() && sim.reports.is_empty(), "queued: no other node");
    back(&mut sim, 1, true);
    assert!(sim.submits().is_empty(), "not sent again: the node still runs it");
    sim.results(a, vec![ids[0]], vec![exited(ids[0], 0)]);
    assert_eq!(sim.reports.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
}

#[test]
fn results_a_node_sends_as_soon_as_it_is_reconnected_count_before_it_takes_the_cluster_back() {
    let mut sim = reentrant();
    let a = sim.node_up(1, 1);
    let ids = sim.submit(2);
    assert_eq!(ids_of(&sim.submits()[0].1), ids);
    away(&mut sim, a, 1.0);
    assert!(sim.submits().is_empty(), "queued here meanwhile: no other node");
    // It is back: the result it finished during the partition comes before the greeting.
    sim.connect(1);
    sim.results(a, vec![ids[0]], vec![exited(ids[0], 0)]);
    assert_eq!(sim.reports.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[0]], "it counts");
    let (_, asked) = sim.ask_of(a);
    sim.answer(a, asked, Response::Hello(Hello::node("node1".into(), 1, 1, None, None)));
    let (_, asked) = sim.ask_of(a);
    sim.answer(a, asked, Response::Reserved(Reserved { cpus: 1, missing: Vec::new(), resumed: true }));
    assert!(sim.asks.iter().all(|(_, r, _)| !matches!(r, Request::Cancel(_))), "nothing to cancel there");
    assert!(sim.submits().is_empty(), "the second still runs there: not sent again");
    sim.results(a, Vec::new(), vec![exited(ids[1], 0)]);
    assert_eq!(sim.reports.iter().map(|r| r.id).collect::<Vec<_>>(), ids, "each once");
}

#[test]
fn a_reentrant_job_that_ran_on_both_sides_of_a_partition_is_reported_once() {
    let mut sim = reentrant();
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    let b = sim.node_up(2, 1);
    away(&mut sim, a, 1.0);
    let submits = sim.submits();
    assert_eq!((submits[0].0, ids_of(&submits[0].1)), (b, ids.clone()), "runs elsewhere meanwhile");
    sim.results(b, ids.clone(), vec![exited(ids[0], 0)]);
    back(&mut sim, 1, true);
    let (request, asked) = sim.ask_of(a);
    assert_eq!(asked, Asked::Cancel);
    assert!(matches!(request, Request::Cancel(ref c) if c.jobs == ids), "its copy there is stopped");
    sim.results(a, ids.clone(), vec![exited(ids[0], 0)]);
    assert_eq!(sim.reports.len(), 1);
    assert_eq!(sim.reports[0].node.as_ref().map(|n| n.peer_id), Some(b));
}

#[test]
fn with_every_node_gone_the_run_waits_wait_nodes_then_reports_every_job_after_the_failure() {
    let mut s = settings();
    s.wait_nodes = Duration::from_secs(30);
    let mut sim = Sim::new(s);
    let a = sim.node_up(1, 1);
    let ids = sim.submit(3);
    sim.submits();
    sim.results(a, vec![ids[0]], vec![exited(ids[0], 0)]);
    let (tx, mut waiter) = oneshot::channel();
    let effects = sim.core.on_cmd(Cmd::Wait { reply: tx }, sim.t0);
    sim.absorb(effects);
    away(&mut sim, a, 10.0);
    tick(&mut sim, 10.1);
    tick(&mut sim, 40.0);
    assert!(sim.failures.is_empty(), "--discover-timeout bounds the first search only");
    let effects = sim.core.on_tick(sim.at(40.1));
    assert!(matches!(effects.iter().find(|e| matches!(e, Effect::Fail(_) | Effect::Report(_))), Some(Effect::Fail(_))));
    sim.absorb(effects);
    let [Failure::NoNodes(n)] = &sim.failures[..] else { panic!("{:?}", sim.failures) };
    let msg = n.to_string();
    assert!(msg.starts_with("every node was lost and none came back within 30.0 s (--wait-nodes)"), "{msg}");
    assert!(msg.contains("node node1 at 127.0.0.1: unreachable"), "{msg}");
    let outcomes: Vec<(JobId, JobStatus)> = sim.reports.iter().map(|r| (r.id, JobStatus::of(&r.outcome))).collect();
    assert_eq!(
        outcomes,
        [(ids[0], JobStatus::Finished), (ids[1], JobStatus::Abandoned), (ids[2], JobStatus::Abandoned)]
    );
    let why = "still on node node1 when the run stopped: every node was lost and none came back within 30.0 s; \
               found: node node1 at 127.0.0.1: unreachable";
    assert!(matches!(&sim.reports[1].outcome, JobOutcome::Abandoned(w) if w.starts_with(why)), "{:?}", sim.reports[1]);
    assert!(matches!(waiter.try_recv(), Ok(Err(Failure::NoNodes(_)))));
}

#[test]
fn queued_jobs_are_reported_not_run_when_the_run_fails_and_so_are_jobs_submitted_after() {
    let mut s = settings();
    s.wait_nodes = Duration::from_secs(10);
    let mut sim = Sim::new(s);
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    away(&mut sim, a, 1.0);
    let queued = sim.submit(1);
    let (_, view) = sim.submit_jobs(1, None, true).remove(0);
    tick(&mut sim, 1.5);
    tick(&mut sim, 11.5);
    assert_eq!(sim.failures.len(), 1);
    let ended: Vec<(JobId, JobStatus)> = sim.reports.iter().map(|r| (r.id, JobStatus::of(&r.outcome))).collect();
    assert_eq!(ended, [(ids[0], JobStatus::Abandoned), (queued[0], JobStatus::NotRun)]);
    let why = "every node was lost and none came back within 10.0 s; found: node node1";
    assert!(matches!(&sim.reports[1].outcome, JobOutcome::NotRun(w) if w.starts_with(why)), "{:?}", sim.reports[1]);
    let view = view.expect("a handle");
    assert_eq!(view.borrow().status, JobStatus::NotRun, "the handle's job too");
    let late = sim.submit(1);
    assert_eq!(sim.reports.last().map(|r| (r.id, JobStatus::of(&r.outcome))), Some((late[0], JobStatus::NotRun)));
}

#[test]
fn cancelling_a_job_on_a_silent_node_ends_it_at_once_and_the_node_is_told_when_back() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 2);
    let ids = sim.submit(2);
    sim.submits();
    // One cancel asked before the node went silent, one after.
    let effects = sim.core.on_cmd(Cmd::Cancel { ids: vec![ids[0]] }, sim.t0);
    sim.absorb(effects);
    away(&mut sim, a, 1.0);
    let effects = sim.core.on_cmd(Cmd::Cancel { ids: vec![ids[1]] }, sim.at(2.0));
    sim.absorb(effects);
    let ended: Vec<(JobId, JobOutcome)> = sim.reports.iter().map(|r| (r.id, r.outcome.clone())).collect();
    assert_eq!(ended, [(ids[0], JobOutcome::Cancelled), (ids[1], JobOutcome::Cancelled)]);
    sim.asks.clear();
    back(&mut sim, 1, true);
    let (request, _) = sim.ask_of(a);
    assert!(matches!(request, Request::Cancel(ref c) if c.jobs == ids), "{request:?}");
}

#[test]
fn closing_with_cancels_unconfirmed_ends_every_job_cancelled() {
    let mut sim = Sim::new(settings());
    sim.node_up(1, 1);
    let ids = sim.submit(2);
    sim.submits();
    let queued = sim.submit_jobs(1, Some(peer(9)), false)[0].0;
    let effects = sim.core.on_cmd(Cmd::CancelAll, sim.t0);
    sim.absorb(effects);
    assert_eq!(sim.reports.iter().map(|r| r.id).collect::<Vec<_>>(), [queued], "the queued one at once");
    let effects = sim.core.on_close_unconfirmed();
    sim.absorb(effects);
    let ended: Vec<(JobId, JobOutcome)> = sim.reports[1..].iter().map(|r| (r.id, r.outcome.clone())).collect();
    assert_eq!(ended, [(ids[0], JobOutcome::Cancelled), (ids[1], JobOutcome::Cancelled)]);
    assert_eq!(sim.core.pending(), 0);
}

#[test]
fn a_node_whose_address_refuses_the_redial_has_stopped_and_is_lost_at_once() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    away(&mut sim, a, 1.0);
    let at = addr(1).with(libp2p::multiaddr::Protocol::P2p(a));
    assert_eq!(sim.dials, vec![at.clone()], "dialled at once");
    assert!(sim.reports.is_empty());
    // Out of reach (a timeout) says nothing: still waited for.
    let effects = sim.core.on_dial_failed(at.clone(), "Timeout has been reached".into(), false);
    sim.absorb(effects);
    assert!(sim.reports.is_empty());
    let effects = sim.core.on_dial_failed(at, "Connection refused".into(), true);
    sim.absorb(effects);
    let [r] = &sim.reports[..] else { panic!("{:?}", sim.reports) };
    assert_eq!(r.id, ids[0]);
    let want = "node node1 was lost: it stopped (its address refuses connections)";
    assert!(matches!(&r.outcome, JobOutcome::Abandoned(w) if w == want), "{:?}", r.outcome);
    assert_eq!(sim.status_of(a), NodeStatus::Lost);
}

#[test]
fn a_silent_node_is_waited_for_as_long_as_its_hello_says_it_keeps_jobs() {
    let mut sim = Sim::new(settings());
    let hello = Hello { zombie_secs: Some(5), ..Hello::node("node1".into(), 1, 1, None, None) };
    let a = sim.greet(1, hello);
    sim.answer(a, Asked::Reserve, Response::Reserved(Reserved { cpus: 1, missing: Vec::new(), resumed: false }));
    let ids = sim.submit(1);
    sim.submits();
    away(&mut sim, a, 1.0);
    tick(&mut sim, 5.9);
    assert!(sim.reports.is_empty(), "within its 5 s");
    tick(&mut sim, 6.0);
    let [r] = &sim.reports[..] else { panic!("{:?}", sim.reports) };
    assert_eq!(r.id, ids[0]);
    assert!(
        matches!(&r.outcome, JobOutcome::Abandoned(w) if w.ends_with("unreachable for 5 s, past its zombie interval"))
    );
}

#[test]
fn a_node_claiming_a_huge_zombie_interval_is_believed_up_to_an_hour() {
    let h = Hello { zombie_secs: Some(u64::MAX), ..Hello::node("n".into(), 1, 1, None, None) };
    let h = wire(&h);
    assert_eq!(crate::scheduler::away::zombie_of(&h), Duration::from_secs(3600));
    let old = Hello { zombie_secs: None, ..h };
    assert_eq!(crate::scheduler::away::zombie_of(&old), crate::scheduler::NODE_ZOMBIE);
}

#[test]
fn jobs_whose_submit_broke_with_the_connection_wait_for_the_node_and_go_again_when_it_is_back() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(2);
    let (_, submit, asked) = sim.submits().remove(0);
    assert_eq!(ids_of(&submit), ids);
    // The link goes down under the request: the node may have the jobs or not.
    let effects = sim.core.on_answer(a, asked, Err("connection closed".into()), sim.at(1.0));
    sim.absorb(effects);
    assert!(sim.reports.is_empty(), "not abandoned: the node is only silent");
    assert_eq!(sim.status_of(a), NodeStatus::Unreachable);
    away(&mut sim, a, 1.0);
    back(&mut sim, 1, true);
    let submits = sim.submits();
    assert_eq!(submits.len(), 1, "sent again, once");
    assert_eq!(ids_of(&submits[0].1), ids);
    sim.results(a, ids.clone(), vec![exited(ids[0], 0), exited(ids[1], 0)]);
    assert_eq!(sim.reports.iter().map(|r| r.id).collect::<Vec<_>>(), ids, "each once");
}
