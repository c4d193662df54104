//! [`BucketBackend`]: the registry's content in an S3-compatible bucket ([`Bucket`]), so
//! that several server processes share it and a fresh one needs no local state.
//!
//! Repositories are the store's names (`registry/repository`), a registry's `:port` written
//! `__port` (the bucket layout allows no `:`; no host name holds `_`). A manifest is a blob
//! plus one link object in its repository, its tag one tag object, its subject one referrer
//! link. Uploads keep their state in the bucket, so a chunked push may reach any process.
//! A pull-through fill streams into a scratch file in a per-process temporary directory (its
//! followers read it while it grows) and from there into the bucket through
//! [`Bucket::put_blob`], which makes the blob visible only once its digest matched.
//!
//! Over 800 lines on purpose: one `impl RegistryBackend for BucketBackend`, method for method
//! the counterpart of `LocalBackend` in `backend.rs`.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt as _, TryStreamExt as _};
use sealer_fs_abstraction::{ErrorChain, Fs as _, ReadFile, RealFs, error_chain};
use sealer_image_store::model::media_type;
use sealer_image_store::{
    Algorithm, BlobStore as _, BlobUpload, Descriptor, Digest, MAX_MANIFEST_SIZE, ManifestDocument,
    Reference, Store, StoreError, load_embedded,
};
use tokio::sync::mpsc;

use crate::backend::{
    BackendUpload, PushedManifest, RegistryBackend, begin_cached_fill, blob_in_use,
    check_pushed_manifest,
};
use crate::bucket::{Bucket, BucketConfig, BucketError, UploadState};
use crate::catalog::referrer_of;
use crate::error::{ApiError, ErrorCode, ServeError};
use crate::local::{BlobDeleted, blocking};
use crate::route::ManifestRef;
use crate::source::{BlobContent, BlobRequest, range_not_satisfiable};
use crate::stream::file_stream;

/// Bytes of a chunked upload collected before they go to the bucket as one append (above
/// S3's 5 MiB part minimum, so each becomes one part).
const APPEND_PIECE: usize = 8 * 1024 * 1024;
/// Nested indexes deeper than this are not walked.
const MAX_DEPTH: usize = 8;

/// The registry's content in a bucket; see the module documentation.
#[derive(Debug, Clone)]
pub struct BucketBackend {
    bucket: Bucket,
    scratch: Arc<Scratch>,
    sparse_manifests: bool,
}

/// The per-process directory of fills in progress, removed with the backend.
#[derive(Debug)]
struct Scratch {
    store: Store,
    parent: PathBuf,
    name: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let removed =
            RealFs::open_root(&self.parent).and_then(|fs| fs.remove_dir_all(Path::new(&self.name)));
        if let Err(error) = removed {
            tracing::warn!(error = %ErrorChain(&error), directory = %self.parent.join(&self.name).display(), "removing the fill scratch directory");
        }
    }
}

