//! Holds on fresh blobs (`Store::hold_fresh`) and the grace GC gives them, on the real
//! filesystem and in memory.
#![allow(clippy::unwrap_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sealer_fs_abstraction::MemFs;
use sealer_image_store::{BlobStore, DEFAULT_KEEP_FRESH, Digest, GcOptions, Store};

fn stores() -> Vec<(Option<tempfile::TempDir>, Store)> {
    let dir = tempfile::tempdir().unwrap();
    let real = Store::open_dir(&dir.path().join("store")).unwrap();
    vec![
        (Some(dir), real),
        (None, Store::open(Arc::new(MemFs::new())).unwrap()),
    ]
}

fn put(store: &Store, data: &[u8]) -> Digest {
    let digest = Digest::sha256(data);
    store.blobs().put(&digest, None, &mut &data[..]).unwrap();
    digest
}

fn no_grace() -> GcOptions {
    GcOptions {
        keep_fresh: Duration::ZERO,
        ..GcOptions::default()
    }
}

#[test]
fn held_blobs_outlive_gc_for_the_grace_and_unheld_ones_go_at_once() {
    for (_dir, store) in stores() {
        let held = put(&store, b"an uploaded layer whose manifest is still to come");
        let unheld = put(&store, b"pulled, then its image removed");
        assert!(store.hold_fresh(&held).unwrap());
        assert!(!store.hold_fresh(&Digest::sha256(b"absent")).unwrap());

        let report = store.gc().unwrap();
        assert_eq!(report.removed, vec![unheld]);
        assert_eq!(report.kept_fresh, 1);
        assert!(store.blobs().stat(&held).unwrap().is_some());

        // Without grace it goes, and its hold with it.
        let report = store.gc_with(&no_grace()).unwrap();
        assert_eq!(report.removed, vec![held]);
        assert!(store.fs().read_dir(Path::new("holds")).unwrap().is_empty());
    }
}

#[test]
fn a_hold_older_than_the_grace_is_removed_with_its_blob() {
    for (_dir, store) in stores() {
        let digest = put(&store, b"held long ago");
        assert!(store.hold_fresh(&digest).unwrap());
        let hold = Path::new("holds").join(format!("sha256-{}", digest.hex()));
        let long_ago = SystemTime::now() - DEFAULT_KEEP_FRESH - Duration::from_secs(60);
        store.fs().set_modified(&hold, long_ago).unwrap();

        let report = store.gc().unwrap();
        assert_eq!(report.removed, vec![digest.clone()]);
        assert!(!store.fs().exists(&hold).unwrap());

        // Holding it again (a new push) restarts the period.
        let digest = put(&store, b"held long ago");
        assert!(store.hold_fresh(&digest).unwrap());
        assert!(store.gc().unwrap().removed.is_empty());
    }
}
