//! Identifier newtypes. Never bare integers on the wire or in maps.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A cluster: one client's computation on the mesh. Chosen at random by the client, so
/// several clients (and several clusters of one client) never collide on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl ClusterId {
    /// A short label for logs that does not reveal the id. A node's cluster ids are
    /// capabilities of their clients (with the owner token, see [`OwnerToken`]), so a
    /// node's logs name clusters by this tag; the client can compute the same tag to match
    /// them.
    ///
    /// ```
    /// # use dispy_protocol::ClusterId;
    /// let tag = ClusterId(42).tag().to_string();
    /// assert_eq!(tag.len(), 8);
    /// assert!(!tag.contains(&ClusterId(42).to_string()));
    /// ```
    pub fn tag(&self) -> ClusterTag {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"dispy-peer/cluster-tag/v1\0");
        h.update(self.0.to_be_bytes());
        let d = h.finalize();
        ClusterTag(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
    }

    /// A name for the cluster's folders on a node that does not reveal the id (jobs can
    /// list the node's folders): 32 hex digits of a hash of it.
    pub fn hidden_name(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"dispy-peer/cluster-dir/v1\0");
        h.update(self.0.to_be_bytes());
        FileHash(h.finalize().into()).to_hex()[..32].to_string()
    }
}

/// A cluster's label in logs ([`ClusterId::tag`]): 8 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterTag(u32);

impl fmt::Display for ClusterTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A job within its cluster, numbered by the client from 0 in submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// SHA-256 of a file's content: the name under which a node stores it, so a file is sent
/// to a node at most once whatever cluster it belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FileHash(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl FileHash {
    /// Lower-case hex, as used for file names in a node's store.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl fmt::Display for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileHash({})", &self.to_hex()[..12])
    }
}

/// A secret a client makes for each cluster (from the OS random source) and keeps only in
/// its journal: whoever holds it owns the cluster's results on a node (for
/// [`crate::Recover`] and [`crate::Forget`]). Nodes see only its [`OwnerHash`] until a
/// recovering client presents it. Its `Debug` shows no byte of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OwnerToken(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl OwnerToken {
    /// The hash a client sends in its Reserve: SHA-256 of a fixed label and the token.
    pub fn hash(&self) -> OwnerHash {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"dispy-peer/owner/v1\0");
        h.update(self.0);
        OwnerHash(h.finalize().into())
    }

    /// Lower-case hex, as written to a journal.
    pub fn to_hex(&self) -> String {
        FileHash(self.0).to_hex()
    }
}

impl fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerToken(..)")
    }
}

impl FromStr for OwnerToken {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<FileHash>().map(|h| OwnerToken(h.0))
    }
}

/// A secret a client makes for each cluster (from the OS random source) and gives every
/// node of the cluster in its [`crate::Reserve`]: a node presents it to fetch the cluster's
/// files from another node of the cluster ([`crate::Fetch::share`]), which thereby knows
/// the asker belongs to the cluster. A node outside the cluster (it holds the cluster key,
/// but was never sent the cluster) cannot browse another's files. Its `Debug` shows no
/// byte of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ShareToken(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl ShareToken {
    /// Whether `other` is this token, in time independent of where they differ (a peer
    /// must not learn the token a byte at a time from how long a refusal takes).
    ///
    /// ```
    /// # use dispy_protocol::ShareToken;
    /// assert!(ShareToken([7; 32]).matches(&ShareToken([7; 32])));
    /// assert!(!ShareToken([7; 32]).matches(&ShareToken([8; 32])));
    /// ```
    pub fn matches(&self, other: &ShareToken) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl fmt::Debug for ShareToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShareToken(..)")
    }
}

/// The hash of an [`OwnerToken`], which a node keeps beside a cluster's lease and its
/// results on disk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct OwnerHash(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl OwnerHash {
    /// Lower-case hex, as a node stores it.
    pub fn to_hex(&self) -> String {
        FileHash(self.0).to_hex()
    }
}

impl fmt::Debug for OwnerHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerHash({})", &self.to_hex()[..12])
    }
}

impl FromStr for OwnerHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<FileHash>().map(|h| OwnerHash(h.0))
    }
}

/// The text was not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a file hash (64 hex digits): {0:?}")]
pub struct ParseHashError(String);

impl FromStr for FileHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseHashError(s.to_string());
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(FileHash(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_hex_round_trips() {
        let h = FileHash([0xab; 32]);
        assert_eq!(h.to_hex().parse::<FileHash>().unwrap(), h);
        assert!("xyz".parse::<FileHash>().is_err());
        assert!("zz".repeat(32).parse::<FileHash>().is_err());
    }

    #[test]
    fn owner_tokens_round_trip_and_hide_in_debug() {
        let t = OwnerToken([0x5a; 32]);
        assert_eq!(t.to_hex().parse::<OwnerToken>().unwrap(), t);
        assert_eq!(format!("{t:?}"), "OwnerToken(..)");
        assert_ne!(t.hash(), OwnerToken([0x5b; 32]).hash());
        assert_eq!(t.hash().to_hex().parse::<OwnerHash>().unwrap(), t.hash());
    }
}
