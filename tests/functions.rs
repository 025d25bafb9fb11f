//! Rust functions as computations: the client's executable (`examples/fn_testbed.rs`) is
//! staged to real node processes and run there as persistent workers.

use crate::util::*;
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

/// The testbed example.
fn testbed() -> std::path::PathBuf {
    example("fn_testbed")
}

fn scenario(nodes: &[&Node], args: &[&str], extra_env: &[(&str, &str)]) -> Finished {
    let mut cmd = Command::new(testbed());
    cmd.args(args)
        .env("DISPY_SECRET", "test-secret")
        .env("DISPY_PEERS", nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(" "))
        .env("RUST_LOG", "warn");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    run(args[0], cmd, Duration::from_secs(120))
}

#[test]
fn a_thousand_function_jobs_on_three_nodes_each_with_its_own_output() {
    let dir = tempdir();
    let nodes: Vec<Node> = ["fa", "fb", "fc"].iter().map(|n| Node::start(dir.path(), NodeOpts::new(n))).collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    let out = scenario(&refs, &["many", "1000"], &[("DISPY_WAIT_NODES", "3")]);
    out.expect_code(0);
    let lines = out.json_lines();
    let mut per_node: HashMap<String, u64> = HashMap::new();
    let mut ids = HashSet::new();
    for j in lines.iter().filter(|l| l.get("job").is_some()) {
        let i = j["input"].as_u64().unwrap();
        assert!(ids.insert(j["job"].as_u64().unwrap()));
        assert_eq!(j["value"].as_u64(), Some(i * i), "{j}");
        assert_eq!(j["stdout"], format!("job {i} says hello\n"), "stdout is the job's own: {j}");
        assert_eq!(j["stderr"], format!("job {i} on stderr\n"), "{j}");
        *per_node.entry(j["node"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(ids.len(), 1000);
    assert_eq!(per_node.len(), 3, "all nodes used: {per_node:?}");
    let stats = &lines.last().unwrap()["stats"];
    for n in stats["nodes"].as_array().unwrap() {
        let name = n["node"]["name"].as_str().unwrap();
        assert_eq!(n["jobs"].as_u64().unwrap(), per_node[name], "stats agree with the jobs for {name}");
    }
}

#[test]
fn a_panic_fails_its_job_with_message_and_trace_and_others_go_on() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("p"));
    let out = scenario(&[&node], &["panic"], &[]);
    out.expect_code(0);
    let lines = out.json_lines();
    assert!(lines[0]["panicked"].as_str().unwrap().contains("odd number 3"), "{}", out.stdout);
    assert!(lines[0]["trace_lines"].as_u64().unwrap() > 3, "a backtrace came back: {}", out.stdout);
    assert_eq!(lines[1]["even"], 4);
}

#[test]
fn a_dead_worker_fails_its_job_and_is_replaced() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("c"));
    let out = scenario(&[&node], &["crash"], &[]);
    out.expect_code(0);
    let lines = out.json_lines();
    assert!(lines[0]["crash"].as_str().unwrap().contains("worker process died"), "{}", out.stdout);
    assert_eq!(lines[1]["after"], 5);
}

#[test]
fn cancel_kills_a_running_job_within_a_second_and_the_slot_is_reused() {
    let dir = tempdir();
    let mut o = NodeOpts::new("k");
    o.cpus = 1;
    let node = Node::start(dir.path(), o);
    let out = scenario(&[&node], &["cancel"], &[]);
    out.expect_code(0);
    let lines = out.json_lines();
    assert_eq!(lines[0]["cancelled"], true, "{}", out.stdout);
    assert!(lines[0]["cancel_ms"].as_u64().unwrap() < 1000, "{}", out.stdout);
    assert_eq!(lines[1]["next"], 10, "the single slot took the next job");
}

#[test]
fn a_job_past_its_timeout_is_killed() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("t"));
    let out = scenario(&[&node], &["timeout"], &[]);
    out.expect_code(0);
    let line = &out.json_lines()[0];
    assert_eq!(line["timed_out"], true, "{}", out.stdout);
    assert!(line["ms"].as_u64().unwrap() < 5000, "{}", out.stdout);
}

#[test]
fn the_status_callback_sees_every_transition_in_order() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("cb"));
    let out = scenario(&[&node], &["callbacks"], &[]);
    out.expect_code(0);
    let line = &out.json_lines()[0];
    assert_eq!(line["jobs"], 20);
    let mut per_job: HashMap<u64, Vec<String>> = HashMap::new();
    for t in line["transitions"].as_array().unwrap() {
        per_job.entry(t[0].as_u64().unwrap()).or_default().push(t[1].as_str().unwrap().to_string());
    }
    assert_eq!(per_job.len(), 20);
    for (id, seen) in per_job {
        assert_eq!(seen, ["created", "running", "finished"], "job {id}");
    }
    let events = line["cluster_events"].as_array().unwrap();
    assert!(events.iter().any(|e| e.as_str().unwrap().starts_with("NodeReady")), "{events:?}");
}

