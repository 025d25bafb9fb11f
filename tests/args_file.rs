//! `submit --args-file`: one job per line, split like a shell; streamed in bounded batches
//! (a hundred thousand jobs from stdin in bounded memory); bad lines named, not fatal.

use crate::util::*;
use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A program printing its arguments, each between brackets.
fn echo_args(dir: &std::path::Path) -> std::path::PathBuf {
    script(dir, "args.sh", "for a in \"$@\"; do printf '[%s]' \"$a\"; done; echo")
}

#[test]
fn args_file_lines_and_a_options_all_run_with_their_words_as_split() {
    let dir = tempdir();
    let prog = echo_args(dir.path());
    let file = dir.path().join("jobs.txt");
    std::fs::write(&file, "one 'two words' \"three \\\"q\\\"\"\n\n   \nx\\ y ''\n# only a comment\nlast").unwrap();
    let node = Node::start(dir.path(), NodeOpts::new("af"));
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "--json", "-a", "first 'a b'", "--args-file"]).arg(&file);
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(0);
    let lines = out.json_lines();
    let mut jobs: Vec<(u64, String)> = lines
        .iter()
        .filter(|l| l.get("job").is_some())
        .map(|l| (l["job"].as_u64().unwrap(), l["stdout"].as_str().unwrap().to_string()))
        .collect();
    jobs.sort();
    let want = ["[first][a b]\n", "[one][two words][three \"q\"]\n", "[x y][]\n", "[last]\n"];
    let got: Vec<&str> = jobs.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(got, want, "the -a job first, then each line's words\n{}", out.stdout);
    let summary = lines.last().unwrap();
    assert_eq!((summary["jobs"].as_u64(), summary["bad_lines"].as_u64()), (Some(4), Some(0)), "{summary}");
}

#[test]
fn a_line_that_cannot_be_split_is_named_and_runs_no_job_while_the_others_run() {
    let dir = tempdir();
    let prog = echo_args(dir.path());
    let file = dir.path().join("jobs.txt");
    std::fs::write(&file, "ok1\nbad 'quote\nok2\n").unwrap();
    let node = Node::start(dir.path(), NodeOpts::new("bq"));
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "--args-file"]).arg(&file);
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(2);
    let named = format!("{}:2: unbalanced quotes", file.display());
    assert!(out.stderr.contains(&named), "{named:?} not in\n{}", out.stderr);
    assert!(out.stdout.contains("[ok1]") && out.stdout.contains("[ok2]"), "{}", out.stdout);
    assert_eq!(out.stdout.matches("== job ").count(), 2, "{}", out.stdout);
    assert!(out.stderr.contains("1 line of --args-file"), "{}", out.stderr);
}

#[test]
fn a_missing_args_file_is_a_usage_error_before_any_node_is_contacted() {
    let dir = tempdir();
    let prog = script(dir.path(), "p.sh", "true");
    for bad in [dir.path().join("no-such-jobs.txt"), dir.path().to_path_buf()] {
        let mut cmd = submit(&prog);
        // An address nothing listens on: the error must come before any dial.
        cmd.args(["--peer", "/ip4/127.0.0.1/tcp/9", "--args-file"]).arg(&bad);
        let out = run("submit", cmd, Duration::from_secs(30));
        out.expect_code(2);
        let named = format!("--args-file {}", bad.display());
        assert!(out.stderr.contains(&named) && !out.stderr.contains("no node"), "{}", out.stderr);
    }
}

/// Jobs in the stdin test; with a bound on outstanding jobs the client's memory does not
/// grow with it.
const MANY: usize = 100_000;
/// Each line's second argument: padding that makes holding every job at once cost far
/// more than the bound below (MANY × this, several times over: args, spec, report).
const PAD: usize = 200;
/// The client's peak RSS allowed. Measured on 2 CPUs: 24 MB streaming; 91 MB with the
/// bound on outstanding jobs lifted (every job read and held at once), which this fails.
const MAX_RSS_KB: u64 = 50 << 10;

#[test]
fn a_hundred_thousand_jobs_stream_from_stdin_in_bounded_memory() {
    let time = std::path::Path::new("/usr/bin/time");
    assert!(time.exists(), "this test measures peak RSS with GNU time: apt-get install -y time (.ci/run does)");
    let dir = tempdir();
    let mut o = NodeOpts::new("many");
    o.cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let node = Node::start(dir.path(), o);
    let rss = dir.path().join("rss");
    let mut cmd = Command::new(time);
    cmd.arg("-o").arg(&rss).args(["-f", "%M", bin(), "submit", "/bin/true", "--no-mdns", "--secret", "test-secret"]);
    cmd.args(["--peer", &node.addr, "--json", "--args-file", "-"]).env("RUST_LOG", "warn");
    let t = Instant::now();
    let mut client = Proc::spawn_stdin("submit", cmd, Stdio::piped());
    let mut stdin = client.child.stdin.take().unwrap();
    let pad = "p".repeat(PAD);
    // The first job runs while its input is still open: reading follows the results.
    writeln!(stdin, "0 {pad}").unwrap();
    assert!(client.wait_stdout("\"job\":0", Duration::from_secs(30)), "job 0 did not run before the input ended");
    let writer = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::new(stdin);
        for i in 1..MANY {
            writeln!(w, "{i} {pad}").unwrap();
        }
    });
    // Its pace is the machine's (~100 s alone on 2 CPUs, several times that beside the
    // rest of the suite): the bound is on progress, a result at least every minute.
    let out = client.wait_progressing(Duration::from_secs(60), Duration::from_secs(900));
    writer.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    out.expect_code(0);
    let lines = out.json_lines();
    let mut ids = HashSet::new();
    for j in lines.iter().filter(|l| l.get("job").is_some()) {
        assert_eq!(j["exit_code"], 0, "{j}");
        assert!(ids.insert(j["job"].as_u64().unwrap()), "reported twice: {j}");
    }
    assert_eq!(ids.len(), MANY);
    assert_eq!(lines.last().unwrap()["jobs"].as_u64(), Some(MANY as u64));
    let kb: u64 = std::fs::read_to_string(&rss).unwrap().trim().lines().last().unwrap().parse().unwrap();
    eprintln!("{MANY} jobs from stdin in {secs:.1} s; client peak RSS {} MB", kb >> 10);
    assert!(kb < MAX_RSS_KB, "client peak RSS {kb} kB for {MANY} jobs: not bounded");
}
