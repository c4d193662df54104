//! The storage seam: [`RegistryBackend`] is every storage operation the registry server
//! needs (manifests, blobs, uploads, tags, referrers, and the GC holds that keep a push
//! complete), so that the handlers and the content sources do not depend on where content
//! lives. [`LocalBackend`] is the local store (the OCI layout `sealer` itself uses); its
//! store calls run on blocking threads.
//!
//! Names are the store's: a repository is `registry/repository`
//! (`docker.io/library/nginx`) and a tag its full reference, as [`crate::StoreNames`] maps
//! them. Errors are the API's, since a backend decides answers such as the 409 of a blob
//! still in use.
//!
//! Over 800 lines on purpose: the `RegistryBackend` seam and its reference implementation over
//! the local store: each `LocalBackend` method is the definition that `BucketBackend` matches,
//! so the two are read side by side with the trait.

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom};
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use sealer_fs_abstraction::{ErrorChain, ReadFile, error_chain};
use sealer_image_store::model::{PARTIAL_ANNOTATION, media_type};
use sealer_image_store::{
    Algorithm, BlobStore, BlobUpload, Descriptor, Digest, MAX_MANIFEST_SIZE, ManifestDocument,
    Reference, Store, StoreError, UploadCheckpoint,
};
use tokio::sync::mpsc;

use crate::cache::CachedContent;
use crate::catalog::{Referrers, entry_repository, entry_tag};
use crate::error::{ApiError, ErrorCode};
use crate::handlers::check_manifest_type;
use crate::local::{BlobDeleted, blocking};
use crate::route::ManifestRef;
use crate::source::{BlobContent, BlobRequest, range_not_satisfiable};
use crate::stream::file_stream;

