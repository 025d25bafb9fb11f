//! Program jobs' directories. Each job runs in a directory holding exactly its cluster's
//! files. Making one costs an ext4 inode (mkdir, a link per file, later a removal): the
//! largest share of the node's own CPU per short job. So a directory whose job has ended is
//! handed to a later job of the cluster if, when it is handed out, it holds what it held at
//! the start (the same names, linked to the same stored files, in the same sub-directories);
//! any other goes to the trash, removed in batches off the path between jobs.
//!
//! The check lists each directory of the tree once (one `getdents` for a flat cluster, as
//! before sub-directories were allowed) and stats only sub-directories, for their mode. It
//! runs on the blocking pool, in the job's own task ([`Reuse::settle`]), as does the layout
//! it compares with (a `stat` per file, once per cluster): a cluster of many files costs
//! the node's task nothing per job.

use super::store::Store;
use dispy_protocol::FileEntry;
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Finished job directories removed together: one hop to the blocking pool per batch.
const TRASH_BATCH: usize = 32;

/// What a pristine job directory (or one of its sub-directories) holds, by name.
#[derive(Debug, Default, PartialEq)]
struct Layout(HashMap<OsString, Entry>);

/// One name in a [`Layout`].
#[derive(Debug, PartialEq)]
enum Entry {
    /// A file: the inode of the stored file it links to.
    File(u64),
    /// A sub-directory the node made.
    Dir(Layout),
}

/// One cluster's job directories.
#[derive(Debug)]
pub(super) struct JobDirs {
    root: PathBuf,
    made: u64,
    /// Directories whose jobs ended, not checked yet.
    returned: Vec<PathBuf>,
    /// Set once known (by the first check, on the blocking pool); `None` inside when
    /// directories are never reused (names that do not fit in one tree: their directories
    /// fail to fill anyway).
    layout: Arc<OnceLock<Option<Layout>>>,
}

/// A directory for one job: a new one (`reuse` is `None`), or one a job of the cluster
/// used, to be checked first.
#[derive(Debug)]
pub(super) struct JobDir {
    pub(super) path: PathBuf,
    pub(super) reuse: Option<Reuse>,
}

/// What checking a used directory takes: the cluster's layout (made by the first check)
/// and a new directory's name, for when the used one is not clean.
#[derive(Debug)]
pub(super) struct Reuse {
    layout: Arc<OnceLock<Option<Layout>>>,
    spare: PathBuf,
}

impl Reuse {
    /// Whether `dir` is clean now (blocking: call on the blocking pool); if not, it is
    /// removed and the spare's name comes back, to be made and filled. Checked when handed
    /// out, not when its job ended: whatever a leftover process of that job wrote since is
    /// seen.
    pub(super) fn settle(self, dir: PathBuf, store: &Store, files: &[FileEntry]) -> (PathBuf, bool) {
        // A job of any cluster may have written to a stored file that this directory
        // links: then it is not reused (and the file is sent again, see `Store::has`).
        if !files.iter().all(|f| store.intact(&f.hash, f.size)) {
            let _ = std::fs::remove_dir_all(&dir);
            return (self.spare, true);
        }
        let layout = match self.layout.get() {
            Some(known) => known.as_ref(),
            None => match layout(store, files) {
                Some(made) => self.layout.get_or_init(|| made).as_ref(),
                None => None,
            },
        };
        if layout.is_some_and(|l| is_pristine(&dir, l)) {
            return (dir, false);
        }
        let _ = std::fs::remove_dir_all(&dir);
        (self.spare, true)
    }
}

impl JobDirs {
    pub(super) fn new(root: PathBuf) -> Self {
        JobDirs { root, made: 0, returned: Vec::new(), layout: Arc::default() }
    }

    /// A directory for the next job: one given back (to be checked, see [`Reuse`]), else
    /// the name of a new one. Touches no disk.
    pub(super) fn take(&mut self) -> JobDir {
        self.made += 1;
        let fresh = self.root.join(format!("job-{}", self.made));
        match self.returned.pop() {
            Some(path) => JobDir { path, reuse: Some(Reuse { layout: self.layout.clone(), spare: fresh }) },
            None => JobDir { path: fresh, reuse: None },
        }
    }

    /// Takes back a directory whose job has ended (reused if still clean when next asked,
    /// also one that failed to be made or filled: a listing tells).
    pub(super) fn give_back(&mut self, path: PathBuf) {
        self.returned.push(path);
    }
}

/// The layout of `files` in a job directory, if they are all stored; `None` when not yet
/// known (a file not stored yet).
fn layout(store: &Store, files: &[FileEntry]) -> Option<Option<Layout>> {
    let mut top = Layout(HashMap::with_capacity(files.len()));
    for f in files {
        let ino = std::fs::metadata(store.path(&f.hash)).ok()?.ino();
        let mut parts = f.name.split('/').peekable();
        let mut dir = &mut top;
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            let new = || if last { Entry::File(ino) } else { Entry::Dir(Layout::default()) };
            match dir.0.entry(OsString::from(part)).or_insert_with(new) {
                Entry::Dir(sub) if !last => dir = sub,
                Entry::File(i) if last && *i == ino => break,
                _ => return Some(None),
            }
        }
    }
    Some(Some(top))
}

