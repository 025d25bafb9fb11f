//! The node's files: a content-addressed store (`<dest>/store/<sha256>`) shared by every
//! cluster, and the job directories that present a cluster's files under their names.
//!
//! A file is written to `store/.partial/` chunk by chunk while its hash is computed, and
//! renamed into place only when size and hash match what the client declared, so a
//! half-sent or corrupt file is never used. Stored files are read-only, open to the node's
//! user alone, sealed by what a job cannot forge (see [`Store::has`]), and hard-linked into
//! job directories, which costs no copy however large they are.

use dispy_protocol::{FileEntry, FileHash};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// A staged file's name is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// Empty name.
    #[error("empty file name")]
    Empty,
    /// `/etc/passwd` and friends.
    #[error("file name {0:?} is absolute; names must be relative to the job directory")]
    Absolute(String),
    /// `..`, `.`, an empty component (`a//b`, `a/`), or a Windows prefix.
    #[error("file name {0:?} escapes the job directory (only plain, non-empty path components are allowed)")]
    Escapes(String),
    /// An existing component of the destination is a symbolic link.
    #[error("file name {0:?} passes through a symbolic link; refusing to write through it")]
    Symlink(String),
    /// Longer than a path may be.
    #[error("file name of {0} bytes is longer than the {MAX_NAME_LEN} bytes a path may have")]
    TooLong(usize),
    /// Two files with one name, or a name that is both a file and a directory of others.
    #[error("file name {0:?} is used twice, or both as a file and as a directory holding files")]
    Clash(String),
}

/// Longest file name accepted (Linux's `PATH_MAX`): it bounds the work a name costs, and
/// a longer one could not be created anyway.
pub const MAX_NAME_LEN: usize = 4096;

/// Checks a file name received from a client: relative, plain components only.
///
/// # Errors
/// A [`PathError`] saying what is wrong.
///
/// # Examples
/// ```
/// use dispy_node::serve::store::check_name;
/// assert!(check_name("data/input.csv").is_ok());
/// assert!(check_name("../../etc/passwd").is_err());
/// assert!(check_name("/etc/passwd").is_err());
/// ```
pub fn check_name(name: &str) -> Result<PathBuf, PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(PathError::TooLong(name.len()));
    }
    let path = Path::new(name);
    if path.is_absolute() {
        return Err(PathError::Absolute(name.to_string()));
    }
    // Split by hand: `Path::components` quietly drops empty and interior `.` components,
    // which must be refused, not normalised.
    if name.contains('\0') || name.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(PathError::Escapes(name.to_string()));
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            _ => return Err(PathError::Escapes(name.to_string())),
        }
    }
    Ok(out)
}

/// Checks a cluster's file names together: each with [`check_name`], and that they fit in
/// one directory tree (no name used for two different files, none both a file and a
/// directory of others). The same file listed twice is fine. Costs one pass over the
/// names' bytes, however deep they nest.
///
/// # Errors
/// The first [`PathError`] found.
///
/// # Examples
/// ```
/// use dispy_node::serve::store::check_names;
/// use dispy_protocol::{FileEntry, FileHash};
/// let f = |name: &str| FileEntry { name: name.into(), hash: FileHash([0; 32]), size: 0, executable: false };
/// assert!(check_names(&[f("data/a"), f("data/sub/b"), f("prog")]).is_ok());
/// assert!(check_names(&[f("data"), f("data/a")]).is_err());
/// ```
pub fn check_names(files: &[FileEntry]) -> Result<(), PathError> {
    // A tree of components: (parent node, component) -> node; node 0 is the top.
    let mut children: HashMap<(usize, &str), usize> = HashMap::with_capacity(files.len());
    // What each node is: a directory (None) or the file with this hash.
    let mut kinds: Vec<Option<&FileHash>> = vec![None];
    for f in files {
        check_name(&f.name)?;
        let clash = || PathError::Clash(f.name.clone());
        let mut parts = f.name.split('/').peekable();
        let mut node = 0;
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            let next = kinds.len();
            let id = *children.entry((node, part)).or_insert(next);
            if id == next {
                kinds.push(last.then_some(&f.hash));
            } else {
                match (kinds[id], last) {
                    (Some(hash), true) if *hash == f.hash => {}
                    (None, false) => {}
                    _ => return Err(clash()),
                }
            }
            node = id;
        }
    }
    Ok(())
}