impl BucketBackend {
    /// The backend over `bucket`, its fills' scratch files in a new directory under the
    /// system's temporary directory.
    pub fn new(bucket: Bucket) -> Result<Self, StoreError> {
        let parent = std::env::temp_dir();
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|error| {
            StoreError::io(
                "naming the fill scratch directory",
                std::io::Error::other(error),
            )
        })?;
        let name = format!(
            "sealer-registry-{}-{}",
            std::process::id(),
            hex::encode(raw)
        );
        let store = Store::open_dir(&parent.join(&name))?;
        Ok(Self {
            bucket,
            scratch: Arc::new(Scratch {
                store,
                parent,
                name,
            }),
            sparse_manifests: false,
        })
    }

    /// The same backend accepting sparse manifests or not (the `sparse_manifests` setting;
    /// off by default): a push may then name foreign layers and index children the bucket
    /// does not hold.
    pub fn with_sparse_manifests(mut self, accepted: bool) -> Self {
        self.sparse_manifests = accepted;
        self
    }

    /// The bucket.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    /// Whether a manifest's child (a blob or a manifest) is stored and may be referenced (a
    /// GC claim on it is cleared; one being deleted counts as absent): the one place a
    /// manifest PUT asks.
    async fn child_present(&self, digest: &Digest) -> Result<bool, ApiError> {
        Ok(self
            .bucket
            .blob_for_reference(digest)
            .await
            .map_err(unavailable("check a manifest's blobs"))?
            .is_some())
    }

    /// A stored manifest's exact bytes (verified), or `None`.
    async fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Bytes>, ApiError> {
        let bytes = self
            .bucket
            .read_small_blob(digest, MAX_MANIFEST_SIZE)
            .await
            .map_err(unavailable("read a manifest"))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(ApiError::internal(
                "read a manifest",
                format!("the object of {digest} hashes to {actual}"),
            ));
        }
        Ok(Some(bytes))
    }

    /// Every digest the manifests `roots` reach: themselves, their configs and layers, and
    /// what their indexes list.
    async fn reach(&self, roots: &[Digest]) -> Result<HashSet<Digest>, ApiError> {
        let mut pending: Vec<(Digest, usize)> =
            roots.iter().map(|root| (root.clone(), 0)).collect();
        let mut seen = HashSet::new();
        while let Some((digest, depth)) = pending.pop() {
            if depth > MAX_DEPTH || !seen.insert(digest.clone()) {
                continue;
            }
            let Some(bytes) = self.manifest_bytes(&digest).await? else {
                continue;
            };
            match ManifestDocument::parse(&bytes, None) {
                Ok((_, ManifestDocument::Image(manifest))) => {
                    seen.insert(manifest.config.digest.clone());
                    seen.extend(manifest.layers.into_iter().map(|layer| layer.digest));
                }
                Ok((_, ManifestDocument::Index(index))) => pending.extend(
                    index
                        .manifests
                        .into_iter()
                        .map(|child| (child.digest, depth + 1)),
                ),
                Err(_) => {}
            }
        }
        Ok(seen)
    }

    /// The tags of `repository` that point at `digest`.
    async fn tags_of(&self, repository: &str, digest: &Digest) -> Result<Vec<String>, ApiError> {
        let failed = unavailable("list tags");
        let page = self
            .bucket
            .list_tags(repository, None, None)
            .await
            .map_err(&failed)?;
        let mut found = Vec::new();
        for tag in page.tags {
            if self
                .bucket
                .get_tag(repository, &tag)
                .await
                .map_err(&failed)?
                .as_ref()
                == Some(digest)
            {
                found.push(tag);
            }
        }
        Ok(found)
    }

    /// An index of `repository` (other than `digest`) that lists `digest`.
    async fn index_holding(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<Digest>, ApiError> {
        let own = self
            .bucket
            .list_manifest_links(repository)
            .await
            .map_err(unavailable("list manifests"))?;
        for candidate in own.into_iter().filter(|candidate| candidate != digest) {
            let Some(bytes) = self.manifest_bytes(&candidate).await? else {
                continue;
            };
            if let Ok((_, ManifestDocument::Index(index))) = ManifestDocument::parse(&bytes, None)
                && index.manifests.iter().any(|child| &child.digest == digest)
            {
                return Ok(Some(candidate));
            }
        }
        Ok(None)
    }

    /// How a message names manifest `digest` of `repository` (store name `name`): a tag
    /// that points at it, else its digest.
    async fn manifest_name(
        &self,
        repository: &str,
        name: &str,
        digest: &Digest,
    ) -> Result<String, ApiError> {
        Ok(match self.tags_of(repository, digest).await?.first() {
            Some(tag) => format!("{name}:{tag}"),
            None => digest.to_string(),
        })
    }

    /// Names `digest` in `repository`: its link, its referrer link, and the tags `tags`.
    async fn name_manifest(
        &self,
        repository: &str,
        tags: &[String],
        digest: &Digest,
        subject: Option<&Digest>,
    ) -> Result<(), ApiError> {
        let failed = unavailable("name a manifest");
        self.bucket
            .put_manifest_link(repository, digest)
            .await
            .map_err(&failed)?;
        if let Some(subject) = subject {
            self.bucket
                .put_referrer_link(repository, subject, digest)
                .await
                .map_err(&failed)?;
        }
        for tag in tags {
            self.bucket
                .put_tag(repository, tag, digest)
                .await
                .map_err(&failed)?;
        }
        Ok(())
    }

    /// Stores manifest bytes as their blob.
    async fn put_bytes(&self, digest: &Digest, bytes: Bytes) -> Result<(), ApiError> {
        let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
        match self.bucket.put_blob(digest, body).await {
            Ok(_) => Ok(()),
            Err(BucketError::DigestMismatch {
                expected, actual, ..
            }) => Err(ApiError::new(
                ErrorCode::DigestInvalid,
                format!("the content hashes to {actual}, not {expected}"),
            )),
            Err(error) => Err(unavailable("store a manifest")(error)),
        }
    }
}

