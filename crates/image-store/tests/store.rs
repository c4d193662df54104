//! The store's behaviour, on the real filesystem and in memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Read;
use std::path::Path;

use common::{mem_store, real_store, stores};
use sealer_fs_abstraction::RealFs;
use sealer_image_store::archive::{self, ArchiveFormat, LoadOptions, SaveOptions};
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{
    BlobStore, Digest, ManifestDocument, Platform, Reference, Store, StoreError,
};

fn blob_files(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = store
        .fs()
        .read_dir(Path::new("blobs/sha256"))
        .unwrap()
        .into_iter()
        .map(|entry| entry.name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn layout_is_an_oci_image_layout() {
    for (_dir, store) in stores() {
        let layout = store.fs().read(Path::new("oci-layout")).unwrap();
        assert_eq!(layout, br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index: serde_json::Value =
            serde_json::from_slice(&store.fs().read(Path::new("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert!(index["manifests"].as_array().unwrap().is_empty());
    }
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_not_stored() {
    for (_dir, store) in stores() {
        let good = Digest::sha256(b"hello");
        let error = store
            .blobs()
            .put(&good, None, &mut &b"hellO"[..])
            .unwrap_err();
        assert!(
            matches!(error, StoreError::DigestMismatch { .. }),
            "{error}"
        );
        let error = store
            .blobs()
            .put(&good, Some(4), &mut &b"hello"[..])
            .unwrap_err();
        assert!(matches!(error, StoreError::TooLarge { .. }), "{error}");
        let error = store
            .blobs()
            .put(&good, Some(6), &mut &b"hello"[..])
            .unwrap_err();
        assert!(matches!(error, StoreError::SizeMismatch { .. }), "{error}");
        assert!(
            blob_files(&store).is_empty(),
            "left {:?}",
            blob_files(&store)
        );
        let outcome = store
            .blobs()
            .put(&good, Some(5), &mut &b"hello"[..])
            .unwrap();
        assert!(!outcome.existed);
        assert_eq!(blob_files(&store), vec![good.hex().to_owned()]);
        let mut range = String::new();
        store
            .blobs()
            .open_range(&good, 1..3)
            .unwrap()
            .read_to_string(&mut range)
            .unwrap();
        assert_eq!(range, "el");
    }
}

#[test]
fn concurrent_writers_of_one_blob_are_safe() {
    let (_dir, store) = real_store();
    // Several pipeline buffers and a partial last one.
    let data: Vec<u8> = (0..(3u32 << 20) + 17).map(|n| (n % 251) as u8).collect();
    let digest = Digest::sha256(&data);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                store
                    .blobs()
                    .put(&digest, Some(data.len() as u64), &mut &data[..])
                    .unwrap()
            });
        }
    });
    assert_eq!(blob_files(&store), vec![digest.hex().to_owned()]);
    assert!(store.fsck().unwrap().is_clean());
}

#[test]
fn manifests_are_kept_byte_exact() {
    for (_dir, store) in stores() {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = Digest::sha256(config);
        store
            .blobs()
            .put(&config_digest, None, &mut &config[..])
            .unwrap();
        // Odd spacing and key order: re-encoding would change the digest.
        let manifest = format!(
            "{{\n  \"schemaVersion\": 2,\n\t\"layers\": [],  \"config\": {{\"size\": {}, \"digest\": \"{config_digest}\", \"mediaType\": \"application/vnd.oci.image.config.v1+json\"}}, \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\"}}",
            config.len()
        );
        let descriptor = store.put_manifest(manifest.as_bytes(), None).unwrap();
        assert_eq!(descriptor.digest, Digest::sha256(manifest.as_bytes()));
        assert_eq!(
            store.read_verified(&descriptor.digest).unwrap(),
            manifest.as_bytes()
        );
        let name: Reference = "example.com/app:1".parse().unwrap();
        store.tag(&name, &descriptor).unwrap();
        let resolved = store.resolve("example.com/app:1", None).unwrap();
        assert_eq!(resolved.manifest_descriptor.digest, descriptor.digest);
        // A manifest whose layers are absent is refused.
        let missing = Digest::sha256(b"absent");
        let dangling = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{missing}","size":1}}]}}"#,
            config.len()
        );
        let error = store.put_manifest(dangling.as_bytes(), None).unwrap_err();
        assert!(matches!(error, StoreError::MissingChild { .. }), "{error}");
    }
}

#[test]
fn tags_lookup_and_untag() {
    for (_dir, store) in stores() {
        let first = write_image(&store, &ImageSpec::new("nginx:1.25", &[1000, 2000], 1)).unwrap();
        let second = write_image(
            &store,
            &ImageSpec::new("quay.io/nginx/nginx:1.25", &[1000, 3000], 2),
        )
        .unwrap();
        assert_ne!(first.digest, second.digest);
        // Short and full names, digests and short ids all find the image.
        assert_eq!(
            store.lookup("nginx:1.25").unwrap().descriptor.digest,
            first.digest
        );
        assert_eq!(
            store
                .lookup("docker.io/library/nginx:1.25")
                .unwrap()
                .descriptor
                .digest,
            first.digest
        );
        assert_eq!(
            store
                .lookup(&first.digest.to_string())
                .unwrap()
                .descriptor
                .digest,
            first.digest
        );
        assert_eq!(
            store
                .lookup(&first.digest.hex()[..12])
                .unwrap()
                .descriptor
                .digest,
            first.digest
        );
        assert_eq!(
            store
                .lookup("quay.io/nginx/nginx:1.25")
                .unwrap()
                .descriptor
                .digest,
            second.digest
        );
        assert!(matches!(
            store.lookup("nginx:missing"),
            Err(StoreError::ImageNotFound(_))
        ));
        // Retagging replaces; untag removes only the name.
        let alias: Reference = "nginx:stable".parse().unwrap();
        assert!(store.tag(&alias, &first).unwrap().is_none());
        assert_eq!(
            store.tag(&alias, &second).unwrap().unwrap().digest,
            first.digest
        );
        assert_eq!(store.images().unwrap().len(), 3);
        store.untag(&alias).unwrap();
        assert_eq!(store.images().unwrap().len(), 2);
        assert!(store.untag(&alias).is_err());
    }
}

#[test]
fn multi_arch_images_resolve_per_platform() {
    let (_dir, store) = real_store();
    let spec = ImageSpec {
        platforms: vec![
            Platform::new("linux", "amd64", None),
            Platform::new("linux", "arm64", Some("v8")),
        ],
        ..ImageSpec::new("example.com/multi:1", &[500, 600], 3)
    };
    let top = write_image(&store, &spec).unwrap();
    let amd = store
        .resolve(
            "example.com/multi:1",
            Some(&Platform::parse("linux/amd64").unwrap()),
        )
        .unwrap();
    let arm = store
        .resolve(
            "example.com/multi:1",
            Some(&Platform::parse("linux/arm64").unwrap()),
        )
        .unwrap();
    assert_eq!(amd.top.digest, top.digest);
    assert_ne!(
        amd.manifest_descriptor.digest,
        arm.manifest_descriptor.digest
    );
    // The base layer is shared, the second is per platform.
    assert_eq!(amd.manifest.layers[0].digest, arm.manifest.layers[0].digest);
    assert_ne!(amd.manifest.layers[1].digest, arm.manifest.layers[1].digest);
    let error = store
        .resolve(
            "example.com/multi:1",
            Some(&Platform::parse("linux/s390x").unwrap()),
        )
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("linux/s390x") && message.contains("linux/arm64/v8"),
        "{message}"
    );
    match store.read_manifest(&top).unwrap() {
        ManifestDocument::Index(index) => assert_eq!(index.manifests.len(), 2),
        ManifestDocument::Image(_) => panic!("expected an index"),
    }
    // The walk down is recorded, and every platform's manifest can be listed.
    assert_eq!(amd.indexes, vec![amd.top.clone()]);
    let manifests = store.image_manifests("example.com/multi:1").unwrap();
    let listed: Vec<(String, Digest)> = manifests
        .iter()
        .map(|(descriptor, _)| {
            (
                descriptor.platform.as_ref().unwrap().to_string(),
                descriptor.digest.clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                "linux/amd64".to_owned(),
                amd.manifest_descriptor.digest.clone()
            ),
            (
                "linux/arm64/v8".to_owned(),
                arm.manifest_descriptor.digest.clone()
            ),
        ]
    );
    assert_eq!(manifests[1].1, arm.manifest);
}