/// The modification time of every stored file. Not the epoch itself: tools that read the
/// time a job's input was made (gzip stores it, and warns with exit status 2 when it is 0)
/// must see a plausible one. Not a seal on its own: the file's owner can set it back.
pub fn stored_mtime() -> std::time::SystemTime {
    // 2001-09-09: far from any overflow.
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000)
}

/// Mode of a stored file: read and run by the node's user (jobs run as that user), by no
/// one else. One mode for all: a hard link cannot give one content two modes.
const STORED_MODE: u32 = 0o500;

/// What a job cannot forge about a stored file, taken when it is stored. A job runs as the
/// file's owner and can write to it through its hard link and then set the modification
/// time back (`touch -d`); but any write, `chmod` or `touch` moves the change time (ctime)
/// to now, which only root or a clock change can set back, and replacing the file changes
/// the inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seal {
    ino: u64,
    size: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl Seal {
    fn of(m: &fs::Metadata) -> Seal {
        Seal { ino: m.ino(), size: m.len(), ctime: (m.ctime(), m.ctime_nsec()), mtime: (m.mtime(), m.mtime_nsec()) }
    }
}

/// What a stored file's metadata says against its seal.
enum Check {
    /// As sealed; its size.
    Sealed(u64),
    /// Only its change time moved (by a link the node made or removed, or by a write with
    /// its modification time set back): hash it to know. Its metadata now.
    Doubt(Seal),
    /// Certainly changed or replaced.
    Broken,
    /// Not there, or not sealed by this run.
    Missing,
}

/// The SHA-256 of a file's content.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// The content-addressed store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// The seal of each file stored by this run, shared by every clone. Kept in memory
    /// only: a seal on disk would sit where jobs can rewrite it. A file of an earlier run
    /// has none and counts as missing; the next cluster that needs it sends it again.
    seals: Arc<Mutex<HashMap<FileHash, Seal>>>,
    /// The files being hashed again right now: one thread hashes a file, the others that
    /// doubt it wait for its verdict (a Reserve arriving while a released cluster's files
    /// are resealed would otherwise hash them a second time).
    hashing: Arc<(Mutex<HashSet<FileHash>>, Condvar)>,
    /// How many times files were hashed again, in all (logged with each).
    rehashed: Arc<AtomicU64>,
}

/// A turn to hash one file again (see `Store::hashing`); ends, waking the waiters, on drop.
struct HashTurn<'a> {
    hashing: &'a (Mutex<HashSet<FileHash>>, Condvar),
    hash: FileHash,
}

impl<'a> HashTurn<'a> {
    /// The turn, or `None` after waiting for another thread's turn on the same file to end
    /// (the caller looks again: that thread has sealed or removed it).
    fn take(hashing: &'a (Mutex<HashSet<FileHash>>, Condvar), hash: &FileHash) -> Option<HashTurn<'a>> {
        let (set, ended) = hashing;
        let mut busy = set.lock().unwrap_or_else(PoisonError::into_inner);
        if busy.insert(*hash) {
            return Some(HashTurn { hashing, hash: *hash });
        }
        while busy.contains(hash) {
            busy = ended.wait(busy).unwrap_or_else(PoisonError::into_inner);
        }
        None
    }
}

impl Drop for HashTurn<'_> {
    fn drop(&mut self) {
        let (set, ended) = self.hashing;
        set.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.hash);
        ended.notify_all();
    }
}

