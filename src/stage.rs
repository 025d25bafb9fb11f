//! Staging: describing a computation's files by content hash, and sending a node the
//! ones it lacks in chunks (a few chunks of a file in flight: memory stays bounded whatever
//! the file's size).

use crate::error::{Error, Result};
use crate::hashcache::HashCache;
use dispy_node::net::NetHandle;
use dispy_node::serve::store::check_names;
use dispy_protocol::{CHUNK_SIZE, CHUNKS_IN_FLIGHT, Chunk, ClusterId, FileEntry, FileHash, Request, Response};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

/// A local file and how nodes will know it.
#[derive(Clone, Debug)]
pub(crate) struct LocalFile {
    pub(crate) path: PathBuf,
    pub(crate) entry: FileEntry,
}

/// Hashes the executables (the program, then setup and cleanup programs) and the
/// dependency files; returns the executables' names on the nodes and every file. A file is
/// named in the job directory by its base name; a directory is sent as the tree of its
/// regular files under its base name (`data/a.txt`, `data/sub/b.bin`; empty directories
/// are not sent). A symbolic link or any other non-regular file inside a tree is refused: the
/// node would either leak what it points to or not know what to make of it (a link named
/// on the command line is followed, like any path the user types). Fails before any node is
/// contacted.
pub(crate) fn describe(executables: &[&Path], files: &[PathBuf]) -> Result<(Vec<String>, Vec<LocalFile>)> {
    let mut set = FileSet { cache: HashCache::open(), files: Vec::new(), by_name: HashMap::new() };
    let mut names = Vec::with_capacity(executables.len());
    for path in executables {
        let name = base_name(path)?;
        if !std::fs::metadata(path).map_err(file_err(path))?.is_file() {
            return Err(Error::Config(format!("{} is not a regular file", path.display())));
        }
        set.add(path, name.clone(), true)?;
        names.push(name);
    }
    for path in files {
        let name = base_name(path)?;
        let meta = std::fs::metadata(path).map_err(file_err(path))?;
        if meta.is_dir() {
            set.add_tree(path, &name)?;
        } else if meta.is_file() {
            set.add(path, name, false)?;
        } else {
            return Err(Error::Config(format!("{} is not a regular file or a directory", path.display())));
        }
    }
    let entries: Vec<FileEntry> = set.files.iter().map(|f| f.entry.clone()).collect();
    check_names(&entries).map_err(|e| Error::Config(format!("cannot send these files: {e}")))?;
    set.cache.save();
    Ok((names, set.files))
}

fn file_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::File { path: path.to_path_buf(), source }
}

fn base_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::Config(format!("{} has no usable file name", path.display())))
}

/// The files described so far, by name on the nodes.
struct FileSet {
    cache: HashCache,
    files: Vec<LocalFile>,
    by_name: HashMap<String, usize>,
}

impl FileSet {
    /// Adds a file as `name`; the same content twice under one name is sent once.
    fn add(&mut self, path: &Path, name: String, executable: bool) -> Result<()> {
        let (hash, size) = self.cache.hash(path, hash_file).map_err(file_err(path))?;
        if let Some(&i) = self.by_name.get(&name) {
            let other = &self.files[i];
            if other.entry.hash == hash {
                return Ok(());
            }
            return Err(Error::Config(format!(
                "{} and {} would both be named {name} on the nodes",
                other.path.display(),
                path.display()
            )));
        }
        self.by_name.insert(name.clone(), self.files.len());
        self.files.push(LocalFile { path: path.to_path_buf(), entry: FileEntry { name, hash, size, executable } });
        Ok(())
    }

    /// Adds the regular files under `root` as `name/...`, each directory's files before its
    /// sub-directories, in name order (files sharing a directory arrive together, which is
    /// what the node's linking is quickest with).
    fn add_tree(&mut self, root: &Path, name: &str) -> Result<()> {
        let mut pending = vec![(root.to_path_buf(), name.to_string())];
        while let Some((dir, prefix)) = pending.pop() {
            let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(&dir)
                .and_then(|list| list.collect::<std::io::Result<_>>())
                .map_err(file_err(&dir))?;
            entries.sort_by_key(|e| e.file_name());
            let mut subdirs = Vec::new();
            for entry in entries {
                let path = entry.path();
                let Some(part) = entry.file_name().to_str().map(str::to_string) else {
                    return Err(Error::Config(format!("{}: the name is not UTF-8", path.display())));
                };
                let kind = entry.file_type().map_err(file_err(&path))?;
                let name = format!("{prefix}/{part}");
                if kind.is_symlink() {
                    return Err(Error::Config(format!(
                        "{}: is a symbolic link; dispy-peer sends regular files only",
                        path.display()
                    )));
                } else if kind.is_dir() {
                    subdirs.push((path, name));
                } else if kind.is_file() {
                    self.add(&path, name, false)?;
                } else {
                    return Err(Error::Config(format!(
                        "{}: is not a regular file; dispy-peer sends regular files only",
                        path.display()
                    )));
                }
            }
            pending.extend(subdirs.into_iter().rev());
        }
        Ok(())
    }
}

