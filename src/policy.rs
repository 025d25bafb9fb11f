//! Pure scheduling policy: how many jobs each node should be handed now. No I/O.
//!
//! A node is kept holding its CPU count plus a backlog, so that when a job ends the next
//! one starts from the node's own queue instead of waiting a round trip to the client.

/// Jobs a node may hold (running and queued) beyond its CPUs: enough to cover a round
/// trip at high job rates, small enough that a node joining late still gets a share and
/// that long jobs do not pile up on one node while another idles.
pub(crate) fn capacity(cpus: u32) -> usize {
    let cpus = cpus.max(1) as usize;
    cpus * 4 + 4
}

/// A node's load as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) cpus: u32,
    pub(crate) in_flight: usize,
}

/// Whether a node should be sent jobs now. A node is refilled once it has drained to half
/// its capacity (still holding more than its CPUs' worth), so jobs travel in batches of
/// several instead of one message per finished job; a node with an idle CPU is always
/// eligible.
fn wants_jobs(n: &Load) -> bool {
    n.in_flight < n.cpus.max(1) as usize || n.in_flight <= capacity(n.cpus) / 2
}

/// Splits up to `queued` jobs among nodes: each eligible node gets at most its free
/// capacity, nodes with the most free capacity first. Returns how many jobs each node (by
/// index) gets.
pub(crate) fn plan(nodes: &[Load], queued: usize) -> Vec<usize> {
    let mut out = vec![0; nodes.len()];
    let mut left = queued;
    // Round-robin one job at a time over nodes ordered by free capacity, so a small queue
    // spreads across nodes instead of filling the first one.
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(capacity(nodes[i].cpus).saturating_sub(nodes[i].in_flight)));
    while left > 0 {
        let mut gave = false;
        for &i in &order {
            if left == 0 {
                break;
            }
            if wants_jobs(&nodes[i]) && nodes[i].in_flight + out[i] < capacity(nodes[i].cpus) {
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

    #[test]
    fn fills_free_capacity_and_spreads() {
        let nodes = [Load { cpus: 2, in_flight: 0 }, Load { cpus: 2, in_flight: 6 }, Load { cpus: 4, in_flight: 0 }];
        let p = plan(&nodes, 1000);
        assert_eq!(p, vec![12, 6, 20]);
        // A node above half its capacity waits to gather a batch.
        assert_eq!(plan(&[Load { cpus: 2, in_flight: 7 }], 1000), vec![0]);
        assert_eq!(plan(&[Load { cpus: 2, in_flight: 1 }], 1000), vec![11]);
        let p = plan(&nodes, 3);
        assert_eq!(p.iter().sum::<usize>(), 3);
        assert!(p[0] >= 1 && p[2] >= 1, "{p:?}");
        assert_eq!(plan(&[], 5), Vec::<usize>::new());
        assert_eq!(plan(&nodes, 0), vec![0, 0, 0]);
    }
}
