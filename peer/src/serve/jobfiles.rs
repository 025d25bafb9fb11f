//! A job's own files, both ways. Inputs (`--each-file`) are declared for the jobs about to
//! be submitted, staged through `uploads` like the cluster's files (content-addressed: the
//! same bytes are stored once) and linked into the job's directory. Files a job leaves that
//! match the cluster's return globs (`--return`) are moved into the store when it ends,
//! listed in its result, and served to the client in chunks ([`Node::fetch`]) until the
//! cluster is released, and after that to a recovering client while kept results list them.

use super::Node;
use super::lookup::Stored;
use super::store::{Store, check_name};
use crate::net::ReplyTo;
use dispy_protocol::{CHUNK_SIZE, Fetch, FileEntry, FileHash, JobId, JobSpec, Refusal, RefusalKind, Response};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Input files a lease may have declared at once: far more than the jobs a client keeps on
/// a node, and a bound on the memory a client's declarations cost.
const MAX_DECLARED: usize = 100_000;

/// Entries of a job directory looked at for returns, at most: a job that leaves millions of
/// files costs the node a bounded walk.
const MAX_WALK: usize = 100_000;

/// An input file declared for a lease's jobs.
struct Declared {
    file: FileEntry,
    /// Jobs queued or running that need it.
    jobs: u32,
    /// Declarations whose jobs have not been submitted yet: it must stay until they are.
    pins: u32,
}

/// One lease's job files.
#[derive(Default)]
pub(super) struct JobFiles {
    /// Input files declared for its jobs, by hash, while a job needs them: a run of a
    /// million inputs holds only those of the jobs on their way or running.
    declared: HashMap<FileHash, Declared>,
    /// The input files of its jobs queued or running, by job.
    inputs: HashMap<JobId, Vec<FileHash>>,
    /// Files its jobs returned, kept in the store for its client.
    returned: HashSet<FileHash>,
    /// Its return globs.
    pub(super) globs: Vec<String>,
}

impl JobFiles {
    pub(super) fn new(globs: Vec<String>) -> Self {
        JobFiles { globs, ..JobFiles::default() }
    }

    /// Takes the declaration of jobs' input files (looked up in `stored`); answers with
    /// those the store lacks.
    pub(super) fn declare(&mut self, files: Vec<FileEntry>, stored: &Stored, max_size: Option<u64>) -> Response {
        let refuse = |kind, msg: String| Response::Refused(Refusal::new(kind, msg));
        if self.declared.len() + files.len() > MAX_DECLARED {
            let why = format!("more than {MAX_DECLARED} job input files declared at once");
            return refuse(RefusalKind::TooLarge, why);
        }
        let mut missing = Vec::new();
        let mut missing_seen = HashSet::new();
        for f in &files {
            if let Err(e) = check_name(&f.name) {
                return refuse(RefusalKind::BadPath, e.to_string());
            }
            if let Some(max) = max_size
                && f.size > max
            {
                let why =
                    format!("file {} is {} bytes, over the node's --max-file-size of {max} bytes", f.name, f.size);
                return refuse(RefusalKind::TooLarge, why);
            }
            if !stored.has(&f.hash) && missing_seen.insert(f.hash) {
                missing.push(f.hash);
            }
        }
        let mut seen = HashSet::new();
        for f in files {
            if seen.insert(f.hash) {
                self.declared.entry(f.hash).or_insert(Declared { file: f, jobs: 0, pins: 0 }).pins += 1;
            }
        }
        Response::Declared(dispy_protocol::Declared { missing })
    }

    /// A declared input file, for its chunks.
    pub(super) fn declared(&self, hash: &FileHash) -> Option<&FileEntry> {
        self.declared.get(hash).map(|d| &d.file)
    }

    /// Jobs were accepted: their inputs stay until they end, and the declaration that
    /// announced them is used up.
    pub(super) fn track(&mut self, jobs: &[JobSpec]) {
        let mut batch = HashSet::new();
        for job in jobs.iter().filter(|j| !j.files.is_empty()) {
            let hashes: Vec<FileHash> = job.files.iter().map(|f| f.hash).collect();
            for h in &hashes {
                if let Some(d) = self.declared.get_mut(h) {
                    d.jobs += 1;
                    if batch.insert(*h) {
                        d.pins = d.pins.saturating_sub(1);
                    }
                }
            }
            self.inputs.insert(job.id, hashes);
        }
    }