/// Describes jobs' own input files (`--each-file`), a list per job: each named by its base
/// name in its job's directory, hashed (large ones through the hash cache). Fails naming the
/// first file that is missing, unreadable or not a regular file.
pub(crate) fn describe_inputs(jobs: &[Vec<PathBuf>]) -> Result<Vec<Vec<LocalFile>>> {
    let mut cache = HashCache::open();
    let mut all = Vec::with_capacity(jobs.len());
    for paths in jobs {
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            out.push(describe_input(path, &mut cache)?);
        }
        all.push(out);
    }
    cache.save();
    Ok(all)
}

fn describe_input(path: &Path, cache: &mut HashCache) -> Result<LocalFile> {
    let name = base_name(path)?;
    let meta = std::fs::metadata(path).map_err(file_err(path))?;
    if !meta.is_file() {
        return Err(Error::Config(format!("{} is not a regular file", path.display())));
    }
    let (hash, size) = cache.hash(path, hash_file).map_err(file_err(path))?;
    let executable = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
    Ok(LocalFile { path: path.to_path_buf(), entry: FileEntry { name, hash, size, executable } })
}

fn hash_file(path: &Path) -> std::io::Result<(FileHash, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((FileHash(hasher.finalize().into()), size))
}

/// Why a file did not reach a node.
#[derive(Debug)]
pub(crate) enum SendError {
    /// This machine could not read it (gone, changed, unreadable): the node is not to
    /// blame, and another node would fare no better.
    Local(String),
    /// The node refused it or could not be reached.
    Remote(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Local(why) | SendError::Remote(why) => f.write_str(why),
        }
    }
}

/// Longest a node keeps the lead in staging ([`StageLead`]).
pub(crate) const LEAD: Duration = Duration::from_secs(1);

/// Below this many bytes staging a node does not wait for the lead: its time is a few round
/// trips, not bandwidth.
pub(crate) const LEAD_MIN_BYTES: u64 = 4 << 20;

/// Staging a cluster's large files to one node at a time. Sent to every node at once, the
/// copies share the client's link (or, on one machine, its CPUs): with n nodes, none is ready
/// before n copies have gone, and a function cluster's executable is tens of MB. One at a
/// time, the first node is ready after one copy and starts jobs while the others receive; the
/// last is ready when it would have been anyway. A node keeps the lead until its files are
/// sent or for [`LEAD`] at most, then stages on beside the next: a slow or silent node delays
/// the others by that much at most.
#[derive(Clone, Debug)]
pub(crate) struct StageLead(Arc<Semaphore>);

impl StageLead {
    pub(crate) fn new() -> StageLead {
        StageLead(Arc::new(Semaphore::new(1)))
    }

    /// Runs `staging` (of `bytes` in all) once this node has the lead, or at once when it is
    /// small.
    pub(crate) async fn run<T>(self, bytes: u64, staging: impl Future<Output = T>) -> T {
        if bytes < LEAD_MIN_BYTES {
            return staging.await;
        }
        // The semaphore is never closed: `None` cannot happen, and would only mean no wait.
        let lead = self.0.acquire_owned().await.ok();
        tokio::pin!(staging);
        tokio::select! {
            out = &mut staging => out,
            () = tokio::time::sleep(LEAD) => {
                drop(lead);
                staging.await
            }
        }
    }
}

