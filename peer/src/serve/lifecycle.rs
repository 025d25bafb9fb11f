//! How clusters and the node end: release, zombie clients, draining, `--serve N`.

use super::*;

impl Server {
    /// Stops taking work and gives every queued job back to its client.
    pub(super) fn drain(&mut self) {
        self.draining = true;
        let mut declined = Vec::new();
        for (id, c) in &mut self.clusters {
            for job in c.queue.drain(..) {
                declined.push((*id, job.id));
            }
        }
        let why = format!("node {} is draining", self.cfg.name);
        for (cluster, id) in declined {
            self.unstarted(cluster, id, JobOutcome::Declined(why.clone()));
        }
    }

    /// Whether a drain is complete: no job runs and every result was delivered.
    pub(super) fn drained(&self) -> bool {
        self.free == self.cfg.cpus
            && self.clusters.values().all(|c| c.results.is_empty() && c.sending == 0 && c.queue.is_empty())
    }

    /// Releases the clusters whose client has been away longer than the zombie interval.
    pub(super) fn reap_zombies(&mut self) {
        let limit = self.cfg.zombie_interval;
        let gone: Vec<(ClusterId, PeerId)> = self
            .clusters
            .iter()
            .filter(|(_, c)| !c.released && c.gone_since.is_some_and(|t| t.elapsed() >= limit))
            .map(|(id, c)| (*id, c.client))
            .collect();
        for (id, client) in gone {
            info!(cluster = %id, %client, "client has gone; killing its jobs and deleting its files");
            // What it never collected is kept on disk for `recover`.
            if let Some(c) = self.clusters.get_mut(&id) {
                // Those waiting and those still on their way to the gone client.
                let mut results: Vec<JobResult> = c.results.drain(..).collect();
                results.extend(c.delivering.drain().flat_map(|(_, (_, b))| b));
                if !results.is_empty() {
                    info!(cluster = %id, results = results.len(), ttl = ?self.cfg.result_ttl, "keeping undelivered results");
                    let kept = self.kept.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = kept.save(id, &results) {
                            warn!(cluster = %id, cause = %e, "cannot keep undelivered results");
                        }
                    });
                }
            }
            // A client that crashed does not come back for its files: those it sent that no
            // other cluster uses are deleted (a normal release keeps them cached).
            let staged = self.clusters.get(&id).map(|c| c.staged.clone()).unwrap_or_default();
            let in_use: HashSet<FileHash> = self
                .clusters
                .iter()
                .filter(|(other, c)| **other != id && !c.released)
                .flat_map(|(_, c)| c.files.iter().map(|f| f.hash))
                .collect();
            let store = self.store.clone();
            let orphans: Vec<FileHash> = staged.into_iter().filter(|h| !in_use.contains(h)).collect();
            tokio::task::spawn_blocking(move || {
                for h in orphans {
                    let _ = std::fs::remove_file(store.path(&h));
                }
            });
            self.release(id);
        }
        if self.last_sweep.elapsed() > Duration::from_secs(60) {
            self.last_sweep = std::time::Instant::now();
            let (kept, ttl) = (self.kept.clone(), self.cfg.result_ttl);
            tokio::task::spawn_blocking(move || kept.sweep(ttl));
        }
    }

    pub(super) fn served_enough(&self) -> bool {
        self.cfg.serve_clusters.is_some_and(|n| self.served >= n && self.clusters.is_empty())
    }

    /// Kills a cluster's jobs and forgets it once they are gone.
    pub(super) fn release(&mut self, id: ClusterId) {
        let Some(c) = self.clusters.get_mut(&id) else { return };
        c.released = true;
        c.queue.clear();
        c.results.clear();
        c.uploads.clear();
        c.idle_workers.clear();
        for (_, kill) in c.running.drain() {
            let _ = kill.send(());
        }
        self.reap(id);
    }

    /// Drops a released cluster whose jobs have all ended, with its directory.
    pub(super) fn reap(&mut self, id: ClusterId) {
        let done = self
            .clusters
            .get(&id)
            .is_some_and(|c| c.released && c.running.is_empty() && c.sending == 0 && c.sending_starts == 0);
        if let Some(c) = done.then(|| self.clusters.remove(&id)).flatten() {
            self.served += 1;
            let dir = c.dir;
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir_all(&dir);
            });
            debug!(cluster = %id, "cluster released");
        }
    }
}
