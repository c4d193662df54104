//! Fill leases: which replica fetches a blob from the upstream, so that a cluster of replicas
//! sends ONE upstream `GET` per digest.
//!
//! `fills/<alg>/<hex>` holds `{"holder", "generation", "expires_at"}`: the holder's advertised
//! base URL (where the other replicas stream the fill from), a counter bumped by every
//! takeover, and the expiry in unix milliseconds. Every change is a conditional write:
//!
//! * a free digest is taken with `If-None-Match: *` (one creator wins);
//! * an expired lease (its holder died or stalled) is taken over with `If-Match` on the ETag
//!   just read, `generation + 1` (one taker wins; the others see the winner's live lease);
//! * the holder renews with `If-Match` on the version it wrote, so a holder whose lease was
//!   taken over learns it ([`LeaseError::Lost`]) instead of overwriting the new holder's.
//!
//! Expiry compares the replicas' wall clocks: the TTL must exceed their skew by a margin.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{PutMode, UpdateVersion};
use sealer_image_store::Digest;
use serde::{Deserialize, Serialize};

use super::{Bucket, BucketError, is_conflict, store_error};

/// How many conditional writes one [`Bucket::acquire_fill_lease`] tries. Each lost write means
/// another replica created or took over the lease, which the next read then reports as held;
/// only leases that expire or are released again and again in between exhaust this.
pub const LEASE_ATTEMPTS: u32 = 8;

/// Errors of fill lease operations.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The bucket failed, or a lease object does not parse.
    #[error(transparent)]
    Bucket(#[from] BucketError),
    /// The lease is no longer the caller's: another replica took it over (or it was removed)
    /// since the caller wrote it. The caller must stop filling for it.
    #[error("fill lease of {digest} (generation {generation}, holder {holder}) was lost: {reason}")]
    Lost {
        /// The digest the lease was for.
        digest: Digest,
        /// The caller's holder URL.
        holder: String,
        /// The generation the caller held.
        generation: u64,
        /// What was found instead.
        reason: &'static str,
    },
    /// Every conditional write met another replica's change in between.
    #[error("fill lease of {digest}: {attempts} conditional writes all conflicted")]
    Contended {
        /// The digest.
        digest: Digest,
        /// Attempts made.
        attempts: u32,
    },
}

/// A fill lease this replica holds. Keep it to [`Bucket::renew_fill_lease`] or
/// [`Bucket::release_fill_lease`] it; it remembers the version it was written at.
#[derive(Debug, Clone)]
pub struct Lease {
    digest: Digest,
    holder: String,
    generation: u64,
    expires_at: u64,
    version: UpdateVersion,
}

impl Lease {
    /// The digest being filled.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The holder's advertised base URL.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// 1 for a fresh lease, +1 per takeover.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When the lease expires unless renewed, in unix milliseconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

/// What [`Bucket::acquire_fill_lease`] found.
#[derive(Debug, Clone)]
pub enum Acquire {
    /// The caller holds the lease now: it fetches the blob from the upstream.
    Acquired(Lease),
    /// Another live lease exists: stream the fill from its holder.
    HeldBy {
        /// The holder's advertised base URL (may be the caller's own, from an earlier acquire).
        holder: String,
        /// Its generation.
        generation: u64,
        /// Its expiry in unix milliseconds.
        expires_at: u64,
    },
}

/// The lease object's body.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseDoc {
    holder: String,
    generation: u64,
    expires_at: u64,
}

/// A lease object as read.
struct Current {
    doc: LeaseDoc,
    version: UpdateVersion,
}

impl Bucket {
    /// Takes the fill lease of `digest` for `holder` (this replica's advertised base URL) for
    /// `ttl`: created when there is none, taken over (`generation + 1`) when the one there has
    /// expired; otherwise reports the live holder. Of any number of replicas racing for one
    /// digest, exactly one acquires it.
    pub async fn acquire_fill_lease(
        &self,
        digest: &Digest,
        holder: &str,
        ttl: Duration,
    ) -> Result<Acquire, LeaseError> {
        check_holder(holder)?;
        let ttl_ms = ttl_ms(ttl)?;
        let path = self.lease_path(digest);
        for _ in 0..LEASE_ATTEMPTS {
            let (mode, generation) = match self.read_lease(&path).await? {
                None => (PutMode::Create, 1),
                Some(current) if current.doc.expires_at > now_ms() => {
                    return Ok(Acquire::HeldBy {
                        holder: current.doc.holder,
                        generation: current.doc.generation,
                        expires_at: current.doc.expires_at,
                    });
                }
                Some(current) => (
                    PutMode::Update(current.version),
                    current.doc.generation.saturating_add(1),
                ),
            };
            let doc = LeaseDoc {
                holder: holder.to_owned(),
                generation,
                expires_at: now_ms().saturating_add(ttl_ms),
            };
            match self.write_json(&path, &doc, mode).await {
                Ok(version) => {
                    tracing::debug!(%digest, holder, generation, "fill lease acquired");
                    return Ok(Acquire::Acquired(Lease {
                        digest: digest.clone(),
                        holder: doc.holder,
                        generation,
                        expires_at: doc.expires_at,
                        version,
                    }));
                }
                // Another replica created or took it over (or released it): read again.
                Err(error) if is_conflict(&error) || is_not_found(&error) => {}
                Err(error) => return Err(store_error("writing fill lease", &path)(error).into()),
            }
        }
        Err(LeaseError::Contended {
            digest: digest.clone(),
            attempts: LEASE_ATTEMPTS,
        })
    }