#[test]
fn gc_removes_only_unreferenced_blobs() {
    for (_dir, store) in stores() {
        let kept = write_image(&store, &ImageSpec::new("a:1", &[4096, 100], 10)).unwrap();
        // Same seed: the base layer is shared with `a:1`.
        let dropped = write_image(&store, &ImageSpec::new("b:1", &[4096, 200], 10)).unwrap();
        let before = blob_files(&store).len();
        assert_eq!(before, 2 * 3 + 1, "shared base layer stored once");
        store.untag(&"b:1".parse().unwrap()).unwrap();
        let report = store.gc().unwrap();
        assert_eq!(report.removed.len(), 3, "b's manifest, config, own layer");
        assert!(report.removed.contains(&dropped.digest));
        assert!(store.blobs().stat(&dropped.digest).unwrap().is_none());
        let resolved = store.resolve("a:1", None).unwrap();
        assert_eq!(resolved.top.digest, kept.digest);
        for layer in &resolved.manifest.layers {
            assert!(store.blobs().stat(&layer.digest).unwrap().is_some());
        }
        assert!(store.fsck().unwrap().is_clean());
        assert!(store.gc().unwrap().removed.is_empty());
    }
}

#[test]
fn gc_keeps_extra_roots() {
    for (_dir, store) in stores() {
        write_image(&store, &ImageSpec::new("a:1", &[100], 20)).unwrap();
        let cached = Digest::sha256(b"a layer only the build cache knows");
        let other = Digest::sha256(b"garbage");
        for (digest, bytes) in [
            (&cached, &b"a layer only the build cache knows"[..]),
            (&other, &b"garbage"[..]),
        ] {
            store.blobs().put(digest, None, &mut &bytes[..]).unwrap();
        }
        let report = store
            .gc_with_extra_roots(std::slice::from_ref(&cached))
            .unwrap();
        assert_eq!(report.removed, vec![other]);
        assert!(store.blobs().stat(&cached).unwrap().is_some());
        assert!(store.resolve("a:1", None).is_ok());
        assert_eq!(store.gc().unwrap().removed, vec![cached]);
    }
}

