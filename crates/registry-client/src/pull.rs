//! Pull: registry → store, all or nothing.
//!
//! The manifests are fetched first (byte-exact, verified, at most 4 MiB each): the top one
//! by tag or digest, then for an index the entries of the selected platforms. The blobs
//! those manifests need are then streamed straight into one [`Ingest`] by
//! `max_concurrency` worker threads: each reads the HTTP body chunk by chunk through a
//! [`BlobReader`] (an [`std::io::Read`] that drives the async response on the tokio
//! runtime), so memory stays flat whatever the layer size, and the store hashes while it
//! writes. A connection that breaks mid-blob is resumed by the reader itself with
//! `Range: bytes=N-`: the bytes already staged are kept. Only when everything is staged and
//! verified does [`Ingest::commit`] add the blobs and name the image; a failure anywhere
//! leaves the store as it was.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Buf, Bytes};
use sealer_fs_abstraction::{ErrorChain, error_chain};
use sealer_image_store::model::ManifestError;
use sealer_image_store::{
    CommitReport, Descriptor, Digest, Ingest, Manifest, ManifestDocument, Platform, Reference,
    Store, StoreError, choose_platform, is_manifest_type, platforms_of,
};
use tokio::runtime::Handle;

use crate::client::{ClientError, FetchedManifest, RegistryClient, Scope};
use crate::fetch::BlobDownload;
use crate::progress::{BlobOutcome, TransferProgress};

/// Indexes nested deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;

/// Which platforms of a multi-arch image to pull.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlatformSelection {
    /// The platform this program runs on.
    #[default]
    Host,
    /// One platform (`os/arch[/variant]`); an unset variant matches the default one.
    Only(Platform),
    /// Every platform.
    All,
}

