//! Blobs kept for a pull-through cache: a registry that fetched a blob from an upstream
//! (a layer asked for by digest, perhaps without its manifest) records an empty marker
//! `cached/<algorithm>-<hex>` whose mtime is the blob's last use. Such a blob belongs to the
//! cache, whose own size limit evicts it ([`Store::evict_cached`]): [`Store::gc_with`]
//! keeps it, and [`Store::fsck`] counts it as cached, not unreferenced. A blob that pushed
//! or loaded content reaches is never evicted; its marker is dropped instead.

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::blob::BlobStore;
use crate::digest::Digest;
use crate::error::Result;
use crate::markers::Markers;
use crate::model::{Descriptor, UPSTREAM_ANNOTATION};
use crate::store::Store;

/// The cache markers.
const CACHED: Markers = Markers::new("cached");

/// A blob of the pull-through cache, as [`Store::cached_blobs`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBlob {
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last used (its marker's mtime).
    pub last_used: SystemTime,
}

/// What [`Store::evict_cached`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Blobs removed, with their sizes.
    pub evicted: Vec<(Digest, u64)>,
    /// Bytes removed.
    pub bytes: u64,
    /// Blobs that pushed or loaded content reaches: kept, and no longer the cache's (their
    /// markers are removed), with their sizes.
    pub released: Vec<(Digest, u64)>,
    /// Blobs that were no longer in the store (their markers are removed).
    pub gone: Vec<Digest>,
    /// Blobs skipped because they were in use (being served or filled).
    pub in_use: usize,
    /// `index.json` entries of the cache removed with the manifests they named.
    pub entries_removed: usize,
}

/// Whether an `index.json` entry was created by a pull-through cache.
pub fn is_cached_entry(entry: &Descriptor) -> bool {
    entry.annotations.contains_key(UPSTREAM_ANNOTATION)
}

impl Store {
    /// Records the present blob `digest` as the pull-through cache's, used now. Returns
    /// `false`, recording nothing, when the blob is absent.
    pub fn mark_cached(&self, digest: &Digest) -> Result<bool> {
        if self.blobs().stat(digest)?.is_none() {
            return Ok(false);
        }
        self.write_marker(digest, SystemTime::now())?;
        Ok(true)
    }

    fn write_marker(&self, digest: &Digest, used: SystemTime) -> Result<()> {
        // Losing the marker in a crash costs the blob's recency only (a restart adopts what
        // cached entries reach again).
        CACHED.write(self.fs().as_ref(), digest, used)
    }

    /// Records that the cached blob `digest` was used at `used` (nothing when it is not the
    /// cache's).
    pub fn touch_cached(&self, digest: &Digest, used: SystemTime) -> Result<()> {
        CACHED.touch(self.fs().as_ref(), digest, used)
    }

    /// Makes `digest` no longer the cache's (a push uploaded it: it is pushed content now).
    pub fn unmark_cached(&self, digest: &Digest) -> Result<()> {
        CACHED.remove(self.fs().as_ref(), digest)
    }

    /// The digests marked as the cache's (present or not).
    pub(crate) fn cached_markers(&self) -> Result<BTreeSet<Digest>> {
        CACHED.list(self.fs().as_ref())
    }

    /// Every blob of the cache with its size and last use; markers of blobs no longer in
    /// the store are removed.
    pub fn cached_blobs(&self) -> Result<Vec<CachedBlob>> {
        let mut found = Vec::new();
        for digest in self.cached_markers()? {
            let Some(size) = self.blobs().stat(&digest)? else {
                self.unmark_cached(&digest)?;
                continue;
            };
            let last_used = match self.fs().metadata(&CACHED.path(&digest)) {
                Ok(metadata) => metadata.modified.unwrap_or(SystemTime::UNIX_EPOCH),
                Err(error) if error.is_not_found() => continue,
                Err(error) => return Err(error.into()),
            };
            found.push(CachedBlob {
                digest,
                size,
                last_used,
            });
        }
        Ok(found)
    }

