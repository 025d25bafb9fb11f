//! What a client asks of its cluster on this node: reserve it, submit and cancel jobs,
//! recover and forget results. (Files arrive through `uploads`; release and the rest of a
//! cluster's end are in `lifecycle`.)

use super::*;
use dispy_protocol::{Cancel, Forget, Recover, Reserve, Submit};

/// Jobs a cluster may have cancelled before they arrived: far more than a client has on
/// its way to a node, and a bound on what a client's cancels of finished jobs can cost.
const MAX_CANCELLED_EARLY: usize = 100_000;

impl Server {
    /// The cluster, if `peer` is its client.
    pub(super) fn owned(&mut self, peer: PeerId, id: ClusterId) -> std::result::Result<&mut Cluster, Box<Response>> {
        match self.clusters.get_mut(&id) {
            Some(c) if c.client == peer && !c.released => Ok(c),
            _ => Err(Box::new(Response::Refused(Refusal::new(
                RefusalKind::UnknownCluster,
                format!("cluster {id} is not reserved on this node by you"),
            )))),
        }
    }

    pub(super) fn reserve(&mut self, peer: PeerId, r: Reserve) -> Response {
        let refuse = |kind, msg: String| Response::Refused(Refusal::new(kind, msg));
        for f in &r.files {
            if let Err(e) = check_name(&f.name) {
                warn!(client = %peer, cause = %e, "refused a file name");
                return refuse(RefusalKind::BadPath, e.to_string());
            }
            if let Some(max) = self.cfg.max_file_size
                && f.size > max
            {
                return refuse(
                    RefusalKind::TooLarge,
                    format!(
                        "file {} is {} bytes, over node {}'s --max-file-size of {} bytes",
                        f.name, f.size, self.cfg.name, max
                    ),
                );
            }
        }
        if !r.files.iter().any(|f| f.name == r.program) {
            return refuse(RefusalKind::BadFile, format!("program {} is not among the cluster's files", r.program));
        }
        let cpus = r.cpus.unwrap_or(self.cfg.cpus).clamp(1, self.cfg.cpus.max(1));
        let mut missing: Vec<FileHash> = Vec::new();
        for f in &r.files {
            if !self.store.has(&f.hash, f.size) && !missing.contains(&f.hash) {
                missing.push(f.hash);
            }
        }
        if let Some(existing) = self.clusters.get_mut(&r.cluster) {
            if existing.client != peer {
                return refuse(RefusalKind::UnknownCluster, format!("cluster {} belongs to another client", r.cluster));
            }
            if !existing.released {
                // The client reconnected and reserves again: the cluster goes on as it was.
                existing.gone_since = None;
                info!(cluster = %r.cluster, client = %peer, "cluster resumed");
                return Response::Reserved(Reserved { cpus: existing.cpus, missing });
            }
        }
        info!(cluster = %r.cluster, client = %peer, cpus, files = r.files.len(), missing = missing.len(), "cluster reserved");
        let dir = self.jobs_root.join(r.cluster.to_string());
        self.clusters.insert(
            r.cluster,
            Cluster {
                client: peer,
                program: r.program,
                function: r.function,
                idle_workers: Vec::new(),
                workers_started: 0,
                job_dirs: jobdirs::JobDirs::new(dir.clone()),
                cancelled_early: HashSet::new(),
                files_ready: false,
                gone_since: None,
                unsaved_since: None,
                saved: HashSet::new(),
                delivering: HashMap::new(),
                staged: Vec::new(),
                refused_files: HashMap::new(),
                files: r.files,
                cpus,
                dir,
                queue: VecDeque::new(),
                running: HashMap::new(),
                uploads: HashMap::new(),
                results: VecDeque::new(),
                started: Vec::new(),
                sending: 0,
                sending_starts: 0,
                starts_since: None,
                starts_timer: false,
                released: false,
            },
        );
        Response::Reserved(Reserved { cpus, missing })
    }

