//! The size limit of the pull-through cache over the local store (`cache: { max_size }`).
//!
//! `CachedContent` knows every blob the cache put in the store (the manifests it fetched,
//! the blobs its fills committed), its size and when it was last used (stored, or served:
//! a hit), in memory. The store keeps the same as markers (`cached/<alg>-<hex>`, mtime =
//! last use, written when a blob is cached, at most once per `PERSIST_EVERY` per blob
//! after, and for every blob when the server stops), so `prune` keeps cached blobs, `fsck`
//! does not call them unreferenced, and a restart starts from the recorded order.
//!
//! When the cached bytes exceed the limit, one eviction pass at a time (on a blocking
//! thread, apart from every request) removes least recently used blobs through
//! `Store::evict_cached` until the cache is under [`LOW_WATER_PERCENT`] of the limit, so
//! that it does not run on every fill. Never evicted: what pushed or loaded content
//! (carried images too) reaches, a blob whose fill still has readers, a manifest stored and
//! not yet named. A download served from the store reads an open file, which its unlink
//! does not cut. Local storage only: over a bucket, lifecycle rules do this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use sealer_fs_abstraction::ErrorChain;
use sealer_image_store::{Digest, Store, StoreError};
use serde::Deserialize;

use crate::config::ByteSize;
use crate::metrics::unlabelled;

/// An eviction pass brings the cache down to this share of the limit.
pub const LOW_WATER_PERCENT: u64 = 90;
/// A blob's recorded last use is rewritten at most this often (uses are counted in memory).
const PERSIST_EVERY: Duration = Duration::from_secs(60);
/// How long a manifest stored by the cache is kept from eviction while it waits to be named
/// in `index.json` (a name that never comes does not pin it for ever).
const NAMING_GRACE: Duration = Duration::from_secs(300);

/// The `cache:` key of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// The most bytes the pull-through cache keeps in the local store (`50GiB`); least
    /// recently used cached content is evicted beyond it. `None`: unbounded.
    pub max_size: Option<ByteSize>,
}

/// What the cache holds, and its eviction; see the module documentation.
#[derive(Debug)]
pub(crate) struct CachedContent {
    store: Store,
    limit: Option<u64>,
    state: Mutex<State>,
    /// An eviction pass is running.
    evicting: AtomicBool,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    blobs: HashMap<Digest, Entry>,
    /// Sum of the sizes of `blobs`.
    total: u64,
    /// Blobs committed by fills that still have readers (the count of such fills).
    filling: HashMap<Digest, usize>,
    /// Manifests stored and not yet named, since when.
    naming: HashMap<Digest, Instant>,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    last_used: SystemTime,
    /// When `last_used` was last written to the store.
    persisted: SystemTime,
}

impl Drop for CachedContent {
    /// Writes the uses not yet recorded in the store (a server stopping), so that the next
    /// start evicts in the same order.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (digest, entry) in &state.blobs {
            if entry.last_used > entry.persisted
                && let Err(error) = self.store.touch_cached(digest, entry.last_used)
            {
                tracing::debug!(%digest, error = %ErrorChain(&error), "cannot record the use of a cached blob");
            }
        }
    }
}

