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