impl BucketBackend {
    /// Imports the images that the cluster images `images` of the local store `source`
    /// carry into the bucket of `config` (through this process's scratch store), named by
    /// their source names; blobs the bucket has already are not sent again, so a restart,
    /// or another server carrying the same images, imports idempotently. Returns the names.
    /// Blocking: it runs on a thread of its own, with its own runtime and client.
    pub fn import_carried_images(
        &self,
        config: &BucketConfig,
        source: &Store,
        images: &[String],
    ) -> Result<BTreeSet<String>, ServeError> {
        let scratch = self.scratch.store.clone();
        let import = || -> Result<BTreeSet<String>, ServeError> {
            let failed = |context: String| {
                move |error: String| ServeError::Io {
                    context,
                    source: std::io::Error::other(error),
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| ServeError::Io {
                    context: "starting the import of carried images".to_owned(),
                    source,
                })?;
            let bucket = Bucket::open(config)?;
            let mut carried = BTreeSet::new();
            for image in images {
                let report = load_embedded(source, image, &scratch, None).map_err(|source| {
                    ServeError::Embedded {
                        image: image.clone(),
                        source,
                    }
                })?;
                for warning in &report.warnings {
                    tracing::warn!(cluster_image = %image, "{warning}");
                }
                for (name, digest) in report.images {
                    runtime
                        .block_on(copy_named(&bucket, &scratch, &name, &digest))
                        .map_err(failed(format!(
                            "importing {name} (carried by {image}) into the bucket"
                        )))?;
                    carried.insert(name);
                }
                tracing::info!(cluster_image = %image, images = carried.len(), "imported the carried images into the bucket");
            }
            Ok(carried)
        };
        std::thread::scope(|scope| {
            scope.spawn(import).join().unwrap_or_else(|_| {
                Err(ServeError::NotImplemented(
                    "the import of carried images stopped unexpectedly".to_owned(),
                ))
            })
        })
    }
}

/// Copies the image `digest` of `scratch` into the bucket and names it `name`
/// (`registry/repository:tag`).
async fn copy_named(
    bucket: &Bucket,
    scratch: &Store,
    name: &str,
    digest: &Digest,
) -> Result<(), String> {
    copy_manifest(bucket, scratch, digest, 0).await?;
    let (repository, tag) = split_tagged(name).map_err(|error| error.message)?;
    bucket
        .put_manifest_link(&repository, digest)
        .await
        .map_err(|error| error_chain(&error))?;
    bucket
        .put_tag(&repository, &tag, digest)
        .await
        .map_err(|error| error_chain(&error))?;
    Ok(())
}

/// Copies a manifest of `scratch` and what it refers to (children a partial image lacks
/// are skipped) into the bucket, the manifest last.
async fn copy_manifest(
    bucket: &Bucket,
    scratch: &Store,
    digest: &Digest,
    depth: usize,
) -> Result<(), String> {
    let bytes = scratch
        .read_verified(digest)
        .map_err(|error| error_chain(&error))?;
    match ManifestDocument::parse(&bytes, None) {
        Ok((_, ManifestDocument::Image(manifest))) => {
            for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                copy_blob(bucket, scratch, &blob.digest).await?;
            }
        }
        Ok((_, ManifestDocument::Index(index))) if depth < MAX_DEPTH => {
            for child in &index.manifests {
                let present = scratch
                    .blobs()
                    .stat(&child.digest)
                    .map_err(|error| error_chain(&error))?;
                if present.is_some() {
                    Box::pin(copy_manifest(bucket, scratch, &child.digest, depth + 1)).await?;
                }
            }
        }
        _ => {}
    }
    copy_blob(bucket, scratch, digest).await
}

/// Sends a blob of `scratch` to the bucket unless the bucket has it (or `scratch` lacks it).
async fn copy_blob(bucket: &Bucket, scratch: &Store, digest: &Digest) -> Result<(), String> {
    if bucket
        .stat_blob(digest)
        .await
        .map_err(|error| error_chain(&error))?
        .is_some()
    {
        return Ok(());
    }
    let Some(size) = scratch
        .blobs()
        .stat(digest)
        .map_err(|error| error_chain(&error))?
    else {
        return Ok(());
    };
    let file = scratch
        .blobs()
        .open(digest)
        .map_err(|error| error_chain(&error))?;
    bucket
        .put_blob(digest, file_stream(file, size))
        .await
        .map(drop)
        .map_err(|error| error_chain(&error))
}

