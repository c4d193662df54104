//! Progress reporting for transfers: one callback set per blob, so a front end can draw one
//! bar per layer.

use sealer_image_store::Digest;

/// How a blob's transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The bytes were transferred.
    Transferred,
    /// Nothing to do: the blob was already there (in the store, or in the registry).
    AlreadyPresent,
    /// The registry linked it from another repository (push only).
    Mounted,
    /// The transfer failed (the operation reports the error).
    Failed,
}

/// Receives transfer progress. Called from several threads and tasks at once (blobs move in
/// parallel); every method has an empty default.
pub trait TransferProgress: Send + Sync {
    /// A blob's transfer starts; `size` bytes are expected.
    fn blob_started(&self, digest: &Digest, size: u64) {
        let _ = (digest, size);
    }

    /// `bytes` more bytes of a blob moved.
    fn blob_advanced(&self, digest: &Digest, bytes: u64) {
        let _ = (digest, bytes);
    }

    /// A blob's transfer goes on from `offset` (a resume after a dropped connection, or 0
    /// for a retry from the start).
    fn blob_restarted(&self, digest: &Digest, offset: u64) {
        let _ = (digest, offset);
    }

    /// A blob is done.
    fn blob_finished(&self, digest: &Digest, outcome: BlobOutcome) {
        let _ = (digest, outcome);
    }
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl TransferProgress for NoProgress {}
