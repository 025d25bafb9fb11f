//! Test harness: real `dispy-peer` processes, killed by PID on drop, and network
//! namespaces deleted on drop. Nothing here sends traffic outside 127.0.0.0/8 or the
//! namespaces a test made.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dispy-peer")
}

/// An example's executable; `cargo test --workspace` builds examples beside the test binary.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let path = exe.parent().and_then(|d| d.parent()).expect("target dir").join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace`, which builds examples/",
        path.display()
    );
    path
}

/// A running process, killed (TERM, then KILL) by PID when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr captured in the background.
    pub fn spawn(name: &str, cmd: Command) -> Proc {
        Proc::spawn_stdin(name, cmd, Stdio::null())
    }

    /// As [`Proc::spawn`], with this stdin (`Stdio::piped()`: write to `child.stdin`).
    pub fn spawn_stdin(name: &str, mut cmd: Command, stdin: Stdio) -> Proc {
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Clients remember large files' hashes in the user's cache: the tests' go here.
        cmd.env("XDG_CACHE_HOME", std::env::temp_dir().join("dispy-peer-tests-cache"));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let buf = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                buf.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().expect("piped");
        let buf = stderr.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Proc { child, name: name.to_string(), stdout, stderr, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a stdout line starting with `prefix`.
    pub fn wait_line(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} printed no line starting with {prefix:?} within {within:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                ),
            }
        }
    }

    /// Waits until stdout contains `needle`.
    pub fn wait_stdout(&self, needle: &str, within: Duration) -> bool {
        wait_until(within, || self.stdout().contains(needle))
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, within: Duration) -> bool {
        wait_until(within, || self.stderr().contains(needle))
    }

    /// Waits for the process to exit, killing it past `within`.
    pub fn wait(self, within: Duration) -> Finished {
        self.wait_progressing(within, within)
    }

    /// Waits for the process to exit, killing it once its stdout has not grown for `stall`
    /// or past `cap`: for a long run whose pace depends on the machine's load (a bound on
    /// progress, not a speed test).
    pub fn wait_progressing(mut self, stall: Duration, cap: Duration) -> Finished {
        let start = Instant::now();
        let (mut seen, mut moved) = (0, start);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            let now = Instant::now();
            let len = self.stdout.lock().unwrap().len();
            if len != seen {
                (seen, moved) = (len, now);
            }
            if now - moved > stall || now - start > cap {
                let _ = self.child.kill();
                let out = self.stdout();
                let mut from = out.len().saturating_sub(TAIL);
                while !out.is_char_boundary(from) {
                    from += 1;
                }
                let tail = &out[from..];
                panic!(
                    "{} did not finish: {:?} since its last output, {:?} in all (bounds {stall:?} and {cap:?})\n\
                     --- stdout ({} bytes, its end) ---\n{tail}\n--- stderr ---\n{}",
                    self.name,
                    now - moved,
                    now - start,
                    out.len(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Give the reader threads a moment to drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        Finished { code: status.code(), stdout: self.stdout(), stderr: self.stderr(), name: self.name.clone() }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(self, within: Duration) -> Finished {
        signal(self.pid(), SIGTERM);
        self.wait(within)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How much of a process's stdout a failure shows (its end).
const TAIL: usize = 64 << 10;

/// The signal a service is stopped with.
const SIGTERM: &str = "TERM";

/// Polls `done` until it holds (true) or `within` passes (false).
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal to one PID (never by name).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// A finished process.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub name: String,
}

impl Finished {
    /// Asserts the exit code, dumping the output if it differs.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{} exited {:?}, expected {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The JSON lines of stdout (`submit --json`).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }
}

/// A scratch directory removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("dispy-test-").tempdir().expect("tempdir")
}

/// Options of a test node.
pub struct NodeOpts {
    pub name: String,
    pub cpus: u32,
    pub secret: Option<String>,
    pub listen: String,
    pub extra: Vec<String>,
    /// Run inside this network namespace (mDNS allowed there).
    pub netns: Option<String>,
}

impl NodeOpts {
    pub fn new(name: &str) -> Self {
        NodeOpts {
            name: name.into(),
            cpus: 2,
            secret: Some("test-secret".into()),
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            extra: Vec::new(),
            netns: None,
        }
    }

    /// A node of 1 CPU inside the namespace `host`, listening on every address at port 9700
    /// (what [`Node::serve_in`] starts).
    pub fn in_netns(host: &str, name: &str, extra: &[&str]) -> Self {
        let mut o = NodeOpts::new(name);
        o.netns = Some(host.to_string());
        o.cpus = 1;
        o.listen = "/ip4/0.0.0.0/tcp/9700".into();
        o.extra = extra.iter().map(|s| s.to_string()).collect();
        o
    }
}

/// A `dispy-peer serve` process. Dropping it stops the node with SIGTERM and checks
/// that it exited 0 and left no job directory behind.
pub struct Node {
    pub proc: Proc,
    pub addr: String,
    pub dest: PathBuf,
}

impl Node {
    /// SIGTERM, then wait (KILL past 10 s). Returns the exit code (`None`: killed by a
    /// signal, e.g. by the test itself).
    pub fn stop(&mut self) -> Option<i32> {
        if let Ok(Some(status)) = self.proc.child.try_wait() {
            return status.code();
        }
        signal(self.proc.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        panic!("{} ignored SIGTERM for 10 s\n{}", self.proc.name, self.proc.stderr());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let code = self.stop();
        if std::thread::panicking() {
            return;
        }
        if code.is_some() {
            assert_eq!(code, Some(0), "{} exited {code:?} on SIGTERM\n{}", self.proc.name, self.proc.stderr());
            assert!(!self.dest.join("jobs").exists(), "{} left job directories behind", self.proc.name);
        }
    }
}

impl Node {
    /// A node of 1 CPU inside the namespace `host`, listening on every address at port 9700.
    pub fn serve_in(host: &str, name: &str, dir: &Path, extra: &[&str]) -> Node {
        Node::start(dir, NodeOpts::in_netns(host, name, extra))
    }

    pub fn start(dir: &Path, o: NodeOpts) -> Node {
        let (proc, dest) = Node::spawn(dir, &o);
        Node::ready(proc, dest)
    }

    /// Starts every node at once, then waits for each to listen: many nodes start in about
    /// the time of one.
    pub fn start_all(dir: &Path, opts: Vec<NodeOpts>) -> Vec<Node> {
        let started: Vec<(Proc, PathBuf)> = opts.iter().map(|o| Node::spawn(dir, o)).collect();
        started.into_iter().map(|(proc, dest)| Node::ready(proc, dest)).collect()
    }

    /// Waits for a spawned node's listening line.
    fn ready(proc: Proc, dest: PathBuf) -> Node {
        let line = proc.wait_line("listening ", Duration::from_secs(20));
        let addr = line.trim_start_matches("listening ").to_string();
        Node { proc, addr, dest }
    }

    /// Starts a node's process without waiting for it.
    fn spawn(dir: &Path, o: &NodeOpts) -> (Proc, PathBuf) {
        let dest = dir.join(format!("node-{}", o.name));
        let mut cmd = match &o.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin()]);
                c
            }
            None => Command::new(bin()),
        };
        cmd.args(["serve", "--name", &o.name, "--cpus", &o.cpus.to_string(), "--listen", &o.listen]);
        // A test's SIGTERM should not wait the default minute for running jobs.
        if !o.extra.iter().any(|a| a == "--drain-timeout") {
            cmd.args(["--drain-timeout", "1"]);
        }
        cmd.arg("--dest-path").arg(&dest);
        if o.netns.is_none() {
            // mDNS never runs in the machine's own network namespace.
            cmd.arg("--no-mdns");
        }
        if let Some(s) = &o.secret {
            cmd.args(["--secret", s]);
        }
        cmd.args(&o.extra);
        cmd.env("RUST_LOG", "warn,libp2p_kad=error,dispy=debug,dispy_node=debug").env_remove("DISPY_SECRET");
        (Proc::spawn(&format!("node {}", o.name), cmd), dest)
    }

    /// Job directories still present under the node's dest path.
    pub fn job_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(clusters) = std::fs::read_dir(self.dest.join("jobs")) {
            for c in clusters.flatten() {
                out.push(c.path());
            }
        }
        out
    }
}

