//! `submit --web`: the live web monitor, against a real cluster on loopback. In headless
//! Chromium (the page's DOM, its live count, a cancel click, a screenshot), and through
//! its API (status JSON, cancel with and without the token).
//!
//! The cancel token is required on every address, loopback included (loopback is shared
//! by all the machine's users, and any web page can POST to it); the API test binds
//! 127.0.0.2, another loopback address, to show a bind beyond 127.0.0.1 works the same.

mod cdp;
mod http;

use crate::util::*;
use http::{MonitorUrl, request};
use std::time::Duration;

/// A job program: `long` sleeps 30 s; a number N sleeps a moment and prints N².
const JOB: &str = "if [ \"$1\" = long ]; then exec sleep 30; fi\nsleep 0.4\necho \"job $1: $(( $1 * $1 ))\"";

/// Where the test keeps its screenshot: the target folder.
fn target_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target/").to_path_buf()
}

fn monitor_url(client: &Proc) -> MonitorUrl {
    assert!(client.wait_stderr("web monitor at ", Duration::from_secs(30)), "no web monitor URL\n{}", client.stderr());
    // The line may still be arriving.
    std::thread::sleep(Duration::from_millis(100));
    MonitorUrl::from_stderr(&client.stderr())
}

#[test]
fn the_web_page_shows_the_cluster_live_in_chromium_and_cancels_a_job() {
    cdp::chromium();
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", JOB);
    let w1 = Node::start(dir.path(), NodeOpts::new("w1"));
    let w2 = Node::start(dir.path(), NodeOpts::new("w2"));
    let mut cmd = submit(&prog);
    cmd.args(["--json", "--peer", &w1.addr, "--peer", &w2.addr, "--web", "127.0.0.1:0", "-a", "long"]);
    for i in 1..=11 {
        cmd.args(["-a", &i.to_string()]);
    }
    let client = Proc::spawn("submit", cmd);
    let url = monitor_url(&client);
    let mut page = cdp::Browser::open(&url.url, 1280, 1000);
    let nodes_shown = "['w1', 'w2'].every((n) => document.querySelector(`#nodes tr[data-node=\"${n}\"]`))";
    assert!(page.wait_for(nodes_shown, Duration::from_secs(30)), "nodes not shown\n{}", page.dom());
    let count = "document.getElementById('done').textContent + '/' + document.getElementById('total').textContent";
    // Every quick job ends; the long one runs on.
    assert!(
        page.wait_for(&format!("{count} === '11/12'"), Duration::from_secs(60)),
        "the live count is {}\n{}",
        page.eval(count),
        page.dom()
    );
    let long = "document.querySelector('#jobs tr[data-job=\"0\"]')";
    assert_eq!(page.eval(&format!("{long}.dataset.status")), "running", "{}", page.dom());
    // The page as a person sees it mid-run (the README shows it).
    page.screenshot(&target_dir().join("web-monitor.png"));
    // Click its cancel button, as a person would.
    page.eval("document.querySelector('button[data-cancel=\"0\"]').click(); true");
    assert!(
        page.wait_for(
            &format!("{long}?.dataset.status === 'cancelled' && {count} === '12/12'"),
            Duration::from_secs(20)
        ),
        "the long job was not shown cancelled\n{}",
        page.dom()
    );
    let shot = target_dir().join("web-monitor-cancelled.png");
    page.screenshot(&shot);
    // The run ends by itself; the job's own result says it was cancelled.
    let out = client.wait(Duration::from_secs(30));
    out.expect_code(1);
    // Closing waited for the final view to reach the page.
    assert_eq!(page.eval("document.getElementById('state').textContent"), "run ended", "{}", page.dom());
    let lines = out.json_lines();
    let job0 = lines.iter().find(|l| l["job"] == 0).unwrap_or_else(|| panic!("no report of job 0: {lines:?}"));
    assert_eq!(job0["status"], "cancelled", "{job0}");
    let finished = lines.iter().filter(|l| l["status"] == "finished").count();
    assert_eq!(finished, 11, "{lines:?}");
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "screenshot too small");
    drop((w1, w2));
}

/// A node `w1`, and a `submit --json --web WEB` of [`JOB`] to it with `args`.
fn node_and_submit(dir: &std::path::Path, web: &str, args: &[&str]) -> (Node, std::process::Command) {
    let prog = script(dir, "job.sh", JOB);
    let w1 = Node::start(dir, NodeOpts::new("w1"));
    let mut cmd = submit(&prog);
    cmd.args(["--json", "--peer", &w1.addr, "--web", web]).args(args);
    (w1, cmd)
}

