//! Program jobs' directories. Each job runs in a directory holding exactly its cluster's
//! files. Making one costs an ext4 inode (mkdir, a link per file, later a removal): the
//! largest share of the node's own CPU per short job. So a directory whose job has ended is
//! handed to a later job of the cluster if, when it is handed out, it holds what it held at
//! the start (the same names, linked to the same stored files); any other goes to the trash,
//! removed in batches off the path between jobs.

use super::store::Store;
use dispy_protocol::FileEntry;
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Finished job directories removed together: one hop to the blocking pool per batch.
const TRASH_BATCH: usize = 32;

/// What a pristine job directory holds: each name and the inode it links to.
type Layout = HashMap<OsString, u64>;

/// One cluster's job directories.
#[derive(Debug)]
pub(super) struct JobDirs {
    root: PathBuf,
    made: u64,
    /// Directories whose jobs ended, not checked yet.
    returned: Vec<PathBuf>,
    /// `None` until known; `Some(None)` when directories are never reused (a file in a
    /// subdirectory, whose contents a job could change unseen by one listing).
    layout: Option<Option<Layout>>,
}

/// A directory for one job; `fresh` when it must still be made and filled.
#[derive(Debug)]
pub(super) struct JobDir {
    pub(super) path: PathBuf,
    pub(super) fresh: bool,
}

impl JobDirs {
    pub(super) fn new(root: PathBuf) -> Self {
        JobDirs { root, made: 0, returned: Vec::new(), layout: None }
    }

    /// A directory that is clean now, else the name of a new one. Directories given back
    /// are checked here, when they are handed out, not when their job ended: whatever a
    /// leftover process of that job wrote since is seen. Dirty ones (and any, when the
    /// files cannot be checked) go to `trash`.
    pub(super) fn take(&mut self, store: &Store, files: &[FileEntry], trash: &mut Trash) -> JobDir {
        if self.layout.is_none() {
            self.layout = layout(store, files);
        }
        let layout = self.layout.as_ref().and_then(Option::as_ref);
        while let Some(path) = self.returned.pop() {
            if layout.is_some_and(|l| is_pristine(&path, l)) {
                return JobDir { path, fresh: false };
            }
            trash.push(path);
        }
        self.made += 1;
        JobDir { path: self.root.join(format!("job-{}", self.made)), fresh: true }
    }

    /// Takes back a directory whose job has ended (reused if still clean when next asked,
    /// also one that failed to be made or filled: a listing tells).
    pub(super) fn give_back(&mut self, path: PathBuf) {
        self.returned.push(path);
    }
}

/// The layout of `files` in a job directory, if they all sit at its top level and are
/// stored; `None` when not yet known (a file not stored yet).
fn layout(store: &Store, files: &[FileEntry]) -> Option<Option<Layout>> {
    let mut names = HashMap::with_capacity(files.len());
    for f in files {
        if f.name.contains('/') {
            return Some(None);
        }
        let ino = std::fs::metadata(store.path(&f.hash)).ok()?.ino();
        names.insert(OsString::from(&f.name), ino);
    }
    Some(Some(names))
}

/// Whether `dir` holds exactly what `layout` says: no file added, removed or replaced.
fn is_pristine(dir: &Path, layout: &Layout) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    let mut seen = 0;
    for entry in entries {
        let Ok(entry) = entry else { return false };
        if layout.get(&entry.file_name()) != Some(&entry.ino()) {
            return false;
        }
        seen += 1;
    }
    seen == layout.len()
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
        let layout: HashMap<OsString, u64> =
            [(OsString::from("prog"), std::fs::metadata(&stored).unwrap().ino())].into_iter().collect();
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
}
