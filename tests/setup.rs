//! Directories sent as trees (`-f DIR`), and `--setup` / `--cleanup` programs, on real nodes.

use crate::util::*;
use std::time::Duration;

/// Lists the job directory, hashes the tree, then changes it as `$1` says: every job must
/// still start among exactly the files sent, whatever the one before it did.
const TREE_JOB: &str = r#"export LC_ALL=C
find . | sort | tr '\n' ' '; echo
cat data/a.txt data/sub/b.bin data/sub/deeper/c.txt | sha256sum | cut -c1-16
case "$1" in
  litter) echo x > data/sub/litter ;;
  rmsub) rm -r data/sub/deeper ;;
  replace) rm data/sub/b.bin; echo other > data/sub/b.bin ;;
  lock) chmod 500 data/sub ;;
esac"#;

#[test]
fn a_directory_travels_as_its_tree_and_every_job_finds_it_as_sent() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(data.join("empty")).unwrap();
    std::fs::write(data.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(data.join("sub/b.bin"), [0u8, 1, 2, 255]).unwrap();
    std::fs::write(data.join("sub/deeper/c.txt"), "gamma\n").unwrap();
    let mut all = b"alpha\n".to_vec();
    all.extend([0u8, 1, 2, 255]);
    all.extend(b"gamma\n");
    let hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&all).iter().take(8).map(|b| format!("{b:02x}")).collect()
    };
    let prog = script(dir.path(), "job.sh", TREE_JOB);
    let mut o = NodeOpts::new("tree");
    o.cpus = 1;
    let node = Node::start(dir.path(), o);
    let mut cmd = submit(&prog);
    // A trailing slash, as a shell's completion leaves it.
    cmd.arg("-f").arg(format!("{}/", data.display())).args(["--json", "--peer", &node.addr]);
    let kinds = ["none", "litter", "none", "rmsub", "none", "replace", "none", "lock", "none"];
    for k in kinds {
        cmd.args(["-a", k]);
    }
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    let jobs: Vec<_> = out.json_lines().into_iter().filter(|v| v.get("job").is_some()).collect();
    assert_eq!(jobs.len(), kinds.len(), "{}", out.stdout);
    let layout =
        ". ./data ./data/a.txt ./data/sub ./data/sub/b.bin ./data/sub/deeper ./data/sub/deeper/c.txt ./job.sh ";
    for j in &jobs {
        assert_eq!(j["stdout"].as_str().unwrap(), format!("{layout}\n{hash}\n"), "{j}");
    }
    drop(node);
}

#[test]
fn a_tree_holding_a_symlink_is_refused_before_any_node_is_contacted() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("a.txt"), "a").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data.join("sub/x")).unwrap();
    let prog = script(dir.path(), "job.sh", "true");
    let mut cmd = submit(&prog);
    // Nothing listens there: had submit looked for nodes, it would wait and say so.
    cmd.arg("-f").arg(&data).args(["--peer", &free_loopback_addr(), "--discover-timeout", "30"]);
    let started = std::time::Instant::now();
    let out = run("submit", cmd, Duration::from_secs(20));
    out.expect_code(2);
    let want = format!("{}: is a symbolic link; dispy-peer sends regular files only", data.join("sub/x").display());
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "it looked for nodes first");
}

/// Setup runs once per node and leaves something for the jobs; on node `bad` it fails, and
/// every job runs on the other two; cleanup runs on each node at release.
#[test]
fn setup_runs_once_per_node_a_failing_one_sidelines_its_node_and_cleanup_runs_at_release() {
    let dir = tempdir();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let m = marks.display();
    let setup = script(
        dir.path(),
        "prepare.sh",
        &format!(
            r#"echo ran >> "{m}/setup-$DISPY_NODE_NAME"
if [ "$DISPY_NODE_NAME" = bad ]; then echo "no license on $DISPY_NODE_NAME" >&2; exit 3; fi
test "$PWD" = "$DISPY_CLUSTER_DIR" && test -f input.txt && echo "prepared by $DISPY_NODE_NAME" > "$DISPY_CLUSTER_DIR/prepared.txt""#
        ),
    );
    let cleanup = script(
        dir.path(),
        "tidy.sh",
        &format!(r#"cat "$DISPY_CLUSTER_DIR/prepared.txt" >> "{m}/cleanup-$DISPY_NODE_NAME""#),
    );
    std::fs::write(dir.path().join("input.txt"), "in").unwrap();
    let prog = script(dir.path(), "job.sh", r#"cat "$DISPY_CLUSTER_DIR/prepared.txt"; sleep 0.05"#);
    let nodes: Vec<Node> =
        ["good1", "good2", "bad"].iter().map(|n| Node::start(dir.path(), NodeOpts::new(n))).collect();
    let mut cmd = submit(&prog);
    cmd.arg("--setup").arg(&setup).arg("--cleanup").arg(&cleanup).arg("-f").arg(dir.path().join("input.txt"));
    cmd.args(["--json", "--timeout", "20"]);
    for n in &nodes {
        cmd.args(["--peer", &n.addr]);
    }
    for i in 0..30 {
        cmd.args(["-a", &i.to_string()]);
    }
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    let jobs: Vec<_> = out.json_lines().into_iter().filter(|v| v.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 30, "{}", out.stdout);
    for j in &jobs {
        let node = j["node"].as_str().unwrap();
        assert_ne!(node, "bad", "{j}");
        assert_eq!(j["stdout"].as_str().unwrap(), format!("prepared by {node}\n"), "{j}");
    }
    assert!(out.stderr.contains("setup prepare.sh failed on node bad: exit 3"), "{}", out.stderr);
    assert!(out.stderr.contains("no license on bad"), "{}", out.stderr);
    for n in ["good1", "good2", "bad"] {
        let runs = std::fs::read_to_string(marks.join(format!("setup-{n}"))).unwrap_or_default();
        assert_eq!(runs, "ran\n", "setup on {n} ran {} times", runs.lines().count());
    }
    for n in ["good1", "good2"] {
        let path = marks.join(format!("cleanup-{n}"));
        let found = wait_until(Duration::from_secs(10), || std::fs::read_to_string(&path).is_ok_and(|s| !s.is_empty()));
        assert!(found, "cleanup did not run on {n}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("prepared by {n}\n"));
    }
    drop(nodes);
}

#[test]
fn a_setup_that_hangs_is_stopped_by_the_timeout_and_its_node_sidelined_with_the_reason() {
    let dir = tempdir();
    let setup = script(
        dir.path(),
        "hang.sh",
        r#"if [ "$DISPY_NODE_NAME" = stuck ]; then echo "waiting for a license server" >&2; exec sleep 600; fi"#,
    );
    let prog = script(dir.path(), "job.sh", r#"echo "ran $1""#);
    let nodes: Vec<Node> = ["fine", "stuck"].iter().map(|n| Node::start(dir.path(), NodeOpts::new(n))).collect();
    let mut cmd = submit(&prog);
    cmd.arg("--setup").arg(&setup).args(["--json", "--timeout", "2"]);
    for n in &nodes {
        cmd.args(["--peer", &n.addr]);
    }
    for i in 0..6 {
        cmd.args(["-a", &i.to_string()]);
    }
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    let jobs: Vec<_> = out.json_lines().into_iter().filter(|v| v.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 6, "{}", out.stdout);
    assert!(jobs.iter().all(|j| j["node"] == "fine"), "{}", out.stdout);
    assert!(
        out.stderr.contains("setup hang.sh failed on node stuck: ran past the cluster's timeout of 2 s"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("waiting for a license server"), "{}", out.stderr);
    drop(nodes);
}
