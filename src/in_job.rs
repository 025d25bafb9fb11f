//! What a running function job can send its client before it returns: provisional results
//! ([`provisional`], dispy's `dispy_provisional_result`) and files ([`send_file`], dispy's
//! `dispy_send_file`). Both travel as [`WorkerNote`] frames on the worker's pipe to its node,
//! ahead of the job's reply; the worker loop (`worker`) owns that pipe and lends it here.

use crate::{Error, Result};
use dispy_protocol::encode;
use dispy_protocol::worker::{MAX_PROVISIONAL_BYTES, SENT_DIR, WorkerNote, encode_frame};
use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The worker's pipe to its node, shared by the worker loop (replies) and the job (notes).
pub(crate) struct Pipe {
    proto: File,
    /// Where sent files are copied for the node to take (`<worker dir>/.dispy-sent`).
    sent_dir: PathBuf,
    /// Numbers sent files, so that two with one name do not meet.
    sent: u64,
    /// A job is running: notes have a job to belong to.
    in_job: bool,
}

static PIPE: Mutex<Option<Pipe>> = Mutex::new(None);

/// The pipe, whether or not a job panicked while it held it (a frame is written whole or
/// the worker is lost anyway).
fn pipe() -> MutexGuard<'static, Option<Pipe>> {
    PIPE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands the node's pipe to this module (the worker loop, once at start).
pub(crate) fn install(proto: File, worker_dir: &Path) {
    *pipe() = Some(Pipe { proto, sent_dir: worker_dir.join(SENT_DIR), sent: 0, in_job: false });
}

/// Marks whether a job is running.
pub(crate) fn set_in_job(running: bool) {
    if let Some(p) = pipe().as_mut() {
        p.in_job = running;
    }
}

/// Writes one frame to the node.
pub(crate) fn write_frame<T: Serialize>(msg: &T) -> std::io::Result<()> {
    let frame = encode_frame(msg).map_err(std::io::Error::other)?;
    let mut guard = pipe();
    let p = guard.as_mut().ok_or_else(|| std::io::Error::other("the worker's pipe is not set up"))?;
    p.proto.write_all(&frame)?;
    p.proto.flush()
}

/// Sends `value` to the client now, while the job goes on (dispy's provisional result): the
/// client's job-status callback sees it as a [`crate::JobEvent`] with `provisional` set,
/// and [`crate::Job::provisional`] returns the latest. Values arrive in the order sent,
/// before the job's result.
///
/// A node keeps a bounded number per job (a thousand); it drops the rest, saying so in the
/// job's report.
///
/// # Errors
/// [`Error::NotInJob`] outside a function job on a node; [`Error::JobSide`] when the value
/// cannot be encoded, is over 1 MiB encoded, or the node's pipe is gone.
///
/// # Examples
/// ```no_run
/// fn count_to(n: u64) -> u64 {
///     for i in 0..n {
///         let _ = dispy::provisional(&i);
///     }
///     n
/// }
/// ```
pub fn provisional<T: Serialize>(value: &T) -> Result<()> {
    let bytes = encode(value).map_err(|e| Error::JobSide(format!("cannot encode the provisional value: {e}")))?;
    if bytes.len() > MAX_PROVISIONAL_BYTES {
        let why = format!("a provisional value is {} bytes encoded, over {MAX_PROVISIONAL_BYTES}", bytes.len());
        return Err(Error::JobSide(why));
    }
    if !pipe().as_ref().is_some_and(|p| p.in_job) {
        return Err(Error::NotInJob("provisional"));
    }
    write_frame(&WorkerNote::Provisional(bytes)).map_err(|e| Error::JobSide(format!("cannot reach the node: {e}")))
}

/// Sends a file back to the client now, while the job goes on (dispy's `dispy_send_file`):
/// a copy is taken at once (the job may change or delete the file after), the node keeps
/// it for the client like a `--return` file, and the client saves it as
/// `<results dir>/<job number>/<file name>`, listed in the job's report's `returned`.
///
/// # Errors
/// [`Error::NotInJob`] outside a function job on a node; [`Error::File`] when the file
/// cannot be read or is no regular file; [`Error::JobSide`] when its name is not UTF-8 or
/// the node's pipe is gone.
///
/// # Examples
/// ```no_run
/// fn render(frame: u32) -> u32 {
///     let name = format!("frame-{frame}.png");
///     std::fs::write(&name, b"...").expect("write");
///     dispy::send_file(&name).expect("sent");
///     frame
/// }
/// ```
pub fn send_file(path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let file_error = |source| Error::File { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(file_error)?;
    if !meta.is_file() {
        return Err(file_error(std::io::Error::other("not a regular file")));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::JobSide(format!("{}: the file's name is not UTF-8", path.display())))?
        .to_string();
    let rel = {
        let mut guard = pipe();
        let p = guard.as_mut().filter(|p| p.in_job).ok_or(Error::NotInJob("send_file"))?;
        p.sent += 1;
        let rel = format!("{}/{name}", p.sent);
        let dest = p.sent_dir.join(&rel);
        let copied = dest.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::copy(path, &dest));
        copied.map_err(|e| Error::JobSide(format!("cannot copy {} for the node: {e}", path.display())))?;
        rel
    };
    write_frame(&WorkerNote::SendFile(rel)).map_err(|e| Error::JobSide(format!("cannot reach the node: {e}")))
}
