//! How many connections and requests a peer takes, sized from its file-descriptor budget.
//!
//! Every connection, pending or established, holds a descriptor; so do a job's pipes, the
//! store's files and the results being saved. A flood of connections (which needs no
//! secret: the pnet handshake comes after accept) must be able to delay a client, never to
//! starve the node of the descriptors its jobs need. So connections get at most half of the
//! process's descriptors, and the soft limit is raised to the hard one first.
#![allow(unsafe_code)]

use std::time::Duration;

/// An inbound handshake (pnet nonce swap, multistream, noise, yamux) that takes longer than
/// this is dropped. About ten loopback or LAN round trips take milliseconds, and a WAN
/// handshake of five round trips at 300 ms fits; a peer that connects and sends nothing
/// holds its descriptor this long at most.
pub(crate) const INBOUND_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// A dial (TCP connect plus handshake) that takes longer than this fails. A wrong key often
/// makes the upgrade hang rather than fail, so this bounds how long such a peer holds a
/// dial open.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection limits of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Inbound connections still in their handshake, in all.
    pub pending_incoming: u32,
    /// Inbound connections still in their handshake from one IP address, so that one
    /// flooding host cannot hold every pending slot.
    pub pending_per_ip: u32,
    /// Outbound dials in flight.
    pub pending_outgoing: u32,
    /// Established connections, in all.
    pub established: u32,
    /// Established connections to one peer (a client and a node need one; a few more
    /// allow for simultaneous dials and reconnects).
    pub established_per_peer: u32,
    /// Inbound requests of one peer waiting for the node's answer; past it, a request is
    /// refused as overloaded at once.
    pub requests_per_peer: u32,
    /// Inbound requests waiting for an answer, in all.
    pub requests: u32,
    /// An inbound connection whose peer, this long after connecting, has sent no request
    /// that was let through and has not shown itself to be a node, is closed: it holds a
    /// descriptor and a connection slot for nothing. Clients greet at once.
    pub greeting_window: Duration,
    /// A connection with no stream open, to a peer that is neither a client with business
    /// here nor a configured peer (Kademlia's links between nodes, a discovery probe), is
    /// closed after this long: a mesh of n nodes must not hold n² idle links.
    pub idle_timeout: Duration,
}

impl ConnLimits {
    /// Limits for a process allowed `nofile` descriptors: connections, pending and
    /// established, use at most half of them; the other half stays for jobs' pipes and the
    /// store's files, which a flood can then delay but never starve.
    pub fn for_fd_limit(nofile: u64) -> Self {
        let half = u32::try_from(nofile / 2).unwrap_or(u32::MAX);
        let pending_incoming = (half / 4).clamp(8, 256);
        let pending_outgoing = (half / 8).clamp(8, 128);
        let established = half.saturating_sub(pending_incoming + pending_outgoing).clamp(16, 8192);
        ConnLimits {
            pending_incoming,
            pending_per_ip: (pending_incoming / 8).max(4),
            pending_outgoing,
            established,
            established_per_peer: 8,
            // yamux allows 512 streams per connection, so a peer could never have more
            // than this in flight on one connection anyway; clients keep far fewer (a
            // submit batch or two, a window of chunks per file being staged).
            requests_per_peer: 512,
            requests: 4096,
            greeting_window: Duration::from_secs(15),
            // Long enough for a Kademlia query's follow-ups.
            idle_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for ConnLimits {
    /// Sized from the process's soft descriptor limit as it is now.
    fn default() -> Self {
        ConnLimits::for_fd_limit(fd_limit().map_or(1024, |(soft, _)| soft))
    }
}

/// The process's (soft, hard) limits on open descriptors.
pub fn fd_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own and has no other effect.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft limit on open descriptors to the hard limit (the common soft default of
/// 1024 is far below what a busy node needs, and nothing else raises it). Returns the
/// (old, new) soft limits, or the OS error.
///
/// # Errors
/// The `setrlimit` error, when the OS refuses (it never should for soft ≤ hard).
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = fd_limit().ok_or_else(std::io::Error::last_os_error)?;
    // An unlimited hard limit cannot be a soft one on Linux (past fs.nr_open it fails);
    // a million descriptors is beyond any node's need.
    let target = hard.min(1 << 20);
    if target <= soft {
        return Ok((soft, soft));
    }
    let lim = libc::rlimit { rlim_cur: target, rlim_max: hard };
    // SAFETY: setrlimit reads the struct we own and has no memory effects.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((soft, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_keep_half_the_descriptors_for_the_work() {
        for nofile in [256, 1024, 4096, 65536, 1 << 20] {
            let l = ConnLimits::for_fd_limit(nofile);
            let conns = u64::from(l.pending_incoming + l.pending_outgoing + l.established);
            assert!(conns <= nofile / 2 || nofile < 256, "{nofile}: {l:?}");
            assert!(l.pending_per_ip < l.pending_incoming, "{nofile}: {l:?}");
        }
        let small = ConnLimits::for_fd_limit(1024);
        assert_eq!((small.pending_incoming, small.pending_per_ip), (128, 16));
        assert_eq!(small.established, 512 - 128 - 64);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let (old, new) = raise_fd_limit().unwrap();
        let (soft, hard) = fd_limit().unwrap();
        assert!(new >= old);
        assert_eq!(soft, new);
        assert!(soft == hard.min(1 << 20) || soft > hard.min(1 << 20));
    }
}