/// Why a pull failed. The store is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A registry request failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The store refused content (digest or size mismatch, missing blob) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest could not be parsed.
    #[error("manifest {digest}")]
    Manifest {
        /// The manifest's digest.
        digest: Digest,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A manifest's size differs from its descriptor's.
    #[error("manifest {digest} has {actual} bytes, its index says {expected}")]
    ManifestSize {
        /// The manifest.
        digest: Digest,
        /// The size in the index.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// The image has no manifest for the requested platform.
    #[error("{reference} has no {platform} image; it has: {available}")]
    PlatformNotFound {
        /// The image.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// The platforms it has.
        available: String,
    },
    /// Indexes nested too deeply.
    #[error("{0}: indexes nested too deeply")]
    TooDeep(String),
    /// A blob's download failed.
    #[error("blob {digest}")]
    Blob {
        /// The blob.
        digest: Digest,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// Pull was called outside a tokio runtime.
    #[error("pull needs a tokio runtime")]
    Runtime,
    /// Another blob's failure stopped this one.
    #[error("cancelled after another transfer failed")]
    Cancelled,
}

/// What [`RegistryClient::pull`] did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The image, as named in the store.
    pub reference: Reference,
    /// The digest of the top manifest or index (the image's multi-arch digest).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The platforms whose images were fetched (empty for a single-platform image).
    pub platforms: Vec<Platform>,
    /// Manifests and indexes fetched.
    pub manifests: usize,
    /// Blobs downloaded.
    pub blobs_fetched: usize,
    /// Bytes of the blobs downloaded.
    pub bytes_fetched: u64,
    /// Blobs that were already in the store.
    pub blobs_present: usize,
    /// Times a download resumed after its connection broke.
    pub resumes: u32,
    /// What the commit added.
    pub commit: CommitReport,
}

#[derive(Debug, Default)]
struct Stats {
    fetched: usize,
    bytes: u64,
    present: usize,
    resumes: u32,
}

impl RegistryClient {
    /// Pulls `reference` into `store`: the manifests (the index too, so a multi-arch image
    /// keeps its digest even when only some platforms are fetched) and every blob of the
    /// selected platforms not already stored, then names the image `reference` (a
    /// digest-only reference adds an unnamed entry). All or nothing.
    ///
    /// Runs on any tokio runtime: the blob workers, which block (they write to disk), run
    /// on its blocking pool.
    pub async fn pull(
        &self,
        store: &Store,
        reference: &Reference,
        platforms: PlatformSelection,
        progress: &dyn TransferProgress,
    ) -> Result<PullReport, PullError> {
        let handle = Handle::try_current().map_err(|_| PullError::Runtime)?;
        let registry = reference.registry();
        let repository = reference.repository();
        let scope = Scope::pull(repository);
        let target = match (reference.digest(), reference.tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        let top = self
            .fetch_manifest(registry, repository, &target, reference.digest(), &scope)
            .await?;
        let (top_type, top_document) = parse(&top, None)?;
        let top_descriptor =
            Descriptor::new(top_type.clone(), top.digest.clone(), top.bytes.len() as u64);
        tracing::info!(%reference, digest = %top.digest, media_type = %top_type, "resolved");

        let mut manifests = vec![top.clone()];
        let mut images: Vec<Manifest> = Vec::new();
        let mut chosen = Vec::new();
        let mut pending = vec![(top_document, 0)];
        while let Some((document, depth)) = pending.pop() {
            let index = match document {
                ManifestDocument::Image(manifest) => {
                    images.push(*manifest);
                    continue;
                }
                ManifestDocument::Index(index) => index,
            };
            if depth >= MAX_INDEX_DEPTH {
                return Err(PullError::TooDeep(reference.to_string()));
            }
            let entries: Vec<Descriptor> = match &platforms {
                PlatformSelection::All => index
                    .manifests
                    .iter()
                    .filter(|entry| is_manifest_type(&entry.media_type))
                    .cloned()
                    .collect(),
                PlatformSelection::Host | PlatformSelection::Only(_) => {
                    let wanted = match &platforms {
                        PlatformSelection::Only(platform) => platform.clone(),
                        _ => Platform::host(),
                    };
                    let entry = choose_platform(&index, &wanted).ok_or_else(|| {
                        PullError::PlatformNotFound {
                            reference: reference.to_string(),
                            platform: wanted.to_string(),
                            available: platforms_of(&index),
                        }
                    })?;
                    vec![entry.clone()]
                }
            };
            for entry in entries {
                let fetched = self
                    .fetch_manifest(
                        registry,
                        repository,
                        &entry.digest.to_string(),
                        Some(&entry.digest),
                        &scope,
                    )
                    .await?;
                if fetched.bytes.len() as u64 != entry.size {
                    return Err(PullError::ManifestSize {
                        digest: entry.digest,
                        expected: entry.size,
                        actual: fetched.bytes.len() as u64,
                    });
                }
                let (_, document) = parse(&fetched, Some(&entry.media_type))?;
                chosen.extend(entry.platform.clone());
                manifests.push(fetched);
                pending.push((document, depth + 1));
            }
        }

        let mut seen = BTreeSet::new();
        let blobs: Vec<Descriptor> = images
            .iter()
            .flat_map(|manifest| std::iter::once(&manifest.config).chain(&manifest.layers))
            .filter(|blob| seen.insert(blob.digest.clone()))
            .cloned()
            .collect();
        tracing::info!(%reference, manifests = manifests.len(), blobs = blobs.len(), "fetching blobs");

        let manifest_count = manifests.len();
        let job = StagingJob {
            handle,
            store: store.clone(),
            reference: reference.clone(),
            manifests,
            blobs,
            top: top_descriptor,
        };
        let (commit, stats) = self.stage_in_background(job, progress).await?;
        Ok(PullReport {
            reference: reference.clone(),
            digest: top.digest,
            media_type: top_type,
            platforms: chosen,
            manifests: manifest_count,
            blobs_fetched: stats.fetched,
            bytes_fetched: stats.bytes,
            blobs_present: stats.present,
            resumes: stats.resumes,
            commit,
        })
    }

    /// Runs [`Self::stage`] on the runtime's blocking pool and hands its progress to
    /// `progress` here, as it comes. Dropping the pull stops the workers and commits
    /// nothing.
    async fn stage_in_background(
        &self,
        job: StagingJob,
        progress: &dyn TransferProgress,
    ) -> Result<(CommitReport, Stats), PullError> {
        let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let _stop_when_dropped = CancelOnDrop(Arc::clone(&cancel));
        let client = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let forward = ForwardProgress(sender);
            client.stage(&Staging {
                handle: &job.handle,
                store: &job.store,
                reference: &job.reference,
                manifests: &job.manifests,
                blobs: &job.blobs,
                top: &job.top,
                progress: &forward,
                cancel: &cancel,
            })
        });
        // The sender goes with the blocking task: the events end when it does.
        while let Some(event) = events.recv().await {
            event.deliver(progress);
        }
        match task.await {
            Ok(staged) => staged,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // The runtime shut down before the task ran.
            Err(_) => Err(PullError::Cancelled),
        }
    }

    /// The blocking half of a pull: stage manifests and blobs, then commit.
    fn stage(&self, job: &Staging<'_>) -> Result<(CommitReport, Stats), PullError> {
        let ingest = job.store.begin_ingest()?;
        for manifest in job.manifests {
            ingest.put(
                &manifest.digest,
                Some(manifest.bytes.len() as u64),
                &mut &manifest.bytes[..],
            )?;
        }
        let queue = Mutex::new(job.blobs.iter().collect::<VecDeque<_>>());
        let cancel = job.cancel;
        let first_error: Mutex<Option<PullError>> = Mutex::new(None);
        let stats = Mutex::new(Stats::default());
        let workers = self
            .inner
            .options
            .max_concurrency
            .clamp(1, 64)
            .min(job.blobs.len().max(1));
        std::thread::scope(|threads| {
            for _ in 0..workers {
                threads.spawn(|| {
                    while !cancel.load(Ordering::Relaxed) {
                        let next = queue
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .pop_front();
                        let Some(blob) = next else { break };
                        match self.fetch_blob(job, &ingest, blob, cancel) {
                            Ok(done) => {
                                let mut stats =
                                    stats.lock().unwrap_or_else(PoisonError::into_inner);
                                stats.fetched += done.fetched;
                                stats.bytes += done.bytes;
                                stats.present += done.present;
                                stats.resumes += done.resumes;
                            }
                            Err(error) => {
                                cancel.store(true, Ordering::Relaxed);
                                let mut first =
                                    first_error.lock().unwrap_or_else(PoisonError::into_inner);
                                if first.is_none() && !matches!(error, PullError::Cancelled) {
                                    *first = Some(error);
                                }
                                break;
                            }
                        }
                    }
                });
            }
        });
        if let Some(error) = first_error
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            return Err(error);
        }
        if cancel.load(Ordering::Relaxed) {
            // The pull was dropped: nothing is committed.
            return Err(PullError::Cancelled);
        }
        let commit = ingest.commit(&[(Some(job.reference.clone()), job.top.clone())])?;
        Ok((
            commit,
            stats.into_inner().unwrap_or_else(PoisonError::into_inner),
        ))
    }

    /// Downloads one blob into the ingest (run on a worker thread), retrying the whole blob
    /// when a resume is impossible.
    fn fetch_blob(
        &self,
        job: &Staging<'_>,
        ingest: &Ingest<'_>,
        blob: &Descriptor,
        cancel: &AtomicBool,
    ) -> Result<Stats, PullError> {
        let digest = &blob.digest;
        // A stored copy of the wrong size (truncated) is fetched again and replaced.
        if ingest.present(digest, blob.size)? {
            job.progress
                .blob_finished(digest, BlobOutcome::AlreadyPresent);
            return Ok(Stats {
                present: 1,
                ..Stats::default()
            });
        }
        job.progress.blob_started(digest, blob.size);
        let policy = &self.inner.options.retries;
        let mut resumes = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut reader = BlobReader {
                client: self,
                job,
                digest,
                size: blob.size,
                cancel,
                download: None,
                pending: Bytes::new(),
                offset: 0,
                resumes: 0,
                failure: None,
            };
            let result = ingest.put(digest, Some(blob.size), &mut reader);
            resumes += reader.resumes;
            let failure = reader.failure.take();
            match (result, failure) {
                (Ok(_), _) => {
                    job.progress.blob_finished(digest, BlobOutcome::Transferred);
                    tracing::debug!(%digest, size = blob.size, resumes, "blob fetched");
                    return Ok(Stats {
                        fetched: 1,
                        bytes: blob.size,
                        resumes,
                        ..Stats::default()
                    });
                }
                (Err(_), Some(ReadFailure::Cancelled)) => return Err(PullError::Cancelled),
                (Err(_), Some(ReadFailure::Restart(error))) if attempt < policy.max_attempts => {
                    tracing::warn!(%digest, error = %ErrorChain(&error), "restarting the blob from its start");
                    job.progress.blob_restarted(digest, 0);
                    job.handle
                        .block_on(async { tokio::time::sleep(policy.backoff(attempt)).await });
                }
                (Err(_), Some(ReadFailure::Restart(source) | ReadFailure::Fatal(source))) => {
                    job.progress.blob_finished(digest, BlobOutcome::Failed);
                    return Err(PullError::Blob {
                        digest: digest.clone(),
                        source,
                    });
                }
                (Err(error), None) => {
                    job.progress.blob_finished(digest, BlobOutcome::Failed);
                    return Err(error.into());
                }
            }
        }
    }
}