impl Store {
    /// Opens (creating) `<dest>/store`, private to the node's user, and clears half-written
    /// files of an earlier run.
    ///
    /// # Errors
    /// The I/O error, if the folders cannot be made or are not the node user's own.
    pub fn open(dest: &Path) -> std::io::Result<Store> {
        let root = dest.join("store");
        super::private::private_subdir(&root).map_err(std::io::Error::other)?;
        let partial = root.join(".partial");
        let _ = fs::remove_dir_all(&partial);
        fs::DirBuilder::new().mode(0o700).create(&partial)?;
        Ok(Store { root, seals: Arc::default(), hashing: Arc::default(), rehashed: Arc::default() })
    }

    /// Where a file with this hash lives once complete.
    pub fn path(&self, hash: &FileHash) -> PathBuf {
        self.root.join(hash.to_hex())
    }

    /// Whether the store holds this file complete and unchanged: what a new cluster asks.
    /// Stored files are read-only, but jobs run as the node's user, who owns them (or as
    /// root): a job can make one writable, write to it through its hard link, then set its
    /// modification time back. Any of that moves its change time off its [`Seal`]; so do
    /// the links the node makes and removes, so a moved change time alone means doubt, and
    /// the file is hashed again (once: it is sealed anew if unchanged). A changed file
    /// counts as missing and is deleted, so the next cluster that needs it sends it again.
    pub fn has(&self, hash: &FileHash, size: u64) -> bool {
        loop {
            return match self.check(hash) {
                Check::Sealed(len) => len == size,
                Check::Doubt(seal) => {
                    let Some(_turn) = HashTurn::take(&self.hashing, hash) else { continue };
                    if let Check::Sealed(len) = self.check(hash) {
                        return len == size; // sealed by a turn that ended just before ours
                    }
                    let t = std::time::Instant::now();
                    let got = hash_file(&self.path(hash));
                    let times = self.rehashed.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::debug!(file = %hash, size = seal.size, ms = t.elapsed().as_millis() as u64, times,
                        "a stored file hashed again (its change time moved)");
                    match got {
                        Ok(got) if got == hash.0 => {
                            self.seals().insert(*hash, seal);
                            seal.size == size
                        }
                        _ => self.broken(hash),
                    }
                }
                Check::Broken => self.broken(hash),
                Check::Missing => false,
            };
        }
    }

    /// Hashes a file whose change time moved, so that the next [`Store::has`] finds it
    /// sealed (or broken and gone) without the wait: for when the links of a cluster that
    /// used it are gone. Blocking: call on the blocking pool.
    pub(crate) fn reseal(&self, hash: &FileHash, size: u64) {
        if matches!(self.check(hash), Check::Doubt(_)) {
            self.has(hash, size);
        }
    }

    /// [`Store::has`] without hashing: false only when the file is certainly changed (its
    /// modification time, size or inode moved) or missing. For each job's use, where a
    /// hash per file would cost too much; a write hidden by setting the time back is found
    /// by the next [`Store::has`].
    pub(crate) fn intact(&self, hash: &FileHash, size: u64) -> bool {
        match self.check(hash) {
            Check::Sealed(len) => len == size,
            Check::Doubt(seal) => seal.size == size,
            Check::Broken => self.broken(hash),
            Check::Missing => false,
        }
    }

    fn check(&self, hash: &FileHash) -> Check {
        let Ok(m) = fs::metadata(self.path(hash)) else { return Check::Missing };
        let Some(seal) = self.seals().get(hash).copied() else { return Check::Missing };
        let now = Seal::of(&m);
        if !m.is_file() || now.ino != seal.ino || now.size != seal.size || now.mtime != seal.mtime {
            Check::Broken
        } else if now.ctime != seal.ctime {
            Check::Doubt(now)
        } else {
            Check::Sealed(now.size)
        }
    }

    /// Deletes a stored file that changed; returns `false` (it is missing now).
    fn broken(&self, hash: &FileHash) -> bool {
        tracing::warn!(file = %hash, "a stored file changed since it was stored (a job wrote to it?); it will be sent again");
        self.seals().remove(hash);
        let _ = fs::remove_file(self.path(hash));
        false
    }

