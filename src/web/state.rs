//! The monitor's state, with no I/O: the feed's events and the periodic node poll go in
//! (with the time), views for the page come out. Memory stays bounded for any number of
//! jobs: ended jobs are counted and only the latest [`RECENT`] kept as rows; jobs not ended
//! yet are kept (one small entry each) until they end.

use super::feed::{ARGS_SHOWN, Ended, Feed, shorten};
use crate::events::ClusterEvent;
use crate::job::JobStatus;
use crate::report::{NodeInfo, NodeRef, Stats};
use dispy_protocol::JobId;
use libp2p::PeerId;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Ended jobs kept as rows (the latest).
pub(crate) const RECENT: usize = 200;
/// Running jobs shown (the lowest ids).
pub(crate) const RUNNING_SHOWN: usize = 200;
/// Queued jobs shown (the next to run).
pub(crate) const QUEUED_SHOWN: usize = 50;
/// Past this many changed rows in one delta, a full view is sent instead.
pub(crate) const MAX_DELTA_ROWS: usize = 500;

/// Jobs per status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counts {
    pub(crate) total: u64,
    pub(crate) queued: u64,
    pub(crate) running: u64,
    pub(crate) finished: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    pub(crate) abandoned: u64,
    pub(crate) not_run: u64,
}

impl Counts {
    fn slot(&mut self, status: JobStatus) -> &mut u64 {
        match status {
            JobStatus::Created => &mut self.queued,
            JobStatus::Running => &mut self.running,
            JobStatus::Finished => &mut self.finished,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Cancelled => &mut self.cancelled,
            JobStatus::Abandoned => &mut self.abandoned,
            JobStatus::NotRun => &mut self.not_run,
        }
    }

    /// Jobs ended, however.
    pub(crate) fn done(&self) -> u64 {
        self.finished + self.failed + self.cancelled + self.abandoned + self.not_run
    }
}

/// One row of the node table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct NodeRow {
    pub(crate) name: String,
    pub(crate) peer_id: String,
    pub(crate) address: String,
    pub(crate) cpus: u32,
    pub(crate) status: String,
    pub(crate) jobs_done: u64,
    pub(crate) jobs_running: u64,
    /// Its jobs' run time, seconds.
    pub(crate) cpu_secs: f64,
    pub(crate) staged_bytes: u64,
    /// When the node was last known connected (Unix ms).
    pub(crate) last_seen_ms: u64,
}

/// One row of the job table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct JobRow {
    pub(crate) id: u64,
    pub(crate) status: &'static str,
    pub(crate) node: Option<String>,
    pub(crate) args: String,
    /// Unix ms: when it started (the node's clock once its report is in).
    pub(crate) start_ms: Option<u64>,
    pub(crate) end_ms: Option<u64>,
    pub(crate) exit: Option<String>,
    pub(crate) stdout: String,
}

/// What the page shows: a full view, or a delta (only the rows that changed).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct View {
    /// True: `jobs` is the whole window (replace the table); false: changed rows only.
    pub(crate) full: bool,
    pub(crate) counts: Counts,
    pub(crate) nodes: Vec<NodeRow>,
    pub(crate) jobs: Vec<JobRow>,
    pub(crate) staged_bytes: u64,
    pub(crate) returned_bytes: u64,
    pub(crate) started_ms: u64,
    pub(crate) now_ms: u64,
    /// The cluster has closed: nothing more will change.
    pub(crate) ended: bool,
}

