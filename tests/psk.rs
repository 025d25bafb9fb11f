//! The secret gate: a peer with another secret never gets a message through.

use crate::util::*;
use std::time::Duration;

const HANDSHAKE: &str = "failed the network-key handshake";

#[test]
fn a_node_with_another_secret_never_receives_a_job() {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", "echo ran $1");
    let good = Node::start(dir.path(), NodeOpts::new("good"));
    let mut o = NodeOpts::new("stranger");
    o.secret = Some("another-secret".into());
    let stranger = Node::start(dir.path(), o);

    let mut cmd = submit(&prog);
    cmd.args(["--json", "--peer", &good.addr, "--peer", &stranger.addr]);
    for i in 0..20 {
        cmd.args(["-a", &i.to_string()]);
    }
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    let jobs = out.json_lines();
    assert!(jobs.iter().filter(|j| j.get("job").is_some()).all(|j| j["node"] == "good"), "{}", out.stdout);

    let mut cmd = submit(&prog);
    cmd.args(["--peer", &stranger.addr, "--discover-timeout", "6", "-a", "x"]);
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(2);
    assert!(out.stderr.contains("no usable dispy node found"), "{}", out.stderr);
    assert!(out.stderr.contains("different secret"), "the error names the likely cause:\n{}", out.stderr);
    assert!(!out.stdout.contains("ran x"), "the job ran:\n{}", out.stdout);
    assert!(out.stderr.contains(HANDSHAKE) && out.stderr.contains("fingerprint"), "client side:\n{}", out.stderr);
    assert_eq!(out.stderr.matches(HANDSHAKE).count(), 1, "logged once, no retry storm:\n{}", out.stderr);

    assert!(stranger.proc.wait_stderr(HANDSHAKE, Duration::from_secs(5)), "node side:\n{}", stranger.proc.stderr());
    let err = stranger.proc.stderr();
    assert!(err.contains("fingerprint"), "{err}");
    assert!(!err.contains("cluster reserved"), "the stranger took a cluster:\n{err}");
    // One clear line per remote peer, not one per retry.
    assert!(err.matches(HANDSHAKE).count() <= 2, "retry storm:\n{err}");
    assert!(!err.contains("another-secret") && !err.contains("test-secret"), "a secret was logged");
}

#[test]
fn a_node_without_secret_warns_loudly() {
    let dir = tempdir();
    let mut o = NodeOpts::new("open");
    o.secret = None;
    let node = Node::start(dir.path(), o);
    assert!(node.proc.wait_stderr("NO SECRET SET", Duration::from_secs(5)), "{}", node.proc.stderr());
}
