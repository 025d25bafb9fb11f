//! What a function job does beyond returning, on real nodes (`examples/fn_extras.rs`):
//! provisional results and files sent while it runs, and the workers' setup.

use crate::util::*;
use std::process::Command;
use std::time::Duration;

fn scenario(nodes: &[&Node], args: &[&str]) -> Finished {
    let mut cmd = Command::new(example("fn_extras"));
    cmd.args(args)
        .env("DISPY_SECRET", "test-secret")
        .env("DISPY_PEERS", nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(" "))
        .env("RUST_LOG", "warn");
    run(args[0], cmd, Duration::from_secs(120))
}

/// The bytes `reporter(x)` sends (as in the example).
fn report_bytes(x: u64) -> Vec<u8> {
    (0..70_000u32).map(|i| (i as u64 * 7 + x) as u8).collect()
}

#[test]
fn a_job_sends_provisional_values_in_order_and_a_file_before_its_result() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("prog"));
    let results = dir.path().join("results");
    let out = scenario(&[&node], &["progress", results.to_str().unwrap()]);
    out.expect_code(0);
    let line = &out.json_lines()[0];
    assert_eq!(line["value"], serde_json::json!({"Ok": 5}), "{}", out.stdout);
    assert_eq!(line["latest"], "step 2 of 5");
    assert!(line["outside"].as_str().unwrap().contains("only inside a function job"), "{line}");
    let events: Vec<(String, Option<String>)> = line["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_str().map(str::to_string)))
        .collect();
    let statuses: Vec<(&str, Option<&str>)> = events.iter().map(|(s, v)| (s.as_str(), v.as_deref())).collect();
    assert_eq!(
        statuses,
        [
            ("created", None),
            ("running", None),
            ("running", Some("step 1 of 5")),
            ("running", Some("step 2 of 5")),
            ("finished", None)
        ],
        "{line}"
    );
    let saved = results.join("0").join("report-5.txt");
    assert_eq!(line["returned"], serde_json::json!([saved.to_str().unwrap()]), "{line}");
    assert_eq!(std::fs::read(&saved).unwrap(), report_bytes(5), "byte-exact, as it was when sent");
    assert!(line["note"].is_null(), "{line}");
}

#[test]
fn a_file_sent_arrives_while_its_job_still_runs() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("early"));
    let results = dir.path().join("results");
    let out = scenario(&[&node], &["at-once", results.to_str().unwrap()]);
    out.expect_code(0);
    let line = &out.json_lines()[0];
    // The job saw the client's copy before it returned.
    assert_eq!(line["value"], serde_json::json!({"Ok": true}), "{}", out.stdout);
    let saved = results.join("0").join("early.txt");
    assert_eq!(line["returned"], serde_json::json!([saved.to_str().unwrap()]), "listed once: {line}");
    assert_eq!(std::fs::read(&saved).unwrap(), report_bytes(1));
}

#[test]
fn the_workers_setup_makes_state_the_jobs_read() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("su"));
    let base = dir.path().join("base.txt");
    std::fs::write(&base, "1000\n").unwrap();
    let out = scenario(&[&node], &["setup", base.to_str().unwrap()]);
    out.expect_code(0);
    let values: Vec<_> = out.json_lines().iter().map(|l| l["value"].clone()).collect();
    assert_eq!(values, [1001, 1002], "{}", out.stdout);
}

#[test]
fn a_failing_worker_setup_makes_its_node_unusable_with_its_message() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("badsetup"));
    let base = dir.path().join("base.txt");
    std::fs::write(&base, "fail").unwrap();
    let out = scenario(&[&node], &["setup", base.to_str().unwrap()]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("no usable dispy node"), "{all}");
    assert!(all.contains("worker setup failed: base.txt says fail"), "{all}");
}
