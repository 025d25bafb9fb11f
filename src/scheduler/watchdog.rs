//! The client's watchdog on nodes that keep jobs past their time. A node enforces a job's
//! timeout, but a hung or malicious node may accept jobs, answer pings and never send a
//! result, and the client would wait forever. So a job that has been running past its
//! timeout plus a grace (for the node to kill it and deliver the result) costs its node:
//! the node is lost with that reason, and its jobs run elsewhere (reentrant) or end
//! abandoned, naming the reason. A node out of reach is left to its zombie interval
//! (`away`).

use super::core::{Core, Phase};
use dispy_protocol::JobId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};
use tracing::warn;

/// Slack past a job's timeout before its node is given up: the node's kill (TERM, then
/// KILL after its drain grace) and its result's delivery, retried while the link is slow.
const GRACE: Duration = Duration::from_secs(60);

/// Jobs running with a time limit, by when their node must have answered.
#[derive(Debug, Default)]
pub(super) struct Watchdog {
    /// Reported started since the last tick: their clock starts at that tick.
    started: Vec<JobId>,
    /// (deadline, job, dispatch number of the run it is for), earliest first.
    due: BinaryHeap<Reverse<(Instant, JobId, u64)>>,
}

impl Watchdog {
    /// The node reported `id` running.
    pub(super) fn started(&mut self, id: JobId) {
        self.started.push(id);
    }
}

impl Core {
    /// Gives up nodes that hold a running job past its timeout plus [`GRACE`].
    pub(super) fn watch_overdue(&mut self, now: Instant) {
        let Some(limit) = self.s.timeout_secs.filter(|t| *t > 0.0).and_then(|t| Duration::try_from_secs_f64(t).ok())
        else {
            self.watchdog.started.clear();
            return;
        };
        for id in std::mem::take(&mut self.watchdog.started) {
            let Some(job) = self.jobs.get(&id) else { continue };
            // A limit too far off for the clock is no limit.
            if let Some(at) = now.checked_add(limit).and_then(|t| t.checked_add(GRACE)) {
                self.watchdog.due.push(Reverse((at, id, job.dispatched)));
            }
        }
        while let Some(&Reverse((at, id, dispatched))) = self.watchdog.due.peek() {
            if at > now {
                break;
            }
            self.watchdog.due.pop();
            // Still the same run of the job, on a node, with no result yet.
            let Some(job) = self.jobs.get(&id) else { continue };
            let Some(peer) = job.state.node() else { continue };
            if !job.started || job.dispatched != dispatched || job.fetching.is_some() {
                continue;
            }
            if self.nodes.get(&peer).is_some_and(|n| n.phase == Phase::Away) {
                // Out of reach: its zombie interval decides. Looked at again after another
                // grace, in case it comes back still holding the job.
                if let Some(again) = now.checked_add(GRACE) {
                    self.watchdog.due.push(Reverse((again, id, dispatched)));
                }
                continue;
            }
            let why = format!(
                "it kept job {id} running past its timeout of {:.0} s plus {} s without a result (hung, or not keeping time limits)",
                limit.as_secs_f64(),
                GRACE.as_secs()
            );
            warn!(%peer, job = %id, "{why}");
            self.lose(peer, &why);
        }
    }
}
