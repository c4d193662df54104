//! What the registry server reads of the layout beyond single objects: the manifest links of
//! a repository and of the whole bucket, referrer links, small blobs read whole, blob
//! removal, and the readiness probe.
//!
//! `repositories/<name>/referrers/<subject-alg>/<subject-hex>/<alg>-<hex>`: one empty object
//! per manifest of repository `name` whose subject is that digest (written with
//! `If-None-Match`, idempotent), so the referrers API is one listing.

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload};
use sealer_image_store::Digest;

use super::{Bucket, BucketError, is_conflict, store_error};

impl Bucket {
    /// Records that `referrer`, a manifest of `repository`, has the subject `subject`.
    pub async fn put_referrer_link(
        &self,
        repository: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<(), BucketError> {
        let path = self.referrer_path(repository, subject, referrer)?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(referrer.to_string()), options)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_conflict(&error) => Ok(()),
            Err(error) => Err(store_error("linking referrer", &path)(error)),
        }
    }

    /// Removes a referrer link; false when there was none.
    pub async fn delete_referrer_link(
        &self,
        repository: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<bool, BucketError> {
        let path = self.referrer_path(repository, subject, referrer)?;
        self.delete_object(&path, "unlinking referrer").await
    }

    /// The manifests of `repository` whose subject is `subject`, ordered by digest.
    pub async fn list_referrer_links(
        &self,
        repository: &str,
        subject: &Digest,
    ) -> Result<Vec<Digest>, BucketError> {
        let prefix = self
            .repository_path(repository, "referrers")?
            .join(subject.algorithm().name())
            .join(subject.hex());
        let mut found: Vec<Digest> = self
            .children(&prefix)
            .await?
            .iter()
            .filter_map(|name| {
                let (algorithm, hex) = name.split_once('-')?;
                format!("{algorithm}:{hex}").parse().ok()
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// The manifests `repository` holds (its manifest links), ordered by digest.
    pub async fn list_manifest_links(&self, repository: &str) -> Result<Vec<Digest>, BucketError> {
        let prefix = self.repository_path(repository, "manifests")?;
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(store_error("listing manifests under", &prefix))?;
        let mut found: Vec<Digest> = objects
            .iter()
            .filter_map(|meta| {
                let mut parts = meta.location.prefix_match(&prefix)?;
                let (algorithm, hex) = (parts.next()?, parts.next()?);
                format!("{}:{}", algorithm.as_ref(), hex.as_ref())
                    .parse()
                    .ok()
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// Whether `repository` holds any manifest (one listed key is enough).
    pub async fn has_manifests(&self, repository: &str) -> Result<bool, BucketError> {
        let prefix = self.repository_path(repository, "manifests")?;
        match self.store.list(Some(&prefix)).next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(error)) => Err(store_error("listing manifests under", &prefix)(error)),
        }
    }

    /// Every manifest link of the bucket: `(repository, digest)`.
    pub async fn list_all_manifest_links(&self) -> Result<Vec<(String, Digest)>, BucketError> {
        let prefix = self.path(["repositories"]);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(store_error("listing repositories under", &prefix))?;
        Ok(objects
            .iter()
            .filter_map(|meta| {
                let parts: Vec<String> = meta
                    .location
                    .prefix_match(&prefix)?
                    .map(|part| part.as_ref().to_owned())
                    .collect();
                // <name…>/manifests/<alg>/<hex>
                let [name @ .., kind, algorithm, hex] = parts.as_slice() else {
                    return None;
                };
                if kind != "manifests" || name.is_empty() {
                    return None;
                }
                let digest = format!("{algorithm}:{hex}").parse().ok()?;
                Some((name.join("/"), digest))
            })
            .collect())
    }

    /// A blob of at most `max` bytes, read whole; `None` when it is absent or larger.
    pub async fn read_small_blob(
        &self,
        digest: &Digest,
        max: u64,
    ) -> Result<Option<Bytes>, BucketError> {
        match self.stat_blob(digest).await? {
            Some(stat) if stat.size <= max => {}
            _ => return Ok(None),
        }
        let read = match self.get_blob(digest, None).await {
            Ok(read) => read,
            Err(BucketError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut bytes = BytesMut::new();
        let mut stream = read.stream;
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(Some(bytes.freeze()))
    }

    /// Removes a blob; false when it was absent.
    pub async fn delete_blob(&self, digest: &Digest) -> Result<bool, BucketError> {
        let path = self.blob_path(digest);
        self.delete_object(&path, "deleting blob").await
    }

    /// Whether the bucket answers: one listing request under the prefix.
    pub async fn probe(&self) -> Result<(), BucketError> {
        let prefix = self.path(["repositories"]);
        match self.store.list(Some(&prefix)).next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(store_error("listing", &prefix)(error)),
        }
    }

    /// The names of the objects directly under `prefix`.
    async fn children(&self, prefix: &Path) -> Result<Vec<String>, BucketError> {
        let objects: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(store_error("listing", prefix))?;
        Ok(objects
            .iter()
            .filter_map(|meta| {
                let mut parts = meta.location.prefix_match(prefix)?;
                match (parts.next(), parts.next()) {
                    (Some(name), None) => Some(name.as_ref().to_owned()),
                    _ => None,
                }
            })
            .collect())
    }

    fn referrer_path(
        &self,
        repository: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<Path, BucketError> {
        Ok(self
            .repository_path(repository, "referrers")?
            .join(subject.algorithm().name())
            .join(subject.hex())
            .join(format!(
                "{}-{}",
                referrer.algorithm().name(),
                referrer.hex()
            )))
    }
}