/// Where the registry server keeps its content. Object-safe: the server holds an
/// `Arc<dyn RegistryBackend>`.
#[async_trait::async_trait]
pub trait RegistryBackend: std::fmt::Debug + Send + Sync + 'static {
    // ---- manifests ----

    /// The digest and media type of the manifest the tag `reference` (a full store
    /// reference, `host/repository:tag`) names, or `None`.
    async fn resolve_tag(&self, reference: String) -> Result<Option<(Digest, String)>, ApiError>;

    /// A stored manifest by digest: its exact bytes and media type (`listed_type` when the
    /// caller knows it, else the type an entry lists, else the one the bytes declare), or
    /// `None`. A platform manifest that a partially carried multi-arch image lists is 404
    /// `MANIFEST_UNKNOWN` naming the platforms there are.
    async fn manifest(
        &self,
        digest: Digest,
        listed_type: Option<String>,
    ) -> Result<Option<(Bytes, String)>, ApiError>;

    /// Validates and stores a pushed manifest byte-exact and names it in repository `name`:
    /// every tag of `tagged` (full references: the push's own tag, or the `tag` parameters
    /// of a push by digest), or with none an unnamed entry of the repository. Checking its children, storing and naming happen under the GC lock, so
    /// a success means the image is complete and stays so. Returns its digest and subject.
    async fn put_manifest(
        &self,
        name: String,
        tagged: Vec<String>,
        reference: ManifestRef,
        bytes: Bytes,
        content_type: Option<String>,
    ) -> Result<(Digest, Option<Digest>), ApiError>;

    /// Removes the tag `reference`; `false` when there was no such tag.
    async fn untag(&self, reference: Reference) -> Result<bool, ApiError>;

    /// Removes repository `name`'s entries for the manifest `digest`, then the manifest
    /// itself when nothing else refers to it; `false` when no entry of the repository
    /// points to it. One that only an index of the repository holds is 409 `DENIED`.
    async fn delete_manifest(&self, name: String, digest: Digest) -> Result<bool, ApiError>;

    // ---- blobs ----

    /// The size of a stored blob, or `None`.
    async fn stat_blob(&self, digest: Digest) -> Result<Option<u64>, ApiError>;

    /// A stored blob: its size, and unless `request.head` its body (the requested range
    /// of it). 404 `BLOB_UNKNOWN` when absent, 416 for a range outside it.
    async fn blob(&self, digest: Digest, request: BlobRequest) -> Result<BlobContent, ApiError>;

    /// Drops repository `name`'s claim on a blob (`path_name` is the repository as the
    /// client named it, for messages), under the GC lock: 404 when absent, 409 `DENIED`
    /// while one of the repository's own manifests uses it, [`BlobDeleted::Kept`] while
    /// anything else does, else the blob is removed.
    async fn delete_blob(
        &self,
        name: String,
        path_name: String,
        digest: Digest,
    ) -> Result<BlobDeleted, ApiError>;

    // ---- uploads and GC holds ----

    /// Starts an upload into `repository` (the store name): a blob arriving in pieces,
    /// owned by the backend (appended, rolled back, committed and cancelled through the
    /// returned handle; the commit verifies the digest and holds the blob).
    async fn begin_upload(&self, repository: &str) -> Result<Box<dyn BackendUpload>, ApiError>;

    /// Finds the upload `id` into `repository` that another process started (its state
    /// lives in shared storage), or `None`: the local store's uploads live in one process's
    /// memory, and an upload started for another repository is not this one's.
    async fn resume_upload(
        &self,
        id: String,
        repository: &str,
    ) -> Result<Option<Box<dyn BackendUpload>>, ApiError> {
        let _ = (id, repository);
        Ok(None)
    }

    /// Removes the uploads of shared storage left idle longer than `idle` (in every
    /// process); the local store's are dropped with their sessions.
    async fn purge_idle_uploads(&self, idle: std::time::Duration) -> Result<(), ApiError> {
        let _ = idle;
        Ok(())
    }

    /// Starts a pull-through fill's scratch: a local upload file that followers read while
    /// it grows ([`Self::open_upload_blocking`]) and that [`Self::commit_fill`] stores.
    async fn begin_fill(&self) -> Result<BlobUpload, ApiError>;

    /// Stores a fill whose bytes were verified to hash to `digest`, holding the blob as
    /// fresh.
    async fn commit_fill(&self, upload: BlobUpload, digest: Digest) -> Result<(), ApiError>;

    /// Tells the backend that no reader of the fill of `digest` is left (a backend that kept
    /// a local copy for them may drop it); `committed` when [`Self::commit_fill`] succeeded
    /// for this fill.
    fn fill_released(&self, digest: &Digest, committed: bool) {
        let _ = (digest, committed);
    }

    /// Opens a stored blob for reads at any offset; the file stays readable if the blob is
    /// removed meanwhile. Blocking: call it from a blocking thread (a fill's followers read
    /// in pieces through it).
    fn open_blob_blocking(&self, digest: &Digest) -> std::io::Result<Box<dyn ReadFile>>;

    /// Opens what the live fill upload `id` has written so far (a fill's followers read a
    /// blob while it arrives); `None` when the upload is gone (committed or dropped).
    /// Blocking: call it from a blocking thread.
    fn open_upload_blocking(&self, id: &str) -> std::io::Result<Option<Box<dyn ReadFile>>>;

    /// Holds a present blob as fresh, so that GC keeps it until a manifest names it;
    /// `false` when it is absent (a concurrent GC removed it).
    async fn hold_fresh(&self, digest: Digest) -> Result<bool, ApiError>;

    // ---- tags and referrers ----

    /// The tags of repository `name`, sorted and without duplicates; `None` when the
    /// repository has no manifests at all.
    async fn tags(&self, name: String) -> Result<Option<Vec<String>>, ApiError>;

    /// The store names (`registry/repository`) of every repository holding a manifest,
    /// sorted, for the catalog.
    async fn repositories(&self) -> Result<Vec<String>, ApiError>;

    /// Descriptors of repository `name`'s manifests whose subject is `subject`.
    async fn referrers(&self, name: String, subject: Digest) -> Result<Vec<Descriptor>, ApiError>;

    // ---- pull-through fills ----

    /// Stores the verified bytes of a manifest fetched from an upstream, unnamed, and holds
    /// them as fresh until [`Self::name_cached_manifest`] names them; `false` when a
    /// concurrent GC removed them first. Bytes that do not hash to `digest` are 400
    /// `DIGEST_INVALID` and change nothing.
    async fn put_cached_manifest(&self, digest: Digest, bytes: Bytes) -> Result<bool, ApiError>;

    /// Names a cached manifest of upstream `host` (annotated so, and partial): the tag
    /// `tagged` (replacing what it named), or for a manifest fetched by digest an unnamed
    /// entry of repository `name` (unless the repository has it already, directly or through
    /// an index).
    async fn name_cached_manifest(
        &self,
        name: String,
        tagged: Option<String>,
        descriptor: Descriptor,
        host: String,
    ) -> Result<(), ApiError>;

    /// Whether the cached tag `reference` (`host/repository:tag`) must be revalidated
    /// upstream now, decided with every other server over the same storage: `Fresh` (one of
    /// them confirmed it within `ttl`, or is asking right now), or `Claimed` (this caller
    /// asks, then calls [`Self::settle_tag_revalidation`]). `None`: this storage keeps no
    /// shared state (each process decides alone, in memory).
    async fn claim_tag_revalidation(
        &self,
        _reference: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<crate::bucket::TagRevalidation>, ApiError> {
        Ok(None)
    }

    /// The backend's own metrics (Prometheus text) for `/metrics`: the local store's
    /// pull-through cache size and evictions; empty by default.
    fn metrics(&self) -> String {
        String::new()
    }

    /// Ends a claimed revalidation (`confirmed`: the upstream answered).
    async fn settle_tag_revalidation(
        &self,
        _claim: crate::bucket::RevalidationClaim,
        _confirmed: bool,
    ) {
    }
}

/// An upload in progress, owned by its backend: the bytes of one blob arriving in pieces.
/// Every piece is verified-as-you-go (hashed), and only [`Self::commit`] makes a blob.
#[async_trait::async_trait]
pub trait BackendUpload: std::fmt::Debug + Send {
    /// The id any process finds it by through [`RegistryBackend::resume_upload`]; `None`
    /// when it lives in this process only.
    fn shared_id(&self) -> Option<&str>;

    /// Bytes received so far.
    fn size(&self) -> u64;

    /// Reads the upload's state again where another process may have advanced it; 404
    /// `BLOB_UPLOAD_UNKNOWN` when it is gone.
    async fn refresh(&mut self) -> Result<(), ApiError>;

    /// Appends the chunks `chunks` yields until it closes; returns how many bytes were
    /// written. An error leaves the upload unusable (cancel it).
    async fn append(&mut self, chunks: mpsc::Receiver<Bytes>) -> Result<u64, ApiError>;

