//! Push: store → registry.
//!
//! Every blob of the image (of every platform, for a multi-arch image) is checked with
//! `HEAD` and skipped when the registry has it; otherwise it is mounted from the repository
//! the local image was named after when that is on the same registry
//! (`POST …/blobs/uploads/?mount=<digest>&from=<repo>`), or uploaded: in one `PUT` when it
//! is small, else as one streamed `PATCH` (or `PATCH` chunks with `Content-Range`) and a
//! closing `PUT ?digest=`. Blobs are read from the store in 1 MiB pieces and hashed on the
//! way out: a blob corrupted on disk is never finalised. Then the manifests go up exactly
//! as stored, children first (platform manifests before their index), and the registry's
//! `Docker-Content-Digest` is checked against the digest of the bytes sent.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt as _;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode, Url};
use sealer_fs_abstraction::{ErrorChain, error_chain};
use sealer_image_store::{
    BlobStore, Descriptor, Digest, Hasher, Manifest, ManifestDocument, Reference, Store, StoreError,
};

use crate::client::{
    Body, ClientError, DOCKER_CONTENT_DIGEST, RegistryClient, Request, Scope, status_error,
};
use crate::progress::{BlobOutcome, TransferProgress};

/// Size of the pieces blobs are read from the store in.
const READ_PIECE: usize = 1 << 20;
/// Nested indexes deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;

/// Why a push failed. Blobs already uploaded stay in the registry (they are harmless and
/// make a retry faster); the tag is written last, so it never names an incomplete image.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A registry request failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The store could not provide the image (a stored manifest that does not parse is
    /// [`StoreError::Manifest`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Some platforms of a multi-arch image are not in the store.
    #[error(
        "{image}: {missing} of its platform images are not in the store (it was pulled for one platform); pull it with --all-platforms to push it"
    )]
    PartialImage {
        /// The image.
        image: String,
        /// How many platform manifests are absent.
        missing: usize,
    },
    /// The registry reports another digest than the one of the bytes sent.
    #[error("{what}: the registry reports digest {actual}, the content's is {expected}")]
    DigestMismatch {
        /// What was pushed.
        what: String,
        /// The content's digest.
        expected: Digest,
        /// What the registry said.
        actual: String,
    },
    /// A blob's upload failed.
    #[error("blob {digest}")]
    Blob {
        /// The blob.
        digest: Digest,
        /// Why.
        #[source]
        source: Box<PushError>,
    },
    /// Indexes nested too deeply.
    #[error("{0}: indexes nested too deeply")]
    TooDeep(String),
    /// A background task failed.
    #[error("{0}")]
    Runtime(String),
}

/// What [`RegistryClient::push`] did.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// Where the image went.
    pub destination: Reference,
    /// The digest of the top manifest or index, as the registry confirmed it.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Manifests and indexes put.
    pub manifests: usize,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Bytes of those blobs.
    pub bytes_uploaded: u64,
    /// Blobs mounted from another repository of the registry.
    pub blobs_mounted: usize,
    /// Blobs the registry already had.
    pub blobs_existing: usize,
}

/// A manifest to put: its descriptor (media type and digest) and exact bytes.
struct Document {
    descriptor: Descriptor,
    bytes: Vec<u8>,
}

