//! Blobs of a registry's pull-through cache (`Store::mark_cached`, `Store::evict_cached`):
//! eviction keeps what other entries reach and removes the cache's entries with their
//! manifests; GC keeps cached blobs and fsck does not call them unreferenced. On the real
//! filesystem and in memory.
#![allow(clippy::unwrap_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sealer_fs_abstraction::MemFs;
use sealer_image_store::model::{PARTIAL_ANNOTATION, UPSTREAM_ANNOTATION};
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{BlobStore, Digest, GcOptions, Store};

fn stores() -> Vec<(Option<tempfile::TempDir>, Store)> {
    let dir = tempfile::tempdir().unwrap();
    let real = Store::open_dir(&dir.path().join("store")).unwrap();
    vec![
        (Some(dir), real),
        (None, Store::open(Arc::new(MemFs::new())).unwrap()),
    ]
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
        let lone = Digest::sha256(b"a layer fetched by digest alone");
        store
            .blobs()
            .put(&lone, None, &mut &b"a layer fetched by digest alone"[..])
            .unwrap();
        let pushed_blobs: Vec<Digest> = store
            .reachable(std::slice::from_ref(&pushed))
            .unwrap()
            .present
            .into_iter()
            .collect();
        let cached_blobs: Vec<Digest> = store
            .reachable(std::slice::from_ref(&cached))
            .unwrap()
            .present
            .into_iter()
            .collect();
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
        let gc = store
            .gc_with(&GcOptions {
                keep_fresh: Duration::ZERO,
                ..GcOptions::default()
            })
            .unwrap();
        assert!(gc.removed.is_empty(), "{gc:?}");
        assert_eq!(gc.kept_cached, 1);
        assert!(store.blobs().stat(&lone).unwrap().is_some());
    }
}
