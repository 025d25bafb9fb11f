//! Discovery across network namespaces that the tests create: mDNS on a bridged LAN with
//! no address typed, and Kademlia across a router that multicast cannot cross. mDNS runs
//! only inside these namespaces, never in the machine's own.

use crate::util::*;
use std::collections::HashSet;
use std::time::Duration;

fn submit_in(ns: &Netns, host: &str, prog: &std::path::Path, extra: &[&str], jobs: usize) -> Finished {
    let mut cmd = ns.exec(host, bin());
    cmd.arg("submit").arg(prog).args(["--json", "--secret", "test-secret", "--discover-timeout", "10"]);
    cmd.args(extra);
    for i in 0..jobs {
        cmd.args(["-a", &i.to_string()]);
    }
    cmd.env("RUST_LOG", "warn,libp2p_kad=error,dispy=debug,dispy_node=debug").env_remove("DISPY_SECRET");
    run("submit", cmd, Duration::from_secs(90))
}

fn nodes_used(out: &Finished) -> HashSet<String> {
    out.json_lines().iter().filter_map(|j| j.get("node").and_then(|n| n.as_str()).map(String::from)).collect()
}

#[test]
fn zero_config_lan_finds_both_nodes_by_mdns() {
    let dir = tempdir();
    let mut ns = Netns::new();
    let prefix = ns.prefix.clone();
    let lan = ns.add_lan("hub");
    let h1 = ns.add_host("n1", &lan, "eth0", "10.77.0.1/24");
    let h2 = ns.add_host("n2", &lan, "eth0", "10.77.0.2/24");
    let h3 = ns.add_host("n3", &lan, "eth0", "10.77.0.3/24");
    let prog = script(dir.path(), "job.sh", "sleep 0.05; echo $1");
    {
        let n1 = Node::serve_in(&h1, "lan-one", dir.path(), &[]);
        let n2 = Node::serve_in(&h2, "lan-two", dir.path(), &[]);
        // No address typed: mDNS on the bridge is the only way to the nodes.
        let out = submit_in(&ns, &h3, &prog, &[], 40);
        out.expect_code(0);
        let used = nodes_used(&out);
        assert_eq!(used, HashSet::from(["lan-one".to_string(), "lan-two".to_string()]), "{}", out.stdout);
        let ips: HashSet<String> =
            out.json_lines().iter().filter_map(|j| j["node_ip"].as_str().map(String::from)).collect();
        assert_eq!(ips, HashSet::from(["10.77.0.1".to_string(), "10.77.0.2".to_string()]));

        // The same LAN with --nodes: only the matching node is used.
        let out = submit_in(&ns, &h3, &prog, &["--nodes", "10.77.0.2"], 6);
        out.expect_code(0);
        assert_eq!(nodes_used(&out), HashSet::from(["lan-two".to_string()]), "{}", out.stdout);

        // `nodes` lists both, zero-config too.
        let mut cmd = ns.exec(&h3, bin());
        cmd.args(["nodes", "--json", "--secret", "test-secret", "--discover-timeout", "3"]);
        let out = run("nodes", cmd, Duration::from_secs(30));
        out.expect_code(0);
        assert_eq!(out.json_lines().len(), 2, "{}", out.stdout);
        for n in [&n1, &n2] {
            assert!(n.job_dirs().is_empty());
        }
    }
    drop(ns);
    assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
}

