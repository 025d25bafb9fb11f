//! Jobs' own files both ways, with real nodes: inputs that travel only to their job's node
//! (`--each-file`) and files a job leaves that come back (`--return`).

use crate::util::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Compresses its one argument in place, as a user would: gzip refuses a file with other
/// hard links, replaces the file, and keeps its time.
const GZ: &str = r#"gzip -- "$1" && echo "gz $1""#;

/// Varied sizes (empty, small, a few of several chunks), some compressible; all different.
fn input(i: usize) -> Vec<u8> {
    let len = match i % 50 {
        0 => return Vec::new(),
        7 => 2 * 1024 * 1024 + 17,
        _ => (i * 7919) % 40_000,
    };
    let body = (0..len).map(|k| if i.is_multiple_of(2) { (k % 7) as u8 } else { ((k * 2654435761usize) >> 13) as u8 });
    format!("{i}:").into_bytes().into_iter().chain(body).collect()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = std::process::Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(out.status.success(), "gunzip {}", path.display());
    out.stdout
}

#[test]
fn each_file_goes_to_one_node_and_its_output_comes_back_byte_exact() {
    let dir = tempdir();
    let prog = script(dir.path(), "gz.sh", GZ);
    let inputs = dir.path().join("in");
    std::fs::create_dir(&inputs).unwrap();
    let mut sizes = HashMap::new();
    let mut paths = Vec::new();
    for i in 0..300 {
        let p = inputs.join(format!("f{i:03}.dat"));
        let data = input(i);
        sizes.insert(format!("f{i:03}.dat"), data.len() as u64);
        std::fs::write(&p, data).unwrap();
        paths.push(p);
    }
    let results = dir.path().join("results");
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::start(dir.path(), NodeOpts::new(n))).collect();
    let mut cmd = submit(&prog);
    cmd.arg("--each-file").args(&paths).args(["--return", "*.gz", "--json"]).arg("--results-dir").arg(&results);
    for n in &nodes {
        cmd.args(["--peer", &n.addr]);
    }
    let out = run("submit", cmd, Duration::from_secs(240));
    out.expect_code(0);
    let lines = out.json_lines();
    let (jobs, summary): (Vec<_>, Vec<_>) = lines.iter().partition(|v| v.get("job").is_some());
    assert_eq!(jobs.len(), 300, "{}", out.stderr);
    for j in &jobs {
        let id = j["job"].as_u64().unwrap();
        let name = j["args"][0].as_str().unwrap();
        assert_eq!(j["stdout"].as_str().unwrap(), format!("gz {name}\n"), "{j}");
        let returned = j["returned"].as_array().unwrap();
        assert_eq!(returned.len(), 1, "{j}");
        let path = results.join(id.to_string()).join(format!("{name}.gz"));
        assert_eq!(returned[0].as_str().unwrap(), path.to_str().unwrap());
        assert_eq!(gunzip(&path), std::fs::read(inputs.join(name)).unwrap(), "job {id}: {name}");
        assert!(!results.join(id.to_string()).join(name).exists(), "gzip replaced its input");
    }
    // Each input crossed once, to the node that ran its job; the program went to each node.
    let staged: u64 =
        summary[0]["summary"]["nodes"].as_array().unwrap().iter().map(|n| n["staged_bytes"].as_u64().unwrap()).sum();
    let per_node = summary[0]["summary"]["nodes"].as_array().unwrap().len() as u64;
    let inputs_total: u64 = sizes.values().sum();
    assert_eq!(staged, inputs_total + per_node * (GZ.len() as u64 + 11), "bytes staged");
    // A released cluster's inputs and returns leave the nodes' stores.
    drop(nodes);
}