/// Kills a node and its frozen client together (a node crash while its results wait for
/// the client), then starts the node again at `listen` on the same dest path.
pub fn crash_and_restart(first: Node, client: Proc, dir: &Path, name: &str, listen: String) -> Node {
    signal(first.proc.pid(), "KILL");
    signal(client.pid(), "KILL");
    signal(client.pid(), "CONT");
    drop(client);
    drop(first);
    let mut o = NodeOpts::new(name);
    o.listen = listen;
    Node::start(dir, o)
}

/// A `submit` command line with the test defaults (no mDNS, the test secret).
pub fn submit(program: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("submit").arg(program).args(["--no-mdns", "--secret", "test-secret"]);
    cmd.env("RUST_LOG", "warn,libp2p_kad=error,dispy=debug,dispy_node=debug").env_remove("DISPY_SECRET");
    cmd
}

/// Runs a command to its end (bounded), capturing its output.
pub fn run(name: &str, cmd: Command, within: Duration) -> Finished {
    Proc::spawn(name, cmd).wait(within)
}

/// Writes an executable script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A loopback listen address on a port free right now, for a node that must start (or
/// restart) at an address known in advance.
pub fn free_loopback_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    format!("/ip4/127.0.0.1/tcp/{}", l.local_addr().expect("local addr").port())
}