/// A job not ended yet.
#[derive(Debug)]
struct Live {
    status: JobStatus,
    node: Option<NodeRef>,
    start_ms: Option<u64>,
    /// Shortened; empty when the feed did not carry them.
    args: String,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Monitor {
    counts: Counts,
    live: BTreeMap<JobId, Live>,
    recent: VecDeque<JobRow>,
    /// Node rows by peer id, and the order nodes were found in.
    nodes: BTreeMap<PeerId, NodeRow>,
    order: Vec<PeerId>,
    /// Jobs running per node (by peer id): kept apart from the rows, as a job may start
    /// before its node's row exists.
    running: BTreeMap<PeerId, u64>,
    returned_bytes: u64,
    started_ms: u64,
    changed: BTreeSet<u64>,
    /// Something beyond job rows changed since the last view.
    dirty: bool,
    ended: bool,
}

impl Monitor {
    pub(crate) fn new(now_ms: u64) -> Monitor {
        Monitor {
            counts: Counts::default(),
            live: BTreeMap::new(),
            recent: VecDeque::new(),
            nodes: BTreeMap::new(),
            order: Vec::new(),
            running: BTreeMap::new(),
            returned_bytes: 0,
            started_ms: now_ms,
            changed: BTreeSet::new(),
            dirty: true,
            ended: false,
        }
    }

    /// Applies one event of the feed. `extra_bytes`: sizes of the files an ended job
    /// returned (read by the caller).
    pub(crate) fn apply(&mut self, feed: Feed, extra_bytes: u64, now_ms: u64) {
        match feed {
            Feed::Job { id, status, node } => self.job(id, status, node, now_ms),
            Feed::Ended(ended) => self.ended_job(*ended, extra_bytes, now_ms),
            Feed::Node(ev) => self.node_event(ev, now_ms),
            Feed::Args { id, args } => self.args(id, args),
            Feed::Closed(_) => self.close(),
        }
    }

    /// A job is being submitted: it counts as queued from now on.
    fn args(&mut self, id: JobId, args: String) {
        if let Some(l) = self.live.get_mut(&id) {
            l.args = args;
            self.touch(id);
            return;
        }
        self.counts.total += 1;
        self.counts.queued += 1;
        self.live.insert(id, Live { status: JobStatus::Created, node: None, start_ms: None, args });
        self.touch(id);
    }

    /// The cluster closed.
    pub(crate) fn close(&mut self) {
        self.ended = true;
        self.dirty = true;
    }

    fn job(&mut self, id: JobId, status: JobStatus, node: Option<NodeRef>, now_ms: u64) {
        if status.is_done() {
            self.end(id, status, node, now_ms);
            return;
        }
        let prev = self.live.get(&id).map(|l| (l.status, l.node.clone(), l.args.clone()));
        match prev {
            Some((before, ref was_on, _)) => {
                *self.counts.slot(before) -= 1;
                if before == JobStatus::Running {
                    self.running_on(was_on.as_ref(), false);
                }
            }
            None if self.recent.iter().any(|r| r.id == id.0) => return, // already ended
            None => self.counts.total += 1,
        }
        *self.counts.slot(status) += 1;
        let start_ms = (status == JobStatus::Running).then_some(now_ms);
        if status == JobStatus::Running {
            self.running_on(node.as_ref(), true);
        }
        let args = prev.map(|p| p.2).unwrap_or_default();
        self.live.insert(id, Live { status, node, start_ms, args });
        self.touch(id);
    }

    /// A job ended, as its status event or its report says (whichever comes first counts).
    fn end(&mut self, id: JobId, status: JobStatus, node: Option<NodeRef>, now_ms: u64) {
        let Some(live) = self.live.remove(&id) else {
            return;
        };
        *self.counts.slot(live.status) -= 1;
        *self.counts.slot(status) += 1;
        if live.status == JobStatus::Running {
            self.running_on(live.node.as_ref(), false);
        }
        let node = node.or(live.node);
        // A node that sent a result was heard from.
        if let (JobStatus::Finished | JobStatus::Failed, Some(n)) = (status, &node) {
            self.node_row(n, now_ms);
        }
        self.recent.push_back(JobRow {
            id: id.0,
            status: status.as_str(),
            node: node.map(|n| n.name),
            args: live.args,
            start_ms: live.start_ms,
            end_ms: Some(now_ms),
            exit: None,
            stdout: String::new(),
        });
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        self.touch(id);
    }

