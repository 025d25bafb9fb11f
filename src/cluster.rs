//! [`Cluster`]: dispy's `JobCluster` for programs. Build it with [`Cluster::program`],
//! submit jobs, take their results as they finish, close it for the stats.

use crate::error::{Error, Result};
use crate::local::LocalNode;
use crate::report::{JobReport, Stats};
use crate::scheduler::{Cmd, LocalMode, Scheduler, Settings, Update};
use crate::select::NodePattern;
use crate::stage;
use dispy_node::net::{self, NetConfig};
use dispy_protocol::{ClusterId, JobId};
use libp2p::Multiaddr;
use libp2p::pnet::PreSharedKey;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The cluster's secret.
#[derive(Clone, Debug, Default)]
pub enum Secret {
    /// No secret: an open mesh (only for trusted, isolated networks).
    #[default]
    None,
    /// A passphrase, stretched into the network key.
    Passphrase(String),
    /// A key file written by `dispy-peer keygen`.
    File(PathBuf),
}

impl Secret {
    /// The private-network key, if any.
    ///
    /// # Errors
    /// [`Error::Node`] for an unreadable key file or an empty passphrase.
    pub fn to_psk(&self) -> Result<Option<PreSharedKey>> {
        Ok(match self {
            Secret::None => None,
            Secret::Passphrase(p) => Some(dispy_node::psk::from_secret(p)?),
            Secret::File(f) => Some(dispy_node::psk::from_file(f)?),
        })
    }
}

/// Options of a cluster; see [`Cluster::program`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    program: PathBuf,
    files: Vec<PathBuf>,
    peers: Vec<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
    patterns: Vec<NodePattern>,
    secret: Secret,
    mdns: bool,
    discover_timeout: Duration,
    local: LocalMode,
    cpus_per_node: Option<u32>,
    timeout: Option<Duration>,
    reentrant: bool,
}

impl ClusterBuilder {
    /// Adds a dependency file, present in every job's directory under its base name.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
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

    /// Look for nodes on the LAN by multicast DNS (default on).
    pub fn mdns(mut self, on: bool) -> Self {
        self.mdns = on;
        self
    }

