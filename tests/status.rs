//! `dispy-peer status`: each node's CPUs busy, clients, queued jobs, load average, free
//! memory and disk, as the node reports them in its Hello.

use crate::util::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn status(node: &Node, json: bool) -> Finished {
    let mut cmd = Command::new(bin());
    cmd.args(["status", "--no-mdns", "--secret", "test-secret", "--discover-timeout", "2", "--peer", &node.addr]);
    if json {
        cmd.arg("--json");
    }
    cmd.env("RUST_LOG", "error").env_remove("DISPY_SECRET");
    let out = run("status", cmd, Duration::from_secs(30));
    out.expect_code(0);
    out
}

#[test]
fn status_shows_what_a_real_node_is_doing_and_has_free() {
    let dir = tempdir();
    let node = Node::start(dir.path(), NodeOpts::new("busy"));
    // Idle: no client, nothing queued; the machine's figures are there.
    let idle = status(&node, true).json_lines();
    assert_eq!(idle.len(), 1, "{idle:?}");
    let load = &idle[0]["load"];
    assert_eq!((load["clients"].as_u64(), load["jobs_queued"].as_u64()), (Some(0), Some(0)), "{load}");
    assert!(load["load_avg"].as_f64().is_some_and(|a| a >= 0.0), "{load}");
    assert!(load["memory_free_bytes"].as_u64().is_some_and(|b| b > 0), "{load}");
    assert!(load["disk_free_bytes"].as_u64().is_some_and(|b| b > 0), "{load}");
    assert_eq!(idle[0]["free_cpus"], 2, "{}", idle[0]);

    // A client with three long jobs on the node's two CPUs: both busy, one queued.
    let prog = script(dir.path(), "hold.sh", "echo $$ > \"$1\"; exec sleep 60");
    let pids = pid_files(dir.path(), 3);
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr]);
    for p in &pids {
        cmd.arg("-a").arg(p);
    }
    let client = Proc::spawn("submit", cmd);
    wait_pids(&pids[..1], Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    let busy = loop {
        let now = status(&node, true).json_lines().remove(0);
        let l = &now["load"];
        if now["free_cpus"] == 0 && l["clients"] == 1 && l["jobs_queued"] == 1 {
            break now;
        }
        assert!(Instant::now() < deadline, "status never showed 2 busy, 1 client, 1 queued: {now}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(busy["cpus"], 2, "{busy}");

    // For people: a table with the same figures.
    let text = status(&node, false).stdout;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    for col in ["cpus busy", "clients", "queued", "load", "mem free", "disk free"] {
        assert!(header.contains(col), "{col} missing:\n{text}");
    }
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..4], ["busy", "2/2", "1", "1"], "{text}");
    assert!(row.iter().any(|w| w.ends_with("iB")), "{text}");
    drop(client);
}
