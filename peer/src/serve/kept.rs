//! Results kept until their client has them, as `<dest>/results/<cluster>/<job>.cbor`: those
//! that waited or travelled longer than a healthy delivery takes (so a crash of the node does
//! not lose them), and, when a client's zombie interval ends, all it never received.
//!
//! A recovering client (`dispy-peer recover`) collects them; they are deleted when
//! collected or after the result TTL.
//!
//! The files those results list as returned stay in the store with them, recorded beside
//! them as `<dest>/results/<cluster>/returned/<hash>/<job>` (an empty file per job that
//! lists it): a restarted node still knows which files a released cluster may fetch
//! ([`KeptResults::lists`]) and deletes them with the last result that lists them, when it
//! is collected or at the TTL. A directory per hash makes "does any result still list it"
//! one `rmdir`, whatever the number of results.

use super::store::Store;
use dispy_protocol::{ClusterId, FileHash, JobId, JobResult, decode, encode};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// The results folder.
#[derive(Clone, Debug)]
pub(crate) struct KeptResults {
    root: PathBuf,
}

impl KeptResults {
    pub(crate) fn open(dest: &std::path::Path) -> std::io::Result<KeptResults> {
        let root = dest.join("results");
        std::fs::create_dir_all(&root)?;
        Ok(KeptResults { root })
    }

    fn dir(&self, cluster: ClusterId) -> PathBuf {
        self.root.join(cluster.to_string())
    }

    /// Where a cluster's kept results record the files they list.
    fn files_dir(&self, cluster: ClusterId) -> PathBuf {
        self.dir(cluster).join("returned")
    }

