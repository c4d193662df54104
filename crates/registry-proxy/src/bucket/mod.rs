//! The registry's content in an S3-compatible bucket: one object per fact, every change a
//! conditional write, so that several replicas can share one bucket without a lock server.
//!
//! Layout under the configured prefix:
//!
//! * `blobs/<alg>/<hex>`: a blob, made visible only by completing a multipart upload after
//!   its digest matched (aborted otherwise); never rewritten once present.
//! * `repositories/<name>/tags/<tag>`: one object per tag holding the manifest digest, written
//!   with `If-None-Match: *` (new tag) or `If-Match` (the version read), retried on conflict;
//!   tag lists are listings (S3 lists keys in byte order).
//! * `repositories/<name>/manifests/<alg>/<hex>`: one link object per manifest a repository
//!   holds.
//! * `repositories/<name>/tag-checks/<tag>`: when a cached tag of a pull-through upstream was
//!   last confirmed upstream, advanced by a conditional write, so one replica per TTL asks.
//! * `fills/<alg>/<hex>`: the fill lease of a blob being fetched from an upstream: which
//!   replica fetches it, until when (see [`Bucket::acquire_fill_lease`]).
//! * `repositories/<name>/referrers/<subject-alg>/<subject-hex>/<alg>-<hex>`: one link object
//!   per manifest of the repository that has that subject (the referrers API lists them).
//! * `gc/claims/<alg>/<hex>`: a garbage collection's claim on a blob, and `gc/clock`
//!   ([`gc`] has the protocol and why it is safe while replicas write).
//! * `uploads/<id>/state.json`: a chunked upload's state (offset, parts, serialized SHA-256
//!   state), advanced with `If-Match`, so its PATCHes may reach any replica; its bytes are
//!   parts of a multipart upload of `uploads/<id>/data` plus a tail object below the part
//!   size.
//!
//! The registry server uses it through [`crate::BucketBackend`] when its configuration says
//! `storage: { s3: … }` ([`BucketConfig`]).

mod blobs;
mod config;
pub mod gc;
mod leases;
mod links;
mod presign;
mod revalidation;
mod tags;
mod uploads;

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use sealer_image_store::Digest;

pub use blobs::{BlobPut, BlobRead, BlobStat};
pub use config::{BucketConfig, BucketConfigError};
pub use gc::{GcOptions, GcReport};
pub use leases::{Acquire, LEASE_ATTEMPTS, Lease, LeaseError};
pub use presign::MAX_PRESIGNED_EXPIRY;
pub use revalidation::{RevalidationClaim, TagRevalidation};
pub use tags::{TagOutcome, TagPage, TagWrite};
pub use uploads::UploadState;

/// How many conditional writes of one tag are tried before giving up (each conflict means
/// another writer changed the tag in between: with N racing writers, N attempts suffice for
/// each to land once).
pub const TAG_WRITE_ATTEMPTS: u32 = 64;

/// Errors of [`Bucket`] operations.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The object store failed (network, credentials, a 5xx after retries).
    #[error("object storage: {operation} {path}")]
    Store {
        /// What was attempted, e.g. "completing the multipart upload of".
        operation: &'static str,
        /// The object's path in the bucket.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The bytes written under a digest hash to another one; the upload was aborted and
    /// nothing became visible.
    #[error("blob {expected}: the {size} bytes received hash to {actual}; upload aborted")]
    DigestMismatch {
        /// The digest the caller named.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
        /// How many bytes arrived.
        size: u64,
    },
    /// The blob body stream failed; the upload was aborted.
    #[error("blob {digest}: reading the body after {received} bytes")]
    Body {
        /// The blob being written.
        digest: Digest,
        /// Bytes received before the failure.
        received: u64,
        /// The stream's error.
        #[source]
        source: std::io::Error,
    },
    /// A repository name, tag or upload id that does not fit the layout.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// "repository", "tag", "upload id", "range".
        what: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// An object the operation needs does not exist.
    #[error("{what} not found: {path}")]
    NotFound {
        /// "blob", "upload".
        what: &'static str,
        /// The object's path in the bucket.
        path: String,
    },
    /// An object of ours holds something that does not parse.
    #[error("corrupt {what} at {path}: {reason}")]
    Corrupt {
        /// "tag", "upload state".
        what: &'static str,
        /// The object's path in the bucket.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Every attempt of a tag write met another writer's change in between.
    #[error("tag {repository}:{tag}: {attempts} conditional writes all conflicted")]
    TagContended {
        /// The repository.
        repository: String,
        /// The tag.
        tag: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The upload's state changed since the caller read it (another replica advanced it):
    /// the write was refused and nothing changed; read the state again.
    #[error(
        "upload {id}: its state changed since it was read at offset {offset} (a conditional write was refused)"
    )]
    StaleUpload {
        /// The upload id.
        id: String,
        /// The offset of the state the caller held.
        offset: u64,
    },
    /// The system's random source failed (new upload ids and object names need it).
    #[error("no randomness for {what}: {reason}")]
    Random {
        /// What needed it.
        what: &'static str,
        /// The error.
        reason: String,
    },
    /// The upload's digest algorithm is not one whose state can be carried between replicas.
    #[error("upload {id}: only sha256 digests can complete a chunked upload, not {digest}")]
    UnsupportedDigest {
        /// The upload id.
        id: String,
        /// The digest the caller named.
        digest: Digest,
    },
    /// A garbage collection is deleting the blob and did not finish within the wait: its
    /// bytes cannot be written anew yet (the next collection finishes a run that died).
    #[error(
        "blob {digest}: a garbage collection is deleting it and had not finished after {waited:?}; retry later"
    )]
    BlobBeingDeleted {
        /// The blob.
        digest: Digest,
        /// How long the writer waited.
        waited: std::time::Duration,
    },
    /// A garbage collection deleted the blob while it was being written (it had claimed
    /// another writer's copy under the same key): nothing may reference it; upload it again.
    #[error(
        "blob {digest}: a garbage collection deleted it while it was being written; upload it again"
    )]
    BlobCollected {
        /// The blob.
        digest: Digest,
    },
    /// The blob's GC claim changed under every compare-and-swap a writer tried.
    #[error("blob {digest}: its gc claim changed under each of {attempts} conditional writes")]
    ClaimContended {
        /// The blob.
        digest: Digest,
        /// Attempts made.
        attempts: u32,
    },
}

