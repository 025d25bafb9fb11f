//! A client's lease on this node: its cluster's program, files and share of the CPUs, for as
//! long as the client holds it. The parts of its state that other files use are theirs:
//! [`Uploads`] (its files arriving), [`Runs`] (its jobs queued and running) and [`Outbox`]
//! (its results on their way back).

use super::delivery::Outbox;
use super::jobfiles::JobFiles;
use super::setup::ClusterSetup;
use super::slots::Runs;
use super::store::{Store, check_name, check_names};
use super::uploads::Uploads;
use super::{Node, ServeConfig};
use dispy_protocol::{
    ClusterId, FileEntry, FileHash, JobId, JobSpec, Refusal, RefusalKind, Reserve, Reserved, Response,
};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use tokio::time::Instant;
use tracing::{info, warn};

/// One cluster's lease.
pub(super) struct Lease {
    pub(super) client: PeerId,
    pub(super) program: String,
    /// For a function cluster, the function its workers serve.
    pub(super) function: Option<String>,
    pub(super) files: Vec<FileEntry>,
    /// Jobs of this cluster running at once, at most.
    pub(super) cpus: u32,
    /// Its job and worker directories live here.
    pub(super) dir: PathBuf,
    /// Whether all its files were found stored (by a Submit).
    pub(super) files_ready: bool,
    /// Since when its client has been disconnected.
    pub(super) gone_since: Option<Instant>,
    /// Released: it takes nothing new, and goes once its jobs and deliveries have ended.
    pub(super) released: bool,
    pub(super) uploads: Uploads,
    pub(super) runs: Runs,
    pub(super) outbox: Outbox,
    /// Its setup and cleanup programs, if any.
    pub(super) setup: ClusterSetup,
    /// Its jobs' own files: inputs declared, outputs returned.
    pub(super) job_files: JobFiles,
}

impl Lease {
    /// Kills its jobs and drops what waits; it is dropped once they are gone.
    pub(super) fn release(&mut self) {
        self.released = true;
        self.setup.kill();
        self.uploads.clear();
        self.runs.kill_all();
        self.outbox.clear();
    }

    /// Queues jobs, once the cluster's files are all stored; returns those cancelled before
    /// they arrived, or the refusal.
    pub(super) fn submit(&mut self, jobs: Vec<JobSpec>, store: &Store) -> Result<Vec<JobId>, Refusal> {
        if let Some(why) = self.setup.failed() {
            return Err(Refusal::new(RefusalKind::SetupFailed, why));
        }
        // Checked once. A job that later writes to a stored file through its link changes
        // what every cluster already running with that file sees (the link is shared; on
        // dispy's nodes a computation's jobs share their files too), but it does not make
        // their files missing; clusters that start after it are sent a fresh copy (see
        // `Store::has`).
        let missing: Vec<&str> = if self.files_ready {
            Vec::new()
        } else {
            self.files.iter().filter(|f| !store.has(&f.hash, f.size)).map(|f| f.name.as_str()).collect()
        };
        self.files_ready = missing.is_empty();
        if !missing.is_empty() {
            let why = format!("files not staged yet: {}", missing.join(", "));
            return Err(Refusal::new(RefusalKind::BadFile, why));
        }
        self.job_files.check(&jobs, store)?;
        self.job_files.track(&jobs);
        Ok(self.runs.queue(jobs))
    }

    /// The declared file `hash`: one of the cluster's or one of its jobs' inputs.
    pub(super) fn file(&self, hash: &FileHash) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.hash == *hash).or_else(|| self.job_files.declared(hash))
    }

    /// Released, and no job or delivery of it is left.
    pub(super) fn done(&self) -> bool {
        self.released && self.runs.is_idle() && self.outbox.is_idle() && !self.setup.busy()
    }
}

/// The leases on this node, by cluster.
#[derive(Default)]
pub(super) struct Leases(pub(super) HashMap<ClusterId, Lease>);

impl Leases {
    /// The lease, if `peer` holds it.
    pub(super) fn owned(&mut self, peer: PeerId, id: ClusterId) -> Result<&mut Lease, Box<Response>> {
        match self.0.get_mut(&id) {
            Some(c) if c.client == peer && !c.released => Ok(c),
            _ => Err(Box::new(Response::Refused(Refusal::new(
                RefusalKind::UnknownCluster,
                format!("cluster {id} is not reserved on this node by you"),
            )))),
        }
    }

