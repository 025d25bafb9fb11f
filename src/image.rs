//! The image a function cluster ships: the client's own executable without its debug
//! sections.
//!
//! Rust builds keep line tables even in release (and debug builds all debug information):
//! most of the file (a 76 MB example is 12 MB of code and data). Nodes run the code and never
//! read its debug information, while every megabyte is staged to every node before its first
//! job; a worker that panics on a node still names its functions (the symbol table stays),
//! only not their lines.
//!
//! The image is made once per build, under `$XDG_CACHE_HOME/dispy-peer/images/` (else
//! `~/.cache/…`), in a folder named after the executable's identity (path, device, inode,
//! size, modification and change times): later runs of the same build find it with a `stat`.
//! Nodes run what is shipped, so the folders are private (0700, ours, and refused otherwise)
//! and an image appears only whole (written aside, then renamed). Anything that goes wrong
//! ships the executable as it is: the image only makes staging faster.

use dispy_node::euid;
use object::build::elf::Builder;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Debug sections smaller than this are not worth a second file.
const MIN_SAVING: u64 = 4 << 20;
/// Images kept (one per build that ran); the least recently used go first.
const KEEP: usize = 8;
/// Part of every image's key: a new way of making images makes new ones.
const FORMAT: &[u8] = b"dispy-peer/image/v1";

/// The file to ship for the function cluster whose executable is `exe`: its image without
/// debug sections, or `exe` itself when it has little to strip or the image cannot be made.
/// Blocking (reads the executable the first time): call on the blocking pool.
pub(crate) fn worker_image(exe: &Path) -> PathBuf {
    let Some(images) = crate::hashcache::cache_dir().map(|d| d.join("images")) else { return exe.to_path_buf() };
    match image_in(&images, exe) {
        Ok(Some(image)) => image,
        Ok(None) => exe.to_path_buf(),
        Err(e) => {
            tracing::debug!(exe = %exe.display(), "shipping the executable as it is: {e}");
            exe.to_path_buf()
        }
    }
}

/// The image of `exe` in `images` (made if missing), or `None` when stripping saves too little.
fn image_in(images: &Path, exe: &Path) -> std::io::Result<Option<PathBuf>> {
    let exe = fs::canonicalize(exe)?;
    let name = exe.file_name().ok_or_else(|| std::io::Error::other("the executable has no file name"))?;
    let m = fs::metadata(&exe)?;
    private_dir(images.parent().unwrap_or(images))?;
    private_dir(images)?;
    let folder = images.join(key(&exe, &m));
    let image = folder.join(name);
    if fs::symlink_metadata(&folder).is_ok() {
        private_dir(&folder)?;
        // Used now: the pruning goes by last use, not by age.
        let _ = fs::File::open(&folder).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        // An empty folder marks a build with too little to strip.
        return Ok(fs::metadata(&image).is_ok_and(|i| i.is_file() && i.uid() == euid()).then_some(image));
    }
    let stripped = strip(&fs::read(&exe)?, m.size())?;
    let partial = images.join(format!(".partial-{:016x}", rand::random::<u64>()));
    fs::DirBuilder::new().mode(0o700).create(&partial)?;
    let made = (|| {
        if let Some(bytes) = &stripped {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o500).open(partial.join(name))?;
            std::io::Write::write_all(&mut f, bytes)?;
            f.sync_all()?;
        }
        fs::rename(&partial, &folder)
    })();
    if let Err(e) = made {
        let _ = fs::remove_dir_all(&partial);
        // Another client of the same build made it first: use theirs.
        if fs::symlink_metadata(&folder).is_err() {
            return Err(e);
        }
    }
    prune(images, &folder);
    Ok(stripped.is_some().then_some(image))
}

/// `bytes` (an executable of `size` bytes) without its debug sections, or `None` when it is
/// not an ELF file or they are smaller than [`MIN_SAVING`].
fn strip(bytes: &[u8], size: u64) -> std::io::Result<Option<Vec<u8>>> {
    let Ok(mut elf) = Builder::read(bytes) else { return Ok(None) };
    for section in elf.sections.iter_mut() {
        if section.name.starts_with(b".debug_") || section.name.starts_with(b".zdebug_") {
            section.delete = true;
        }
    }
    let mut out = Vec::new();
    elf.write(&mut out).map_err(|e| std::io::Error::other(format!("cannot write the image: {e}")))?;
    let saving = size.saturating_sub(u64::try_from(out.len()).unwrap_or(u64::MAX));
    Ok((saving >= MIN_SAVING).then_some(out))
}

