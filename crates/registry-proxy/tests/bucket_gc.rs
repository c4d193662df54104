//! Garbage collection of the bucket (`Bucket::gc`, `Bucket::blob_for_reference`) against a
//! REAL S3 server (moto on loopback, as in tests/bucket.rs). Two `Bucket` values over one
//! bucket stand for a replica that pushes and one that collects.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::ObjectStoreExt as _;
use sealer_image_store::Digest;
use sealer_registry_proxy::bucket::{Bucket, BucketError, GcOptions};
use sealer_test_harness::{Moto, http_get};

#[path = "common/backends.rs"]
mod backends;
use backends::{bucket_config, moto, replica, runtime};

/// moto's unsigned object listing under `registry/<prefix>`.
fn listing(moto: &Moto, prefix: &str) -> String {
    let url = format!(
        "{}/{}?list-type=2&prefix=registry/{prefix}",
        moto.endpoint(),
        moto.bucket()
    );
    let response = http_get(&url, Duration::from_secs(10)).unwrap();
    assert_eq!(response.status, 200, "{url}");
    String::from_utf8(response.body).unwrap()
}

/// A run with `grace` for blobs and, as it, for idle uploads.
fn options(grace: Duration, claim_wait: Duration) -> GcOptions {
    GcOptions {
        grace,
        upload_idle: grace,
        claim_wait,
        dry_run: false,
    }
}

async fn put(bucket: &Bucket, data: &[u8]) -> Digest {
    let digest = Digest::sha256(data);
    let body = futures_util::stream::iter([Ok(Bytes::copy_from_slice(data))]);
    bucket.put_blob(&digest, body).await.unwrap();
    digest
}

async fn exists(bucket: &Bucket, digest: &Digest) -> bool {
    bucket.stat_blob(digest).await.unwrap().is_some()
}

fn descriptor(media_type: &str, digest: &Digest) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest.to_string(), "size": 1 })
}

/// An OCI image manifest's bytes; `note` makes it unique.
fn manifest(config: &Digest, layers: &[Digest], note: &str) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|layer| descriptor("application/vnd.oci.image.layer.v1.tar", layer))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": layers,
        "annotations": { "note": note },
    }))
    .unwrap()
}

