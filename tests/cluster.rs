//! Jobs across several real nodes on 127.0.0.1.

use crate::util::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const JOB: &str = r#"echo "job $1 $2"; sha256sum data.bin | cut -c1-16; test -x ./job.sh && echo exec-ok"#;

#[test]
fn three_nodes_run_200_jobs_and_a_second_submit_sends_no_bytes() {
    let dir = tempdir();
    let data: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(dir.path().join("data.bin"), &data).unwrap();
    let expect_hash = {
        let out = std::process::Command::new("sha256sum").arg(dir.path().join("data.bin")).output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..16].to_string()
    };
    let prog = script(dir.path(), "job.sh", JOB);
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::start(dir.path(), NodeOpts::new(n))).collect();

    let run_once = |jobs: u32| {
        let mut cmd = submit(&prog);
        cmd.arg("-f").arg(dir.path().join("data.bin")).arg("--json");
        for n in &nodes {
            cmd.args(["--peer", &n.addr]);
        }
        for i in 0..jobs {
            cmd.args(["-a", &format!("{i} 'two words'")]);
        }
        run("submit", cmd, Duration::from_secs(120))
    };

    let out = run_once(200);
    out.expect_code(0);
    let lines = out.json_lines();
    let (jobs, summary): (Vec<_>, Vec<_>) = lines.iter().partition(|v| v.get("job").is_some());
    assert_eq!(jobs.len(), 200, "{}", out.stdout);
    let mut seen = HashSet::new();
    let mut per_node: HashMap<String, u64> = HashMap::new();
    for j in &jobs {
        let id = j["job"].as_u64().unwrap();
        assert!(seen.insert(id), "job {id} reported twice");
        assert_eq!(j["exit_code"], 0, "{j}");
        assert_eq!(j["stdout"].as_str().unwrap(), format!("job {id} two words\n{expect_hash}\nexec-ok\n"), "{j}");
        *per_node.entry(j["node"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "every node ran jobs: {per_node:?}");
    let line = summary[0];
    let summary = &line["summary"];
    // The speedup is the jobs' run time over the wall time.
    let job_secs: f64 = summary["nodes"].as_array().unwrap().iter().map(|n| n["job_secs"].as_f64().unwrap()).sum();
    let speedup = job_secs / summary["wall_secs"].as_f64().unwrap();
    assert!((line["speedup"].as_f64().unwrap() - speedup).abs() < 1e-9, "{line}");
    let mut total = 0;
    let mut sent = 0;
    let small = JOB.len() as u64 + 11;
    for n in summary["nodes"].as_array().unwrap() {
        let name = n["node"]["name"].as_str().unwrap();
        assert_eq!(n["jobs"].as_u64().unwrap(), per_node[name], "summary disagrees for {name}");
        let staged = n["staged_bytes"].as_u64().unwrap();
        assert!(staged == small || staged == small + 5 * 1024 * 1024, "{name} was sent {staged} bytes");
        sent += staged;
        total += n["jobs"].as_u64().unwrap();
    }
    assert_eq!(total, 200);
    // The 5 MiB file left this machine once (fan-out); the nodes passed it on.
    assert_eq!(sent, 5 * 1024 * 1024 + 3 * small, "first run stages both files, the large one once");

    let out = run_once(6);
    out.expect_code(0);
    let lines = out.json_lines();
    let summary = &lines.last().unwrap()["summary"];
    for n in summary["nodes"].as_array().unwrap() {
        assert_eq!(n["staged_bytes"], 0, "files already on the node are not sent again: {n}");
    }
    for n in &nodes {
        assert!(n.job_dirs().is_empty(), "job directories left on {}: {:?}", n.proc.name, n.job_dirs());
    }
    let pids: Vec<u32> = nodes.iter().map(|n| n.proc.pid()).collect();
    drop(nodes);
    assert!(pids.iter().all(|p| !alive(*p)), "a node outlived its test");
}

/// Job directories are reused between a cluster's jobs, but only one its job left as it
/// found it: every job starts among exactly the program and its files, whatever the one
/// before it added, replaced or removed.
#[test]
fn every_job_starts_in_a_directory_holding_just_its_files() {
    let dir = tempdir();
    std::fs::write(dir.path().join("dep.txt"), "the dependency\n").unwrap();
    let prog = script(
        dir.path(),
        "job.sh",
        r#"ls -A | tr '\n' ' '; echo; cat dep.txt
case "$1" in
  litter) echo x > "litter-$$" ;;
  replace) rm dep.txt; echo other > dep.txt ;;
  remove) rm dep.txt ;;
  subdir) mkdir sub ;;