    /// A job ended: returns its inputs no other job needs any more (to leave the store).
    pub(super) fn ended(&mut self, job: JobId) -> Vec<FileHash> {
        let mut unused = Vec::new();
        for h in self.inputs.remove(&job).unwrap_or_default() {
            let Some(d) = self.declared.get_mut(&h) else { continue };
            d.jobs = d.jobs.saturating_sub(1);
            if d.jobs == 0 && d.pins == 0 {
                self.declared.remove(&h);
                if !self.returned.contains(&h) {
                    unused.push(h);
                }
            }
        }
        unused
    }

    /// Whether every input file of `jobs` was declared and is stored (looked up in `stored`).
    pub(super) fn check(&self, jobs: &[JobSpec], stored: &Stored) -> Result<(), Refusal> {
        for job in jobs {
            for f in &job.files {
                if !self.declared.contains_key(&f.hash) || !stored.has(&f.hash) {
                    let why = format!("input file {} of job {} is not staged", f.name, job.id);
                    return Err(Refusal::new(RefusalKind::BadFile, why));
                }
            }
        }
        Ok(())
    }

    /// Files a job returned are kept for the client.
    pub(super) fn keep(&mut self, returned: &[FileEntry]) {
        self.returned.extend(returned.iter().map(|f| f.hash));
    }

    /// Returned files now kept with results that outlive the lease (a gone client's): no
    /// longer the lease's to delete.
    pub(super) fn hand_over(&mut self, kept: &HashSet<FileHash>) {
        self.returned.retain(|h| !kept.contains(h));
    }

    /// Whether `hash` is a file this lease's jobs returned.
    pub(super) fn has_returned(&self, hash: &FileHash) -> bool {
        self.returned.contains(hash)
    }

    /// Every file this lease holds in the store for its jobs.
    pub(super) fn hashes(&self) -> impl Iterator<Item = FileHash> + '_ {
        self.declared.keys().chain(self.returned.iter()).copied()
    }
}

impl Node {
    /// Serves a chunk of a returned file (answered from the blocking pool): to the
    /// cluster's client while it holds the lease; to a recovering client while that client
    /// is gone (within its zombie interval, when `Recover` answers from the lease); and
    /// once the lease is released, the files that the cluster's kept results list (only
    /// for that cluster).
    pub(super) fn fetch(&mut self, peer: PeerId, f: Fetch, channel: ReplyTo) -> Option<(ReplyTo, Response)> {
        let refuse = |kind, msg: String| Response::Refused(Refusal::new(kind, msg));
        let (hash, cluster) = (f.hash, f.cluster);
        let not_returned = move || format!("file {hash} was not returned by a job of cluster {cluster}");
        // Whether the kept results must list it (checked on the blocking pool).
        let kept_only = match self.leases.0.get(&f.cluster).filter(|c| !c.released) {
            Some(c) if c.client == peer || c.gone_since.is_some() => {
                if !c.job_files.has_returned(&f.hash) {
                    return Some((channel, refuse(RefusalKind::BadFile, not_returned())));
                }
                false
            }
            Some(_) => {
                let why = format!("cluster {} is not reserved on this node by you", f.cluster);
                return Some((channel, refuse(RefusalKind::UnknownCluster, why)));
            }
            None => true,
        };
        let (store, kept) = (self.ctx.store.clone(), self.ctx.kept.clone());
        self.ctx.respond_blocking(channel, format!("returned file {}", f.hash), move || {
            if kept_only && !kept.lists(f.cluster, &f.hash) {
                let why =
                    format!("{}, or its results were collected or are past the node's --result-ttl", not_returned());
                return refuse(RefusalKind::BadFile, why);
            }
            match read_chunk(&store, &f.hash, f.offset) {
                Ok(data) => Response::Data(dispy_protocol::Data { hash: f.hash, offset: f.offset, data }),
                Err(e) => refuse(RefusalKind::Internal, format!("cannot read returned file {}: {e}", f.hash)),
            }
        });
        None
    }
}