    /// Queues jobs, once the cluster's files are all stored.
    pub(super) fn submit(&mut self, peer: PeerId, s: Submit) -> Response {
        let refuse = |kind, msg: String| Response::Refused(Refusal::new(kind, msg));
        match (self.store.clone(), self.owned(peer, s.cluster)) {
            (_, Err(refusal)) => *refusal,
            (store, Ok(cluster)) => {
                // Checked once. A job that later writes to a stored file through its
                // link changes what every cluster already running with that file sees
                // (the link is shared; on dispy's nodes a computation's jobs share their
                // files too), but it does not make their files missing; clusters that
                // start after it are sent a fresh copy (see `Store::has`).
                let missing: Vec<&str> = if cluster.files_ready {
                    Vec::new()
                } else {
                    cluster.files.iter().filter(|f| !store.has(&f.hash, f.size)).map(|f| f.name.as_str()).collect()
                };
                cluster.files_ready = missing.is_empty();
                if !missing.is_empty() {
                    refuse(RefusalKind::BadFile, format!("files not staged yet: {}", missing.join(", ")))
                } else {
                    let count = s.jobs.len() as u32;
                    let mut cancelled = Vec::new();
                    for job in s.jobs {
                        if cluster.cancelled_early.remove(&job.id) {
                            cancelled.push(job.id);
                        } else {
                            cluster.queue.push_back(job);
                        }
                    }
                    for id in cancelled {
                        self.unstarted(s.cluster, id, JobOutcome::Cancelled);
                    }
                    self.schedule();
                    Response::Accepted(Accepted { count })
                }
            }
        }
    }

    /// Kills running jobs and drops queued ones (each reported `Cancelled`).
    pub(super) fn cancel(&mut self, peer: PeerId, c: Cancel) -> Response {
        match self.owned(peer, c.cluster) {
            Err(refusal) => *refusal,
            Ok(cluster) => {
                let mut cancelled = Vec::new();
                for id in c.jobs {
                    if let Some(kill) = cluster.running.remove(&id) {
                        let _ = kill.send(());
                    } else if let Some(pos) = cluster.queue.iter().position(|j| j.id == id) {
                        cluster.queue.remove(pos);
                        cancelled.push(id);
                    } else if !cluster.results.iter().any(|r| r.id == id)
                        && !cluster.delivering.values().any(|(_, batch)| batch.iter().any(|r| r.id == id))
                        && cluster.cancelled_early.len() < MAX_CANCELLED_EARLY
                    {
                        // Submit and Cancel travel on streams of their own: the jobs
                        // may still be on their way. They are cancelled on arrival.
                        cluster.cancelled_early.insert(id);
                    }
                }
                for id in cancelled {
                    self.unstarted(c.cluster, id, JobOutcome::Cancelled);
                }
                Response::Ok
            }
        }
    }

    /// The results held for a cluster whose client crashed: in memory (the client is away
    /// but within its zombie interval) and on disk (after it), bounded like a result batch.
    /// Read from disk on the blocking pool, and answered from there.
    pub(super) fn recover(&self, peer: PeerId, r: Recover, channel: ResponseChannel<Response>) {
        let held: Vec<JobResult> =
            self.clusters.get(&r.cluster).map(|c| c.results.iter().cloned().collect()).unwrap_or_default();
        let (kept, net) = (self.kept.clone(), self.net.clone());
        tokio::spawn(async move {
            let load = tokio::task::spawn_blocking(move || {
                let mut results = held;
                results.extend(kept.load(r.cluster));
                let mut bytes = 0;
                results.retain(|x| {
                    bytes += x.payload_len();
                    bytes <= MAX_RESULT_BATCH_BYTES
                });
                info!(cluster = %r.cluster, %peer, results = results.len(), "results recovered");
                Response::Recovered(Results { cluster: r.cluster, started: Vec::new(), results })
            });
            if let Ok(response) = load.await {
                let _ = net.respond(channel, response).await;
            }
        });
    }

    /// Recovered results are safe with their client: they go.
    pub(super) fn forget(&mut self, f: Forget) -> Response {
        if let Some(c) = self.clusters.get_mut(&f.cluster) {
            c.results.retain(|x| !f.jobs.contains(&x.id));
        }
        let kept = self.kept.clone();
        tokio::task::spawn_blocking(move || kept.forget(f.cluster, &f.jobs));
        Response::Ok
    }
}
