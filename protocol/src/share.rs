//! Nodes sharing a cluster's files: a client that has sent a large file to one node asks the
//! next to [`Pull`] it from the nodes that hold it, so the client's link carries each file
//! about once per cluster instead of once per node.
//!
//! Who holds what is the client's own knowledge (it staged or pulled every copy); the
//! puller fetches chunks with [`crate::Fetch`] carrying the cluster's
//! [`crate::ShareToken`], and verifies the whole file's hash as for a client's upload.

use crate::ids::{ClusterId, FileHash};
use serde::{Deserialize, Serialize};

/// Asks a node to fetch one of the cluster's files from other nodes of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Pull {
    /// The cluster; its Reserve brought the file's entry and the share token.
    pub cluster: ClusterId,
    /// Which file.
    pub hash: FileHash,
    /// Nodes that hold it, tried in order (a node refusing or failing gives way to the
    /// next). At most [`MAX_SOURCES`].
    pub from: Vec<Source>,
}

/// Most sources one [`Pull`] may name.
pub const MAX_SOURCES: usize = 16;

/// A node that holds a file, and where the client reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Source {
    /// Its peer id, in libp2p's binary form.
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    /// Its addresses, as binary multiaddrs (at most 8 are used).
    pub addrs: Vec<Vec<u8>>,
}

/// Where a pull stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Pulled {
    /// Which file.
    pub hash: FileHash,
    /// Bytes stored so far.
    pub received: u64,
    /// How it stands.
    pub state: PullState,
    /// Sources that sent bytes that are not the file's (binary peer ids): the client stops
    /// naming them. Set once the pull ended, whichever way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub liars: Vec<Vec<u8>>,
}

/// How a pull stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum PullState {
    /// Still fetching: ask again to wait on.
    Running,
    /// The file is stored and its hash verified.
    Done,
    /// No source gave the file (the reason says why, for people); the client sends it.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response, decode, encode};

    #[test]
    fn pulls_round_trip_through_the_codec() {
        let pull = Request::Pull(Pull {
            cluster: ClusterId(3),
            hash: FileHash([4; 32]),
            from: vec![Source { peer: vec![1, 2, 3], addrs: vec![vec![4, 5]] }],
        });
        let back: Request = decode(&encode(&pull).unwrap()).unwrap();
        assert_eq!(back, pull);
        let failed = Response::Pulled(Pulled {
            hash: FileHash([4; 32]),
            received: 9,
            state: PullState::Failed("r".into()),
            liars: vec![vec![1]],
        });
        let back: Response = decode(&encode(&failed).unwrap()).unwrap();
        assert_eq!(back, failed);
    }
}
