//! The cluster's secret, as users give it: none, a passphrase or a key file.

use crate::error::Result;
use libp2p::pnet::PreSharedKey;
use std::path::PathBuf;

/// Passphrases shorter than this are warned about.
const SHORT_PASSPHRASE: usize = 16;

/// The cluster's secret.
#[derive(Clone, Debug, Default)]
pub enum Secret {
    /// No secret: an open mesh (only for trusted, isolated networks).
    #[default]
    None,
    /// A passphrase, stretched into the network key.
    Passphrase(String),
    /// A key file written by `dispy-peer keygen`.
    File(PathBuf),
}

impl Secret {
    /// The private-network key, if any.
    ///
    /// # Errors
    /// [`crate::Error::Node`] for an unreadable key file or an empty passphrase.
    pub fn to_psk(&self) -> Result<Option<PreSharedKey>> {
        Ok(match self {
            Secret::None => None,
            Secret::Passphrase(p) => {
                let chars = p.chars().count();
                if chars < SHORT_PASSPHRASE {
                    // The pnet handshake hands anyone who sees it (or whom a node dials after
                    // a forged mDNS answer) known plaintext to test guesses against, offline.
                    tracing::warn!(
                        chars,
                        "the secret is a short passphrase: anyone who sees this mesh's traffic can \
                         try guesses offline; prefer a key file from `dispy-peer keygen`"
                    );
                }
                Some(dispy_node::psk::from_secret(p)?)
            }
            Secret::File(f) => Some(dispy_node::psk::from_file(f)?),
        })
    }
}
