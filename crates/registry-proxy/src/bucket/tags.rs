//! Tags (one object per tag) and manifest links (one object per repository and digest).

use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion};
use sealer_image_store::Digest;
use sealer_image_store::reference::{validate_repository, validate_tag};

use super::{Bucket, BucketError, TAG_WRITE_ATTEMPTS, is_conflict, store_error};

/// How a tag write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagOutcome {
    /// The tag was new (`If-None-Match: *` won).
    Created,
    /// The tag pointed elsewhere and was moved (`If-Match` on the version read won).
    Updated,
    /// The tag already pointed at the digest.
    Unchanged,
}

/// What [`Bucket::put_tag`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagWrite {
    /// The result.
    pub outcome: TagOutcome,
    /// Conditional writes that lost to another writer before this one landed.
    pub conflicts: u32,
}

/// One page of a tag list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPage {
    /// Tags in byte order, after `last`, at most `n`.
    pub tags: Vec<String>,
    /// Whether more tags follow (the `Link` header of the API).
    pub more: bool,
}

/// A tag object's digest and the version it was read at.
struct TagVersion {
    digest: Digest,
    version: UpdateVersion,
}

impl Bucket {
    /// Points `repository:tag` at `digest`: a create with `If-None-Match: *`, else an update
    /// with `If-Match` on the version just read, retried (at most [`TAG_WRITE_ATTEMPTS`]) when
    /// another writer changed the tag in between. Concurrent writers of one tag never lose
    /// an update silently: each lands once, in some order.
    pub async fn put_tag(
        &self,
        repository: &str,
        tag: &str,
        digest: &Digest,
    ) -> Result<TagWrite, BucketError> {
        let path = self.tag_path(repository, tag)?;
        let mut conflicts = 0;
        for _ in 0..TAG_WRITE_ATTEMPTS {
            let (mode, outcome) = match self.read_tag(&path).await? {
                None => (PutMode::Create, TagOutcome::Created),
                Some(current) if current.digest == *digest => {
                    return Ok(TagWrite {
                        outcome: TagOutcome::Unchanged,
                        conflicts,
                    });
                }
                Some(current) => (PutMode::Update(current.version), TagOutcome::Updated),
            };
            match self.write_tag(&path, digest, mode).await {
                Ok(()) => return Ok(TagWrite { outcome, conflicts }),
                Err(error) if is_conflict(&error) => conflicts += 1,
                Err(error) => return Err(store_error("writing tag", &path)(error)),
            }
        }
        Err(BucketError::TagContended {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            attempts: TAG_WRITE_ATTEMPTS,
        })
    }

    /// Creates `repository:tag` only if it does not exist (`If-None-Match: *`): `Ok(false)`
    /// when it exists (or another writer created it first).
    pub async fn create_tag(
        &self,
        repository: &str,
        tag: &str,
        digest: &Digest,
    ) -> Result<bool, BucketError> {
        let path = self.tag_path(repository, tag)?;
        match self.write_tag(&path, digest, PutMode::Create).await {
            Ok(()) => Ok(true),
            Err(error) if is_conflict(&error) => Ok(false),
            Err(error) => Err(store_error("creating tag", &path)(error)),
        }
    }

    /// The digest `repository:tag` points at, `None` when the tag does not exist.
    pub async fn get_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<Digest>, BucketError> {
        let path = self.tag_path(repository, tag)?;
        Ok(self.read_tag(&path).await?.map(|current| current.digest))
    }

    /// Removes a tag; false when it did not exist.
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<bool, BucketError> {
        let path = self.tag_path(repository, tag)?;
        self.delete_object(&path, "deleting tag").await
    }

