//! The cluster's pre-shared secret, turned into a libp2p private-network key.
//!
//! A typed secret goes through Argon2id with a fixed, versioned salt, so a short passphrase
//! is costly to brute-force from captured traffic; a key file (`dispy-peer keygen`) holds 32
//! random bytes and needs no stretching. Only the key's fingerprint is ever logged.

use crate::error::{Error, Result};
use libp2p::pnet::PreSharedKey;
use std::path::Path;

/// Salt for the passphrase KDF. Changing it changes every derived key: it is versioned.
const KDF_SALT: &[u8] = b"dispy-peer/psk/v1";

/// First line of a key file, as in IPFS's `swarm.key`, so the files are recognisable.
const KEY_FILE_HEADER: &str = "/key/swarm/psk/1.0.0/";

/// Derives the network key from a passphrase.
///
/// # Errors
/// [`Error::Setup`] if the passphrase is empty.
///
/// # Examples
/// ```
/// let a = dispy_node::psk::from_secret("s3cret").unwrap();
/// let b = dispy_node::psk::from_secret("s3cret").unwrap();
/// assert_eq!(a.fingerprint().to_string(), b.fingerprint().to_string());
/// ```
pub fn from_secret(secret: &str) -> Result<PreSharedKey> {
    if secret.is_empty() {
        return Err(Error::Setup("the secret is empty".into()));
    }
    // 8 MiB, 2 passes: ~20 ms here. Every client pays it once per run, off the per-job path.
    let params =
        argon2::Params::new(8 * 1024, 2, 1, Some(32)).map_err(|e| Error::Setup(format!("argon2 parameters: {e}")))?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    kdf.hash_password_into(secret.as_bytes(), KDF_SALT, &mut key).map_err(|e| Error::Setup(format!("argon2: {e}")))?;
    Ok(PreSharedKey::new(key))
}

/// Reads a key file written by [`write_key_file`] (`/key/swarm/psk/1.0.0/`, `/base16/`, 64
/// hex digits).
///
/// # Errors
/// [`Error::SecretFile`] naming the file and what is wrong with it.
pub fn from_file(path: &Path) -> Result<PreSharedKey> {
    let bad = |reason: String| Error::SecretFile { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    text.parse::<PreSharedKey>().map_err(|e| bad(format!("not a key file written by `dispy-peer keygen` ({e})")))
}

/// Writes a fresh random key to `path`, readable by its owner only (mode 0600).
///
/// # Errors
/// [`Error::Io`] if the file exists or cannot be written.
pub fn write_key_file(path: &Path) -> Result<PreSharedKey> {
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    write_private_new(path, "", &format!("{KEY_FILE_HEADER}\n/base16/\n{}\n", hex(&key)))?;
    Ok(PreSharedKey::new(key))
}

/// Lower-case hex of `bytes`, as key files hold them.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `text` to a new file at `path` that only its owner may read or write (mode
/// 0600), never replacing one: the key files (`what` names the kind in errors).
pub(crate) fn write_private_new(path: &Path, what: &str, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {what}{}", path.display()), e))?;
    file.write_all(text.as_bytes()).map_err(|e| Error::io(format!("cannot write {what}{}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_secrets_give_different_keys() {
        let a = from_secret("one").unwrap().fingerprint().to_string();
        let b = from_secret("two").unwrap().fingerprint().to_string();
        assert_ne!(a, b);
        assert!(from_secret("").is_err());
    }

    #[test]
    fn key_file_round_trips_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let written = write_key_file(&path).unwrap();
        let read = from_file(&path).unwrap();
        assert_eq!(written.fingerprint().to_string(), read.fingerprint().to_string());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_key_file(&path).is_err(), "never overwrites a key");
        std::fs::write(&path, "garbage").unwrap();
        let err = from_file(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