impl CachedContent {
    /// What `store` holds for the cache (its markers, and the blobs cached entries reach
    /// that have none yet), with the limit `limit`. Blocking.
    pub(crate) fn open(store: Store, limit: Option<u64>) -> Result<Self, StoreError> {
        let adopted = store.adopt_cached_entries()?;
        let mut state = State::default();
        for blob in store.cached_blobs()? {
            state.total += blob.size;
            state.blobs.insert(
                blob.digest,
                Entry {
                    size: blob.size,
                    last_used: blob.last_used,
                    persisted: blob.last_used,
                },
            );
        }
        tracing::info!(
            blobs = state.blobs.len(),
            bytes = state.total,
            adopted,
            limit = ?limit,
            "pull-through cache content"
        );
        Ok(Self {
            store,
            limit,
            state: Mutex::new(state),
            evicting: AtomicBool::new(false),
            evictions: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the present blob `digest` (`size` bytes) as cached, used now. Blocking.
    pub(crate) fn added(&self, digest: &Digest, size: u64) -> Result<(), StoreError> {
        if !self.store.mark_cached(digest)? {
            return Ok(());
        }
        let now = SystemTime::now();
        let mut state = self.lock();
        let entry = Entry {
            size,
            last_used: now,
            persisted: now,
        };
        if let Some(previous) = state.blobs.insert(digest.clone(), entry) {
            state.total = state.total.saturating_sub(previous.size);
        }
        state.total += size;
        Ok(())
    }

    /// Records a use (a hit) of `digest` if it is cached; writes it to the store when the
    /// recorded one is older than [`PERSIST_EVERY`]. Blocking.
    pub(crate) fn used(&self, digest: &Digest) {
        let now = SystemTime::now();
        let persist = {
            let mut state = self.lock();
            let Some(entry) = state.blobs.get_mut(digest) else {
                return;
            };
            entry.last_used = now;
            let stale = now
                .duration_since(entry.persisted)
                .is_ok_and(|age| age >= PERSIST_EVERY);
            if stale {
                entry.persisted = now;
            }
            stale
        };
        if persist && let Err(error) = self.store.touch_cached(digest, now) {
            tracing::debug!(%digest, error = %ErrorChain(&error), "cannot record the use of a cached blob");
        }
    }

    /// `digest` was pushed (an upload's commit, a mount): pushed content, not the cache's.
    /// Blocking.
    pub(crate) fn pushed(&self, digest: &Digest) {
        {
            let mut state = self.lock();
            let Some(entry) = state.blobs.remove(digest) else {
                return;
            };
            state.total = state.total.saturating_sub(entry.size);
        }
        if let Err(error) = self.store.unmark_cached(digest) {
            tracing::warn!(%digest, error = %ErrorChain(&error), "cannot release a pushed blob from the cache");
        }
    }

    /// A fill committed `digest`; its readers may still read it until
    /// [`Self::fill_released`].
    pub(crate) fn fill_committed(&self, digest: &Digest) {
        *self.lock().filling.entry(digest.clone()).or_default() += 1;
    }

    /// The last reader of a fill of `digest` is gone.
    pub(crate) fn fill_released(&self, digest: &Digest) {
        let mut state = self.lock();
        if let Some(count) = state.filling.get_mut(digest) {
            *count -= 1;
            if *count == 0 {
                state.filling.remove(digest);
            }
        }
    }

    /// The manifest `digest` is stored and about to be named.
    pub(crate) fn naming(&self, digest: &Digest) {
        let mut state = self.lock();
        // A manifest that is never named (a failed put, an unchanged tag) is forgotten
        // once its protection has run out, so the map stays as small as the work in flight.
        state
            .naming
            .retain(|_, since| since.elapsed() < NAMING_GRACE);
        state.naming.insert(digest.clone(), Instant::now());
    }

    /// The manifest `digest` is named (or will not be).
    pub(crate) fn named(&self, digest: &Digest) {
        self.lock().naming.remove(digest);
    }

    fn in_use(&self, digest: &Digest) -> bool {
        let state = self.lock();
        state.filling.contains_key(digest)
            || state
                .naming
                .get(digest)
                .is_some_and(|since| since.elapsed() < NAMING_GRACE)
    }

    fn over_limit(&self) -> bool {
        self.limit.is_some_and(|limit| self.lock().total > limit)
    }

    /// Starts an eviction pass on a blocking thread if the cache is over its limit and no
    /// pass runs (needs a tokio runtime; without one, nothing happens).
    pub(crate) fn evict_if_over(self: &Arc<Self>) {
        if !self.over_limit() || self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.evicting.store(false, Ordering::Release);
            return;
        };
        let cache = self.clone();
        runtime.spawn_blocking(move || {
            if let Err(error) = cache.evict() {
                tracing::warn!(error = %ErrorChain(&error), "evicting from the pull-through cache");
            }
            cache.evicting.store(false, Ordering::Release);
        });
    }

    /// One eviction pass: least recently used first, down to the low-water mark.
    fn evict(&self) -> Result<(), StoreError> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let (order, wanted) = {
            let state = self.lock();
            let low_water = limit / 100 * LOW_WATER_PERCENT + limit % 100 * LOW_WATER_PERCENT / 100;
            if state.total <= limit {
                return Ok(());
            }
            let mut order: Vec<(&Digest, SystemTime)> = state
                .blobs
                .iter()
                .map(|(digest, entry)| (digest, entry.last_used))
                .collect();
            order.sort_by_key(|(_, used)| *used);
            let order: Vec<Digest> = order
                .into_iter()
                .map(|(digest, _)| digest.clone())
                .collect();
            (order, state.total - low_water)
        };
        let report = self
            .store
            .evict_cached(&order, wanted, &|digest| self.in_use(digest))?;
        let mut state = self.lock();
        let forgotten = report
            .evicted
            .iter()
            .chain(&report.released)
            .map(|(digest, _)| digest)
            .chain(&report.gone);
        for digest in forgotten {
            if let Some(entry) = state.blobs.remove(digest) {
                state.total = state.total.saturating_sub(entry.size);
            }
        }
        self.evictions
            .fetch_add(report.evicted.len() as u64, Ordering::Relaxed);
        self.evicted_bytes
            .fetch_add(report.bytes, Ordering::Relaxed);
        tracing::info!(
            evicted = report.evicted.len(),
            bytes = report.bytes,
            released = report.released.len(),
            in_use = report.in_use,
            entries_removed = report.entries_removed,
            cache_bytes = state.total,
            limit,
            "evicted least recently used content from the pull-through cache"
        );
        Ok(())
    }

    /// The cache's metrics, Prometheus text.
    pub(crate) fn metrics_text(&self) -> String {
        let (size, blobs) = {
            let state = self.lock();
            (state.total, state.blobs.len())
        };
        let mut text = String::new();
        unlabelled(
            &mut text,
            "sealer_cache_size_bytes",
            "gauge",
            "Bytes of pull-through cached content in the local store.",
            size,
        );
        unlabelled(
            &mut text,
            "sealer_cache_blobs",
            "gauge",
            "Blobs (manifests included) of pull-through cached content.",
            blobs,
        );
        if let Some(limit) = self.limit {
            unlabelled(
                &mut text,
                "sealer_cache_limit_bytes",
                "gauge",
                "The pull-through cache's size limit (cache.max_size).",
                limit,
            );
        }
        unlabelled(
            &mut text,
            "sealer_cache_evictions_total",
            "counter",
            "Cached blobs evicted to keep the cache under its size limit.",
            self.evictions.load(Ordering::Relaxed),
        );
        unlabelled(
            &mut text,
            "sealer_cache_evicted_bytes_total",
            "counter",
            "Bytes of cached blobs evicted to keep the cache under its size limit.",
            self.evicted_bytes.load(Ordering::Relaxed),
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{documented_block, parse_for_test as yaml};

    /// The commented `cache:` block of the example configuration parses.
    #[test]
    fn the_documented_cache_parses() {
        let block = documented_block("# cache:\n");
        assert!(!block.is_empty());
        let config = yaml(&format!("{block}\n")).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.cache.max_size.map(|size| size.0), Some(50 << 30));
        assert_eq!(
            yaml("listen: 127.0.0.1:5000\n").unwrap().cache.max_size,
            None
        );
    }

    #[test]
    fn a_limit_over_a_bucket_or_of_zero_is_refused() {
        let error =
            yaml("storage:\n  s3:\n    bucket: registry\ncache:\n  max_size: 10GiB\n").unwrap_err();
        assert!(error.contains("registry.yaml:5"), "{error}");
        assert!(error.contains("lifecycle rules"), "{error}");
        let error = yaml("cache:\n  max_size: 0\n").unwrap_err();
        assert!(error.contains("more than 0"), "{error}");
        let error = yaml("cache:\n  max_size: 10 parsecs\n").unwrap_err();
        assert!(error.contains("invalid size unit"), "{error}");
        let error = yaml("cache:\n  size: 10GiB\n").unwrap_err();
        assert!(error.contains("size"), "{error}");
    }
}
