//! Garbage collection of the bucket while other replicas keep pushing: no lock, no pause.
//!
//! # Objects
//!
//! Besides the layout of the module above, GC uses `gc/claims/<alg>/<hex>`: a claim on the
//! blob `<alg>:<hex>`, a small JSON document `{"state": …, "run": …}` in one of three states:
//!
//! * `marked`: a GC run means to delete the blob, once it has waited and marked again;
//! * `cleared`: a writer referenced the blob meanwhile (the run that marked it keeps it);
//! * `deleting`: the run won the blob; it deletes the blob, then the claim.
//!
//! Every write of a claim is conditional: created with `If-None-Match: *` or moved from the
//! one version its writer read with `If-Match` (every document carries a random `run`, so
//! two writes never share an ETag). Only two transitions race: a writer's
//! `marked → cleared` and the run's `marked → deleting`, both `If-Match` on the same
//! version, so exactly one lands.
//!
//! And `gc/clock`, rewritten at the start of each run: its `Last-Modified` is the run's
//! "now" on the storage's clock, the one every other object's age is measured on, so the
//! clocks of GC and replicas never meet.
//!
//! # A run ([`Bucket::gc`])
//!
//! 1. **Mark.** Roots: every link `repositories/<name>/manifests/<alg>/<hex>`, every referrer
//!    link `repositories/<name>/referrers/<alg>/<hex>/<alg>-<hex>` and every tag's digest.
//!    Manifests are read (they are blobs) and followed: an index to its manifests, a manifest
//!    to its config and layers, either to its `subject`. A document that does not parse as
//!    a manifest keeps every digest it names. Every digest reached is live.
//! 2. **Candidates.** Blobs that are not live and were last written at least `grace` ago.
//!    The grace keeps a push's blobs, uploaded before its manifest, for the push's duration
//!    (liveness, not safety: a push that outlives it has its manifest refused and uploads
//!    again).
//! 3. **Claim.** A `marked` claim per candidate (`If-None-Match`); a claim already there is
//!    taken over by `If-Match` only when stale (not written for twice `claim_wait`: its run is
//!    gone), else the candidate is left to its run.
//! 4. **Wait** `claim_wait` after the last claim, then **mark again**. A candidate now live
//!    has its claim removed and is kept.
//! 5. **Delete.** `marked → deleting` with `If-Match` on the version this run wrote; only
//!    when that lands is the blob deleted, then the claim. A lost CAS means a writer cleared
//!    the claim: the blob is kept (`kept_by_writer`).
//! 6. Upload sessions idle longer than `upload_idle` are purged ([`Bucket::purge_uploads`]),
//!    each by compare-and-swap on the idle state it read: a session a writer advances
//!    meanwhile is kept. Its own setting, not `grace`: a short grace (blobs are safe under
//!    any grace, by the claims) must not cut pushes in progress.
//!
//! Claims left behind are cleaned by the next run, always by taking them over first: a stale
//! `cleared` or `marked` claim is taken over by CAS and then goes through the steps above
//! (or is removed when its blob is live or gone); a stale `deleting` claim (a run died
//! between its CAS and its deletes) is taken over by CAS and finished: blob, then claim,
//! unless its blob is live, when only the claim goes.
//!
//! # Writers ([`Bucket::blob_for_reference`])
//!
//! A write that makes something reference a blob that already exists (the `HEAD` of a blob
//! during a push, a cross-repository mount, a manifest `PUT` checking its children and
//! itself, [`Bucket::put_blob`] of a blob already present) first asks
//! [`Bucket::blob_for_reference`]: it reads the claim, then stats the blob.
//!
//! * no claim, or `cleared`: the blob (if present) may be referenced;
//! * `marked`: moved to `cleared` by `If-Match`; when that lands, the blob may be referenced;
//!   when it loses, the claim is read again;
//! * `deleting`: `None`; the blob is as good as gone and the client uploads it again
//!   ([`Bucket::put_blob`] waits for the deletion to finish before it writes the bytes anew).
//!
//! # Why nothing referenced is deleted
//!
//! Assumption (the only timing one): a writer links (writes the manifest or link that
//! references the blob) less than `claim_wait` after its `blob_for_reference` read the
//! claim; and a GC run's requests from one CAS to the deletes it guards (at most two) take
//! less than `claim_wait`. So `claim_wait` is "longer than any request may take". S3 reads
//! and listings are strongly consistent.
//!
//! Take a blob `B` that a writer references after `blob_for_reference(B)` returned it at
//! time `t` (its claim read), linking at `t + d`, `d < claim_wait`, and a run that deletes
//! `B`. The run deleted `B` only after its CAS `marked → deleting` landed on the version `v`
//! it wrote at `T` (create or takeover), and after it marked again, starting at
//! `T' ≥ T + claim_wait`, without finding `B` live.
//!
//! * `T < t`: what the writer read at `t` is `v` or a later state of the claim. `v`
//!   (`marked`): the writer moved it to `cleared` by CAS and returned `Some` only when that
//!   landed; then the run's CAS on `v` cannot land (both are `If-Match: v`). A later
//!   version: the run's `deleting` (the writer returned `None`), or a write by someone
//!   else (another writer's `cleared`, another run's takeover), after which the run's CAS
//!   on `v` fails. No claim: whoever removed it did so right after a CAS of its own landed,
//!   so the run's CAS on `v` failed, unless the remover was the run itself after deleting
//!   `B`, and then the writer's stat (after its claim read) found no blob.
//! * `T > t`: the run marked again at `T' ≥ T + claim_wait > t + d`: the link was there,
//!   and the listing shows it; `B` was live and kept. (Only this case needs `d` bounded; a
//!   writer that cleared a claim is covered for longer, as its `cleared` claim keeps new
//!   claims off for twice `claim_wait`.)
//!
//! So the writer's link never names a deleted blob.
//!
//! # Checking after the link: no timing assumption on writers
//!
//! A writer that checks again *after* its link landed needs no bound on its own delays:
//! [`Bucket::put_manifest_link_checked`] links, then asks [`Bucket::blob_for_reference`]
//! for the manifest and each child, and removes the link when one answers `None`. If every
//! answer is `Some`, no run deletes those blobs: a run deleting `B` marked again, without
//! seeing the link, at `T'`, so before the link landed at `L`, and its claim version `v`
//! was written at `T < T' < L < t` (`t`: the check after the link). The reading at `t`
//! then is the first case above, with no wait involved: `v` cleared by the writer's CAS (the
//! run's CAS fails), or a later version (the run's `deleting`: `None`; anyone else's: the
//! run's CAS fails), or no claim (the run's own removal after deleting `B`: the stat finds
//! no blob). Only the runs' own assumption (two requests within `claim_wait`) remains.
//!
//! What the server's backend does, then: a manifest `PUT` checks every child with
//! [`Bucket::blob_for_reference`] (refusing the manifest on `None`), stores the manifest
//! with [`Bucket::put_blob`], and links it with [`Bucket::put_manifest_link_checked`]
//! (refusing the manifest on `false`) before it moves a tag; a `HEAD` or mount at the start
//! of a push answers with [`Bucket::blob_for_reference`] too, which only spares a doomed
//! upload.
//!
//! [`Bucket::put_blob`] returns only after such a check too, made once the blob is
//! complete: a run may have listed and claimed the blob while the bytes streamed (another
//! writer's copy under the same key), and its delete would take the new bytes as well, so
//! the check after the write is the one that counts (when it fails, so does the put:
//! [`BucketError::BlobCollected`], and the client uploads again). Before writing, it waits
//! until the claim of a `deleting` blob is gone; the run removes the claim only after the
//! blob, so the new bytes come after the delete.
//!
//! Claims are only ever removed right after a CAS of the remover's landed (its own
//! `deleting`, `cleared` or `marked`); a claim is taken over only once nobody wrote it for
//! twice `claim_wait`, so between such a CAS and the removal (one or two requests) nobody
//! else writes it. Concurrent runs thus never delete one blob twice around a re-upload.
//!
//! Over 800 lines on purpose: the GC protocol's argument (the module docs) and every step it
//! names, kept together so that one can be checked against the other.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectMeta, ObjectStoreExt as _, PutMode, PutPayload, UpdateVersion,
};
use sealer_fs_abstraction::ErrorChain;
use sealer_image_store::{Digest, MAX_MANIFEST_SIZE, ManifestDocument};
use serde::{Deserialize, Serialize};

