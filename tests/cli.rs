//! Bad input: clear messages, exit 2, nothing contacted or written where it must not be.

use crate::util::*;
use std::time::Duration;

#[test]
fn missing_program_or_file_is_a_usage_error_before_any_node_is_contacted() {
    let dir = tempdir();
    let mut cmd = submit(&dir.path().join("no-such-program"));
    // An address nothing listens on: the error must come before any dial.
    cmd.args(["--peer", "/ip4/127.0.0.1/tcp/9", "-a", "1"]);
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(2);
    assert!(out.stderr.contains("no-such-program") && out.stderr.contains("No such file"), "{}", out.stderr);

    let prog = script(dir.path(), "p.sh", "true");
    let mut cmd = submit(&prog);
    cmd.args(["--peer", "/ip4/127.0.0.1/tcp/9", "-f"]).arg(dir.path().join("missing.dat"));
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(2);
    assert!(out.stderr.contains("missing.dat"), "{}", out.stderr);
    assert_eq!(out.stderr.matches("No such file or directory").count(), 1, "the cause once:\n{}", out.stderr);

    let mut cmd = submit(&prog);
    cmd.args(["--peer", "/ip4/127.0.0.1/tcp/9", "-a", "'unclosed"]);
    run("submit", cmd, Duration::from_secs(30)).expect_code(2);

    let mut cmd = submit(&prog);
    cmd.args(["--peer", "not-a-multiaddr"]);
    run("submit", cmd, Duration::from_secs(30)).expect_code(2);

    // A runtime error while the cluster starts: a message, not a crash.
    let mut cmd = submit(&prog);
    cmd.args(["--peer", "/ip4/127.0.0.1/tcp/9", "--journal"]).arg(dir.path().join("no-such-dir/run.journal"));
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(2);
    assert!(out.stderr.contains("no-such-dir") && !out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn a_file_over_the_nodes_limit_is_refused_before_its_bytes_are_sent() {
    let dir = tempdir();
    let prog = script(dir.path(), "p.sh", "echo should-not-run");
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 200_000]).unwrap();
    let mut o = NodeOpts::new("small");
    o.extra = vec!["--max-file-size".into(), "100k".into()];
    let node = Node::start(dir.path(), o);
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "--discover-timeout", "2", "-f"]).arg(dir.path().join("big.bin"));
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(2);
    assert!(out.stderr.contains("big.bin is 200000 bytes") && out.stderr.contains("102400 bytes"), "{}", out.stderr);
    let partial = std::fs::read_dir(node.dest.join("store/.partial")).unwrap().count();
    let stored = std::fs::read_dir(node.dest.join("store")).unwrap().count();
    assert_eq!((partial, stored), (0, 1), "no byte of the file was stored (only .partial exists)");
}

#[test]
fn keygen_writes_a_private_key_file_that_nodes_and_clients_accept() {
    let dir = tempdir();
    let key = dir.path().join("cluster.key");
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("keygen").arg(&key);
    let out = run("keygen", cmd, Duration::from_secs(10));
    out.expect_code(0);
    assert!(out.stdout.contains("fingerprint"), "{}", out.stdout);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let mut again = std::process::Command::new(bin());
    again.arg("keygen").arg(&key);
    run("keygen", again, Duration::from_secs(10)).expect_code(2);

    let mut o = NodeOpts::new("keyed");
    o.secret = None;
    o.extra = vec!["--secret-file".into(), key.display().to_string()];
    let node = Node::start(dir.path(), o);
    let prog = script(dir.path(), "p.sh", "echo keyed-ok");
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("submit").arg(&prog).args(["--no-mdns", "--peer", &node.addr, "--secret-file"]).arg(&key);
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(0);
    assert!(out.stdout.contains("keyed-ok"), "{}", out.stdout);

    std::fs::write(dir.path().join("bad.key"), "not a key").unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("submit")
        .arg(&prog)
        .args(["--no-mdns", "--peer", &node.addr, "--secret-file"])
        .arg(dir.path().join("bad.key"));
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(2);
    assert!(out.stderr.contains("bad.key") && out.stderr.contains("keygen"), "{}", out.stderr);
}

#[test]
fn serve_refuses_bad_options_with_a_clear_message() {
    let dir = tempdir();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["serve", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--cpus", "100000", "--dest-path"])
        .arg(dir.path());
    let out = run("serve", cmd, Duration::from_secs(10));
    out.expect_code(2);
    assert!(out.stderr.contains("--cpus 100000"), "{}", out.stderr);

    let mut cmd = std::process::Command::new(bin());
    cmd.args(["serve", "--no-mdns", "--max-file-size", "12Q"]);
    let out = run("serve", cmd, Duration::from_secs(10));
    out.expect_code(2);
    assert!(out.stderr.contains("size suffix"), "{}", out.stderr);

    // Two nodes on one dest path would delete each other's job directories.
    let first = Node::start(dir.path(), NodeOpts::new("one"));
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["serve", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--secret", "s", "--dest-path"])
        .arg(&first.dest);
    let out = run("serve", cmd, Duration::from_secs(10));
    out.expect_code(2);
    assert!(out.stderr.contains("in use by another dispy-peer node"), "{}", out.stderr);
}

#[test]
fn serve_stops_on_sigterm_killing_jobs_and_removing_job_dirs() {
    let dir = tempdir();
    let prog = script(dir.path(), "sleepy.sh", "echo $$ > \"$1\"; exec sleep 60");
    let node = Node::start(dir.path(), NodeOpts::new("s"));
    let pidfile = dir.path().join("job.pid");
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "-a"]).arg(&pidfile);
    let client = Proc::spawn("submit", cmd);
    let job_pid = wait_pids(&[pidfile], Duration::from_secs(20))[0];
    assert!(alive(job_pid));
    assert!(!node.job_dirs().is_empty());
    // The first SIGTERM drains: the running job goes on...
    signal(node.proc.pid(), "TERM");
    assert!(node.proc.wait_stderr("draining", Duration::from_secs(5)), "{}", node.proc.stderr());
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(job_pid), "a drain lets running jobs finish");
    // ...the second kills it.
    let mut node = node;
    assert_eq!(node.stop(), Some(0), "{}", node.proc.stderr());
    assert!(!alive(job_pid), "the job outlived its node");
    assert!(!node.dest.join("jobs").exists(), "job directories left behind");
    drop(client);
}
