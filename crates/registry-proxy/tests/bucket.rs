//! The bucket layout (`sealer_registry_proxy::bucket`) against a REAL S3 server: moto's
//! `moto_server` on loopback (tests/harness, installed by scripts/install-moto.sh). Two
//! `Bucket` values over one bucket stand for two replicas: separate clients, shared nothing
//! but the bucket.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::memory::InMemory;
use sealer_image_store::Digest;
use sealer_registry_proxy::bucket::{
    Acquire, Bucket, BucketError, Lease, LeaseError, MAX_PRESIGNED_EXPIRY, TagOutcome,
};
use sealer_test_harness::{Moto, http_get};
use tokio::task::JoinSet;

#[path = "common/backends.rs"]
mod backends;
use backends::{moto, replica, runtime};

const MIB: usize = 1024 * 1024;

/// Bytes that differ at every offset (a misplaced range shows).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

fn chunks(data: &[u8], size: usize) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let pieces: Vec<_> = data
        .chunks(size)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    futures_util::stream::iter(pieces)
}

async fn read_all(
    bucket: &Bucket,
    digest: &Digest,
    range: Option<std::ops::Range<u64>>,
) -> Vec<u8> {
    let read = bucket.get_blob(digest, range).await.unwrap();
    let parts: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    parts.concat()
}

/// moto's answer to an unsigned `GET /<bucket>?<query>` (an object or multipart listing).
fn keys(moto: &Moto, query: &str) -> String {
    let url = format!("{}/{}?{query}", moto.endpoint(), moto.bucket());
    let response = http_get(&url, Duration::from_secs(10)).unwrap();
    assert_eq!(response.status, 200, "{url}");
    String::from_utf8(response.body).unwrap()
}

#[test]
fn blob_round_trip_with_range() {
    let Some(moto) = moto() else { return };
    let bucket = replica(&moto);
    // Two parts: object_store's 5 MiB part and the rest.
    let data = pattern(6 * MIB + 123, 1);
    let digest = Digest::sha256(&data);
    runtime().block_on(async {
        let put = bucket
            .put_blob(&digest, chunks(&data, 300_000))
            .await
            .unwrap();
        assert!(put.created);
        assert_eq!(put.size, data.len() as u64);
        assert_eq!(
            bucket.stat_blob(&digest).await.unwrap().unwrap().size,
            data.len() as u64
        );
        assert_eq!(read_all(&bucket, &digest, None).await, data);

        let read = bucket
            .get_blob(&digest, Some(5 * MIB as u64 - 10..5 * MIB as u64 + 20))
            .await
            .unwrap();
        assert_eq!(read.size, data.len() as u64);
        let bytes: Vec<Bytes> = read.stream.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), &data[5 * MIB - 10..5 * MIB + 20]);

        // Present already: not rewritten, and the body is not even read.
        let failing = futures_util::stream::iter([Err(std::io::Error::other("never read"))]);
        let again = bucket.put_blob(&digest, failing).await.unwrap();
        assert!(!again.created);

        // The empty blob (an empty layer) is a blob like any other.
        let empty = Digest::sha256(b"");
        let put = bucket.put_blob(&empty, chunks(b"", 1)).await.unwrap();
        assert_eq!((put.size, put.created), (0, true));
        assert_eq!(bucket.stat_blob(&empty).await.unwrap().unwrap().size, 0);
        assert!(read_all(&bucket, &empty, None).await.is_empty());

        let missing = Digest::sha256(b"nothing");
        assert!(bucket.stat_blob(&missing).await.unwrap().is_none());
        assert!(matches!(
            bucket.get_blob(&missing, None).await,
            Err(BucketError::NotFound { .. })
        ));
    });
}

