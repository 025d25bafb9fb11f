//! Keeping the cluster secret away from jobs.
//!
//! Jobs run as the node's user and are its children: `/proc/<node>/environ` shows the
//! environment the node was *started* with, whatever it removes later, so a job could read
//! `DISPY_SECRET` there. When the secret comes in the environment, the process therefore
//! re-executes itself at once, without the variable, handing the secret over through an
//! inherited pipe (read and closed first thing); then it marks itself non-dumpable, so that
//! other processes of the user cannot read its memory either.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

/// The variable users set.
const SECRET_ENV: &str = "DISPY_SECRET";
/// Set on the re-executed process only: the pipe's descriptor number (not a secret).
const SECRET_FD_ENV: &str = "DISPY_SECRET_FD";

/// Call first thing in `main`, before any thread exists. Either replaces the process (the
/// secret was in the environment) or, in the re-executed process, puts the secret read
/// from the pipe back in this process's own environment for the option parser; the caller
/// removes it again once parsed. A failure to re-execute is logged to stderr and the run
/// goes on as before (the secret then stays visible to jobs in `/proc`).
pub(crate) fn hide_secret_env() {
    if let Some(fd) = std::env::var_os(SECRET_FD_ENV) {
        // SAFETY (both calls): no other thread exists yet.
        unsafe { std::env::remove_var(SECRET_FD_ENV) };
        match read_secret(&fd) {
            Ok(secret) => unsafe { std::env::set_var(SECRET_ENV, secret) },
            Err(e) => eprintln!("dispy-peer: cannot read the secret handed over by the parent: {e}"),
        }
        return;
    }
    let Some(secret) = std::env::var_os(SECRET_ENV).filter(|s| !s.is_empty()) else { return };
    if let Err(e) = reexec_without(&secret) {
        eprintln!(
            "dispy-peer: warning: could not restart without {SECRET_ENV} in the environment ({e}); \
             jobs started from here can read it in /proc"
        );
    }
}

/// Makes this process non-dumpable: no core dump, and `/proc/<pid>/{environ,mem,...}` and
/// ptrace closed to other processes of the same user (jobs included).
pub(crate) fn make_undumpable() {
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(cause = %std::io::Error::last_os_error(), "could not make the process non-dumpable");
    }
}

/// Whether the secret was given on the command line (visible to every local user in `ps`).
pub(crate) fn secret_in_argv() -> bool {
    std::env::args_os().skip(1).any(|a| a == "--secret" || a.to_string_lossy().starts_with("--secret="))
}

fn read_secret(fd: &OsString) -> std::io::Result<OsString> {
    use std::os::unix::ffi::OsStringExt;
    let fd: i32 = fd
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| std::io::Error::other(format!("{SECRET_FD_ENV} is not a descriptor number")))?;
    // SAFETY: the parent left this descriptor open for us alone; we take ownership and
    // close it when done.
    let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    pipe.read_to_end(&mut bytes)?;
    Ok(OsString::from_vec(bytes))
}

/// Replaces the process with itself, minus the secret in the environment. Returns only on
/// failure.
fn reexec_without(secret: &OsString) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let exe = std::env::current_exe()?;
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array we own. No O_CLOEXEC on the read
    // end: the new image inherits it.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and belong to us alone.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A secret is far below the pipe's buffer (64 KiB), so this never blocks.
    let mut w = std::fs::File::from(write_end);
    w.write_all(secret.as_bytes())?;
    drop(w);
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env_remove(SECRET_ENV)
        .env(SECRET_FD_ENV, fds[0].to_string())
        .exec();
    drop(read_end);
    Err(err)
}