    /// Takes a file a job made into the store under its `hash` (computed by the caller),
    /// read-only and sealed, as staged files are.
    ///
    /// # Errors
    /// The I/O error of sealing or moving it.
    pub(crate) fn adopt(&self, path: &Path, hash: FileHash) -> std::io::Result<()> {
        File::open(path)?.set_modified(stored_mtime())?;
        fs::set_permissions(path, fs::Permissions::from_mode(STORED_MODE))?;
        let dest = self.path(&hash);
        fs::rename(path, &dest)?;
        let m = fs::metadata(&dest)?;
        self.seals().insert(hash, Seal::of(&m));
        Ok(())
    }

    fn seals(&self) -> std::sync::MutexGuard<'_, HashMap<FileHash, Seal>> {
        // A panic while holding the lock leaves the map whole: every change is one call.
        self.seals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts receiving a file.
    ///
    /// # Errors
    /// The I/O error, if the partial file cannot be created.
    pub fn begin(&self, hash: FileHash, size: u64) -> std::io::Result<Upload> {
        let tmp = self.root.join(".partial").join(format!("{}.{:x}", hash.to_hex(), rand::random::<u64>()));
        let file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let partial = Arc::new(Partial { path: tmp.clone(), written: AtomicU64::new(0) });
        Ok(Upload {
            partial,
            file,
            tmp,
            dest: self.path(&hash),
            hash,
            size,
            received: 0,
            hasher: Sha256::new(),
            stored: false,
            mismatched: false,
            seals: Arc::clone(&self.seals),
        })
    }

    /// Hard-links a cluster's files into a fresh job directory under their names.
    ///
    /// # Errors
    /// A message naming the file and the cause.
    pub fn link_into(&self, job_dir: &Path, files: &[FileEntry]) -> Result<(), String> {
        self.place(job_dir, files, |from, to| fs::hard_link(from, to))
    }

    /// Copies files into a job directory under their names: a job's own inputs, which it
    /// may change, delete or replace as it likes (`gzip FILE` does all three, and refuses a
    /// file with other hard links). Writable by the job (and by no one else); the stored
    /// copy stays sealed.
    ///
    /// # Errors
    /// A message naming the file and the cause.
    pub fn copy_into(&self, job_dir: &Path, files: &[FileEntry]) -> Result<(), String> {
        self.place(job_dir, files, |from, to| {
            fs::copy(from, to)?;
            let mode = if fs::metadata(from)?.permissions().mode() & 0o111 != 0 { 0o700 } else { 0o600 };
            fs::set_permissions(to, fs::Permissions::from_mode(mode))
        })
    }

    fn place(
        &self,
        job_dir: &Path,
        files: &[FileEntry],
        put: impl Fn(&Path, &Path) -> std::io::Result<()>,
    ) -> Result<(), String> {
        // Files of a tree come in order: consecutive ones share their directory, checked once.
        let mut last_parent: Option<PathBuf> = None;
        for f in files {
            let rel = check_name(&f.name).map_err(|e| e.to_string())?;
            // Checked at each use, not only when a cluster reserves: a job of any cluster may
            // have written to the stored file since.
            if !self.intact(&f.hash, f.size) {
                return Err(format!(
                    "the stored copy of {} changed since it was stored (a job wrote to it?), or is gone; \
                     it was deleted, and a new cluster sends it again",
                    f.name
                ));
            }
            let target = job_dir.join(&rel);
            if let Some(parent) = target.parent()
                && parent != job_dir
                && last_parent.as_deref() != Some(parent)
            {
                ensure_dir_inside(job_dir, parent, &f.name)?;
                last_parent = Some(parent.to_path_buf());
            }
            put(&self.path(&f.hash), &target)
                .map_err(|e| format!("cannot place {} in the job directory: {e}", f.name))?;
        }
        Ok(())
    }
}

/// Creates `dir` (inside `root`) refusing to pass through any symbolic link.
fn ensure_dir_inside(root: &Path, dir: &Path, name: &str) -> Result<(), String> {
    let rel = dir.strip_prefix(root).map_err(|_| PathError::Escapes(name.to_string()).to_string())?;
    let mut cur = root.to_path_buf();
    for part in rel.components() {
        cur.push(part);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(PathError::Symlink(name.to_string()).to_string()),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("cannot place {name}: {} is a file", cur.display())),
            Err(_) => fs::create_dir(&cur).map_err(|e| format!("cannot create {}: {e}", cur.display()))?,
        }
    }
    Ok(())
}