#[test]
fn a_wrong_digest_aborts_and_leaves_nothing_visible() {
    let Some(moto) = moto() else { return };
    let bucket = replica(&moto);
    let data = pattern(5 * MIB + 1000, 2);
    let claimed = Digest::sha256(b"something else");
    runtime().block_on(async {
        let error = bucket
            .put_blob(&claimed, chunks(&data, MIB))
            .await
            .unwrap_err();
        match error {
            BucketError::DigestMismatch { actual, size, .. } => {
                assert_eq!(actual, Digest::sha256(&data));
                assert_eq!(size, data.len() as u64);
            }
            other => panic!("expected a digest mismatch, got {other}"),
        }
        assert!(bucket.stat_blob(&claimed).await.unwrap().is_none());
        // A failing body aborts too.
        let broken = chunks(&data[..MIB], MIB).chain(futures_util::stream::iter([Err(
            std::io::Error::other("cut"),
        )]));
        assert!(matches!(
            bucket.put_blob(&claimed, broken).await,
            Err(BucketError::Body { .. })
        ));
    });
    // No object, and no multipart upload left open.
    assert!(
        !keys(&moto, "list-type=2").contains("<Key>"),
        "{}",
        keys(&moto, "list-type=2")
    );
    assert!(
        !keys(&moto, "uploads").contains("<UploadId>"),
        "{}",
        keys(&moto, "uploads")
    );
}