/// Whether `dir` holds exactly what `layout` says: no file added, removed or replaced, in
/// it or in any sub-directory, and every sub-directory still open to its owner. Walks with
/// a stack, not recursion: a deep tree cannot exhaust the task's stack.
fn is_pristine(dir: &Path, layout: &Layout) -> bool {
    // Listing follows a link: one planted in the directory's place is never reused.
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_dir()) {
        return false;
    }
    let mut pending = vec![(dir.to_path_buf(), layout)];
    while let Some((dir, layout)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { return false };
        let mut seen = 0;
        for entry in entries {
            let Ok(entry) = entry else { return false };
            match layout.0.get(&entry.file_name()) {
                Some(Entry::File(ino)) if *ino == entry.ino() => {}
                Some(Entry::Dir(sub)) => {
                    // `file_type` comes with the listing; the mode costs a stat, paid only by
                    // sub-directories (a job that made one unwritable leaves it dirty).
                    let is_open_dir = entry.file_type().is_ok_and(|t| t.is_dir())
                        && entry.metadata().is_ok_and(|m| m.permissions().mode() & 0o700 == 0o700);
                    if !is_open_dir {
                        return false;
                    }
                    pending.push((entry.path(), sub));
                }
                _ => return false,
            }
            seen += 1;
        }
        if seen != layout.0.len() {
            return false;
        }
    }
    true
}

/// Directories to delete, across clusters.
#[derive(Debug, Default)]
pub(super) struct Trash(Vec<PathBuf>);

impl Trash {
    /// Adds `dir`; a full batch is removed on the blocking pool.
    pub(super) fn push(&mut self, dir: PathBuf) {
        self.0.push(dir);
        if self.0.len() >= TRASH_BATCH {
            let batch = std::mem::take(&mut self.0);
            tokio::task::spawn_blocking(move || {
                for dir in batch {
                    let _ = std::fs::remove_dir_all(dir);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_pristine_only_as_it_was_made() {
        let dir = tempfile::tempdir().unwrap();
        let stored = dir.path().join("stored");
        std::fs::write(&stored, b"x").unwrap();
        let job = dir.path().join("job");
        std::fs::create_dir(&job).unwrap();
        std::fs::hard_link(&stored, job.join("prog")).unwrap();
        let ino = std::fs::metadata(&stored).unwrap().ino();
        let layout = Layout([(OsString::from("prog"), Entry::File(ino))].into_iter().collect());
        assert!(is_pristine(&job, &layout));

        std::fs::write(job.join("out.txt"), b"left behind").unwrap();
        assert!(!is_pristine(&job, &layout), "an added file");
        std::fs::remove_file(job.join("out.txt")).unwrap();

        // Replaced by a file of the same name: another inode.
        std::fs::remove_file(job.join("prog")).unwrap();
        std::fs::write(job.join("prog"), b"x").unwrap();
        assert!(!is_pristine(&job, &layout), "a replaced file");

        std::fs::remove_file(job.join("prog")).unwrap();
        assert!(!is_pristine(&job, &layout), "a removed file");
        assert!(!is_pristine(&dir.path().join("gone"), &layout), "a missing directory");
    }

    #[test]
    fn a_tree_is_pristine_only_as_it_was_made() {
        let dest = tempfile::tempdir().unwrap();
        let store = Store::open(dest.path()).unwrap();
        use sha2::Digest;
        let entry = |name: &str, data: &[u8]| {
            let hash = dispy_protocol::FileHash(sha2::Sha256::digest(data).into());
            if !store.has(&hash, data.len() as u64) {
                store.begin(hash, data.len() as u64).unwrap().write(0, data).unwrap();
            }
            FileEntry { name: name.into(), hash, size: data.len() as u64, executable: false }
        };
        let files = vec![entry("prog", b"p"), entry("data/a.txt", b"a"), entry("data/sub/b.bin", b"b")];
        let tree = layout(&store, &files).unwrap().expect("one tree");
        let fresh = |n: usize| {
            let job = dest.path().join(format!("job{n}"));
            std::fs::create_dir(&job).unwrap();
            store.link_into(&job, &files).unwrap();
            assert!(is_pristine(&job, &tree), "as made");
            job
        };
        let job = fresh(0);
        std::fs::write(job.join("data/sub/out"), b"left").unwrap();
        assert!(!is_pristine(&job, &tree), "a file added in a sub-directory");

        let job = fresh(1);
        std::fs::remove_file(job.join("data/sub/b.bin")).unwrap();
        assert!(!is_pristine(&job, &tree), "a file removed from a sub-directory");
        std::fs::write(job.join("data/sub/b.bin"), b"b").unwrap();
        assert!(!is_pristine(&job, &tree), "a file replaced in a sub-directory");

        let job = fresh(2);
        std::fs::create_dir(job.join("data/sub/new")).unwrap();
        assert!(!is_pristine(&job, &tree), "a directory added");

        let job = fresh(3);
        std::fs::remove_dir_all(job.join("data/sub")).unwrap();
        assert!(!is_pristine(&job, &tree), "a directory removed");

        let job = fresh(4);
        std::fs::set_permissions(job.join("data/sub"), std::fs::Permissions::from_mode(0o555)).unwrap();
        assert!(!is_pristine(&job, &tree), "a directory made read-only");

        let job = fresh(5);
        std::fs::remove_file(job.join("data/a.txt")).unwrap();
        std::os::unix::fs::symlink(store.path(&files[1].hash), job.join("data/a.txt")).unwrap();
        assert!(!is_pristine(&job, &tree), "a file replaced by a symlink to it");

        let clash = vec![entry("data", b"a"), entry("data/x", b"b")];
        assert_eq!(layout(&store, &clash), Some(None), "names that do not fit one tree: never reused");
    }
}
