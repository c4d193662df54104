//! What GC keeps besides what `index.json` reaches, on the real filesystem and in memory:
//! holds on fresh blobs (`Store::hold_fresh`) for the grace it gives them, and the blobs of a
//! registry's pull-through cache (`Store::mark_cached`, `Store::evict_cached`), whose
//! eviction keeps what other entries reach and removes the cache's entries with their
//! manifests, and which fsck does not call unreferenced.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::stores;
use sealer_image_store::model::{PARTIAL_ANNOTATION, UPSTREAM_ANNOTATION};
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{BlobStore, DEFAULT_KEEP_FRESH, Descriptor, Digest, GcOptions, Store};

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

#[test]
fn eviction_keeps_what_other_entries_reach_and_drops_cached_entries_with_their_manifests() {
    for (_dir, store) in stores() {
        let pushed =
            write_image(&store, &ImageSpec::new("localhost/pushed:1", &[1000], 1)).unwrap();
        let cached =
            write_image(&store, &ImageSpec::new("up.example/c/app:1", &[2000], 2)).unwrap();
        store
            .update_index(|index| {
                for entry in &mut index.manifests {
                    if entry.digest == cached.digest {
                        entry
                            .annotations
                            .insert(UPSTREAM_ANNOTATION.to_owned(), "up.example".to_owned());
                        entry
                            .annotations
                            .insert(PARTIAL_ANNOTATION.to_owned(), "true".to_owned());
                    }
                }
                Ok(())
            })
            .unwrap();
        let lone = put(&store, b"a layer fetched by digest alone");
        let reached = |root: &Descriptor| -> Vec<Digest> {
            store
                .reachable(std::slice::from_ref(root))
                .unwrap()
                .present
                .into_iter()
                .collect()
        };
        let pushed_blobs = reached(&pushed);
        let cached_blobs = reached(&cached);
        // The pushed image's blobs were filled by the cache before they were pushed.
        let mut order = pushed_blobs.clone();
        order.extend(cached_blobs.iter().cloned());
        order.push(lone.clone());
        for digest in &order {
            assert!(store.mark_cached(digest).unwrap());
        }
        let fsck = store.fsck().unwrap();
        assert_eq!((fsck.unreferenced, fsck.cached), (0, 1), "{fsck:?}");

        let report = store
            .evict_cached(&order, u64::MAX, &|digest| digest == &lone)
            .unwrap();
        let released: BTreeSet<&Digest> =
            report.released.iter().map(|(digest, _)| digest).collect();
        assert_eq!(released, pushed_blobs.iter().collect());
        let evicted: BTreeSet<&Digest> = report.evicted.iter().map(|(digest, _)| digest).collect();
        assert_eq!(evicted, cached_blobs.iter().collect());
        assert_eq!(report.in_use, 1);
        assert_eq!(report.entries_removed, 1);
        for digest in &pushed_blobs {
            assert!(store.blobs().stat(digest).unwrap().is_some());
        }
        for digest in &cached_blobs {
            assert!(store.blobs().stat(digest).unwrap().is_none());
        }
        assert!(store.lookup("up.example/c/app:1").is_err());
        assert!(store.lookup("localhost/pushed:1").is_ok());
        let left: Vec<Digest> = store
            .cached_blobs()
            .unwrap()
            .into_iter()
            .map(|blob| blob.digest)
            .collect();
        assert_eq!(left, vec![lone.clone()]);

        let fsck = store.fsck().unwrap();
        assert!(fsck.is_clean(), "{fsck:?}");
        assert_eq!((fsck.unreferenced, fsck.cached), (0, 1), "{fsck:?}");
        let gc = store.gc_with(&no_grace()).unwrap();
        assert!(gc.removed.is_empty(), "{gc:?}");
        assert_eq!(gc.kept_cached, 1);
        assert!(store.blobs().stat(&lone).unwrap().is_some());
    }
}
