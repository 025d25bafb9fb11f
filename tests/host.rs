//! The node on its host: a private dest path, stored files a job cannot poison, results and
//! files no other user can read.

use crate::util::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Another local user could have made the folder to plant files that jobs run: the node
/// refuses it, saying why and how to fix it, and starts nothing.
#[test]
fn a_world_writable_dest_is_refused_with_the_reason() {
    let dir = tempdir();
    let dest = dir.path().join("planted");
    std::fs::create_dir(&dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--secret", "test-secret", "--dest-path"])
        .arg(&dest)
        .env_remove("DISPY_SECRET");
    let out = run("serve", cmd, Duration::from_secs(20));
    out.expect_code(2);
    assert!(out.stderr.contains("is not safe to use"), "{}", out.stderr);
    assert!(out.stderr.contains("writable by other users") && out.stderr.contains("chmod go-w"), "{}", out.stderr);
    assert!(!out.stdout.contains("listening"), "it must not serve: {}", out.stdout);
    assert!(!dest.join("store").exists(), "nothing made in a refused dest");
}

/// A job writes to a stored file through its hard link, then sets its modification time
/// back to the store's: the next cluster still gets the file as its client sent it.
#[test]
fn a_job_that_resets_a_stored_files_mtime_cannot_poison_the_next_cluster() {
    let dir = tempdir();
    std::fs::write(dir.path().join("dep.txt"), "pristine\n").unwrap();
    // Same size, and the store's modification time put back (1_000_000_000 s): only what
    // the job cannot set back (the change time) tells.
    let spoiler = script(
        dir.path(),
        "spoil.sh",
        "chmod u+w dep.txt; printf P | dd of=dep.txt conv=notrunc status=none && touch -m -d @1000000000 dep.txt && cat dep.txt",
    );
    let reader = script(dir.path(), "read.sh", "cat dep.txt");
    let node = Node::start(dir.path(), NodeOpts::new("forged"));
    let run_with = |prog: &std::path::Path| {
        let mut cmd = submit(prog);
        cmd.arg("-f").arg(dir.path().join("dep.txt")).args(["--json", "--peer", &node.addr]);
        let out = run("submit", cmd, Duration::from_secs(60));
        out.expect_code(0);
        out.json_lines()[0]["stdout"].as_str().unwrap().to_string()
    };
    assert_eq!(run_with(&spoiler), "Pristine\n", "the job could not write to it");
    assert_eq!(run_with(&reader), "pristine\n", "the changed copy was served");
    drop(node);
}

/// Nothing under the dest path is open to other users: the folders are 0700 and stored
/// files 0500, and the default dest is this user's own.
#[test]
fn the_store_and_job_folders_are_private() {
    let dir = tempdir();
    std::fs::write(dir.path().join("dep.txt"), "data\n").unwrap();
    let prog = script(dir.path(), "modes.sh", "stat -c %a . dep.txt");
    let node = Node::start(dir.path(), NodeOpts::new("private"));
    let mut cmd = submit(&prog);
    cmd.arg("-f").arg(dir.path().join("dep.txt")).args(["--json", "--peer", &node.addr]);
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    let job_dir_and_file = out.json_lines()[0]["stdout"].as_str().unwrap().to_string();
    let file_mode = job_dir_and_file.lines().nth(1).unwrap_or_default();
    assert_eq!(file_mode, "500", "stored files are the node user's alone: {job_dir_and_file}");
    for sub in ["", "store", "jobs"] {
        assert_eq!(mode(&node.dest.join(sub)), 0o700, "{sub}");
    }
    let stored: Vec<_> = std::fs::read_dir(node.dest.join("store"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| mode(&e.path()))
        .collect();
    assert!(!stored.is_empty() && stored.iter().all(|m| *m == 0o500), "{stored:?}");
    drop(node);
}

/// A node's name (and what it says about a job) reaches a person's terminal with control
/// characters shown, never acted on: a node cannot rewrite the screen or set the title.
#[test]
fn a_nodes_terminal_escapes_are_shown_not_sent_to_the_terminal() {
    let dir = tempdir();
    let prog = script(dir.path(), "hello.sh", "echo hi; printf '\\033]0;pwned\\007\\n'");
    let node = Node::start(dir.path(), NodeOpts::new("evil\x1b[2J"));
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr]);
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    assert!(!out.stdout.contains('\x1b') && !out.stdout.contains('\x07'), "{:?}", out.stdout);
    assert!(out.stdout.contains("evil\\x1b[2J"), "{}", out.stdout);
    assert!(out.stdout.contains("hi\n\\x1b]0;pwned\\x07\n"), "job output too: {}", out.stdout);
    drop(node);
}

/// Jobs run as the node's user; a node started as root says what that means.
#[test]
fn a_node_run_as_root_warns() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return;
    }
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("root"));
    assert!(node.proc.wait_stderr("serving as root", Duration::from_secs(10)), "{}", node.proc.stderr());
    drop(node);
}
