//! The node's dest path is private: made 0700, and refused when another user could have
//! planted or could change what is in it.
//!
//! Jobs run the stored files and the node keeps every client's results there, so a folder
//! that another local user owns, or may write to, would let that user run code as the node's
//! user and read every result. The checks follow OpenSSH's `StrictModes`: the dest itself
//! must be ours and writable only by us; each folder above it must be ours or root's, and
//! writable by others only with the sticky bit (as `/tmp` is), which stops them from renaming
//! our folder away.

use super::sys::euid;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The default dest path for this user: `<temp>/dispy-peer-<uid>/node`. Per user, so two
/// users' nodes never share one, and a folder another user made under that name is refused
/// (see [`prepare_dest`]) rather than adopted.
pub fn default_dest() -> PathBuf {
    std::env::temp_dir().join(format!("dispy-peer-{}", euid())).join("node")
}

/// Makes `dest` (and any missing folder above it) with mode 0700, then checks that it is
/// safe to use (see the module docs).
///
/// # Errors
/// Why the path is unsafe or cannot be made, naming the folder at fault, for
/// [`crate::Error::UnsafeDest`].
pub(crate) fn prepare_dest(dest: &Path) -> Result<(), String> {
    let dest = std::path::absolute(dest).map_err(|e| format!("cannot resolve the path: {e}"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dest)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let me = euid();
    for (i, dir) in dest.ancestors().enumerate() {
        check_folder(dir, me, i == 0)?;
    }
    Ok(())
}

/// Makes `dir` (whose parent is private already) with mode 0700, or, when it exists, checks
/// that it is a folder of ours and narrows its mode to 0700 (an earlier version made them
/// with the default mode).
///
/// # Errors
/// Why it cannot be made or used.
pub(crate) fn private_subdir(dir: &Path) -> Result<(), String> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    check_folder(dir, euid(), true)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot make {} private (chmod 700): {e}", dir.display()))
}

/// Checks one folder: `own` for the dest and what the node makes in it (ours, writable by us
/// only); otherwise a folder above it (ours or root's; writable by others only if sticky).
fn check_folder(dir: &Path, me: u32, own: bool) -> Result<(), String> {
    let link = fs::symlink_metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    // A link is followed each time the path is used: whoever owns it can point it elsewhere.
    if link.file_type().is_symlink() && link.uid() != me && link.uid() != 0 {
        return Err(format!(
            "{} is a symbolic link owned by user {}, who could point it elsewhere",
            dir.display(),
            link.uid()
        ));
    }
    let m = fs::metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    if !m.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let owner_ok = m.uid() == me || (!own && m.uid() == 0);
    if !owner_ok {
        return Err(format!(
            "{} is owned by user {}, not by this node's user {me}: another user may have made it to plant files",
            dir.display(),
            m.uid()
        ));
    }
    let mode = m.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && (own || !sticky) {
        return Err(format!(
            "{} (mode {:o}) is writable by other users, who could plant or change files in it; \
             `chmod go-w` it or choose another --dest-path",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dest_is_made_private() {
        let top = tempfile::tempdir().unwrap();
        let dest = top.path().join("a/b/node");
        prepare_dest(&dest).unwrap();
        for dir in [top.path().join("a"), top.path().join("a/b"), dest.clone()] {
            assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "{}", dir.display());
        }
        prepare_dest(&dest).expect("an existing private dest is fine");
    }

    #[test]
    fn a_world_or_group_writable_dest_is_refused() {
        let top = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o770, 0o1777] {
            let dest = top.path().join(format!("node{mode:o}"));
            fs::create_dir(&dest).unwrap();
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).unwrap();
            let err = prepare_dest(&dest).unwrap_err();
            assert!(err.contains("writable by other users") && err.contains("chmod go-w"), "{err}");
        }
    }

    #[test]
    fn a_writable_folder_above_is_refused_unless_sticky() {
        let top = tempfile::tempdir().unwrap();
        let open = top.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare_dest(&open.join("node")).unwrap_err();
        assert!(err.contains(&open.display().to_string()), "names the folder: {err}");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        prepare_dest(&open.join("node")).expect("sticky, like /tmp");
    }

    #[test]
    fn a_subdir_is_narrowed_to_0700_and_a_file_refused() {
        let top = tempfile::tempdir().unwrap();
        let sub = top.path().join("store");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        private_subdir(&sub).unwrap();
        assert_eq!(fs::metadata(&sub).unwrap().permissions().mode() & 0o777, 0o700);
        fs::write(top.path().join("file"), b"").unwrap();
        assert!(private_subdir(&top.path().join("file")).unwrap_err().contains("not a folder"));
    }

    #[test]
    fn a_dest_of_another_user_is_refused() {
        if euid() != 0 {
            return; // Only root can give a folder away.
        }
        let top = tempfile::tempdir().unwrap();
        let dest = top.path().join("node");
        fs::create_dir(&dest).unwrap();
        std::os::unix::fs::chown(&dest, Some(65534), None).unwrap();
        let err = prepare_dest(&dest).unwrap_err();
        assert!(err.contains("owned by user 65534"), "{err}");
    }

    #[test]
    fn the_default_dest_is_per_user() {
        assert!(default_dest().to_string_lossy().contains(&format!("dispy-peer-{}", euid())));
    }
}
