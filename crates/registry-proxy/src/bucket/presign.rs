//! Presigned blob URLs: a complete blob answered with a redirect to the object store, so its
//! bytes bypass the replica.

use std::time::Duration;

use object_store::signer::{Method, Url};
use sealer_image_store::Digest;

use super::{Bucket, BucketError, store_error};

/// The longest validity S3 accepts for a presigned URL (SigV4: 7 days).
pub const MAX_PRESIGNED_EXPIRY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

impl Bucket {
    /// A URL that `GET`s the blob `digest` without credentials for `expires_in` (whole seconds,
    /// 1 s to [`MAX_PRESIGNED_EXPIRY`]). Signing is local: the blob's presence is not checked,
    /// so redirect only for a blob known to be complete. Fails for a store that cannot sign
    /// (a bucket made by [`Bucket::with_store`]).
    pub async fn presigned_blob_url(
        &self,
        digest: &Digest,
        expires_in: Duration,
    ) -> Result<Url, BucketError> {
        if expires_in < Duration::from_secs(1)
            || expires_in > MAX_PRESIGNED_EXPIRY
            || expires_in.subsec_nanos() != 0
        {
            return Err(BucketError::Invalid {
                what: "presigned URL expiry",
                value: format!("{expires_in:?}"),
                reason: format!(
                    "expected whole seconds from 1 s to {} s",
                    MAX_PRESIGNED_EXPIRY.as_secs()
                ),
            });
        }
        let path = self.blob_path(digest);
        let Some(signer) = &self.signer else {
            return Err(store_error("presigning a URL for", &path)(
                object_store::Error::NotSupported {
                    source: "this bucket's object store cannot presign URLs (only S3 can)".into(),
                },
            ));
        };
        signer
            .signed_url(Method::GET, &path, expires_in)
            .await
            .map_err(store_error("presigning a URL for", &path))
    }
}