/// A store name (`registry/repository`) as the bucket layout spells it.
fn repository_key(name: &str) -> String {
    name.replace(':', "__")
}

/// A repository key back as its store name: only the host (the first component) can have
/// had a `:`, and repository paths may themselves contain `__`.
fn store_name(key: &str) -> String {
    match key.split_once('/') {
        Some((host, rest)) => format!("{}/{rest}", host.replace("__", ":")),
        None => key.to_owned(),
    }
}

/// `registry/repository:tag` → (repository key, tag).
fn split_tagged(reference: &str) -> Result<(String, String), ApiError> {
    let last_slash = reference.rfind('/').map_or(0, |at| at + 1);
    match reference[last_slash..].rfind(':') {
        Some(at) => Ok((
            repository_key(&reference[..last_slash + at]),
            reference[last_slash + at + 1..].to_owned(),
        )),
        None => Err(ApiError::new(
            ErrorCode::NameInvalid,
            format!("{reference} names no tag"),
        )),
    }
}

/// Maps a bucket error seen while doing `what`: the bucket failing (unreachable, 5xx after
/// retries) is 503, so that clients retry; anything else is internal.
fn unavailable(what: &'static str) -> impl Fn(BucketError) -> ApiError {
    move |error| match error {
        BucketError::Store { .. } => {
            tracing::warn!(error = %ErrorChain(&error), "{what}");
            ApiError::new(
                ErrorCode::Unknown,
                format!("{what}: the object storage is unavailable"),
            )
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_header(axum::http::header::RETRY_AFTER, "1")
        }
        other => ApiError::internal(what, other),
    }
}

fn blob_unknown(digest: &Digest) -> ApiError {
    ApiError::new(
        ErrorCode::BlobUnknown,
        format!("blob {digest} is not in the registry"),
    )
    .with_detail(serde_json::json!({ "digest": digest.to_string() }))
}

