//! [`ClusterBuilder`]: a cluster's options, and [`ClusterBuilder::start`], which hashes its
//! files, starts its peer and scheduler on a thread of their own and hands back the
//! [`Cluster`].

use crate::cluster::Cluster;
use crate::error::{Error, Result, Searched};
use crate::events::{ClusterCallback, ClusterEvent, JobCallback, JobEvent, NodeFacts, NodeFilter};
use crate::job::Decoder;
use crate::local::LocalNode;
use crate::scheduler::{Hooks, LocalMode, Scheduler, Settings};
use crate::secret::Secret;
use crate::select::NodePattern;
use crate::stage;
use dispy_node::net::{self, NetConfig};
use dispy_protocol::{ClusterId, OwnerToken, ShareToken};
use libp2p::Multiaddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Turns a job's argument into what travels: program arguments, or CBOR input.
pub(crate) type Encoder<A> = fn(&A) -> Result<(Vec<String>, Vec<u8>)>;

/// Options of a cluster; see [`Cluster::program`] and [`Cluster::function`].
#[must_use = "a cluster builder does nothing until `.start()`"]
pub struct ClusterBuilder<A, R> {
    program: PathBuf,
    function: Option<String>,
    encode: Encoder<A>,
    decode: Decoder<R>,
    on_job: Option<JobCallback>,
    on_cluster: Option<ClusterCallback>,
    node_filter: Option<NodeFilter>,
    files: Vec<PathBuf>,
    setup: Option<PathBuf>,
    cleanup: Option<PathBuf>,
    peers: Vec<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
    patterns: Vec<NodePattern>,
    secret: Secret,
    mdns: bool,
    fanout: bool,
    relay_limit: u64,
    discover_timeout: Duration,
    wait_nodes: Duration,
    local: LocalMode,
    cpus_per_node: Option<u32>,
    timeout: Option<Duration>,
    reentrant: bool,
    max_retries: u32,
    heartbeat: Duration,
    journal: Option<PathBuf>,
    returns: Vec<String>,
    results_dir: PathBuf,
    close_timeout: Option<Duration>,
    identity: Option<libp2p::identity::Keypair>,
    web: Option<std::net::SocketAddr>,
}

impl<A, R> ClusterBuilder<A, R> {
    /// Adds a dependency file, present in every job's directory under its base name. A
    /// directory brings the tree of its regular files under its base name (`data/a.txt`,
    /// `data/sub/b.bin`; empty directories are not sent, a symbolic link inside is an error).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    /// A program run once on each node before the cluster's first job there (dispy's
    /// `setup`), in the cluster's directory on that node, whose path it and every job get in
    /// `DISPY_CLUSTER_DIR` (beside the cluster's files, which it holds too; the node's name is
    /// in `DISPY_NODE_NAME`). Jobs start on a node only after its setup exited 0; a setup
    /// that fails (or runs past [`Self::timeout`]) makes that node unusable for the cluster,
    /// with the exit status and the end of its stderr as the reason, and its jobs go to the
    /// other nodes. Program clusters only.
    pub fn setup(mut self, program: impl Into<PathBuf>) -> Self {
        self.setup = Some(program.into());
        self
    }

    /// A program run on each node where the cluster was set up when the cluster releases
    /// it (closing, or the node deciding its client is gone), in `DISPY_CLUSTER_DIR`, for at
    /// most 30 s, before the cluster's directories are deleted (dispy's `cleanup`). Its
    /// failure is logged by the node. Program clusters only.
    pub fn cleanup(mut self, program: impl Into<PathBuf>) -> Self {
        self.cleanup = Some(program.into());
        self
    }

    /// Names a node by address (`/ip4/10.0.0.5/tcp/9700`, optionally with `/p2p/<id>`).
    pub fn peer(mut self, addr: Multiaddr) -> Self {
        self.peers.push(addr);
        self
    }

    /// A Kademlia bootstrap peer: nodes beyond the LAN are found through it.
    pub fn bootstrap(mut self, addr: Multiaddr) -> Self {
        self.bootstrap.push(addr);
        self
    }

    /// Uses only nodes matching this pattern (IP glob, peer id or name); repeatable.
    pub fn nodes(mut self, pattern: NodePattern) -> Self {
        self.patterns.push(pattern);
        self
    }

