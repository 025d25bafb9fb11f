//! Content hashes of large local files, remembered between runs, so that submitting the same
//! multi-gigabyte dependency again does not read it all again just to learn that the nodes
//! have it. An entry holds only while the file's device, inode, size, modification and change
//! times are all as they were when it was hashed: any write moves the change time, which no
//! tool can set back. A file changed within the last seconds is not remembered (timestamps
//! are coarser than writes).
//!
//! The cache lives in `$XDG_CACHE_HOME/dispy-peer/hashes` (else `~/.cache/…`); losing it
//! only costs a re-read, so every error reading or writing it is ignored.

use dispy_protocol::FileHash;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Smaller files are hashed faster than the cache is read.
const MIN_SIZE: u64 = 4 << 20;
/// Entries kept, most recently used first.
const MAX_ENTRIES: usize = 4096;
/// A file whose change time is younger than this may change again unseen.
const SETTLE: Duration = Duration::from_secs(2);

/// What identifies one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    /// Seconds and nanoseconds.
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    fn ctime_ns(&self) -> i128 {
        self.ctime.0 as i128 * 1_000_000_000 + self.ctime.1 as i128
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    hash: FileHash,
    /// Seconds since the epoch when last used.
    used: u64,
}

/// The remembered hashes; [`HashCache::save`] writes back what changed.
#[derive(Debug, Default)]
pub(crate) struct HashCache {
    file: Option<PathBuf>,
    /// By canonical path, as bytes (paths need not be UTF-8).
    entries: HashMap<Vec<u8>, Entry>,
    changed: bool,
    settle: Duration,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// This user's dispy-peer cache folder, `$XDG_CACHE_HOME/dispy-peer` (else
/// `~/.cache/dispy-peer`), if there is a cache folder at all: the hashes and the worker
/// images (`crate::image`) live there.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("dispy-peer"))
}

impl HashCache {
    /// The user's cache (empty, and never saved, if there is no cache folder).
    pub(crate) fn open() -> HashCache {
        match cache_dir() {
            Some(dir) => HashCache::at(&dir, SETTLE),
            None => HashCache::default(),
        }
    }

    fn at(dir: &Path, settle: Duration) -> HashCache {
        let file = dir.join("hashes");
        let entries = std::fs::read(&file)
            .ok()
            .and_then(|bytes| dispy_protocol::decode::<Vec<(Vec<u8>, Entry)>>(&bytes).ok())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        HashCache { file: Some(file), entries, changed: false, settle }
    }

    /// The hash and size of `path`, from the cache when it still holds, else from `compute`
    /// (which reads the file), remembered for next time when the file is large and settled.
    pub(crate) fn hash(
        &mut self,
        path: &Path,
        compute: impl FnOnce(&Path) -> std::io::Result<(FileHash, u64)>,
    ) -> std::io::Result<(FileHash, u64)> {
        let before = std::fs::metadata(path)?;
        if before.size() < MIN_SIZE {
            return compute(path);
        }
        let key = std::fs::canonicalize(path)?.as_os_str().as_bytes().to_vec();
        let stamp = Stamp::of(&before);
        if let Some(e) = self.entries.get_mut(&key).filter(|e| e.stamp == stamp) {
            e.used = now_secs();
            self.changed = true;
            return Ok((e.hash, stamp.size));
        }
        let (hash, size) = compute(path)?;
        // Remembered only if the file did not change while it was read, and has not changed
        // for long enough that a change now would move its timestamps.
        let after = Stamp::of(&std::fs::metadata(path)?);
        let settled_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128 - self.settle.as_nanos() as i128)
            .unwrap_or(0);
        if after == stamp && size == stamp.size && stamp.ctime_ns() <= settled_ns {
            self.entries.insert(key, Entry { stamp, hash, used: now_secs() });
            self.changed = true;
        }
        Ok((hash, size))
    }

    /// Writes the cache back if it changed (atomically; a concurrent run's writes may win).
    pub(crate) fn save(self) {
        let (Some(file), true) = (self.file, self.changed) else { return };
        let mut entries: Vec<(Vec<u8>, Entry)> = self.entries.into_iter().collect();
        entries.sort_by_key(|(_, e)| std::cmp::Reverse(e.used));
        entries.truncate(MAX_ENTRIES);
        let Ok(bytes) = dispy_protocol::encode(&entries) else { return };
        let Some(dir) = file.parent() else { return };
        let tmp = dir.join(format!("hashes.{}", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &file));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(cause = %e, "could not save the file hash cache");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn counted(n: &Cell<u32>) -> impl FnOnce(&Path) -> std::io::Result<(FileHash, u64)> + '_ {
        move |p| {
            n.set(n.get() + 1);
            let size = std::fs::metadata(p)?.len();
            Ok((FileHash([n.get() as u8; 32]), size))
        }
    }

    #[test]
    fn a_large_file_is_read_once_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.bin");
        std::fs::write(&data, vec![1u8; MIN_SIZE as usize]).unwrap();
        let reads = Cell::new(0);
        let mut cache = HashCache::at(dir.path(), Duration::ZERO);
        let first = cache.hash(&data, counted(&reads)).unwrap();
        assert_eq!(cache.hash(&data, counted(&reads)).unwrap(), first);
        assert_eq!(reads.get(), 1, "the second time comes from the cache");
        cache.save();

        let mut cache = HashCache::at(dir.path(), Duration::ZERO);
        assert_eq!(cache.hash(&data, counted(&reads)).unwrap(), first, "saved and loaded");
        assert_eq!(reads.get(), 1);

        // Same size, modification time set back: the change time still tells.
        let mtime = std::fs::metadata(&data).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&data, vec![2u8; MIN_SIZE as usize]).unwrap();
        std::fs::File::options().write(true).open(&data).unwrap().set_modified(mtime).unwrap();
        assert_ne!(cache.hash(&data, counted(&reads)).unwrap(), first);
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn small_and_unsettled_files_are_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"tiny").unwrap();
        let fresh = dir.path().join("fresh");
        std::fs::write(&fresh, vec![0u8; MIN_SIZE as usize]).unwrap();
        let reads = Cell::new(0);
        let mut cache = HashCache::at(dir.path(), Duration::from_secs(3600));
        for _ in 0..2 {
            cache.hash(&small, counted(&reads)).unwrap();
            cache.hash(&fresh, counted(&reads)).unwrap();
        }
        assert_eq!(reads.get(), 4);
        assert!(cache.entries.is_empty());
    }
}
