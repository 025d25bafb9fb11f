//! What a cluster reports: each job's result, and dispy's `stats()` table.

use dispy_protocol::{JobId, JobOutcome};
use libp2p::PeerId;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// Which node ran a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeRef {
    /// The node's name (`serve --name`).
    pub name: String,
    /// Its peer id.
    #[serde(serialize_with = "as_text")]
    pub peer_id: PeerId,
    /// The IP the client reached it at.
    pub ip: Option<std::net::IpAddr>,
}

/// Serializes a value as its `Display` text (peer ids have no serde of their own here).
pub(crate) fn as_text<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// One job's result.
#[derive(Clone, Debug)]
pub struct JobReport {
    /// The job's number (submission order, from 0).
    pub id: JobId,
    /// Its arguments.
    pub args: Vec<String>,
    /// Where it ran (`None` if it never reached a node).
    pub node: Option<NodeRef>,
    /// How it ended.
    pub outcome: JobOutcome,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Bytes of stdout dropped past the node's limit.
    pub stdout_truncated: u64,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// Bytes of stderr dropped past the node's limit.
    pub stderr_truncated: u64,
    /// Start, microseconds since the Unix epoch (node's clock).
    pub start_us: u64,
    /// End, microseconds since the Unix epoch (node's clock).
    pub end_us: u64,
    /// For a function job that returned: its value, CBOR-encoded.
    pub value: Vec<u8>,
    /// Files the job left that matched the cluster's return patterns, saved on this machine
    /// (`<results dir>/<job number>/<path in the job directory>`).
    pub returned: Vec<std::path::PathBuf>,
    /// Why files that matched were not returned or saved (over the node's limit, a
    /// symbolic link, a disk that failed), for people.
    pub return_note: Option<String>,
}

impl JobReport {
    /// A report for a job that ended without running to completion on a node (cancelled
    /// while queued, abandoned with its node).
    pub(crate) fn unrun(id: JobId, args: Vec<String>, node: Option<NodeRef>, outcome: JobOutcome) -> Self {
        JobReport {
            id,
            args,
            node,
            outcome,
            stdout: Vec::new(),
            stdout_truncated: 0,
            stderr: Vec::new(),
            stderr_truncated: 0,
            start_us: 0,
            end_us: 0,
            value: Vec::new(),
            returned: Vec::new(),
            return_note: None,
        }
    }

    /// The report of a job a node ran (`node`: where), with its arguments from the client.
    pub(crate) fn from_result(r: dispy_protocol::JobResult, args: Vec<String>, node: Option<NodeRef>) -> Self {
        JobReport {
            id: r.id,
            args,
            node,
            outcome: r.outcome,
            stdout: r.stdout.bytes,
            stdout_truncated: r.stdout.truncated,
            stderr: r.stderr.bytes,
            stderr_truncated: r.stderr.truncated,
            start_us: r.start_us,
            end_us: r.end_us,
            value: r.value,
            returned: Vec::new(),
            return_note: r.return_note,
        }
    }

    /// Adds to [`JobReport::return_note`] why files were not saved here.
    pub(crate) fn note_not_saved(&mut self, why: &str) {
        let note = format!("not saved: {why}");
        self.return_note = Some(match self.return_note.take() {
            Some(n) => format!("{n}; {note}"),
            None => note,
        });
    }

    /// How long the job ran on its node.
    pub fn run_time(&self) -> Duration {
        Duration::from_micros(self.end_us.saturating_sub(self.start_us))
    }

    /// True when the program exited 0.
    pub fn succeeded(&self) -> bool {
        self.outcome.is_success()
    }
}

/// A node as the cluster sees it (`Cluster::nodes`).
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    /// The node.
    pub node: NodeRef,
    /// `os/arch`.
    pub platform: String,
    /// CPU slots it gives the cluster.
    pub cpus: u32,
    /// Where it stands for this cluster.
    pub status: NodeStatus,
    /// Jobs it finished.
    pub jobs_done: u64,
    /// How the client reaches it (direct, hole-punched through NAT, or through a relay).
    pub reach: dispy_node::net::Reach,
}

/// Where a node stands for a cluster. Shown (and serialized) as `starting`, `ready`,
/// `unusable: <why>` or `lost`.
///
/// ```
/// use dispy::NodeStatus;
/// assert_eq!(NodeStatus::Unusable("serves no CPUs".into()).to_string(), "unusable: serves no CPUs");
/// assert_eq!(NodeStatus::Ready, "ready");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeStatus {
    /// Being greeted, reserved or staged.
    Starting,
    /// Takes jobs.
    Ready,
    /// Will not be used, and why (another OS/arch, a refused file, not selected, ...).
    Unusable(String),
    /// Its connection was lost.
    Lost,
    /// Silent (its connection broke): it takes no new jobs, and the client redials it
    /// while its jobs may still be running there, until the node's zombie interval.
    Unreachable,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeStatus::Starting => f.write_str("starting"),
            NodeStatus::Ready => f.write_str("ready"),
            NodeStatus::Unusable(why) => write!(f, "unusable: {why}"),
            NodeStatus::Lost => f.write_str("lost"),
            NodeStatus::Unreachable => f.write_str("unreachable"),
        }
    }
}