/// Sends one file to a node, chunk after chunk, with up to [`CHUNKS_IN_FLIGHT`] on their way;
/// `progress` counts the bytes the node has stored (others may wait on this copy).
pub(crate) async fn send_file(
    net: &NetHandle,
    peer: PeerId,
    cluster: ClusterId,
    file: &LocalFile,
    progress: &AtomicU64,
) -> Result<(), SendError> {
    let changed = || SendError::Local(format!("{} changed while being sent", file.path.display()));
    let unreadable = |e: std::io::Error| SendError::Local(format!("cannot read {}: {e}", file.path.display()));
    let mut f = tokio::fs::File::open(&file.path).await.map_err(unreadable)?;
    let mut offset = 0u64;
    let mut all_sent = false;
    let mut complete = false;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while !all_sent && in_flight.len() < CHUNKS_IN_FLIGHT {
            let mut data = Vec::with_capacity(CHUNK_SIZE);
            (&mut f).take(CHUNK_SIZE as u64).read_to_end(&mut data).await.map_err(unreadable)?;
            let len = data.len() as u64;
            // An empty file is still sent as one empty chunk, which creates it on the node.
            if offset + len > file.entry.size || (len == 0 && offset < file.entry.size) {
                return Err(changed());
            }
            let request = Request::Chunk(Chunk { cluster, hash: file.entry.hash, offset, data });
            in_flight.push(net.request(peer, request));
            offset += len;
            all_sent = offset == file.entry.size;
        }
        let Some(answer) = in_flight.next().await else { break };
        match answer {
            Ok(Response::ChunkStored(s)) => {
                complete |= s.complete;
                progress.fetch_add(CHUNK_SIZE as u64, Ordering::Relaxed);
            }
            Ok(Response::Refused(r)) => {
                return Err(SendError::Remote(format!("node refused {}: {}", file.entry.name, r.message)));
            }
            Ok(other) => return Err(SendError::Remote(format!("unexpected answer to a chunk: {other:?}"))),
            Err(e) => return Err(SendError::Remote(e.to_string())),
        }
    }
    if complete { Ok(()) } else { Err(changed()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When each of `sizes` (staged at once, `took` each, `None`: never ends) started.
    async fn starts(sizes: &[(u64, Option<Duration>)]) -> Vec<Duration> {
        let lead = StageLead::new();
        let t0 = tokio::time::Instant::now();
        let runs = sizes.iter().map(|&(bytes, took)| {
            let lead = lead.clone();
            tokio::spawn(async move {
                lead.run(bytes, async move {
                    let started = t0.elapsed();
                    match took {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                    started
                })
                .await
            })
        });
        let runs: Vec<_> = runs.collect();
        // A staging that never ends reports its start through a timeout instead.
        let mut out = Vec::new();
        for r in runs {
            match tokio::time::timeout(Duration::from_secs(60), r).await {
                Ok(started) => out.push(started.unwrap()),
                Err(_) => out.push(Duration::MAX),
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn large_stagings_take_turns_and_a_silent_node_holds_the_lead_one_second_at_most() {
        let big = 64 << 20;
        let ms = Duration::from_millis;
        // One after the other while each is quick.
        let got = starts(&[(big, Some(ms(300))), (big, Some(ms(300))), (big, Some(ms(300)))]).await;
        assert_eq!(got, [ms(0), ms(300), ms(600)]);
        // A node that never finishes keeps the lead for LEAD, then the next starts.
        let got = starts(&[(big, None), (big, Some(ms(100)))]).await;
        assert_eq!(got[1], LEAD);
        // Small ones never wait.
        let got = starts(&[(big, Some(ms(500))), (1024, Some(ms(10))), (LEAD_MIN_BYTES - 1, Some(ms(10)))]).await;
        assert_eq!(got, [ms(0), ms(0), ms(0)]);
    }

    #[test]
    fn missing_files_and_name_clashes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("run.sh");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        let err = describe(&[&prog], &[dir.path().join("nope.bin")]).unwrap_err();
        assert!(err.to_string().contains("nope.bin"), "{err}");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/run.sh"), "other").unwrap();
        let err = describe(&[&prog], &[dir.path().join("sub/run.sh")]).unwrap_err();
        assert!(err.to_string().contains("both be named run.sh"), "{err}");
        let (names, files) = describe(&[&prog], &[]).unwrap();
        assert_eq!(names, ["run.sh"]);
        assert_eq!(files[0].entry.size, 10);
        assert!(files[0].entry.executable);
    }

    #[test]
    fn a_directory_is_sent_as_its_tree_of_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("run.sh");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(data.join("empty")).unwrap();
        std::fs::write(data.join("b.txt"), "b").unwrap();
        std::fs::write(data.join("a.txt"), "a").unwrap();
        std::fs::write(data.join("sub/c.bin"), "c").unwrap();
        std::fs::write(data.join("sub/deeper/d"), "d").unwrap();
        let (_, files) = describe(&[&prog], std::slice::from_ref(&data)).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.entry.name.as_str()).collect();
        assert_eq!(names, ["run.sh", "data/a.txt", "data/b.txt", "data/sub/c.bin", "data/sub/deeper/d"]);
        assert!(files[1..].iter().all(|f| !f.entry.executable));

        // A file named like the tree clashes with it.
        std::fs::create_dir(dir.path().join("other")).unwrap();
        std::fs::write(dir.path().join("other/data"), "x").unwrap();
        let err = describe(&[&prog], &[data.clone(), dir.path().join("other/data")]).unwrap_err();
        assert!(err.to_string().contains("\"data\""), "{err}");

        std::os::unix::fs::symlink("../a.txt", data.join("sub/x")).unwrap();
        let err = describe(&[&prog], std::slice::from_ref(&data)).unwrap_err();
        let want = format!("{}: is a symbolic link; dispy-peer sends regular files only", data.join("sub/x").display());
        assert_eq!(err.to_string(), want);
    }
}
