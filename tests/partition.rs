//! A run survives its network going away: two nodes and a client on one LAN (namespaces
//! the tests create; mDNS only inside them), 300 jobs of 50 ms, and the client's link set
//! down at about 1 s for a while. Every job is reported exactly once, whatever happens.

use crate::util::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const JOBS: usize = 300;

/// A LAN with two nodes and a client host (namespaces), and the job script.
struct Lan {
    ns: Netns,
    prefix: String,
    hosts: [String; 2],
    client: String,
    dir: tempfile::TempDir,
    prog: std::path::PathBuf,
}

fn lan(subnet: u8) -> Lan {
    let dir = tempdir();
    let mut ns = Netns::new();
    let prefix = ns.prefix.clone();
    let hub = ns.add_lan("hub");
    let h1 = ns.add_host("n1", &hub, "eth0", &format!("10.{subnet}.0.1/24"));
    let h2 = ns.add_host("n2", &hub, "eth0", &format!("10.{subnet}.0.2/24"));
    let client = ns.add_host("cl", &hub, "eth0", &format!("10.{subnet}.0.9/24"));
    let prog = script(dir.path(), "job.sh", "sleep 0.05; echo done $1");
    Lan { ns, prefix, hosts: [h1, h2], client, dir, prog }
}

impl Lan {
    /// `submit` of the 300 jobs from the client host, zero-config (mDNS), started.
    fn submit(&self, extra: &[&str]) -> Proc {
        let mut cmd = self.ns.exec(&self.client, bin());
        cmd.arg("submit").arg(&self.prog).args(["--json", "--secret", "test-secret", "--discover-timeout", "10"]);
        cmd.args(extra);
        let jobs: String = (0..JOBS).map(|i| format!("{i}\n")).collect();
        let list = self.dir.path().join("jobs.txt");
        std::fs::write(&list, jobs).unwrap();
        cmd.arg("--args-file").arg(&list);
        cmd.env(
            "RUST_LOG",
            std::env::var("PARTITION_LOG").unwrap_or_else(|_| "warn,libp2p_kad=error,libp2p_mdns=error".into()),
        )
        .env_remove("DISPY_SECRET");
        Proc::spawn("submit", cmd)
    }

    /// The client's link down for `secs`, from about 1 s into the run.
    fn partition(&self, nodes: &[&Node], secs: f64) {
        self.cut_when_reserved(nodes);
        std::thread::sleep(Duration::from_secs_f64(secs));
        self.link(true);
    }

    /// The client's link down about 1 s after every node took the cluster.
    fn cut_when_reserved(&self, nodes: &[&Node]) {
        assert!(
            wait_until(Duration::from_secs(30), || nodes.iter().all(|n| n.proc.stderr().contains("cluster reserved"))),
            "both nodes reserved"
        );
        std::thread::sleep(Duration::from_secs(1));
        self.link(false);
    }

    fn link(&self, up: bool) {
        self.ns.ip(&["-n", &self.client, "link", "set", "eth0", if up { "up" } else { "down" }]);
    }

    fn end(self) {
        let prefix = self.prefix.clone();
        drop(self.ns);
        assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
    }
}

/// Each job's final status by number; panics if a job is reported twice.
fn statuses(out: &Finished) -> HashMap<u64, String> {
    let mut seen = HashMap::new();
    for j in out.json_lines().iter().filter(|j| j.get("job").is_some()) {
        let id = j["job"].as_u64().unwrap();
        let status = j["status"].as_str().unwrap().to_string();
        assert!(seen.insert(id, status).is_none(), "job {id} reported twice:\n{}", out.stdout);
    }
    seen
}

fn all_finished_once(out: &Finished) {
    out.expect_code(0);
    let seen = statuses(out);
    assert_eq!(seen.len(), JOBS, "every job reported:\n{}", out.stderr);
    let bad: Vec<_> = seen.iter().filter(|(_, s)| *s != "finished").collect();
    assert!(bad.is_empty(), "not finished: {bad:?}\n{}", out.stderr);
}

fn survives(subnet: u8, secs: f64, reentrant: bool) {
    let lan = lan(subnet);
    {
        let n1 = Node::serve_in(&lan.hosts[0], "p-one", lan.dir.path(), &[]);
        let n2 = Node::serve_in(&lan.hosts[1], "p-two", lan.dir.path(), &[]);
        let client = lan.submit(if reentrant { &["--reentrant"] } else { &[] });
        lan.partition(&[&n1, &n2], secs);
        let out = client.wait(Duration::from_secs(120));
        all_finished_once(&out);
        if secs > 10.0 {
            assert!(out.stderr.contains("unreachable"), "the silence was noticed:\n{}", out.stderr);
        }
    }
    lan.end();
}

#[test]
fn a_5_s_partition_loses_nothing() {
    survives(91, 5.0, false);
}

#[test]
fn a_5_s_partition_loses_nothing_reentrant() {
    survives(92, 5.0, true);
}

#[test]
fn a_20_s_partition_loses_nothing() {
    survives(93, 20.0, false);
}

#[test]
fn a_20_s_partition_loses_nothing_reentrant() {
    survives(94, 20.0, true);
}

