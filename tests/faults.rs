//! Losing a node or a client mid-run: nothing waits forever, nothing is left behind.

use crate::util::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Submits `n` jobs that record their pid and sleep a minute on `node`; returns the client
/// and the jobs' pids once all have started.
fn hold_jobs(dir: &std::path::Path, node: &Node, n: usize) -> (Proc, Vec<u32>) {
    let prog = script(dir, "hold.sh", "echo $$ > \"$1\"; sleep 60");
    let pidfiles = pid_files(dir, n);
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr]);
    for p in &pidfiles {
        cmd.arg("-a").arg(p);
    }
    let client = Proc::spawn("submit", cmd);
    let pids = wait_pids(&pidfiles, Duration::from_secs(20));
    (client, pids)
}

fn lose_a_node(reentrant: bool) -> (Finished, usize) {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", "sleep 0.3; echo done $1");
    let mut a = NodeOpts::new("stays");
    a.cpus = 1;
    let mut b = NodeOpts::new("dies");
    b.cpus = 1;
    let stays = Node::start(dir.path(), a);
    let dies = Node::start(dir.path(), b);
    let mut cmd = submit(&prog);
    cmd.args(["--json", "--peer", &stays.addr, "--peer", &dies.addr]);
    if reentrant {
        cmd.arg("--reentrant");
    }
    for i in 0..20 {
        cmd.args(["-a", &i.to_string()]);
    }
    let client = Proc::spawn("submit", cmd);
    // Both nodes hold running and queued jobs by now.
    std::thread::sleep(Duration::from_millis(1200));
    signal(dies.proc.pid(), "KILL");
    let out = client.wait(Duration::from_secs(60));
    let ids: Vec<u64> = out.json_lines().iter().filter_map(|j| j.get("job").and_then(|v| v.as_u64())).collect();
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!((ids.len(), unique.len()), (20, 20), "each job reported exactly once:\n{}", out.stdout);
    let abandoned = out.json_lines().iter().filter(|j| j["status"] == "abandoned").count();
    drop(stays);
    (out, abandoned)
}

#[test]
fn a_lost_nodes_jobs_are_abandoned_with_the_reason() {
    let (out, abandoned) = lose_a_node(false);
    out.expect_code(1);
    assert!(abandoned > 0, "{}", out.stdout);
    assert!(out.stdout.contains("abandoned: node dies was lost"), "{}", out.stdout);
}

#[test]
fn a_reentrant_cluster_reruns_a_lost_nodes_jobs_elsewhere() {
    let (out, abandoned) = lose_a_node(true);
    out.expect_code(0);
    assert_eq!(abandoned, 0);
    assert!(out.json_lines().iter().filter(|j| j.get("job").is_some()).all(|j| j["exit_code"] == 0), "{}", out.stdout);
}