use super::{BlobPut, BlobStat, Bucket, BucketError, is_conflict, store_error};

/// How many times a writer re-reads a claim that changed under its CAS before giving up.
const CLAIM_ATTEMPTS: u32 = 16;

/// How long [`Bucket::put_blob`] waits for a run to finish deleting a blob it must write
/// anew (the run's two deletes; a run that died leaves the claim to the next run).
pub(super) const DELETING_WAIT: Duration = Duration::from_secs(30);

/// Between two reads of a `deleting` claim.
const DELETING_POLL: Duration = Duration::from_millis(50);

/// Requests in flight at once while marking, claiming and deleting.
const CONCURRENCY: usize = 16;

/// `Last-Modified` has a resolution of one second: ages are measured with this much slack.
const STAMP_SLACK_MS: i64 = 1_000;

/// What [`Bucket::gc`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Blobs written less than this long ago are kept even when unreferenced (a push's blobs
    /// before its manifest). Default: 24 h.
    pub grace: Duration,
    /// Upload sessions whose state has not changed for this long are purged (their client
    /// gets "upload unknown" and starts again). Default: 24 h.
    pub upload_idle: Duration,
    /// How long claims stand before the second mark: longer than any request (a manifest
    /// `PUT` from its checks to its link) may take. Default: 10 min.
    pub claim_wait: Duration,
    /// Only mark and count the candidates: no claim, no delete, no purge.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(24 * 3600),
            upload_idle: Duration::from_secs(24 * 3600),
            claim_wait: Duration::from_secs(10 * 60),
            dry_run: false,
        }
    }
}

