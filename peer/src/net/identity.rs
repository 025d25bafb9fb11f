//! A peer's lasting identity: an ed25519 key in a file, so that its peer id stays the same
//! from run to run and a node can admit it by name (`serve --allow-peer`).
//!
//! The file holds the 32-byte secret key in hex under a header line, like the network key
//! files; it is created with mode 0600 and refused when others may read or write it.

use crate::error::{Error, Result};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::path::Path;

/// First line of an identity file.
const HEADER: &str = "/dispy/identity/ed25519/1/";

/// Reads the identity in `path`, or makes a fresh one there (mode 0600) when the file does
/// not exist.
///
/// # Errors
/// [`Error::SecretFile`] naming the file: unreadable, not an identity file, or readable or
/// writable by other users (anyone who can read it can act as this peer).
pub fn load_or_create(path: &Path) -> Result<Keypair> {
    let bad = |reason: String| Error::SecretFile { path: path.to_path_buf(), reason };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            check_private(path)?;
            parse(&text).ok_or_else(|| bad("not an identity file written by dispy-peer".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The peer id of the identity in `path` (made first if missing).
///
/// # Errors
/// As [`load_or_create`].
pub fn peer_id(path: &Path) -> Result<PeerId> {
    Ok(load_or_create(path)?.public().to_peer_id())
}

fn parse(text: &str) -> Option<Keypair> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next()? != HEADER {
        return None;
    }
    let hex = lines.next()?;
    if hex.len() != 64 || lines.next().is_some() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Keypair::ed25519_from_bytes(key).ok()
}

fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    if meta.mode() & 0o077 != 0 {
        return Err(Error::SecretFile {
            path: path.to_path_buf(),
            reason: format!(
                "other users may read or write it (mode {:o}); anyone who reads it can act as this peer: \
                 chmod 600 it",
                meta.mode() & 0o777
            ),
        });
    }
    Ok(())
}

fn create(path: &Path) -> Result<Keypair> {
    let keypair = Keypair::generate_ed25519();
    let secret = keypair
        .clone()
        .try_into_ed25519()
        .map_err(|e| Error::Setup(format!("a fresh ed25519 key is not ed25519: {e}")))?
        .secret();
    let text = format!("{HEADER}\n{}\n", crate::psk::hex(secret.as_ref()));
    crate::psk::write_private_new(path, "identity file ", &text)?;
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_identity_is_made_once_then_kept_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let first = peer_id(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(peer_id(&path).unwrap(), first, "the same peer id every run");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains(&path.display().to_string()), "{err}");

        std::fs::write(&path, "garbage").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("not an identity file"), "{err}");
    }
}