/// What the blocking half of a pull works on.
struct Staging<'a> {
    handle: &'a Handle,
    store: &'a Store,
    reference: &'a Reference,
    manifests: &'a [FetchedManifest],
    blobs: &'a [Descriptor],
    top: &'a Descriptor,
    progress: &'a dyn TransferProgress,
    /// Set when a worker fails or the pull is dropped: the others stop.
    cancel: &'a AtomicBool,
}

/// What a [`Staging`] borrows, owned, to move onto the blocking pool.
struct StagingJob {
    handle: Handle,
    store: Store,
    reference: Reference,
    manifests: Vec<FetchedManifest>,
    blobs: Vec<Descriptor>,
    top: Descriptor,
}

/// Sets the flag when dropped (a pull's future dropped before its staging ended).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A progress call made on the blocking pool, delivered on the pull's task.
enum ProgressEvent {
    Started(Digest, u64),
    Advanced(Digest, u64),
    Restarted(Digest, u64),
    Finished(Digest, BlobOutcome),
}

impl ProgressEvent {
    fn deliver(self, progress: &dyn TransferProgress) {
        match self {
            Self::Started(digest, size) => progress.blob_started(&digest, size),
            Self::Advanced(digest, bytes) => progress.blob_advanced(&digest, bytes),
            Self::Restarted(digest, offset) => progress.blob_restarted(&digest, offset),
            Self::Finished(digest, outcome) => progress.blob_finished(&digest, outcome),
        }
    }
}