    /// Makes what [`Self::append`] received durable and visible to every process (a
    /// backend may keep the end of a piece in memory until then, so that a failed piece can
    /// be forgotten).
    async fn save(&mut self) -> Result<(), ApiError>;

    /// Forgets what the last [`Self::append`] wrote (a failed piece), so the client may send
    /// it again; an error leaves the upload unusable.
    async fn rollback(&mut self) -> Result<(), ApiError>;

    /// Commits the upload once its bytes hash to `digest` (400 `DIGEST_INVALID` otherwise,
    /// and nothing is stored), holding the blob as fresh; returns its size.
    async fn commit(self: Box<Self>, digest: Digest) -> Result<u64, ApiError>;

    /// Removes the upload and what it received.
    async fn cancel(self: Box<Self>);

    /// Lets go of an upload idle in this process: the local store's is removed; a shared
    /// one stays for other processes (purged once idle everywhere).
    async fn release(self: Box<Self>);
}

/// An upload of the local store: a file under `uploads/`, on blocking threads.
#[derive(Debug)]
struct LocalUpload {
    /// `None` once a store error made it unusable (or while a blocking call holds it).
    upload: Option<BlobUpload>,
    /// Where the last append started, for [`BackendUpload::rollback`].
    checkpoint: Option<UploadCheckpoint>,
    size: u64,
    /// The pull-through cache, which a pushed blob is no longer part of.
    cache: Option<Arc<CachedContent>>,
}

impl LocalUpload {
    fn new(upload: BlobUpload, cache: Option<Arc<CachedContent>>) -> Self {
        Self {
            size: upload.size(),
            upload: Some(upload),
            checkpoint: None,
            cache,
        }
    }

    fn take(&mut self) -> Result<BlobUpload, ApiError> {
        self.upload.take().ok_or_else(|| {
            ApiError::new(
                ErrorCode::BlobUploadUnknown,
                "the upload failed earlier; start again",
            )
        })
    }
}

/// Commits a local upload on a blocking thread: a digest mismatch is the client's error.
/// Commits a local upload as `digest`; blocking. Returns the blob's size.
fn commit_local(upload: BlobUpload, digest: &Digest) -> Result<u64, ApiError> {
    upload.commit(digest).map_err(|error| match error {
        StoreError::DigestMismatch { .. } => ApiError::from_store("commit an upload", error),
        other => ApiError::internal("commit an upload", other),
    })
}

#[async_trait::async_trait]
impl BackendUpload for LocalUpload {
    fn shared_id(&self) -> Option<&str> {
        None
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn refresh(&mut self) -> Result<(), ApiError> {
        Ok(())
    }

    async fn save(&mut self) -> Result<(), ApiError> {
        Ok(())
    }

    async fn append(&mut self, mut chunks: mpsc::Receiver<Bytes>) -> Result<u64, ApiError> {
        let mut upload = self.take()?;
        self.checkpoint = Some(upload.checkpoint());
        let (upload, written) = blocking("write an upload", move || {
            let mut written = 0u64;
            while let Some(chunk) = chunks.blocking_recv() {
                if let Err(error) = upload.write_all(&chunk) {
                    // Dropped here, off the async threads: its file is removed.
                    drop(upload);
                    return Ok((None, Err(error)));
                }
                written += chunk.len() as u64;
            }
            Ok((Some(upload), Ok(written)))
        })
        .await?;
        if let Some(upload) = &upload {
            self.size = upload.size();
        }
        self.upload = upload;
        written.map_err(|error| ApiError::internal("write an upload", error))
    }

    async fn rollback(&mut self) -> Result<(), ApiError> {
        let mut upload = self.take()?;
        let Some(checkpoint) = self.checkpoint.take() else {
            self.upload = Some(upload);
            return Ok(());
        };
        let upload = blocking("roll back an upload", move || {
            upload
                .rollback(checkpoint)
                .map(|()| upload)
                .map_err(|error| ApiError::internal("roll back an upload", error))
        })
        .await?;
        self.size = upload.size();
        self.upload = Some(upload);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, digest: Digest) -> Result<u64, ApiError> {
        let upload = self.take()?;
        let cache = self.cache.take();
        blocking("commit an upload", move || {
            let size = commit_local(upload, &digest)?;
            if let Some(cache) = cache {
                cache.pushed(&digest);
            }
            Ok(size)
        })
        .await
    }

    async fn cancel(mut self: Box<Self>) {
        if let Some(upload) = self.upload.take() {
            // Dropping it removes its file: off the async threads.
            let _ = blocking("discard an upload", move || {
                drop(upload);
                Ok(())
            })
            .await;
        }
    }

    async fn release(self: Box<Self>) {
        self.cancel().await;
    }
}

/// The local store as a [`RegistryBackend`]: `index.json` names the manifests, blobs live
/// under `blobs/`. Every store call runs on a blocking thread; blob bodies are streamed.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    store: Store,
    referrers: Arc<Referrers>,
    sparse_manifests: bool,
    /// What the pull-through cache holds, and its size limit.
    cache: Option<Arc<CachedContent>>,
}