    fn ended_job(&mut self, e: Ended, extra_bytes: u64, now_ms: u64) {
        self.end(e.id, e.status, e.node.clone(), now_ms);
        self.returned_bytes += e.output_bytes + extra_bytes;
        self.dirty = true;
        if let Some(row) = self.recent.iter_mut().rev().find(|r| r.id == e.id.0) {
            row.status = e.status.as_str();
            row.args = shorten(&e.args, ARGS_SHOWN);
            row.exit = Some(e.exit);
            row.stdout = e.stdout_tail;
            if e.start_us > 0 {
                row.start_ms = Some(e.start_us / 1000);
                row.end_ms = Some(e.end_us / 1000);
            }
            if let Some(n) = e.node {
                row.node = Some(n.name);
            }
            self.changed.insert(e.id.0);
        }
    }

    fn running_on(&mut self, node: Option<&NodeRef>, up: bool) {
        if let Some(n) = node {
            let count = self.running.entry(n.peer_id).or_default();
            *count = if up { *count + 1 } else { count.saturating_sub(1) };
            self.dirty = true;
        }
    }

    /// The row of `node`, made if new; marks it seen now.
    fn node_row(&mut self, node: &NodeRef, now_ms: u64) -> &mut NodeRow {
        let key = node.peer_id;
        self.dirty = true;
        if !self.nodes.contains_key(&key) {
            self.order.push(key);
        }
        let row = self.nodes.entry(key).or_insert_with(|| NodeRow {
            name: node.name.clone(),
            peer_id: key.to_string(),
            address: node.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            cpus: 0,
            status: "starting".into(),
            jobs_done: 0,
            jobs_running: 0,
            cpu_secs: 0.0,
            staged_bytes: 0,
            last_seen_ms: now_ms,
        });
        row.last_seen_ms = now_ms;
        row
    }

    fn node_event(&mut self, ev: ClusterEvent, now_ms: u64) {
        match ev {
            ClusterEvent::NodeFound(node) => {
                self.node_row(&node, now_ms);
            }
            ClusterEvent::NodeReady { node, cpus, .. } => {
                let row = self.node_row(&node, now_ms);
                row.cpus = cpus;
                row.status = "ready".into();
            }
            ClusterEvent::NodeUnusable { node, reason } => {
                self.node_row(&node, now_ms).status = format!("unusable: {reason}");
            }
            ClusterEvent::NodeLost { node, .. } => self.node_status(&node, "lost"),
            ClusterEvent::NodeUnreachable { node, .. } => self.node_status(&node, "unreachable"),
        }
    }

    /// A status that does not mean the node was heard from.
    fn node_status(&mut self, node: &NodeRef, status: &str) {
        let seen = self.nodes.get(&node.peer_id).map(|r| r.last_seen_ms).unwrap_or(0);
        let row = self.node_row(node, seen);
        row.status = status.into();
    }

    /// The scheduler's own figures per node, polled a few times a second.
    pub(crate) fn poll(&mut self, infos: &[NodeInfo], stats: &Stats, now_ms: u64) {
        for info in infos {
            let connected = matches!(info.status, crate::NodeStatus::Ready | crate::NodeStatus::Starting);
            let seen = self.nodes.get(&info.node.peer_id).map(|r| r.last_seen_ms).unwrap_or(now_ms);
            let row = self.node_row(&info.node, if connected { now_ms } else { seen });
            row.cpus = info.cpus;
            row.status = info.status.to_string();
            row.jobs_done = info.jobs_done;
        }
        for s in &stats.nodes {
            if let Some(row) = self.nodes.get_mut(&s.node.peer_id) {
                row.cpu_secs = s.job_secs;
                row.staged_bytes = s.staged_bytes;
            }
        }
    }

