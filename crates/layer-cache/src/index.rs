//! [`LayerCache`]: the cache index, kept in the image store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sealer_fs_abstraction::{ErrorChain, Fs};
use sealer_image_store::{BlobStore, Descriptor, Digest, Store};
use serde::{Deserialize, Serialize};

use crate::error::{CacheError, Result};
use crate::key::CacheKey;
use crate::stat::StatCache;

/// The cache's directory in the store root (the OCI layout tolerates unknown files).
pub const CACHE_DIR: &str = "cache";
/// One file per entry: `cache/layers/<algorithm>-<hex of the key>.json`.
const LAYERS_DIR: &str = "cache/layers";
/// One stat cache per build context: `cache/stat/<sha256 of the context's path>.json`.
const STAT_DIR: &str = "cache/stat";

/// What a cached step produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    /// The layer blob as the manifest lists it (media type, digest, size).
    pub layer: Descriptor,
    /// The digest of the uncompressed layer tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
    /// The instruction that made it (the config's `history[].created_by`).
    pub created_by: String,
}

/// An entry file: its path, its key (when its name is one), its entry (when readable).
type EntryFile = (PathBuf, Option<CacheKey>, Option<CacheEntry>);

/// What [`LayerCache::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries kept.
    pub kept: usize,
    /// Entries removed: their layer was unused, missing from the store, or the entry file
    /// was unreadable.
    pub removed: usize,
}

/// The layer cache of a store: cache key → the layer a step produced.
///
/// The index lives in the store (`cache/layers/`, one small JSON file per key written
/// atomically through the store's `Fs`), so it survives restarts and travels with the store.
/// Entries are independent files: concurrent builds never lose each other's entries and no
/// lock is needed.
///
/// Lookups verify that the layer blob is still in the store (with the recorded size); an
/// entry whose blob is gone is a miss.
///
/// # Garbage collection
///
/// Cached layers are gc roots for as long as their entry exists: a build caches each layer as
/// soon as it is made, before (or without ever) naming an image, and those layers must
/// survive a `gc` so that the next build reuses them. `sealer prune` first drops the entries
/// no image uses, then collects garbage keeping the layers of the entries left (which also
/// protects entries a concurrent build adds in between):
///
/// ```no_run
/// # fn prune(store: &sealer_image_store::Store) -> Result<(), Box<dyn std::error::Error>> {
/// let cache = sealer_layer_cache::LayerCache::open(store)?;
/// cache.prune_unused()?;
/// let report = store.gc_with_extra_roots(&cache.layer_digests()?)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LayerCache {
    store: Store,
}

impl LayerCache {
    /// The cache of `store` (its directories are created if missing).
    pub fn open(store: &Store) -> Result<Self> {
        store.fs().create_dir_all(Path::new(LAYERS_DIR))?;
        store.fs().create_dir_all(Path::new(STAT_DIR))?;
        Ok(Self {
            store: store.clone(),
        })
    }