impl LocalBackend {
    /// `index.json` as the store last read it (read again when it changed), on a blocking
    /// thread.
    async fn index_snapshot(&self) -> Result<Arc<sealer_image_store::IndexSnapshot>, ApiError> {
        let store = self.store.clone();
        blocking("read index.json", move || {
            store
                .index_snapshot()
                .map_err(|error| ApiError::internal("read index.json", error))
        })
        .await
    }

    /// The backend over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            referrers: Arc::new(Referrers::new()),
            sparse_manifests: false,
            cache: None,
        }
    }

    /// The same backend keeping track of what a pull-through cache stores in it, evicting
    /// the least recently used beyond `max_size` (`None`: unbounded): see [`crate::cache`].
    /// Reads the cache's records from the store (blocking).
    pub fn with_pull_through_cache(mut self, max_size: Option<u64>) -> Result<Self, StoreError> {
        let cache = Arc::new(CachedContent::open(self.store.clone(), max_size)?);
        cache.evict_if_over();
        self.cache = Some(cache);
        Ok(self)
    }

    /// Records a use of `digest` by the cache (blocking).
    fn used(&self, digest: &Digest) {
        if let Some(cache) = &self.cache {
            cache.used(digest);
        }
    }

    /// The same backend accepting sparse manifests or not (the `sparse_manifests` setting;
    /// off by default): see `PushedManifest::required`.
    pub fn with_sparse_manifests(mut self, accepted: bool) -> Self {
        self.sparse_manifests = accepted;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

#[async_trait::async_trait]
impl RegistryBackend for LocalBackend {
    async fn resolve_tag(&self, reference: String) -> Result<Option<(Digest, String)>, ApiError> {
        let index = self.index_snapshot().await?;
        Ok(index
            .by_name(&reference)
            .map(|entry| (entry.digest.clone(), entry.media_type.clone())))
    }

    async fn manifest(
        &self,
        digest: Digest,
        listed_type: Option<String>,
    ) -> Result<Option<(Bytes, String)>, ApiError> {
        let this = self.clone();
        blocking("read a manifest", move || {
            let store = &this.store;
            this.used(&digest);
            let listed = match listed_type {
                Some(listed) => Some(listed),
                None => store
                    .index_snapshot()
                    .map_err(|error| ApiError::internal("read index.json", error))?
                    .by_digest(&digest)
                    .map(|entry| entry.media_type.clone()),
            };
            let found = read_manifest(store, &digest, listed)?;
            if found.is_none() {
                // A platform a partial multi-arch image lists but does not carry: the 404
                // names the platforms there are.
                let absent = store
                    .absent_platform(&digest)
                    .map_err(|error| ApiError::internal("read a manifest", error))?;
                if let Some(absent) = absent {
                    return Err(platform_not_carried(&absent));
                }
            }
            Ok(found)
        })
        .await
    }

    async fn put_manifest(
        &self,
        name: String,
        tagged: Vec<String>,
        reference: ManifestRef,
        bytes: Bytes,
        content_type: Option<String>,
    ) -> Result<(Digest, Option<Digest>), ApiError> {
        let store = self.store.clone();
        let sparse = self.sparse_manifests;
        blocking("store a manifest", move || {
            let pushed = check_pushed_manifest(&reference, &bytes, content_type)?;
            store_manifest(&store, &name, tagged, pushed, &bytes, sparse)
        })
        .await
    }

    async fn untag(&self, reference: Reference) -> Result<bool, ApiError> {
        let store = self.store.clone();
        blocking("untag", move || match store.untag(&reference) {
            Ok(_) => Ok(true),
            Err(StoreError::ImageNotFound(_)) => Ok(false),
            Err(error) => Err(ApiError::internal("untag", error)),
        })
        .await
    }

    async fn delete_manifest(&self, name: String, digest: Digest) -> Result<bool, ApiError> {
        let store = self.store.clone();
        blocking("delete a manifest", move || {
            delete_manifest_digest(&store, &name, &digest)
        })
        .await
    }

    async fn stat_blob(&self, digest: Digest) -> Result<Option<u64>, ApiError> {
        let store = self.store.clone();
        blocking("stat a blob", move || {
            store
                .blobs()
                .stat(&digest)
                .map_err(|error| ApiError::internal("stat a blob", error))
        })
        .await
    }

    async fn blob(&self, digest: Digest, request: BlobRequest) -> Result<BlobContent, ApiError> {
        let this = self.clone();
        blocking("read a blob", move || {
            let store = &this.store;
            this.used(&digest);
            let unknown = || {
                ApiError::new(
                    ErrorCode::BlobUnknown,
                    format!("blob {digest} is not in the registry"),
                )
                .with_detail(serde_json::json!({ "digest": digest.to_string() }))
            };
            let size = store
                .blobs()
                .stat(&digest)
                .map_err(|error| ApiError::internal("stat a blob", error))?
                .ok_or_else(unknown)?;
            let range = match request.range {
                Some(range) => Some(
                    range
                        .resolve(size)
                        .ok_or_else(|| range_not_satisfiable(size))?,
                ),
                None => None,
            };
            if request.head {
                return Ok(BlobContent {
                    size,
                    range,
                    body: None,
                });
            }
            let mut file = match store.blobs().open(&digest) {
                Ok(file) => file,
                Err(StoreError::BlobNotFound(_)) => return Err(unknown()),
                Err(error) => return Err(ApiError::internal("open a blob", error)),
            };
            let span = range.clone().unwrap_or(0..size);
            if span.start > 0 {
                file.seek(SeekFrom::Start(span.start))
                    .map_err(|error| ApiError::internal("seek in a blob", error))?;
            }
            Ok(BlobContent {
                size,
                range,
                body: Some(file_stream(file, span.end - span.start)),
            })
        })
        .await
    }

    async fn delete_blob(
        &self,
        name: String,
        path_name: String,
        digest: Digest,
    ) -> Result<BlobDeleted, ApiError> {
        let store = self.store.clone();
        blocking("delete a blob", move || {
            let internal = |error: StoreError| ApiError::internal("delete a blob", error);
            let _gc = store.gc_lock().map_err(internal)?;
            if store.blobs().stat(&digest).map_err(internal)?.is_none() {
                return Err(ApiError::new(
                    ErrorCode::BlobUnknown,
                    format!("blob {digest} is not in the registry"),
                )
                .with_detail(serde_json::json!({ "digest": digest.to_string() })));
            }
            let mut used_elsewhere = false;
            for entry in store.index().map_err(internal)?.manifests {
                let reach = store
                    .reachable(std::slice::from_ref(&entry))
                    .map_err(internal)?;
                if !reach.present.contains(&digest) {
                    continue;
                }
                if entry_repository(&entry) == Some(name.as_str()) {
                    let manifest = entry
                        .ref_name()
                        .map_or_else(|| entry.digest.to_string(), str::to_owned);
                    return Err(blob_in_use(&digest, &manifest, &path_name));
                }
                used_elsewhere = true;
            }
            if used_elsewhere {
                return Ok(BlobDeleted::Kept);
            }
            store.blobs().delete(&digest).map_err(internal)?;
            Ok(BlobDeleted::Removed)
        })
        .await
    }

    async fn begin_upload(&self, _repository: &str) -> Result<Box<dyn BackendUpload>, ApiError> {
        // The session (in memory) remembers its repository.
        let store = self.store.clone();
        // A push's commit waits for the fsync: written behind, so that it waits for the tail.
        let upload = blocking("start an upload", move || {
            store
                .begin_upload()
                .map_err(|error| ApiError::internal("start an upload", error))
        })
        .await?;
        Ok(Box::new(LocalUpload::new(upload, self.cache.clone())))
    }

    async fn begin_fill(&self) -> Result<BlobUpload, ApiError> {
        begin_cached_fill(self.store.clone()).await
    }

    async fn commit_fill(&self, upload: BlobUpload, digest: Digest) -> Result<(), ApiError> {
        let Some(cache) = self.cache.clone() else {
            return blocking("commit an upload", move || {
                commit_local(upload, &digest).map(drop)
            })
            .await;
        };
        // Kept from eviction from before it is visible until its last reader is gone: the
        // fill's release pairs with this only when the commit succeeds.
        cache.fill_committed(&digest);
        let (recorder, committed) = (cache.clone(), digest.clone());
        let recorded = blocking("commit a fill", move || {
            let size = commit_local(upload, &committed)?;
            recorder
                .added(&committed, size)
                .map_err(|error| ApiError::internal("record a cached blob", error))
        })
        .await;
        if recorded.is_err() {
            cache.fill_released(&digest);
        }
        recorded?;
        cache.evict_if_over();
        Ok(())
    }

    fn fill_released(&self, digest: &Digest, committed: bool) {
        if !committed {
            return;
        }
        if let Some(cache) = &self.cache {
            cache.fill_released(digest);
            // A pass may have skipped it while it was read.
            cache.evict_if_over();
        }
    }

    fn metrics(&self) -> String {
        self.cache
            .as_ref()
            .map(|cache| cache.metrics_text())
            .unwrap_or_default()
    }

    fn open_blob_blocking(&self, digest: &Digest) -> std::io::Result<Box<dyn ReadFile>> {
        self.store
            .blobs()
            .open(digest)
            .map_err(|error| std::io::Error::other(error_chain(&error)))
    }

    fn open_upload_blocking(&self, id: &str) -> std::io::Result<Option<Box<dyn ReadFile>>> {
        match self.store.open_upload(id) {
            Ok(file) => Ok(Some(file)),
            Err(StoreError::Fs(error)) if error.is_not_found() => Ok(None),
            Err(error) => Err(std::io::Error::other(error_chain(&error))),
        }
    }

    async fn hold_fresh(&self, digest: Digest) -> Result<bool, ApiError> {
        let store = self.store.clone();
        let cache = self.cache.clone();
        blocking("hold a blob", move || {
            // A mount: the blob is pushed content now.
            if let Some(cache) = &cache {
                cache.pushed(&digest);
            }
            store
                .hold_fresh(&digest)
                .map_err(|error| ApiError::internal("hold a blob", error))
        })
        .await
    }

    async fn tags(&self, name: String) -> Result<Option<Vec<String>>, ApiError> {
        let index = self.index_snapshot().await?;
        let mut known = false;
        let mut tags: Vec<String> = Vec::new();
        for entry in &index.index().manifests {
            if entry_repository(entry) == Some(name.as_str()) {
                known = true;
            }
            if let Some(tag) = entry_tag(entry, &name) {
                tags.push(tag.to_owned());
            }
        }
        if !known {
            return Ok(None);
        }
        tags.sort();
        tags.dedup();
        Ok(Some(tags))
    }

    async fn repositories(&self) -> Result<Vec<String>, ApiError> {
        let index = self.index_snapshot().await?;
        let names: BTreeSet<String> = index
            .index()
            .manifests
            .iter()
            .filter_map(entry_repository)
            .map(str::to_owned)
            .collect();
        Ok(names.into_iter().collect())
    }

    async fn referrers(&self, name: String, subject: Digest) -> Result<Vec<Descriptor>, ApiError> {
        let store = self.store.clone();
        let referrers = self.referrers.clone();
        blocking("list referrers", move || {
            referrers
                .referrers(&store, &name, &subject)
                .map_err(|error| ApiError::internal("list referrers", error))
        })
        .await
    }

    async fn put_cached_manifest(&self, digest: Digest, bytes: Bytes) -> Result<bool, ApiError> {
        let store = self.store.clone();
        let cache = self.cache.clone();
        let held = blocking("store a cached manifest", move || {
            if let Some(cache) = &cache {
                // Kept from eviction until it is named.
                cache.naming(&digest);
            }
            let size = bytes.len() as u64;
            store
                .blobs()
                .put(&digest, Some(size), &mut &bytes[..])
                .and_then(|_| store.hold_fresh(&digest))
                .and_then(|held| match &cache {
                    Some(cache) if held => cache.added(&digest, size).map(|()| held),
                    _ => Ok(held),
                })
                .map_err(|error| match error {
                    StoreError::DigestMismatch { .. } => {
                        ApiError::new(ErrorCode::DigestInvalid, error_chain(&error))
                    }
                    other => ApiError::internal("store a cached manifest", other),
                })
        })
        .await?;
        if let Some(cache) = &self.cache {
            cache.evict_if_over();
        }
        Ok(held)
    }

    async fn name_cached_manifest(
        &self,
        name: String,
        tagged: Option<String>,
        descriptor: Descriptor,
        host: String,
    ) -> Result<(), ApiError> {
        let store = self.store.clone();
        let cache = self.cache.clone();
        blocking("name a cached manifest", move || {
            let digest = descriptor.digest.clone();
            let named = name_cached_manifest(&store, &name, tagged, descriptor, &host)
                .map_err(|error| ApiError::internal("name a cached manifest", error));
            if let Some(cache) = &cache {
                cache.named(&digest);
            }
            named
        })
        .await
    }
}

/// Validates and stores a pushed manifest, and names it: a tag entry, or an unnamed entry
/// annotated with the repository for a push by digest. Returns its digest and subject.
///
/// The media type (the Content-Type, where it is not absent or `application/json`, and the
/// body's `mediaType`) must be a manifest or index type: it is what clients are served as
/// Content-Type. Storing the bytes, checking that every blob the manifest refers to is
/// present (config and layers; every child of an index: pushes are complete) and naming it
/// happen under the store's GC lock, so a prune runs wholly before (and a blob it removed
/// is answered `MANIFEST_BLOB_UNKNOWN`) or wholly after (and keeps what the entry reaches):
/// a success means the image is complete and stays so.
fn store_manifest(
    store: &Store,
    name: &str,
    tagged: Vec<String>,
    pushed: PushedManifest,
    bytes: &[u8],
    sparse: bool,
) -> Result<(Digest, Option<Digest>), ApiError> {
    let _gc = store
        .gc_lock()
        .map_err(|error| ApiError::internal("take the GC lock", error))?;
    let stat = |digest: &Digest| {
        store
            .blobs()
            .stat(digest)
            .map_err(|error| ApiError::internal("stat a blob", error))
    };
    for child in pushed.required(sparse) {
        if stat(child)?.is_none() {
            return Err(ApiError::from_store(
                "store a manifest",
                StoreError::MissingChild {
                    parent: pushed.digest.clone(),
                    child: child.clone(),
                },
            ));
        }
    }
    let mut foreign_absent = false;
    for layer in &pushed.foreign {
        foreign_absent |= stat(layer)?.is_none();
    }
    let PushedManifest {
        digest,
        kind,
        subject,
        children,
        ..
    } = pushed;
    let mut entry = if foreign_absent {
        // The store's own put refuses an image without all its layers: stored directly,
        // after the checks above, and marked partial so that fsck does not count the
        // foreign layers as missing.
        store
            .blobs()
            .put(&digest, Some(bytes.len() as u64), &mut &bytes[..])
            .map_err(|error| ApiError::from_store("store a manifest", error))?;
        let mut entry = Descriptor::new(kind, digest.clone(), bytes.len() as u64);
        entry
            .annotations
            .insert(PARTIAL_ANNOTATION.to_owned(), "true".to_owned());
        entry
    } else {
        store
            .put_manifest(bytes, Some(&kind))
            .map_err(|error| ApiError::from_store("store a manifest", error))?
    };
    if digest.algorithm() != Algorithm::Sha256 && entry.digest != digest {
        store
            .blobs()
            .put(&digest, Some(bytes.len() as u64), &mut &bytes[..])
            .map_err(|error| ApiError::from_store("store a manifest", error))?;
        entry.digest = digest.clone();
    }
    // Manifests an index now reaches need no entry of their own in this repository.
    store
        .name_in_repository(name, &tagged, entry, &children)
        .map_err(|error| ApiError::internal("update index.json", error))?;
    Ok((digest, subject))
}

/// What a pushed manifest is, once checked.
pub(crate) struct PushedManifest {
    /// Its digest (the reference's, for a push by digest).
    pub(crate) digest: Digest,
    /// Its media type.
    pub(crate) kind: String,
    /// The digest of its subject, if any.
    pub(crate) subject: Option<Digest>,
    /// The manifests an index lists.
    pub(crate) children: Vec<Digest>,
    /// The config and the layers of an image manifest that this registry must hold.
    pub(crate) blobs: Vec<Digest>,
    /// The layers of an image manifest that may live elsewhere: non-distributable (foreign)
    /// media types, or descriptors with `urls`.
    pub(crate) foreign: Vec<Digest>,
}

impl PushedManifest {
    /// What must be present for the manifest to be accepted: everything it names, or with
    /// `sparse` (the `sparse_manifests` setting) only its config and distributable layers,
    /// so that foreign layers and the children of a sparse index may be absent.
    pub(crate) fn required(&self, sparse: bool) -> Vec<&Digest> {
        let optional = (!sparse).then_some(self.foreign.iter().chain(&self.children));
        self.blobs
            .iter()
            .chain(optional.into_iter().flatten())
            .collect()
    }
}

/// Whether a layer may be absent from the registry by design: a non-distributable (foreign)
/// media type, or a descriptor naming `urls` to fetch it from.
fn may_live_elsewhere(layer: &Descriptor) -> bool {
    layer.media_type.contains("nondistributable")
        || layer.media_type.contains(".foreign.")
        || !layer.urls.is_empty()
}

/// Checks a pushed manifest: JSON, a manifest or index media type (the Content-Type, where
/// it is not absent or `application/json`, and the body's `mediaType` agree), and for a push
/// by digest that the bytes hash to it.
/// A fill's upload in `store`. Its commit runs after its clients got their bytes: cached
/// until then, so that neither the writer nor followers reading the file wait for the disk.
pub(crate) async fn begin_cached_fill(store: Store) -> Result<BlobUpload, ApiError> {
    blocking("start a fill", move || {
        store
            .begin_cached_upload()
            .map_err(|error| ApiError::internal("start a fill", error))
    })
    .await
}

/// 409 for a blob `DELETE` that repository `path_name`'s own `manifest` still uses.
pub(crate) fn blob_in_use(digest: &Digest, manifest: &str, path_name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Denied,
        format!(
            "blob {digest} is used by manifest {manifest} of repository {path_name}: delete \
             the manifest first"
        ),
    )
    .with_status(StatusCode::CONFLICT)
}