    fn touch(&mut self, id: JobId) {
        self.dirty = true;
        // Past the limit a full view goes out anyway: stop growing the set.
        if self.changed.len() <= MAX_DELTA_ROWS {
            self.changed.insert(id.0);
        }
    }

    /// Whether anything changed since the last [`Monitor::delta`].
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty || !self.changed.is_empty()
    }

    fn live_row(id: JobId, l: &Live) -> JobRow {
        JobRow {
            id: id.0,
            status: l.status.as_str(),
            node: l.node.as_ref().map(|n| n.name.clone()),
            args: l.args.clone(),
            start_ms: l.start_ms,
            end_ms: None,
            exit: None,
            stdout: String::new(),
        }
    }

    /// The rows of the window: running jobs (the lowest ids), the next queued ones, the
    /// latest ended ones.
    fn window(&self) -> Vec<JobRow> {
        let running = self.live.iter().filter(|(_, l)| l.status == JobStatus::Running).take(RUNNING_SHOWN);
        let queued = self.live.iter().filter(|(_, l)| l.status == JobStatus::Created).take(QUEUED_SHOWN);
        let mut rows: Vec<JobRow> = running.chain(queued).map(|(id, l)| Self::live_row(*id, l)).collect();
        rows.extend(self.recent.iter().cloned());
        rows
    }

    fn view(&self, full: bool, jobs: Vec<JobRow>, now_ms: u64) -> View {
        let nodes: Vec<NodeRow> = self
            .order
            .iter()
            .filter_map(|k| {
                let mut row = self.nodes.get(k)?.clone();
                row.jobs_running = self.running.get(k).copied().unwrap_or(0);
                Some(row)
            })
            .collect();
        View {
            full,
            counts: self.counts.clone(),
            staged_bytes: nodes.iter().map(|n| n.staged_bytes).sum(),
            nodes,
            jobs,
            returned_bytes: self.returned_bytes,
            started_ms: self.started_ms,
            now_ms,
            ended: self.ended,
        }
    }

    /// The whole window.
    pub(crate) fn full(&self, now_ms: u64) -> View {
        self.view(true, self.window(), now_ms)
    }

    /// What changed since the last call (a full view when too many rows did), and clears
    /// the changes.
    pub(crate) fn delta(&mut self, now_ms: u64) -> View {
        let changed = std::mem::take(&mut self.changed);
        self.dirty = false;
        if changed.len() > MAX_DELTA_ROWS {
            return self.full(now_ms);
        }
        let mut rows = Vec::new();
        for id in changed {
            if let Some(l) = self.live.get(&JobId(id)) {
                // Queued jobs past the window's few are only counted.
                if l.status == JobStatus::Running || self.queued_shown(id) {
                    rows.push(Self::live_row(JobId(id), l));
                }
            } else if let Some(row) = self.recent.iter().rev().find(|r| r.id == id) {
                rows.push(row.clone());
            }
        }
        self.view(false, rows, now_ms)
    }

