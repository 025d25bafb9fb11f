//! Nodes behind NAT (issue 15): two sites, each a LAN behind a router namespace doing
//! masquerade with nftables (no port forward, unsolicited inbound dropped), and a relay node
//! on a third subnet between them (the "internet"). The client finds the NATed node through
//! Kademlia (only the relay's address is typed), reaches it through the relay, and a hole
//! punch makes the link direct when both NATs keep a port's mapping (endpoint-independent,
//! Linux's default); with port-randomizing NATs the link stays relayed and works.

use crate::util::*;
use std::time::Duration;

/// The namespaces of the two sites and the relay between them.
struct Sites {
    ns: Netns,
    inet: String,
    relay: String,
    node: String,
    client: String,
}

/// nftables for a site router: masquerade out of `wan`, and drop what arrives on `wan`
/// unasked (a home router's behaviour; without it the router's own stack would answer a
/// hole punch's first SYN with a reset). `masquerade` is the NAT statement.
fn router_rules(masquerade: &str) -> String {
    format!(
        "table ip nat {{ chain post {{ type nat hook postrouting priority 100; oifname \"wan\" {masquerade}; }}; }}\n\
         table inet filter {{\n\
           chain input {{ type filter hook input priority 0; iifname \"wan\" ct state new drop; }}\n\
           chain forward {{ type filter hook forward priority 0; iifname \"wan\" ct state new drop; }}\n\
         }}\n"
    )
}

