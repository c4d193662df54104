//! The in-memory `index.json`: shared by clones, read again when another writer changed it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sealer_fs_abstraction::{Fs, MemFs, RealFs};
use sealer_image_store::model::REF_NAME_ANNOTATION;
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{Descriptor, Reference, Store, StoreError};

/// Two stores (two caches) on one directory, as two processes would have.
fn two_stores_on_one_root() -> Vec<(Option<tempfile::TempDir>, Store, Store)> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let first = Store::open_dir(&root).unwrap();
    let second = Store::open(Arc::new(RealFs::open_root(&root).unwrap())).unwrap();
    let mem: Arc<dyn Fs> = Arc::new(MemFs::new());
    let mem_first = Store::open(mem.clone()).unwrap();
    let mem_second = Store::open(mem).unwrap();
    vec![(Some(dir), first, second), (None, mem_first, mem_second)]
}

/// Moves `index.json`'s modification time a minute back: a stamp that old is trusted (not
/// read again while unchanged), so what the tests see comes from the stamp comparison.
fn backdate_index(store: &Store) {
    let past = SystemTime::now() - Duration::from_secs(60);
    store
        .fs()
        .set_modified(Path::new("index.json"), past)
        .unwrap();
}

#[test]
fn clones_share_one_parsed_index() {
    for (_dir, store, _) in two_stores_on_one_root() {
        write_image(&store, &ImageSpec::new("example.com/a:1", &[100], 1)).unwrap();
        backdate_index(&store);
        let first = store.index_snapshot().unwrap();
        let clone = store.clone();
        assert!(Arc::ptr_eq(&first, &clone.index_snapshot().unwrap()));
        assert!(Arc::ptr_eq(&first, &store.index_snapshot().unwrap()));
    }
}

#[test]
fn a_change_by_another_store_on_the_same_root_is_seen() {
    for (_dir, first, second) in two_stores_on_one_root() {
        let one = write_image(&first, &ImageSpec::new("example.com/x:1", &[100], 1)).unwrap();
        let two = write_image(&first, &ImageSpec::new("example.com/y:1", &[100], 2)).unwrap();
        backdate_index(&first);
        assert_eq!(
            first.lookup("example.com/x:1").unwrap().descriptor.digest,
            one.digest
        );
        let before = first.fs().metadata(Path::new("index.json")).unwrap();

        // The other store points x:1 at the other manifest: index.json keeps its length
        // (digests have one length), and gets the same time back: only the inode tells.
        let name: Reference = "example.com/x:1".parse().unwrap();
        second.tag(&name, &two).unwrap();
        first
            .fs()
            .set_modified(Path::new("index.json"), before.modified.unwrap())
            .unwrap();
        let after = first.fs().metadata(Path::new("index.json")).unwrap();
        assert_eq!((after.len, after.modified), (before.len, before.modified));

        let seen = first.lookup("example.com/x:1").unwrap().descriptor;
        assert_eq!(seen.digest, two.digest);
        // And the first store's own write is seen by itself at once, and by the other.
        first.tag(&name, &one).unwrap();
        assert_eq!(
            first.lookup("example.com/x:1").unwrap().descriptor.digest,
            one.digest
        );
        assert_eq!(
            second.lookup("example.com/x:1").unwrap().descriptor.digest,
            one.digest
        );
    }
}

#[test]
fn lookup_among_many_entries_finds_the_right_one() {
    const TAGS: usize = 20_000;
    for (_dir, store, _) in two_stores_on_one_root() {
        let shared = write_image(&store, &ImageSpec::new("example.com/base:1", &[100], 1)).unwrap();
        let other = write_image(&store, &ImageSpec::new("example.com/other:1", &[100], 2)).unwrap();
        let named = |tag: usize, descriptor: &Descriptor| {
            let mut entry = descriptor.clone();
            entry.annotations.insert(
                REF_NAME_ANNOTATION.to_owned(),
                format!("example.com/many:t{tag}"),
            );
            entry
        };
        store
            .update_index(|index| {
                for tag in 0..TAGS {
                    let target = if tag == 13_337 { &other } else { &shared };
                    index.manifests.push(named(tag, target));
                }
                Ok(())
            })
            .unwrap();
        // Trusted from now on: the lookups below share one parse.
        backdate_index(&store);

        let found = store.lookup("example.com/many:t13337").unwrap();
        assert_eq!(found.name.as_deref(), Some("example.com/many:t13337"));
        assert_eq!(found.descriptor.digest, other.digest);
        let last = store
            .lookup(&format!("example.com/many:t{}", TAGS - 1))
            .unwrap();
        assert_eq!(last.descriptor.digest, shared.digest);
        assert!(matches!(
            store.lookup(&format!("example.com/many:t{TAGS}")),
            Err(StoreError::ImageNotFound(_))
        ));
        let snapshot = store.index_snapshot().unwrap();
        assert_eq!(snapshot.index().manifests.len(), TAGS + 2);
        assert_eq!(
            snapshot.by_name("example.com/many:t7").unwrap().digest,
            shared.digest
        );
        // By digest: the first entry pointing to it, as a scan in order finds it.
        assert_eq!(
            snapshot.by_digest(&other.digest).unwrap().ref_name(),
            Some("example.com/other:1")
        );
        assert_eq!(
            store
                .resolve("example.com/many:t13337", None)
                .unwrap()
                .top
                .digest,
            other.digest
        );
    }
}