#[test]
fn a_node_filter_picks_nodes_by_their_facts() {
    let dir = tempdir();
    let a = Node::start(dir.path(), NodeOpts::new("small"));
    let b = Node::start(dir.path(), NodeOpts::new("chosen"));
    let out = scenario(&[&a, &b], &["filter", "chosen"], &[]);
    out.expect_code(0);
    let lines = out.json_lines();
    let jobs: Vec<_> = lines.iter().filter(|l| l.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 10);
    assert!(jobs.iter().all(|j| j["node"] == "chosen"), "{}", out.stdout);
    let nodes = lines.last().unwrap()["nodes"].as_array().unwrap().clone();
    let small = nodes.iter().find(|n| n["node"]["name"] == "small").expect("the other node is listed");
    assert!(small["status"].as_str().unwrap().contains("node filter"), "{small}");
}

#[test]
fn a_node_lost_mid_run_loses_no_job_of_a_reentrant_function_cluster() {
    let dir = tempdir();
    let stays = Node::start(dir.path(), NodeOpts::new("stays"));
    let mut o = NodeOpts::new("dies");
    o.extra = vec!["-v".into()];
    let dies = Node::start(dir.path(), o);
    let mut cmd = Command::new(testbed());
    cmd.args(["sleepy", "40", "300"])
        .env("DISPY_SECRET", "test-secret")
        .env("DISPY_PEERS", format!("{} {}", stays.addr, dies.addr))
        .env("DISPY_REENTRANT", "1")
        .env("RUST_LOG", "warn");
    let client = Proc::spawn("fn_testbed sleepy", cmd);
    // Mid-run: once two of its jobs have ended (and their results had time to travel),
    // while it holds more.
    let t = std::time::Instant::now();
    while dies.proc.stderr().matches("job ended").count() < 2 {
        assert!(t.elapsed() < Duration::from_secs(60), "no job ended on the node:\n{}", dies.proc.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    signal(dies.proc.pid(), "KILL");
    let out = client.wait(Duration::from_secs(120));
    out.expect_code(0);
    let jobs: Vec<_> = out.json_lines().into_iter().filter(|l| l.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 40);
    assert!(jobs.iter().all(|j| j["value"] == 300), "every job returned: {}", out.stdout);
    let on_dies = jobs.iter().filter(|j| j["node"] == "dies").count();
    assert!(on_dies > 0 && on_dies < 20, "the node died mid-run (it finished {on_dies} jobs first): {}", out.stdout);
    drop(stays);
}

#[test]
fn the_blocking_api_runs_jobs_from_synchronous_code() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("b"));
    let out = scenario(&[&node], &["blocking"], &[]);
    out.expect_code(0);
    let line = &out.json_lines()[0];
    assert_eq!(line["values"], serde_json::json!([0, 1, 4, 9, 16]), "{}", out.stdout);
    assert_eq!(line["jobs"], 5);
}

/// An application that blocks its own runtime thread for longer than the heartbeat window
/// (here 3 s against 1.5 s on both sides) loses nothing: the cluster's peer runs on a
/// thread of its own and keeps answering the node.
#[test]
fn an_application_blocking_its_runtime_does_not_silence_the_cluster() {
    let dir = tempdir();
    let mut o = NodeOpts::new("patient");
    o.extra = vec!["--heartbeat".into(), "0.5".into()];
    let node = Node::start(dir.path(), o);
    let out = scenario(&[&node], &["stall"], &[]);
    out.expect_code(0);
    let lines = out.json_lines();
    assert_eq!(lines[0]["value"], 1500, "{}\n{}", out.stdout, out.stderr);
    assert!(!node.proc.stderr().contains("stopped answering heartbeats"), "{}", node.proc.stderr());
    drop(node);
}

#[test]
fn close_waits_for_running_jobs_and_a_close_timeout_cancels_them() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("cl"));
    let out = scenario(&[&node], &["close"], &[]);
    out.expect_code(0);
    let line = &out.json_lines()[0];
    assert!(line["close_ms"].as_u64().unwrap() >= 700, "close returned before the jobs ended: {line}");
    for job in line["jobs"].as_array().unwrap() {
        assert_eq!(job["value"], 1000, "the real result, not a kill: {line}");
    }
    assert_eq!(line["done"], 2, "{line}");

    let out = scenario(&[&node], &["close", "200"], &[]);
    out.expect_code(0);
    let line = &out.json_lines()[0];
    let ms = line["close_ms"].as_u64().unwrap();
    assert!((150..900).contains(&ms), "close waited its timeout, then cancelled at once: {line}");
    for job in line["jobs"].as_array().unwrap() {
        assert_eq!(job["cancelled"], true, "{line}");
    }
}