#[test]
fn racing_writers_of_one_new_tag_one_creates_the_other_updates() {
    let Some(moto) = moto() else { return };
    let (a, b) = (replica(&moto), replica(&moto));
    let first = Digest::sha256(b"first");
    let second = Digest::sha256(b"second");
    runtime().block_on(async {
        // If-None-Match: exactly one of two racing creates wins.
        for round in 0..10 {
            let tag = format!("create-{round}");
            let (x, y) = tokio::join!(
                a.create_tag("team/app", &tag, &first),
                b.create_tag("team/app", &tag, &second)
            );
            assert!(
                x.unwrap() ^ y.unwrap(),
                "round {round}: exactly one create wins"
            );
        }
        // put_tag: the loser of the create retries as an update on the version it read.
        for round in 0..10 {
            let tag = format!("put-{round}");
            let (x, y) = tokio::join!(
                a.put_tag("team/app", &tag, &first),
                b.put_tag("team/app", &tag, &second)
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            let mut outcomes = [x.outcome, y.outcome];
            outcomes.sort_by_key(|outcome| *outcome as u8);
            assert_eq!(
                outcomes,
                [TagOutcome::Created, TagOutcome::Updated],
                "round {round}"
            );
            let last = if x.outcome == TagOutcome::Updated {
                &first
            } else {
                &second
            };
            assert_eq!(
                a.get_tag("team/app", &tag).await.unwrap().as_ref(),
                Some(last)
            );
        }
        let write = a.put_tag("team/app", "put-0", &first).await.unwrap();
        let again = a.put_tag("team/app", "put-0", &first).await.unwrap();
        assert!(matches!(
            write.outcome,
            TagOutcome::Updated | TagOutcome::Unchanged
        ));
        assert_eq!(again.outcome, TagOutcome::Unchanged);
        assert!(a.delete_tag("team/app", "put-0").await.unwrap());
        assert!(!a.delete_tag("team/app", "put-0").await.unwrap());
        assert_eq!(b.get_tag("team/app", "put-0").await.unwrap(), None);
    });
}

#[test]
fn two_replicas_writing_fifty_tags_each_lose_none() {
    let Some(moto) = moto() else { return };
    let replicas = [replica(&moto), replica(&moto)];
    runtime().block_on(async {
        let mut writes = JoinSet::new();
        for (index, bucket) in replicas.iter().enumerate() {
            for n in 0..50 {
                let bucket = bucket.clone();
                writes.spawn(async move {
                    let tag = format!("r{index}-{n:03}");
                    let digest = Digest::sha256(tag.as_bytes());
                    bucket.put_tag("shared/repo", &tag, &digest).await
                });
            }
        }
        while let Some(write) = writes.join_next().await {
            assert_eq!(write.unwrap().unwrap().outcome, TagOutcome::Created);
        }
        let mut expected: Vec<String> = (0..2)
            .flat_map(|index| (0..50).map(move |n| format!("r{index}-{n:03}")))
            .collect();
        expected.sort();
        for bucket in &replicas {
            let all = bucket.list_tags("shared/repo", None, None).await.unwrap();
            assert_eq!(all.tags, expected);
            assert!(!all.more);
        }
        // Paginated with n/last: the same list, in order, page by page.
        let mut paged = Vec::new();
        let mut last: Option<String> = None;
        for _ in 0..100 {
            let page = replicas[1]
                .list_tags("shared/repo", Some(7), last.as_deref())
                .await
                .unwrap();
            assert!(page.tags.len() <= 7);
            paged.extend(page.tags.iter().cloned());
            last = page.tags.last().cloned();
            if !page.more {
                break;
            }
        }
        assert_eq!(paged, expected);
        for tag in &expected {
            let digest = Digest::sha256(tag.as_bytes());
            assert_eq!(
                replicas[0].get_tag("shared/repo", tag).await.unwrap(),
                Some(digest)
            );
        }
    });
}

#[test]
fn an_upload_advanced_by_two_replicas_in_turn_completes() {
    let Some(moto) = moto() else { return };
    let (a, b) = (replica(&moto), replica(&moto));
    // Pieces below and above S3's 5 MiB part minimum: a tail, then a part, then a tail.
    let pieces = [
        pattern(3 * MIB, 3),
        pattern(3 * MIB, 4),
        pattern(MIB + 17, 5),
    ];
    let data = pieces.concat();
    let digest = Digest::sha256(&data);
    runtime().block_on(async {
        let started = a.start_upload("team/app").await.unwrap();
        let id = started.id().to_owned();
        let mut offset = 0;
        for (n, piece) in pieces.iter().enumerate() {
            // Each PATCH lands on the other replica, which knows only the id.
            let replica = if n % 2 == 0 { &a } else { &b };
            let state = replica.read_upload(&id).await.unwrap();
            assert_eq!(state.offset(), offset);
            let state = replica
                .append_upload(&state, Bytes::copy_from_slice(piece))
                .await
                .unwrap();
            offset += piece.len() as u64;
            assert_eq!(state.offset(), offset);
        }
        let state = b.read_upload(&id).await.unwrap();
        let put = b.complete_upload(&state, &digest).await.unwrap();
        assert!(put.created);
        assert_eq!(put.size, data.len() as u64);
        assert_eq!(read_all(&a, &digest, None).await, data);
        assert!(matches!(
            a.read_upload(&id).await,
            Err(BucketError::NotFound { .. })
        ));

        // A wrong digest: refused, the session removed, no blob.
        let state = a.start_upload("team/app").await.unwrap();
        let state = a
            .append_upload(&state, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        let wrong = Digest::sha256(b"abd");
        assert!(matches!(
            b.complete_upload(&state, &wrong).await,
            Err(BucketError::DigestMismatch { .. })
        ));
        assert!(a.stat_blob(&wrong).await.unwrap().is_none());
        assert!(a.read_upload(state.id()).await.is_err());
    });
    let listing = keys(&moto, "list-type=2&prefix=registry/uploads/");
    assert!(
        !listing.contains("<Key>"),
        "session objects left: {listing}"
    );
    assert!(!keys(&moto, "uploads").contains("<UploadId>"));
}

#[test]
fn a_stale_if_match_is_refused() {
    let Some(moto) = moto() else { return };
    let (a, b) = (replica(&moto), replica(&moto));
    runtime().block_on(async {
        let started = a.start_upload("team/app").await.unwrap();
        let seen_by_a = a.read_upload(started.id()).await.unwrap();
        let seen_by_b = b.read_upload(started.id()).await.unwrap();
        b.append_upload(&seen_by_b, Bytes::from_static(b"from b"))
            .await
            .unwrap();
        // A still holds the version before B's write: refused, nothing changed.
        let error = a
            .append_upload(&seen_by_a, Bytes::from_static(b"from a!"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, BucketError::StaleUpload { offset: 0, .. }),
            "{error}"
        );
        let current = a.read_upload(started.id()).await.unwrap();
        assert_eq!(current.offset(), 6);
        let put = a
            .complete_upload(&current, &Digest::sha256(b"from b"))
            .await
            .unwrap();
        assert!(put.created);
        assert_eq!(
            read_all(&b, &Digest::sha256(b"from b"), None).await,
            b"from b"
        );
    });
}

#[test]
fn abandoned_uploads_are_purged_and_live_ones_kept() {
    let Some(moto) = moto() else { return };
    let (a, b) = (replica(&moto), replica(&moto));
    runtime().block_on(async {
        // One session with a multipart upload and a tail, one with a tail only.
        let big = a.start_upload("team/app").await.unwrap();
        let big = a
            .append_upload(&big, Bytes::from(pattern(5 * MIB + 10, 6)))
            .await
            .unwrap();
        let big = a
            .append_upload(&big, Bytes::from_static(b"tail"))
            .await
            .unwrap();
        let small = b.start_upload("team/app").await.unwrap();
        let small = b
            .append_upload(&small, Bytes::from_static(b"x"))
            .await
            .unwrap();

        // Idle for less than an hour: kept.
        assert_eq!(b.purge_uploads(Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(
            a.read_upload(big.id()).await.unwrap().offset(),
            big.offset()
        );

        // Any idle time counts: both go, from the other replica.
        assert_eq!(b.purge_uploads(Duration::ZERO).await.unwrap(), 2);
        for id in [big.id(), small.id()] {
            assert!(matches!(
                a.read_upload(id).await,
                Err(BucketError::NotFound { .. })
            ));
        }
        // The holder of a purged session is told the upload is unknown (its client starts
        // again), not that the storage failed, and nothing reappears.
        for result in [
            a.append_upload(&big, Bytes::from_static(b"late"))
                .await
                .map(drop),
            a.append_upload(&small, Bytes::from_static(b"late"))
                .await
                .map(drop),
            a.complete_upload(&small, &Digest::sha256(b"x"))
                .await
                .map(drop),
        ] {
            assert!(
                matches!(result, Err(BucketError::NotFound { .. })),
                "{result:?}"
            );
        }
    });
    let listing = keys(&moto, "list-type=2&prefix=registry/uploads/");
    assert!(
        !listing.contains("<Key>"),
        "session objects left: {listing}"
    );
    assert!(
        !keys(&moto, "uploads").contains("<UploadId>"),
        "multipart uploads left open"
    );
}

#[test]
fn a_purge_racing_a_writer_never_fails_it_as_storage_trouble() {
    let Some(moto) = moto() else { return };
    let (writer, purger) = (replica(&moto), replica(&moto));
    runtime().block_on(async {
        // Purges with no idle time at all, over and over, while chunked uploads advance: each
        // append either lands or finds its session purged (upload unknown); a session that
        // survives to the end completes with its digest verified.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let purging = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut purged = 0;
                for _ in 0..10_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    purged += purger.purge_uploads(Duration::ZERO).await.unwrap();
                }
                purged
            })
        };
        let (mut completed, mut cut) = (0, 0);
        for round in 0..12u8 {
            let mut state = writer.start_upload("team/app").await.unwrap();
            let mut bytes = Vec::new();
            let mut alive = true;
            for chunk in 0..6u8 {
                let data = vec![round ^ chunk; 100 + usize::from(chunk)];
                match writer
                    .append_upload(&state, Bytes::from(data.clone()))
                    .await
                {
                    Ok(next) => {
                        state = next;
                        bytes.extend_from_slice(&data);
                    }
                    Err(BucketError::NotFound { .. }) => {
                        alive = false;
                        break;
                    }
                    Err(error) => panic!("round {round}, chunk {chunk}: {error}"),
                }
            }
            if !alive {
                cut += 1;
                continue;
            }
            match writer
                .complete_upload(&state, &Digest::sha256(&bytes))
                .await
            {
                Ok(put) => {
                    assert_eq!(put.size, bytes.len() as u64);
                    let stored = read_all(&writer, &Digest::sha256(&bytes), None).await;
                    assert!(stored == bytes, "round {round}: other bytes stored");
                    completed += 1;
                }
                Err(BucketError::NotFound { .. }) => cut += 1,
                Err(error) => panic!("round {round}, completing: {error}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let purged = purging.await.unwrap();
        assert_eq!(completed + cut, 12);
        // Every session cut was purged (a purge that lost to a writer counts nothing).
        assert!(purged >= cut, "{purged} purged, {cut} cut");
    });
}

/// `count` replicas' views of the bucket, each its own S3 client.
fn replicas(moto: &Moto, count: usize) -> Vec<Bucket> {
    (0..count).map(|_| replica(moto)).collect()
}

fn holder(index: usize) -> String {
    format!("http://10.0.0.{index}:5000")
}

/// `bucket` asks for the lease of `digest` as replica `index`.
async fn acquire(bucket: &Bucket, digest: &Digest, index: usize, ttl: Duration) -> Acquire {
    bucket
        .acquire_fill_lease(digest, &holder(index), ttl)
        .await
        .unwrap()
}

/// Like [`acquire`], for a lease that must be free.
async fn acquired(bucket: &Bucket, digest: &Digest, index: usize, ttl: Duration) -> Lease {
    match acquire(bucket, digest, index, ttl).await {
        Acquire::Acquired(lease) => lease,
        other => panic!("replica {index} expected the lease of {digest}, got {other:?}"),
    }
}

/// Every replica asks for the lease of `digest` at once; returns who got it (index, lease)
/// and the holders the others were told about.
async fn race_for_lease(
    replicas: &[Bucket],
    digest: &Digest,
    ttl: Duration,
) -> (Vec<(usize, Lease)>, Vec<String>) {
    let mut racers = JoinSet::new();
    for (index, bucket) in replicas.iter().enumerate() {
        let bucket = bucket.clone();
        let digest = digest.clone();
        racers.spawn(async move { (index, acquire(&bucket, &digest, index, ttl).await) });
    }
    let (mut won, mut told) = (Vec::new(), Vec::new());
    while let Some(result) = racers.join_next().await {
        match result.unwrap() {
            (index, Acquire::Acquired(lease)) => won.push((index, lease)),
            (_, Acquire::HeldBy { holder, .. }) => told.push(holder),
        }
    }
    (won, told)
}

#[test]
fn fill_lease_sixteen_concurrent_acquirers_exactly_one_wins() {
    let Some(moto) = moto() else { return };
    let replicas = replicas(&moto, 16);
    let digest = Digest::sha256(b"one upstream GET for the cluster");
    runtime().block_on(async {
        let (won, told) = race_for_lease(&replicas, &digest, Duration::from_secs(60)).await;
        assert_eq!(won.len(), 1, "exactly one acquirer wins: {won:?}");
        let (winner, lease) = &won[0];
        assert_eq!(lease.holder(), holder(*winner));
        assert_eq!(lease.generation(), 1);
        assert_eq!(told.len(), 15);
        assert!(told.iter().all(|told| *told == holder(*winner)), "{told:?}");

        // The holder renews with If-Match on what it wrote: the expiry moves on.
        let renewed = replicas[*winner]
            .renew_fill_lease(lease, Duration::from_secs(120))
            .await
            .unwrap();
        assert!(renewed.expires_at() > lease.expires_at());
        assert_eq!(renewed.generation(), 1);

        // Released while live: the object goes, the next miss creates a fresh lease.
        assert!(
            replicas[*winner]
                .release_fill_lease(&renewed)
                .await
                .unwrap()
        );
        // A released lease is free again.
        let fresh = acquired(&replicas[0], &digest, 0, Duration::from_secs(60)).await;
        assert_eq!(fresh.generation(), 1);
    });
}

#[test]
fn fill_lease_expired_is_taken_over_by_exactly_one_of_several() {
    let Some(moto) = moto() else { return };
    let replicas = replicas(&moto, 8);
    let digest = Digest::sha256(b"the holder died");
    runtime().block_on(async {
        let dead = replicas[0]
            .acquire_fill_lease(&digest, "http://10.0.0.99:5000", Duration::from_secs(2))
            .await
            .unwrap();
        assert!(matches!(dead, Acquire::Acquired(_)), "{dead:?}");
        // Still live (a TTL far above the time this takes): nobody takes it.
        let (won, told) = race_for_lease(&replicas[1..2], &digest, Duration::from_secs(60)).await;
        assert!(won.is_empty());
        assert_eq!(told, ["http://10.0.0.99:5000"]);

        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (won, told) = race_for_lease(&replicas, &digest, Duration::from_secs(60)).await;
        assert_eq!(won.len(), 1, "exactly one taker wins: {won:?}");
        let (winner, lease) = &won[0];
        assert_eq!(lease.generation(), 2, "a takeover bumps the generation");
        assert_eq!(told.len(), 7);
        assert!(told.iter().all(|told| *told == holder(*winner)), "{told:?}");
    });
}

/// A lease taken over by replica 1 after replica 0's expired: (replica 0's, replica 1's).
async fn taken_over(replicas: &[Bucket], digest: &Digest) -> (Lease, Lease) {
    let old = acquired(&replicas[0], digest, 0, Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = acquired(&replicas[1], digest, 1, Duration::from_secs(60)).await;
    (old, new)
}

#[test]
fn fill_lease_renew_after_takeover_fails() {
    let Some(moto) = moto() else { return };
    let replicas = replicas(&moto, 2);
    let digest = Digest::sha256(b"renewed too late");
    runtime().block_on(async {
        let (old, new) = taken_over(&replicas, &digest).await;
        let error = replicas[0]
            .renew_fill_lease(&old, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, LeaseError::Lost { generation: 1, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("was lost"), "{error}");
        // The new holder's lease is untouched and still renews.
        let renewed = replicas[1]
            .renew_fill_lease(&new, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            (renewed.holder(), renewed.generation()),
            (holder(1).as_str(), 2)
        );
    });
}

#[test]
fn fill_lease_release_after_takeover_leaves_the_new_one() {
    let Some(moto) = moto() else { return };
    let replicas = replicas(&moto, 3);
    let digest = Digest::sha256(b"released too late");
    runtime().block_on(async {
        let (old, _new) = taken_over(&replicas, &digest).await;
        assert!(!replicas[0].release_fill_lease(&old).await.unwrap());
        match acquire(&replicas[2], &digest, 2, Duration::from_secs(60)).await {
            Acquire::HeldBy {
                holder: told,
                generation,
                ..
            } => assert_eq!((told, generation), (holder(1), 2)),
            other => panic!("the new holder keeps its lease, got {other:?}"),
        }
    });
}

#[test]
fn fill_lease_released_after_expiry_is_marked_free_not_deleted() {
    let Some(moto) = moto() else { return };
    let replicas = replicas(&moto, 2);
    let digest = Digest::sha256(b"released after its expiry");
    runtime().block_on(async {
        let lease = acquired(&replicas[0], &digest, 0, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(replicas[0].release_fill_lease(&lease).await.unwrap());
        // The marker stays and is taken over like any expired lease.
        let taken = acquired(&replicas[1], &digest, 1, Duration::from_secs(60)).await;
        assert_eq!(taken.generation(), 2);
    });
}

#[test]
fn fill_lease_rejects_bad_holder_and_ttl() {
    let bucket = Bucket::with_store(Arc::new(InMemory::new()), None);
    let digest = Digest::sha256(b"x");
    runtime().block_on(async {
        let error = bucket
            .acquire_fill_lease(&digest, "", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("fill lease holder"), "{error}");
        let error = bucket
            .acquire_fill_lease(&digest, &holder(1), Duration::ZERO)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("fill lease ttl"), "{error}");
    });
}

#[test]
fn presigned_blob_url_gets_the_blob_without_credentials() {
    let Some(moto) = moto() else { return };
    let bucket = replica(&moto);
    let data = pattern(300_000, 7);
    let digest = Digest::sha256(&data);
    let url = runtime().block_on(async {
        bucket
            .put_blob(&digest, chunks(&data, 65_536))
            .await
            .unwrap();
        bucket
            .presigned_blob_url(&digest, Duration::from_secs(90))
            .await
            .unwrap()
    });
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(param("X-Amz-Expires"), Some("90"), "{url}");
    assert!(param("X-Amz-Signature").is_some(), "{url}");
    assert!(
        url.path()
            .ends_with(&format!("/registry/blobs/sha256/{}", digest.hex())),
        "{url}"
    );
    // A plain client, no credentials: the blob's bytes.
    let response = http_get(url.as_str(), Duration::from_secs(10)).unwrap();
    assert_eq!(response.status, 200, "{url}");
    assert!(response.complete);
    assert_eq!(response.body, data);
}

#[test]
fn presigned_blob_url_refuses_bad_expiry_and_unsigned_stores() {
    let digest = Digest::sha256(b"x");
    let in_memory = Bucket::with_store(Arc::new(InMemory::new()), None);
    runtime().block_on(async {
        let error = in_memory
            .presigned_blob_url(&digest, Duration::from_secs(60))
            .await
            .unwrap_err();
        let error = sealer_fs_abstraction::error_chain(&error);
        assert!(error.contains("cannot presign"), "{error}");
        for bad in [
            Duration::ZERO,
            Duration::from_millis(1500),
            MAX_PRESIGNED_EXPIRY + Duration::from_secs(1),
        ] {
            let error = in_memory
                .presigned_blob_url(&digest, bad)
                .await
                .unwrap_err();
            let error = sealer_fs_abstraction::error_chain(&error);
            assert!(error.contains("presigned URL expiry"), "{bad:?}: {error}");
        }
    });
}