/// What a finished job's directory gives back.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Collected {
    pub(crate) files: Vec<FileEntry>,
    pub(crate) note: Option<String>,
}

/// Moves the files `dir` holds that match `globs` into the store (at most `max` bytes in
/// all) and lists them. Runs on the blocking pool: it reads every byte to hash it.
pub(crate) fn collect(dir: &Path, globs: &[String], store: &Store, max: Option<u64>) -> Collected {
    let mut found = Vec::new();
    let mut notes = Vec::new();
    let mut seen = 0;
    walk(dir, "", globs, &mut found, &mut notes, &mut seen);
    if seen >= MAX_WALK {
        notes.push(format!("the job left over {MAX_WALK} entries; only those looked at first were considered"));
    }
    found.sort();
    let unmatched: Vec<&str> =
        globs.iter().filter(|g| !found.iter().any(|(p, _)| glob_matches(g, p))).map(String::as_str).collect();
    if !unmatched.is_empty() {
        notes.push(format!("no file matched {}", unmatched.join(", ")));
    }
    let mut out = Collected::default();
    let mut total: u64 = 0;
    let mut over = Vec::new();
    for (rel, size) in found {
        if max.is_some_and(|max| total.saturating_add(size) > max) {
            over.push(rel);
            continue;
        }
        match adopt(&dir.join(&rel), size, store) {
            Ok((hash, executable)) => {
                total += size;
                out.files.push(FileEntry { name: rel, hash, size, executable });
            }
            Err(e) => notes.push(format!("{rel}: cannot keep it: {e}")),
        }
    }
    if !over.is_empty() {
        let max = max.unwrap_or_default();
        notes.push(format!("over the node's --max-return of {max} bytes, not returned: {}", over.join(", ")));
    }
    out.note = (!notes.is_empty()).then(|| notes.join("; "));
    out
}

/// Walks `dir` (at `rel` below the job directory) for regular files matching a glob.
/// Symbolic links are never followed: one that matches is named in a note.
fn walk(
    dir: &Path,
    rel: &str,
    globs: &[String],
    found: &mut Vec<(String, u64)>,
    notes: &mut Vec<String>,
    seen: &mut usize,
) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        *seen += 1;
        if *seen > MAX_WALK {
            return;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let Ok(meta) = entry.path().symlink_metadata() else { continue };
        let wanted = globs.iter().any(|g| glob_matches(g, &path));
        if meta.file_type().is_symlink() {
            if wanted {
                notes.push(format!("{path}: is a symbolic link; only regular files are returned"));
            }
        } else if meta.is_dir() {
            walk(&entry.path(), &path, globs, found, notes, seen);
        } else if meta.is_file() && wanted {
            found.push((path, meta.len()));
        }
    }
}

/// Hashes a file and moves it into the store (sealed and read-only, as staged files are);
/// returns its hash and whether it is executable.
fn adopt(path: &Path, size: u64, store: &Store) -> std::io::Result<(FileHash, bool)> {
    let executable = fs::metadata(path)?.permissions().mode() & 0o111 != 0;
    let hash = FileHash(super::store::hash_file(path)?);
    if !store.has(&hash, size) {
        store.adopt(path, hash)?;
    }
    Ok((hash, executable))
}

/// Takes a file a running job sent (`dispy::send_file`) into the store like a returned
/// one: only a regular file (never a link), at most `room` bytes. Returns its hash, size and
/// whether it is executable. Runs on the blocking pool.
pub(crate) fn adopt_sent(path: &Path, store: &Store, room: Option<u64>) -> std::io::Result<(FileHash, u64, bool)> {
    let meta = path.symlink_metadata()?;
    let taken = if !meta.is_file() {
        Err(std::io::Error::other("not a regular file"))
    } else if room.is_some_and(|room| meta.len() > room) {
        Err(std::io::Error::other(format!(
            "over what the node's --max-return leaves the job ({} bytes)",
            room.unwrap_or(0)
        )))
    } else {
        adopt(path, meta.len(), store).map(|(hash, executable)| (hash, meta.len(), executable))
    };
    // Left behind when the store had it already, or refused: it is no use to the worker.
    let _ = fs::remove_file(path);
    taken
}