#[test]
fn kademlia_finds_a_node_beyond_the_lan() {
    let dir = tempdir();
    let mut ns = Netns::new();
    let prefix = ns.prefix.clone();
    let lan_a = ns.add_lan("hubA");
    let lan_b = ns.add_lan("hubB");
    let router = ns.add_host("router", &lan_a, "ethA", "10.78.1.1/24");
    ns.plug(&router, &lan_b, "ethB", "10.78.2.1/24");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .output()
        .expect("sysctl");
    assert!(out.status.success(), "cannot enable forwarding: {}", String::from_utf8_lossy(&out.stderr));
    let client = ns.add_host("client", &lan_a, "eth0", "10.78.1.10/24");
    let boot = ns.add_host("boot", &lan_b, "eth0", "10.78.2.20/24");
    let far = ns.add_host("far", &lan_b, "eth0", "10.78.2.30/24");
    ns.ip(&["-n", &client, "route", "add", "default", "via", "10.78.1.1"]);
    ns.ip(&["-n", &boot, "route", "add", "default", "via", "10.78.2.1"]);
    ns.ip(&["-n", &far, "route", "add", "default", "via", "10.78.2.1"]);
    let prog = script(dir.path(), "job.sh", "sleep 0.1; echo $1");
    {
        let b = Node::serve_in(&boot, "bootstrap", dir.path(), &["--no-mdns"]);
        let boot_addr = "/ip4/10.78.2.20/tcp/9700".to_string();
        let peer_id = b.addr.rsplit('/').next().unwrap().to_string();
        let _x = Node::serve_in(&far, "far-node", dir.path(), &["--no-mdns", "--bootstrap", &boot_addr]);
        // Only the bootstrap node's address: the far node must come from its routing table.
        let boot_full = format!("{boot_addr}/p2p/{peer_id}");
        let out = submit_in(&ns, &client, &prog, &["--bootstrap", &boot_full], 30);
        out.expect_code(0);
        let used = nodes_used(&out);
        assert!(used.contains("far-node"), "the far node ran no job: {used:?}\n{}\n{}", out.stdout, out.stderr);
        let far_ips: HashSet<String> = out
            .json_lines()
            .iter()
            .filter(|j| j["node"] == "far-node")
            .filter_map(|j| j["node_ip"].as_str().map(String::from))
            .collect();
        assert_eq!(far_ips, HashSet::from(["10.78.2.30".to_string()]));
    }
    drop(ns);
    assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
}

#[test]
fn a_node_cut_off_without_a_word_is_noticed_by_heartbeats() {
    let dir = tempdir();
    let mut ns = Netns::new();
    let prefix = ns.prefix.clone();
    let lan = ns.add_lan("hub");
    let node_host = ns.add_host("node", &lan, "eth0", "10.79.0.1/24");
    let client_host = ns.add_host("client", &lan, "eth0", "10.79.0.2/24");
    let prog = script(dir.path(), "job.sh", "echo started; sleep 30");
    {
        let node =
            Node::serve_in(&node_host, "cut", dir.path(), &["--no-mdns", "--heartbeat", "1", "--zombie-interval", "2"]);
        let mut cmd = ns.exec(&client_host, bin());
        cmd.arg("submit").arg(&prog).args(["--json", "--no-mdns", "--secret", "test-secret", "--heartbeat", "1"]);
        cmd.args(["--peer", "/ip4/10.79.0.1/tcp/9700", "-a", "1"]);
        cmd.env("RUST_LOG", "warn,libp2p_kad=error").env_remove("DISPY_SECRET");
        let client = Proc::spawn("submit", cmd);
        assert!(node.proc.wait_stderr("cluster reserved", Duration::from_secs(20)), "{}", node.proc.stderr());
        std::thread::sleep(Duration::from_millis(500));
        // Pull the cable: no FIN, no RST; only the missing heartbeats tell.
        let cut = std::time::Instant::now();
        ns.ip(&["-n", &node_host, "link", "set", "eth0", "down"]);
        let out = client.wait(Duration::from_secs(30));
        let noticed = cut.elapsed();
        out.expect_code(1);
        assert!(noticed < Duration::from_secs(8), "the client took {noticed:?} to notice\n{}", out.stderr);
        assert!(out.stdout.contains("abandoned: node cut was lost"), "{}", out.stdout);
        assert!(out.stderr.contains("stopped answering heartbeats"), "{}", out.stderr);
        // The node, on its side, gives the silent client up and kills its job.
        assert!(node.proc.wait_stderr("client has gone", Duration::from_secs(10)), "{}", node.proc.stderr());
    }
    drop(ns);
    assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
}

