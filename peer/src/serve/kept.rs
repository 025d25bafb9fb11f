//! Results kept until their client has them, as `<dest>/results/<cluster>/<job>.cbor`: those
//! that waited or travelled longer than a healthy delivery takes (so a crash of the node does
//! not lose them), and, when a client's zombie interval ends, all it never received.
//!
//! A recovering client (`dispy-peer recover`) collects them; they are deleted when
//! collected or after the result TTL.

use dispy_protocol::{ClusterId, JobId, JobResult, decode, encode};
use std::os::unix::fs::OpenOptionsExt;
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
        super::private::private_subdir(&root).map_err(std::io::Error::other)?;
        Ok(KeptResults { root })
    }

    fn dir(&self, cluster: ClusterId) -> PathBuf {
        self.root.join(cluster.to_string())
    }

    /// Writes results (blocking: call off the event thread).
    pub(crate) fn save(&self, cluster: ClusterId, results: &[JobResult]) -> std::io::Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let dir = self.dir(cluster);
        std::fs::create_dir_all(&dir)?;
        for r in results {
            let bytes = encode(r).map_err(std::io::Error::other)?;
            let tmp = dir.join(format!(".{}.tmp", r.id));
            // Readable by the node's user alone (see `private`).
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
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

    /// Deletes collected results (and the cluster's folder once empty).
    pub(crate) fn forget(&self, cluster: ClusterId, jobs: &[JobId]) {
        let dir = self.dir(cluster);
        for id in jobs {
            let _ = std::fs::remove_file(dir.join(format!("{id}.cbor")));
        }
        let _ = std::fs::remove_dir(&dir);
    }

    /// Deletes the results of clusters kept longer than `ttl`.
    pub(crate) fn sweep(&self, ttl: Duration) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ttl);
            if old {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
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