    /// Extends `lease` to expire `ttl` from now, with `If-Match` on the version it was last
    /// written at: fails with [`LeaseError::Lost`] when another replica took it over or it
    /// is gone, and then nothing was written.
    pub async fn renew_fill_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, LeaseError> {
        let ttl_ms = ttl_ms(ttl)?;
        let path = self.lease_path(&lease.digest);
        let doc = LeaseDoc {
            holder: lease.holder.clone(),
            generation: lease.generation,
            expires_at: now_ms().saturating_add(ttl_ms),
        };
        match self
            .write_json(&path, &doc, PutMode::Update(lease.version.clone()))
            .await
        {
            Ok(version) => Ok(Lease {
                expires_at: doc.expires_at,
                version,
                ..lease.clone()
            }),
            Err(error) if is_conflict(&error) || is_not_found(&error) => Err(lost(
                lease,
                "the lease object changed or is gone (taken over by another replica)",
            )),
            Err(error) => Err(store_error("renewing fill lease", &path)(error).into()),
        }
    }

    /// Gives `lease` up once the fill ended, so the next miss need not wait for its expiry.
    /// The object is read again first and left alone unless it is still this very lease
    /// (same ETag and generation): `Ok(false)` then, as a lease taken over belongs to its new
    /// holder. A lease of ours that already expired is not deleted (another replica may be
    /// taking it over at this moment) but marked expired with `If-Match`, which the next
    /// acquirer takes over.
    pub async fn release_fill_lease(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let path = self.lease_path(&lease.digest);
        let Some(current) = self.read_lease(&path).await? else {
            return Ok(false);
        };
        let ours = current.version.e_tag.is_some()
            && current.version.e_tag == lease.version.e_tag
            && current.doc.generation == lease.generation
            && current.doc.holder == lease.holder;
        if !ours {
            return Ok(false);
        }
        if current.doc.expires_at > now_ms() {
            // Live and ours: no other replica takes it over before it expires.
            return self
                .delete_object(&path, "releasing fill lease")
                .await
                .map_err(LeaseError::from);
        }
        let released = LeaseDoc {
            expires_at: 0,
            ..current.doc
        };
        match self
            .write_json(&path, &released, PutMode::Update(current.version))
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if is_conflict(&error) || is_not_found(&error) => Ok(false),
            Err(error) => Err(store_error("releasing fill lease", &path)(error).into()),
        }
    }

    /// `fills/<alg>/<hex>`.
    fn lease_path(&self, digest: &Digest) -> Path {
        self.path(["fills", digest.algorithm().name(), digest.hex()])
    }

    async fn read_lease(&self, path: &Path) -> Result<Option<Current>, BucketError> {
        let Some((bytes, version)) = self.read_versioned(path, "reading fill lease").await? else {
            return Ok(None);
        };
        let doc = serde_json::from_slice(&bytes).map_err(|error| BucketError::Corrupt {
            what: "fill lease",
            path: path.to_string(),
            reason: format!(
                "expected {{\"holder\": URL, \"generation\": N, \"expires_at\": unix ms}}: {error}"
            ),
        })?;
        Ok(Some(Current { doc, version }))
    }
}

fn lost(lease: &Lease, reason: &'static str) -> LeaseError {
    LeaseError::Lost {
        digest: lease.digest.clone(),
        holder: lease.holder.clone(),
        generation: lease.generation,
        reason,
    }
}

/// A conditional write on an object that vanished meanwhile (released by its holder).
fn is_not_found(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::NotFound { .. })
}

fn check_holder(holder: &str) -> Result<(), BucketError> {
    if holder.is_empty() || holder.chars().any(char::is_whitespace) {
        return Err(BucketError::Invalid {
            what: "fill lease holder",
            value: holder.to_owned(),
            reason: "expected the replica's advertised base URL, e.g. http://10.0.0.5:5000"
                .to_owned(),
        });
    }
    Ok(())
}

fn ttl_ms(ttl: Duration) -> Result<u64, BucketError> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(BucketError::Invalid {
            what: "fill lease ttl",
            value: format!("{ttl:?}"),
            reason: "expected at least one millisecond".to_owned(),
        });
    }
    Ok(ms)
}

/// The wall clock in unix milliseconds (0 before 1970: every lease reads as live then).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}
