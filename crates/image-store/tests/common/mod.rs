//! Helpers shared by the integration tests.
#![allow(clippy::unwrap_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;

use sealer_fs_abstraction::MemFs;
use sealer_image_store::Store;

/// A store on the real filesystem, in a scratch directory that lives as long as the guard.
pub fn real_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(&dir.path().join("store")).unwrap();
    (dir, store)
}

/// A store in memory.
pub fn mem_store() -> Store {
    Store::open(Arc::new(MemFs::new())).unwrap()
}

/// One store of each kind, to run a test on both: on the real filesystem (with its scratch
/// directory's guard) and in memory.
pub fn stores() -> Vec<(Option<tempfile::TempDir>, Store)> {
    let (dir, real) = real_store();
    vec![(Some(dir), real), (None, mem_store())]
}
