//! The layer cache's error type.

use sealer_fs_abstraction::FsError;
use sealer_image_store::{Digest, StoreError};

/// Why a layer-cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file operation failed (in the store or in the build context).
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An entry was to be recorded for a layer the store does not hold (entries only ever
    /// point at stored layers).
    #[error("layer {digest} ({size} bytes) is not in the store; store the layer before caching it")]
    LayerMissing {
        /// The layer's digest.
        digest: Digest,
        /// The size the entry announced.
        size: u64,
    },
    /// A cache file could not be encoded.
    #[error("cannot encode {what}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result of layer-cache operations.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