#[test]
fn fsck_names_corrupt_and_missing_blobs() {
    for (_dir, store) in stores() {
        write_image(&store, &ImageSpec::new("a:1", &[10_000], 4)).unwrap();
        let resolved = store.resolve("a:1", None).unwrap();
        let layer = resolved.manifest.layers[0].digest.clone();
        let clean = store.fsck().unwrap();
        assert!(clean.is_clean());
        assert_eq!(clean.checked, 3);
        let mut bytes = store.fs().read(&layer.blob_path()).unwrap();
        bytes[100] ^= 1;
        store.fs().write_atomic(&layer.blob_path(), &bytes).unwrap();
        let report = store.fsck().unwrap();
        assert_eq!(report.corrupt, vec![layer.clone()]);
        assert!(!report.is_clean());
        // Quarantined: from now on the blob is missing.
        assert!(store.blobs().stat(&layer).unwrap().is_none());
        let report = store.fsck().unwrap();
        assert!(report.corrupt.is_empty());
        assert_eq!(
            report.missing,
            vec![(resolved.manifest_descriptor.digest.clone(), layer)]
        );
    }
}

#[test]
fn partial_entries_lack_blobs_without_being_inconsistent() {
    for (_dir, store) in stores() {
        write_image(&store, &ImageSpec::new("a:1", &[10_000], 6)).unwrap();
        let resolved = store.resolve("a:1", None).unwrap();
        let config = resolved.manifest.config.digest.clone();
        let layer = resolved.manifest.layers[0].digest.clone();
        store.fs().remove_file(&config.blob_path()).unwrap();
        store.fs().remove_file(&layer.blob_path()).unwrap();
        assert_eq!(store.fsck().unwrap().missing.len(), 2);
        // Marked partial (a pull-through cache entry): absent blobs are expected.
        store
            .update_index(|index| {
                index.manifests[0].annotations.insert(
                    sealer_image_store::model::PARTIAL_ANNOTATION.to_owned(),
                    "true".to_owned(),
                );
                Ok(())
            })
            .unwrap();
        let report = store.fsck().unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.absent_partial, 2);
        let entry = store.lookup("a:1").unwrap();
        let summary = store.summary(&entry.descriptor).unwrap();
        assert!(summary.platforms.is_empty());
        assert_eq!(summary.size, resolved.manifest_descriptor.size);
        // It cannot be exported.
        let error = archive::save(
            &store,
            &["a:1".to_owned()],
            &mut Vec::new(),
            SaveOptions::default(),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&config.to_string()) || message.contains(&layer.to_string()),
            "{message}"
        );
    }
}