/// A file's copy while it is being written: where, and how many bytes are on disk. Other
/// nodes of the cluster may read what is written already (a pull trailing this copy); the
/// whole file is verified by each receiver.
#[derive(Debug)]
pub struct Partial {
    /// The partial file (gone once the copy is complete and moved into the store).
    pub path: PathBuf,
    written: AtomicU64,
}

impl Partial {
    /// Bytes written so far, from the file's start.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }
}

/// A file being received; chunks must come in order.
#[derive(Debug)]
pub struct Upload {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    hash: FileHash,
    size: u64,
    received: u64,
    hasher: Sha256,
    stored: bool,
    /// The bytes were all written and did not hash to the file's name.
    mismatched: bool,
    partial: Arc<Partial>,
    /// The store's seals, where this file's goes once stored.
    seals: Arc<Mutex<HashMap<FileHash, Seal>>>,
}

impl Upload {
    /// Bytes written so far: the offset the next chunk must have.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The file's declared size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The copy as others may read it while it grows.
    pub fn partial(&self) -> Arc<Partial> {
        Arc::clone(&self.partial)
    }

    /// Whether the bytes written, all of them, are not the file's (their hash is another):
    /// the sender is wrong, not the disk.
    pub fn mismatched(&self) -> bool {
        self.mismatched
    }