impl PartialEq<&str> for NodeStatus {
    fn eq(&self, other: &&str) -> bool {
        match self {
            NodeStatus::Starting => *other == "starting",
            NodeStatus::Ready => *other == "ready",
            NodeStatus::Unusable(why) => other.strip_prefix("unusable: ") == Some(why.as_str()),
            NodeStatus::Lost => *other == "lost",
            NodeStatus::Unreachable => *other == "unreachable",
        }
    }
}

impl Serialize for NodeStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One node's share of the work.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStats {
    /// The node.
    pub node: NodeRef,
    /// CPU slots it gave the cluster.
    pub cpus: u32,
    /// Jobs it finished (any outcome).
    pub jobs: u64,
    /// Sum of its jobs' run times, in seconds.
    pub job_secs: f64,
    /// Bytes of files this client sent it (0 when it already held them all, or fetched them
    /// from other nodes of the cluster: fan-out).
    pub staged_bytes: u64,
    /// How the client reached it (direct, hole-punched through NAT, or through a relay).
    pub reach: dispy_node::net::Reach,
}

/// The cluster's figures, as dispy's `stats()`.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    /// Per node, in the order nodes joined.
    pub nodes: Vec<NodeStats>,
    /// From the cluster's start to now, in seconds.
    pub wall_secs: f64,
}

impl Stats {
    /// Jobs finished on all nodes.
    pub fn jobs(&self) -> u64 {
        self.nodes.iter().map(|n| n.jobs).sum()
    }

    /// The jobs' run times added up, over the wall time: how many times faster the run
    /// was than running the jobs one after another on one CPU. `None` when that says
    /// nothing: fewer than two jobs, or times too short to measure (under a millisecond).
    pub fn speedup(&self) -> Option<f64> {
        let job_secs: f64 = self.nodes.iter().map(|n| n.job_secs).sum();
        (self.jobs() >= 2 && job_secs >= 1e-3 && self.wall_secs >= 1e-3).then(|| job_secs / self.wall_secs)
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:>5} {:>6} {:>12} {:>12} {:>10}  via",
            "node", "cpus", "jobs", "sec/job", "node time s", "staged"
        )?;
        writeln!(f, "{}", "-".repeat(87))?;
        let mut total = 0.0;
        for n in &self.nodes {
            let label = match &n.node.ip {
                Some(ip) => format!("{} ({ip})", n.node.name),
                None => n.node.name.clone(),
            };
            let mean = if n.jobs > 0 { n.job_secs / n.jobs as f64 } else { 0.0 };
            total += n.job_secs;
            writeln!(
                f,
                "{label:<24} {:>5} {:>6} {mean:>12.4} {:>12.3} {:>10}  {}",
                n.cpus,
                n.jobs,
                n.job_secs,
                human_bytes(n.staged_bytes),
                n.reach
            )?;
        }
        writeln!(f)?;
        let nodes = self.nodes.iter().filter(|n| n.jobs > 0).count() as u64;
        write!(f, "{}", count(self.jobs(), "job"))?;
        if nodes > 0 {
            write!(f, " on {}", count(nodes, "node"))?;
        }
        write!(f, " in {:.3} s", self.wall_secs)?;
        if let Some(speedup) = self.speedup() {
            write!(
                f,
                "\nspeedup {speedup:.1}\u{d7} over running the jobs one after another: {total:.3} s of job time in {:.3} s",
                self.wall_secs
            )?;
        }
        Ok(())
    }
}

/// `1 job`, `2 jobs`, `0 jobs`: a count and its noun, plural unless it is one (the
/// summaries' wording, shared with `dispy-peer`'s messages).
///
/// ```
/// assert_eq!(dispy::report::count(2, "node"), "2 nodes");
/// ```
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

pub(crate) fn node_ref(name: &str, peer: &PeerId, ip: Option<std::net::IpAddr>) -> NodeRef {
    NodeRef { name: name.to_string(), peer_id: *peer, ip }
}

/// A size for people, in binary units: `812 B`, `5.0 MiB`.
///
/// ```
/// assert_eq!(dispy::report::human_bytes(5 << 20), "5.0 MiB");
/// ```
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(jobs: &[(u64, f64)], wall_secs: f64) -> Stats {
        let peer_id = PeerId::random();
        let nodes = jobs
            .iter()
            .enumerate()
            .map(|(i, &(jobs, job_secs))| NodeStats {
                node: node_ref(&format!("n{i}"), &peer_id, None),
                cpus: 2,
                jobs,
                job_secs,
                staged_bytes: 0,
                reach: dispy_node::net::Reach::Direct,
            })
            .collect();
        Stats { nodes, wall_secs }
    }

    #[test]
    fn the_summary_counts_in_words_and_gives_a_speedup_only_when_it_means_something() {
        let one = stats(&[(1, 2.0)], 2.5).to_string();
        assert!(one.ends_with("\n1 job on 1 node in 2.500 s"), "{one}");
        let many = stats(&[(6, 8.0), (2, 4.3)], 1.6).to_string();
        assert!(
            many.ends_with(
                "8 jobs on 2 nodes in 1.600 s\nspeedup 7.7\u{d7} over running the jobs one after another: \
                 12.300 s of job time in 1.600 s"
            ),
            "{many}"
        );
        let none = stats(&[], 0.2).to_string();
        assert!(none.ends_with("\n0 jobs in 0.200 s"), "{none}");
        assert_eq!(stats(&[(3, 0.0)], 1.0).speedup(), None, "jobs too short to time");
        assert_eq!(count(1, "node"), "1 node");
        assert_eq!(count(0, "node"), "0 nodes");
    }
}