    /// Files of leases other than `except` still held.
    pub(super) fn files_in_use(&self, except: ClusterId) -> HashSet<FileHash> {
        self.files_held(|id| id != except)
    }

    /// Files of every lease still held.
    pub(super) fn all_files_in_use(&self) -> HashSet<FileHash> {
        self.files_held(|_| true)
    }

    fn files_held(&self, which: impl Fn(ClusterId) -> bool) -> HashSet<FileHash> {
        self.0
            .iter()
            .filter(|(id, c)| which(**id) && !c.released)
            .flat_map(|(_, c)| c.files.iter().map(|f| f.hash).chain(c.job_files.hashes()))
            .collect()
    }

    /// Takes a lease for `peer`, or resumes the one it holds (a client that reconnected).
    pub(super) fn reserve(&mut self, cfg: &ServeConfig, store: &Store, peer: PeerId, r: Reserve) -> Response {
        let refuse = |kind, msg: String| Response::Refused(Refusal::new(kind, msg));
        if let Err(e) = check_names(&r.files) {
            warn!(client = %peer, cause = %e, "refused a file name");
            return refuse(RefusalKind::BadPath, e.to_string());
        }
        for f in &r.files {
            if let Some(max) = cfg.max_file_size
                && f.size > max
            {
                return refuse(
                    RefusalKind::TooLarge,
                    format!(
                        "file {} is {} bytes, over node {}'s --max-file-size of {} bytes",
                        f.name, f.size, cfg.name, max
                    ),
                );
            }
        }
        for g in &r.returns {
            // A glob is matched against names inside the job directory: one that is absolute
            // or climbs out could never match, and says the client is confused.
            if g.contains('\0') || check_name(&g.replace("**", "x").replace(['*', '?'], "x")).is_err() {
                return refuse(RefusalKind::BadPath, format!("return pattern {g:?} is not a relative path"));
            }
        }
        if r.returns.len() > 64 {
            return refuse(RefusalKind::TooLarge, "more than 64 return patterns".into());
        }
        if !r.files.iter().any(|f| f.name == r.program) {
            return refuse(RefusalKind::BadFile, format!("program {} is not among the cluster's files", r.program));
        }
        let dir = Node::jobs_root(&cfg.dest).join(r.cluster.to_string());
        let setup = match ClusterSetup::new(&r, &dir, &cfg.name) {
            Ok(setup) => setup,
            Err(why) => return refuse(RefusalKind::BadFile, why),
        };
        let cpus = r.cpus.unwrap_or(cfg.cpus).clamp(1, cfg.cpus.max(1));
        let mut missing: Vec<FileHash> = Vec::new();
        for f in &r.files {
            if !store.has(&f.hash, f.size) && !missing.contains(&f.hash) {
                missing.push(f.hash);
            }
        }
        if let Some(existing) = self.0.get_mut(&r.cluster) {
            if existing.client != peer {
                return refuse(RefusalKind::UnknownCluster, format!("cluster {} belongs to another client", r.cluster));
            }
            if !existing.released {
                // The client reconnected and reserves again: the cluster goes on as it was.
                existing.gone_since = None;
                info!(cluster = %r.cluster, client = %peer, "cluster resumed");
                return Response::Reserved(Reserved { cpus: existing.cpus, missing, resumed: true });
            }
        }
        info!(cluster = %r.cluster, client = %peer, cpus, files = r.files.len(), missing = missing.len(), "cluster reserved");
        let lease = Lease {
            client: peer,
            program: r.program,
            function: r.function,
            files: r.files,
            cpus,
            runs: Runs::new(dir.clone()),
            dir,
            files_ready: false,
            gone_since: None,
            released: false,
            uploads: Uploads::default(),
            outbox: Outbox::default(),
            setup,
            job_files: JobFiles::new(r.returns),
        };
        self.0.insert(r.cluster, lease);
        Response::Reserved(Reserved { cpus, missing, resumed: false })
    }
}
