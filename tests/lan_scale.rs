//! A lab-sized LAN (issue 12): 64 nodes, each in its own network namespace on one bridge,
//! found by mDNS with no address typed; 6,400 `/bin/true` jobs spread over all of them; and
//! no node holding more than a few connections (a full mesh holds 2·(n−1) per node).
//! Addresses: 10.83.0.0/16, inside namespaces this test makes and deletes; each host knows
//! the others' MAC addresses, as machines on a real LAN would ([`Netns::add_lan_hosts`]).

use crate::util::*;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

/// Nodes on the LAN.
const NODES: usize = 64;
/// Jobs per node.
const JOBS_PER_NODE: usize = 100;
/// Established TCP connections a node may hold: its link to the client plus the few that
/// Kademlia's routing wants. A full mesh holds about 2·(NODES−1).
const MAX_CONNECTIONS: usize = 8;

/// The nodes of the LAN, all sent SIGTERM at once when dropped (also when the test fails),
/// then each reaped and checked by its own guard.
struct Mesh(Vec<Node>);

impl Drop for Mesh {
    fn drop(&mut self) {
        for n in &self.0 {
            signal(n.proc.pid(), "TERM");
        }
        // One SIGTERM each: wait for them together before each guard reaps its own (a
        // second signal would kill rather than drain).
        let nodes = &mut self.0;
        wait_until(Duration::from_secs(10), || {
            nodes.iter_mut().all(|n| matches!(n.proc.child.try_wait(), Ok(Some(_))))
        });
    }
}

/// Established TCP connections in each namespace, counted by `ss`.
fn connections(ns: &Netns, hosts: &[String]) -> Vec<usize> {
    hosts
        .iter()
        .map(|h| {
            let mut cmd = ns.exec(h, "ss");
            cmd.args(["-Htn", "state", "established"]);
            let out = cmd.output().expect("run ss");
            assert!(out.status.success(), "ss in {h}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
        })
        .collect()
}

/// "max M, mean A, per node [..]" for the test's output.
fn describe(counts: &[usize]) -> String {
    let max = counts.iter().max().copied().unwrap_or(0);
    let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    format!("max {max}, mean {mean:.1}, per node {counts:?}")
}

#[test]
fn sixty_four_nodes_on_one_lan_are_all_found_all_used_and_not_meshed() {
    let dir = tempdir();
    let mut ns = Netns::new();
    let prefix = ns.prefix.clone();
    let t0 = Instant::now();
    let lan = ns.add_lan("hub");
    // The client last: 64 nodes, then one more host.
    let mut specs: Vec<(String, String)> =
        (1..=NODES).map(|i| (format!("n{i}"), format!("10.83.{}.{}/16", i / 256, i % 256))).collect();
    specs.push(("client".into(), "10.83.255.1/16".into()));
    let mut hosts = ns.add_lan_hosts(&lan, &specs);
    let client = hosts.pop().expect("the client's namespace");
    println!("{} namespaces in {:?}", NODES + 2, t0.elapsed());
    {
        let t1 = Instant::now();
        let opts =
            hosts.iter().enumerate().map(|(i, h)| NodeOpts::in_netns(h, &format!("s{:02}", i + 1), &[])).collect();
        let mesh = Mesh(Node::start_all(dir.path(), opts));
        println!("{NODES} nodes listening in {:?}", t1.elapsed());

        // Right after start, mDNS hands every node the whole LAN and Kademlia's first lookups
        // open short-lived links between nodes; nothing holds them, so they close once idle
        // (10 s): what a node holds is its clients' links alone.
        std::thread::sleep(Duration::from_secs(2));
        println!("connections 2 s after start: {}", describe(&connections(&ns, &hosts)));
        let idle_by = Instant::now() + Duration::from_secs(30);
        let settled = loop {
            let now = connections(&ns, &hosts);
            if now.iter().all(|&c| c <= MAX_CONNECTIONS) || Instant::now() > idle_by {
                break now;
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        println!("idle {:?} after the nodes started", t1.elapsed());
        println!("connections once idle: {}", describe(&settled));
        assert!(
            settled.iter().all(|&c| c <= MAX_CONNECTIONS),
            "a node holds more than {MAX_CONNECTIONS} connections once idle: {}",
            describe(&settled)
        );

        // Zero-config: mDNS on the bridge is the only way the client learns of the nodes, and
        // a client started on a settled LAN lists all of them within 2 s.
        let mut cmd = ns.exec(&client, bin());
        cmd.args(["nodes", "--json", "--secret", "test-secret", "--discover-timeout", "2"]);
        cmd.env("RUST_LOG", "warn,libp2p_kad=error").env_remove("DISPY_SECRET");
        let listed = run("nodes", cmd, Duration::from_secs(30));
        let names: HashSet<String> =
            listed.json_lines().iter().filter_map(|n| n["name"].as_str().map(String::from)).collect();
        println!("`nodes` listed {} of {NODES}", names.len());
        println!("connections after discovery: {}", describe(&connections(&ns, &hosts)));
        listed.expect_code(0);
        assert_eq!(
            names.len(),
            NODES,
            "`nodes` listed {} of {NODES}:\n{}\n{}",
            names.len(),
            listed.stdout,
            listed.stderr
        );

        // 6,400 jobs from an args file, one line each.
        let jobs = NODES * JOBS_PER_NODE;
        let args = dir.path().join("jobs.txt");
        let mut f = std::fs::File::create(&args).unwrap();
        for i in 0..jobs {
            writeln!(f, "{i}").unwrap();
        }
        drop(f);
        let mut cmd = ns.exec(&client, bin());
        cmd.args(["submit", "/bin/true", "--json", "--secret", "test-secret", "--discover-timeout", "10"]);
        cmd.arg("--args-file").arg(&args);
        cmd.env("RUST_LOG", "warn,libp2p_kad=error").env_remove("DISPY_SECRET");
        let t2 = Instant::now();
        let out = run("submit", cmd, Duration::from_secs(120));
        println!("{jobs} jobs in {:?}", t2.elapsed());
        let after_run = connections(&ns, &hosts);
        println!("connections after the run: {}", describe(&after_run));
        out.expect_code(0);
        let lines = out.json_lines();
        let results: Vec<&serde_json::Value> = lines.iter().filter(|j| j.get("job").is_some()).collect();
        let ids: HashSet<u64> = results.iter().filter_map(|j| j["job"].as_u64()).collect();
        assert_eq!((results.len(), ids.len()), (jobs, jobs), "every job's result exactly once\n{}", out.stderr);
        assert!(results.iter().all(|j| j["exit_code"] == 0), "a job failed:\n{}", out.stdout);
        assert!(!lines.iter().any(|j| j.get("lost").is_some()), "jobs lost:\n{}", out.stdout);
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for j in &results {
            *per_node.entry(j["node"].as_str().unwrap_or("-").to_string()).or_default() += 1;
        }
        println!("jobs per node: {per_node:?}");
        assert_eq!(per_node.len(), NODES, "jobs ran on {} of {NODES} nodes: {per_node:?}", per_node.len());
        assert!(
            after_run.iter().all(|&c| c <= MAX_CONNECTIONS),
            "a node holds more than {MAX_CONNECTIONS} connections after the run: {}",
            describe(&after_run)
        );
        drop(mesh);
    }
    drop(ns);
    assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
}
