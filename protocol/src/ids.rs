//! Identifier newtypes. Never bare integers on the wire or in maps.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A cluster: one client's computation on the mesh. Chosen at random by the client, so
/// several clients (and several clusters of one client) never collide on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A job within its cluster, numbered by the client from 0 in submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// SHA-256 of a file's content: the name under which a node stores it, so a file is sent
/// to a node at most once whatever cluster it belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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
}
