//! Incremental blob uploads (`Store::begin_upload`), on the real filesystem and in memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;

use common::stores;
use sealer_image_store::{Algorithm, BlobStore, Digest, Store, StoreError};

fn upload_files(store: &Store) -> Vec<String> {
    if !store.fs().exists(Path::new("uploads")).unwrap() {
        return Vec::new();
    }
    let mut names: Vec<String> = store
        .fs()
        .read_dir(Path::new("uploads"))
        .unwrap()
        .into_iter()
        .map(|entry| entry.name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn pieces_are_committed_as_one_verified_blob() {
    for (_dir, store) in stores() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::sha256(&data);
        let mut upload = store.begin_upload().unwrap();
        assert_eq!(upload.size(), 0);
        for piece in data.chunks(70_001) {
            upload.write_all(piece).unwrap();
        }
        assert_eq!(upload.size(), data.len() as u64);
        assert_eq!(store.blobs().stat(&digest).unwrap(), None);
        assert_eq!(upload.commit(&digest).unwrap(), data.len() as u64);
        assert_eq!(
            store.blobs().stat(&digest).unwrap(),
            Some(data.len() as u64)
        );
        assert!(
            upload_files(&store).is_empty(),
            "{:?}",
            upload_files(&store)
        );
        assert!(store.fsck().unwrap().corrupt.is_empty());
    }
}

#[test]
fn sha512_digests_are_verified_by_rehashing() {
    for (_dir, store) in stores() {
        let digest = Digest::of(Algorithm::Sha512, b"hello world");
        let mut upload = store.begin_upload().unwrap();
        upload.write_all(b"hello ").unwrap();
        upload.write_all(b"world").unwrap();
        assert_eq!(upload.commit(&digest).unwrap(), 11);
        let mut content = String::new();
        std::io::Read::read_to_string(&mut store.blobs().open(&digest).unwrap(), &mut content)
            .unwrap();
        assert_eq!(content, "hello world");

        let mut wrong = store.begin_upload().unwrap();
        wrong.write_all(b"hello").unwrap();
        let error = wrong.commit(&digest).unwrap_err();
        assert!(
            matches!(error, StoreError::DigestMismatch { .. }),
            "{error}"
        );
    }
}

#[test]
fn a_mismatch_or_a_drop_stores_nothing_and_leaves_nothing() {
    for (_dir, store) in stores() {
        let expected = Digest::sha256(b"good");
        let mut upload = store.begin_upload().unwrap();
        upload.write_all(b"evil").unwrap();
        let error = upload.commit(&expected).unwrap_err();
        assert!(
            matches!(error, StoreError::DigestMismatch { .. }),
            "{error}"
        );
        assert_eq!(store.blobs().stat(&expected).unwrap(), None);
        assert_eq!(store.blobs().stat(&Digest::sha256(b"evil")).unwrap(), None);
        assert!(upload_files(&store).is_empty());

        let mut dropped = store.begin_upload().unwrap();
        dropped.write_all(b"half").unwrap();
        assert_eq!(upload_files(&store).len(), 2, "data and lock file");
        drop(dropped);
        assert!(upload_files(&store).is_empty());
    }
}

#[test]
fn an_upload_of_a_blob_already_present_keeps_the_stored_one() {
    for (_dir, store) in stores() {
        let digest = Digest::sha256(b"same");
        store.blobs().put(&digest, None, &mut &b"same"[..]).unwrap();
        let mut upload = store.begin_upload().unwrap();
        upload.write_all(b"same").unwrap();
        assert_eq!(upload.commit(&digest).unwrap(), 4);
        assert_eq!(store.blobs().stat(&digest).unwrap(), Some(4));
        assert!(upload_files(&store).is_empty());
    }
}

#[test]
fn gc_removes_dead_uploads_but_never_a_live_one() {
    for (_dir, store) in stores() {
        let mut live = store.begin_upload().unwrap();
        live.write_all(b"in progress").unwrap();
        // A crashed upload: its files remain, nobody holds its lock.
        store
            .fs()
            .write_atomic(Path::new("uploads/1-2-3"), b"partial")
            .unwrap();
        store
            .fs()
            .write_atomic(Path::new("uploads/1-2-3.lock"), b"")
            .unwrap();
        assert_eq!(store.fsck().unwrap().leftovers, 1);
        let report = store.gc().unwrap();
        assert_eq!(report.leftovers, 1);
        let remaining = upload_files(&store);
        assert_eq!(remaining.len(), 2, "{remaining:?}");
        assert!(remaining.iter().all(|name| name.starts_with(live.id())));
        live.write_all(b", still").unwrap();
        let digest = Digest::sha256(b"in progress, still");
        live.commit(&digest).unwrap();
        assert_eq!(store.fsck().unwrap().leftovers, 0);
        assert!(upload_files(&store).is_empty());
    }
}

#[test]
fn a_live_upload_can_be_read_and_verified_before_its_commit() {
    for (_dir, store) in stores() {
        let data = b"served while it arrives".repeat(100);
        let mut upload = store.begin_upload().unwrap();
        upload.write_all(&data[..1000]).unwrap();
        let mut reader = store.open_upload(upload.id()).unwrap();
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut read).unwrap();
        assert_eq!(read, &data[..1000]);
        upload.write_all(&data[1000..]).unwrap();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            assert_eq!(
                upload.digest(algorithm).unwrap(),
                Digest::of(algorithm, &data)
            );
        }
        let id = upload.id().to_owned();
        let digest = Digest::sha256(&data);
        upload.commit(&digest).unwrap();
        assert_eq!(store.read_verified(&digest).unwrap(), data);
        // Committed: the upload's file is gone.
        assert!(matches!(
            store.open_upload(&id),
            Err(StoreError::Fs(error)) if error.is_not_found()
        ));
        assert!(store.open_upload("../index.json").is_err());
    }
}