/// Forwards progress from the blocking pool to the pull's task (which may be gone: then
/// nobody listens).
struct ForwardProgress(tokio::sync::mpsc::UnboundedSender<ProgressEvent>);

impl TransferProgress for ForwardProgress {
    fn blob_started(&self, digest: &Digest, size: u64) {
        let _ = self.0.send(ProgressEvent::Started(digest.clone(), size));
    }

    fn blob_advanced(&self, digest: &Digest, bytes: u64) {
        let _ = self.0.send(ProgressEvent::Advanced(digest.clone(), bytes));
    }

    fn blob_restarted(&self, digest: &Digest, offset: u64) {
        let _ = self
            .0
            .send(ProgressEvent::Restarted(digest.clone(), offset));
    }

    fn blob_finished(&self, digest: &Digest, outcome: BlobOutcome) {
        let _ = self
            .0
            .send(ProgressEvent::Finished(digest.clone(), outcome));
    }
}

fn parse(
    manifest: &FetchedManifest,
    declared: Option<&str>,
) -> Result<(String, ManifestDocument), PullError> {
    let declared = declared.or(manifest.content_type.as_deref());
    ManifestDocument::parse(&manifest.bytes, declared).map_err(|source| PullError::Manifest {
        digest: manifest.digest.clone(),
        source,
    })
}