    /// Writes results (blocking: call off the event thread).
    pub(crate) fn save(&self, cluster: ClusterId, results: &[JobResult]) -> std::io::Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let dir = self.dir(cluster);
        std::fs::create_dir_all(&dir)?;
        for r in results {
            // Recorded before the result: a result on disk never lists a file that a
            // restarted node would not keep.
            for f in &r.returned {
                let by_hash = self.files_dir(cluster).join(f.hash.to_hex());
                std::fs::create_dir_all(&by_hash)?;
                std::fs::File::create(by_hash.join(r.id.to_string()))?;
            }
            let bytes = encode(r).map_err(std::io::Error::other)?;
            let tmp = dir.join(format!(".{}.tmp", r.id));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dir.join(format!("{}.cbor", r.id)))?;
        }
        Ok(())
    }

    /// The results kept for a cluster (unreadable files are skipped).
    pub(crate) fn load(&self, cluster: ClusterId) -> Vec<JobResult> {
        let Ok(entries) = std::fs::read_dir(self.dir(cluster)) else { return Vec::new() };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cbor"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| decode::<JobResult>(&b).ok())
            .collect()
    }

    /// Deletes collected results (and the cluster's folder once empty). Returns the files
    /// they listed that no result of the cluster lists any more: the store may drop them
    /// ([`KeptResults::drop_files`]) unless a lease holds them.
    pub(crate) fn forget(&self, cluster: ClusterId, jobs: &[JobId]) -> Vec<FileHash> {
        let dir = self.dir(cluster);
        let files_dir = self.files_dir(cluster);
        let mut freed = Vec::new();
        for id in jobs {
            let path = dir.join(format!("{id}.cbor"));
            let listed = std::fs::read(&path).ok().and_then(|b| decode::<JobResult>(&b).ok());
            let _ = std::fs::remove_file(&path);
            for f in listed.map(|r| r.returned).unwrap_or_default() {
                let by_hash = files_dir.join(f.hash.to_hex());
                let _ = std::fs::remove_file(by_hash.join(id.to_string()));
                // Fails while another result lists the file.
                if std::fs::remove_dir(&by_hash).is_ok() {
                    freed.push(f.hash);
                }
            }
        }
        let _ = std::fs::remove_dir(&files_dir);
        let _ = std::fs::remove_dir(&dir);
        freed
    }

    /// Whether a kept result of `cluster` lists the file `hash` (a recovering client may
    /// fetch it).
    pub(crate) fn lists(&self, cluster: ClusterId, hash: &FileHash) -> bool {
        self.files_dir(cluster).join(hash.to_hex()).is_dir()
    }

    /// Whether a kept result of any cluster lists the file `hash`.
    pub(crate) fn holds(&self, hash: &FileHash) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return false };
        let hex = hash.to_hex();
        entries.flatten().any(|e| e.path().join("returned").join(&hex).is_dir())
    }

    /// Deletes from `store` the files of `hashes` that no kept result lists and no lease
    /// holds (`in_use`). Blocking.
    pub(crate) fn drop_files(
        &self,
        store: &Store,
        hashes: impl IntoIterator<Item = FileHash>,
        in_use: &HashSet<FileHash>,
    ) {
        for h in hashes {
            if !in_use.contains(&h) && !self.holds(&h) {
                let _ = std::fs::remove_file(store.path(&h));
            }
        }
    }

    /// Deletes the results of clusters kept longer than `ttl`. Returns the files they
    /// listed, for [`KeptResults::drop_files`].
    pub(crate) fn sweep(&self, ttl: Duration) -> Vec<FileHash> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut freed = Vec::new();
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ttl);
            if old {
                let listed = std::fs::read_dir(e.path().join("returned")).into_iter().flatten().flatten();
                freed.extend(listed.filter_map(|f| f.file_name().to_str()?.parse::<FileHash>().ok()));
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispy_protocol::{JobOutcome, Output};

    #[test]
    fn kept_results_round_trip_and_go() {
        let dest = tempfile::tempdir().unwrap();
        let kept = KeptResults::open(dest.path()).unwrap();
        let r = JobResult {
            id: JobId(4),
            outcome: JobOutcome::Exited(0),
            stdout: Output { bytes: b"hi".to_vec(), truncated: 0 },
            stderr: Output::default(),
            start_us: 1,
            end_us: 2,
            value: Vec::new(),
            returned: Vec::new(),
            return_note: None,
        };
        kept.save(ClusterId(9), std::slice::from_ref(&r)).unwrap();
        assert_eq!(kept.load(ClusterId(9)), vec![r]);
        kept.forget(ClusterId(9), &[JobId(4)]);
        assert!(kept.load(ClusterId(9)).is_empty());
        kept.save(ClusterId(10), &[JobResult { id: JobId(1), ..kept_dummy() }]).unwrap();
        kept.sweep(Duration::ZERO);
        assert!(kept.load(ClusterId(10)).is_empty());
    }

    #[test]
    fn returned_files_are_recorded_until_the_last_result_listing_them_goes() {
        let dest = tempfile::tempdir().unwrap();
        let kept = KeptResults::open(dest.path()).unwrap();
        let store = Store::open(dest.path()).unwrap();
        let (shared, own) = (FileHash([1; 32]), FileHash([2; 32]));
        let entry = |hash| dispy_protocol::FileEntry { name: "a.out".into(), hash, size: 1, executable: false };
        for h in [shared, own] {
            std::fs::write(store.path(&h), b"x").unwrap();
        }
        let a = JobResult { id: JobId(1), returned: vec![entry(shared), entry(own)], ..kept_dummy() };
        let b = JobResult { id: JobId(2), returned: vec![entry(shared)], ..kept_dummy() };
        kept.save(ClusterId(7), &[a, b]).unwrap();
        assert!(kept.lists(ClusterId(7), &shared) && kept.lists(ClusterId(7), &own));
        assert!(!kept.lists(ClusterId(8), &own), "only for its cluster");
        assert!(kept.holds(&own));
        // Job 2 still lists the shared file.
        assert_eq!(kept.forget(ClusterId(7), &[JobId(1)]), vec![own]);
        assert!(kept.lists(ClusterId(7), &shared) && !kept.lists(ClusterId(7), &own));
        kept.drop_files(&store, [own, shared], &HashSet::new());
        assert!(!store.path(&own).exists(), "no result lists it");
        assert!(store.path(&shared).exists(), "a kept result lists it");
        // A lease that holds a file keeps it in the store whatever the results say.
        assert_eq!(kept.forget(ClusterId(7), &[JobId(2)]), vec![shared]);
        kept.drop_files(&store, [shared], &HashSet::from([shared]));
        assert!(store.path(&shared).exists());
        assert!(!dest.path().join("results").join(ClusterId(7).to_string()).exists(), "the folder goes");
        // The TTL ends what was never collected, and names its files.
        kept.save(ClusterId(9), &[JobResult { id: JobId(3), returned: vec![entry(own)], ..kept_dummy() }]).unwrap();
        assert_eq!(kept.sweep(Duration::ZERO), vec![own]);
        assert!(!kept.holds(&own));
    }

    fn kept_dummy() -> JobResult {
        JobResult {
            id: JobId(0),
            outcome: JobOutcome::Cancelled,
            stdout: Output::default(),
            stderr: Output::default(),
            start_us: 0,
            end_us: 0,
            value: Vec::new(),
            returned: Vec::new(),
            return_note: None,
        }
    }
}
