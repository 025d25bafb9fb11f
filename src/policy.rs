//! Pure scheduling policy: how many jobs each node should be handed now. No I/O.
//!
//! A node holds its CPU count plus a backlog, so that when a job ends the next one starts
//! from the node's own queue instead of waiting a round trip to the client. The backlog
//! follows the jobs' length: short jobs need a deep one (a round trip is worth several
//! jobs, and a message should carry many), long jobs need almost none, and a deep backlog
//! of long jobs would leave them waiting on one node while another idles (or joins late).
//! Either short tier holds at most about a tenth of a second of work per CPU.

/// Jobs shorter than this (mean run time on the node) get the deep backlog.
const SHORT_JOB_SECS: f64 = 0.02;

/// Jobs shorter than this get a deeper one still: they cost little more than the messages
/// that carry them, so each message should carry many.
const TINY_JOB_SECS: f64 = 0.002;

/// Jobs a node may hold (running and queued): see the module docs. `mean_job_secs` is
/// `None` until the node has finished a job.
pub(crate) fn capacity(cpus: u32, mean_job_secs: Option<f64>) -> usize {
    let cpus = cpus.max(1) as usize;
    match mean_job_secs {
        Some(m) if m < TINY_JOB_SECS => cpus * 16 + 16,
        Some(m) if m < SHORT_JOB_SECS => cpus * 4 + 4,
        // Unknown yet: one job queued per CPU, so a node is never idle waiting to learn.
        None => cpus * 2,
        Some(_) => cpus + 1,
    }
}

/// A node's load as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Load {
    pub(crate) cpus: u32,
    pub(crate) in_flight: usize,
    pub(crate) mean_job_secs: Option<f64>,
}

impl Load {
    fn capacity(&self) -> usize {
        capacity(self.cpus, self.mean_job_secs)
    }

    /// Whether the node should be sent jobs now. It is refilled once it has drained to
    /// half its capacity, so jobs travel in batches of several instead of one message per
    /// finished job; a node with an idle CPU is always eligible.
    fn wants_jobs(&self) -> bool {
        self.in_flight < self.cpus.max(1) as usize || self.in_flight <= self.capacity() / 2
    }
}

/// Splits up to `queued` jobs among nodes: each eligible node gets at most its free
/// capacity, nodes with the most free capacity first, one job at a time round the nodes so
/// that a short queue spreads. Returns how many jobs each node (by index) gets.
pub(crate) fn plan(nodes: &[Load], queued: usize) -> Vec<usize> {
    let mut out = vec![0; nodes.len()];
    let mut left = queued;
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(nodes[i].capacity().saturating_sub(nodes[i].in_flight)));
    while left > 0 {
        let mut gave = false;
        for &i in &order {
            if left == 0 {
                break;
            }
            if nodes[i].wants_jobs() && nodes[i].in_flight + out[i] < nodes[i].capacity() {
                out[i] += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(cpus: u32, in_flight: usize) -> Load {
        Load { cpus, in_flight, mean_job_secs: Some(0.005) }
    }

    #[test]
    fn fills_free_capacity_and_spreads() {
        let nodes = [short(2, 0), short(2, 6), short(4, 0)];
        assert_eq!(plan(&nodes, 1000), vec![12, 6, 20]);
        let p = plan(&nodes, 3);
        assert_eq!(p.iter().sum::<usize>(), 3);
        assert!(p[0] >= 1 && p[2] >= 1, "{p:?}");
        assert_eq!(plan(&[], 5), Vec::<usize>::new());
        assert_eq!(plan(&nodes, 0), vec![0, 0, 0]);
        // A node above half its capacity waits to gather a batch.
        assert_eq!(plan(&[short(2, 7)], 1000), vec![0]);
        assert_eq!(plan(&[short(2, 1)], 1000), vec![11]);
    }

    #[test]
    fn tiny_jobs_get_the_deepest_backlog() {
        let tiny = Load { cpus: 2, in_flight: 0, mean_job_secs: Some(0.0002) };
        assert_eq!(plan(&[tiny], 1000), vec![48]);
        // Refilled in batches of half that.
        assert_eq!(plan(&[Load { in_flight: 25, ..tiny }], 1000), vec![0]);
        assert_eq!(plan(&[Load { in_flight: 24, ..tiny }], 1000), vec![24]);
    }

    #[test]
    fn long_jobs_get_a_shallow_backlog() {
        let long = Load { cpus: 2, in_flight: 0, mean_job_secs: Some(5.0) };
        assert_eq!(plan(&[long], 1000), vec![3]);
        let fresh = Load { cpus: 2, in_flight: 0, mean_job_secs: None };
        assert_eq!(plan(&[fresh], 1000), vec![4]);
    }
}