pub(crate) fn check_pushed_manifest(
    reference: &ManifestRef,
    bytes: &[u8],
    content_type: Option<String>,
) -> Result<PushedManifest, ApiError> {
    let invalid = |message: String| ApiError::new(ErrorCode::ManifestInvalid, message);
    // As distribution: no Content-Type, or a generic JSON one, leaves the body to say.
    let declared = content_type.filter(|kind| kind != "application/json");
    if let Some(declared) = &declared {
        check_manifest_type("the Content-Type", declared)?;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|error| invalid(format!("the manifest is not JSON: {}", ErrorChain(&error))))?;
    let own = value.get("mediaType").and_then(serde_json::Value::as_str);
    if let Some(own) = own {
        check_manifest_type("the manifest's mediaType", own)?;
    }
    if let (Some(declared), Some(own)) = (&declared, own)
        && declared != own
    {
        return Err(invalid(format!(
            "Content-Type {declared} differs from the manifest's mediaType {own}"
        )));
    }
    let (kind, document) = ManifestDocument::parse(bytes, declared.as_deref())
        .map_err(|error| invalid(error_chain(&error)))?;
    check_manifest_type("the manifest's media type", &kind)?;
    let digest = match reference {
        ManifestRef::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), bytes);
            if &actual != expected {
                return Err(ApiError::new(
                    ErrorCode::DigestInvalid,
                    format!("the manifest hashes to {actual}, not {expected}"),
                ));
            }
            actual
        }
        ManifestRef::Tag(_) => Digest::sha256(bytes),
    };
    let (subject, children, blobs, foreign) = match &document {
        ManifestDocument::Image(manifest) => {
            let (foreign, distributable): (Vec<&Descriptor>, Vec<&Descriptor>) = manifest
                .layers
                .iter()
                .partition(|layer| may_live_elsewhere(layer));
            (
                manifest.subject.clone(),
                Vec::new(),
                std::iter::once(&manifest.config)
                    .chain(distributable)
                    .map(|blob| blob.digest.clone())
                    .collect(),
                foreign
                    .into_iter()
                    .map(|layer| layer.digest.clone())
                    .collect(),
            )
        }
        ManifestDocument::Index(index) => (
            index.subject.clone(),
            index
                .manifests
                .iter()
                .map(|child| child.digest.clone())
                .collect(),
            Vec::new(),
            Vec::new(),
        ),
    };
    Ok(PushedManifest {
        digest,
        kind,
        subject: subject.map(|subject| subject.digest),
        children,
        blobs,
        foreign,
    })
}