impl RegistryClient {
    /// Pushes the stored image `source` (a name, digest or short id, as `sealer images`
    /// shows) to `destination`. Blobs are mounted from the repository `source` is named
    /// after when it is on the destination registry. A multi-arch image must be complete in
    /// the store. Returns the digest the registry confirmed.
    pub async fn push(
        &self,
        store: &Store,
        source: &str,
        destination: &Reference,
        progress: &dyn TransferProgress,
    ) -> Result<PushReport, PushError> {
        let entry = store.lookup(source)?;
        let mut children = Vec::new();
        let mut images = Vec::new();
        let top = self.collect(
            store,
            &entry.descriptor,
            0,
            &mut children,
            &mut images,
            source,
        )?;
        let registry = destination.registry();
        let repository = destination.repository();
        let mount_from = entry
            .name
            .as_deref()
            .and_then(|name| name.parse::<Reference>().ok())
            .filter(|name| name.registry() == registry && name.repository() != repository)
            .map(|name| name.repository().to_owned());
        let scope = Scope::push(repository, mount_from.as_deref());

        let mut seen = BTreeSet::new();
        let blobs: Vec<&Descriptor> = images
            .iter()
            .flat_map(|manifest: &Manifest| {
                std::iter::once(&manifest.config).chain(&manifest.layers)
            })
            .filter(|blob| seen.insert(blob.digest.clone()))
            .collect();
        tracing::info!(
            %destination,
            blobs = blobs.len(),
            manifests = children.len() + 1,
            mount_from = mount_from.as_deref().unwrap_or(""),
            "pushing"
        );

        let mut report = PushReport {
            destination: destination.clone(),
            digest: top.descriptor.digest.clone(),
            media_type: top.descriptor.media_type.clone(),
            manifests: 0,
            blobs_uploaded: 0,
            bytes_uploaded: 0,
            blobs_mounted: 0,
            blobs_existing: 0,
        };
        let target = BlobTarget {
            store,
            registry,
            repository,
            mount_from: mount_from.as_deref(),
            scope: &scope,
            progress,
        };
        let concurrency = self.inner.options.max_concurrency.clamp(1, 64);
        let mut uploads = futures_util::stream::iter(blobs.iter().map(|blob| async {
            let outcome = self.push_blob(target, blob).await;
            match &outcome {
                Ok(done) => progress.blob_finished(&blob.digest, *done),
                Err(_) => progress.blob_finished(&blob.digest, BlobOutcome::Failed),
            }
            outcome
                .map(|done| (done, blob.size))
                .map_err(|error| PushError::Blob {
                    digest: blob.digest.clone(),
                    source: Box::new(error),
                })
        }))
        .buffer_unordered(concurrency);
        while let Some(result) = uploads.next().await {
            let (outcome, size) = result?;
            match outcome {
                BlobOutcome::Transferred => {
                    report.blobs_uploaded += 1;
                    report.bytes_uploaded += size;
                }
                BlobOutcome::Mounted => report.blobs_mounted += 1,
                BlobOutcome::AlreadyPresent => report.blobs_existing += 1,
                BlobOutcome::Failed => {}
            }
        }
        drop(uploads);

        for child in &children {
            self.put_manifest(
                registry,
                repository,
                &child.descriptor.digest.to_string(),
                child,
                &scope,
            )
            .await?;
            report.manifests += 1;
        }
        let target = destination
            .tag()
            .map(str::to_owned)
            .unwrap_or_else(|| top.descriptor.digest.to_string());
        self.put_manifest(registry, repository, &target, &top, &scope)
            .await?;
        report.manifests += 1;
        tracing::info!(%destination, digest = %report.digest, "pushed");
        Ok(report)
    }

    /// Reads `descriptor`'s document and, for an index, its children (post-order into
    /// `children`); image manifests go to `images`. Returns the document itself.
    fn collect(
        &self,
        store: &Store,
        descriptor: &Descriptor,
        depth: usize,
        children: &mut Vec<Document>,
        images: &mut Vec<Manifest>,
        source: &str,
    ) -> Result<Document, PushError> {
        let bytes = store.read_verified(&descriptor.digest)?;
        let (media_type, document) = ManifestDocument::parse(
            &bytes,
            Some(&descriptor.media_type)
                .filter(|t| !t.is_empty())
                .map(String::as_str),
        )
        .map_err(|source| StoreError::Manifest {
            digest: descriptor.digest.clone(),
            source,
        })?;
        let mut own = Descriptor::new(media_type, descriptor.digest.clone(), bytes.len() as u64);
        own.platform = descriptor.platform.clone();
        match document {
            ManifestDocument::Image(manifest) => images.push(*manifest),
            ManifestDocument::Index(index) => {
                if depth >= MAX_INDEX_DEPTH {
                    return Err(PushError::TooDeep(source.to_owned()));
                }
                let missing = index
                    .manifests
                    .iter()
                    .filter(|entry| store.blobs().stat(&entry.digest).ok().flatten().is_none())
                    .count();
                if missing > 0 {
                    return Err(PushError::PartialImage {
                        image: source.to_owned(),
                        missing,
                    });
                }
                for entry in &index.manifests {
                    let child = self.collect(store, entry, depth + 1, children, images, source)?;
                    children.push(child);
                }
            }
        }
        Ok(Document {
            descriptor: own,
            bytes,
        })
    }