#[test]
fn a_failed_import_leaves_the_store_as_it_was() {
    for (_dir, store) in stores() {
        write_image(&store, &ImageSpec::new("a:1", &[100], 5)).unwrap();
        let blobs_before = blob_files(&store);
        let index_before = store.fs().read(Path::new("index.json")).unwrap();
        {
            let ingest = store.begin_ingest().unwrap();
            ingest.put_bytes(b"staged but never committed").unwrap();
            let missing = Digest::sha256(b"absent layer");
            let manifest = format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{missing}","size":12}},"layers":[]}}"#
            );
            let digest = ingest.put_bytes(manifest.as_bytes()).unwrap();
            let descriptor = sealer_image_store::Descriptor::new(
                "application/vnd.oci.image.manifest.v1+json",
                digest,
                manifest.len() as u64,
            );
            let error = ingest
                .commit(&[(Some("b:1".parse().unwrap()), descriptor)])
                .unwrap_err();
            assert!(matches!(error, StoreError::MissingChild { .. }), "{error}");
        }
        assert_eq!(blob_files(&store), blobs_before);
        assert_eq!(
            store.fs().read(Path::new("index.json")).unwrap(),
            index_before
        );
        assert!(store.fs().read_dir(Path::new("ingest")).unwrap().is_empty());
    }
}

#[test]
fn oci_archive_round_trip_keeps_every_digest() {
    let (_dir, source) = real_store();
    let spec = ImageSpec {
        platforms: vec![
            Platform::new("linux", "amd64", None),
            Platform::new("linux", "arm64", None),
        ],
        ..ImageSpec::new("example.com/multi:1", &[70_000, 300], 6)
    };
    let multi = write_image(&source, &spec).unwrap();
    let single = write_image(&source, &ImageSpec::new("quay.io/a/b:2", &[1000], 7)).unwrap();
    let mut archive_bytes = Vec::new();
    let names = vec!["example.com/multi:1".to_owned(), "quay.io/a/b:2".to_owned()];
    let report =
        archive::save(&source, &names, &mut archive_bytes, SaveOptions::default()).unwrap();
    assert_eq!(report.images.len(), 2);
    for target in [real_store().1, mem_store()] {
        let loaded =
            archive::load(&target, &mut &archive_bytes[..], LoadOptions::default()).unwrap();
        assert_eq!(
            loaded.images,
            vec![
                (Some("example.com/multi:1".to_owned()), multi.digest.clone()),
                (Some("quay.io/a/b:2".to_owned()), single.digest.clone())
            ]
        );
        assert_eq!(blob_files(&target), blob_files(&source));
        assert!(target.fsck().unwrap().is_clean());
        // Loading again adds nothing.
        let again =
            archive::load(&target, &mut &archive_bytes[..], LoadOptions::default()).unwrap();
        assert_eq!(again.commit.blobs_added, 0);
    }
    // Saving is deterministic.
    let mut second = Vec::new();
    archive::save(&source, &names, &mut second, SaveOptions::default()).unwrap();
    assert_eq!(archive_bytes, second);
}

#[test]
fn docker_archive_round_trip_keeps_config_and_diff_ids() {
    let (_dir, source) = real_store();
    write_image(
        &source,
        &ImageSpec::new("example.com/app:1", &[50_000, 20_000], 8),
    )
    .unwrap();
    let original = source.resolve("example.com/app:1", None).unwrap();
    let mut bytes = Vec::new();
    let options = SaveOptions {
        format: ArchiveFormat::DockerArchive,
        ..SaveOptions::default()
    };
    archive::save(
        &source,
        &["example.com/app:1".to_owned()],
        &mut bytes,
        options,
    )
    .unwrap();
    let target = mem_store();
    let loaded = archive::load(&target, &mut &bytes[..], LoadOptions::default()).unwrap();
    assert_eq!(loaded.images[0].0.as_deref(), Some("example.com/app:1"));
    let resolved = target.resolve("example.com/app:1", None).unwrap();
    assert_eq!(
        resolved.manifest.config.digest,
        original.manifest.config.digest
    );
    // Layers arrive uncompressed: their digests are the config's diff ids.
    let config: serde_json::Value = serde_json::from_slice(
        &target
            .read_verified(&resolved.manifest.config.digest)
            .unwrap(),
    )
    .unwrap();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let layer_digests: Vec<String> = resolved
        .manifest
        .layers
        .iter()
        .map(|l| l.digest.to_string())
        .collect();
    assert_eq!(layer_digests, diff_ids);
    assert!(target.fsck().unwrap().is_clean());
}

