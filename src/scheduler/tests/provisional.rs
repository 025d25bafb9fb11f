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
    let value = |v: u8| Provisional { job: id, value: encode(&v).expect("encodes") };
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