#[test]
fn unreferenced_old_blobs_are_deleted_and_referenced_or_young_ones_kept() {
    let Some(moto) = moto() else { return };
    let bucket = replica(&moto);
    runtime().block_on(async {
        // Tagged image: config, two layers, manifest, linked and tagged.
        let config = put(&bucket, b"config one").await;
        let layer1 = put(&bucket, b"layer one").await;
        let layer2 = put(&bucket, b"layer two").await;
        let image = put(
            &bucket,
            &manifest(&config, &[layer1.clone(), layer2.clone()], "a"),
        )
        .await;
        bucket.put_manifest_link("app", &image).await.unwrap();
        bucket.put_tag("app", "v1", &image).await.unwrap();
        // An index linked (not tagged) whose entry has no link of its own.
        let config2 = put(&bucket, b"config two").await;
        let layer3 = put(&bucket, b"layer three").await;
        let entry = put(
            &bucket,
            &manifest(&config2, std::slice::from_ref(&layer3), "b"),
        )
        .await;
        let index_bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor("application/vnd.oci.image.manifest.v1+json", &entry)],
        }))
        .unwrap();
        let index = put(&bucket, &index_bytes).await;
        bucket
            .put_manifest_link("group/multi", &index)
            .await
            .unwrap();
        // A referrer (signature) reached only through its referrer link, naming its own layer.
        let signature_layer = put(&bucket, b"signature").await;
        let signature = put(
            &bucket,
            &manifest(&config, std::slice::from_ref(&signature_layer), "sig"),
        )
        .await;
        let store = config_store(&moto);
        let referrer_link = object_store::path::Path::from(format!(
            "registry/repositories/app/referrers/sha256/{}/sha256-{}",
            image.hex(),
            signature.hex()
        ));
        store
            .put(&referrer_link, signature.to_string().into())
            .await
            .unwrap();
        // Garbage: two blobs and a manifest nobody links (its layer is shared with `image`).
        let garbage1 = put(&bucket, b"garbage one").await;
        let garbage2 = put(&bucket, b"garbage two").await;
        let orphan = put(
            &bucket,
            &manifest(&config, std::slice::from_ref(&layer1), "orphan"),
        )
        .await;
        let upload = bucket.start_upload("team/app").await.unwrap();

        let live = [
            &config,
            &layer1,
            &layer2,
            &image,
            &config2,
            &layer3,
            &entry,
            &index,
            &signature_layer,
            &signature,
        ];
        let garbage = [&garbage1, &garbage2, &orphan];

        // Young: a grace of an hour keeps everything.
        let report = bucket
            .gc(&options(
                Duration::from_secs(3600),
                Duration::from_millis(100),
            ))
            .await
            .unwrap();
        assert_eq!(
            (report.live, report.candidates, report.deleted),
            (live.len(), 0, 0)
        );
        assert_eq!(report.uploads_purged, 0);

        // A dry run counts the candidates and changes nothing.
        let dry = GcOptions {
            dry_run: true,
            ..options(Duration::ZERO, Duration::from_millis(100))
        };
        let report = bucket.gc(&dry).await.unwrap();
        assert_eq!((report.candidates, report.deleted), (garbage.len(), 0));
        for digest in live.iter().chain(&garbage) {
            assert!(exists(&bucket, digest).await, "{digest} survives a dry run");
        }
        bucket.read_upload(upload.id()).await.unwrap();

        // Old: the garbage goes, the rest stays, the abandoned upload is purged.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = bucket
            .gc(&options(Duration::ZERO, Duration::from_millis(200)))
            .await
            .unwrap();
        assert_eq!(report.live, live.len());
        assert_eq!(report.candidates, garbage.len());
        assert_eq!(report.deleted, garbage.len());
        assert_eq!(report.kept_by_writer, 0);
        assert_eq!(report.uploads_purged, 1);
        let garbage_bytes = [b"garbage one".len(), b"garbage two".len()]
            .iter()
            .sum::<usize>() as u64
            + manifest(&config, std::slice::from_ref(&layer1), "orphan").len() as u64;
        assert_eq!(report.bytes_freed, garbage_bytes);
        for digest in live {
            assert!(exists(&bucket, digest).await, "{digest} is referenced");
        }
        for digest in garbage {
            assert!(!exists(&bucket, digest).await, "{digest} is garbage");
        }
        assert!(bucket.read_upload(upload.id()).await.is_err());
        assert!(
            !listing(&moto, "gc/claims/").contains("<Key>"),
            "no claim is left behind"
        );

        // Unlinking the image and its tag leaves its own blobs garbage; the index keeps its own.
        bucket.delete_tag("app", "v1").await.unwrap();
        bucket.delete_manifest_link("app", &image).await.unwrap();
        store.delete(&referrer_link).await.unwrap();
        let report = bucket
            .gc(&options(Duration::ZERO, Duration::from_millis(200)))
            .await
            .unwrap();
        assert_eq!(report.deleted, 6, "{report:?}");
        for digest in [&config2, &layer3, &entry, &index] {
            assert!(exists(&bucket, digest).await, "{digest} is referenced");
        }
    });
}

/// The bucket's store itself, for objects the `Bucket` API does not write yet.
fn config_store(moto: &Moto) -> object_store::aws::AmazonS3 {
    bucket_config(moto).build().unwrap()
}

/// A writer that references blobs while their claims stand keeps them, even when it links
/// only after the run's second mark: the run's CAS to `deleting` loses to the writer's.
#[test]
fn a_writer_clearing_the_claim_during_the_wait_keeps_the_blob() {
    let Some(moto) = moto() else { return };
    let gc_replica = replica(&moto);
    let writer = replica(&moto);
    runtime().block_on(async {
        let linked_late = put(&writer, b"old, linked late").await;
        let never_linked = put(&writer, b"old, never linked").await;
        let gc = tokio::spawn(async move {
            gc_replica
                .gc(&options(Duration::ZERO, Duration::from_secs(2)))
                .await
                .unwrap()
        });
        // The claims appear, then a writer references the blobs.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let claims = listing(&moto, "gc/claims/");
            if claims.contains(linked_late.hex()) && claims.contains(never_linked.hex()) {
                break;
            }
            assert!(Instant::now() < deadline, "the gc claims the blobs");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for blob in [&linked_late, &never_linked] {
            assert!(writer.blob_for_reference(blob).await.unwrap().is_some());
        }
        let report = gc.await.unwrap();
        assert_eq!(
            (report.candidates, report.kept_by_writer, report.deleted),
            (2, 2, 0)
        );
        // Linked after the second mark (within twice the wait of the check).
        let config = put(&writer, b"config").await;
        let image = put(
            &writer,
            &manifest(&config, std::slice::from_ref(&linked_late), "late"),
        )
        .await;
        writer.put_manifest_link("app", &image).await.unwrap();
        assert!(exists(&writer, &linked_late).await);
        assert!(exists(&writer, &never_linked).await);

        // The next run takes the cleared claims over: the unlinked blob goes.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        let report = writer
            .gc(&options(Duration::ZERO, Duration::from_millis(200)))
            .await
            .unwrap();
        assert_eq!(
            (report.deleted, report.kept_by_writer),
            (1, 0),
            "{report:?}"
        );
        assert!(exists(&writer, &linked_late).await);
        assert!(!exists(&writer, &never_linked).await);
        assert!(!listing(&moto, "gc/claims/").contains("<Key>"));
        // Pushed again: written anew.
        let again = writer
            .put_blob(
                &never_linked,
                futures_util::stream::iter([Ok(Bytes::from_static(b"old, never linked"))]),
            )
            .await
            .unwrap();
        assert!(again.created);
    });
}

