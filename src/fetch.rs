//! Files a job returned (`--return`): fetched from its node chunk by chunk, a few chunks in
//! flight (memory stays bounded whatever the size), verified by hash and renamed into place
//! under the results directory only once whole, so a file is there complete or not at all.

use dispy_node::net::NetHandle;
use dispy_node::serve::store::check_name;
use dispy_protocol::{CHUNK_SIZE, CHUNKS_IN_FLIGHT, ClusterId, Fetch, FileEntry, Request, Response};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use libp2p::PeerId;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Fetches `files` into `dir`; returns the paths saved and, for each file that could not
/// be, why (a node or a disk that failed, a name that would escape `dir`).
///
/// `persist`: a file whose connection broke is asked again until it arrives (for a running
/// cluster, whose heartbeats stop the fetch of a node that is gone); otherwise once (for
/// `recover`, where nothing would stop it: the files stay on the node to be asked again).
pub(crate) async fn fetch_all(
    net: &NetHandle,
    peer: PeerId,
    cluster: ClusterId,
    files: &[FileEntry],
    dir: &Path,
    persist: bool,
) -> (Vec<PathBuf>, Vec<String>) {
    let mut saved = Vec::new();
    let mut failed = Vec::new();
    for f in files {
        match fetch_file(net, peer, cluster, f, dir, persist).await {
            Ok(path) => saved.push(path),
            Err(why) => failed.push(format!("{}: {why}", f.name)),
        }
    }
    (saved, failed)
}

/// Fetches one file into `dir` and gives up at the first failure: for a file a running
/// job sent, which its result lists again, so a failure costs nothing but a second try then.
pub(crate) async fn fetch_once(
    net: &NetHandle,
    peer: PeerId,
    cluster: ClusterId,
    f: &FileEntry,
    dir: &Path,
) -> Result<PathBuf, String> {
    fetch_file(net, peer, cluster, f, dir, false).await
}

async fn fetch_file(
    net: &NetHandle,
    peer: PeerId,
    cluster: ClusterId,
    f: &FileEntry,
    dir: &Path,
    persist: bool,
) -> Result<PathBuf, String> {
    // The node names the file: it must not climb out of the job's results folder.
    let rel = check_name(&f.name).map_err(|e| format!("refused: {e}"))?;
    let dest = dir.join(rel);
    let parent = dest.parent().unwrap_or(dir);
    tokio::fs::create_dir_all(parent).await.map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    // The node says how large the file is: it is fetched only if it fits, with room to
    // spare, so a job's output never fills this machine's disk.
    if let Some(free) = free_bytes(parent)
        && free < f.size.saturating_add(DISK_SPARE)
    {
        return Err(format!("{} bytes, but only {free} bytes are free in {}", f.size, parent.display()));
    }
    let tmp = Partial(parent.join(format!(".dispy-part-{:x}", rand::random::<u64>())));
    let tmp = &tmp.0;
    let mut result = receive(net, peer, cluster, f, tmp).await;
    // A connection that broke may come back (a partition that heals): the file is asked
    // again from its start, for as long as it takes. A node that is gone is noticed by its
    // heartbeats meanwhile, and its job re-run or abandoned: that stops this fetch.
    let mut waits = RETRY_WAITS.iter().chain(std::iter::repeat(&RETRY_WAITS[RETRY_WAITS.len() - 1]));
    while persist && let Err(Failed::Transport(why)) = &result {
        let wait = waits.next().copied().unwrap_or(RETRY_WAITS[0]);
        tracing::debug!(file = %f.name, %peer, cause = %why, ?wait, "fetch failed; asking again");
        tokio::time::sleep(wait).await;
        result = receive(net, peer, cluster, f, tmp).await;
    }
    result.map_err(|e| e.to_string())?;
    tokio::fs::rename(tmp, &dest).await.map_err(|e| format!("cannot save {}: {e}", dest.display()))?;
    Ok(dest)
}

/// A file being received: removed unless renamed into place, also when the fetch is
/// dropped half-way (its job left the node, or the cluster closed).
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        // After a rename there is nothing left to remove.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits before asking a file again after the connection broke (the last one repeats).
const RETRY_WAITS: [std::time::Duration; 3] =
    [std::time::Duration::from_secs(1), std::time::Duration::from_secs(2), std::time::Duration::from_secs(4)];

/// Why a file did not arrive.
enum Failed {
    /// The request did not get an answer: worth asking again.
    Transport(String),
    /// Anything else: asking again would not help.
    Other(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Transport(why) | Failed::Other(why) => f.write_str(why),
        }
    }
}

impl From<String> for Failed {
    fn from(why: String) -> Self {
        Failed::Other(why)
    }
}

/// Writes the file's chunks to `tmp` in order and checks its hash.
async fn receive(net: &NetHandle, peer: PeerId, cluster: ClusterId, f: &FileEntry, tmp: &Path) -> Result<(), Failed> {
    let mut out = tokio::fs::File::create(tmp).await.map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let mut asked = 0u64;
    let mut written = 0u64;
    let mut in_flight = FuturesOrdered::new();
    let chunk = CHUNK_SIZE as u64;
    loop {
        while asked < f.size && in_flight.len() < CHUNKS_IN_FLIGHT {
            let request = Request::Fetch(Fetch { cluster, hash: f.hash, offset: asked, share: None });
            in_flight.push_back(net.request(peer, request));
            asked = asked.saturating_add(chunk);
        }
        let Some(answer) = in_flight.next().await else { break };
        let data = match answer {
            Ok(Response::Data(d)) if d.hash == f.hash && d.offset == written => d.data,
            Ok(Response::Data(_)) => {
                return Err("the node sent another chunk than the one asked for".to_string().into());
            }
            Ok(Response::Refused(r)) => return Err(format!("the node refused: {}", r.message).into()),
            Ok(other) => return Err(format!("unexpected answer to a fetch: {other:?}").into()),
            Err(e) => return Err(Failed::Transport(e.to_string())),
        };
        let expected = chunk.min(f.size - written);
        if data.len() as u64 != expected {
            return Err(format!("a chunk of {} bytes at offset {written}, expected {expected}", data.len()).into());
        }
        hasher.update(&data);
        out.write_all(&data).await.map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        written += expected;
    }
    out.flush().await.map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    let got: [u8; 32] = hasher.finalize().into();
    if written != f.size || got != f.hash.0 {
        return Err(format!("the content does not match its hash {}", f.hash).into());
    }
    if f.executable {
        use std::os::unix::fs::PermissionsExt;
        let _ = tokio::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).await;
    }
    Ok(())
}

/// Disk space a fetched file must leave free.
const DISK_SPARE: u64 = 64 << 20;

/// Bytes free for this user in the file system holding `dir`, if it can be asked.
#[allow(unsafe_code)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable memory
    // of the right type; statvfs only writes it, and it is read only when the call succeeded.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    // The fields are 32 bits wide on some targets.
    #[allow(clippy::useless_conversion)]
    u64::from(stat.f_bavail).checked_mul(u64::from(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_a_missing_folder_says_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(free_bytes(dir.path()).is_some_and(|b| b > 0));
        assert_eq!(free_bytes(&dir.path().join("missing")), None);
    }
}