/// A store error with the operation and path, for `map_err`.
fn store_error(
    operation: &'static str,
    path: &Path,
) -> impl FnOnce(object_store::Error) -> BucketError {
    let path = path.to_string();
    move |source| BucketError::Store {
        operation,
        path,
        source,
    }
}

/// Whether a conditional write lost to another writer (`If-None-Match` or `If-Match` failed).
fn is_conflict(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

/// The registry's content in one bucket (under a prefix). Cheap to clone; each clone, and
/// each `Bucket` opened on the same configuration by another process, sees the same state.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// The same store, for the multipart calls of chunked uploads, whose parts arrive on
    /// different replicas.
    multipart: Arc<dyn MultipartStore>,
    /// The same store, for presigned URLs; `None` for stores that cannot sign.
    signer: Option<Arc<dyn Signer>>,
    prefix: Path,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("store", &self.store)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// Opens the bucket a configuration names (no request is sent).
    pub fn open(config: &BucketConfig) -> Result<Self, BucketConfigError> {
        let store = Arc::new(config.build()?);
        let signer: Arc<dyn Signer> = store.clone();
        let mut bucket = Self::with_store::<AmazonS3>(store, config.prefix.as_deref());
        bucket.signer = Some(signer);
        Ok(bucket)
    }

    /// A bucket over any object store (tests use `object_store::memory::InMemory`), its
    /// objects under `prefix` (`None` or `""`: the root).
    pub fn with_store<S: ObjectStore + MultipartStore>(
        store: Arc<S>,
        prefix: Option<&str>,
    ) -> Self {
        let prefix = prefix
            .map(|prefix| Path::from(prefix.trim_matches('/')))
            .unwrap_or_default();
        Self {
            store: store.clone(),
            multipart: store,
            signer: None,
            prefix,
        }
    }

    /// `<prefix>/<parts…>`.
    fn path<'a>(&self, parts: impl IntoIterator<Item = &'a str>) -> Path {
        let mut path = self.prefix.clone();
        path.extend(parts.into_iter().flat_map(|part| part.split('/')));
        path
    }

    /// `blobs/<alg>/<hex>`.
    fn blob_path(&self, digest: &Digest) -> Path {
        self.path(["blobs", digest.algorithm().name(), digest.hex()])
    }

    /// A small object's bytes and the version they were read at (for a later `If-Match`);
    /// `None` when it does not exist.
    async fn read_versioned(
        &self,
        path: &Path,
        operation: &'static str,
    ) -> Result<Option<(Bytes, UpdateVersion)>, BucketError> {
        Ok(self
            .read_versioned_dated(path, operation)
            .await?
            .map(|(bytes, version, _)| (bytes, version)))
    }

    /// [`Self::read_versioned`], plus when the object was last written.
    async fn read_versioned_dated(
        &self,
        path: &Path,
        operation: &'static str,
    ) -> Result<Option<(Bytes, UpdateVersion, std::time::SystemTime)>, BucketError> {
        let result = match self.store.get_opts(path, GetOptions::default()).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(store_error(operation, path)(error)),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let modified = result.meta.last_modified.into();
        let bytes = result.bytes().await.map_err(store_error(operation, path))?;
        Ok(Some((bytes, version, modified)))
    }

    /// Writes `doc` as JSON under `mode` (a conditional write): the version written.
    async fn write_json(
        &self,
        path: &Path,
        doc: &impl serde::Serialize,
        mode: PutMode,
    ) -> Result<UpdateVersion, object_store::Error> {
        let body = serde_json::to_vec(doc).map_err(|error| object_store::Error::Generic {
            store: "bucket",
            source: Box::new(error),
        })?;
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let result = self
            .store
            .put_opts(path, PutPayload::from(body), options)
            .await?;
        Ok(UpdateVersion::from(result))
    }
}
