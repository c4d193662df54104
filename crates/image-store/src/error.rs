//! The store's error type.

use std::path::PathBuf;

use sealer_fs_abstraction::FsError;

use crate::digest::{Digest, DigestError};
use crate::model::ManifestError;
use crate::reference::ReferenceError;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Reading or writing a stream failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Content did not hash to the digest it was announced with; nothing was stored.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What the content was (a blob path, an archive entry).
        what: String,
        /// The announced digest.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
    /// Content did not have the announced size; nothing was stored.
    #[error(
        "size mismatch for {digest}: expected {expected} bytes, got {actual}; nothing was stored"
    )]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The announced size.
        expected: u64,
        /// The size received (or at least this much).
        actual: u64,
    },
    /// Content was longer than announced; nothing was stored.
    #[error("{what} is larger than the announced {limit} bytes")]
    TooLarge {
        /// What the content was.
        what: String,
        /// The announced size.
        limit: u64,
    },
    /// A blob is not in the store.
    #[error("blob {0} is not in the store")]
    BlobNotFound(Digest),
    /// A manifest could not be parsed.
    #[error("manifest {digest}")]
    Manifest {
        /// The manifest's digest.
        digest: Digest,
        /// What is wrong with it.
        #[source]
        source: ManifestError,
    },
    /// A manifest refers to content that is not in the store.
    #[error("{parent} refers to {child}, which is not in the store")]
    MissingChild {
        /// The referring manifest.
        parent: Digest,
        /// The missing blob.
        child: Digest,
    },
    /// No image has this name or digest.
    #[error("image {0:?} is not in the store (see `sealer images`)")]
    ImageNotFound(String),
    /// An index has no image for the requested platform.
    #[error("image {reference} has no {platform} variant; it has: {available}")]
    PlatformNotFound {
        /// The image.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// The platforms it has, comma separated.
        available: String,
    },
    /// A multi-arch image lists the platform, but the store does not carry its manifest (a
    /// partial image: pulled or carried for other platforms only).
    #[error(
        "image {reference} lists {platform} but does not carry it (a partial multi-arch image); \
         it carries: {carried}"
    )]
    PlatformNotCarried {
        /// The image.
        reference: String,
        /// The platform asked for (as the index names it).
        platform: String,
        /// The platforms whose manifests are here, comma separated (`none` when none is).
        carried: String,
    },
    /// A short digest matches several images.
    #[error("{0:?} matches several images; give more of the digest")]
    Ambiguous(String),
    /// A malformed image reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A malformed digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The layout's `index.json` or `oci-layout` is not valid.
    #[error("{path}: {reason}")]
    Layout {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A concurrent prune removed content this operation relied on.
    #[error("blob {0} was removed by a concurrent prune; run the command again")]
    RemovedConcurrently(Digest),
}

impl StoreError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