    /// Appends a chunk. Returns `true` once the file is complete, verified and in place.
    ///
    /// # Errors
    /// A message for the client: out-of-order chunk, too many bytes, hash mismatch, disk.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<bool, String> {
        if offset != self.received {
            return Err(format!("chunk at offset {offset} but {} bytes received so far", self.received));
        }
        if self.received + data.len() as u64 > self.size {
            return Err(format!("more bytes than the declared size of {}", self.size));
        }
        self.file.write_all(data).map_err(|e| format!("cannot write {}: {e}", self.tmp.display()))?;
        self.hasher.update(data);
        self.received += data.len() as u64;
        self.partial.written.store(self.received, Ordering::Release);
        if self.received < self.size {
            return Ok(false);
        }
        let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if got != self.hash.0 {
            self.mismatched = true;
            return Err(format!("content does not match its declared hash {}", self.hash));
        }
        self.file.flush().map_err(|e| e.to_string())?;
        self.file.set_modified(stored_mtime()).map_err(|e| format!("cannot seal {}: {e}", self.tmp.display()))?;
        fs::set_permissions(&self.tmp, fs::Permissions::from_mode(STORED_MODE)).map_err(|e| e.to_string())?;
        fs::rename(&self.tmp, &self.dest).map_err(|e| format!("cannot store {}: {e}", self.dest.display()))?;
        self.stored = true;
        // Taken after the rename, which may itself move the change time.
        let m = fs::metadata(&self.dest).map_err(|e| format!("cannot seal {}: {e}", self.dest.display()))?;
        self.seals.lock().unwrap_or_else(PoisonError::into_inner).insert(self.hash, Seal::of(&m));
        Ok(true)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.stored {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_are_refused() {
        assert_eq!(check_name("a/b.txt").unwrap(), PathBuf::from("a/b.txt"));
        assert_eq!(check_name("./a").unwrap_err(), PathError::Escapes("./a".into()));
        assert!(matches!(check_name("/etc/passwd"), Err(PathError::Absolute(_))));
        for bad in ["..", "../x", "a/../../x", "a/..", "", "a/./b", "/a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(check_name("data/sub/b.bin").unwrap(), PathBuf::from("data/sub/b.bin"));
        for empty in ["data//a", "data/", "a/./b"] {
            assert_eq!(check_name(empty).unwrap_err(), PathError::Escapes(empty.into()));
        }
        assert_eq!(check_name(&"a/".repeat(3000)).unwrap_err(), PathError::TooLong(6000));
    }

    #[test]
    fn names_must_fit_in_one_tree() {
        let f = |name: &str, byte: u8| FileEntry {
            name: name.into(),
            hash: FileHash([byte; 32]),
            size: 1,
            executable: false,
        };
        assert!(check_names(&[f("prog", 0), f("data/a", 1), f("data/sub/b", 2), f("data/a", 1)]).is_ok());
        let clash = |files: &[FileEntry]| matches!(check_names(files), Err(PathError::Clash(_)));
        assert!(clash(&[f("data/a", 1), f("data/a", 2)]), "one name, two files");
        assert!(clash(&[f("data", 1), f("data/a", 2)]), "a file, then a directory of that name");
        assert!(clash(&[f("data/a", 2), f("data", 1)]), "a directory, then a file of that name");
        assert!(clash(&[f("data/a/b", 2), f("data/a", 1)]));
        assert!(matches!(check_names(&[f("ok", 0), f("a/../../x", 1)]), Err(PathError::Escapes(_))));
    }

    fn sha(data: &[u8]) -> FileHash {
        FileHash(Sha256::digest(data).into())
    }

    #[test]
    fn upload_verifies_and_links() {
        let dest = tempfile::tempdir().unwrap();
        let store = Store::open(dest.path()).unwrap();
        let data = b"hello world".to_vec();
        let hash = sha(&data);
        let mut up = store.begin(hash, data.len() as u64).unwrap();
        assert!(up.write(3, b"lo").is_err(), "out of order");
        assert!(!up.write(0, &data[..5]).unwrap());
        assert!(up.write(5, &data[5..]).unwrap());
        assert!(store.has(&hash, data.len() as u64));

        let job = dest.path().join("job");
        fs::create_dir(&job).unwrap();
        let entry = FileEntry { name: "sub/dir/f.txt".into(), hash, size: 11, executable: false };
        store.link_into(&job, &[entry]).unwrap();
        assert_eq!(fs::read(job.join("sub/dir/f.txt")).unwrap(), data);
    }

    #[test]
    fn a_write_with_the_mtime_set_back_breaks_the_seal() {
        let dest = tempfile::tempdir().unwrap();
        let store = Store::open(dest.path()).unwrap();
        let hash = sha(b"hello");
        assert!(store.begin(hash, 5).unwrap().write(0, b"hello").unwrap());
        assert!(store.has(&hash, 5));
        let path = store.path(&hash);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, STORED_MODE);
        // The change time has the clock's coarse tick: a write in the same tick as the
        // seal would not move it (see the README's security model).
        std::thread::sleep(std::time::Duration::from_millis(50));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        fs::OpenOptions::new().write(true).open(&path).unwrap().write_all(b"j").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(STORED_MODE)).unwrap();
        File::open(&path).unwrap().set_modified(stored_mtime()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), stored_mtime(), "mtime forged");
        assert!(!store.has(&hash, 5), "the seal must see the write");
        assert!(!path.exists(), "the changed copy is deleted, never served");
        let job = dest.path().join("job");
        fs::create_dir(&job).unwrap();
        let entry = FileEntry { name: "f".into(), hash, size: 5, executable: false };
        assert!(store.link_into(&job, &[entry]).unwrap_err().contains("changed since it was stored"));
    }

    #[test]
    fn a_file_whose_links_are_gone_is_resealed_and_a_written_one_is_dropped() {
        let dest = tempfile::tempdir().unwrap();
        let store = Store::open(dest.path()).unwrap();
        let (good, bad) = (sha(b"kept"), sha(b"spoilt"));
        assert!(store.begin(good, 4).unwrap().write(0, b"kept").unwrap());
        assert!(store.begin(bad, 6).unwrap().write(0, b"spoilt").unwrap());
        let job = dest.path().join("job");
        fs::create_dir(&job).unwrap();
        let entry = |name: &str, hash, size| FileEntry { name: name.into(), hash, size, executable: false };
        std::thread::sleep(std::time::Duration::from_millis(50)); // past the ctime tick
        store.link_into(&job, &[entry("g", good, 4), entry("b", bad, 6)]).unwrap();
        // A job writes to one with its mtime set back: only the content tells.
        let path = store.path(&bad);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        fs::OpenOptions::new().write(true).open(&path).unwrap().write_all(b"S").unwrap();
        File::open(&path).unwrap().set_modified(stored_mtime()).unwrap();
        fs::remove_dir_all(&job).unwrap();
        assert!(matches!(store.check(&good), Check::Doubt(_)), "the links moved its change time");

        store.reseal(&good, 4);
        store.reseal(&bad, 6);
        assert!(matches!(store.check(&good), Check::Sealed(4)), "hashed once, sealed anew");
        assert!(matches!(store.check(&bad), Check::Missing), "the written one is gone");
        assert!(!store.path(&bad).exists());
    }

    #[test]
    fn a_doubted_file_is_hashed_once_however_many_ask_at_once() {
        let dest = tempfile::tempdir().unwrap();
        let store = Store::open(dest.path()).unwrap();
        let data = vec![7u8; 32 << 20]; // long enough to hash that the askers overlap
        let hash = sha(&data);
        assert!(store.begin(hash, data.len() as u64).unwrap().write(0, &data).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50)); // past the ctime tick
        let job = dest.path().join("job");
        fs::create_dir(&job).unwrap();
        let entry = FileEntry { name: "d".into(), hash, size: data.len() as u64, executable: false };
        store.link_into(&job, &[entry]).unwrap();
        assert!(matches!(store.check(&hash), Check::Doubt(_)));
        let size = data.len() as u64;
        let all = std::thread::scope(|s| {
            let askers: Vec<_> = (0..4).map(|_| s.spawn(|| store.has(&hash, size))).collect();
            askers.into_iter().all(|a| a.join().unwrap())
        });
        assert!(all, "every asker has the file");
        assert_eq!(store.rehashed.load(Ordering::Relaxed), 1, "hashed once, the others waited for it");
        assert!(matches!(store.check(&hash), Check::Sealed(_)));
    }

    #[test]
    fn a_file_of_an_earlier_run_is_not_trusted() {
        let dest = tempfile::tempdir().unwrap();
        let hash = sha(b"old");
        assert!(Store::open(dest.path()).unwrap().begin(hash, 3).unwrap().write(0, b"old").unwrap());
        let store = Store::open(dest.path()).unwrap();
        assert!(!store.has(&hash, 3), "no seal taken by this run: sent again");
        assert!(store.begin(hash, 3).unwrap().write(0, b"old").unwrap(), "stored over the old copy");
        assert!(store.has(&hash, 3));
        assert_eq!(fs::metadata(dest.path().join("store")).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn corrupt_upload_is_refused_and_leaves_nothing() {
        let dest = tempfile::tempdir().unwrap();
        let store = Store::open(dest.path()).unwrap();
        let hash = sha(b"right");
        let mut up = store.begin(hash, 5).unwrap();
        assert!(up.write(0, b"wrong").unwrap_err().contains("does not match"));
        assert!(up.write(5, b"x").is_err(), "past the declared size");
        drop(up);
        assert!(!store.has(&hash, 5));
        assert_eq!(fs::read_dir(dest.path().join("store/.partial")).unwrap().count(), 0);
    }

    #[test]
    fn links_never_pass_through_a_symlink_out_of_the_job_dir() {
        let dest = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = Store::open(dest.path()).unwrap();
        let hash = sha(b"x");
        store.begin(hash, 1).unwrap().write(0, b"x").unwrap();
        let job = dest.path().join("job");
        fs::create_dir(&job).unwrap();
        std::os::unix::fs::symlink(outside.path(), job.join("evil")).unwrap();
        let entry = FileEntry { name: "evil/f".into(), hash, size: 1, executable: false };
        let err = store.link_into(&job, std::slice::from_ref(&entry)).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
        let escape = FileEntry { name: "../f".into(), ..entry };
        assert!(store.link_into(&job, &[escape]).is_err());
        assert!(!dest.path().join("f").exists());
    }
}
