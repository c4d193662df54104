//! Blobs by digest: written through a multipart upload that completes only on a digest match.

use std::ops::Range;
use std::pin::pin;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use object_store::{GetOptions, GetRange, ObjectStoreExt as _, WriteMultipart};
use sealer_fs_abstraction::ErrorChain;
use sealer_image_store::{Digest, Hasher};

use super::{Bucket, BucketError, store_error};

/// Parts in flight at once while a blob streams in (each up to 5 MiB, object_store's chunk).
const PARTS_IN_FLIGHT: usize = 4;

/// What [`Bucket::put_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobPut {
    /// The blob's size.
    pub size: u64,
    /// False when the blob was already there (the body was not read).
    pub created: bool,
}

/// A stored blob's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobStat {
    /// Its size in bytes.
    pub size: u64,
}

/// A blob (or a range of it) being read.
pub struct BlobRead {
    /// The whole blob's size.
    pub size: u64,
    /// The byte range the stream carries.
    pub range: Range<u64>,
    /// The bytes.
    pub stream: BoxStream<'static, Result<Bytes, BucketError>>,
}

impl std::fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl Bucket {
    /// Stores the blob `digest` from `body`, hashed while it streams into a multipart upload
    /// that is completed only when the bytes hash to `digest` and aborted otherwise (or when
    /// `body` fails): no partial or unverified object is ever visible. A blob already present
    /// is not rewritten (`body` is not read). Success means what
    /// [`Bucket::blob_for_reference`] returning the blob means (a GC claim on it is
    /// cleared, no run deletes it before the caller links it); a blob a GC run is deleting is
    /// written anew once the run's delete is done.
    pub async fn put_blob<S>(&self, digest: &Digest, body: S) -> Result<BlobPut, BucketError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        if let Some(stat) = self.before_writing(digest).await? {
            return Ok(BlobPut {
                size: stat.size,
                created: false,
            });
        }
        let path = self.blob_path(digest);
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(store_error("starting the multipart upload of", &path))?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = Hasher::new(digest.algorithm());
        let mut size = 0u64;
        let mut body = pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(source) => {
                    abort(writer, digest).await;
                    return Err(BucketError::Body {
                        digest: digest.clone(),
                        received: size,
                        source,
                    });
                }
            };
            if let Err(error) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                abort(writer, digest).await;
                return Err(store_error("uploading a part of", &path)(error));
            }
            hasher.update(&chunk);
            size += chunk.len() as u64;
            writer.put(chunk);
        }
        let actual = hasher.finish();
        if actual != *digest {
            abort(writer, digest).await;
            return Err(BucketError::DigestMismatch {
                expected: digest.clone(),
                actual,
                size,
            });
        }
        writer
            .finish()
            .await
            .map_err(store_error("completing the multipart upload of", &path))?;
        tracing::debug!(%digest, size, "blob stored");
        self.after_writing(digest, size).await
    }

    /// The blob's metadata, `None` when it is not stored.
    pub async fn stat_blob(&self, digest: &Digest) -> Result<Option<BlobStat>, BucketError> {
        let path = self.blob_path(digest);
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(BlobStat { size: meta.size })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(store_error("stat", &path)(error)),
        }
    }

    /// Streams the blob, or the bytes `range` of it (its end is clamped to the size; a range
    /// that starts at or past the end is an error).
    pub async fn get_blob(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<BlobRead, BucketError> {
        let path = self.blob_path(digest);
        if let Some(range) = &range
            && range.start >= range.end
        {
            return Err(BucketError::Invalid {
                what: "range",
                value: format!("{range:?}"),
                reason: "a byte range holds at least one byte".to_owned(),
            });
        }
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BucketError::NotFound {
                    what: "blob",
                    path: path.to_string(),
                });
            }
            Err(error) => return Err(store_error("reading", &path)(error)),
        };
        let size = result.meta.size;
        let range = result.range.clone();
        let shown = path.to_string();
        let stream = result
            .into_stream()
            .map_err(move |source| BucketError::Store {
                operation: "streaming",
                path: shown.clone(),
                source,
            })
            .boxed();
        Ok(BlobRead {
            size,
            range,
            stream,
        })
    }
}

/// Aborts a multipart upload; a failure is only logged (the bucket's lifecycle rule or a later
/// purge removes what an abort left, and it is invisible anyway).
async fn abort(writer: WriteMultipart, digest: &Digest) {
    if let Err(error) = writer.abort().await {
        tracing::warn!(%digest, error = %ErrorChain(&error), "aborting a multipart upload failed");
    }
}