#[test]
fn results_finished_during_a_partition_arrive_once_it_heals() {
    let dir = tempdir();
    let mut ns = Netns::new();
    let prefix = ns.prefix.clone();
    let lan = ns.add_lan("hub");
    let node_host = ns.add_host("node", &lan, "eth0", "10.80.0.1/24");
    let client_host = ns.add_host("client", &lan, "eth0", "10.80.0.2/24");
    let prog = script(dir.path(), "job.sh", "sleep 0.5; echo done $1");
    {
        let node = Node::serve_in(&node_host, "far", dir.path(), &["--no-mdns"]);
        let mut cmd = ns.exec(&client_host, bin());
        cmd.arg("submit").arg(&prog).args(["--json", "--no-mdns", "--secret", "test-secret"]);
        cmd.args(["--peer", "/ip4/10.80.0.1/tcp/9700"]);
        for i in 0..12 {
            cmd.args(["-a", &i.to_string()]);
        }
        cmd.env("RUST_LOG", "warn,libp2p_kad=error").env_remove("DISPY_SECRET");
        let client = Proc::spawn("submit", cmd);
        assert!(node.proc.wait_stderr("cluster reserved", Duration::from_secs(20)), "{}", node.proc.stderr());
        std::thread::sleep(Duration::from_millis(300));
        // Jobs keep finishing on the node while it is cut off for 5 s.
        ns.ip(&["-n", &node_host, "link", "set", "eth0", "down"]);
        std::thread::sleep(Duration::from_secs(5));
        ns.ip(&["-n", &node_host, "link", "set", "eth0", "up"]);
        let out = client.wait(Duration::from_secs(60));
        out.expect_code(0);
        let ids: Vec<u64> = out.json_lines().iter().filter_map(|j| j.get("job").and_then(|v| v.as_u64())).collect();
        let unique: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!((ids.len(), unique.len()), (12, 12), "every result exactly once:\n{}", out.stdout);
        assert!(
            out.json_lines().iter().filter(|j| j.get("job").is_some()).all(|j| j["exit_code"] == 0),
            "{}",
            out.stdout
        );
    }
    drop(ns);
    assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
}

/// Nodes look each other up again once their links have idled out (here: a newcomer makes
/// every node's Kademlia, short of peers, run a lookup). Such a dial must go only where the
/// peer listens on the LAN: a peer's 127.0.0.1 listener, offered to the dial by an address
/// cache, is this host's own, and dialing it was a handshake with itself, reported as a
/// secret mismatch (and, at 64 nodes, a third of every refresh round's handshakes).
#[test]
fn nodes_redial_lan_peers_only_where_they_listen() {
    let dir = tempdir();
    let mut ns = Netns::new();
    let prefix = ns.prefix.clone();
    let lan = ns.add_lan("hub");
    let hosts: Vec<String> =
        (1..=4).map(|i| ns.add_host(&format!("n{i}"), &lan, "eth0", &format!("10.102.0.{i}/24"))).collect();
    {
        let first: Vec<Node> = Node::start_all(
            dir.path(),
            (0..3).map(|i| NodeOpts::in_netns(&hosts[i], &format!("redial-{i}"), &[])).collect(),
        );
        // They find each other, look each other up, then their links idle out (10 s).
        std::thread::sleep(Duration::from_secs(14));
        let newcomer = Node::serve_in(&hosts[3], "redial-3", dir.path(), &[]);
        std::thread::sleep(Duration::from_secs(8));
        for n in first.iter().chain([&newcomer]) {
            let log = n.proc.stderr();
            assert!(!log.contains("failed the network-key handshake"), "{}:\n{log}", n.proc.name);
        }
    }
    drop(ns);
    assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
}