/// Pid files under `dir` for jobs that write `$$` to their first argument.
pub fn pid_files(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| dir.join(format!("job{i}.pid"))).collect()
}

/// Waits until every pid file is written (the jobs have started); returns the pids.
pub fn wait_pids(files: &[PathBuf], within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    let read = |p: &PathBuf| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u32>().ok());
    while !files.iter().all(|p| read(p).is_some()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    files.iter().map(|p| read(p).unwrap_or_else(|| panic!("job writing {} never started", p.display()))).collect()
}

/// Whether a PID is still a live process (a zombie counts as dead).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

static NS_SEQ: AtomicU32 = AtomicU32::new(0);

/// Network namespaces made by a test, deleted (with everything in them) on drop.
pub struct Netns {
    pub names: Vec<String>,
    pub prefix: String,
}

/// Fails (never skips) with what is missing when namespaces cannot be made.
pub fn require_netns() {
    let ok = Command::new("ip").arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(ok, "this test needs iproute2's `ip` (apt-get install -y iproute2); .ci/run installs it");
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.to_string()))
        .unwrap_or_default();
    assert!(
        uid.split_whitespace().nth(1) == Some("0"),
        "this test creates network namespaces and must run as root (CI does); got {uid}"
    );
}

impl Netns {
    pub fn new() -> Netns {
        require_netns();
        let prefix = format!("dpt{}x{}", std::process::id() % 100000, NS_SEQ.fetch_add(1, Ordering::SeqCst));
        Netns { names: Vec::new(), prefix }
    }

    /// Runs `ip ARGS`, panicking with its stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    /// Adds a namespace `<prefix>-<name>` with loopback up; returns its full name.
    pub fn add(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        self.ip(&["netns", "add", &full]);
        self.names.push(full.clone());
        self.ip(&["-n", &full, "link", "set", "lo", "up"]);
        full
    }

    /// Adds a bridge namespace (a LAN switch) and returns its name.
    pub fn add_lan(&mut self, name: &str) -> String {
        let ns = self.add(name);
        self.ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        self.ip(&["-n", &ns, "link", "set", "br0", "up"]);
        ns
    }

    /// Adds a host namespace plugged into `lan` as `ifname` with `cidr`.
    pub fn add_host(&mut self, name: &str, lan: &str, ifname: &str, cidr: &str) -> String {
        let ns = self.add(name);
        self.plug(&ns, lan, ifname, cidr);
        ns
    }