#[test]
fn a_lost_client_has_its_jobs_killed_and_files_removed() {
    let dir = tempdir();
    let mut o = NodeOpts::new("n");
    o.extra = vec!["--zombie-interval".into(), "1".into()];
    let node = Node::start(dir.path(), o);
    let (client, pids) = hold_jobs(dir.path(), &node, 2);
    signal(client.pid(), "KILL");
    let _ = client.wait(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while (pids.iter().any(|p| alive(*p)) || !node.job_dirs().is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pids.iter().all(|p| !alive(*p)), "a job outlived its client");
    assert!(node.job_dirs().is_empty(), "job directories left: {:?}", node.job_dirs());
    assert!(node.proc.stderr().contains("client has gone"), "{}", node.proc.stderr());
    std::thread::sleep(Duration::from_millis(300));
    let stored: Vec<_> = std::fs::read_dir(node.dest.join("store")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(stored, vec![std::ffi::OsString::from(".partial")], "the crashed client's staged files are gone");
    // Its CPUs serve the next client.
    let next = script(dir.path(), "next.sh", "echo next");
    let mut cmd = submit(&next);
    cmd.args(["--peer", &node.addr, "-a", "1", "-a", "2"]);
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(0);
    assert_eq!(out.stdout.matches("next").count(), 2, "{}", out.stdout);
}

#[test]
fn a_node_killed_with_sigkill_takes_its_jobs_with_it() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("doomed"));
    let (client, pids) = hold_jobs(dir.path(), &node, 2);
    signal(node.proc.pid(), "KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pids.iter().all(|p| !alive(*p)), "a job outlived its SIGKILLed node");
    let out = client.wait(Duration::from_secs(30));
    out.expect_code(1);
    assert!(out.stdout.contains("abandoned: node doomed was lost"), "{}", out.stdout);
}

#[test]
fn a_poison_job_stops_after_max_retries_and_the_rest_completes() {
    let dir = tempdir();
    // The poison job kills the node running it (its parent process), every time.
    let prog =
        script(dir.path(), "job.sh", r#"if [ "$1" = poison ]; then kill -9 $PPID; sleep 5; fi; sleep 0.2; echo ok $1"#);
    let nodes: Vec<Node> = (1..=5)
        .map(|i| {
            let mut o = NodeOpts::new(&format!("n{i}"));
            o.cpus = 1;
            Node::start(dir.path(), o)
        })
        .collect();
    let mut cmd = submit(&prog);
    cmd.args(["--json", "--reentrant", "--max-retries", "3", "-a", "poison"]);
    for n in &nodes {
        cmd.args(["--peer", &n.addr]);
    }
    for i in 1..12 {
        cmd.args(["-a", &i.to_string()]);
    }
    let out = run("submit", cmd, Duration::from_secs(120));
    out.expect_code(1);
    let jobs: Vec<_> = out.json_lines().into_iter().filter(|j| j.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 12, "{}", out.stdout);
    let poison = jobs.iter().find(|j| j["job"] == 0).unwrap();
    assert_eq!(poison["status"], "failed", "{poison}");
    assert!(poison["error"].as_str().unwrap().contains("running on 3 nodes that all died"), "{poison}");
    assert!(jobs.iter().filter(|j| j["job"] != 0).all(|j| j["exit_code"] == 0), "{}", out.stdout);
    let mut nodes = nodes;
    let dead = nodes.iter_mut().filter_map(|n| n.proc.child.try_wait().ok().flatten()).count();
    assert_eq!(dead, 3, "exactly max_retries nodes were killed");
}

#[test]
fn ctrl_c_cancels_the_remote_jobs_prints_what_ended_and_exits_1() {
    let dir = tempdir();
    let prog =
        script(dir.path(), "job.sh", r#"if [ "$1" = quick ]; then echo quick; exit 0; fi; echo $$ > "$1"; sleep 60"#);
    let node = Node::start(dir.path(), NodeOpts::new("n"));
    let pidfiles = pid_files(dir.path(), 2);
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "-a", "quick"]);
    for p in &pidfiles {
        cmd.arg("-a").arg(p);
    }
    for i in 0..5 {
        cmd.args(["-a", &format!("queued-{i}")]);
    }
    let client = Proc::spawn("submit", cmd);
    let pids = wait_pids(&pidfiles, Duration::from_secs(20));
    let t = Instant::now();
    signal(client.pid(), "INT");
    let out = client.wait(Duration::from_secs(20));
    out.expect_code(1);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert!(out.stderr.contains("interrupted; cancelling"), "{}", out.stderr);
    assert!(out.stdout.contains("[quick] on n (127.0.0.1): exit 0"), "what finished is printed: {}", out.stdout);
    assert_eq!(out.stdout.matches(": cancelled in").count(), 7, "{}", out.stdout);
    std::thread::sleep(Duration::from_millis(200));
    assert!(pids.iter().all(|p| !alive(*p)), "a cancelled job still runs");
}

/// A second Ctrl-C leaves at once, even while the first waits on a node that does not
/// answer (here: stopped); the node, once it runs again, kills the job of its gone client.
#[test]
fn a_second_ctrl_c_leaves_at_once_even_when_the_node_hangs() {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", r#"echo $$ > "$1"; sleep 60"#);
    let node = Node::start(dir.path(), NodeOpts::new("frozen"));
    let pidfiles = pid_files(dir.path(), 1);
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "-a"]).arg(&pidfiles[0]);
    let client = Proc::spawn("submit", cmd);
    let pids = wait_pids(&pidfiles, Duration::from_secs(20));
    signal(node.proc.pid(), "STOP");
    signal(client.pid(), "INT");
    assert!(client.wait_stderr("interrupted; cancelling", Duration::from_secs(10)), "{}", client.stderr());
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    signal(client.pid(), "INT");
    let out = client.wait(Duration::from_secs(10));
    signal(node.proc.pid(), "CONT");
    out.expect_code(1);
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert!(out.stderr.contains("interrupted again; leaving without waiting"), "{}", out.stderr);
    drop(node);
    assert!(!alive(pids[0]), "the job outlived its node");
}

#[test]
fn a_timed_out_job_leaves_nothing_of_its_process_tree() {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", r#"sleep 300 & echo $! > "$1"; sleep 300"#);
    let node = Node::start(dir.path(), NodeOpts::new("t"));
    let pidfile = dir.path().join("bg.pid");
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "--timeout", "1", "-a"]).arg(&pidfile);
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(1);
    assert!(out.stdout.contains("timed out"), "{}", out.stdout);
    let bg: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(!alive(bg), "the job's background child survived its timeout");
}

