//! Store look-ups a request needs before it is handled. Whether a file is stored takes a
//! `stat`, and a Reserve, Declare or Submit may name up to
//! [`dispy_protocol::MAX_ITEMS_PER_REQUEST`] files: the look-ups run on the blocking pool
//! and the request comes back to the node's task with their answer ([`Stored`]), so the
//! task never waits on the disk and its work stays linear in the request's size.

use super::kept::KeptResults;
use super::store::Store;
use dispy_protocol::{ClusterId, Declare, FileHash, OwnerHash, Reserve, Submit};
use std::collections::HashSet;

/// A request waiting for its look-ups.
// Moved once from the request to its completion; a Reserve is the common case.
#[allow(clippy::large_enum_variant)]
pub(super) enum Waiting {
    Reserve(Reserve),
    Declare(Declare),
    Submit(Submit),
}

/// Which of a request's files the store lacked when they were looked up.
#[derive(Debug, Default)]
pub(super) struct Stored {
    missing: HashSet<FileHash>,
    /// For a Reserve: who owns results kept on disk under its cluster id (see
    /// [`KeptResults::owner`]).
    pub(super) kept_owner: Option<Option<OwnerHash>>,
}

impl Stored {
    /// Looks each file up once (blocking: call on the blocking pool).
    pub(super) fn look(store: &Store, files: &[(FileHash, u64)]) -> Stored {
        let missing = files.iter().filter(|(h, size)| !store.has(h, *size)).map(|(h, _)| *h).collect();
        Stored { missing, kept_owner: None }
    }

    /// [`Stored::look`], and the owner of `cluster`'s kept results.
    pub(super) fn look_for_reserve(
        store: &Store,
        kept: &KeptResults,
        cluster: ClusterId,
        files: &[(FileHash, u64)],
    ) -> Stored {
        Stored { kept_owner: kept.owner(cluster), ..Stored::look(store, files) }
    }

    /// Whether the file was stored when looked up (a file not looked up counts as stored:
    /// callers look up every file they ask about).
    pub(super) fn has(&self, hash: &FileHash) -> bool {
        !self.missing.contains(hash)
    }
}

/// The distinct files of `files`, in their first order: each is looked up once.
pub(super) fn distinct<'a>(files: impl IntoIterator<Item = (&'a FileHash, u64)>) -> Vec<(FileHash, u64)> {
    let mut seen = HashSet::new();
    files.into_iter().filter(|(h, size)| seen.insert((**h, *size))).map(|(h, size)| (*h, size)).collect()
}
