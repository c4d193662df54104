//! A damaged blob never counts as present: a truncated one is replaced by the next load,
//! a corrupt one is quarantined by fsck and then replaced by the next load.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;

use common::{mem_store, stores};
use sealer_image_store::archive::{self, LoadOptions, SaveOptions};
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{BlobStore, Digest, Store};

const IMAGE: &str = "example.com/app:1";

/// An oci-archive of one image, and its largest layer.
fn archive_of_one_image() -> (Vec<u8>, Digest, u64) {
    let source = mem_store();
    write_image(&source, &ImageSpec::new(IMAGE, &[2_000, 300_000], 7)).unwrap();
    let layer = source
        .resolve(IMAGE, None)
        .unwrap()
        .manifest
        .layers
        .into_iter()
        .max_by_key(|layer| layer.size)
        .unwrap();
    let mut bytes = Vec::new();
    archive::save(
        &source,
        &[IMAGE.to_owned()],
        &mut bytes,
        SaveOptions::default(),
    )
    .unwrap();
    (bytes, layer.digest, layer.size)
}

fn load(store: &Store, archive: &[u8]) {
    archive::load(store, &mut &archive[..], LoadOptions::default()).unwrap();
}

fn assert_clean(store: &Store) {
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.quarantined.is_empty(), "{report:?}");
}

#[test]
fn a_truncated_blob_is_replaced_by_the_next_load() {
    let (archive, layer, size) = archive_of_one_image();
    for (_dir, store) in stores() {
        load(&store, &archive);
        let bytes = store.fs().read(&layer.blob_path()).unwrap();
        store
            .fs()
            .write_atomic(&layer.blob_path(), &bytes[..bytes.len() / 2])
            .unwrap();

        load(&store, &archive);
        assert_eq!(store.blobs().stat(&layer).unwrap(), Some(size));
        assert_clean(&store);
    }
}

#[test]
fn a_truncated_blob_is_replaced_by_loading_a_layout() {
    let source = mem_store();
    write_image(&source, &ImageSpec::new(IMAGE, &[2_000, 300_000], 7)).unwrap();
    let layer = source.resolve(IMAGE, None).unwrap().manifest.layers[1].clone();
    for (_dir, store) in stores() {
        archive::load_layout(&store, source.fs().as_ref(), LoadOptions::default()).unwrap();
        store
            .fs()
            .write_atomic(&layer.digest.blob_path(), b"short")
            .unwrap();

        archive::load_layout(&store, source.fs().as_ref(), LoadOptions::default()).unwrap();
        assert_eq!(store.blobs().stat(&layer.digest).unwrap(), Some(layer.size));
        assert_clean(&store);
    }
}

#[test]
fn fsck_quarantines_a_corrupt_blob_and_the_next_load_replaces_it() {
    let (archive, layer, size) = archive_of_one_image();
    for (_dir, store) in stores() {
        load(&store, &archive);
        let original = store.fs().read(&layer.blob_path()).unwrap();
        let mut flipped = original.clone();
        flipped[1000] ^= 1;
        store
            .fs()
            .write_atomic(&layer.blob_path(), &flipped)
            .unwrap();

        let report = store.fsck().unwrap();
        assert_eq!(report.corrupt, vec![layer.clone()]);
        let quarantined = Path::new("quarantine").join(format!("sha256-{}", layer.hex()));
        assert_eq!(
            report.quarantined,
            vec![(layer.clone(), quarantined.clone())]
        );
        // Moved, not deleted: kept for inspection, and no longer present.
        assert_eq!(store.fs().read(&quarantined).unwrap(), flipped);
        assert_eq!(store.blobs().stat(&layer).unwrap(), None);
        let manifest = store.resolve(IMAGE, None).unwrap().manifest_descriptor;
        assert_eq!(report.missing, vec![(manifest.digest, layer.clone())]);
        assert_eq!(report.unreferenced, 0);

        // Found missing (not corrupt) until the next load, which fetches it again.
        let again = store.fsck().unwrap();
        assert!(
            again.corrupt.is_empty() && again.missing.len() == 1,
            "{again:?}"
        );
        load(&store, &archive);
        assert_eq!(store.blobs().stat(&layer).unwrap(), Some(size));
        assert_eq!(store.fs().read(&layer.blob_path()).unwrap(), original);
        assert_clean(&store);

        // Prune gives the quarantined copy's space back.
        store.gc().unwrap();
        assert!(!store.fs().exists(&quarantined).unwrap());
    }
}

#[test]
fn a_blob_put_over_a_truncated_copy_replaces_it() {
    for (_dir, store) in stores() {
        let content = vec![7u8; 10_000];
        let digest = Digest::sha256(&content);
        store
            .blobs()
            .put(&digest, Some(content.len() as u64), &mut &content[..])
            .unwrap();
        store
            .fs()
            .write_atomic(&digest.blob_path(), &content[..10])
            .unwrap();

        let outcome = store
            .blobs()
            .put(&digest, Some(content.len() as u64), &mut &content[..])
            .unwrap();
        assert!(!outcome.existed);
        assert_eq!(store.fs().read(&digest.blob_path()).unwrap(), content);
    }
}