#[test]
fn a_draining_node_finishes_its_running_jobs_and_gives_back_the_queued_ones() {
    let dir = tempdir();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let prog = script(dir.path(), "job.sh", &format!("echo $PPID > {}/$1; sleep 1; echo done $1", marks.display()));
    let mut a = NodeOpts::new("drains");
    a.cpus = 1;
    a.extra = vec!["--drain-timeout".into(), "30".into()];
    let drains = Node::start(dir.path(), a);
    let mut b = NodeOpts::new("stays");
    b.cpus = 1;
    let stays = Node::start(dir.path(), b);
    let mut cmd = submit(&prog);
    cmd.args(["--json", "--peer", &drains.addr, "--peer", &stays.addr]);
    for i in 0..8 {
        cmd.args(["-a", &i.to_string()]);
    }
    let client = Proc::spawn("submit", cmd);
    // Signal once a job runs on the draining node (the job records its node's pid).
    let pid = drains.proc.pid().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let running_there = || {
        std::fs::read_dir(&marks)
            .unwrap()
            .flatten()
            .any(|e| std::fs::read_to_string(e.path()).unwrap_or_default().trim() == pid)
    };
    while !running_there() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(drains.proc.pid(), "TERM");
    let out = client.wait(Duration::from_secs(60));
    out.expect_code(0);
    let jobs: Vec<_> = out.json_lines().into_iter().filter(|j| j.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 8);
    let on_drains = jobs.iter().filter(|j| j["node"] == "drains").count();
    assert_eq!(on_drains, 1, "only the job running at the signal finished there: {}", out.stdout);
    let mut drains = drains;
    let deadline = Instant::now() + Duration::from_secs(10);
    while drains.proc.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = drains.proc.child.try_wait().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "the drained node exits 0 by itself");
    drop(stays);
}

#[test]
fn serve_n_exits_after_n_clusters() {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", "echo hi");
    let mut o = NodeOpts::new("once");
    o.extra = vec!["--serve".into(), "1".into()];
    let node = Node::start(dir.path(), o);
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr]);
    run("submit", cmd, Duration::from_secs(30)).expect_code(0);
    let mut node = node;
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.proc.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.proc.child.try_wait().unwrap().and_then(|s| s.code()), Some(0), "{}", node.proc.stderr());
}

#[test]
fn four_nodes_400_reentrant_jobs_and_one_node_killed_lose_nothing() {
    let dir = tempdir();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    // Each job records its process id and its node's, to check what survived the node.
    let prog = script(
        dir.path(),
        "job.sh",
        &format!("echo \"$$ $PPID\" > {}/$1.$$; sleep 0.05; echo done $1", marks.display()),
    );
    let nodes: Vec<Node> = (1..=4).map(|i| Node::start(dir.path(), NodeOpts::new(&format!("q{i}")))).collect();
    let victim = nodes[1].proc.pid();
    let mut cmd = submit(&prog);
    cmd.args(["--json", "--reentrant"]);
    for n in &nodes {
        cmd.args(["--peer", &n.addr]);
    }
    for i in 0..400 {
        cmd.args(["-a", &i.to_string()]);
    }
    let client = Proc::spawn("submit", cmd);
    // Kill the victim once it has run a few jobs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ran_on_victim = || {
        std::fs::read_dir(&marks)
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path()).unwrap_or_default().split_whitespace().nth(1)
                    == Some(&victim.to_string())
            })
            .count()
    };
    while ran_on_victim() < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(victim, "KILL");
    let out = client.wait(Duration::from_secs(120));
    out.expect_code(0);
    let jobs: Vec<_> = out.json_lines().into_iter().filter(|j| j.get("job").is_some()).collect();
    let ids: HashSet<u64> = jobs.iter().map(|j| j["job"].as_u64().unwrap()).collect();
    assert_eq!((jobs.len(), ids.len()), (400, 400), "every result exactly once");
    assert!(jobs.iter().all(|j| j["exit_code"] == 0));
    assert!(jobs.iter().all(|j| j["node"] != "q2" || j["exit_code"] == 0));
    // Nothing the dead node started is still running.
    for e in std::fs::read_dir(&marks).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut it = text.split_whitespace();
        let (pid, ppid) = (it.next().unwrap_or("0"), it.next().unwrap_or("0"));
        if ppid == victim.to_string() {
            assert!(!alive(pid.parse().unwrap()), "job process {pid} outlived its node");
        }
    }
}