/// What a [`Bucket::gc`] run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs reachable from a tag or link (at the first mark).
    pub live: usize,
    /// Unreferenced blobs older than the grace.
    pub candidates: usize,
    /// Blobs deleted.
    pub deleted: usize,
    /// Candidates kept because a writer cleared their claim, or they became live before
    /// the second mark.
    pub kept_by_writer: usize,
    /// Abandoned upload sessions removed.
    pub uploads_purged: usize,
    /// Bytes of the blobs deleted.
    pub bytes_freed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClaimState {
    Marked,
    Cleared,
    Deleting,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClaimDoc {
    state: ClaimState,
    /// Random per write, so that no two writes of a claim share an ETag.
    run: String,
}

/// A claim as read: its state, version and when it was last written (ms, storage clock).
struct Claim {
    state: ClaimState,
    version: UpdateVersion,
    written_ms: i64,
}

/// What a writer may do with a blob (see the module docs).
pub(super) enum Reference {
    /// Present, and no run will delete it before the writer links.
    Present(BlobStat),
    /// Not stored.
    Absent,
    /// A run is deleting it.
    Deleting,
}

/// A candidate this run holds a claim on.
struct Held {
    digest: Digest,
    size: u64,
    version: UpdateVersion,
}

/// How a held claim ended.
enum Ending {
    Deleted(u64),
    Kept,
}

impl Bucket {
    /// Asks to reference the existing blob `digest` (a push's `HEAD`, a mount, a manifest
    /// `PUT` checking its children and itself): its metadata when it is stored and no GC run
    /// can delete it before the caller links it (within the runs' `claim_wait`); `None` when
    /// it is not stored or a run is deleting it (the client uploads it again). Clears a GC
    /// claim on the blob by compare-and-swap; see the module docs for why that is safe.
    pub async fn blob_for_reference(
        &self,
        digest: &Digest,
    ) -> Result<Option<BlobStat>, BucketError> {
        Ok(match self.reference(digest).await? {
            Reference::Present(stat) => Some(stat),
            Reference::Absent | Reference::Deleting => None,
        })
    }

    /// Links `repository` to the manifest `digest` (stored with [`Bucket::put_blob`], its
    /// `children` checked with [`Bucket::blob_for_reference`] before), then checks the
    /// manifest and every child again: a check after the link makes the reference safe
    /// however long the request took since its first checks (module docs). `false` when one
    /// of them is gone or being deleted by then: the link is removed again (the caller
    /// answers that a blob is unknown, and the client uploads it again).
    pub async fn put_manifest_link_checked(
        &self,
        repository: &str,
        digest: &Digest,
        children: &[Digest],
    ) -> Result<bool, BucketError> {
        self.put_manifest_link(repository, digest).await?;
        // Owned digests: the future stays `Send` for any caller (a borrowing closure here
        // is not general enough for `async_trait` methods).
        let blobs: Vec<Digest> = std::iter::once(digest).chain(children).cloned().collect();
        let checks: Vec<Option<Digest>> = futures_util::stream::iter(blobs)
            .map(|blob| async move {
                let present = self.blob_for_reference(&blob).await?.is_some();
                Ok::<_, BucketError>((!present).then_some(blob))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        if let Some(gone) = checks.into_iter().flatten().next() {
            tracing::info!(%repository, manifest = %digest, blob = %gone,
                "a blob was deleted while its manifest was linked; link removed");
            self.delete_manifest_link(repository, digest).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// [`Bucket::blob_for_reference`], telling an absent blob from one being deleted.
    pub(super) async fn reference(&self, digest: &Digest) -> Result<Reference, BucketError> {
        let path = self.claim_path(digest);
        for _ in 0..CLAIM_ATTEMPTS {
            let Some(claim) = self.read_claim(&path).await? else {
                return self.present_or_absent(digest).await;
            };
            match claim.state {
                ClaimState::Deleting => return Ok(Reference::Deleting),
                ClaimState::Cleared => return self.present_or_absent(digest).await,
                ClaimState::Marked => {
                    match self
                        .write_claim(&path, ClaimState::Cleared, PutMode::Update(claim.version))
                        .await
                    {
                        Ok(_) => {
                            tracing::debug!(%digest, "gc claim cleared by a writer");
                            return self.present_or_absent(digest).await;
                        }
                        Err(error) if lost(&error) => continue,
                        Err(error) => return Err(store_error("clearing gc claim", &path)(error)),
                    }
                }
            }
        }
        Err(BucketError::ClaimContended {
            digest: digest.clone(),
            attempts: CLAIM_ATTEMPTS,
        })
    }

    /// Before writing the blob `digest`: its metadata when it is stored already (referenced:
    /// a claim on it cleared), `None` when it must be written — after any deletion in
    /// progress is done.
    pub(super) async fn before_writing(
        &self,
        digest: &Digest,
    ) -> Result<Option<BlobStat>, BucketError> {
        match self.reference(digest).await? {
            Reference::Present(stat) => Ok(Some(stat)),
            Reference::Absent => Ok(None),
            Reference::Deleting => {
                self.wait_out_deletion(digest).await?;
                Ok(None)
            }
        }
    }

    /// After writing the blob `digest` (`size` bytes): a GC run may have claimed another
    /// writer's copy under the same key while ours streamed in (its delete takes ours too),
    /// so the caller may reference the blob only once this says it is there.
    pub(super) async fn after_writing(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobPut, BucketError> {
        match self.reference(digest).await? {
            Reference::Present(_) => Ok(BlobPut {
                size,
                created: true,
            }),
            Reference::Absent | Reference::Deleting => Err(BucketError::BlobCollected {
                digest: digest.clone(),
            }),
        }
    }

    /// Waits until no run is deleting `digest` (its claim gone or no longer `deleting`), at
    /// most [`DELETING_WAIT`].
    pub(super) async fn wait_out_deletion(&self, digest: &Digest) -> Result<(), BucketError> {
        let path = self.claim_path(digest);
        let deadline = tokio::time::Instant::now() + DELETING_WAIT;
        loop {
            match self.read_claim(&path).await? {
                Some(claim) if claim.state == ClaimState::Deleting => {}
                _ => return Ok(()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BucketError::BlobBeingDeleted {
                    digest: digest.clone(),
                    waited: DELETING_WAIT,
                });
            }
            tokio::time::sleep(DELETING_POLL).await;
        }
    }

    /// Collects unreferenced blobs while other replicas keep writing: mark, claim, wait,
    /// mark again, delete by compare-and-swap (module docs: the steps and why they are
    /// safe); then purges abandoned upload sessions.
    pub async fn gc(&self, options: &GcOptions) -> Result<GcReport, BucketError> {
        let now = self.storage_now().await?;
        let claim_wait_ms = millis(options.claim_wait);
        let stale_before = now
            .saturating_sub(claim_wait_ms.saturating_mul(2))
            .saturating_sub(STAMP_SLACK_MS);
        tracing::info!(dry_run = options.dry_run, "gc: marking");
        let live = self.mark().await?;
        let blobs = self.list_blobs().await?;
        let old_before = now.saturating_sub(millis(options.grace));
        let mut report = GcReport {
            live: blobs.keys().filter(|digest| live.contains(*digest)).count(),
            ..GcReport::default()
        };
        let candidates: Vec<(Digest, u64)> = blobs
            .iter()
            .filter(|(digest, meta)| {
                !live.contains(*digest) && meta.last_modified.timestamp_millis() <= old_before
            })
            .map(|(digest, meta)| (digest.clone(), meta.size))
            .collect();
        report.candidates = candidates.len();
        tracing::info!(
            blobs = blobs.len(),
            live = report.live,
            candidates = report.candidates,
            "gc: marked"
        );
        if options.dry_run {
            for (digest, size) in &candidates {
                tracing::info!(%digest, size, "gc: would delete");
            }
            return Ok(report);
        }

        // Claims other runs (or writers) left: stale ones are taken over and removed, a stale
        // `deleting` one is finished when its blob is not live.
        let stale: Vec<Digest> = self
            .list_claims()
            .await?
            .into_iter()
            .filter(|(_, meta)| meta.last_modified.timestamp_millis() < stale_before)
            .map(|(digest, _)| digest)
            .collect();
        let finished: HashMap<Digest, u64> = futures_util::stream::iter(stale)
            .map(|digest| {
                let live = live.contains(&digest);
                async move {
                    let freed = self.clean_stale_claim(&digest, live, stale_before).await?;
                    Ok::<_, BucketError>(freed.map(|size| (digest, size)))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|freed| std::future::ready(Ok(freed)))
            .try_collect()
            .await?;
        report.deleted += finished.len();
        report.bytes_freed += finished.values().sum::<u64>();
        let candidates: Vec<(Digest, u64)> = candidates
            .into_iter()
            .filter(|(digest, _)| !finished.contains_key(digest))
            .collect();

        tracing::info!(candidates = candidates.len(), "gc: claiming");
        let held: Vec<Held> = futures_util::stream::iter(candidates)
            .map(|(digest, size)| async move {
                let version = self.claim(&digest, stale_before).await?;
                Ok::<_, BucketError>(version.map(|version| Held {
                    digest,
                    size,
                    version,
                }))
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|held| std::future::ready(Ok(held)))
            .try_collect()
            .await?;
        if !held.is_empty() {
            tracing::info!(
                claimed = held.len(),
                wait = ?options.claim_wait,
                "gc: claims stand before the second mark"
            );
            tokio::time::sleep(options.claim_wait).await;
            let live = self.mark().await?;
            let endings: Vec<Ending> = futures_util::stream::iter(held)
                .map(|held| {
                    let live = live.contains(&held.digest);
                    async move { self.settle(held, live).await }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            for ending in endings {
                match ending {
                    Ending::Deleted(size) => {
                        report.deleted += 1;
                        report.bytes_freed += size;
                    }
                    Ending::Kept => report.kept_by_writer += 1,
                }
            }
        }
        report.uploads_purged = self.purge_uploads(options.upload_idle).await?;
        tracing::info!(
            deleted = report.deleted,
            kept_by_writer = report.kept_by_writer,
            bytes_freed = report.bytes_freed,
            uploads_purged = report.uploads_purged,
            "gc: done"
        );
        Ok(report)
    }

    /// A `marked` claim on a candidate: created, or taken over when stale. `None` when another
    /// run holds it (or a writer cleared it lately).
    async fn claim(
        &self,
        digest: &Digest,
        stale_before: i64,
    ) -> Result<Option<UpdateVersion>, BucketError> {
        let path = self.claim_path(digest);
        match self
            .write_claim(&path, ClaimState::Marked, PutMode::Create)
            .await
        {
            Ok(version) => return Ok(Some(version)),
            Err(error) if is_conflict(&error) => {}
            Err(error) => return Err(store_error("creating gc claim", &path)(error)),
        }
        let Some(claim) = self.read_claim(&path).await? else {
            // Its owner just removed it; the next run may claim it.
            return Ok(None);
        };
        if claim.written_ms >= stale_before {
            tracing::debug!(%digest, state = ?claim.state, "gc: claimed by another run, skipped");
            return Ok(None);
        }
        if claim.state == ClaimState::Deleting {
            // Finished below as a leftover by the next run; a run that took it over now
            // would delete the blob without the second mark.
            return Ok(None);
        }
        self.take_over(&path, claim.version, ClaimState::Marked)
            .await
    }

    /// Moves a claim from the version read to `state`, owned by this run: `None` when another
    /// writer changed it first.
    async fn take_over(
        &self,
        path: &Path,
        version: UpdateVersion,
        state: ClaimState,
    ) -> Result<Option<UpdateVersion>, BucketError> {
        match self
            .write_claim(path, state, PutMode::Update(version))
            .await
        {
            Ok(version) => Ok(Some(version)),
            Err(error) if lost(&error) => Ok(None),
            Err(error) => Err(store_error("taking over gc claim", path)(error)),
        }
    }

    /// After the second mark: keeps a live candidate, else deletes it if the CAS to
    /// `deleting` lands.
    async fn settle(&self, held: Held, live: bool) -> Result<Ending, BucketError> {
        let path = self.claim_path(&held.digest);
        if live {
            tracing::debug!(digest = %held.digest, "gc: referenced meanwhile, kept");
            // Removed only right after a CAS of ours lands: since the claim was written, the
            // second mark took long enough for another run to take it over.
            if self
                .take_over(&path, held.version, ClaimState::Cleared)
                .await?
                .is_some()
            {
                self.delete_object(&path, "removing gc claim").await?;
            }
            return Ok(Ending::Kept);
        }
        match self
            .write_claim(&path, ClaimState::Deleting, PutMode::Update(held.version))
            .await
        {
            Ok(_) => {}
            Err(error) if lost(&error) => {
                tracing::debug!(digest = %held.digest, "gc: a writer cleared the claim, kept");
                return Ok(Ending::Kept);
            }
            Err(error) => return Err(store_error("moving gc claim to deleting", &path)(error)),
        }
        self.delete_claimed_blob(&held.digest, &path).await?;
        tracing::debug!(digest = %held.digest, size = held.size, "gc: deleted");
        Ok(Ending::Deleted(held.size))
    }

    /// A stale claim: taken over, then removed (a candidate is claimed afresh after); a
    /// `deleting` one whose blob is not live is finished (blob, then claim). The bytes
    /// freed, if a blob went.
    async fn clean_stale_claim(
        &self,
        digest: &Digest,
        live: bool,
        stale_before: i64,
    ) -> Result<Option<u64>, BucketError> {
        let path = self.claim_path(digest);
        let Some(claim) = self.read_claim(&path).await? else {
            return Ok(None);
        };
        if claim.written_ms >= stale_before {
            return Ok(None);
        }
        let finish = claim.state == ClaimState::Deleting && !live;
        let state = if finish {
            ClaimState::Deleting
        } else {
            ClaimState::Marked
        };
        if self.take_over(&path, claim.version, state).await?.is_none() {
            return Ok(None);
        }
        if !finish {
            self.delete_object(&path, "removing gc claim").await?;
            return Ok(None);
        }
        let size = self.stat_blob(digest).await?.map(|stat| stat.size);
        self.delete_claimed_blob(digest, &path).await?;
        tracing::info!(%digest, "gc: finished a deletion a previous run left");
        Ok(size)
    }

    /// The blob, then its `deleting` claim (that order: a writer waiting for the claim to go
    /// writes the blob anew only after the delete).
    async fn delete_claimed_blob(&self, digest: &Digest, claim: &Path) -> Result<(), BucketError> {
        let blob = self.blob_path(digest);
        match self.store.delete(&blob).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(store_error("deleting blob", &blob)(error)),
        }
        match self.store.delete(claim).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(store_error("removing gc claim", claim)(error)),
        }
    }

    /// Every digest reachable from a tag, manifest link or referrer link.
    async fn mark(&self) -> Result<HashSet<Digest>, BucketError> {
        let prefix = self.path(["repositories"]);
        let objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(store_error("listing repositories under", &prefix))?;
        let mut tags = Vec::new();
        let mut manifests = Vec::new();
        for meta in objects {
            let Some(parts) = meta.location.prefix_match(&prefix) else {
                continue;
            };
            let parts: Vec<String> = parts.map(|part| part.as_ref().to_owned()).collect();
            match classify(&parts) {
                Some(Root::Manifest(digest)) => manifests.push(digest),
                Some(Root::Tag) => tags.push(meta.location),
                None => {}
            }
        }
        let tagged: Vec<Vec<Digest>> = futures_util::stream::iter(tags)
            .map(|path| async move { self.tag_targets(&path).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        manifests.extend(tagged.into_iter().flatten());

        let mut live: HashSet<Digest> = HashSet::new();
        let mut frontier: Vec<Digest> = manifests
            .into_iter()
            .filter(|digest| live.insert(digest.clone()))
            .collect();
        while !frontier.is_empty() {
            let children: Vec<Vec<Child>> = futures_util::stream::iter(frontier)
                .map(|digest| async move { self.manifest_children(&digest).await })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            frontier = Vec::new();
            for child in children.into_iter().flatten() {
                let (digest, is_manifest) = match child {
                    Child::Manifest(digest) => (digest, true),
                    Child::Blob(digest) => (digest, false),
                };
                if live.insert(digest.clone()) && is_manifest {
                    frontier.push(digest);
                }
            }
        }
        Ok(live)
    }

    /// The digests a tag object names: its text is a digest, or JSON naming some.
    async fn tag_targets(&self, path: &Path) -> Result<Vec<Digest>, BucketError> {
        let bytes = match self.store.get_opts(path, GetOptions::default()).await {
            Ok(result) => result
                .bytes()
                .await
                .map_err(store_error("reading tag", path))?,
            // Deleted since the listing.
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(error) => return Err(store_error("reading tag", path)(error)),
        };
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(digest) = text.trim().parse::<Digest>() {
            return Ok(vec![digest]);
        }
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(value) => {
                let mut digests = Vec::new();
                collect_digests(&value, &mut digests);
                Ok(digests)
            }
            Err(_) => {
                tracing::warn!(%path, "gc: a tag that names no digest, ignored");
                Ok(Vec::new())
            }
        }
    }

    /// What a manifest blob points to; nothing when it is missing or too big for a manifest.
    async fn manifest_children(&self, digest: &Digest) -> Result<Vec<Child>, BucketError> {
        let read = match self.get_blob(digest, None).await {
            Ok(read) => read,
            Err(BucketError::NotFound { .. }) => {
                tracing::warn!(%digest, "gc: a linked manifest is not stored");
                return Ok(Vec::new());
            }
            Err(error) => return Err(error),
        };
        if read.size > MAX_MANIFEST_SIZE {
            tracing::warn!(%digest, size = read.size, "gc: a linked blob too big for a manifest, kept as is");
            return Ok(Vec::new());
        }
        let parts: Vec<bytes::Bytes> = read.stream.try_collect().await?;
        let bytes = parts.concat();
        Ok(match ManifestDocument::parse(&bytes, None) {
            Ok((_, ManifestDocument::Image(manifest))) => std::iter::once(&manifest.config)
                .chain(&manifest.layers)
                .map(|child| Child::Blob(child.digest.clone()))
                .chain(
                    manifest
                        .subject
                        .iter()
                        .map(|s| Child::Manifest(s.digest.clone())),
                )
                .collect(),
            Ok((_, ManifestDocument::Index(index))) => index
                .manifests
                .iter()
                .chain(&index.subject)
                .map(|child| Child::Manifest(child.digest.clone()))
                .collect(),
            Err(error) => {
                // Keep whatever it names; follow nothing further.
                let mut digests = Vec::new();
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    collect_digests(&value, &mut digests);
                }
                tracing::warn!(%digest, error = %ErrorChain(&error), named = digests.len(),
                    "gc: a linked blob that is no manifest; every digest it names is kept");
                digests.into_iter().map(Child::Manifest).collect()
            }
        })
    }

    /// Every blob with its metadata.
    async fn list_blobs(&self) -> Result<HashMap<Digest, ObjectMeta>, BucketError> {
        self.list_digests(self.path(["blobs"]), "listing blobs under")
            .await
    }

    /// Every claim with its metadata.
    async fn list_claims(&self) -> Result<HashMap<Digest, ObjectMeta>, BucketError> {
        self.list_digests(self.path(["gc", "claims"]), "listing gc claims under")
            .await
    }

    /// Objects named `<prefix>/<alg>/<hex>`, by digest (others are skipped).
    async fn list_digests(
        &self,
        prefix: Path,
        operation: &'static str,
    ) -> Result<HashMap<Digest, ObjectMeta>, BucketError> {
        let objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(store_error(operation, &prefix))?;
        Ok(objects
            .into_iter()
            .filter_map(|meta| {
                let digest = {
                    let mut parts = meta.location.prefix_match(&prefix)?;
                    let (alg, hex) = (parts.next()?, parts.next()?);
                    if parts.next().is_some() {
                        return None;
                    }
                    format!("{}:{}", alg.as_ref(), hex.as_ref()).parse().ok()?
                };
                Some((digest, meta))
            })
            .collect())
    }

    /// Now on the storage's clock (ms since the epoch): the `Last-Modified` of `gc/clock`,
    /// written just now.
    async fn storage_now(&self) -> Result<i64, BucketError> {
        let path = self.path(["gc", "clock"]);
        self.store
            .put(
                &path,
                PutPayload::from_static(b"the last gc run started at this object's time"),
            )
            .await
            .map_err(store_error("writing", &path))?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(store_error("stat", &path))?;
        Ok(meta.last_modified.timestamp_millis())
    }

    async fn read_claim(&self, path: &Path) -> Result<Option<Claim>, BucketError> {
        let result = match self.store.get_opts(path, GetOptions::default()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(store_error("reading gc claim", path)(error)),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let written_ms = result.meta.last_modified.timestamp_millis();
        let bytes = result
            .bytes()
            .await
            .map_err(store_error("reading gc claim", path))?;
        let doc: ClaimDoc =
            serde_json::from_slice(&bytes).map_err(|error| BucketError::Corrupt {
                what: "gc claim",
                path: path.to_string(),
                reason: format!(
                    "expected {{\"state\": \"marked\"|\"cleared\"|\"deleting\", \"run\": …}}: {}",
                    ErrorChain(&error)
                ),
            })?;
        Ok(Some(Claim {
            state: doc.state,
            version,
            written_ms,
        }))
    }

    /// Writes a claim document (a fresh random `run`) with `mode`; its new version.
    async fn write_claim(
        &self,
        path: &Path,
        state: ClaimState,
        mode: PutMode,
    ) -> Result<UpdateVersion, object_store::Error> {
        let mut run = [0u8; 8];
        getrandom::fill(&mut run).map_err(|error| object_store::Error::Generic {
            store: "bucket",
            source: format!("no randomness for a gc claim: {}", ErrorChain(&error)).into(),
        })?;
        let doc = ClaimDoc {
            state,
            run: hex::encode(run),
        };
        self.write_json(path, &doc, mode).await
    }

    /// `gc/claims/<alg>/<hex>`.
    fn claim_path(&self, digest: &Digest) -> Path {
        self.path(["gc", "claims", digest.algorithm().name(), digest.hex()])
    }

    async fn present_or_absent(&self, digest: &Digest) -> Result<Reference, BucketError> {
        Ok(match self.stat_blob(digest).await? {
            Some(stat) => Reference::Present(stat),
            None => Reference::Absent,
        })
    }
}

/// What a key under `repositories/` is to the mark.
enum Root {
    /// A manifest or referrer link: the manifest it names.
    Manifest(Digest),
    /// A tag object (read for its digest).
    Tag,
}

/// A digest a manifest names.
enum Child {
    /// Followed further.
    Manifest(Digest),
    /// A leaf.
    Blob(Digest),
}

/// Classifies the parts of a key after `repositories/` (repository names hold slashes, so
/// from the end): `…/manifests/<alg>/<hex>`, `…/referrers/<alg>/<hex>/<alg>-<hex>`,
/// `…/tags/<tag>`.
fn classify(parts: &[String]) -> Option<Root> {
    let n = parts.len();
    if n >= 4
        && parts[n - 3] == "manifests"
        && let Ok(digest) = format!("{}:{}", parts[n - 2], parts[n - 1]).parse()
    {
        return Some(Root::Manifest(digest));
    }
    if n >= 5
        && parts[n - 4] == "referrers"
        && let Some((alg, hex)) = parts[n - 1].split_once('-')
        && let Ok(digest) = format!("{alg}:{hex}").parse()
    {
        return Some(Root::Manifest(digest));
    }
    if n >= 3 && parts[n - 2] == "tags" {
        return Some(Root::Tag);
    }
    None
}

/// Every string in a JSON document that parses as a digest.
fn collect_digests(value: &serde_json::Value, into: &mut Vec<Digest>) {
    match value {
        serde_json::Value::String(text) => {
            if let Ok(digest) = text.parse() {
                into.push(digest);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_digests(item, into);
            }
        }
        serde_json::Value::Object(fields) => {
            for item in fields.values() {
                collect_digests(item, into);
            }
        }
        _ => {}
    }
}

/// A conditional write that lost: another version landed, or the object is gone.
fn lost(error: &object_store::Error) -> bool {
    is_conflict(error) || matches!(error, object_store::Error::NotFound { .. })
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