    /// Makes sure the registry has `blob`: exists, mounted or uploaded (the upload retried
    /// from its start when it fails on the way).
    async fn push_blob(
        &self,
        target: BlobTarget<'_>,
        blob: &Descriptor,
    ) -> Result<BlobOutcome, PushError> {
        let BlobTarget {
            registry,
            repository,
            scope,
            progress,
            ..
        } = target;
        let digest = &blob.digest;
        let url = self
            .api_url(registry, repository, &format!("blobs/{digest}"))
            .await?;
        let response = self
            .send(Request::new(Method::HEAD, registry, url, scope))
            .await?;
        match response.status() {
            StatusCode::OK => return Ok(BlobOutcome::AlreadyPresent),
            StatusCode::NOT_FOUND => {}
            _ => return Err(status_error(Method::HEAD, response).await.into()),
        }
        let policy = &self.inner.options.retries;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.upload_blob(target, blob).await {
                Ok(outcome) => return Ok(outcome),
                Err(PushError::Client(error))
                    if attempt < policy.max_attempts && is_transient(&error) =>
                {
                    tracing::warn!(%digest, error = %ErrorChain(&error), "upload failed; starting it again");
                    progress.blob_restarted(digest, 0);
                    tokio::time::sleep(policy.backoff(attempt)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn upload_blob(
        &self,
        target: BlobTarget<'_>,
        blob: &Descriptor,
    ) -> Result<BlobOutcome, PushError> {
        let BlobTarget {
            store,
            registry,
            repository,
            mount_from,
            scope,
            progress,
        } = target;
        let digest = &blob.digest;
        let mut start = self.api_url(registry, repository, "blobs/uploads/").await?;
        if let Some(from) = mount_from {
            start
                .query_pairs_mut()
                .append_pair("mount", &digest.to_string())
                .append_pair("from", from);
        }
        let response = self
            .send(Request::new(Method::POST, registry, start, scope).header(CONTENT_LENGTH, "0")?)
            .await?;
        match response.status() {
            StatusCode::CREATED if mount_from.is_some() => {
                check_digest(&response, digest, "mounted blob")?;
                tracing::debug!(%digest, "mounted");
                return Ok(BlobOutcome::Mounted);
            }
            StatusCode::ACCEPTED => {}
            _ => return Err(status_error(Method::POST, response).await.into()),
        }
        let mut location = self.location(&response)?;
        progress.blob_started(digest, blob.size);
        let options = &self.inner.options;
        if blob.size <= options.monolithic_limit {
            let bytes = read_blob(store, digest, blob.size).await?;
            let finished = self
                .finish_upload(
                    registry,
                    location,
                    digest,
                    Body::Bytes(Bytes::from(bytes)),
                    blob.size,
                    scope,
                )
                .await?;
            check_digest(&finished, digest, "uploaded blob")?;
            progress.blob_advanced(digest, blob.size);
            return Ok(BlobOutcome::Transferred);
        }
        let mut reader = BlobPieces::open(store, digest).await?;
        match options.chunk_size {
            Some(chunk_size) => {
                let chunk_size = usize::try_from(chunk_size.max(1)).unwrap_or(usize::MAX);
                let mut offset = 0u64;
                loop {
                    let chunk = reader.next(chunk_size).await?;
                    if chunk.is_empty() {
                        break;
                    }
                    let length = chunk.len() as u64;
                    let request = Request::new(Method::PATCH, registry, location.clone(), scope)
                        .header(CONTENT_TYPE, "application/octet-stream")?
                        .header(CONTENT_RANGE, &format!("{offset}-{}", offset + length - 1))?
                        .header(CONTENT_LENGTH, &length.to_string())?
                        .body(Body::Stream(Some(reqwest::Body::from(chunk))));
                    let response = self.send_ok(request).await?;
                    location = self.location(&response)?;
                    offset += length;
                    progress.blob_advanced(digest, length);
                }
            }
            None => {
                let (sender, receiver) = tokio::sync::mpsc::channel(4);
                let request = Request::new(Method::PATCH, registry, location.clone(), scope)
                    .header(CONTENT_TYPE, "application/octet-stream")?
                    .header(CONTENT_LENGTH, &blob.size.to_string())?
                    .body(Body::Stream(Some(reqwest::Body::wrap_stream(
                        ChannelStream(receiver),
                    ))));
                let feed = async {
                    // Owned here: the stream ends when the feed is done.
                    let sender = sender;
                    loop {
                        let piece = match reader.next(READ_PIECE).await {
                            Ok(piece) => piece,
                            Err(error) => {
                                let _ = sender
                                    .send(Err(io::Error::other(error_chain(&error))))
                                    .await;
                                return Err(error);
                            }
                        };
                        if piece.is_empty() {
                            return Ok(());
                        }
                        let length = piece.len() as u64;
                        if sender.send(Ok(Bytes::from(piece))).await.is_err() {
                            // The request ended early; its error is the one to report.
                            return Ok(());
                        }
                        progress.blob_advanced(digest, length);
                    }
                };
                let (sent, fed) = tokio::join!(self.send_ok(request), feed);
                fed?;
                location = self.location(&sent?)?;
            }
        }
        reader.verify()?;
        let finished = self
            .finish_upload(registry, location, digest, Body::Empty, 0, scope)
            .await?;
        check_digest(&finished, digest, "uploaded blob")?;
        Ok(BlobOutcome::Transferred)
    }

    /// `PUT LOCATION?digest=…` with the last (or only) bytes.
    async fn finish_upload(
        &self,
        registry: &str,
        mut location: Url,
        digest: &Digest,
        body: Body,
        length: u64,
        scope: &Scope,
    ) -> Result<Response, PushError> {
        location
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let request = Request::new(Method::PUT, registry, location, scope)
            .header(CONTENT_TYPE, "application/octet-stream")?
            .header(CONTENT_LENGTH, &length.to_string())?
            .body(body);
        let response = self.send_ok(request).await?;
        Ok(response)
    }

    /// Puts a manifest exactly as stored and checks the digest the registry reports.
    async fn put_manifest(
        &self,
        registry: &str,
        repository: &str,
        target: &str,
        document: &Document,
        scope: &Scope,
    ) -> Result<(), PushError> {
        let url = self
            .api_url(registry, repository, &format!("manifests/{target}"))
            .await?;
        let request = Request::new(Method::PUT, registry, url, scope)
            .header(CONTENT_TYPE, &document.descriptor.media_type)?
            .body(Body::Bytes(Bytes::copy_from_slice(&document.bytes)));
        let response = self.send_ok(request).await?;
        check_digest(
            &response,
            &document.descriptor.digest,
            &format!("manifest {target}"),
        )?;
        tracing::debug!(target, digest = %document.descriptor.digest, "manifest put");
        Ok(())
    }
}

/// Where a push's blobs go, and what it reports to: the same for every blob of one push.
#[derive(Clone, Copy)]
struct BlobTarget<'a> {
    store: &'a Store,
    registry: &'a str,
    repository: &'a str,
    /// The repository of the same registry to mount blobs from.
    mount_from: Option<&'a str>,
    scope: &'a Scope,
    progress: &'a dyn TransferProgress,
}

/// Whether an upload failure is worth starting over (the network or the server, not a
/// refusal).
fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Transport { .. } => true,
        ClientError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 416,
        _ => false,
    }
}

/// Checks `Docker-Content-Digest`, when the registry sends one.
fn check_digest(response: &Response, expected: &Digest, what: &str) -> Result<(), PushError> {
    let Some(reported) = response
        .headers()
        .get(DOCKER_CONTENT_DIGEST)
        .and_then(|value| value.to_str().ok())
    else {
        return Ok(());
    };
    if reported.trim() != expected.to_string() {
        return Err(PushError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.clone(),
            actual: reported.to_owned(),
        });
    }
    Ok(())
}