    /// The present blobs that the entries of `manifests` not created by the cache (pushed or
    /// loaded content) reach: never the cache's to evict.
    fn reached_by_others(&self, manifests: &[Descriptor]) -> Result<BTreeSet<Digest>> {
        let others: Vec<Descriptor> = manifests
            .iter()
            .filter(|entry| !is_cached_entry(entry))
            .cloned()
            .collect();
        Ok(self.reachable(&others)?.present)
    }

    /// Marks the blobs that cached `index.json` entries reach, and that nothing else
    /// reaches, as the cache's when they have no marker yet (a cache filled before markers
    /// existed, or a lost marker), last used when their file was written. Returns how many.
    pub fn adopt_cached_entries(&self) -> Result<usize> {
        let _gc = self.gc_lock()?;
        let snapshot = self.index_snapshot()?;
        let manifests = &snapshot.index().manifests;
        let cached: Vec<Descriptor> = manifests
            .iter()
            .filter(|entry| is_cached_entry(entry))
            .cloned()
            .collect();
        if cached.is_empty() {
            return Ok(0);
        }
        let protected = self.reached_by_others(manifests)?;
        let marked = self.cached_markers()?;
        let mut adopted = 0;
        for digest in self.reachable(&cached)?.present {
            if protected.contains(&digest) || marked.contains(&digest) {
                continue;
            }
            let written = self
                .fs()
                .metadata(&digest.blob_path())?
                .modified
                .unwrap_or(SystemTime::UNIX_EPOCH);
            self.write_marker(&digest, written)?;
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Evicts cached blobs in the order of `order` (least recently used first) until
    /// `wanted` bytes left the cache (evicted, or released), under the GC lock. A blob for which `in_use` is true (being
    /// served or filled) is skipped; one that pushed or loaded content reaches (an
    /// `index.json` entry not created by the cache) is kept and released from the cache.
    /// A manifest is evicted with the cache's `index.json` entries naming it (removed
    /// first), so no entry is left without its manifest; the caller reports a manifest
    /// stored and not yet named as in use; the blobs a cached image lacks afterwards are absent
    /// by design (its entry is partial), so `fsck` stays clean.
    pub fn evict_cached(
        &self,
        order: &[Digest],
        wanted: u64,
        in_use: &dyn Fn(&Digest) -> bool,
    ) -> Result<EvictReport> {
        let _gc = self.gc_lock()?;
        let snapshot = self.index_snapshot()?;
        let protected = self.reached_by_others(&snapshot.index().manifests)?;
        let mut report = EvictReport::default();
        let mut released = 0;
        let mut chosen = BTreeSet::new();
        for digest in order {
            if report.bytes + released >= wanted {
                break;
            }
            if in_use(digest) {
                report.in_use += 1;
                continue;
            }
            let Some(size) = self.blobs().stat(digest)? else {
                self.unmark_cached(digest)?;
                report.gone.push(digest.clone());
                continue;
            };
            if protected.contains(digest) {
                self.unmark_cached(digest)?;
                released += size;
                report.released.push((digest.clone(), size));
                continue;
            }
            if chosen.insert(digest.clone()) {
                report.bytes += size;
                report.evicted.push((digest.clone(), size));
            }
        }
        // The cache's entries first, in one rewrite, so none is left without its manifest.
        // (Entries named since the snapshot name manifests the caller reports in use until
        // they are named.)
        let named = |entry: &Descriptor| chosen.contains(&entry.digest) && is_cached_entry(entry);
        if snapshot.index().manifests.iter().any(named) {
            report.entries_removed = self.update_index(|index| {
                let before = index.manifests.len();
                index.manifests.retain(|entry| !named(entry));
                Ok(before - index.manifests.len())
            })?;
        }
        for (digest, size) in &report.evicted {
            // An open file (a download being served) stays readable after its unlink.
            self.blobs().delete(digest)?;
            self.unmark_cached(digest)?;
            tracing::info!(%digest, size, "evicted a cached blob");
        }
        Ok(report)
    }
}