#[test]
fn a_rollback_forgets_the_bytes_after_its_checkpoint() {
    for (_dir, store) in stores() {
        let mut upload = store.begin_upload().unwrap();
        upload.write_all(b"0123456789").unwrap();
        let checkpoint = upload.checkpoint();
        assert_eq!(checkpoint.size(), 10);
        upload.write_all(b"a piece that failed").unwrap();
        upload.rollback(checkpoint.clone()).unwrap();
        assert_eq!(upload.size(), 10);
        // The same checkpoint again, with nothing written since: nothing changes.
        upload.rollback(checkpoint).unwrap();
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut store.open_upload(upload.id()).unwrap(), &mut read)
            .unwrap();
        assert_eq!(read, b"0123456789");
        // A checkpoint beyond the upload is refused.
        let mut other = store.begin_upload().unwrap();
        other.write_all(b"0123456789abcdef").unwrap();
        assert!(upload.rollback(other.checkpoint()).is_err());
        drop(other);
        upload.write_all(b"ABCDEFGHIJ").unwrap();
        let data = b"0123456789ABCDEFGHIJ";
        let digest = Digest::sha256(data);
        assert_eq!(upload.digest(Algorithm::Sha256).unwrap(), digest);
        let sha512 = Digest::of(Algorithm::Sha512, data);
        assert_eq!(upload.digest(Algorithm::Sha512).unwrap(), sha512);
        assert_eq!(upload.commit(&digest).unwrap(), 20);
        let mut stored = Vec::new();
        std::io::Read::read_to_end(&mut store.blobs().open(&digest).unwrap(), &mut stored).unwrap();
        assert_eq!(stored, data);
        assert_eq!(upload_files(&store), Vec::<String>::new());
        assert!(store.fsck().unwrap().corrupt.is_empty());
    }
}

/// A cached upload (a pull-through fill's: no writeback while written) holds the same
/// guarantees: readable live, verified before the commit, nothing stored on a mismatch.
#[test]
fn a_cached_upload_is_read_live_verified_and_committed_like_any_other() {
    for (_dir, store) in stores() {
        // Beyond one write-behind chunk, in pieces.
        let data: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 253) as u8).collect();
        let digest = Digest::sha256(&data);
        let mut upload = store.begin_cached_upload().unwrap();
        for piece in data.chunks(1 << 20) {
            upload.write_all(piece).unwrap();
        }
        let mut reader = store.open_upload(upload.id()).unwrap();
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut read).unwrap();
        assert!(read == data, "the live upload reads back what was written");
        assert_eq!(upload.digest(Algorithm::Sha256).unwrap(), digest);
        assert_eq!(upload.commit(&digest).unwrap(), data.len() as u64);
        assert_eq!(
            store.blobs().stat(&digest).unwrap(),
            Some(data.len() as u64)
        );
        assert!(store.fsck().unwrap().corrupt.is_empty());

        let mut wrong = store.begin_cached_upload().unwrap();
        wrong.write_all(b"not the blob").unwrap();
        let other = Digest::sha256(b"the blob");
        assert!(matches!(
            wrong.commit(&other),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert_eq!(store.blobs().stat(&other).unwrap(), None);
        assert!(
            upload_files(&store).is_empty(),
            "{:?}",
            upload_files(&store)
        );
    }
}