/// Names one build of one executable.
fn key(exe: &Path, m: &fs::Metadata) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut h = Sha256::new();
    h.update(FORMAT);
    h.update(exe.as_os_str().as_bytes());
    for n in [m.dev(), m.ino(), m.size()] {
        h.update(n.to_le_bytes());
    }
    for n in [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()] {
        h.update(n.to_le_bytes());
    }
    h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// [`dispy_node::private_subdir`], as an I/O error: what is in these folders is run on nodes.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    dispy_node::private_subdir(dir).map_err(std::io::Error::other)
}

/// Removes the oldest images beyond [`KEEP`], never `current`, and what a client that died
/// while making one left behind.
fn prune(images: &Path, current: &Path) {
    let Ok(entries) = fs::read_dir(images) else { return };
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path(), e.file_name())))
        .filter(|(t, p, name)| {
            let partial = name.to_string_lossy().starts_with(".partial-");
            if partial && *t < hour_ago {
                let _ = fs::remove_dir_all(p);
            }
            !partial && p != current
        })
        .map(|(t, p, _)| (t, p))
        .collect();
    dirs.sort();
    let extra = dirs.len().saturating_sub(KEEP - 1);
    for (_, dir) in dirs.into_iter().take(extra) {
        let _ = fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn this_test_binary() -> PathBuf {
        std::env::current_exe().unwrap()
    }

    #[test]
    fn the_image_runs_and_is_made_once_per_build() {
        let cache = tempfile::tempdir().unwrap();
        let images = cache.path().join("dispy-peer").join("images");
        let exe = this_test_binary();
        let image = image_in(&images, &exe).unwrap().expect("a test build has debug sections to strip");
        let (before, after) = (fs::metadata(&exe).unwrap().len(), fs::metadata(&image).unwrap().len());
        assert!(after + MIN_SAVING <= before, "{before} -> {after} bytes");
        assert_eq!(image.file_name(), exe.file_name(), "the name on the nodes is kept");
        // Still a program: it lists this very test.
        let out = std::process::Command::new(&image).args(["--list", "image::tests::"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("the_image_runs_and_is_made_once_per_build"));
        // The second run finds it; nothing else was made.
        let made = fs::metadata(&image).unwrap().modified().unwrap();
        assert_eq!(image_in(&images, &exe).unwrap(), Some(image.clone()));
        assert_eq!(fs::metadata(&image).unwrap().modified().unwrap(), made);
        assert_eq!(fs::read_dir(&images).unwrap().count(), 1);
        assert_eq!(fs::metadata(&images).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_folder_others_may_write_or_own_is_refused_and_a_readable_one_narrowed() {
        let cache = tempfile::tempdir().unwrap();
        let dir = cache.path().join("images");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // Someone may have planted an image in it: the executable is shipped as it is.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir(&dir).unwrap_err().to_string().contains("writable by other users"));
        let exe = this_test_binary();
        assert_eq!(
            image_in(&dir.join("sub"), &exe).map_err(|e| e.to_string()),
            Err(private_dir(&dir).unwrap_err().to_string())
        );
        let file = cache.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(private_dir(&file).unwrap_err().to_string().contains("not a folder"));
        if euid() == 0 {
            let theirs = cache.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            assert!(private_dir(&theirs).is_err(), "a folder another user owns");
        }
    }

    #[test]
    fn a_file_that_is_not_elf_or_has_nothing_to_strip_is_shipped_as_it_is() {
        assert!(strip(b"#!/bin/sh\necho hi\n", 18).unwrap().is_none());
        let true_bin = fs::read("/bin/true").unwrap();
        let size = true_bin.len() as u64;
        assert!(strip(&true_bin, size).unwrap().is_none(), "no debug sections worth 4 MiB");
        let cache = tempfile::tempdir().unwrap();
        let images = cache.path().join("images");
        assert_eq!(image_in(&images, Path::new("/bin/true")).unwrap(), None);
        assert_eq!(image_in(&images, Path::new("/bin/true")).unwrap(), None, "remembered: an empty folder");
        assert_eq!(worker_image(Path::new("/no/such/exe")), PathBuf::from("/no/such/exe"));
    }

    #[test]
    fn only_the_newest_images_are_kept() {
        let cache = tempfile::tempdir().unwrap();
        let images = cache.path().join("images");
        fs::create_dir(&images).unwrap();
        for i in 0..KEEP + 3 {
            let d = images.join(format!("old{i:02}"));
            fs::create_dir(&d).unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            fs::File::open(&d).unwrap().set_modified(t).unwrap();
        }
        let current = images.join("current");
        fs::create_dir(&current).unwrap();
        prune(&images, &current);
        let mut left: Vec<String> =
            fs::read_dir(&images).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left.len(), KEEP);
        assert!(left.contains(&"current".to_string()) && !left.contains(&"old00".to_string()), "{left:?}");
    }
}
