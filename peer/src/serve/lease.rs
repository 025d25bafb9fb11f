//! A client's lease on this node: its cluster's program, files and share of the CPUs, for as
//! long as the client holds it. The parts of its state that other files use are theirs:
//! [`Uploads`] (its files arriving), [`Runs`] (its jobs queued and running) and [`Outbox`]
//! (its results on their way back).

use super::delivery::Outbox;
use super::jobfiles::JobFiles;
use super::limits::over;
use super::lookup::Stored;
use super::owner::may_reserve;
use super::setup::ClusterSetup;
use super::slots::Runs;
use super::store::{check_name, check_names};
use super::uploads::Uploads;
use super::{Node, ServeConfig};
use dispy_protocol::{
    ClusterId, FileEntry, FileHash, JobId, JobSpec, MAX_ITEMS_PER_REQUEST, OwnerHash, Refusal, RefusalKind, Reserve,
    Reserved, Response, job::checked_timeout,
};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::{info, warn};

/// One cluster's lease.
pub(super) struct Lease {
    pub(super) client: PeerId,
    pub(super) program: String,
    /// For a function cluster, the function its workers serve.
    pub(super) function: Option<String>,
    pub(super) files: Vec<FileEntry>,
    /// `files` again, shared with the jobs' tasks that fill directories (no copy per job).
    pub(super) shared_files: Arc<[FileEntry]>,
    /// Index of `files` by hash (a chunk finds its file in O(1)).
    by_hash: HashMap<FileHash, usize>,
    /// The hash of its owner token, if its client sent one (see `owner`).
    pub(super) owner: Option<OwnerHash>,
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
    /// One of its jobs took a slot: only such a cluster counts as served (`--serve N`), so
    /// that reserving and releasing in a loop cannot end a node's run.
    pub(super) ran: bool,
    pub(super) uploads: Uploads,
    /// Its files being fetched from other nodes of the cluster.
    pub(super) pulls: super::share::Pulls,
    /// Its share token: other nodes presenting it may fetch its files here.
    pub(super) share: Option<dispy_protocol::ShareToken>,
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
        self.pulls.stop();
        self.runs.kill_all();
        self.outbox.clear();
    }

    /// Queues jobs, once the cluster's files are all stored; returns those cancelled before
    /// they arrived, or the refusal.
    pub(super) fn submit(&mut self, jobs: Vec<JobSpec>, stored: &Stored) -> Result<Vec<JobId>, Refusal> {
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
            self.files.iter().filter(|f| !stored.has(&f.hash)).map(|f| f.name.as_str()).collect()
        };
        self.files_ready = missing.is_empty();
        if !missing.is_empty() {
            let why = format!("files not staged yet: {}", missing.join(", "));
            return Err(Refusal::new(RefusalKind::BadFile, why));
        }
        // A client back from a partition sends again the jobs it is not sure arrived: one
        // that ended meanwhile (its result waits here) does not run twice.
        let ended = self.outbox.ended();
        let jobs: Vec<JobSpec> =
            if ended.is_empty() { jobs } else { jobs.into_iter().filter(|j| !ended.contains(&j.id)).collect() };
        self.job_files.check(&jobs, stored)?;
        self.job_files.track(&jobs);
        Ok(self.runs.queue(jobs))
    }

    /// The declared file `hash`: one of the cluster's or one of its jobs' inputs.
    pub(super) fn file(&self, hash: &FileHash) -> Option<&FileEntry> {
        self.by_hash.get(hash).and_then(|i| self.files.get(*i)).or_else(|| self.job_files.declared(hash))
    }

    /// The files a Submit must find stored: the cluster's until they were found once.
    pub(super) fn files_to_look_up(&self) -> &[FileEntry] {
        if self.files_ready { &[] } else { &self.files }
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
    /// `stored` has looked up `r`'s files (and the owner of results kept under its id).
    /// Linear in the number of files.
    pub(super) fn reserve(&mut self, cfg: &ServeConfig, stored: &Stored, peer: PeerId, r: Reserve) -> Response {
        let refuse = |kind, msg: String| Response::Refused(Refusal::new(kind, msg));
        if let Err(why) = check_reserve_size(&r) {
            return Response::Refused(why);
        }
        if let Err(why) = checked_timeout(r.setup_timeout_secs) {
            return refuse(RefusalKind::BadRequest, format!("the cluster's setup time limit: {why}"));
        }
        if let Err(why) = may_reserve(r.cluster, r.owner, stored.kept_owner) {
            return Response::Refused(why);
        }
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
        // A name of its own, not the id: jobs of other clusters can list the folder.
        let dir = Node::jobs_root(&cfg.dest).join(format!("{:032x}", rand::random::<u128>()));
        let setup = match ClusterSetup::new(&r, &dir, &cfg.name) {
            Ok(setup) => setup,
            Err(why) => return refuse(RefusalKind::BadFile, why),
        };
        let cpus = r.cpus.unwrap_or(cfg.cpus).clamp(1, cfg.cpus.max(1));
        let mut seen = HashSet::new();
        let missing: Vec<FileHash> =
            r.files.iter().filter(|f| !stored.has(&f.hash) && seen.insert(f.hash)).map(|f| f.hash).collect();
        if let Some(existing) = self.0.get_mut(&r.cluster) {
            if existing.client != peer {
                return refuse(RefusalKind::UnknownCluster, format!("cluster {} belongs to another client", r.cluster));
            }
            if !existing.released {
                // The client reconnected and reserves again: the cluster goes on as it was.
                existing.gone_since = None;
                info!(cluster = %r.cluster.tag(), client = %peer, "cluster resumed");
                return Response::Reserved(Reserved { cpus: existing.cpus, missing, resumed: true });
            }
        }
        let held = self.usage(peer).clusters;
        if held >= cfg.limits.clusters {
            return Response::Refused(over("clusters", cfg.limits.clusters, &cfg.name));
        }
        info!(cluster = %r.cluster.tag(), client = %peer, cpus, files = r.files.len(), missing = missing.len(), "cluster reserved");
        let mut by_hash = HashMap::with_capacity(r.files.len());
        for (i, f) in r.files.iter().enumerate() {
            by_hash.entry(f.hash).or_insert(i);
        }
        let lease = Lease {
            client: peer,
            program: r.program,
            function: r.function,
            shared_files: Arc::from(r.files.as_slice()),
            files: r.files,
            by_hash,
            owner: r.owner,
            cpus,
            runs: Runs::new(dir.clone()),
            dir,
            files_ready: false,
            gone_since: None,
            released: false,
            ran: false,
            uploads: Uploads::default(),
            pulls: Default::default(),
            share: r.share,
            outbox: Outbox::default(),
            setup,
            job_files: JobFiles::new(r.returns),
        };
        self.0.insert(r.cluster, lease);
        Response::Reserved(Reserved { cpus, missing, resumed: false })
    }
}

/// Whether a Reserve carries no more items than a request may.
///
/// # Errors
/// The refusal naming the count.
pub(super) fn check_reserve_size(r: &Reserve) -> Result<(), Refusal> {
    if r.files.len() > MAX_ITEMS_PER_REQUEST {
        let why = format!("a cluster of {} files is over the limit of {MAX_ITEMS_PER_REQUEST}", r.files.len());
        return Err(Refusal::new(RefusalKind::BadRequest, why));
    }
    Ok(())
}