#[test]
fn corrupt_or_truncated_archives_change_nothing() {
    let (_dir, source) = real_store();
    write_image(&source, &ImageSpec::new("example.com/app:1", &[200_000], 9)).unwrap();
    let mut bytes = Vec::new();
    archive::save(
        &source,
        &["example.com/app:1".to_owned()],
        &mut bytes,
        SaveOptions::default(),
    )
    .unwrap();
    let target = mem_store();
    write_image(&target, &ImageSpec::new("other:1", &[10], 1)).unwrap();
    let blobs_before = blob_files(&target);
    let index_before = target.fs().read(Path::new("index.json")).unwrap();

    let mut corrupt = bytes.clone();
    // Flip a byte inside the big layer (past the first headers).
    corrupt[100_000] ^= 0xff;
    let error = archive::load(&target, &mut &corrupt[..], LoadOptions::default()).unwrap_err();
    assert!(error.to_string().contains("blobs/sha256/"), "{error}");
    let truncated = &bytes[..bytes.len() / 2];
    assert!(archive::load(&target, &mut &truncated[..], LoadOptions::default()).is_err());
    assert!(
        archive::load(
            &target,
            &mut &b"not an archive at all"[..],
            LoadOptions::default()
        )
        .is_err()
    );

    assert_eq!(blob_files(&target), blobs_before);
    assert_eq!(
        target.fs().read(Path::new("index.json")).unwrap(),
        index_before
    );
}

/// Yields at most `step` bytes per read: the format sniffing must not rely on full reads.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = buf.len().min(self.step).min(self.data.len());
        buf[..len].copy_from_slice(&self.data[..len]);
        self.data = &self.data[len..];
        Ok(len)
    }
}

#[test]
fn plain_gzip_and_zstd_archives_load_from_short_reads() {
    let (_dir, source) = real_store();
    let image = write_image(
        &source,
        &ImageSpec::new("example.com/app:1", &[300_000], 12),
    )
    .unwrap();
    let mut plain = Vec::new();
    archive::save(
        &source,
        &["example.com/app:1".to_owned()],
        &mut plain,
        SaveOptions::default(),
    )
    .unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &plain).unwrap();
    let gzip = gzip.finish().unwrap();
    let zstd = zstd::stream::encode_all(&plain[..], 1).unwrap();
    for bytes in [&plain, &gzip, &zstd] {
        for step in [1, 3, 1 << 20] {
            let target = mem_store();
            let mut input = Trickle { data: bytes, step };
            let report = archive::load(&target, &mut input, LoadOptions::default()).unwrap();
            assert_eq!(
                report.images,
                vec![(Some("example.com/app:1".to_owned()), image.digest.clone())]
            );
            assert!(target.fsck().unwrap().is_clean());
        }
    }
    // Inputs shorter than any magic are refused, not misread.
    for short in [&b""[..], b"\x1f", b"\x28\xb5\x2f"] {
        assert!(archive::load(&mem_store(), &mut &short[..], LoadOptions::default()).is_err());
    }
}

#[test]
fn layout_directories_load() {
    let (dir, source) = real_store();
    write_image(&source, &ImageSpec::new("example.com/app:1", &[3000], 11)).unwrap();
    // The store itself is an OCI layout directory.
    let layout = RealFs::open_root(dir.path().join("store")).unwrap();
    let target = mem_store();
    let report = archive::load_layout(&target, &layout, LoadOptions::default()).unwrap();
    assert_eq!(report.images[0].0.as_deref(), Some("example.com/app:1"));
    assert!(target.fsck().unwrap().is_clean());
}

/// Child processes that tag images concurrently (see the next test).
#[test]
fn index_writer_child() {
    let (Ok(root), Ok(worker)) = (
        std::env::var("SEALER_TEST_ROOT"),
        std::env::var("SEALER_TEST_WORKER"),
    ) else {
        return;
    };
    let store = Store::open_dir(Path::new(&root)).unwrap();
    let target = store.lookup("base:1").unwrap().descriptor;
    for n in 0..40 {
        let name: Reference = format!("example.com/w{worker}:{n}").parse().unwrap();
        store.tag(&name, &target).unwrap();
    }
}

#[test]
fn concurrent_index_updates_from_processes_lose_nothing() {
    let (dir, store) = real_store();
    write_image(&store, &ImageSpec::new("base:1", &[10], 1)).unwrap();
    let root = dir.path().join("store");
    let children: Vec<_> = (0..4)
        .map(|worker| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "index_writer_child", "--test-threads=1"])
                .env("SEALER_TEST_ROOT", &root)
                .env("SEALER_TEST_WORKER", worker.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(store.images().unwrap().len(), 1 + 4 * 40);
}