#[test]
fn the_api_reports_status_and_cancels_only_with_the_token() {
    let dir = tempdir();
    let (w1, cmd) = node_and_submit(dir.path(), "127.0.0.2:0", &["-a", "3", "-a", "long", "-a", "long"]);
    let client = Proc::spawn("submit", cmd);
    let url = monitor_url(&client);
    assert!(url.host.starts_with("127.0.0.2:"), "{}", url.url);
    // The snapshot: the node, the counts.
    let mut status = serde_json::Value::Null;
    let both_running = wait_until(Duration::from_secs(30), || {
        let r = request(&url.host, "GET", "/api/status", &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        status = serde_json::from_str(&r.body).unwrap();
        status["counts"]["running"] == 2 && status["counts"]["finished"] == 1
    });
    assert!(both_running, "{status:#}");
    assert_eq!(status["counts"]["total"], 3, "{status:#}");
    assert_eq!(status["nodes"][0]["name"], "w1", "{status:#}");
    assert_eq!(status["nodes"][0]["cpus"], 2, "{status:#}");
    assert_eq!(status["nodes"][0]["jobs_running"], 2, "{status:#}");
    // The page carries the token only when opened with it.
    let page = request(&url.host, "GET", &format!("/?token={}", url.token), &[]);
    assert!(page.body.contains(&format!("data-token=\"{}\"", url.token)));
    assert!(page.body.contains("data-node=\"w1\""), "the page is rendered on the server: {}", page.body);
    let anonymous = request(&url.host, "GET", "/", &[]);
    assert!(anonymous.body.contains("data-token=\"\"") && !anonymous.body.contains(&url.token));
    // The event stream starts with the full view.
    let events = http::read_until(&url.host, "/events", "\"counts\"");
    assert!(events.contains("event: full"), "{events}");
    // Cancel: refused without the token (401) and with a wrong one (403), in the query or
    // the header; nothing is cancelled then.
    assert_eq!(request(&url.host, "POST", "/api/cancel/1", &[]).status, 401);
    assert_eq!(request(&url.host, "POST", "/api/cancel", &[]).status, 401);
    assert_eq!(request(&url.host, "POST", "/api/cancel/1?token=00", &[]).status, 403);
    assert_eq!(request(&url.host, "POST", "/api/cancel", &["x-dispy-token: 00"]).status, 403);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!client.stdout().contains("cancelled"), "{}", client.stdout());
    // With it: job 1 first, then all.
    let header = format!("x-dispy-token: {}", url.token);
    assert_eq!(request(&url.host, "POST", "/api/cancel/1", &[&header]).status, 202);
    assert!(client.wait_stdout("\"cancelled\"", Duration::from_secs(10)), "{}", client.stdout());
    let one_cancelled = wait_until(Duration::from_secs(5), || {
        let r = request(&url.host, "GET", "/api/status", &[]);
        status = serde_json::from_str(&r.body).unwrap();
        status["counts"]["cancelled"] == 1 && status["counts"]["running"] == 1
    });
    assert!(one_cancelled, "{status:#}");
    assert_eq!(request(&url.host, "POST", &format!("/api/cancel?token={}", url.token), &[]).status, 202);
    let out = client.wait(Duration::from_secs(20));
    out.expect_code(1);
    let lines = out.json_lines();
    let status_of = |job: u64| lines.iter().find(|l| l["job"] == job).map(|l| l["status"].clone());
    assert_eq!(status_of(0), Some("finished".into()), "{lines:?}");
    assert_eq!(status_of(1), Some("cancelled".into()), "{lines:?}");
    assert_eq!(status_of(2), Some("cancelled".into()), "{lines:?}");
    drop(w1);
}

#[test]
fn cancel_all_from_the_web_stops_reading_the_args_file() {
    use std::io::Write;
    let dir = tempdir();
    let (w1, cmd) = node_and_submit(dir.path(), "127.0.0.1:0", &["--args-file", "-"]);
    let mut client = Proc::spawn_stdin("submit", cmd, std::process::Stdio::piped());
    let url = monitor_url(&client);
    // Two long jobs from the args file, which stays open: more lines may come.
    let mut stdin = client.child.stdin.take().expect("piped");
    writeln!(stdin, "long\nlong").unwrap();
    stdin.flush().unwrap();
    let running = wait_until(Duration::from_secs(30), || {
        let status: serde_json::Value =
            serde_json::from_str(&request(&url.host, "GET", "/api/status", &[]).body).unwrap();
        status["counts"]["running"] == 2
    });
    assert!(running, "the two jobs did not start\n{}", client.stderr());
    let header = format!("x-dispy-token: {}", url.token);
    assert_eq!(request(&url.host, "POST", "/api/cancel", &[&header]).status, 202);
    // The run ends with its input still open: what was not read yet runs no job.
    let out = client.wait(Duration::from_secs(20));
    out.expect_code(1);
    assert!(out.stderr.contains("the rest of --args-file is not read"), "{}", out.stderr);
    let lines = out.json_lines();
    let jobs: Vec<_> = lines.iter().filter(|l| l.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 2, "{lines:?}");
    assert!(jobs.iter().all(|j| j["status"] == "cancelled"), "{lines:?}");
    assert_eq!(lines.last().unwrap()["statuses"]["cancelled"], 2, "{lines:?}");
    drop((stdin, w1));
}

#[test]
fn a_web_address_in_use_stops_the_run_before_any_node_is_contacted() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", JOB);
    let mut cmd = submit(&prog);
    cmd.args(["--web", &addr]);
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(2);
    assert!(out.stderr.contains(&format!("cannot serve the web monitor on {addr}")), "{}", out.stderr);
    let mut cmd = submit(&prog);
    cmd.args(["--web", "localhost:80"]);
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(2);
    assert!(out.stderr.contains("not a web monitor address"), "{}", out.stderr);
}