    /// The store the cache belongs to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn fs(&self) -> &dyn Fs {
        self.store.fs().as_ref()
    }

    fn entry_path(key: &CacheKey) -> PathBuf {
        let digest = key.digest();
        Path::new(LAYERS_DIR).join(format!(
            "{}-{}.json",
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    /// The entry of `key`, if there is one and its layer is still in the store.
    pub fn get(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
        let path = Self::entry_path(key);
        let bytes = match self.fs().read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.is_not_found() => {
                tracing::debug!(%key, "cache miss");
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let entry: CacheEntry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(path = %self.fs().display_path(&path).display(), error = %ErrorChain(&error), "ignoring an unreadable cache entry");
                return Ok(None);
            }
        };
        if !self.layer_present(&entry)? {
            tracing::debug!(%key, layer = %entry.layer.digest, "cache entry's layer is gone: a miss");
            return Ok(None);
        }
        tracing::debug!(%key, layer = %entry.layer.digest, "cache hit");
        Ok(Some(entry))
    }

    /// Records that the step `key` produced `entry`. The layer must already be in the store.
    pub fn put(&self, key: &CacheKey, entry: &CacheEntry) -> Result<()> {
        if !self.layer_present(entry)? {
            return Err(CacheError::LayerMissing {
                digest: entry.layer.digest.clone(),
                size: entry.layer.size,
            });
        }
        let bytes = serde_json::to_vec_pretty(entry).map_err(|source| CacheError::Encode {
            what: format!("cache entry {key}"),
            source,
        })?;
        self.fs().write_atomic(&Self::entry_path(key), &bytes)?;
        tracing::debug!(%key, layer = %entry.layer.digest, "cached a layer");
        Ok(())
    }

    /// Removes the entry of `key`; returns whether there was one.
    pub fn remove(&self, key: &CacheKey) -> Result<bool> {
        match self.fs().remove_file(&Self::entry_path(key)) {
            Ok(()) => Ok(true),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn layer_present(&self, entry: &CacheEntry) -> Result<bool> {
        Ok(self.store.blobs().stat(&entry.layer.digest)? == Some(entry.layer.size))
    }

    /// Every readable entry, in key order (without checking that the layers are present).
    pub fn entries(&self) -> Result<Vec<(CacheKey, CacheEntry)>> {
        Ok(self
            .entry_files()?
            .into_iter()
            .filter_map(|(_, key, entry)| Some((key?, entry?)))
            .collect())
    }

    /// Every entry file: its path, its key (when the name is one) and its entry (when
    /// readable).
    fn entry_files(&self) -> Result<Vec<EntryFile>> {
        let dir = Path::new(LAYERS_DIR);
        if !self.fs().exists(dir)? {
            return Ok(Vec::new());
        }
        let mut files = Vec::new();
        for item in self.fs().read_dir(dir)? {
            let name = item.name.to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue; // an AtomicFile's temporary file, or something foreign
            };
            let key = stem
                .split_once('-')
                .and_then(|(algorithm, hex)| format!("{algorithm}:{hex}").parse().ok());
            let path = dir.join(&name);
            let entry = match self.fs().read(&path) {
                Ok(bytes) => serde_json::from_slice(&bytes).ok(),
                Err(error) if error.is_not_found() => continue, // removed concurrently
                Err(error) => return Err(error.into()),
            };
            files.push((path, key, entry));
        }
        Ok(files)
    }

    /// The layers of every entry, without duplicates: the extra roots to hand to
    /// `Store::gc_with_extra_roots`.
    pub fn layer_digests(&self) -> Result<Vec<Digest>> {
        let layers: BTreeSet<Digest> = self
            .entries()?
            .into_iter()
            .map(|(_, entry)| entry.layer.digest)
            .collect();
        Ok(layers.into_iter().collect())
    }

    /// Drops the entries whose layer `keep` rejects, whose layer is no longer in the store,
    /// and unreadable entry files.
    pub fn prune(&self, keep: impl Fn(&Digest) -> bool) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        for (path, key, entry) in self.entry_files()? {
            let wanted = match (&key, &entry) {
                (Some(_), Some(entry)) => keep(&entry.layer.digest) && self.layer_present(entry)?,
                _ => false,
            };
            if wanted {
                report.kept += 1;
                continue;
            }
            match self.fs().remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(error.into()),
            }
            report.removed += 1;
            tracing::debug!(path = %path.display(), "dropped a cache entry");
        }
        tracing::info!(
            kept = report.kept,
            removed = report.removed,
            "pruned the layer cache"
        );
        Ok(report)
    }

    /// Drops the entries whose layer no image named in the store uses (nor any image an
    /// index of the store reaches): [`prune`](Self::prune) with "is reachable from
    /// `index.json`".
    pub fn prune_unused(&self) -> Result<PruneReport> {
        let roots = self.store.index()?.manifests;
        let used = self.store.reachable(&roots)?.present;
        self.prune(|layer| used.contains(layer))
    }

    fn stat_path(context: &dyn Fs) -> PathBuf {
        let location = context.display_path(Path::new("."));
        let id = Digest::sha256(location.as_os_str().as_encoded_bytes());
        Path::new(STAT_DIR).join(format!("{}.json", id.hex()))
    }

    /// The stat cache of the build context `context` (keyed by where the context is, as
    /// `context.display_path(".")` shows it); empty when there is none yet or it is
    /// unreadable.
    pub fn load_stat_cache(&self, context: &dyn Fs) -> Result<StatCache> {
        let path = Self::stat_path(context);
        match self.fs().read(&path) {
            Ok(bytes) => Ok(StatCache::decode(&bytes).unwrap_or_else(|| {
                tracing::warn!(path = %self.fs().display_path(&path).display(), "ignoring an unreadable stat cache");
                StatCache::new()
            })),
            Err(error) if error.is_not_found() => Ok(StatCache::new()),
            Err(error) => Err(error.into()),
        }
    }

    /// Saves the stat cache of `context` (atomically) if it changed. Two builds of one
    /// context saving at once: the last one wins, which costs at most some re-reads later.
    pub fn save_stat_cache(&self, context: &dyn Fs, cache: &mut StatCache) -> Result<()> {
        if !cache.is_dirty() {
            return Ok(());
        }
        let bytes = cache.encode().map_err(|source| CacheError::Encode {
            what: "the stat cache".to_owned(),
            source,
        })?;
        self.fs().write_atomic(&Self::stat_path(context), &bytes)?;
        cache.mark_saved();
        Ok(())
    }
}

/// Drops the entries of `store`'s layer cache whose layer `keep` rejects (or that are
/// stale): [`LayerCache::prune`]. `sealer prune` calls
/// `prune(&store, |layer| used.contains(layer))` with the layers its images use — or simply
/// [`LayerCache::prune_unused`] — before `Store::gc_with_extra_roots`.
pub fn prune(store: &Store, keep: impl Fn(&Digest) -> bool) -> Result<PruneReport> {
    LayerCache::open(store)?.prune(keep)
}
