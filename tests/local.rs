//! The embedded node: `submit` works on a machine with no node at all. These run inside a
//! fresh network namespace with only loopback (`unshare -n`), so the default mDNS stays
//! off the machine's own network.

use crate::util::*;
use std::process::Command;
use std::time::Duration;

/// `program args` in a network namespace of its own with only loopback up.
fn isolated_program(program: &std::path::Path, args: &[&str]) -> Command {
    require_netns();
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"]).arg(program);
    cmd.args(args);
    cmd.env("RUST_LOG", "warn,libp2p_kad=error").env_remove("DISPY_SECRET");
    cmd
}

fn isolated(args: &[&str]) -> Command {
    isolated_program(std::path::Path::new(bin()), args)
}

#[test]
fn submit_local_runs_jobs_with_no_node_anywhere() {
    let dir = tempdir();
    let prog = script(dir.path(), "sq.sh", "echo $(($1 * $1))");
    let p = prog.to_str().unwrap();
    let out =
        run("submit --local", isolated(&["submit", p, "--local", "-a", "7", "-a", "12"]), Duration::from_secs(60));
    out.expect_code(0);
    assert!(out.stdout.contains("\n49\n") && out.stdout.contains("\n144\n"), "{}", out.stdout);
    assert!(out.stdout.contains("(local)"), "{}", out.stdout);
}

#[test]
fn submit_falls_back_to_a_local_node_and_says_so() {
    let dir = tempdir();
    let prog = script(dir.path(), "hi.sh", "echo hi $1");
    let p = prog.to_str().unwrap();
    let out = run(
        "submit (fallback)",
        isolated(&["submit", p, "--discover-timeout", "1", "-a", "there"]),
        Duration::from_secs(60),
    );
    out.expect_code(0);
    assert!(out.stdout.contains("hi there"), "{}", out.stdout);
    assert!(out.stderr.contains("running the jobs on a local node"), "{}", out.stderr);
}

#[test]
fn with_nodes_named_there_is_no_fallback_but_a_clear_error() {
    let dir = tempdir();
    let prog = script(dir.path(), "hi.sh", "echo hi");
    let p = prog.to_str().unwrap();
    let out = run(
        "submit (named)",
        isolated(&["submit", p, "--discover-timeout", "1", "--peer", "/ip4/127.0.0.1/tcp/9"]),
        Duration::from_secs(60),
    );
    out.expect_code(2);
    assert!(out.stderr.contains("no usable dispy node found within 1.0 s"), "{}", out.stderr);
    assert!(out.stderr.contains("/ip4/127.0.0.1/tcp/9"), "says what was searched: {}", out.stderr);
}

/// The README's main command on a machine with no node: `examples/divisors` (a function
/// cluster with default settings: mDNS on, so run in a namespace of its own) finds nothing,
/// says so, starts a local node and prints every job's result and the stats.
#[test]
fn the_readmes_main_command_runs_on_a_machine_with_no_node() {
    let out = run("divisors", isolated_program(&example("divisors"), &[]), Duration::from_secs(120));
    out.expect_code(0);
    assert!(out.stderr.contains("running the jobs on a local node"), "{}", out.stderr);
    assert!(out.stdout.contains("10000000000097 [811]\n"), "{}", out.stdout);
    assert!(out.stdout.contains("50 jobs on 1 node in "), "{}", out.stdout);
    assert!(!out.stderr.contains('\x1b'), "colour codes in logs that are not on a terminal:\n{}", out.stderr);
}

/// A client running its jobs on the embedded node is killed (SIGKILL: no clean shutdown):
/// its executable, started beside it as the reaper, kills the jobs and deletes the node's
/// folder.
#[test]
fn the_local_nodes_jobs_and_files_die_with_a_killed_client() {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", r#"echo $$ > "$1"; sleep 60"#);
    let pidfiles = pid_files(dir.path(), 2);
    let mut cmd = Command::new(bin());
    cmd.arg("submit").arg(&prog).args(["--local", "--no-mdns"]);
    for p in &pidfiles {
        cmd.arg("-a").arg(p);
    }
    let client = Proc::spawn("submit --local", cmd);
    let pids = wait_pids(&pidfiles, Duration::from_secs(30));
    let dest_prefix = format!("dispy-peer-local-{}-", client.pid());
    let dests = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&dest_prefix)))
            .collect()
    };
    assert_eq!(dests().len(), 1, "the local node's folder");
    signal(client.pid(), "KILL");
    let _ = client.wait(Duration::from_secs(10));
    let t = std::time::Instant::now();
    while pids.iter().any(|p| alive(*p)) || !dests().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "jobs alive: {:?}, folders left: {:?}", pids, dests());
        std::thread::sleep(Duration::from_millis(50));
    }
}