/// A claim object as a run that died would have left it.
async fn plant_claim(moto: &Moto, digest: &Digest, state: &str) {
    let path =
        object_store::path::Path::from(format!("registry/gc/claims/sha256/{}", digest.hex()));
    let body = format!(r#"{{"state":"{state}","run":"0123456789abcdef"}}"#);
    config_store(moto).put(&path, body.into()).await.unwrap();
}

#[test]
fn a_put_waits_for_a_deletion_in_progress_then_writes_the_blob_anew() {
    let Some(moto) = moto() else { return };
    let bucket = replica(&moto);
    runtime().block_on(async {
        let data = b"being deleted";
        let digest = put(&bucket, data).await;
        plant_claim(&moto, &digest, "deleting").await;
        assert_eq!(bucket.blob_for_reference(&digest).await.unwrap(), None);

        let writer = bucket.clone();
        let put = tokio::spawn(async move {
            let body = futures_util::stream::iter([Ok(Bytes::from_static(data))]);
            writer.put_blob(&digest, body).await.unwrap()
        });
        // The run finishes: blob, then claim.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !put.is_finished(),
            "the put waits while the claim says deleting"
        );
        let store = config_store(&moto);
        let digest = Digest::sha256(data);
        let blob = format!("registry/blobs/sha256/{}", digest.hex());
        let claim = format!("registry/gc/claims/sha256/{}", digest.hex());
        store.delete(&blob.as_str().into()).await.unwrap();
        store.delete(&claim.as_str().into()).await.unwrap();
        let written = put.await.unwrap();
        assert!(written.created, "written anew after the delete");
        assert!(exists(&bucket, &digest).await);
    });
}

#[test]
fn claims_a_dead_run_left_are_cleaned_by_the_next_run() {
    let Some(moto) = moto() else { return };
    let bucket = replica(&moto);
    runtime().block_on(async {
        // Died between its CAS to deleting and its deletes: the blob is garbage.
        let doomed = put(&bucket, b"doomed").await;
        plant_claim(&moto, &doomed, "deleting").await;
        // Died while claiming a blob that is referenced now.
        let config = put(&bucket, b"config").await;
        let image = put(&bucket, &manifest(&config, &[], "kept")).await;
        bucket.put_manifest_link("app", &image).await.unwrap();
        plant_claim(&moto, &config, "marked").await;
        // Died after a writer cleared its claim on a blob that is garbage now.
        let cleared = put(&bucket, b"cleared").await;
        plant_claim(&moto, &cleared, "cleared").await;
        // Died between deleting a blob and its claim.
        let gone = Digest::sha256(b"gone");
        plant_claim(&moto, &gone, "deleting").await;

        // Young claims are another run's: left alone (a grace of an hour keeps the blobs).
        let report = bucket
            .gc(&options(
                Duration::from_secs(3600),
                Duration::from_millis(100),
            ))
            .await
            .unwrap();
        assert_eq!(report.deleted, 0);
        assert_eq!(listing(&moto, "gc/claims/").matches("<Key>").count(), 4);

        // Stale (older than twice the wait and the second of Last-Modified): cleaned.
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        let report = bucket
            .gc(&options(Duration::ZERO, Duration::from_millis(100)))
            .await
            .unwrap();
        assert_eq!(report.deleted, 2, "{report:?}");
        assert!(!exists(&bucket, &doomed).await);
        assert!(!exists(&bucket, &cleared).await);
        assert!(exists(&bucket, &config).await);
        assert!(exists(&bucket, &image).await);
        assert!(
            !listing(&moto, "gc/claims/").contains("<Key>"),
            "{}",
            listing(&moto, "gc/claims/")
        );
        assert!(bucket.blob_for_reference(&config).await.unwrap().is_some());
    });
}

/// Pushes made while GC loops.
const ROUNDS: usize = 32;
/// How many rounds a round's new blobs stay unreferenced (GC candidates) before a later
/// round's manifest references them.
const LAG: usize = 3;

/// The collector's claim wait in the race.
const CLAIM_WAIT: Duration = Duration::from_millis(1000);

/// Blobs per manifest of the race: a config and layers.
const CHILDREN: usize = 3;

