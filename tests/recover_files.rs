//! A client that crashes gets back, with `recover`, the files its jobs returned: into the
//! results folder the crashed `submit` used, byte-exact, and the node deletes them once
//! they are collected.

use crate::util::*;
use std::path::Path;
use std::time::Duration;

/// What job `arg` returns as `<arg>.out`: over two chunks, its own bytes.
fn content(arg: &str) -> Vec<u8> {
    format!("{arg}\n").into_bytes().into_iter().cycle().take(2_500_000).collect()
}

/// Files in the node's store with exactly these bytes.
fn stored(node: &Node, data: &[u8]) -> usize {
    let entries = std::fs::read_dir(node.dest.join("store")).into_iter().flatten().flatten();
    entries.filter(|e| e.path().is_file() && std::fs::read(e.path()).is_ok_and(|b| b == data)).count()
}

fn recover(journal: &Path, cwd: &Path) -> Finished {
    let mut cmd = std::process::Command::new(bin());
    cmd.current_dir(cwd).arg("recover").arg(journal).args(["--secret", "test-secret"]);
    run("recover", cmd, Duration::from_secs(60))
}

/// A run whose client crashed: `submit --return '*.out' --results-dir out --journal` from
/// `<dir>/work`, killed once job 0 (`quick`) is reported; jobs 1 and 2 then end and the
/// node, past its zombie interval, keeps their results and files.
struct Crashed {
    dir: tempfile::TempDir,
    node: Node,
    journal: std::path::PathBuf,
    /// The results folder the run used.
    results: std::path::PathBuf,
}