/// Why a [`BlobReader`] stopped.
enum ReadFailure {
    /// The download cannot go on from where it is; starting the blob again may work.
    Restart(ClientError),
    /// The download failed for good.
    Fatal(ClientError),
    /// Another transfer failed.
    Cancelled,
}

impl ReadFailure {
    /// What a failed [`BlobDownload`] means for the blob: a broken transfer (its resumes used
    /// up, a range the registry cannot serve, a body of the wrong length) may work from the
    /// start; a refusal (404, 401, …) will not.
    fn of(error: ClientError) -> Self {
        match &error {
            ClientError::Transport { .. } | ClientError::Protocol { .. } => Self::Restart(error),
            ClientError::Status { status: 416, .. } => Self::Restart(error),
            _ => Self::Fatal(error),
        }
    }
}

/// An [`io::Read`] over a [`BlobDownload`] (which resumes with `Range` after a broken
/// connection), fed to [`Ingest::put`] from a worker thread that drives the download on the
/// runtime. Exactly `size` bytes are delivered; the store checks the digest.
struct BlobReader<'a> {
    client: &'a RegistryClient,
    job: &'a Staging<'a>,
    digest: &'a Digest,
    size: u64,
    cancel: &'a AtomicBool,
    /// Opened on the first read.
    download: Option<BlobDownload>,
    pending: Bytes,
    /// Bytes delivered so far.
    offset: u64,
    resumes: u32,
    failure: Option<ReadFailure>,
}

impl BlobReader<'_> {
    fn fail(&mut self, failure: ReadFailure) -> io::Error {
        let message = match &failure {
            ReadFailure::Restart(error) | ReadFailure::Fatal(error) => error_chain(&error),
            ReadFailure::Cancelled => "cancelled".to_owned(),
        };
        self.failure = Some(failure);
        io::Error::other(message)
    }

    /// The next bytes of the blob (`None` at the end of the body).
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        let download = match &mut self.download {
            Some(download) => download,
            None => {
                let reference = self.job.reference;
                let download = self
                    .client
                    .get_blob(reference.registry(), reference.repository(), self.digest, 0)
                    .await?;
                self.download.insert(download)
            }
        };
        let resumes = download.resumes();
        let chunk = download.chunk().await;
        if download.resumes() > resumes {
            self.resumes += download.resumes() - resumes;
            self.job.progress.blob_restarted(self.digest, self.offset);
        }
        chunk
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(self.fail(ReadFailure::Cancelled));
            }
            if !self.pending.is_empty() {
                let count = buf.len().min(self.pending.len());
                buf[..count].copy_from_slice(&self.pending[..count]);
                self.pending.advance(count);
                self.offset += count as u64;
                self.job.progress.blob_advanced(self.digest, count as u64);
                return Ok(count);
            }
            if self.offset >= self.size || buf.is_empty() {
                return Ok(0);
            }
            let handle = self.job.handle;
            match handle.block_on(self.next_chunk()) {
                Ok(Some(mut chunk)) => {
                    let wanted = self.size - self.offset;
                    if chunk.len() as u64 > wanted {
                        chunk.truncate(wanted as usize);
                    }
                    self.pending = chunk;
                }
                Ok(None) => {
                    let error = ClientError::Protocol {
                        url: format!("blob {}", self.digest),
                        reason: format!(
                            "the registry's blob ended after {} of {} bytes",
                            self.offset, self.size
                        ),
                    };
                    return Err(self.fail(ReadFailure::Restart(error)));
                }
                Err(error) => return Err(self.fail(ReadFailure::of(error))),
            }
        }
    }
}