#[test]
fn after_a_client_crash_recover_collects_what_finished_and_lists_what_is_lost() {
    let dir = tempdir();
    let prog = script(
        dir.path(),
        "job.sh",
        r#"case "$1" in quick) echo quick;; slow*) sleep 1.5; echo "$1 finished";; forever) sleep 60;; esac"#,
    );
    let mut o = NodeOpts::new("keeper");
    o.extra = vec!["--zombie-interval".into(), "2".into()];
    let node = Node::start(dir.path(), o);
    let journal = dir.path().join("run.journal");
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "--journal"]).arg(&journal);
    cmd.args(["-a", "quick", "-a", "slow-1", "-a", "slow-2", "-a", "forever"]);
    let client = Proc::spawn("submit", cmd);
    assert!(client.wait_stdout("quick", Duration::from_secs(20)), "{}", client.stdout());
    signal(client.pid(), "KILL");
    let _ = client.wait(Duration::from_secs(10));
    // The slow jobs finish after the crash; the zombie interval ends and keeps their results.
    assert!(node.proc.wait_stderr("keeping undelivered results", Duration::from_secs(15)), "{}", node.proc.stderr());
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("recover").arg(&journal).args(["--secret", "test-secret"]);
    let out = run("recover", cmd, Duration::from_secs(30));
    out.expect_code(1);
    assert!(out.stdout.contains("slow-1 finished") && out.stdout.contains("slow-2 finished"), "{}", out.stdout);
    assert!(!out.stdout.contains("\nquick\n"), "a job reported before the crash is not reported again: {}", out.stdout);
    assert!(out.stdout.contains("job 3 [forever]: lost"), "{}", out.stdout);
    // Collected results are gone from the node.
    let mut again = std::process::Command::new(bin());
    again.arg("recover").arg(&journal).args(["--secret", "test-secret"]);
    let out = run("recover", again, Duration::from_secs(30));
    assert!(!out.stdout.contains("slow-1 finished"), "{}", out.stdout);
}

#[test]
fn a_restarted_node_rejoins_the_running_cluster_as_a_fresh_node() {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", "sleep 0.2; echo done $1");
    let listen = free_loopback_addr();
    let mut o = NodeOpts::new("phoenix");
    o.listen = listen.clone();
    o.cpus = 1;
    let first = Node::start(dir.path(), o);
    let mut o = NodeOpts::new("steady");
    o.cpus = 1;
    let steady = Node::start(dir.path(), o);
    let mut cmd = submit(&prog);
    cmd.args(["--json", "--reentrant", "--peer", &listen, "--peer", &steady.addr]);
    for i in 0..40 {
        cmd.args(["-a", &i.to_string()]);
    }
    let client = Proc::spawn("submit", cmd);
    assert!(first.proc.wait_stderr("cluster reserved", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(500));
    signal(first.proc.pid(), "KILL");
    drop(first);
    let mut o = NodeOpts::new("phoenix");
    o.listen = listen;
    o.cpus = 1;
    let second = Node::start(dir.path(), o);
    let out = client.wait(Duration::from_secs(60));
    out.expect_code(0);
    assert!(
        second.proc.stderr().contains("cluster reserved"),
        "the restarted node was not used:\n{}",
        second.proc.stderr()
    );
    let jobs: Vec<_> = out.json_lines().into_iter().filter(|j| j.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 40);
}

#[test]
fn results_in_delivery_survive_a_node_crash_and_are_recovered_after_its_restart() {
    let dir = tempdir();
    // Each job says it started, then runs a second: time to freeze the client before either
    // result reaches it.
    let marks = dir.path().join("started");
    std::fs::create_dir(&marks).unwrap();
    let body = format!("touch '{}'/\"$1\"; sleep 1; echo \"result $1\"", marks.display());
    let prog = script(dir.path(), "job.sh", &body);
    let listen = free_loopback_addr();
    let mut o = NodeOpts::new("crashy");
    o.listen = listen.clone();
    let first = Node::start(dir.path(), o);
    let journal = dir.path().join("j");
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &listen, "-a", "a", "-a", "b", "--journal"]).arg(&journal);
    let client = Proc::spawn("submit", cmd);
    let both_started = || marks.join("a").exists() && marks.join("b").exists();
    assert!(wait_until(Duration::from_secs(30), both_started), "the two jobs never started");
    // The client freezes: it cannot acknowledge, so the results stay in delivery...
    signal(client.pid(), "STOP");
    let results = first.dest.join("results");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Both results on disk: the one in delivery, and the one waiting behind it.
    let batch_on_disk = || {
        std::fs::read_dir(&results)
            .into_iter()
            .flatten()
            .flatten()
            .any(|c| std::fs::read_dir(c.path()).into_iter().flatten().count() >= 2)
    };
    while !batch_on_disk() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(batch_on_disk(), "results in delivery are on disk");
    // ...when the node crashes. The client dies too; the node comes back.
    let _second = crash_and_restart(first, client, dir.path(), "crashy", listen);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("recover").arg(&journal).args(["--secret", "test-secret"]);
    let out = run("recover", cmd, Duration::from_secs(30));
    out.expect_code(0);
    assert!(out.stdout.contains("result a") && out.stdout.contains("result b"), "{}", out.stdout);
    assert!(out.stdout.contains("0 jobs lost"), "{}", out.stdout);
}