#[test]
fn bare_tag_names_load_unnamed_unless_named() {
    let source = mem_store();
    write_image(&source, &ImageSpec::new("example.com/app:1", &[300], 12)).unwrap();
    // What `skopeo copy … oci:DIR:v1` writes: a tag without a repository.
    let index = String::from_utf8(source.fs().read(Path::new("index.json")).unwrap()).unwrap();
    let bare = index.replace("example.com/app:1", "v1");
    source
        .fs()
        .write_atomic(Path::new("index.json"), bare.as_bytes())
        .unwrap();

    let target = mem_store();
    let report =
        archive::load_layout(&target, source.fs().as_ref(), LoadOptions::default()).unwrap();
    assert_eq!(report.images[0].0, None);
    assert!(
        report.warnings[0].contains("\"v1\""),
        "{:?}",
        report.warnings
    );
    let name: Reference = "example.com/named:v1".parse().unwrap();
    let options = LoadOptions {
        name: Some(&name),
        ..LoadOptions::default()
    };
    let report = archive::load_layout(&target, source.fs().as_ref(), options).unwrap();
    assert_eq!(report.images[0].0.as_deref(), Some("example.com/named:v1"));
}

#[test]
fn one_import_stages_blobs_from_several_threads_at_once() {
    for (_dir, store) in stores() {
        let ingest = store.begin_ingest().unwrap();
        let contents: Vec<Vec<u8>> = (0..4u8).map(|n| vec![n; 300_000]).collect();
        std::thread::scope(|scope| {
            for content in &contents {
                let ingest = &ingest;
                scope.spawn(move || {
                    let digest = Digest::sha256(content);
                    ingest
                        .put(&digest, Some(content.len() as u64), &mut &content[..])
                        .unwrap();
                });
            }
        });
        for content in &contents {
            let digest = Digest::sha256(content);
            assert_eq!(ingest.contains(&digest).unwrap(), Some(300_000));
        }
    }
}

/// A registry's repository entries: tags are named references, a manifest pushed by digest
/// is an unnamed entry annotated with its repository (once), the unnamed entries an index
/// supersedes go, and unnaming drops only the asking repository's entries.
#[test]
fn repositories_name_and_unname_their_entries() {
    use sealer_image_store::entry_repository;
    use sealer_image_store::model::REPOSITORY_ANNOTATION;
    for (_dir, store) in stores() {
        let first = write_image(&store, &ImageSpec::new("x.io/seed/a:1", &[100], 1)).unwrap();
        let second = write_image(&store, &ImageSpec::new("x.io/seed/b:1", &[100], 2)).unwrap();
        let bare = |descriptor: &sealer_image_store::Descriptor| {
            sealer_image_store::Descriptor::new(
                descriptor.media_type.clone(),
                descriptor.digest.clone(),
                descriptor.size,
            )
        };
        let repo = "x.io/team/app";
        // By digest, twice: one unnamed entry.
        for _ in 0..2 {
            store
                .name_in_repository(repo, &[], bare(&first), &[])
                .unwrap();
        }
        let own = |store: &Store| -> Vec<_> {
            store
                .index()
                .unwrap()
                .manifests
                .into_iter()
                .filter(|entry| entry_repository(entry) == Some(repo))
                .collect()
        };
        let entries = own(&store);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].annotations[REPOSITORY_ANNOTATION], repo);
        assert_eq!(entries[0].digest, first.digest);
        // Tagged, superseding the unnamed entry of `first`.
        store
            .name_in_repository(
                repo,
                &[format!("{repo}:v1"), format!("{repo}:latest")],
                bare(&second),
                std::slice::from_ref(&first.digest),
            )
            .unwrap();
        let mut names: Vec<_> = own(&store)
            .iter()
            .map(|entry| (entry.ref_name().map(str::to_owned), entry.digest.clone()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                (Some(format!("{repo}:latest")), second.digest.clone()),
                (Some(format!("{repo}:v1")), second.digest.clone()),
            ]
        );
        // A tag moves; unnaming drops this repository's entries only.
        store
            .name_in_repository(repo, &[format!("{repo}:v1")], bare(&first), &[])
            .unwrap();
        store.unname_in_repository(repo, &second.digest).unwrap();
        let left: Vec<_> = own(&store)
            .iter()
            .map(|entry| entry.digest.clone())
            .collect();
        assert_eq!(left, std::slice::from_ref(&first.digest));
        assert!(store.lookup("x.io/seed/b:1").is_ok(), "another name kept");
    }
}