    fn queued_shown(&self, id: u64) -> bool {
        self.live.iter().filter(|(_, l)| l.status == JobStatus::Created).take(QUEUED_SHOWN).any(|(j, _)| j.0 == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, seed: u8) -> NodeRef {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
        NodeRef { name: name.into(), peer_id: key.public().to_peer_id(), ip: Some([127, 0, 0, 1].into()) }
    }

    fn ended(id: u64, status: JobStatus, node: &NodeRef) -> Feed {
        Feed::Ended(Box::new(Ended {
            id: JobId(id),
            status,
            node: Some(node.clone()),
            args: format!("arg{id}"),
            exit: "exit 0".into(),
            start_us: 5_000_000,
            end_us: 6_000_000,
            stdout_tail: "out".into(),
            output_bytes: 10,
            returned: Vec::new(),
        }))
    }

    #[test]
    fn counts_follow_each_job_through_its_life_once() {
        let w1 = node("w1", 1);
        let mut m = Monitor::new(0);
        m.apply(Feed::Node(ClusterEvent::NodeReady { node: w1.clone(), cpus: 2, load: None }), 0, 1);
        for id in 0..3 {
            m.apply(Feed::Job { id: JobId(id), status: JobStatus::Created, node: None }, 0, 1);
        }
        m.apply(Feed::Args { id: JobId(0), args: "sleep 30".into() }, 0, 1);
        m.apply(Feed::Job { id: JobId(0), status: JobStatus::Running, node: Some(w1.clone()) }, 0, 2);
        let v = m.full(2);
        assert_eq!(v.nodes[0].jobs_running, 1);
        assert_eq!((v.jobs[0].status, v.jobs[0].args.as_str()), ("running", "sleep 30"));
        // The status event and the report both say the job ended: it counts once.
        m.apply(Feed::Job { id: JobId(0), status: JobStatus::Finished, node: Some(w1.clone()) }, 0, 3);
        m.apply(ended(0, JobStatus::Finished, &w1), 7, 3);
        m.apply(Feed::Job { id: JobId(1), status: JobStatus::Cancelled, node: None }, 0, 4);
        let v = m.full(4);
        assert_eq!(
            v.counts,
            Counts { total: 3, queued: 1, running: 0, finished: 1, cancelled: 1, ..Counts::default() }
        );
        assert_eq!(v.counts.done(), 2);
        assert_eq!(v.nodes[0].jobs_running, 0);
        assert_eq!(v.returned_bytes, 17);
        let row = v.jobs.iter().find(|r| r.id == 0).unwrap();
        assert_eq!((row.status, row.args.as_str(), row.stdout.as_str()), ("finished", "arg0", "out"));
        assert_eq!((row.start_ms, row.end_ms), (Some(5000), Some(6000)));
        // A late event of an ended job changes nothing.
        m.apply(Feed::Job { id: JobId(0), status: JobStatus::Running, node: Some(w1) }, 0, 5);
        assert_eq!(m.full(5).counts.running, 0);
    }

    #[test]
    fn memory_stays_bounded_and_deltas_carry_only_changes() {
        let w1 = node("w1", 1);
        let mut m = Monitor::new(0);
        let n = 100_000;
        for id in 0..n {
            m.apply(Feed::Job { id: JobId(id), status: JobStatus::Created, node: None }, 0, 1);
        }
        // Too many changes: a full view, with only the window's rows.
        let first = m.delta(1);
        assert!(first.full);
        assert_eq!(first.jobs.len(), QUEUED_SHOWN);
        for id in 0..n {
            m.apply(Feed::Job { id: JobId(id), status: JobStatus::Running, node: Some(w1.clone()) }, 0, 2);
            m.apply(ended(id, JobStatus::Finished, &w1), 0, 3);
        }
        assert_eq!(m.live.len(), 0);
        assert_eq!(m.recent.len(), RECENT);
        assert_eq!(m.full(3).counts.finished, n);
        m.delta(3);
        assert!(!m.is_dirty());
        m.apply(Feed::Job { id: JobId(n), status: JobStatus::Created, node: None }, 0, 4);
        let d = m.delta(4);
        assert!(!d.full);
        assert_eq!(d.jobs.iter().map(|r| r.id).collect::<Vec<_>>(), vec![n]);
        assert_eq!(d.counts.total, n + 1);
    }

    #[test]
    fn a_lost_node_keeps_its_last_seen_time() {
        let w1 = node("w1", 1);
        let mut m = Monitor::new(0);
        m.apply(Feed::Node(ClusterEvent::NodeReady { node: w1.clone(), cpus: 2, load: None }), 0, 10);
        m.apply(Feed::Node(ClusterEvent::NodeLost { node: w1, reason: "gone".into() }), 0, 20);
        let v = m.full(30);
        assert_eq!((v.nodes[0].status.as_str(), v.nodes[0].last_seen_ms), ("lost", 10));
    }
}