    /// The tags of `repository` after `last` (exclusive), at most `n` (all when `None`), in
    /// byte order: a listing of the tag objects from `last` on, stopped after `n + 1` keys.
    pub async fn list_tags(
        &self,
        repository: &str,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<TagPage, BucketError> {
        let prefix = self.repository_path(repository, "tags")?;
        let listing = match last {
            Some(last) => {
                check_tag(last)?;
                let offset = prefix.clone().join(last);
                self.store.list_with_offset(Some(&prefix), &offset)
            }
            None => self.store.list(Some(&prefix)),
        };
        let limit = n.map_or(usize::MAX, |n| n.saturating_add(1));
        let mut tags: Vec<String> = listing
            .try_filter_map(|meta| {
                // Only direct children are tags.
                let tag = meta.location.prefix_match(&prefix).and_then(|mut parts| {
                    match (parts.next(), parts.next()) {
                        (Some(tag), None) => Some(tag.as_ref().to_owned()),
                        _ => None,
                    }
                });
                std::future::ready(Ok(tag))
            })
            .take(limit)
            .try_collect()
            .await
            .map_err(store_error("listing tags under", &prefix))?;
        // S3 lists in byte order already; other stores (and `InMemory`) may not promise it.
        tags.sort_unstable();
        let more = n.is_some_and(|n| tags.len() > n);
        if let Some(n) = n {
            tags.truncate(n);
        }
        Ok(TagPage { tags, more })
    }

    /// Records that `repository` holds the manifest `digest` (idempotent: `If-None-Match`).
    pub async fn put_manifest_link(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<(), BucketError> {
        let path = self.manifest_link_path(repository, digest)?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(digest.to_string()), options)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_conflict(&error) => Ok(()),
            Err(error) => Err(store_error("linking manifest", &path)(error)),
        }
    }

    /// Whether `repository` holds the manifest `digest`.
    pub async fn has_manifest_link(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, BucketError> {
        let path = self.manifest_link_path(repository, digest)?;
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(store_error("stat", &path)(error)),
        }
    }

    /// Removes the link; false when there was none.
    pub async fn delete_manifest_link(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, BucketError> {
        let path = self.manifest_link_path(repository, digest)?;
        self.delete_object(&path, "unlinking manifest").await
    }

    async fn write_tag(
        &self,
        path: &Path,
        digest: &Digest,
        mode: PutMode,
    ) -> Result<(), object_store::Error> {
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.store
            .put_opts(path, PutPayload::from(digest.to_string()), options)
            .await
            .map(drop)
    }

    async fn read_tag(&self, path: &Path) -> Result<Option<TagVersion>, BucketError> {
        let Some((bytes, version)) = self.read_versioned(path, "reading tag").await? else {
            return Ok(None);
        };
        let digest = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| BucketError::Corrupt {
                what: "tag",
                path: path.to_string(),
                reason: "expected a digest such as sha256:<64 hex>".to_owned(),
            })?;
        Ok(Some(TagVersion { digest, version }))
    }

    pub(super) async fn delete_object(
        &self,
        path: &Path,
        operation: &'static str,
    ) -> Result<bool, BucketError> {
        // S3 answers 204 for a missing key too, so existence is asked first.
        match self.store.head(path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(error) => return Err(store_error(operation, path)(error)),
        }
        match self.store.delete(path).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(store_error(operation, path)(error)),
        }
    }

    /// `repositories/<name>/<kind>`, the name checked.
    pub(super) fn repository_path(
        &self,
        repository: &str,
        kind: &str,
    ) -> Result<Path, BucketError> {
        validate_repository(repository).map_err(|reason| BucketError::Invalid {
            what: "repository",
            value: repository.to_owned(),
            reason,
        })?;
        Ok(self.path(["repositories", repository, kind]))
    }

    fn tag_path(&self, repository: &str, tag: &str) -> Result<Path, BucketError> {
        check_tag(tag)?;
        Ok(self.repository_path(repository, "tags")?.join(tag))
    }

    fn manifest_link_path(&self, repository: &str, digest: &Digest) -> Result<Path, BucketError> {
        Ok(self
            .repository_path(repository, "manifests")?
            .join(digest.algorithm().name())
            .join(digest.hex()))
    }
}

pub(super) fn check_tag(tag: &str) -> Result<(), BucketError> {
    validate_tag(tag).map_err(|reason| BucketError::Invalid {
        what: "tag",
        value: tag.to_owned(),
        reason: reason.to_owned(),
    })
}