#[test]
fn returns_over_the_limit_and_links_stay_behind_named_in_the_report() {
    let dir = tempdir();
    let job = r#"head -c 5000 /dev/zero > big.out; echo hi > small.out; ln -s /etc/passwd link.out; mkdir -p d/e; echo deep > d/e/x.out; exit 3"#;
    let prog = script(dir.path(), "job.sh", job);
    let mut o = NodeOpts::new("a");
    o.extra = vec!["--max-return".into(), "1000".into()];
    let node = Node::start(dir.path(), o);
    let results = dir.path().join("r");
    let mut cmd = submit(&prog);
    cmd.args(["--peer", &node.addr, "--return", "*.out", "--return", "**/x.out", "--json"])
        .arg("--results-dir")
        .arg(&results);
    let out = run("submit", cmd, Duration::from_secs(60));
    out.expect_code(1);
    let j = &out.json_lines()[0];
    assert_eq!(j["exit_code"], 3, "a failed job's files come back too: {j}");
    let returned: Vec<&str> = j["returned"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let want: Vec<String> =
        ["d/e/x.out", "small.out"].iter().map(|p| results.join("0").join(p).display().to_string()).collect();
    assert_eq!(returned, want, "{j}");
    assert_eq!(std::fs::read_to_string(results.join("0/small.out")).unwrap(), "hi\n");
    let note = j["return_note"].as_str().unwrap();
    assert!(note.contains("link.out: is a symbolic link"), "{note}");
    assert!(note.contains("--max-return of 1000 bytes, not returned: big.out"), "{note}");
    assert!(!results.join("0/big.out").exists() && !results.join("0/link.out").exists());
}

#[test]
fn a_large_returned_file_arrives_whole_with_memory_bounded_on_both_sides() {
    require_time();
    let dir = tempdir();
    const MB: u64 = 1024;
    let job = format!("head -c {} /dev/urandom > big.bin && sha256sum big.bin | cut -c1-64", MB << 20);
    let prog = script(dir.path(), "job.sh", &job);
    let node = Node::start(dir.path(), NodeOpts::new("a"));
    let results = dir.path().join("r");
    let rss = dir.path().join("client.rss");
    let mut cmd = std::process::Command::new("/usr/bin/time");
    cmd.arg("-f").arg("%M").arg("-o").arg(&rss).arg(bin());
    cmd.args(["submit"]).arg(&prog).args(["--no-mdns", "--secret", "test-secret", "--peer", &node.addr]);
    cmd.args(["--return", "big.bin", "--json"]).arg("--results-dir").arg(&results).env_remove("DISPY_SECRET");
    let out = run("submit", cmd, Duration::from_secs(180));
    out.expect_code(0);
    let j = &out.json_lines()[0];
    let node_sum = j["stdout"].as_str().unwrap().trim().to_string();
    let got = std::process::Command::new("sha256sum").arg(results.join("0/big.bin")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout)[..64], node_sum, "byte-exact");
    let client_kb: u64 = std::fs::read_to_string(&rss).unwrap().trim().parse().unwrap();
    let node_kb = vm_hwm_kb(node.proc.pid());
    assert!(client_kb < 100 * 1024, "client peak RSS {client_kb} kB moving {MB} MiB");
    assert!(node_kb < 100 * 1024, "node peak RSS {node_kb} kB moving {MB} MiB");
}

#[test]
fn a_missing_each_file_is_named_before_any_node_is_asked() {
    let dir = tempdir();
    let prog = script(dir.path(), "gz.sh", GZ);
    let mut cmd = submit(&prog);
    cmd.args(["--peer", "/ip4/127.0.0.1/tcp/9", "--each-file"]).arg(dir.path().join("nope.dat"));
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(2);
    assert!(out.stderr.contains("nope.dat"), "{}", out.stderr);
}

/// A process's peak resident memory, from `/proc`.
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn require_time() {
    assert!(
        Path::new("/usr/bin/time").exists(),
        "this test measures the client's peak memory with /usr/bin/time: apt-get install time (.ci/run does)"
    );
}

#[test]
fn a_node_killed_while_its_files_come_back_reruns_the_job_and_they_arrive_once() {
    let dir = tempdir();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    // Each run leaves a mark naming its node (its directory is under the node's dest
    // path, `node-<name>`), then a file large enough to take a while to come back.
    let job = format!(
        "n=${{PWD#*/node-}}; touch {}/${{n%%/*}}; head -c {} /dev/urandom > big.bin; sha256sum big.bin | cut -c1-64",
        marks.display(),
        200 << 20
    );
    let prog = script(dir.path(), "job.sh", &job);
    let results = dir.path().join("r");
    let nodes: Vec<Node> = ["a", "b"]
        .iter()
        .map(|n| {
            let mut o = NodeOpts::new(n);
            o.cpus = 1;
            Node::start(dir.path(), o)
        })
        .collect();
    let mut cmd = submit(&prog);
    cmd.args(["--reentrant", "--return", "big.bin", "--json"]).arg("--results-dir").arg(&results);
    for n in &nodes {
        cmd.args(["--peer", &n.addr]);
    }
    let client = Proc::spawn("submit", cmd);
    // Once a part file shows up, the fetch is under way: kill the node it comes from.
    assert!(wait_until(Duration::from_secs(60), || fetch_begun(&results)), "no fetch began\n{}", client.stderr());
    let first: Vec<String> =
        std::fs::read_dir(&marks).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(first.len(), 1, "one run so far: {first:?}");
    let victim = nodes.iter().position(|n| n.proc.name.ends_with(&first[0])).unwrap();
    signal(nodes[victim].proc.pid(), "KILL");
    let out = client.wait(Duration::from_secs(120));
    out.expect_code(0);
    let lines = out.json_lines();
    let jobs: Vec<_> = lines.iter().filter(|v| v.get("job").is_some()).collect();
    assert_eq!(jobs.len(), 1, "reported once: {}", out.stdout);
    let j = jobs[0];
    assert_ne!(j["node"].as_str().unwrap(), first[0], "re-run on the other node: {j}");
    let sum = std::process::Command::new("sha256sum").arg(results.join("0/big.bin")).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sum.stdout)[..64],
        *j["stdout"].as_str().unwrap().trim(),
        "the second run's file"
    );
    let left: Vec<_> = std::fs::read_dir(results.join("0")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "one file, no part left: {left:?}");
    drop(nodes);
}

