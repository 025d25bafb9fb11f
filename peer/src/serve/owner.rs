//! Who may recover and forget a cluster's results: its owner. That is the peer holding its
//! lease, or whoever presents the owner token whose hash the client sent with its Reserve
//! (a client restarted after a crash has a new identity but the token in its journal).
//! Results kept on disk carry their owner's hash beside them, so the rule holds after the
//! lease has gone and after a restart of the node. A cluster id alone proves nothing: it
//! can leak (logs of older nodes, a job listing folders).

use super::lease::Lease;
use dispy_protocol::{ClusterId, OwnerHash, OwnerToken, Refusal, RefusalKind};
use libp2p::PeerId;

/// On what grounds a recover or forget acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// The cluster's lease lives and the asker owns it; its results on disk count when
    /// they belong to the same owner.
    Lease(Option<OwnerHash>),
    /// No lease: the asker presented a token with this hash.
    Token(OwnerHash),
    /// No lease and no token: only results kept for a client that sent no owner hash.
    Anonymous,
}

/// A refusal for a peer that does not own `cluster`.
pub(super) fn not_owner(cluster: ClusterId) -> Refusal {
    Refusal::new(
        RefusalKind::NotOwner,
        format!(
            "cluster {cluster} is not yours on this node: only the peer that reserved it, or one presenting its \
             owner token (from the client's journal), may recover or forget its results"
        ),
    )
}

/// The grounds for `peer` presenting `token` about `cluster`, whose lease is `lease` if it
/// lives.
///
/// # Errors
/// [`not_owner`] when the lease lives and `peer` neither holds it nor presents its token.
pub(super) fn access(
    cluster: ClusterId,
    lease: Option<&Lease>,
    peer: PeerId,
    token: Option<OwnerToken>,
) -> Result<Access, Refusal> {
    let claim = token.map(|t| t.hash());
    match lease {
        Some(l) if l.client == peer || (claim.is_some() && claim == l.owner) => Ok(Access::Lease(l.owner)),
        Some(_) => Err(not_owner(cluster)),
        None => Ok(claim.map_or(Access::Anonymous, Access::Token)),
    }
}

/// Whether results kept on disk, owned by `kept` (see `KeptResults::owner`), are the
/// asker's: `Ok(true)` to use them, `Ok(false)` to leave them out (there are none, or they
/// belong to an earlier holder of the id while the asker's own lease lives).
///
/// # Errors
/// [`not_owner`] when they exist and belong to someone else, with no lease of the asker's.
pub(super) fn may_use_kept(
    cluster: ClusterId,
    access: Access,
    kept: Option<Option<OwnerHash>>,
) -> Result<bool, Refusal> {
    let Some(kept) = kept else { return Ok(false) };
    match (access, kept) {
        (Access::Lease(owner), kept) => Ok(owner == kept),
        (Access::Token(claim), Some(owner)) => {
            if claim == owner {
                Ok(true)
            } else {
                Err(not_owner(cluster))
            }
        }
        (Access::Anonymous, Some(_)) => Err(not_owner(cluster)),
        // Kept for a client that sent no owner hash (an older client): as before owners
        // existed, the id is the proof.
        (Access::Token(_) | Access::Anonymous, None) => Ok(true),
    }
}

/// Whether a Reserve naming `owner` may take `cluster`, whose results on disk are owned by
/// `kept`: an id whose kept results belong to another owner is not free to squat.
///
/// # Errors
/// [`not_owner`] when it is taken.
pub(super) fn may_reserve(
    cluster: ClusterId,
    owner: Option<OwnerHash>,
    kept: Option<Option<OwnerHash>>,
) -> Result<(), Refusal> {
    match kept {
        Some(Some(k)) if owner != Some(k) => Err(Refusal::new(
            RefusalKind::NotOwner,
            format!("cluster {cluster} has results on this node that belong to another client"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_results_go_to_their_owner_only() {
        let c = ClusterId(1);
        let (mine, theirs) = (OwnerToken([1; 32]).hash(), OwnerToken([2; 32]).hash());
        assert_eq!(may_use_kept(c, Access::Token(mine), Some(Some(mine))), Ok(true));
        assert!(may_use_kept(c, Access::Token(theirs), Some(Some(mine))).is_err());
        assert!(may_use_kept(c, Access::Anonymous, Some(Some(mine))).is_err());
        assert_eq!(may_use_kept(c, Access::Lease(Some(theirs)), Some(Some(mine))), Ok(false));
        assert_eq!(may_use_kept(c, Access::Lease(Some(mine)), Some(Some(mine))), Ok(true));
        assert_eq!(may_use_kept(c, Access::Anonymous, Some(None)), Ok(true), "an older client's");
        assert_eq!(may_use_kept(c, Access::Anonymous, None), Ok(false), "nothing kept");
        assert!(may_reserve(c, Some(theirs), Some(Some(mine))).is_err());
        assert!(may_reserve(c, None, Some(Some(mine))).is_err());
        assert!(may_reserve(c, Some(mine), Some(Some(mine))).is_ok());
        assert!(may_reserve(c, Some(mine), None).is_ok());
    }
}