/// The blobs round `round` uploads, unreferenced until round `round + LAG` uses them.
fn garbage_bytes(round: usize) -> Vec<Vec<u8>> {
    (0..CHILDREN)
        .map(|child| format!("blob {child} of round {round}").into_bytes())
        .collect()
}

/// A reference to an existing blob the way a replica makes one: asked first, uploaded again
/// when the answer is no.
async fn reference(bucket: &Bucket, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256(bytes);
    for _ in 0..8 {
        if bucket.blob_for_reference(&digest).await.unwrap().is_some() {
            return digest;
        }
        // A put that succeeds is a reference check of its own.
        let body = futures_util::stream::iter([Ok(Bytes::copy_from_slice(bytes))]);
        match bucket.put_blob(&digest, body).await {
            Ok(_) => return digest,
            Err(BucketError::BlobCollected { .. }) => {}
            Err(error) => panic!("{error}"),
        }
    }
    panic!("{digest} could not be referenced");
}

/// A replica pushes while another collects in a loop. Each blob is referenced by exactly one
/// manifest, LAG rounds after it was written (besides one blob per round that is never
/// referenced), and no link is ever removed: a blob deleted under a link is never written
/// again, so the final check sees every loss.
#[test]
fn gc_racing_pushes_never_leaves_a_link_whose_blobs_are_gone() {
    let Some(moto) = moto() else { return };
    let pusher = replica(&moto);
    runtime().block_on(async {
        let done = Arc::new(AtomicBool::new(false));
        // One collector on its own replica: more would overload moto (it serves one request
        // at a time) and stretch most pushes past the claim wait.
        let collector = replica(&moto);
        let gc_done = done.clone();
        let gc = tokio::spawn(async move {
            let (mut runs, mut deleted, mut kept) = (0, 0, 0);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !gc_done.load(Ordering::SeqCst) && Instant::now() < deadline {
                let report = collector
                    .gc(&options(Duration::ZERO, CLAIM_WAIT))
                    .await
                    .unwrap();
                runs += 1;
                deleted += report.deleted;
                kept += report.kept_by_writer;
            }
            (runs, deleted, kept)
        });

        let mut pushed: Vec<(Digest, Vec<Digest>)> = Vec::new();
        let mut relinks = 0;
        let deadline = Instant::now() + Duration::from_secs(90);
        for round in 0..ROUNDS + LAG {
            assert!(Instant::now() < deadline, "pushes stay within the time");
            if round < ROUNDS {
                for bytes in garbage_bytes(round) {
                    put(&pusher, &bytes).await;
                }
                // Never referenced: the collector has work to finish too.
                put(&pusher, format!("trash of round {round}").as_bytes()).await;
            }
            let Some(used) = round.checked_sub(LAG) else {
                continue;
            };
            let blobs = garbage_bytes(used);
            let mut linked = None;
            for _ in 0..8 {
                let checked = Instant::now();
                let mut children = Vec::new();
                for bytes in &blobs {
                    children.push(reference(&pusher, bytes).await);
                }
                let bytes = manifest(&children[0], &children[1..], &format!("round {used}"));
                let image = reference(&pusher, &bytes).await;
                // Some pushes dawdle between their checks and their link: those whose checks
                // cleared a claim then link after the run's second mark.
                let dawdle = u32::try_from(used % 4).unwrap();
                tokio::time::sleep(CLAIM_WAIT * dawdle / 8).await;
                pusher.put_manifest_link("race", &image).await.unwrap();
                // Linked within the shortest claim wait of its checks: they suffice. Else
                // (a loaded machine) the checks after the link make it safe.
                if checked.elapsed() < CLAIM_WAIT * 3 / 4
                    || pusher
                        .put_manifest_link_checked("race", &image, &children)
                        .await
                        .unwrap()
                {
                    linked = Some((image, children));
                    break;
                }
                relinks += 1;
            }
            let (image, children) = linked.expect("linked within 8 attempts");
            pusher
                .put_tag("race", &format!("t{}", used % 3), &image)
                .await
                .unwrap();
            pushed.push((image, children));
        }
        done.store(true, Ordering::SeqCst);
        let (runs, deleted, kept) = gc.await.unwrap();
        eprintln!("gc: {runs} runs, {deleted} blobs deleted, {kept} kept by a writer");
        eprintln!("pusher: {relinks} links removed again by their check");
        assert!(deleted > 0, "the collector deleted garbage meanwhile");

        let mut broken = Vec::new();
        for (image, children) in &pushed {
            assert!(pusher.has_manifest_link("race", image).await.unwrap());
            for digest in std::iter::once(image).chain(children) {
                if !exists(&pusher, digest).await {
                    broken.push(format!("{image} -> {digest}"));
                }
            }
        }
        assert!(broken.is_empty(), "links whose blobs are gone: {broken:?}");
    });
}
