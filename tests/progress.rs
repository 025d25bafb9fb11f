//! `submit`'s progress bar: drawn on a terminal (a pseudo-terminal made by util-linux's
//! `script`), never on a pipe, never mixed into stdout; `--quiet` prints only the summary.

use crate::util::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `submit` of `jobs` short jobs against `node`, as a command line for a shell.
fn submit_words(prog: &Path, node: &Node, jobs: usize, extra: &[&str]) -> Vec<String> {
    let mut words = vec![bin().to_string(), "submit".into(), prog.display().to_string()];
    words.extend(["--no-mdns", "--secret", "test-secret", "--peer", &node.addr].map(String::from));
    for i in 0..jobs {
        words.extend(["-a".to_string(), i.to_string()]);
    }
    words.extend(extra.iter().map(|s| s.to_string()));
    words
}

/// Runs `shell_line` with stdin, stdout and stderr on a fresh pseudo-terminal; returns
/// everything written to that terminal.
fn on_a_terminal(shell_line: &str) -> Finished {
    let found = Command::new("script").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this test needs util-linux's `script` (Debian: apt-get install bsdutils) to make a pseudo-terminal"
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", shell_line, "/dev/null"]);
    cmd.env("RUST_LOG", "error").env_remove("DISPY_SECRET");
    run("script", cmd, Duration::from_secs(60))
}

#[test]
fn a_progress_bar_is_drawn_on_a_terminal_and_never_on_a_pipe_or_in_stdout() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("bar"));
    // 8 jobs of 0.3 s on 2 CPUs: about 1.2 s, several redraws of the bar (every 200 ms).
    let prog = script(dir.path(), "p.sh", "sleep 0.3; echo out-$1");
    let stdout_file = dir.path().join("stdout.txt");

    // stderr on the terminal, stdout to a file: the bar is on the terminal only.
    let line = format!(
        "{} > {}",
        shell_words::join(submit_words(&prog, &node, 8, &[])),
        shell_words::quote(&stdout_file.display().to_string())
    );
    let tty = on_a_terminal(&line);
    tty.expect_code(0);
    let bars: Vec<&str> = tty.stdout.split(['\r', '\n']).filter(|l| l.contains("ETA")).collect();
    assert!(!bars.is_empty(), "no progress line with an ETA on the terminal:\n{}", tty.stdout);
    assert!(
        bars.iter().any(|l| l.contains("8/8") && l.contains("jobs/s") && l.contains("queued")),
        "no final progress line (8/8, jobs/s, queued):\n{bars:#?}"
    );
    let stdout = std::fs::read_to_string(&stdout_file).unwrap();
    assert_eq!(stdout.matches("== job ").count(), 8, "{stdout}");
    assert!(!stdout.contains("ETA") && !stdout.contains('\x1b'), "the bar leaked into stdout:\n{stdout}");

    // Both on the terminal: every per-job line is whole, on a line of its own.
    let tty = on_a_terminal(&shell_words::join(submit_words(&prog, &node, 4, &[])));
    tty.expect_code(0);
    for i in 0..4 {
        let out = format!("out-{i}");
        assert!(
            tty.stdout.split(['\r', '\n']).any(|l| l == out),
            "{out} is not a line of its own on the terminal:\n{:?}",
            tty.stdout
        );
    }

    // Piped: no bar at all.
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "-a", "1", "-a", "2"]);
    let piped = run("submit", cmd, Duration::from_secs(60));
    piped.expect_code(0);
    assert!(!piped.stderr.contains("ETA") && !piped.stdout.contains("ETA"), "{}\n{}", piped.stdout, piped.stderr);
    assert_eq!(piped.stdout.matches("== job ").count(), 2, "{}", piped.stdout);
    assert!(piped.stderr.contains("DEBUG"), "the logs this test checks are missing:\n{}", piped.stderr);
    assert!(!piped.stderr.contains('\x1b'), "colour codes in logs that are not on a terminal:\n{}", piped.stderr);

    // --json on a terminal: no bar either.
    let tty = on_a_terminal(&shell_words::join(submit_words(&prog, &node, 2, &["--json"])));
    tty.expect_code(0);
    assert!(!tty.stdout.contains("ETA"), "a bar with --json:\n{}", tty.stdout);
}

#[test]
fn quiet_prints_only_the_summary() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("quiet"));
    let prog = script(dir.path(), "p.sh", "echo out-$1; [ \"$1\" != 2 ]");
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "--quiet", "-a", "1", "-a", "2", "-a", "3"]);
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(1);
    assert!(!out.stdout.contains("== job") && !out.stdout.contains("out-"), "{}", out.stdout);
    assert!(out.stdout.contains("3 jobs") && out.stdout.contains("1 of 3 jobs did not succeed"), "{}", out.stdout);

    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "-q", "--json", "-a", "1"]);
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    let lines = out.json_lines();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert_eq!(lines[0]["jobs"], 1, "{}", out.stdout);
}