/// Reads the chunk of a stored file at `offset` (on the blocking pool).
pub(crate) fn read_chunk(store: &Store, hash: &FileHash, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = fs::File::open(store.path(hash))?;
    file.seek(SeekFrom::Start(offset))?;
    let mut data = Vec::with_capacity(CHUNK_SIZE);
    file.take(CHUNK_SIZE as u64).read_to_end(&mut data)?;
    Ok(data)
}

/// Whether `path` (relative, `/`-separated) matches `glob`: `*` and `?` within a name,
/// `**` for any number of directories.
///
/// Linear in the pattern times the path: a hostile pattern costs no more.
pub(crate) fn glob_matches(glob: &str, path: &str) -> bool {
    let pat: Vec<&str> = glob.split('/').filter(|s| !s.is_empty()).collect();
    let parts: Vec<&str> = path.split('/').collect();
    // reach[j]: the first i pattern segments can match the first j path segments.
    let mut reach = vec![false; parts.len() + 1];
    reach[0] = true;
    for seg in &pat {
        let mut next = vec![false; parts.len() + 1];
        if *seg == "**" {
            let mut any = false;
            for j in 0..=parts.len() {
                any |= reach[j];
                next[j] = any;
            }
        } else {
            for j in 0..parts.len() {
                if reach[j] && name_matches(seg.as_bytes(), parts[j].as_bytes()) {
                    next[j + 1] = true;
                }
            }
        }
        reach = next;
    }
    reach[parts.len()]
}

/// `*` and `?` within one name, iteratively (no backtracking blow-up).
fn name_matches(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_and_directories() {
        assert!(glob_matches("*.gz", "a.gz"));
        assert!(!glob_matches("*.gz", "sub/a.gz"));
        assert!(glob_matches("**/*.gz", "sub/deep/a.gz"));
        assert!(glob_matches("**/*.gz", "a.gz"));
        assert!(glob_matches("out/**", "out/x/y"));
        assert!(glob_matches("frame-??.png", "frame-07.png"));
        assert!(!glob_matches("frame-??.png", "frame-7.png"));
        assert!(glob_matches("*", "anything"));
        assert!(!glob_matches("a*b*c", "abxxbxxd"));
        assert!(glob_matches("a*b*c", "abxxbxxc"));
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dest = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dest.path()).expect("store");
        (dest, store)
    }

    #[test]
    fn matching_files_move_into_the_store_and_links_are_named_not_followed() {
        let (dest, store) = store();
        let dir = dest.path().join("job");
        fs::create_dir_all(dir.join("out/deep")).expect("dirs");
        fs::write(dir.join("out/deep/a.gz"), b"alpha").expect("write");
        fs::write(dir.join("b.gz"), b"beta").expect("write");
        fs::write(dir.join("c.txt"), b"not asked for").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("evil.gz")).expect("symlink");
        let got = collect(&dir, &["**/*.gz".into(), "*.log".into()], &store, None);
        let names: Vec<&str> = got.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["b.gz", "out/deep/a.gz"]);
        assert!(got.note.as_deref().is_some_and(|n| n.contains("evil.gz: is a symbolic link")), "{got:?}");
        assert!(got.note.as_deref().is_some_and(|n| n.contains("no file matched *.log")), "{got:?}");
        for f in &got.files {
            assert!(store.has(&f.hash, f.size), "{} stored and sealed", f.name);
        }
        assert!(!dir.join("b.gz").exists(), "moved, not copied");
        assert!(dir.join("c.txt").exists());
        let chunk = read_chunk(&store, &got.files[0].hash, 1).expect("read");
        assert_eq!(chunk, b"eta");
    }

    #[test]
    fn returns_past_the_limit_stay_behind_with_a_note() {
        let (dest, store) = store();
        let dir = dest.path().join("job");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join("a.out"), vec![1; 600]).expect("write");
        fs::write(dir.join("b.out"), vec![2; 600]).expect("write");
        let got = collect(&dir, &["*.out".into()], &store, Some(1000));
        assert_eq!(got.files.len(), 1);
        assert_eq!(got.note.as_deref(), Some("over the node's --max-return of 1000 bytes, not returned: b.out"));
    }
}