#[async_trait::async_trait]
impl RegistryBackend for BucketBackend {
    async fn claim_tag_revalidation(
        &self,
        reference: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<crate::bucket::TagRevalidation>, ApiError> {
        let (repository, tag) = split_tagged(reference)?;
        self.bucket
            .claim_tag_revalidation(&repository, &tag, ttl)
            .await
            .map(Some)
            .map_err(unavailable("read a tag's revalidation time"))
    }

    async fn settle_tag_revalidation(
        &self,
        claim: crate::bucket::RevalidationClaim,
        confirmed: bool,
    ) {
        if let Err(error) = self.bucket.settle_tag_revalidation(claim, confirmed).await {
            // The next request past the TTL asks again anyway.
            tracing::warn!(error = %ErrorChain(&error), "could not restore a tag's revalidation time");
        }
    }

    async fn resolve_tag(&self, reference: String) -> Result<Option<(Digest, String)>, ApiError> {
        let (repository, tag) = split_tagged(&reference)?;
        let Some(digest) = self
            .bucket
            .get_tag(&repository, &tag)
            .await
            .map_err(unavailable("read a tag"))?
        else {
            return Ok(None);
        };
        let kind = self
            .manifest_bytes(&digest)
            .await?
            .and_then(|bytes| ManifestDocument::parse(&bytes, None).ok())
            .map_or_else(|| media_type::OCI_MANIFEST.to_owned(), |(kind, _)| kind);
        Ok(Some((digest, kind)))
    }

    async fn manifest(
        &self,
        digest: Digest,
        listed_type: Option<String>,
    ) -> Result<Option<(Bytes, String)>, ApiError> {
        let Some(bytes) = self.manifest_bytes(&digest).await? else {
            return Ok(None);
        };
        let kind = match listed_type {
            Some(kind) => kind,
            None => match ManifestDocument::parse(&bytes, None) {
                Ok((kind, _)) => kind,
                // A layer or config asked for as a manifest.
                Err(_) => return Ok(None),
            },
        };
        Ok(Some((bytes, kind)))
    }

    async fn put_manifest(
        &self,
        name: String,
        tagged: Vec<String>,
        reference: ManifestRef,
        bytes: Bytes,
        content_type: Option<String>,
    ) -> Result<(Digest, Option<Digest>), ApiError> {
        let pushed = check_pushed_manifest(&reference, &bytes, content_type)?;
        let referenced: Vec<Digest> = pushed
            .required(self.sparse_manifests)
            .into_iter()
            .cloned()
            .collect();
        let PushedManifest {
            digest, subject, ..
        } = pushed;
        for child in &referenced {
            if !self.child_present(child).await? {
                return Err(ApiError::from_store(
                    "store a manifest",
                    StoreError::MissingChild {
                        parent: digest.clone(),
                        child: child.clone(),
                    },
                ));
            }
        }
        self.put_bytes(&digest, bytes).await?;
        let repository = repository_key(&name);
        // Linked, then every child checked again: a GC run that claimed one meanwhile either
        // sees the link or is seen here (bucket::gc has the argument).
        if !self
            .bucket
            .put_manifest_link_checked(&repository, &digest, &referenced)
            .await
            .map_err(unavailable("link a manifest"))?
        {
            return Err(ApiError::new(
                ErrorCode::ManifestBlobUnknown,
                format!(
                    "a blob of manifest {digest} was removed by garbage collection while it was pushed: push the blobs again"
                ),
            ));
        }
        let tags = tagged
            .iter()
            .map(|tagged| split_tagged(tagged).map(|(_, tag)| tag))
            .collect::<Result<Vec<_>, _>>()?;
        self.name_manifest(&repository, &tags, &digest, subject.as_ref())
            .await?;
        Ok((digest, subject))
    }

    async fn untag(&self, reference: Reference) -> Result<bool, ApiError> {
        let Some(tag) = reference.tag() else {
            return Ok(false);
        };
        self.bucket
            .delete_tag(&repository_key(&reference.name()), tag)
            .await
            .map_err(unavailable("untag"))
    }

    async fn delete_manifest(&self, name: String, digest: Digest) -> Result<bool, ApiError> {
        let failed = unavailable("delete a manifest");
        let repository = repository_key(&name);
        let linked = self
            .bucket
            .has_manifest_link(&repository, &digest)
            .await
            .map_err(&failed)?;
        let tags = if linked {
            self.tags_of(&repository, &digest).await?
        } else {
            Vec::new()
        };
        // As the local store, where pushing an index drops its children's unnamed entries:
        // a manifest no tag names that an index of the repository lists belongs to it.
        if tags.is_empty()
            && let Some(index) = self.index_holding(&repository, &digest).await?
        {
            return Err(ApiError::new(
                ErrorCode::Denied,
                format!("manifest {digest} belongs to index {index}: delete the index first"),
            )
            .with_status(StatusCode::CONFLICT));
        }
        if !linked {
            return Ok(false);
        }
        for tag in tags {
            self.bucket
                .delete_tag(&repository, &tag)
                .await
                .map_err(&failed)?;
        }
        if let Some(bytes) = self.manifest_bytes(&digest).await?
            && let Some((subject, _)) = referrer_of(&digest, &bytes)
        {
            self.bucket
                .delete_referrer_link(&repository, &subject, &digest)
                .await
                .map_err(&failed)?;
        }
        self.bucket
            .delete_manifest_link(&repository, &digest)
            .await
            .map_err(&failed)?;
        let roots: Vec<Digest> = self
            .bucket
            .list_all_manifest_links()
            .await
            .map_err(&failed)?
            .into_iter()
            .map(|(_, root)| root)
            .collect();
        if !self.reach(&roots).await?.contains(&digest) {
            self.bucket.delete_blob(&digest).await.map_err(&failed)?;
        }
        Ok(true)
    }

    async fn stat_blob(&self, digest: Digest) -> Result<Option<u64>, ApiError> {
        // A push's HEAD or mount references the blob: a GC claim on it is cleared, and one
        // being deleted is absent (the client uploads it again).
        Ok(self
            .bucket
            .blob_for_reference(&digest)
            .await
            .map_err(unavailable("stat a blob"))?
            .map(|stat| stat.size))
    }

    async fn blob(&self, digest: Digest, request: BlobRequest) -> Result<BlobContent, ApiError> {
        // A read references nothing: a plain stat, without the GC-claim round trip of
        // `stat_blob` (a push's HEAD).
        let size = self
            .bucket
            .stat_blob(&digest)
            .await
            .map_err(unavailable("stat a blob"))?
            .ok_or_else(|| blob_unknown(&digest))?
            .size;
        let range = match request.range {
            Some(range) => Some(
                range
                    .resolve(size)
                    .ok_or_else(|| range_not_satisfiable(size))?,
            ),
            None => None,
        };
        if request.head || size == 0 {
            let body = (!request.head)
                .then(|| Box::pin(futures_util::stream::empty()) as crate::source::BlobStream);
            return Ok(BlobContent { size, range, body });
        }
        let read = match self.bucket.get_blob(&digest, range.clone()).await {
            Ok(read) => read,
            Err(BucketError::NotFound { .. }) => return Err(blob_unknown(&digest)),
            Err(error) => return Err(unavailable("read a blob")(error)),
        };
        let body = read
            .stream
            .map_err(|error| std::io::Error::other(error_chain(&error)))
            .boxed();
        Ok(BlobContent {
            size,
            range,
            body: Some(body),
        })
    }

    async fn delete_blob(
        &self,
        name: String,
        path_name: String,
        digest: Digest,
    ) -> Result<BlobDeleted, ApiError> {
        let failed = unavailable("delete a blob");
        if self.stat_blob(digest.clone()).await?.is_none() {
            return Err(blob_unknown(&digest));
        }
        let repository = repository_key(&name);
        let mut used_elsewhere = false;
        for (owner, manifest) in self
            .bucket
            .list_all_manifest_links()
            .await
            .map_err(&failed)?
        {
            if !self
                .reach(std::slice::from_ref(&manifest))
                .await?
                .contains(&digest)
            {
                continue;
            }
            if owner == repository {
                let manifest = self.manifest_name(&repository, &name, &manifest).await?;
                return Err(blob_in_use(&digest, &manifest, &path_name));
            }
            used_elsewhere = true;
        }
        if used_elsewhere {
            return Ok(BlobDeleted::Kept);
        }
        self.bucket.delete_blob(&digest).await.map_err(&failed)?;
        Ok(BlobDeleted::Removed)
    }

    async fn begin_upload(&self, repository: &str) -> Result<Box<dyn BackendUpload>, ApiError> {
        let state = self
            .bucket
            .start_upload(repository)
            .await
            .map_err(unavailable("start an upload"))?;
        Ok(Box::new(BucketUpload::new(self.bucket.clone(), state)))
    }

    async fn resume_upload(
        &self,
        id: String,
        repository: &str,
    ) -> Result<Option<Box<dyn BackendUpload>>, ApiError> {
        match self.bucket.read_upload(&id).await {
            // Started for another repository: not an upload of this one.
            Ok(state) if state.repository() != repository => Ok(None),
            Ok(state) => Ok(Some(Box::new(BucketUpload::new(
                self.bucket.clone(),
                state,
            )))),
            // Not an id of ours (or finished, or purged).
            Err(BucketError::NotFound { .. } | BucketError::Invalid { .. }) => Ok(None),
            Err(error) => Err(unavailable("read an upload")(error)),
        }
    }

    async fn purge_idle_uploads(&self, idle: std::time::Duration) -> Result<(), ApiError> {
        // Object times have a resolution of one second: an upload is purged only once it is
        // surely idle.
        self.bucket
            .purge_uploads(idle + std::time::Duration::from_secs(1))
            .await
            .map(drop)
            .map_err(unavailable("purge idle uploads"))
    }

    async fn begin_fill(&self) -> Result<BlobUpload, ApiError> {
        // Staged in this process's scratch store, then put into the bucket by the commit.
        begin_cached_fill(self.scratch.store.clone()).await
    }

    async fn commit_fill(&self, upload: BlobUpload, digest: Digest) -> Result<(), ApiError> {
        let scratch = self.scratch.store.clone();
        let committed = digest.clone();
        let (file, size) = blocking("commit a fill", move || {
            let internal = |error: StoreError| ApiError::internal("commit a fill", error);
            upload.commit(&committed).map_err(internal)?;
            let size = scratch
                .blobs()
                .stat(&committed)
                .map_err(internal)?
                .unwrap_or(0);
            Ok((scratch.blobs().open(&committed).map_err(internal)?, size))
        })
        .await?;
        match self.bucket.put_blob(&digest, file_stream(file, size)).await {
            Ok(_) => Ok(()),
            Err(error) => Err(unavailable("store a fill")(error)),
        }
    }

    fn fill_released(&self, digest: &Digest, _committed: bool) {
        // Committed or not, the scratch copy is done with.
        let scratch = self.scratch.store.clone();
        let digest = digest.clone();
        let remove = move || {
            if let Err(error) = scratch.blobs().delete(&digest) {
                tracing::warn!(%digest, error = %ErrorChain(&error), "removing a fill's scratch file");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }

    fn open_blob_blocking(&self, digest: &Digest) -> std::io::Result<Box<dyn ReadFile>> {
        let scratch = &self.scratch.store;
        match scratch.blobs().open(digest) {
            Ok(file) => return Ok(file),
            Err(StoreError::BlobNotFound(_)) => {}
            Err(error) => return Err(std::io::Error::other(error_chain(&error))),
        }
        // A fill that found the blob stored already: its followers read a scratch copy
        // (removed with the fill).
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let other = |error: &dyn std::error::Error| std::io::Error::other(error_chain(error));
        let mut read = runtime
            .block_on(self.bucket.get_blob(digest, None))
            .map_err(|error| other(&error))?;
        let mut upload = scratch.begin_upload().map_err(|error| other(&error))?;
        while let Some(chunk) = runtime.block_on(read.stream.next()) {
            let chunk = chunk.map_err(|error| other(&error))?;
            upload.write_all(&chunk).map_err(|error| other(&error))?;
        }
        upload.commit(digest).map_err(|error| other(&error))?;
        scratch.blobs().open(digest).map_err(|error| other(&error))
    }

    fn open_upload_blocking(&self, id: &str) -> std::io::Result<Option<Box<dyn ReadFile>>> {
        match self.scratch.store.open_upload(id) {
            Ok(file) => Ok(Some(file)),
            Err(StoreError::Fs(error)) if error.is_not_found() => Ok(None),
            Err(error) => Err(std::io::Error::other(error_chain(&error))),
        }
    }

    async fn hold_fresh(&self, digest: Digest) -> Result<bool, ApiError> {
        Ok(self.stat_blob(digest).await?.is_some())
    }

    async fn tags(&self, name: String) -> Result<Option<Vec<String>>, ApiError> {
        let failed = unavailable("list tags");
        let repository = repository_key(&name);
        if !self
            .bucket
            .has_manifests(&repository)
            .await
            .map_err(&failed)?
        {
            return Ok(None);
        }
        let page = self
            .bucket
            .list_tags(&repository, None, None)
            .await
            .map_err(&failed)?;
        Ok(Some(page.tags))
    }

    async fn repositories(&self) -> Result<Vec<String>, ApiError> {
        let links = self
            .bucket
            .list_all_manifest_links()
            .await
            .map_err(unavailable("list repositories"))?;
        let names: std::collections::BTreeSet<String> = links
            .into_iter()
            .map(|(repository, _)| store_name(&repository))
            .collect();
        Ok(names.into_iter().collect())
    }

    async fn referrers(&self, name: String, subject: Digest) -> Result<Vec<Descriptor>, ApiError> {
        let links = self
            .bucket
            .list_referrer_links(&repository_key(&name), &subject)
            .await
            .map_err(unavailable("list referrers"))?;
        let mut found = Vec::new();
        for digest in links {
            if let Some(bytes) = self.manifest_bytes(&digest).await?
                && let Some((_, descriptor)) = referrer_of(&digest, &bytes)
            {
                found.push(descriptor);
            }
        }
        Ok(found)
    }

    async fn put_cached_manifest(&self, digest: Digest, bytes: Bytes) -> Result<bool, ApiError> {
        self.put_bytes(&digest, bytes).await?;
        Ok(true)
    }

    async fn name_cached_manifest(
        &self,
        name: String,
        tagged: Option<String>,
        descriptor: Descriptor,
        _host: String,
    ) -> Result<(), ApiError> {
        let tag = match &tagged {
            Some(tagged) => Some(split_tagged(tagged)?.1),
            None => None,
        };
        // A cached referrer is listed under its subject, as a pushed one.
        let subject = self
            .manifest_bytes(&descriptor.digest)
            .await?
            .and_then(|bytes| referrer_of(&descriptor.digest, &bytes))
            .map(|(subject, _)| subject);
        self.name_manifest(
            &repository_key(&name),
            tag.as_slice(),
            &descriptor.digest,
            subject.as_ref(),
        )
        .await
    }
}

/// A chunked upload whose state lives in the bucket. The end of the piece being received
/// stays in memory until [`BackendUpload::save`], so a failed PATCH below
/// [`APPEND_PIECE`] bytes changes nothing in the bucket.
#[derive(Debug)]
struct BucketUpload {
    bucket: Bucket,
    state: UploadState,
    /// Received, not yet appended in the bucket.
    pending: BytesMut,
    /// Whether the last append sent pieces to the bucket already (then it cannot be
    /// rolled back).
    appended: bool,
}

impl BucketUpload {
    fn new(bucket: Bucket, state: UploadState) -> Self {
        Self {
            bucket,
            state,
            pending: BytesMut::new(),
            appended: false,
        }
    }

    async fn send_pending(&mut self) -> Result<(), ApiError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let piece = self.pending.split().freeze();
        self.state = self
            .bucket
            .append_upload(&self.state, piece)
            .await
            .map_err(upload_error)?;
        Ok(())
    }
}

/// A bucket error of an upload: another process moved it on meanwhile (two PATCHes of one
/// upload at once) is the client's 416; the bucket failing is 503.
fn upload_error(error: BucketError) -> ApiError {
    match error {
        BucketError::StaleUpload { .. } => {
            ApiError::new(ErrorCode::BlobUploadInvalid, error_chain(&error))
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        }
        BucketError::NotFound { .. } => ApiError::new(
            ErrorCode::BlobUploadUnknown,
            "the upload is not in progress",
        ),
        BucketError::DigestMismatch { .. } | BucketError::UnsupportedDigest { .. } => {
            ApiError::new(ErrorCode::DigestInvalid, error_chain(&error))
        }
        other => unavailable("write an upload")(other),
    }
}

#[async_trait::async_trait]
impl BackendUpload for BucketUpload {
    fn shared_id(&self) -> Option<&str> {
        Some(self.state.id())
    }

    fn size(&self) -> u64 {
        self.state.offset() + self.pending.len() as u64
    }

    async fn refresh(&mut self) -> Result<(), ApiError> {
        if self.pending.is_empty() {
            self.state = self
                .bucket
                .read_upload(self.state.id())
                .await
                .map_err(upload_error)?;
        }
        Ok(())
    }

    async fn save(&mut self) -> Result<(), ApiError> {
        self.send_pending().await
    }

    async fn append(&mut self, mut chunks: mpsc::Receiver<Bytes>) -> Result<u64, ApiError> {
        self.appended = false;
        let mut written = 0u64;
        while let Some(chunk) = chunks.recv().await {
            written += chunk.len() as u64;
            self.pending.extend_from_slice(&chunk);
            if self.pending.len() >= APPEND_PIECE {
                self.appended = true;
                self.send_pending().await?;
            }
        }
        Ok(written)
    }

    async fn rollback(&mut self) -> Result<(), ApiError> {
        self.pending.clear();
        if self.appended {
            return Err(ApiError::new(
                ErrorCode::BlobUploadUnknown,
                "part of the failed chunk is stored already; start the upload again",
            ));
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>, digest: Digest) -> Result<u64, ApiError> {
        if digest.algorithm() != Algorithm::Sha256 && self.state.offset() == 0 {
            // The bucket carries only SHA-256 states between processes; a blob whose bytes
            // are all still here (a monolithic upload) is stored under any digest.
            let bytes = self.pending.split().freeze();
            let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
            let put = self.bucket.put_blob(&digest, body).await;
            if let Err(error) = self.bucket.cancel_upload(&self.state).await {
                tracing::warn!(error = %ErrorChain(&error), upload = self.state.id(), "removing a finished upload");
            }
            return put.map(|put| put.size).map_err(upload_error);
        }
        self.send_pending().await?;
        let put = self
            .bucket
            .complete_upload(&self.state, &digest)
            .await
            .map_err(upload_error)?;
        Ok(put.size)
    }

    async fn cancel(self: Box<Self>) {
        if let Err(error) = self.bucket.cancel_upload(&self.state).await {
            tracing::warn!(error = %ErrorChain(&error), upload = self.state.id(), "cancelling an upload");
        }
    }

    async fn release(self: Box<Self>) {
        // Other processes may go on with it; the bucket's purge removes it once idle.
    }
}