/// Removes this repository's entries for `digest`, then the manifest itself when nothing
/// else refers to it (another repository's entry, or an index), under the GC lock (so no
/// push names an index over it meanwhile). A digest no entry of this repository points to
/// is unknown here (`false`), wherever else it is stored; one that only an index of this
/// repository holds is refused (409 `DENIED`): delete the index first.
fn delete_manifest_digest(store: &Store, name: &str, digest: &Digest) -> Result<bool, ApiError> {
    let internal = |error: StoreError| ApiError::internal("delete a manifest", error);
    let _gc = store.gc_lock().map_err(internal)?;
    let roots = store.index().map_err(internal)?.manifests;
    let own: Vec<Descriptor> = roots
        .iter()
        .filter(|entry| entry_repository(entry) == Some(name))
        .cloned()
        .collect();
    if !own.iter().any(|entry| &entry.digest == digest) {
        for entry in &own {
            if referenced(store, std::slice::from_ref(entry), digest)? {
                let index = entry
                    .ref_name()
                    .map_or_else(|| entry.digest.to_string(), str::to_owned);
                return Err(ApiError::new(
                    ErrorCode::Denied,
                    format!("manifest {digest} belongs to index {index}: delete the index first"),
                )
                .with_status(StatusCode::CONFLICT));
            }
        }
        return Ok(false);
    }
    store.unname_in_repository(name, digest).map_err(internal)?;
    let roots = store.index().map_err(internal)?.manifests;
    if !referenced(store, &roots, digest)? {
        store.blobs().delete(digest).map_err(internal)?;
    }
    Ok(true)
}

