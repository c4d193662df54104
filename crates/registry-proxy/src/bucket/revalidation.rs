//! When each cached tag of a pull-through upstream was last confirmed upstream, kept in the
//! bucket beside the tag (`repositories/<name>/tag-checks/<tag>`), so that a tag TTL costs ONE
//! upstream request per cluster, not one per replica: the replica whose conditional write
//! moves the time forward is the one that asks; the others see the tag fresh.

use std::time::Duration;

use object_store::{PutMode, UpdateVersion};
use sealer_fs_abstraction::error_chain;
use serde::{Deserialize, Serialize};

use super::leases::now_ms;
use super::tags::check_tag;
use super::{Bucket, BucketError, is_conflict, store_error};

/// The stored state of one tag.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CheckDoc {
    /// Unix milliseconds of the last confirmation (or of the claim of a revalidation in
    /// progress).
    checked_at: u64,
}

/// What [`Bucket::claim_tag_revalidation`] decided.
#[derive(Debug)]
pub enum TagRevalidation {
    /// Confirmed upstream this long ago (within the TTL): serve the cached tag.
    Fresh(Duration),
    /// Due, and this caller won the claim: ask the upstream, then settle it with
    /// [`Bucket::settle_tag_revalidation`].
    Claimed(RevalidationClaim),
}

/// A won revalidation of one tag.
#[derive(Debug)]
pub struct RevalidationClaim {
    repository: String,
    tag: String,
    /// The time before the claim (`None`: never checked), restored when the revalidation
    /// fails so that the next request asks again.
    previous: Option<u64>,
    version: UpdateVersion,
}

impl Bucket {
    /// Whether the cached `repository:tag` was confirmed upstream within `ttl`; when not,
    /// claims its revalidation by a conditional write of the time now. Of replicas racing for
    /// one expired tag exactly one gets [`TagRevalidation::Claimed`]; the others get
    /// `Fresh` (the winner is asking right now).
    pub async fn claim_tag_revalidation(
        &self,
        repository: &str,
        tag: &str,
        ttl: Duration,
    ) -> Result<TagRevalidation, BucketError> {
        check_tag(tag)?;
        let path = self.repository_path(repository, "tag-checks")?.join(tag);
        let current = self.read_versioned(&path, "reading tag check").await?;
        let now = now_ms();
        let (mode, previous) = match &current {
            None => (PutMode::Create, None),
            Some((bytes, version)) => {
                let doc: CheckDoc =
                    serde_json::from_slice(bytes).map_err(|error| BucketError::Corrupt {
                        what: "tag check",
                        path: path.to_string(),
                        reason: error_chain(&error),
                    })?;
                let age = Duration::from_millis(now.saturating_sub(doc.checked_at));
                if age < ttl {
                    return Ok(TagRevalidation::Fresh(age));
                }
                (PutMode::Update(version.clone()), Some(doc.checked_at))
            }
        };
        match self
            .write_json(&path, &CheckDoc { checked_at: now }, mode)
            .await
        {
            Ok(version) => Ok(TagRevalidation::Claimed(RevalidationClaim {
                repository: repository.to_owned(),
                tag: tag.to_owned(),
                previous,
                version,
            })),
            // Another replica claimed it first: it is asking the upstream now.
            Err(error) if is_conflict(&error) => Ok(TagRevalidation::Fresh(Duration::ZERO)),
            Err(error) => Err(store_error("writing tag check", &path)(error)),
        }
    }

    /// Ends a revalidation: confirmed (the claim's time stands), or failed (the previous
    /// time is restored, unless another replica wrote since, so the next request asks again).
    pub async fn settle_tag_revalidation(
        &self,
        claim: RevalidationClaim,
        confirmed: bool,
    ) -> Result<(), BucketError> {
        if confirmed {
            return Ok(());
        }
        let path = self
            .repository_path(&claim.repository, "tag-checks")?
            .join(claim.tag.as_str());
        let restored = CheckDoc {
            checked_at: claim.previous.unwrap_or(0),
        };
        match self
            .write_json(&path, &restored, PutMode::Update(claim.version))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_conflict(&error) => Ok(()),
            Err(error) => Err(store_error("restoring tag check", &path)(error)),
        }
    }
}
