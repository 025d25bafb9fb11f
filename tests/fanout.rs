//! Fan-out staging on a LAN of network namespaces whose client link is rate-limited (`tc`):
//! a large dependency reaches eight nodes through each other in about the time it takes to
//! reach one, and the client's link carries it about once.

use crate::util::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A file of `mib` MiB of pseudo-random bytes (incompressible, distinct per `seed`); returns
/// its path and SHA-256 in hex.
fn dataset(dir: &Path, name: &str, mib: u64, seed: u64) -> (PathBuf, String) {
    use std::io::Write;
    let path = dir.join(name);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut hasher = Sha256::new();
    let mut x = seed | 1;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for word in block.chunks_mut(8) {
            // xorshift64: fast, and enough to defeat any compression on the way.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        hasher.update(&block);
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
    (path, hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_of(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return hex(&hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Bytes sent by `host`'s `eth0` so far.
fn tx_bytes(ns: &Netns, host: &str) -> u64 {
    let out = ns.exec(host, "cat").arg("/sys/class/net/eth0/statistics/tx_bytes").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Polls the nodes' stores until each holds the whole file `hex` (of `size` bytes); returns
/// when each was first seen holding it (`None`: not within `within`).
fn held_after(nodes: &[Node], hex: &str, size: u64, start: Instant, within: Duration) -> Vec<Option<Duration>> {
    let mut seen = vec![None; nodes.len()];
    while start.elapsed() < within && seen.iter().any(Option::is_none) {
        for (node, at) in nodes.iter().zip(seen.iter_mut()) {
            let stored = node.dest.join("store").join(hex);
            if at.is_none() && std::fs::metadata(&stored).map(|m| m.len() == size).unwrap_or(false) {
                *at = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

fn submit_in(ns: &Netns, host: &str, prog: &Path, data: &Path, extra: &[&str], jobs: usize) -> Proc {
    let mut cmd = ns.exec(host, bin());
    cmd.arg("submit").arg(prog).arg("-f").arg(data);
    cmd.args(["--json", "--secret", "test-secret", "--discover-timeout", "10"]).args(extra);
    for i in 0..jobs {
        cmd.args(["-a", &i.to_string()]);
    }
    cmd.env("RUST_LOG", "warn,libp2p_kad=error,dispy=info,dispy_node=info").env_remove("DISPY_SECRET");
    Proc::spawn("submit", cmd)
}

#[test]
fn a_large_dependency_reaches_eight_nodes_through_each_other() {
    let mib: u64 = std::env::var("DISPY_FANOUT_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let size = mib * MIB;
    let dir = tempdir();
    let mut ns = Netns::new();
    let prefix = ns.prefix.clone();
    let lan = ns.add_lan("hub");
    let hosts: Vec<String> =
        (1..=8).map(|i| ns.add_host(&format!("n{i}"), &lan, "eth0", &format!("10.86.0.{i}/24"))).collect();
    let client = ns.add_host("client", &lan, "eth0", "10.86.0.100/24");
    // The client's uplink: 200 Mbit/s, where real clusters choke.
    let tc = ns
        .exec(&client, "tc")
        .args(["qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "200mbit", "burst", "256kb", "latency", "400ms"])
        .output()
        .expect("this test needs iproute2's `tc` (apt-get install -y iproute2); .ci/run installs it");
    assert!(tc.status.success(), "tc: {}", String::from_utf8_lossy(&tc.stderr));
    let (one, one_hex) = dataset(dir.path(), "one.bin", mib, 1);
    let (all, all_hex) = dataset(dir.path(), "data.bin", mib, 2);
    // Each job checks its copy; jobs last a while, so every node is still in the cluster
    // when the file reaches it.
    let prog = script(dir.path(), "job.sh", "sha256sum ./*.bin | cut -c1-64; sleep 1");
    {
        let opts =
            hosts.iter().enumerate().map(|(i, h)| NodeOpts::in_netns(h, &format!("fan{}", i + 1), &[])).collect();
        let nodes = Node::start_all(dir.path(), opts);

        // One node: the time the client's link takes.
        let start = Instant::now();
        let run = submit_in(&ns, &client, &prog, &one, &["--nodes", "10.86.0.1"], 1);
        let t_one = held_after(&nodes[..1], &one_hex, size, start, Duration::from_secs(120))[0]
            .expect("the first node receives the file");
        let out = run.wait(Duration::from_secs(120));
        out.expect_code(0);
        assert!(out.stdout.contains(&one_hex), "{}", out.stdout);

        // Eight nodes, another file of the same size.
        let sent_before = tx_bytes(&ns, &client);
        let start = Instant::now();
        let run = submit_in(&ns, &client, &prog, &all, &[], 24);
        let seen = held_after(&nodes, &all_hex, size, start, Duration::from_secs(240));
        let out = run.wait(Duration::from_secs(240));
        let sent = tx_bytes(&ns, &client) - sent_before;
        out.expect_code(0);
        let times: Vec<String> = seen.iter().map(|t| format!("{:.1}", t.unwrap_or_default().as_secs_f64())).collect();
        eprintln!(
            "{mib} MiB at 200 Mbit/s: one node holds it after {:.1} s; eight after [{}] s; the client sent {:.2}x the file",
            t_one.as_secs_f64(),
            times.join(", "),
            sent as f64 / size as f64
        );
        assert!(seen.iter().all(Option::is_some), "every node holds the file: {seen:?}\n{}", out.stderr);
        let t_all = seen.iter().flatten().max().copied().unwrap_or_default();
        assert!(t_all <= 2 * t_one, "eight nodes in {t_all:?}, one in {t_one:?}: fan-out takes at most twice one copy");
        assert!(sent < 2 * size, "the client sent {sent} bytes for a file of {size}");
        // Every copy is the file, byte for byte; so said every job.
        for node in &nodes {
            assert_eq!(sha256_of(&node.dest.join("store").join(&all_hex)), all_hex, "{}", node.dest.display());
        }
        let hashes: Vec<&str> = out.stdout.lines().filter(|l| l.contains("\"stdout\"")).collect();
        assert!(!hashes.is_empty() && hashes.iter().all(|l| l.contains(&all_hex)), "{}", out.stdout);
    }
    drop(ns);
    assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
}