/// Whether an `index.json` entry or an index reachable from one refers to `digest`.
fn referenced(store: &Store, roots: &[Descriptor], digest: &Digest) -> Result<bool, ApiError> {
    let mut pending: Vec<(Descriptor, usize)> =
        roots.iter().map(|root| (root.clone(), 0)).collect();
    let mut seen = std::collections::BTreeSet::new();
    while let Some((descriptor, depth)) = pending.pop() {
        if &descriptor.digest == digest {
            return Ok(true);
        }
        if depth > 8
            || !media_type::is_index(&descriptor.media_type)
            || !seen.insert(descriptor.digest.clone())
        {
            continue;
        }
        if let Some((bytes, kind)) = read_manifest(
            store,
            &descriptor.digest,
            Some(descriptor.media_type.clone()),
        )? && let Ok((_, ManifestDocument::Index(index))) =
            ManifestDocument::parse(&bytes, Some(&kind))
        {
            pending.extend(index.manifests.into_iter().map(|child| (child, depth + 1)));
        }
    }
    Ok(false)
}

/// A manifest as stored: exact bytes and media type.
fn read_manifest(
    store: &Store,
    digest: &Digest,
    listed_type: Option<String>,
) -> Result<Option<(Bytes, String)>, ApiError> {
    match store.blobs().stat(digest) {
        Ok(Some(size)) if size <= MAX_MANIFEST_SIZE => {}
        Ok(_) => return Ok(None),
        Err(error) => return Err(ApiError::internal("stat a manifest", error)),
    }
    let bytes = match store.read_verified(digest) {
        Ok(bytes) => bytes,
        Err(StoreError::BlobNotFound(_)) => return Ok(None),
        Err(error) => return Err(ApiError::internal("read a manifest", error)),
    };
    let media_type = match listed_type {
        Some(media_type) => media_type,
        None => match ManifestDocument::parse(&bytes, None) {
            Ok((media_type, _)) => media_type,
            // A layer or config asked for as a manifest.
            Err(_) => return Ok(None),
        },
    };
    Ok(Some((Bytes::from(bytes), media_type)))
}