esac"#,
    );
    let mut o = NodeOpts::new("one");
    o.cpus = 1;
    let node = Node::start(dir.path(), o);
    let mut cmd = submit(&prog);
    cmd.arg("-f").arg(dir.path().join("dep.txt")).args(["--json", "--peer", &node.addr]);
    let kinds = ["none", "litter", "none", "replace", "remove", "none", "subdir", "none"];
    for i in 0..40 {
        cmd.args(["-a", kinds[i % kinds.len()]]);
    }
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    let jobs: Vec<_> = out.json_lines().into_iter().filter(|v| v.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 40, "{}", out.stdout);
    for j in &jobs {
        assert_eq!(j["stdout"].as_str().unwrap(), "dep.txt job.sh \nthe dependency\n", "{j}");
    }
    drop(node);
}

/// A job running as root can write to a stored file through its hard link despite the
/// read-only bits: the node notices, and the next cluster gets the file as its client
/// sent it (sent again), never the changed copy.
#[test]
fn a_dependency_a_job_wrote_to_is_sent_again_not_served_changed() {
    let dir = tempdir();
    std::fs::write(dir.path().join("dep.txt"), "pristine\n").unwrap();
    // Same size: only the seal can tell.
    let spoiler = script(dir.path(), "spoil.sh", "printf P | dd of=dep.txt conv=notrunc status=none && cat dep.txt");
    let reader = script(dir.path(), "read.sh", "cat dep.txt");
    let node = Node::start(dir.path(), NodeOpts::new("sealed"));
    let run_with = |prog: &std::path::Path| {
        let mut cmd = submit(prog);
        cmd.arg("-f").arg(dir.path().join("dep.txt")).args(["--json", "--peer", &node.addr]);
        let out = run("submit", cmd, Duration::from_secs(60));
        out.expect_code(0);
        let lines = out.json_lines();
        let stdout = lines[0]["stdout"].as_str().unwrap().to_string();
        let staged = lines.last().unwrap()["summary"]["nodes"][0]["staged_bytes"].as_u64().unwrap();
        (stdout, staged)
    };
    let (spoiled, _) = run_with(&spoiler);
    assert_eq!(spoiled, "Pristine\n", "the job could write (is the test running as root?)");
    let (read, staged) = run_with(&reader);
    assert_eq!(read, "pristine\n", "the changed copy was served");
    assert_eq!(staged, "pristine\n".len() as u64 + "cat dep.txt".len() as u64 + 11, "dep.txt and read.sh sent");
    drop(node);
}

#[test]
fn failed_jobs_are_reported_and_submit_exits_1() {
    let dir = tempdir();
    let prog = script(dir.path(), "fail.sh", r#"case "$1" in exit) exit 3;; kill) kill -9 $$;; *) echo fine;; esac"#);
    let node = Node::start(dir.path(), NodeOpts::new("a"));
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "-a", "exit", "-a", "kill", "-a", "ok"]);
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(1);
    assert!(out.stdout.contains("[exit] on a (127.0.0.1): exit 3"), "{}", out.stdout);
    assert!(out.stdout.contains("[kill] on a (127.0.0.1): killed by signal 9"), "{}", out.stdout);
    assert!(out.stdout.contains("[ok] on a (127.0.0.1): exit 0"), "{}", out.stdout);
    assert!(out.stdout.contains("2 of 3 jobs did not succeed (2 failed)"), "{}", out.stdout);
}

#[test]
fn a_node_started_after_submit_began_gets_jobs() {
    let dir = tempdir();
    let prog = script(dir.path(), "slow.sh", "sleep 0.1; echo done $1");
    let first = Node::start(dir.path(), NodeOpts::new("early"));
    // The late node's port is reserved now so that submit can name it before it exists.
    let late_addr = free_loopback_addr();
    let mut cmd = submit(&prog);
    cmd.args(["--json", "--peer", &first.addr, "--peer", &late_addr, "--cpus-per-node", "1"]);
    for i in 0..80 {
        cmd.args(["-a", &i.to_string()]);
    }
    let client = Proc::spawn("submit", cmd);
    std::thread::sleep(Duration::from_secs(2));
    let mut o = NodeOpts::new("late");
    o.listen = late_addr.clone();
    let late = Node::start(dir.path(), o);
    let out = client.wait(Duration::from_secs(60));
    out.expect_code(0);
    let on_late = out.json_lines().iter().filter(|j| j["node"] == "late").count();
    assert!(on_late > 5, "the late node ran only {on_late} jobs\n{}", out.stdout);
    drop(late);
}
