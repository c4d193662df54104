//! The in-process cache of `index.json`: one parsed snapshot, reused while the file's
//! stamp (inode, size, mtime) is unchanged and not racily new.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sealer_fs_abstraction::Metadata;

use super::IndexSnapshot;

/// An `index.json` modified less than this before it was read may be rewritten within the
/// same timestamp tick (coarse clocks, 1 s or 2 s on some filesystems) with the same
/// length and a reused inode: its stamp is not trusted, the file is read again.
const RACY_STAMP_WINDOW: Duration = Duration::from_secs(2);

/// What identifies one version of `index.json` without reading it. Every write replaces
/// the file by a rename, so a new version is a new inode (and usually a new time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IndexStamp {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) len: u64,
    pub(super) modified: Option<SystemTime>,
}

impl IndexStamp {
    pub(super) fn of(metadata: &Metadata) -> Self {
        Self {
            dev: metadata.dev,
            ino: metadata.ino,
            len: metadata.len,
            modified: metadata.modified,
        }
    }

    /// Whether a write after `stamped_at` could leave the same stamp (see
    /// [`RACY_STAMP_WINDOW`]).
    pub(super) fn is_racy(&self, stamped_at: SystemTime) -> bool {
        self.modified
            .and_then(|modified| stamped_at.duration_since(modified).ok())
            .is_none_or(|age| age < RACY_STAMP_WINDOW)
    }
}

/// A snapshot of `index.json` and the stamp of the file it was read from.
pub(super) struct CachedIndex {
    pub(super) stamp: IndexStamp,
    /// Set when the stamp was taken too soon after the write to be trusted.
    pub(super) racy: bool,
    pub(super) snapshot: Arc<IndexSnapshot>,
}

#[derive(Default)]
pub(super) struct IndexCache(pub(super) Mutex<Option<CachedIndex>>);

impl IndexCache {
    pub(super) fn get(&self, stamp: &IndexStamp) -> Option<Arc<IndexSnapshot>> {
        let cached = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        cached
            .as_ref()
            .filter(|cached| !cached.racy && &cached.stamp == stamp)
            .map(|cached| cached.snapshot.clone())
    }

    pub(super) fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Caches `snapshot`, read from the file `stamp` describes, which was taken at
    /// `stamped_at`.
    pub(super) fn set(
        &self,
        stamp: IndexStamp,
        stamped_at: SystemTime,
        snapshot: Arc<IndexSnapshot>,
    ) {
        let racy = stamp.is_racy(stamped_at);
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(CachedIndex {
            stamp,
            racy,
            snapshot,
        });
    }
}

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("IndexCache")
            .field("stamp", &cached.as_ref().map(|cached| &cached.stamp))
            .finish_non_exhaustive()
    }
}