    /// The cluster's secret (default: none).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = secret;
        self
    }

    /// The client's lasting identity (default: a fresh one each run), for nodes that admit
    /// clients by peer id (`serve --allow-peer`); see
    /// [`dispy_node::net::identity::load_or_create`].
    pub fn identity(mut self, keypair: libp2p::identity::Keypair) -> Self {
        self.identity = Some(keypair);
        self
    }

    /// Look for nodes on the LAN by multicast DNS (default on).
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// Let nodes fetch the cluster's large files from each other (default on): the client
    /// sends each file about once, and each node after the first pulls it from the nodes
    /// that hold it (checked against its hash; a node that sends wrong bytes is named and
    /// passed over). Off: the client sends every node its copy, as dispy does.
    ///
    /// ```no_run
    /// # async fn f() -> dispy::Result<()> {
    /// let cluster = dispy::Cluster::program("./render.sh").file("scene.blend").fanout(false).start().await?;
    /// # drop(cluster); Ok(()) }
    /// ```
    pub fn fanout(mut self, on: bool) -> Self {
        self.fanout = on;
        self
    }

    /// What the client may send a node it reaches only through a relay (default 64 MiB, a
    /// relay's default allowance per connection): a node whose files add up to more is
    /// not used, and says why. Nodes reached directly or by hole punching are not bounded.
    ///
    /// ```no_run
    /// # async fn f() -> dispy::Result<()> {
    /// let cluster = dispy::Cluster::program("./render.sh").file("scene.blend").relay_limit(256 << 20).start().await?;
    /// # drop(cluster); Ok(()) }
    /// ```
    pub fn relay_limit(mut self, bytes: u64) -> Self {
        self.relay_limit = bytes;
        self
    }

    /// How long to look for a first node before falling back or failing (default 3 s).
    pub fn discover_timeout(mut self, t: Duration) -> Self {
        self.discover_timeout = t;
        self
    }

    /// Once the cluster has run jobs, how long to wait for a node to come back when every
    /// node is lost or unreachable (a switch reboot, a Wi-Fi roam), before the pending jobs
    /// are reported not run and the cluster fails with [`crate::Error::NoNodes`]. Default:
    /// 60 s, the nodes' zombie interval (how long a node keeps a gone client's jobs).
    /// [`Self::discover_timeout`] bounds the search for the first node only.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> dispy::Result<()> {
    /// let cluster = dispy::Cluster::program("./render.sh")
    ///     .wait_nodes(std::time::Duration::from_secs(300))
    ///     .start()
    ///     .await?;
    /// # drop(cluster); Ok(()) }
    /// ```
    pub fn wait_nodes(mut self, t: Duration) -> Self {
        self.wait_nodes = t;
        self
    }

    /// When to run an in-process node (default [`LocalMode::Fallback`]).
    pub fn local(mut self, mode: LocalMode) -> Self {
        self.local = mode;
        self
    }

    /// Uses at most this many CPUs of each node.
    pub fn cpus_per_node(mut self, cpus: u32) -> Self {
        self.cpus_per_node = Some(cpus);
        self
    }

    /// How often connections are pinged (default 4 s): a node silent for about twice this
    /// is lost, and its jobs re-queued or abandoned.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Brings back the files a job leaves that match `glob` (relative to its directory;
    /// `*` and `?` within a name, `**` for any depth), whatever the job's outcome: they are
    /// saved as `<results dir>/<job number>/<path>` and listed in its report
    /// ([`crate::JobReport::returned`]). Repeatable.
    pub fn returns(mut self, glob: impl Into<String>) -> Self {
        self.returns.push(glob.into());
        self
    }

    /// Where returned files are saved (default `./dispy-results`).
    pub fn results_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.results_dir = dir.into();
        self
    }

    /// Records the cluster and its jobs in `path` as they go, so that after a crash
    /// [`crate::recover`] can collect the results the nodes still hold.
    pub fn journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(path.into());
        self
    }

    /// How long [`Cluster::close`] waits for the jobs not ended yet before it cancels them
    /// (default: no limit, as dispy's `close()`: it waits as long as they run).
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = Some(t);
        self
    }

    /// Kills a job (its whole process group) that runs longer than this.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Re-runs a lost node's jobs elsewhere instead of abandoning them.
    pub fn reentrant(mut self, on: bool) -> Self {
        self.reentrant = on;
        self
    }

    /// With [`ClusterBuilder::reentrant`]: a job fails once this many nodes died while it
    /// ran on them (default 3), so a job that kills its node cannot take the cluster down.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n.max(1);
        self
    }

    /// Calls `f` at every job status change (created, running, and how it ended).
    pub fn on_job_status(mut self, f: impl Fn(&JobEvent) + Send + Sync + 'static) -> Self {
        self.on_job = Some(Arc::new(f));
        self
    }

    /// Uses only nodes for which `f` returns true (name, IP, OS/arch, CPUs, memory, and
    /// [`crate::NodeLoad`]: load average, free memory and disk as the node answered).
    ///
    /// # Examples
    /// ```no_run
    /// let b = dispy::Cluster::program("./job.sh")
    ///     .node_filter(|n| n.cpus >= 4 && n.memory_bytes.unwrap_or(0) >= 8 << 30);
    /// ```
    pub fn node_filter(mut self, f: impl Fn(&NodeFacts) -> bool + Send + Sync + 'static) -> Self {
        self.node_filter = Some(Arc::new(f));
        self
    }

    /// Serves a live web page of the cluster at `addr` (dispy's `httpd`): its nodes, its
    /// jobs (the running, the next queued, the latest ended, and counts of all), bytes
    /// staged and returned, updated as they change, with a cancel button per job and one
    /// for all. [`Cluster::web_url`] gives the address to open, with the token the cancel
    /// buttons need (see [`crate::web`]). Port 0 picks a free port. The monitor runs on a
    /// thread of its own and never makes the scheduler wait; it stops shortly after the
    /// cluster closes.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> dispy::Result<()> {
    /// let cluster = dispy::Cluster::program("./render.sh")
    ///     .web(dispy::web::parse_addr("8080")?)
    ///     .start()
    ///     .await?;
    /// eprintln!("watch it at {}", cluster.web_url().unwrap_or_default());
    /// # drop(cluster); Ok(()) }
    /// ```
    pub fn web(mut self, addr: std::net::SocketAddr) -> Self {
        self.web = Some(addr);
        self
    }

    /// Calls `f` when a node is found, ready, unusable (with the reason) or lost.
    pub fn on_cluster_status(mut self, f: impl Fn(&ClusterEvent) + Send + Sync + 'static) -> Self {
        self.on_cluster = Some(Arc::new(f));
        self
    }

    /// Hashes the files, joins the mesh and starts looking for nodes. The cluster's peer and
    /// scheduler run on a thread of their own, so they keep answering nodes' heartbeats even
    /// while the application blocks its runtime.
    ///
    /// Cancel safety: dropping the future before it completes stops what was started (the
    /// cluster's thread ends with its command channel; a local node started with
    /// [`LocalMode::Always`] stops with it).
    ///
    /// # Errors
    /// [`Error::File`] for a missing or unreadable program or file, or a results directory
    /// that cannot be made (no node is contacted),
    /// [`Error::Config`] / [`Error::Node`] for a bad secret, a job timeout nodes would refuse
    /// (over [`dispy_protocol::MAX_TIMEOUT_SECS`]) or network setup,
    /// [`Error::Start`] when its thread cannot start.
    pub async fn start(self) -> Result<Cluster<A, R>> {
        if self.function.is_some() && (self.setup.is_some() || self.cleanup.is_some()) {
            return Err(Error::Config("setup and cleanup programs are for program clusters".into()));
        }
        let timeout_secs = timeout_secs(self.timeout)?;
        let files = self.files.clone();
        let executables: Vec<PathBuf> =
            std::iter::once(&self.program).chain(&self.setup).chain(&self.cleanup).cloned().collect();
        let function = self.function.is_some();
        let (mut names, files) = tokio::task::spawn_blocking(move || {
            let mut executables = executables;
            if function && let Some(exe) = executables.first_mut() {
                *exe = crate::image::worker_image(exe);
            }
            let executables: Vec<&std::path::Path> = executables.iter().map(PathBuf::as_path).collect();
            stage::describe(&executables, &files)
        })
        .await
        .map_err(|e| Error::Start(format!("hashing files: {e}")))??;
        let cleanup_name = self.cleanup.is_some().then(|| names.pop()).flatten();
        let setup_name = self.setup.is_some().then(|| names.pop()).flatten();
        let program_name = names.pop().unwrap_or_default();
        if !self.returns.is_empty() {
            // A folder returned files cannot be saved in is known now, not after the jobs ran.
            let dir = self.results_dir.clone();
            std::fs::create_dir_all(&dir).map_err(|source| Error::File { path: dir, source })?;
        }
        let psk = self.secret.to_psk()?;
        // Known before the network starts: the embedded node serves this peer id alone.
        let keypair = self.identity.clone().unwrap_or_else(libp2p::identity::Keypair::generate_ed25519);
        let me = keypair.public().to_peer_id();
        let local = match self.local {
            LocalMode::Always => Some(LocalNode::start(psk, me).await?),
            _ => None,
        };
        let searched = Searched {
            mdns: self.mdns,
            peers: self.peers.clone(),
            bootstrap: self.bootstrap.clone(),
            local: local.is_some(),
            patterns: self.patterns.iter().map(|p| p.as_str().to_string()).collect(),
        };
        let cfg = NetConfig {
            keypair: Some(keypair),
            listen: listen_beyond_lan(&self.bootstrap),
            psk,
            mdns: self.mdns,
            bootstrap: self.bootstrap.clone(),
            peers: self.peers.clone(),
            kad_server: false,
            heartbeat: self.heartbeat,
            ..NetConfig::default()
        };
        let cluster = ClusterId(rand_id());
        // Kept only in the journal: whoever holds it may recover the cluster's results.
        let owner = OwnerToken(random_bytes());
        let journal = match &self.journal {
            Some(path) => {
                let mut journal = crate::journal::Journal::create(path, cluster, &owner, &program_name)?;
                journal.returns(&self.results_dir, &self.returns);
                Some(journal)
            }
            None => None,
        };
        let settings = Settings {
            cluster,
            owner: Some(owner.hash()),
            share: self.fanout.then(|| ShareToken(random_bytes())),
            journal: journal.is_some(),
            job_events: self.on_job.is_some() || self.web.is_some(),
            cluster_events: self.on_cluster.is_some() || self.web.is_some(),
            program: program_name,
            setup: setup_name,
            cleanup: cleanup_name,
            files,
            patterns: self.patterns,
            cpus_per_node: self.cpus_per_node,
            timeout_secs,
            reentrant: self.reentrant,
            relay_limit: self.relay_limit,
            max_retries: self.max_retries,
            discover_timeout: self.discover_timeout,
            wait_nodes: self.wait_nodes,
            local: self.local,
            searched,
            function: self.function,
            node_filter: self.node_filter,
            returns: self.returns,
            results_dir: self.results_dir,
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        // Bound before the network starts: an address in use fails the start at once. The
        // monitor holds the command channel weakly, so dropping the cluster still ends it.
        let web = match self.web {
            Some(addr) => Some(crate::web::start(addr, cmd_tx.downgrade()).await?),
            None => None,
        };
        let (web_url, web_feed) = web.map(|w| (w.url, w.feed)).unzip();
        let (cancelled_all, cancelled_rx) = tokio::sync::watch::channel(false);
        let hooks = Hooks {
            on_job: self.on_job,
            on_cluster: self.on_cluster,
            journal,
            psk,
            web: web_feed.clone(),
            cancelled_all,
        };
        // Unbounded: the scheduler must never wait on an application that is not reading
        // (heartbeats and other clusters' work would stall). It holds at most one report per
        // job the application submitted and has not taken yet.
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        // The cluster's peer and scheduler run on a thread and single-threaded runtime of
        // their own: an application that blocks its runtime's workers never delays their
        // heartbeats, and their tasks never hop between threads. Everything is built there,
        // so the swarm's sockets belong to that runtime and no runtime is ever dropped
        // inside the application's.
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        crate::own_thread::spawn("dispy-cluster", "the cluster", ready_tx, move |ready_tx| async move {
            let (handle, events) = match net::spawn(cfg) {
                Ok(parts) => parts,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let scheduler = Scheduler::new(settings, hooks, handle, up_tx, local);
            let _ = ready_tx.send(Ok(()));
            scheduler.run(events, cmd_rx).await;
        })?;
        ready_rx.await.map_err(|_| Error::Start("the cluster's thread stopped while starting".into()))??;
        Ok(Cluster::from_parts(cmd_tx, up_rx, self.close_timeout, self.encode, self.decode)
            .with_web(web_url, web_feed)
            .with_cancelled(cancelled_rx))
    }
}

impl<A, R> ClusterBuilder<A, R> {
    pub(crate) fn new(program: PathBuf, function: Option<String>, encode: Encoder<A>, decode: Decoder<R>) -> Self {
        ClusterBuilder {
            program,
            function,
            encode,
            decode,
            on_job: None,
            on_cluster: None,
            node_filter: None,
            files: Vec::new(),
            setup: None,
            cleanup: None,
            peers: Vec::new(),
            bootstrap: Vec::new(),
            patterns: Vec::new(),
            secret: Secret::None,
            mdns: true,
            fanout: true,
            relay_limit: DEFAULT_RELAY_LIMIT,
            discover_timeout: Duration::from_secs(3),
            wait_nodes: crate::scheduler::NODE_ZOMBIE,
            local: LocalMode::Fallback,
            cpus_per_node: None,
            timeout: None,
            reentrant: false,
            max_retries: 3,
            heartbeat: dispy_node::net::DEFAULT_HEARTBEAT,
            journal: None,
            returns: Vec::new(),
            results_dir: PathBuf::from("dispy-results"),
            close_timeout: None,
            identity: None,
            web: None,
        }
    }
}

/// A cluster id: a capability of its client on the nodes, so from the OS random source.
fn rand_id() -> u64 {
    u64::from_le_bytes(random_bytes())
}

/// Bytes from the OS random source.
fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// The job time limit as sent to nodes, checked as nodes check it: a limit nodes would
/// refuse (`Duration::MAX`, over about 31 years) is a configuration error here, at once.
fn timeout_secs(timeout: Option<Duration>) -> Result<Option<f64>> {
    let secs = timeout.map(|t| t.as_secs_f64());
    dispy_protocol::job::checked_timeout(secs).map_err(|why| Error::Config(format!("the job timeout: {why}")))?;
    Ok(secs)
}

impl<A, R> std::fmt::Debug for ClusterBuilder<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("program", &self.program)
            .field("function", &self.function)
            .field("files", &self.files)
            .field("setup", &self.setup)
            .field("cleanup", &self.cleanup)
            .field("peers", &self.peers)
            .field("bootstrap", &self.bootstrap)
            .field("patterns", &self.patterns)
            .field("mdns", &self.mdns)
            .field("fanout", &self.fanout)
            .field("relay_limit", &self.relay_limit)
            .field("local", &self.local)
            .field("cpus_per_node", &self.cpus_per_node)
            .field("timeout", &self.timeout)
            .field("reentrant", &self.reentrant)
            .field("close_timeout", &self.close_timeout)
            .field("web", &self.web)
            .finish_non_exhaustive()
    }
}

/// [`ClusterBuilder::relay_limit`]'s default: what a relay carries per connection by default.
pub(crate) const DEFAULT_RELAY_LIMIT: u64 = 64 << 20;

/// Where a client listens: nowhere on a LAN (it dials every node), but on a port of its own
/// when it looks beyond (`bootstrap`): its dials then leave from that port, so that what a
/// relay observes of it is an address a hole punch through its NAT can use.
pub(crate) fn listen_beyond_lan(bootstrap: &[libp2p::Multiaddr]) -> Vec<libp2p::Multiaddr> {
    if bootstrap.is_empty() {
        return Vec::new();
    }
    let any: libp2p::Multiaddr = libp2p::Multiaddr::empty()
        .with(std::net::Ipv4Addr::UNSPECIFIED.into())
        .with(libp2p::multiaddr::Protocol::Tcp(0));
    vec![any]
}