    /// How long to look for a first node before falling back or failing (default 3 s).
    pub fn discover_timeout(mut self, t: Duration) -> Self {
        self.discover_timeout = t;
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

    /// Hashes the files, joins the mesh and starts looking for nodes.
    ///
    /// # Errors
    /// [`Error::File`] for a missing or unreadable program or file (no node is contacted),
    /// [`Error::Config`] / [`Error::Node`] for a bad secret or network setup.
    pub async fn start(self) -> Result<Cluster> {
        let files = self.files.clone();
        let program = self.program.clone();
        let (program_name, files) = tokio::task::spawn_blocking(move || stage::describe(&program, &files))
            .await
            .map_err(|e| Error::Config(format!("hashing files: {e}")))??;
        let psk = self.secret.to_psk()?;
        let local = match self.local {
            LocalMode::Always => Some(LocalNode::start(psk).await?),
            _ => None,
        };
        let mut searched = Vec::new();
        if self.mdns {
            searched.push("mDNS on the LAN".to_string());
        }
        if !self.peers.is_empty() {
            searched.push(format!("peers {}", join(&self.peers)));
        }
        if !self.bootstrap.is_empty() {
            searched.push(format!("Kademlia through {}", join(&self.bootstrap)));
        }
        if local.is_some() {
            searched.push("a local node".into());
        }
        if !self.patterns.is_empty() {
            let p: Vec<&str> = self.patterns.iter().map(|p| p.as_str()).collect();
            searched.push(format!("nodes matching {}", p.join(", ")));
        }
        let searched = if searched.is_empty() { "nothing (mDNS off, no peers given)".to_string() } else { searched.join("; ") };
        let cfg = NetConfig {
            psk,
            mdns: self.mdns,
            bootstrap: self.bootstrap.clone(),
            peers: self.peers.clone(),
            kad_server: false,
            ..NetConfig::default()
        };
        let (handle, events, event_loop) = net::new(cfg)?;
        tokio::spawn(event_loop.run());
        let settings = Settings {
            cluster: ClusterId(rand_id()),
            program: program_name,
            files,
            named: !self.peers.is_empty() || !self.patterns.is_empty() || !self.bootstrap.is_empty(),
            patterns: self.patterns,
            cpus_per_node: self.cpus_per_node,
            timeout_secs: self.timeout.map(|t| t.as_secs_f64()),
            reentrant: self.reentrant,
            discover_timeout: self.discover_timeout,
            local: self.local,
            searched,
            psk,
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        let scheduler = Scheduler::new(settings, handle, up_tx, local);
        tokio::spawn(scheduler.run(events, cmd_rx));
        Ok(Cluster { cmds: cmd_tx, updates: up_rx, next_id: 0, outstanding: 0 })
    }
}

fn join(addrs: &[Multiaddr]) -> String {
    addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// A cluster running one program on the mesh's nodes.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> dispy::Result<()> {
/// let mut cluster = dispy::Cluster::program("./render.sh").file("scene.bin").start().await?;
/// for frame in 0..10 {
///     cluster.submit(vec![frame.to_string()]).await?;
/// }
/// while let Some(job) = cluster.next_result().await? {
///     println!("frame {}: {}", job.args[0], job.outcome);
/// }
/// println!("{}", cluster.close().await?);
/// # Ok(()) }
/// ```
pub struct Cluster {
    cmds: mpsc::Sender<Cmd>,
    updates: mpsc::UnboundedReceiver<Update>,
    next_id: u64,
    outstanding: usize,
}

impl Cluster {
    /// Starts building a cluster that runs `path` (any executable or script) once per job.
    pub fn program(path: impl Into<PathBuf>) -> ClusterBuilder {
        ClusterBuilder {
            program: path.into(),
            files: Vec::new(),
            peers: Vec::new(),
            bootstrap: Vec::new(),
            patterns: Vec::new(),
            secret: Secret::None,
            mdns: true,
            discover_timeout: Duration::from_secs(3),
            local: LocalMode::Fallback,
            cpus_per_node: None,
            timeout: None,
            reentrant: false,
        }
    }

    /// Queues a job with these arguments; returns its id at once.
    ///
    /// # Errors
    /// [`Error::Closed`] if the cluster's scheduler has stopped.
    pub async fn submit(&mut self, args: Vec<String>) -> Result<JobId> {
        Ok(self.submit_all(vec![args]).await?[0])
    }

    /// Queues many jobs at once (cheaper than one by one).
    ///
    /// # Errors
    /// [`Error::Closed`] if the cluster's scheduler has stopped.
    pub async fn submit_all(&mut self, jobs: Vec<Vec<String>>) -> Result<Vec<JobId>> {
        let mut batch = Vec::with_capacity(jobs.len());
        for args in jobs {
            batch.push((JobId(self.next_id), args));
            self.next_id += 1;
        }
        let ids: Vec<JobId> = batch.iter().map(|(id, _)| *id).collect();
        self.outstanding += ids.len();
        self.cmds.send(Cmd::Submit { jobs: batch }).await.map_err(|_| Error::Closed)?;
        Ok(ids)
    }

    /// The next job to finish, in completion order; `None` once every submitted job has
    /// been reported.
    ///
    /// Cancel safety: safe; a result not yet taken stays queued.
    ///
    /// # Errors
    /// [`Error::NoNodes`] when no usable node could be found in time (the message says what
    /// was searched and found); [`Error::Closed`] if the scheduler stopped.
    pub async fn next_result(&mut self) -> Result<Option<JobReport>> {
        if self.outstanding == 0 {
            return Ok(None);
        }
        match self.updates.recv().await {
            Some(Update::Job(report)) => {
                self.outstanding -= 1;
                Ok(Some(*report))
            }
            Some(Update::Fatal(msg)) => Err(Error::NoNodes(msg)),
            None => Err(Error::Closed),
        }
    }

    /// Cancels jobs: queued ones at once, running ones by killing their process groups.
    /// Each still gets a report, with outcome `Cancelled`.
    ///
    /// # Errors
    /// [`Error::Closed`] if the scheduler stopped.
    pub async fn cancel(&self, ids: Vec<JobId>) -> Result<()> {
        self.cmds.send(Cmd::Cancel { ids }).await.map_err(|_| Error::Closed)
    }

    /// The figures so far.
    ///
    /// # Errors
    /// [`Error::Closed`] if the scheduler stopped.
    pub async fn stats(&self) -> Result<Stats> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Stats { reply }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Releases the nodes (they delete the cluster's files and kill anything left) and
    /// returns the final figures.
    ///
    /// # Errors
    /// [`Error::Closed`] if the scheduler had already stopped.
    pub async fn close(self) -> Result<Stats> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(Cmd::Close { reply }).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }
}
