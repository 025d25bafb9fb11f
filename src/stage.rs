//! Staging: describing a computation's files by content hash, and sending a node the
//! ones it lacks in chunks (a few chunks of a file in flight: memory stays bounded whatever
//! the file's size).

use crate::error::{Error, Result};
use crate::hashcache::HashCache;
use dispy_node::net::NetHandle;
use dispy_protocol::{CHUNK_SIZE, CHUNKS_IN_FLIGHT, Chunk, ClusterId, FileEntry, FileHash, Request, Response};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;

/// A local file and how nodes will know it.
#[derive(Clone, Debug)]
pub(crate) struct LocalFile {
    pub(crate) path: PathBuf,
    pub(crate) entry: FileEntry,
}

/// Hashes the program and dependency files. Each is named in the job directory by its
/// base name. Fails before any node is contacted if a file is missing or unreadable.
pub(crate) fn describe(program: &Path, files: &[PathBuf]) -> Result<(String, Vec<LocalFile>)> {
    let mut out: Vec<LocalFile> = Vec::new();
    let mut cache = HashCache::open();
    let mut program_name = String::new();
    for (i, path) in std::iter::once(program).chain(files.iter().map(PathBuf::as_path)).enumerate() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Config(format!("{} has no usable file name", path.display())))?
            .to_string();
        let file_err = |source| Error::File { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(file_err)?;
        if !meta.is_file() {
            return Err(Error::Config(format!("{} is not a regular file", path.display())));
        }
        let (hash, size) = cache.hash(path, hash_file).map_err(file_err)?;
        if i == 0 {
            program_name = name.clone();
        }
        if let Some(other) = out.iter().find(|f| f.entry.name == name) {
            if other.entry.hash == hash {
                continue;
            }
            return Err(Error::Config(format!(
                "{} and {} would both be named {name} on the nodes",
                other.path.display(),
                path.display()
            )));
        }
        out.push(LocalFile { path: path.to_path_buf(), entry: FileEntry { name, hash, size, executable: i == 0 } });
    }
    cache.save();
    Ok((program_name, out))
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
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Config(format!("{} has no usable file name", path.display())))?
        .to_string();
    let file_err = |source| Error::File { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(file_err)?;
    if !meta.is_file() {
        return Err(Error::Config(format!("{} is not a regular file", path.display())));
    }
    let (hash, size) = cache.hash(path, hash_file).map_err(file_err)?;
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

/// Sends one file to a node, chunk after chunk, with up to [`CHUNKS_IN_FLIGHT`] on their way.
pub(crate) async fn send_file(
    net: &NetHandle,
    peer: PeerId,
    cluster: ClusterId,
    file: &LocalFile,
) -> Result<(), String> {
    let changed = || format!("{} changed while being sent", file.path.display());
    let mut f =
        tokio::fs::File::open(&file.path).await.map_err(|e| format!("cannot read {}: {e}", file.path.display()))?;
    let mut offset = 0u64;
    let mut all_sent = false;
    let mut complete = false;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while !all_sent && in_flight.len() < CHUNKS_IN_FLIGHT {
            let mut data = Vec::with_capacity(CHUNK_SIZE);
            (&mut f)
                .take(CHUNK_SIZE as u64)
                .read_to_end(&mut data)
                .await
                .map_err(|e| format!("cannot read {}: {e}", file.path.display()))?;
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
            Ok(Response::ChunkStored(s)) => complete |= s.complete,
            Ok(Response::Refused(r)) => return Err(format!("node refused {}: {}", file.entry.name, r.message)),
            Ok(other) => return Err(format!("unexpected answer to a chunk: {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    if complete { Ok(()) } else { Err(changed()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_name_clashes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("run.sh");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        let err = describe(&prog, &[dir.path().join("nope.bin")]).unwrap_err();
        assert!(err.to_string().contains("nope.bin"), "{err}");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/run.sh"), "other").unwrap();
        let err = describe(&prog, &[dir.path().join("sub/run.sh")]).unwrap_err();
        assert!(err.to_string().contains("both be named run.sh"), "{err}");
        let (name, files) = describe(&prog, &[]).unwrap();
        assert_eq!(name, "run.sh");
        assert_eq!(files[0].entry.size, 10);
        assert!(files[0].entry.executable);
    }
}
