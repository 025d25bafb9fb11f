//! `serve --metrics`: after a known run, `/metrics` parsed as Prometheus parses it holds
//! counters equal to the jobs run, by outcome, and libp2p's own series.

use crate::util::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

/// `GET /metrics` over plain HTTP/1.1; the body.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP header end: {raw}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    body.to_string()
}

/// The value of the sample `name` with the label `outcome` (if given); 0 when absent.
fn value(scrape: &prometheus_parse::Scrape, name: &str, outcome: Option<&str>) -> f64 {
    let found =
        scrape.samples.iter().find(|s| s.metric == name && outcome.is_none_or(|o| s.labels.get("outcome") == Some(o)));
    match found.map(|s| &s.value) {
        Some(
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v),
        ) => *v,
        Some(other) => panic!("{name}: unexpected value {other:?}"),
        None => 0.0,
    }
}

fn parse(body: &str) -> prometheus_parse::Scrape {
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{body}"))
}

#[test]
fn metrics_count_the_jobs_run_by_outcome_and_carry_libp2p_series() {
    let dir = tempdir();
    let mut o = NodeOpts::new("metered");
    o.extra = vec!["--metrics".into(), "127.0.0.1:0".into()];
    let node = Node::start(dir.path(), o);
    // Printed before the listening line Node::start waited for.
    let out = node.proc.stdout();
    let line =
        out.lines().find(|l| l.starts_with("metrics ")).unwrap_or_else(|| panic!("no metrics line: {out}")).to_string();
    let url = line.trim_start_matches("metrics ");
    let addr = url.trim_start_matches("http://").trim_end_matches("/metrics").to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");

    // Before any client: the slots, nothing run, the uptime ticking.
    let idle = parse(&scrape(&addr));
    assert_eq!(value(&idle, "dispy_cpu_slots", None), 2.0);
    assert_eq!(value(&idle, "dispy_jobs_started_total", None), 0.0);

    // 5 jobs exit 0, 2 exit 1, 1 runs past --timeout.
    let body = "case \"$1\" in slow) exec sleep 30;; fail) exit 1;; *) exit 0;; esac\n";
    let prog = script(dir.path(), "known.sh", body);
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "--timeout", "2"]);
    for arg in ["ok", "ok", "ok", "ok", "ok", "fail", "fail", "slow"] {
        cmd.args(["-a", arg]);
    }
    run("submit", cmd, Duration::from_secs(60)).expect_code(1);

    // A peer with another secret: a handshake failure.
    let mut wrong = Command::new(bin());
    wrong.args(["status", "--no-mdns", "--secret", "another", "--discover-timeout", "2", "--peer", &node.addr]);
    wrong.env("RUST_LOG", "error").env_remove("DISPY_SECRET");
    let refused = run("status with another secret", wrong, Duration::from_secs(30));
    assert_ne!(refused.code, Some(0), "a node with another secret answered");

    // Gauges are sampled every 100 ms: wait for the run's end to show.
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = parse(&scrape(&addr));
        if value(&m, "dispy_jobs_running", None) == 0.0 && value(&m, "dispy_handshake_failures_total", None) >= 1.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "running jobs or handshake failures never settled:\n{}", scrape(&addr));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(value(&m, "dispy_jobs_started_total", None), 8.0);
    assert_eq!(value(&m, "dispy_jobs_ended_total", Some("ok")), 5.0);
    assert_eq!(value(&m, "dispy_jobs_ended_total", Some("failed")), 2.0);
    assert_eq!(value(&m, "dispy_jobs_ended_total", Some("timed_out")), 1.0);
    assert_eq!(value(&m, "dispy_jobs_ended_total", Some("cancelled")), 0.0);
    let staged = std::fs::metadata(&prog).unwrap().len() as f64;
    assert_eq!(value(&m, "dispy_staged_bytes_total", None), staged, "the program, staged once");
    assert_eq!(value(&m, "dispy_cpu_slots", None), 2.0);
    assert!(value(&m, "dispy_uptime_seconds", None) > 0.0);
    // libp2p's swarm metrics: the client's connection, identify and ping traffic.
    assert!(value(&m, "libp2p_swarm_connections_established_total", None) >= 1.0, "{:?}", names(&m));
    for prefix in ["libp2p_identify_", "libp2p_ping_"] {
        assert!(names(&m).iter().any(|n| n.starts_with(prefix)), "no {prefix}* series: {:?}", names(&m));
    }
}

fn names(m: &prometheus_parse::Scrape) -> Vec<String> {
    let mut names: Vec<String> = m.samples.iter().map(|s| s.metric.clone()).collect();
    names.dedup();
    names
}

#[test]
fn a_metrics_port_in_use_is_a_clear_error() {
    let dir = tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--no-mdns", "--secret", "test-secret", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    cmd.arg("--dest-path").arg(dir.path().join("node")).args(["--metrics", &port]);
    cmd.env_remove("DISPY_SECRET");
    let out = run("serve --metrics busy", cmd, Duration::from_secs(20));
    out.expect_code(2);
    assert!(out.stderr.contains(&format!("--metrics: cannot listen on 127.0.0.1:{port}")), "{}", out.stderr);
    assert!(out.stderr.to_lowercase().contains("in use"), "{}", out.stderr);
}