#[test]
fn a_45_s_partition_loses_nothing() {
    survives(95, 45.0, false);
}

#[test]
fn a_45_s_partition_loses_nothing_reentrant() {
    survives(96, 45.0, true);
}

#[test]
fn past_wait_nodes_every_job_is_reported_with_its_status_and_submit_exits_1() {
    let lan = lan(97);
    {
        let n1 = Node::serve_in(&lan.hosts[0], "w-one", lan.dir.path(), &[]);
        let n2 = Node::serve_in(&lan.hosts[1], "w-two", lan.dir.path(), &[]);
        let client = lan.submit(&["--wait-nodes", "30"]);
        lan.cut_when_reserved(&[&n1, &n2]);
        let cut = Instant::now();
        // A 90 s partition: the link stays down until the client gives up.
        let out = client.wait(Duration::from_secs(90));
        let waited = cut.elapsed();
        out.expect_code(1);
        // A few seconds to notice the silence, then 30 s of waiting.
        assert!(waited > Duration::from_secs(30) && waited < Duration::from_secs(60), "{waited:?}");
        let seen = statuses(&out);
        assert_eq!(seen.len(), JOBS, "none missing:\n{}", out.stderr);
        let counts = seen.values().fold(HashMap::new(), |mut m, s| {
            *m.entry(s.as_str()).or_insert(0usize) += 1;
            m
        });
        assert!(counts.get("finished").copied().unwrap_or(0) > 0, "{counts:?}");
        assert!(counts.get("not run").copied().unwrap_or(0) > 0, "{counts:?}");
        let known: HashSet<&str> = HashSet::from(["finished", "not run", "abandoned"]);
        assert!(counts.keys().all(|s| known.contains(s)), "{counts:?}");
        assert!(out.stderr.contains("waiting up to 30 s for one to come back (--wait-nodes)"), "{}", out.stderr);
        assert!(
            out.stderr.contains("every node was lost and none came back within 30.0 s (--wait-nodes)"),
            "{}",
            out.stderr
        );
        let summary = out.json_lines().into_iter().find(|j| j.get("summary").is_some()).expect("a summary");
        assert_eq!(summary["reported"], JOBS, "{summary}");
        assert_eq!(summary["statuses"]["not run"], counts["not run"], "{summary}");
    }
    lan.end();
}

#[test]
fn ctrl_c_while_the_nodes_are_unreachable_reports_every_job() {
    let lan = lan(98);
    {
        let n1 = Node::serve_in(&lan.hosts[0], "c-one", lan.dir.path(), &[]);
        let n2 = Node::serve_in(&lan.hosts[1], "c-two", lan.dir.path(), &[]);
        let client = lan.submit(&[]);
        lan.cut_when_reserved(&[&n1, &n2]);
        assert!(client.wait_stderr("unreachable", Duration::from_secs(20)), "{}", client.stderr());
        signal(client.pid(), "INT");
        let out = client.wait(Duration::from_secs(30));
        out.expect_code(1);
        let seen = statuses(&out);
        assert_eq!(seen.len(), JOBS, "none missing:\n{}", out.stderr);
        assert!(seen.values().all(|s| s == "finished" || s == "cancelled"), "{seen:?}");
        assert!(seen.values().any(|s| s == "cancelled"));
    }
    lan.end();
}

/// Node one is killed and started again while the client's link is down; returns the
/// client's output.
fn restarted_during_a_partition(lan: &Lan, reentrant: bool) -> Finished {
    let mut n1 = Node::serve_in(&lan.hosts[0], "r-one", lan.dir.path(), &[]);
    let n2 = Node::serve_in(&lan.hosts[1], "r-two", lan.dir.path(), &[]);
    let client = lan.submit(if reentrant { &["--reentrant"] } else { &[] });
    lan.cut_when_reserved(&[&n1, &n2]);
    signal(n1.proc.pid(), "KILL");
    n1.stop();
    let _n1 = Node::serve_in(&lan.hosts[0], "r-one", lan.dir.path(), &[]);
    std::thread::sleep(Duration::from_secs(15));
    lan.link(true);
    client.wait(Duration::from_secs(120))
}

#[test]
fn a_node_restarted_during_a_partition_reruns_its_jobs_once() {
    let lan = lan(99);
    all_finished_once(&restarted_during_a_partition(&lan, true));
    lan.end();
}

#[test]
fn a_node_restarted_during_a_partition_has_its_jobs_abandoned_once_when_not_reentrant() {
    let lan = lan(90);
    let out = restarted_during_a_partition(&lan, false);
    out.expect_code(1);
    let seen = statuses(&out);
    assert_eq!(seen.len(), JOBS, "none missing:\n{}", out.stderr);
    let abandoned: Vec<_> = out.json_lines().into_iter().filter(|j| j["status"] == "abandoned").collect();
    assert!(!abandoned.is_empty(), "{}", out.stdout);
    assert!(abandoned.iter().all(|j| j["node"] == "r-one"), "{abandoned:?}");
    assert!(seen.values().all(|s| s == "finished" || s == "abandoned"), "{seen:?}");
    lan.end();
}
