//! The few OS calls std does not wrap.
#![allow(unsafe_code)]

/// Sends SIGKILL to every process of a process group. A group that is already gone is
/// not an error: the job ended on its own.
pub(crate) fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else { return };
    if pgid <= 1 {
        // Never signal group 0 (our own) or -1 (every process we may signal).
        return;
    }
    // SAFETY: kill(2) takes plain integers and has no memory effects.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// The effective user id of this process: the owner its files get.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, always succeeds and touches no memory.
    unsafe { libc::geteuid() }
}

/// A pidfd for our child `pid` (Linux 5.3+): it becomes readable when the child exits,
/// before it is reaped. While the child is an unreaped zombie its pid, and so its process
/// group id, cannot be reused, so a group kill sent then cannot hit another group.
pub(crate) fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// [`pidfd_open`] registered with the tokio reactor, to await the child's exit; `None` when
/// the kernel has no pidfds. Call inside a tokio runtime.
pub(crate) fn exit_watch(pid: u32) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let fd = pidfd_open(pid).ok()?;
    // SAFETY: an `OwnedFd` keeps its descriptor open, and its `as_raw_fd` unchanged, until
    // it is dropped, which is what `register` asks for.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

/// Bytes free to this (unprivileged) user on the file system holding `path` (statvfs(3):
/// available blocks × fragment size); `None` if it cannot be read.
pub(crate) fn disk_free(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the struct we pass, which is plain data and may
    // start zeroed; the path is a valid NUL-terminated string that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    // Both are u64 on 64-bit Linux but narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let (blocks, size) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    blocks.checked_mul(size)
}