fn sites(net: u8, masquerade: &str) -> Sites {
    let nft = std::process::Command::new("nft").arg("--version").output();
    assert!(
        nft.map(|o| o.status.success()).unwrap_or(false),
        "this test needs nftables' `nft` for the NAT routers (apt-get install -y nftables); .ci/run installs it"
    );
    let mut ns = Netns::new();
    let inet = ns.add_lan("inet");
    let lan_a = ns.add_lan("siteA");
    let lan_b = ns.add_lan("siteB");
    let relay = ns.add_host("relay", &inet, "eth0", &format!("10.{net}.0.10/24"));
    for (router, lan, site, wan_ip) in [("routerA", &lan_a, 1, 1), ("routerB", &lan_b, 2, 2)] {
        let r = ns.add_host(router, &inet, "wan", &format!("10.{net}.0.{wan_ip}/24"));
        ns.plug(&r, lan, "lan", &format!("10.{net}.{site}.1/24"));
        let out = ns.exec(&r, "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]).output().expect("sysctl");
        assert!(out.status.success(), "cannot enable forwarding: {}", String::from_utf8_lossy(&out.stderr));
        let mut nft = ns.exec(&r, "nft");
        nft.args(["-f", "-"]).stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = nft.spawn().expect("run nft");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), router_rules(masquerade).as_bytes())
            .expect("write nft rules");
        let out = child.wait_with_output().expect("nft");
        assert!(out.status.success(), "nft in {r}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let node = ns.add_host("node", &lan_a, "eth0", &format!("10.{net}.1.10/24"));
    let client = ns.add_host("client", &lan_b, "eth0", &format!("10.{net}.2.10/24"));
    ns.ip(&["-n", &node, "route", "add", "default", "via", &format!("10.{net}.1.1")]);
    ns.ip(&["-n", &client, "route", "add", "default", "via", &format!("10.{net}.2.1")]);
    Sites { ns, inet, relay, node, client }
}

/// How the NATed node and the client learn of the relay.
#[derive(PartialEq)]
enum Meet {
    /// Its address is their `--bootstrap`.
    Bootstrap,
    /// They bootstrap from another node (no relay) on the relay's subnet: the NATed node
    /// meets the relay through Kademlia.
    Kademlia,
}

/// Starts the relay and the NATed node, runs `submit` from the other site on the NATed node
/// only, checks every result, and returns how the client reached the node (the summary's
/// `reach`) and the output of `nodes --json` from the client's site. `relay_limit`: also
/// checks that a relayed node is not sent files past `--relay-limit`.
fn run_behind_nat(
    net: u8,
    masquerade: &str,
    meet: Meet,
    relay_limit: bool,
) -> (String, Vec<serde_json::Value>, String) {
    let dir = tempdir();
    let mut s = sites(net, masquerade);
    let prefix = s.ns.prefix.clone();
    let prog = script(dir.path(), "job.sh", "echo \"square $(($1 * $1)) from $(hostname -I)\"");
    let reach;
    let listed;
    let nodes_log;
    {
        let boot = (meet == Meet::Kademlia).then(|| {
            let host = s.ns.add_host("boot", &s.inet, "eth0", &format!("10.{net}.0.20/24"));
            let node = Node::serve_in(&host, "boot", dir.path(), &["--no-mdns"]);
            let id = node.addr.rsplit('/').next().expect("peer id").to_string();
            (node, format!("/ip4/10.{net}.0.20/tcp/9700/p2p/{id}"))
        });
        let relay_extra: Vec<&str> = match &boot {
            Some((_, addr)) => vec!["--no-mdns", "--relay", "--bootstrap", addr],
            None => vec!["--no-mdns", "--relay"],
        };
        let relay = Node::serve_in(&s.relay, "relay", dir.path(), &relay_extra);
        let relay_id = relay.addr.rsplit('/').next().expect("peer id").to_string();
        let bootstrap = match &boot {
            Some((_, addr)) => addr.clone(),
            None => format!("/ip4/10.{net}.0.10/tcp/9700/p2p/{relay_id}"),
        };
        let node = Node::serve_in(&s.node, "behind-nat", dir.path(), &["--no-mdns", "--bootstrap", &bootstrap]);
        // Autonat finds the node unreachable (the dial-back is dropped by the NAT), and the
        // node takes a slot on the relay it knows from bootstrapping or met through Kademlia.
        assert!(
            node.proc.wait_stderr("reachable through a relay", Duration::from_secs(60)),
            "the NATed node never took a slot on the relay:\n{}",
            node.proc.stderr()
        );
        let mut cmd = s.ns.exec(&s.client, bin());
        cmd.arg("submit").arg(&prog);
        cmd.args(["--json", "--secret", "test-secret", "--no-mdns", "--bootstrap", &bootstrap]);
        cmd.args(["--nodes", "behind-nat", "--discover-timeout", "30"]);
        for i in 0..20 {
            cmd.args(["-a", &i.to_string()]);
        }
        cmd.env("RUST_LOG", "warn,libp2p_kad=error,dispy=debug,dispy_node=debug").env_remove("DISPY_SECRET");
        let out = run("submit", cmd, Duration::from_secs(120));
        out.expect_code(0);
        let lines = out.json_lines();
        let mut results: Vec<String> =
            lines.iter().filter_map(|j| j.get("stdout").and_then(|o| o.as_str()).map(str::to_string)).collect();
        results.sort();
        let mut expected: Vec<String> = (0..20).map(|i| format!("square {} from 10.{net}.1.10 \n", i * i)).collect();
        expected.sort();
        assert_eq!(results, expected, "{}\n{}", out.stdout, out.stderr);
        let summary = lines.iter().find_map(|j| j.get("summary")).expect("a summary line");
        let nodes = summary["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 1, "{summary}");
        assert_eq!(nodes[0]["node"]["name"], "behind-nat", "{summary}");
        reach = nodes[0]["reach"].as_str().expect("reach").to_string();

        let mut cmd = s.ns.exec(&s.client, bin());
        cmd.args(["nodes", "--json", "--secret", "test-secret", "--no-mdns", "--bootstrap", &bootstrap]);
        cmd.args(["--discover-timeout", "25"]).env_remove("DISPY_SECRET");
        cmd.env("RUST_LOG", "warn,dispy=debug,dispy_node=debug");
        let out = run("nodes", cmd, Duration::from_secs(60));
        out.expect_code(0);
        listed = out.json_lines();
        nodes_log = out.stderr;

        if relay_limit {
            // 2 MiB of files for a node behind the relay, with a 1 MiB allowance: not sent,
            // and the client says why.
            let big = dir.path().join("big.bin");
            std::fs::write(&big, vec![7u8; 2 << 20]).expect("write big.bin");
            let mut cmd = s.ns.exec(&s.client, bin());
            cmd.arg("submit").arg(&prog).arg("-f").arg(&big);
            cmd.args(["--secret", "test-secret", "--no-mdns", "--bootstrap", &bootstrap, "--nodes", "behind-nat"]);
            cmd.args(["--discover-timeout", "20", "--wait-nodes", "5", "--relay-limit", "1", "-a", "1"]);
            cmd.env_remove("DISPY_SECRET");
            let out = run("submit", cmd, Duration::from_secs(90));
            assert_ne!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
            assert!(
                out.stderr.contains("only through a relay") && out.stderr.contains("--relay-limit"),
                "the client should say why the node was not used:\n{}",
                out.stderr
            );
        }
        drop(node);
        drop(relay);
        drop(boot);
    }
    drop(s);
    assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
    (reach, listed, nodes_log)
}

fn reach_of<'a>(listed: &'a [serde_json::Value], name: &str) -> Option<&'a str> {
    listed.iter().find(|n| n["name"] == name).and_then(|n| n["reach"].as_str())
}

#[test]
fn a_node_behind_nat_is_hole_punched_when_both_nats_keep_ports() {
    let (reach, listed, log) = run_behind_nat(88, "masquerade", Meet::Bootstrap, false);
    assert_eq!(reach, "hole-punched", "the link should end up direct");
    assert_eq!(reach_of(&listed, "behind-nat"), Some("hole-punched"), "{listed:?}\n{log}");
    assert_eq!(reach_of(&listed, "relay"), Some("direct"), "{listed:?}");
}

#[test]
fn a_node_behind_nat_that_cannot_be_hole_punched_works_through_a_relay_met_through_kademlia() {
    // Port-randomizing NATs (endpoint-dependent mapping): no hole punch can succeed. Node
    // and client know only a node that does not relay.
    let (reach, listed, log) = run_behind_nat(89, "masquerade fully-random", Meet::Kademlia, true);
    assert_eq!(reach, "relayed");
    assert_eq!(reach_of(&listed, "behind-nat"), Some("relayed"), "{listed:?}\n{log}");
}