    /// Plugs an existing namespace into `lan` with another interface.
    pub fn plug(&self, ns: &str, lan: &str, ifname: &str, cidr: &str) {
        let port = format!("p{}", NS_SEQ.fetch_add(1, Ordering::SeqCst));
        self.ip(&["-n", lan, "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", ns]);
        self.ip(&["-n", lan, "link", "set", &port, "master", "br0"]);
        self.ip(&["-n", lan, "link", "set", &port, "up"]);
        self.ip(&["-n", ns, "addr", "add", cidr, "dev", ifname]);
        self.ip(&["-n", ns, "link", "set", ifname, "up"]);
    }

    /// Runs `ip [-n NS] -batch -` with `lines` as its commands, panicking with its stderr on
    /// failure: hundreds of changes in one process.
    pub fn ip_batch(&self, ns: Option<&str>, lines: &str) {
        use std::io::Write;
        let mut cmd = Command::new("ip");
        if let Some(ns) = ns {
            cmd.args(["-n", ns]);
        }
        cmd.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run ip -batch");
        child.stdin.take().expect("piped").write_all(lines.as_bytes()).expect("write to ip -batch");
        let out = child.wait_with_output().expect("wait for ip -batch");
        assert!(out.status.success(), "ip -batch in {ns:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Adds many host namespaces at once, `(name, cidr)` each, plugged into `lan` as `eth0`;
    /// returns their full names. Each host knows every other host's MAC address (permanent
    /// neighbour entries, as for multicast DNS's group) because the kernel keeps ONE IPv4
    /// neighbour table for all namespaces, its learnt entries capped machine-wide
    /// (`net.ipv4.neigh.default.gc_thresh3`, 1024): a few dozen namespaces that talk to each
    /// other fill it and lose packets, where machines on a real LAN each have their own.
    pub fn add_lan_hosts(&mut self, lan: &str, hosts: &[(String, String)]) -> Vec<String> {
        let names: Vec<String> = hosts.iter().map(|(n, _)| format!("{}-{n}", self.prefix)).collect();
        let adds: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        self.ip_batch(None, &adds);
        self.names.extend(names.iter().cloned());
        let macs: Vec<String> = names
            .iter()
            .map(|_| {
                let [a, b, c, d] = NS_SEQ.fetch_add(1, Ordering::SeqCst).to_be_bytes();
                format!("02:83:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
            })
            .collect();
        let mut plugs = String::new();
        for (ns, mac) in names.iter().zip(&macs) {
            let port = format!("p{}", NS_SEQ.fetch_add(1, Ordering::SeqCst));
            plugs += &format!("link add {port} type veth peer name eth0 address {mac} netns {ns}\n");
            plugs += &format!("link set {port} master br0\nlink set {port} up\n");
        }
        self.ip_batch(Some(lan), &plugs);
        let mut neighbours =
            String::from("neigh replace 224.0.0.251 lladdr 01:00:5e:00:00:fb dev eth0 nud permanent\n");
        for ((_, cidr), mac) in hosts.iter().zip(&macs) {
            let ip = cidr.split('/').next().unwrap_or(cidr);
            neighbours += &format!("neigh replace {ip} lladdr {mac} dev eth0 nud permanent\n");
        }
        for (ns, (_, cidr)) in names.iter().zip(hosts) {
            let setup = format!("link set lo up\naddr add {cidr} dev eth0\nlink set eth0 up\n{neighbours}");
            self.ip_batch(Some(ns), &setup);
        }
        names
    }

    /// A command run inside namespace `ns`.
    pub fn exec(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Namespaces whose names start with `prefix` (to check cleanup).
pub fn netns_left(prefix: &str) -> Vec<String> {
    let out =
        Command::new("ip").args(["netns", "list"]).output().map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    out.unwrap_or_default().lines().filter(|l| l.starts_with(&format!("{prefix}-"))).map(|l| l.to_string()).collect()
}