#[test]
fn a_results_dir_that_cannot_be_made_is_named_before_any_job_runs() {
    let dir = tempdir();
    let prog = script(dir.path(), "job.sh", "touch ran");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a folder").unwrap();
    let mut cmd = submit(&prog);
    cmd.args(["--peer", "/ip4/127.0.0.1/tcp/9", "--return", "*"]).arg("--results-dir").arg(blocker.join("r"));
    let out = run("submit", cmd, Duration::from_secs(30));
    out.expect_code(2);
    assert!(out.stderr.contains("a-file/r"), "names the folder: {}", out.stderr);
}

#[test]
fn a_partition_during_a_return_delays_the_file_but_loses_nothing() {
    let dir = tempdir();
    let mut ns = Netns::new();
    let prefix = ns.prefix.clone();
    let lan = ns.add_lan("hub");
    let node_host = ns.add_host("node", &lan, "eth0", "10.81.0.1/24");
    let client_host = ns.add_host("client", &lan, "eth0", "10.81.0.2/24");
    let prog = script(
        dir.path(),
        "job.sh",
        &format!("head -c {} /dev/urandom > big.bin; sha256sum big.bin | cut -c1-64", 150 << 20),
    );
    let results = dir.path().join("r");
    {
        let _node = Node::serve_in(&node_host, "far", dir.path(), &["--no-mdns"]);
        let mut cmd = ns.exec(&client_host, bin());
        cmd.arg("submit").arg(&prog).args(["--json", "--no-mdns", "--secret", "test-secret"]);
        cmd.args(["--peer", "/ip4/10.81.0.1/tcp/9700", "--return", "big.bin"]).arg("--results-dir").arg(&results);
        cmd.env("RUST_LOG", "warn,libp2p_kad=error,dispy=debug").env_remove("DISPY_SECRET");
        let client = Proc::spawn("submit", cmd);
        assert!(wait_until(Duration::from_secs(60), || fetch_begun(&results)), "no fetch began\n{}", client.stderr());
        // Cut off for 3 s mid-transfer: shorter than the heartbeats' patience (about 8 s).
        ns.ip(&["-n", &node_host, "link", "set", "eth0", "down"]);
        std::thread::sleep(Duration::from_secs(3));
        ns.ip(&["-n", &node_host, "link", "set", "eth0", "up"]);
        let out = client.wait(Duration::from_secs(120));
        out.expect_code(0);
        let lines = out.json_lines();
        let jobs: Vec<_> = lines.iter().filter(|j| j.get("job").is_some()).collect();
        assert_eq!(jobs.len(), 1, "{}", out.stdout);
        let got = std::process::Command::new("sha256sum").arg(results.join("0/big.bin")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&got.stdout)[..64], *jobs[0]["stdout"].as_str().unwrap().trim());
        let left: Vec<_> = std::fs::read_dir(results.join("0")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "no part file left: {left:?}");
    }
    drop(ns);
    assert!(netns_left(&prefix).is_empty(), "namespaces left: {:?}", netns_left(&prefix));
}

/// Whether a returned file of job 0 is on its way into `results` (its part file exists).
fn fetch_begun(results: &Path) -> bool {
    let entries = std::fs::read_dir(results.join("0")).into_iter().flatten().flatten();
    entries.map(|e| e.file_name()).any(|n| n.to_string_lossy().starts_with(".dispy-part-"))
}
