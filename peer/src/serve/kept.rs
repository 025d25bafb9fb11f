//! Results kept until their client has them, as `<dest>/results/<hidden>/<job>.cbor`: those
//! that waited or travelled longer than a healthy delivery takes (so a crash of the node does
//! not lose them), and, when a client's zombie interval ends, all it never received.
//!
//! A recovering client (`dispy-peer recover`) collects them; they are deleted when
//! collected or after the result TTL.
//!
//! `<hidden>` is [`ClusterId::hidden_name`], not the id, which jobs could read by listing
//! the folder; beside the results, `owner` holds the hash of the cluster's owner token
//! (when its client sent one), which a recovering client must match.

use dispy_protocol::{ClusterId, JobId, JobResult, OwnerHash, decode, encode};
use std::collections::HashSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

/// The file beside a cluster's kept results that names their owner.
const OWNER_FILE: &str = "owner";

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

    pub(crate) fn dir(&self, cluster: ClusterId) -> PathBuf {
        self.root.join(cluster.hidden_name())
    }

    /// Writes results, and their owner's hash if the folder has none yet (blocking: call
    /// off the event thread).
    pub(crate) fn save(
        &self,
        cluster: ClusterId,
        owner: Option<OwnerHash>,
        results: &[JobResult],
    ) -> std::io::Result<()> {
        if results.is_empty() {
            return Ok(());
        }
        let dir = self.dir(cluster);
        std::fs::create_dir_all(&dir)?;
        if let Some(owner) = owner {
            let path = dir.join(OWNER_FILE);
            if !path.exists() {
                let tmp = dir.join(".owner.tmp");
                std::fs::write(&tmp, owner.to_hex())?;
                std::fs::rename(&tmp, path)?;
            }
        }
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

    /// Who owns a cluster's kept results: `Ok(None)` when there are none, `Ok(Some(None))`
    /// when they name no owner (kept for a client that sent no owner hash).
    pub(crate) fn owner(&self, cluster: ClusterId) -> Option<Option<OwnerHash>> {
        let dir = self.dir(cluster);
        if !dir.is_dir() {
            return None;
        }
        let text = std::fs::read_to_string(dir.join(OWNER_FILE)).ok();
        // An owner file that does not parse names an owner nobody can match.
        Some(text.map(|t| t.trim().parse().unwrap_or(OwnerHash([0; 32]))))
    }

    /// The results kept for a cluster, except those in `skip`, read one file at a time
    /// until they exceed `max_bytes` (at least one is returned): a large folder costs a
    /// recover no more memory than one answer holds. Unreadable files are skipped.
    pub(crate) fn load(&self, cluster: ClusterId, skip: &HashSet<JobId>, max_bytes: usize) -> Vec<JobResult> {
        let Ok(entries) = std::fs::read_dir(self.dir(cluster)) else { return Vec::new() };
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in entries.flatten() {
            let path = e.path();
            let id = path
                .extension()
                .filter(|x| *x == "cbor")
                .and_then(|_| path.file_stem())
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok());
            let Some(id) = id.map(JobId).filter(|id| !skip.contains(id)) else { continue };
            let Some(result) = std::fs::read(&path).ok().and_then(|b| decode::<JobResult>(&b).ok()) else { continue };
            if result.id != id {
                continue;
            }
            bytes += result.payload_len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(result);
        }
        out
    }

    /// Deletes collected results (and the cluster's folder once no result is left).
    pub(crate) fn forget(&self, cluster: ClusterId, jobs: &[JobId]) {
        let dir = self.dir(cluster);
        for id in jobs {
            let _ = std::fs::remove_file(dir.join(format!("{id}.cbor")));
        }
        let left = std::fs::read_dir(&dir)
            .map(|mut entries| entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "cbor"))))
            .unwrap_or(true);
        if !left {
            let _ = std::fs::remove_file(dir.join(OWNER_FILE));
            let _ = std::fs::remove_dir(&dir);
        }
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
        let all = |c| kept.load(ClusterId(c), &HashSet::new(), usize::MAX);
        let owner = dispy_protocol::OwnerToken([1; 32]).hash();
        kept.save(ClusterId(9), Some(owner), std::slice::from_ref(&r)).unwrap();
        assert_eq!(all(9), vec![r]);
        assert_eq!(kept.owner(ClusterId(9)), Some(Some(owner)));
        assert!(!kept.dir(ClusterId(9)).to_string_lossy().contains(&ClusterId(9).to_string()), "id not in the name");
        kept.forget(ClusterId(9), &[JobId(4)]);
        assert!(all(9).is_empty());
        assert_eq!(kept.owner(ClusterId(9)), None, "the folder went with its last result");
        kept.save(ClusterId(10), None, &[JobResult { id: JobId(1), ..kept_dummy() }]).unwrap();
        assert_eq!(kept.owner(ClusterId(10)), Some(None));
        kept.sweep(Duration::ZERO);
        assert!(all(10).is_empty());
    }

    #[test]
    fn a_load_stops_past_its_byte_budget_and_skips_what_it_is_told() {
        let dest = tempfile::tempdir().unwrap();
        let kept = KeptResults::open(dest.path()).unwrap();
        let big = |id| JobResult { id: JobId(id), value: vec![0; 1000], ..kept_dummy() };
        kept.save(ClusterId(1), None, &[big(1), big(2), big(3)]).unwrap();
        assert_eq!(kept.load(ClusterId(1), &HashSet::new(), 1500).len(), 1);
        assert_eq!(kept.load(ClusterId(1), &HashSet::new(), 10).len(), 1, "at least one");
        let skip: HashSet<JobId> = [JobId(1), JobId(2)].into();
        assert_eq!(kept.load(ClusterId(1), &skip, usize::MAX).iter().map(|r| r.id).collect::<Vec<_>>(), [JobId(3)]);
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