/// 404 `MANIFEST_UNKNOWN` for a platform manifest a multi-arch image lists but the store
/// does not carry; the message (and `detail`) name the platforms it carries.
fn platform_not_carried(absent: &StoreError) -> ApiError {
    let mut error = ApiError::new(ErrorCode::ManifestUnknown, absent.to_string());
    if let StoreError::PlatformNotCarried {
        reference,
        platform,
        carried,
    } = absent
    {
        error = error.with_detail(serde_json::json!({
            "image": reference,
            "platform": platform,
            "carried": carried.split(", ").collect::<Vec<_>>(),
        }));
    }
    error
}

/// Names a cached manifest in `index.json`: the tag `tagged` (replacing what it named), or
/// for a manifest fetched by digest an unnamed entry of repository `name` (unless the
/// repository has it already, directly or through an index).
fn name_cached_manifest(
    store: &Store,
    name: &str,
    tagged: Option<String>,
    mut descriptor: Descriptor,
    host: &str,
) -> Result<(), StoreError> {
    descriptor.annotations.insert(
        sealer_image_store::model::UPSTREAM_ANNOTATION.to_owned(),
        host.to_owned(),
    );
    // Only what clients ask for is fetched: fsck must not call the rest missing.
    descriptor
        .annotations
        .insert(PARTIAL_ANNOTATION.to_owned(), "true".to_owned());
    if tagged.is_none() {
        let index = store.index()?;
        let mut known = false;
        for entry in index
            .manifests
            .iter()
            .filter(|entry| entry_repository(entry) == Some(name))
        {
            if entry.digest == descriptor.digest {
                known = true;
            } else if media_type::is_index(&entry.media_type)
                && let Ok(ManifestDocument::Index(index)) = store.read_manifest(entry)
            {
                known |= index
                    .manifests
                    .iter()
                    .any(|child| child.digest == descriptor.digest);
            }
            if known {
                return Ok(());
            }
        }
    }
    store.name_in_repository(name, tagged.as_slice(), descriptor, &[])
}