fn crashed_run() -> Crashed {
    let dir = tempdir();
    let go = dir.path().join("go");
    // The slow jobs run until the client is dead, then leave their files and end.
    let body = format!(
        r#"case "$1" in quick) echo quick; echo q > quick.out;; *) while [ ! -e {go} ]; do sleep 0.05; done
           yes "$1" | head -c 2500000 > "$1.out"; echo "$1 finished";; esac"#,
        go = go.display()
    );
    let prog = script(dir.path(), "job.sh", &body);
    let mut o = NodeOpts::new("keeper");
    o.extra = vec!["--zombie-interval".into(), "1".into()];
    let node = Node::start(dir.path(), o);
    // Relative results folder: `recover` runs elsewhere and still finds it.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let journal = dir.path().join("run.journal");
    let mut cmd = submit(&prog);
    cmd.current_dir(&work).args(["--peer", &node.addr, "--return", "*.out", "--results-dir", "out", "--journal"]);
    cmd.arg(&journal).args(["-a", "quick", "-a", "slow-1", "-a", "slow-2"]);
    let client = Proc::spawn("submit", cmd);
    assert!(client.wait_stdout("-- returned", Duration::from_secs(20)), "{}", client.stdout());
    // Printed a hair before the journal is flushed: the crash comes once it is.
    let journaled = || std::fs::read_to_string(&journal).is_ok_and(|j| j.contains(r#"{"done":0}"#));
    assert!(wait_until(Duration::from_secs(5), journaled), "the quick job's end is journaled");
    signal(client.pid(), "KILL");
    let _ = client.wait(Duration::from_secs(10));
    std::fs::write(&go, b"").unwrap();
    assert!(node.proc.wait_stderr("keeping undelivered results", Duration::from_secs(15)), "{}", node.proc.stderr());
    for arg in ["slow-1", "slow-2"] {
        assert_eq!(stored(&node, &content(arg)), 1, "{arg}.out is kept in the node's store");
    }
    Crashed { results: work.join("out"), dir, node, journal }
}

#[test]
fn after_a_client_crash_recover_brings_back_the_files_its_jobs_returned() {
    let Crashed { dir: _dir, node, journal, results } = crashed_run();
    let elsewhere = tempdir();
    let out = recover(&journal, elsewhere.path());
    out.expect_code(0);
    for (job, arg) in [(1, "slow-1"), (2, "slow-2")] {
        let path = results.join(job.to_string()).join(format!("{arg}.out"));
        assert!(out.stdout.contains(&format!("-- returned {}", path.display())), "{}", out.stdout);
        assert!(out.stdout.contains(&format!("{arg} finished")), "{}", out.stdout);
        assert!(std::fs::read(&path).is_ok_and(|b| b == content(arg)), "{} is byte-exact", path.display());
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 1, "only the whole file, no partial one: {names:?}");
    }
    assert!(!out.stdout.contains("not saved"), "{}", out.stdout);
    assert!(out.stdout.contains("0 jobs lost"), "{}", out.stdout);
    assert!(!std::fs::read_dir(elsewhere.path()).unwrap().any(|_| true), "nothing saved where recover ran");

    // Collected: the node deletes the files, and a second recover finds nothing.
    let gone = wait_until(Duration::from_secs(10), || {
        ["slow-1", "slow-2"].iter().all(|arg| stored(&node, &content(arg)) == 0)
    });
    assert!(gone, "the collected files leave the node's store");
    let again = recover(&journal, elsewhere.path());
    assert!(!again.stdout.contains("-- returned") && !again.stdout.contains("finished"), "{}", again.stdout);
    assert!(std::fs::read(results.join("1/slow-1.out")).is_ok_and(|b| b == content("slow-1")), "left as it was");
}

#[test]
fn a_returned_file_recover_cannot_fetch_is_named_and_stays_on_the_node_for_another_try() {
    let Crashed { dir: _dir, node, journal, results } = crashed_run();
    // The node lost one of the files (a disk that failed, a hand that deleted it).
    let entries = std::fs::read_dir(node.dest.join("store")).unwrap().flatten();
    let lost = entries.map(|e| e.path()).find(|p| std::fs::read(p).is_ok_and(|b| b == content("slow-1"))).unwrap();
    std::fs::remove_file(&lost).unwrap();
    let elsewhere = tempdir();
    let out = recover(&journal, elsewhere.path());
    let note = out.stdout.lines().find(|l| l.starts_with("-- not returned")).unwrap_or_default().to_string();
    assert!(note.contains("slow-1.out: the node refused: cannot read returned file"), "{}", out.stdout);
    assert!(note.contains("keeps this result and its files"), "{note}");
    assert!(note.contains("run recover again"), "{note}");
    assert!(!results.join("1/slow-1.out").exists(), "nothing half-fetched in place");
    assert!(std::fs::read(results.join("2/slow-2.out")).is_ok_and(|b| b == content("slow-2")), "the other arrives");
    // Job 2 was collected; job 1 is still there to be asked again.
    let again = recover(&journal, elsewhere.path());
    assert!(again.stdout.contains("slow-1 finished") && !again.stdout.contains("slow-2 finished"), "{}", again.stdout);
}

#[test]
fn returned_files_in_delivery_survive_a_node_crash_and_are_recovered_after_its_restart() {
    let dir = tempdir();
    let go = dir.path().join("go");
    let body = format!(
        r#"touch {dir}/started-$1; while [ ! -e {go} ]; do sleep 0.05; done
           yes "$1" | head -c 2500000 > "$1.out"; echo "result $1""#,
        go = go.display(),
        dir = dir.path().display()
    );
    let prog = script(dir.path(), "job.sh", &body);
    let listen = free_loopback_addr();
    let mut o = NodeOpts::new("crashy");
    o.listen = listen.clone();
    let first = Node::start(dir.path(), o);
    let (journal, results) = (dir.path().join("j"), dir.path().join("out"));
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &listen, "--return", "*.out", "-a", "a", "-a", "b", "--journal"]).arg(&journal);
    cmd.arg("--results-dir").arg(&results);
    let client = Proc::spawn("submit", cmd);
    let started = || ["a", "b"].iter().all(|a| dir.path().join(format!("started-{a}")).exists());
    assert!(wait_until(Duration::from_secs(20), started), "{}", first.proc.stderr());
    // The client freezes before the jobs end: the results wait, and go to the node's disk
    // with their files...
    signal(client.pid(), "STOP");
    std::fs::write(&go, b"").unwrap();
    let kept = first.dest.join("results");
    // A result is written after the record of its files: two results, two files.
    let both_on_disk = || {
        let clusters = std::fs::read_dir(&kept).into_iter().flatten().flatten();
        let results = |c: &Path| std::fs::read_dir(c).into_iter().flatten().flatten();
        clusters
            .into_iter()
            .any(|c| results(&c.path()).filter(|r| r.path().extension().is_some_and(|x| x == "cbor")).count() >= 2)
    };
    assert!(
        wait_until(Duration::from_secs(10), both_on_disk),
        "both results' files are on disk\n{}",
        first.proc.stderr()
    );
    // ...when the node crashes. The client dies too; the node comes back.
    let second = crash_and_restart(first, client, dir.path(), "crashy", listen);
    let out = recover(&journal, dir.path());
    out.expect_code(0);
    for (job, arg) in [(0, "a"), (1, "b")] {
        let path = results.join(job.to_string()).join(format!("{arg}.out"));
        assert!(
            std::fs::read(&path).is_ok_and(|b| b == content(arg)),
            "{} is byte-exact\n{}",
            path.display(),
            out.stdout
        );
        assert!(out.stdout.contains(&format!("-- returned {}", path.display())), "{}", out.stdout);
    }
    let gone = wait_until(Duration::from_secs(10), || ["a", "b"].iter().all(|arg| stored(&second, &content(arg)) == 0));
    assert!(gone, "the restarted node deletes them once collected");
}
