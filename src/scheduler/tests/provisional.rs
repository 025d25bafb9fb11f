//! Provisional values in the core: each one from the node holding a running job becomes an
//! event and the job's latest, in order; stale ones change nothing.

use super::*;
use dispy_protocol::Provisional;

#[test]
fn provisional_values_make_events_in_order_and_the_latest_is_the_jobs() {
    let mut sim = Sim::new(settings());
    let (a, b) = (sim.node_up(1, 1), sim.node_up(2, 1));
    let (id, view) = sim.submit_jobs(1, None, true).remove(0);
    let view = view.expect("a handle");
    let (holder, _, _) = sim.submits().remove(0);
    let other = if holder == a { b } else { a };
    let value = |v: u8| Provisional::value(id, encode(&v).expect("encodes"));
    let send = |sim: &mut Sim, from, values: Vec<Provisional>, results| {
        let request =
            wire(&Request::Results(Results { cluster: CLUSTER, started: vec![id], results, provisional: values }));
        let (response, effects) = sim.core.on_request(from, request);
        sim.absorb(effects);
        response
    };
    assert_eq!(send(&mut sim, holder, vec![value(1), value(2)], Vec::new()), Response::Ok);
    assert_eq!(send(&mut sim, other, vec![value(9)], Vec::new()), Response::Ok, "stale: not the job's node");
    assert_eq!(crate::job::decode_provisional::<u8>(view.borrow().provisional.as_deref()).ok().flatten(), Some(2));
    // The last value and the result in one message: the value comes first.
    send(&mut sim, holder, vec![value(3)], vec![exited(id, 0)]);
    send(&mut sim, holder, vec![value(4)], Vec::new());
    let seen: Vec<(JobId, Vec<u8>)> = [1u8, 2, 3].iter().map(|v| (id, encode(v).expect("encodes"))).collect();
    assert_eq!(sim.provisionals, seen, "in order, none after the result");
    assert_eq!(
        sim.job_events,
        [
            (id, JobStatus::Created),
            (id, JobStatus::Running),
            (id, JobStatus::Running),
            (id, JobStatus::Running),
            (id, JobStatus::Running),
            (id, JobStatus::Finished)
        ]
    );
}

#[test]
fn a_file_a_running_job_sent_is_fetched_at_once_and_not_again_with_its_result() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(2);
    sim.submits();
    let file =
        |name: &str, byte| FileEntry { name: name.into(), hash: FileHash([byte; 32]), size: 3, executable: false };
    let (sent, other, lost) = (file("sent.txt", 1), file("out.txt", 2), file("lost.txt", 3));
    let notes = vec![
        Provisional::file(ids[0], sent.clone()),
        Provisional::file(ids[0], lost.clone()),
        Provisional::file(ids[1], file("x", 4)),
    ];
    let request = wire(&Request::Results(Results {
        cluster: CLUSTER,
        started: ids.clone(),
        results: Vec::new(),
        provisional: notes,
    }));
    let (response, effects) = sim.core.on_request(a, request);
    sim.absorb(effects);
    assert_eq!(response, Response::Ok);
    let dir = std::path::PathBuf::from("results/0");
    let asked: Vec<_> = sim.sent_fetches.drain(..).map(|(p, j, f, d)| (p, j, f.name, d)).collect();
    assert_eq!(asked[..2], [(a, ids[0], "sent.txt".into(), dir.clone()), (a, ids[0], "lost.txt".into(), dir.clone())]);
    assert!(sim.provisionals.is_empty(), "a file is no provisional value");
    let here = dir.join("sent.txt");
    let effects = sim.core.on_sent_fetched(a, ids[0], sent.clone(), Ok(here.clone()));
    sim.absorb(effects);
    let effects = sim.core.on_sent_fetched(a, ids[0], lost.clone(), Err("connection closed".into()));
    sim.absorb(effects);
    // The result lists all three: only what is not here yet is fetched.
    let result = JobResult { returned: vec![other.clone(), sent, lost.clone()], ..exited(ids[0], 0) };
    sim.results(a, Vec::new(), vec![result]);
    let (_, job, files, _) = sim.fetches.pop().expect("a fetch");
    assert_eq!((job, files), (ids[0], vec![other, lost]));
    let rest = vec![dir.join("out.txt"), dir.join("lost.txt")];
    let effects = sim.core.on_fetched(a, ids[0], rest.clone(), Vec::new());
    sim.absorb(effects);
    assert_eq!(sim.reports[0].returned, [vec![here], rest].concat());
}

#[test]
fn a_job_whose_returned_files_were_all_sent_ends_without_another_fetch() {
    let mut sim = Sim::new(settings());
    let a = sim.node_up(1, 1);
    let ids = sim.submit(1);
    sim.submits();
    let sent = FileEntry { name: "s".into(), hash: FileHash([1; 32]), size: 3, executable: false };
    let request = wire(&Request::Results(Results {
        cluster: CLUSTER,
        started: ids.clone(),
        results: Vec::new(),
        provisional: vec![Provisional::file(ids[0], sent.clone())],
    }));
    let (_, effects) = sim.core.on_request(a, request);
    sim.absorb(effects);
    let effects = sim.core.on_sent_fetched(a, ids[0], sent.clone(), Ok("results/0/s".into()));
    sim.absorb(effects);
    sim.results(a, Vec::new(), vec![JobResult { returned: vec![sent], ..exited(ids[0], 0) }]);
    assert!(sim.fetches.is_empty());
    assert_eq!(sim.reports.len(), 1);
    assert_eq!(sim.reports[0].returned, [std::path::PathBuf::from("results/0/s")]);
}
