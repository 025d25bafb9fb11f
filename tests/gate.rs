//! Who gets in: a node that admits clients by peer id (`serve --allow-peer`), and a
//! secret that jobs cannot read from their node's environment.

use crate::util::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `dispy-peer identity FILE`: the peer id, made on first use.
fn identity(file: &Path) -> String {
    let mut cmd = Command::new(bin());
    cmd.arg("identity").arg(file);
    let out = run("identity", cmd, Duration::from_secs(20));
    out.expect_code(0);
    out.stdout.trim().to_string()
}

#[test]
fn a_node_with_an_allow_list_serves_only_those_clients() {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", "echo ran $1");
    let (alice, bob) = (dir.path().join("alice.key"), dir.path().join("bob.key"));
    let alice_id = identity(&alice);
    assert_eq!(identity(&alice), alice_id, "an identity file keeps its peer id");
    let bob_id = identity(&bob);
    assert_ne!(alice_id, bob_id);

    let mut o = NodeOpts::new("gated");
    o.extra = vec!["--allow-peer".into(), alice_id.clone()];
    let node = Node::start(dir.path(), o);

    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "-a", "1", "-a", "2", "--identity"]).arg(&alice);
    let out = run("submit (alice)", cmd, Duration::from_secs(60));
    out.expect_code(0);
    assert!(out.stdout.contains("ran 1") && out.stdout.contains("ran 2"), "{}", out.stdout);
    // `nodes` with the same identity sees the node; with another, it is not listed.
    for (who, key, listed) in [("alice", &alice, true), ("bob", &bob, false)] {
        let mut cmd = Command::new(bin());
        cmd.args(["nodes", "--no-mdns", "--secret", "test-secret", "--discover-timeout", "2", "--peer", &node.addr]);
        cmd.arg("--identity").arg(key).env_remove("DISPY_SECRET");
        let out = run(&format!("nodes ({who})"), cmd, Duration::from_secs(30));
        assert_eq!(out.stdout.contains("gated"), listed, "{who}:\n{}\n{}", out.stdout, out.stderr);
    }

    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "--discover-timeout", "3", "-a", "1", "--identity"]).arg(&bob);
    let out = run("submit (bob)", cmd, Duration::from_secs(60));
    out.expect_code(2);
    assert!(!out.stdout.contains("ran"), "bob's job ran:\n{}", out.stdout);
    assert!(
        out.stderr.contains(&bob_id) && out.stderr.contains("--allow-peer"),
        "the refusal names bob's peer id and the option:\n{}",
        out.stderr
    );
    assert!(node.proc.stderr().contains("not on this node's list of allowed peers"), "{}", node.proc.stderr());
}

#[test]
fn recover_from_an_allow_listed_node_uses_the_runs_identity() {
    let dir = tempdir();
    let prog =
        script(dir.path(), "job.sh", r#"case "$1" in quick) echo quick;; *) sleep 1.5; echo "$1 finished";; esac"#);
    let (alice, bob) = (dir.path().join("alice.key"), dir.path().join("bob.key"));
    let alice_id = identity(&alice);
    identity(&bob);
    let mut o = NodeOpts::new("gated");
    o.extra = vec!["--allow-peer".into(), alice_id, "--zombie-interval".into(), "2".into()];
    let node = Node::start(dir.path(), o);
    let journal = dir.path().join("run.journal");
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "-a", "quick", "-a", "slow", "--identity"]).arg(&alice);
    cmd.arg("--journal").arg(&journal);
    let client = Proc::spawn("submit", cmd);
    assert!(client.wait_stdout("quick", Duration::from_secs(20)), "{}", client.stdout());
    signal(client.pid(), "KILL");
    let _ = client.wait(Duration::from_secs(10));
    assert!(node.proc.wait_stderr("keeping undelivered results", Duration::from_secs(15)), "{}", node.proc.stderr());
    let recover = |key: &std::path::Path| {
        let mut cmd = Command::new(bin());
        cmd.arg("recover").arg(&journal).args(["--secret", "test-secret", "--wait", "3", "--identity"]).arg(key);
        cmd.env_remove("DISPY_SECRET");
        run("recover", cmd, Duration::from_secs(30))
    };
    let out = recover(&bob);
    assert!(!out.stdout.contains("slow finished"), "another identity got the results:\n{}", out.stdout);
    let out = recover(&alice);
    out.expect_code(0);
    assert!(out.stdout.contains("slow finished"), "{}\n{}", out.stdout, out.stderr);
}

#[test]
fn an_identity_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let key = dir.path().join("id.key");
    identity(&key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("identity").arg(&key);
    let out = run("identity", cmd, Duration::from_secs(20));
    out.expect_code(2);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
}

/// A job that prints its environment and its parent's initial one.
fn peeking_job(dir: &Path) -> std::path::PathBuf {
    script(dir, "peek.sh", "env; echo; tr '\\0' '\\n' < /proc/$PPID/environ; echo peeked")
}

const SECRET: &str = "env-secret-7f3a";

#[test]
fn jobs_cannot_read_the_secret_from_their_node() {
    let dir = tempdir();
    let prog = peeking_job(dir.path());
    let dest = dir.path().join("node");
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--name", "env", "--cpus", "1", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .args(["--drain-timeout", "1", "--dest-path"])
        .arg(&dest)
        .env("DISPY_SECRET", SECRET)
        .env("RUST_LOG", "warn,libp2p_kad=error,dispy=debug,dispy_node=debug");
    let node = Proc::spawn("node env", cmd);
    let addr = node.wait_line("listening ", Duration::from_secs(20)).trim_start_matches("listening ").to_string();

    let mut cmd = Command::new(bin());
    cmd.arg("submit").arg(&prog).args(["--no-mdns", "--peer", &addr]);
    cmd.env("DISPY_SECRET", SECRET).env("RUST_LOG", "warn,libp2p_kad=error");
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    assert!(out.stdout.contains("peeked"), "the job ran and read /proc:\n{}", out.stdout);
    assert!(!out.stdout.contains(SECRET), "a job read the secret:\n{}", out.stdout);
    node.terminate(Duration::from_secs(10));
}

#[test]
fn jobs_of_the_embedded_node_cannot_read_the_secret_from_the_client() {
    let dir = tempdir();
    let prog = peeking_job(dir.path());
    let mut cmd = Command::new(bin());
    cmd.arg("submit").arg(&prog).args(["--no-mdns", "--local"]);
    cmd.env("DISPY_SECRET", SECRET).env("RUST_LOG", "warn,libp2p_kad=error");
    let out = run("submit --local", cmd, Duration::from_secs(60));
    out.expect_code(0);
    assert!(out.stdout.contains("peeked"), "{}", out.stdout);
    assert!(!out.stdout.contains(SECRET), "a job read the secret:\n{}", out.stdout);
}

#[test]
fn a_secret_on_the_command_line_or_a_short_one_is_warned_about() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("argv"));
    assert!(node.proc.wait_stderr("visible to every user", Duration::from_secs(5)), "{}", node.proc.stderr());
    // "test-secret" is short enough to guess offline from captured traffic.
    assert!(node.proc.stderr().contains("short passphrase"), "{}", node.proc.stderr());
}