/// Reads a small blob whole, verified.
async fn read_blob(store: &Store, digest: &Digest, size: u64) -> Result<Vec<u8>, PushError> {
    let mut pieces = BlobPieces::open(store, digest).await?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    loop {
        let piece = pieces.next(READ_PIECE).await?;
        if piece.is_empty() {
            break;
        }
        bytes.extend_from_slice(&piece);
    }
    pieces.verify()?;
    Ok(bytes)
}

/// A stored blob read piece by piece on the blocking pool, hashed on the way.
struct BlobPieces {
    file: Option<Box<dyn sealer_fs_abstraction::ReadFile>>,
    digest: Digest,
    hasher: Option<Hasher>,
    size: u64,
}

impl BlobPieces {
    async fn open(store: &Store, digest: &Digest) -> Result<Self, PushError> {
        let blobs = store.blobs().clone();
        let wanted = digest.clone();
        let file = tokio::task::spawn_blocking(move || blobs.open(&wanted))
            .await
            .map_err(|error| {
                PushError::Runtime(format!("reading a blob: {}", ErrorChain(&error)))
            })??;
        Ok(Self {
            file: Some(file),
            digest: digest.clone(),
            hasher: Some(Hasher::new(digest.algorithm())),
            size: 0,
        })
    }

    /// The next piece of up to `limit` bytes (empty at the end).
    async fn next(&mut self, limit: usize) -> Result<Vec<u8>, PushError> {
        let Some(mut file) = self.file.take() else {
            return Ok(Vec::new());
        };
        let digest = self.digest.clone();
        let (file, piece) = tokio::task::spawn_blocking(move || {
            let mut piece = Vec::with_capacity(limit.min(READ_PIECE * 8));
            let result = (&mut file).take(limit as u64).read_to_end(&mut piece);
            result
                .map(|_| (file, piece))
                .map_err(|source| StoreError::io(format!("read blob {digest}"), source))
        })
        .await
        .map_err(|error| PushError::Runtime(format!("reading a blob: {}", ErrorChain(&error))))??;
        if !piece.is_empty() {
            self.file = Some(file);
            self.size += piece.len() as u64;
            if let Some(hasher) = self.hasher.as_mut() {
                hasher.update(&piece);
            }
        }
        Ok(piece)
    }

    /// Checks that everything read hashes to the blob's digest.
    fn verify(&mut self) -> Result<(), PushError> {
        let actual = self
            .hasher
            .take()
            .map(Hasher::finish)
            .unwrap_or_else(|| Digest::sha256(b""));
        if actual != self.digest || self.file.is_some() {
            return Err(StoreError::DigestMismatch {
                what: format!("stored blob {} ({} bytes read)", self.digest, self.size),
                expected: self.digest.clone(),
                actual,
            }
            .into());
        }
        Ok(())
    }
}

/// The receiving end of a channel as the body stream of a request.
struct ChannelStream(tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>);

impl futures_util::Stream for ChannelStream {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(context)
    }
}
