//! Store maintenance: the GC lock, mark and sweep ([`Store::gc`]), leftovers of
//! interrupted writes, and [`Store::fsck`] with its quarantine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sealer_fs_abstraction::{ErrorChain, FileKind, LockGuard, Metadata};

use crate::blob::BlobStore;
use crate::digest::{Digest, Hasher};
use crate::error::{Result, StoreError};
use crate::holds::GcOptions;

use super::{GC_LOCK, INGEST_DIR, QUARANTINE_DIR, Reachability, Store, UPLOAD_DIR, WORK_DIRS};

/// The GC lock, held until dropped: see [`Store::gc_lock`].
#[must_use = "the GC lock is released when the guard is dropped"]
pub struct GcGuard {
    _lock: Box<dyn LockGuard>,
}

impl std::fmt::Debug for GcGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GcGuard")
    }
}

/// What [`Store::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub removed: Vec<Digest>,
    /// Bytes freed.
    pub bytes: u64,
    /// Leftovers of interrupted writes removed.
    pub leftovers: usize,
    /// Unreferenced blobs kept because they are fresh ([`Store::hold_fresh`]).
    pub kept_fresh: usize,
    /// Unreferenced blobs kept because a registry's pull-through cache holds them (its own
    /// size limit evicts them: [`Store::evict_cached`]).
    pub kept_cached: usize,
}

/// What [`Store::fsck`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Blobs checked.
    pub checked: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// Blobs whose content does not hash to their name.
    pub corrupt: Vec<Digest>,
    /// Blobs referenced by a manifest but absent: (referrer, missing blob).
    pub missing: Vec<(Digest, Digest)>,
    /// Platforms of multi-arch images that were not fetched (not an error).
    pub absent_platforms: usize,
    /// Blobs of partial (pull-through cached) images that were never fetched (not an
    /// error).
    pub absent_partial: usize,
    /// Blobs no image refers to (`prune` removes them).
    pub unreferenced: usize,
    /// Blobs no image refers to that a registry's pull-through cache holds (fetched by
    /// digest; not unreferenced: `prune` keeps them, the cache's limit evicts them).
    pub cached: usize,
    /// Leftovers of interrupted writes (`prune` removes them).
    pub leftovers: usize,
    /// Corrupt blobs moved out of `blobs/` to `quarantine/<algorithm>-<hex>` (so that the
    /// next load or pull fetches them again): (blob, where it is now, relative to the
    /// store root). A corrupt blob missing here could not be moved (a read-only store) and
    /// is still counted present.
    pub quarantined: Vec<(Digest, PathBuf)>,
}

impl FsckReport {
    /// Whether the store is consistent.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty()
    }
}

impl Store {
    /// Takes the GC lock (blocking until it is free), which every GC holds for its whole
    /// mark and sweep, and imports and uploads hold while they commit. While the returned
    /// guard lives no GC runs (in this process or another), so a blob found present stays
    /// present and an `index.json` entry written then is seen by the next GC: a registry
    /// holds it across "check that a manifest's blobs are present, name the manifest".
    /// Not reentrant: do not call anything that takes it (a commit, a GC, [`Store::hold_fresh`])
    /// while holding it.
    pub fn gc_lock(&self) -> Result<GcGuard> {
        Ok(GcGuard {
            _lock: self.fs.lock(Path::new(GC_LOCK))?,
        })
    }

    /// Mark and sweep with the default [`GcOptions`]: removes every blob no `index.json`
    /// entry reaches, unless it was held fresh ([`Store::hold_fresh`]) within
    /// [`crate::DEFAULT_KEEP_FRESH`], and leftovers of interrupted writes. Holds the GC
    /// lock, so ingests, uploads and registry manifest pushes commit before or after, never
    /// during.
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_with(&GcOptions::default())
    }

    /// [`gc`](Self::gc) that also keeps the blobs `extra_roots`, as they are (a manifest
    /// among them does not keep its children). `sealer prune` passes the layers of the
    /// build cache's entries (`sealer_layer_cache::LayerCache::layer_digests`), which no
    /// `index.json` entry may reach yet.
    pub fn gc_with_extra_roots(&self, extra_roots: &[Digest]) -> Result<GcReport> {
        self.gc_with(&GcOptions {
            extra_roots: extra_roots.to_vec(),
            ..GcOptions::default()
        })
    }

    /// Mark and sweep under the GC lock, keeping what `options` says besides what
    /// `index.json` reaches; removes holds older than [`GcOptions::keep_fresh`].
    pub fn gc_with(&self, options: &GcOptions) -> Result<GcReport> {
        let _gc = self.gc_lock()?;
        let roots = self.index()?.manifests;
        let reach = self.reachable(&roots)?;
        let extra: BTreeSet<&Digest> = options.extra_roots.iter().collect();
        let fresh = self.fresh_holds(options.keep_fresh)?;
        let cached = self.cached_markers()?;
        let mut report = GcReport::default();
        for digest in self.blobs.list()? {
            if reach.present.contains(&digest) || extra.contains(&digest) {
                continue;
            }
            if cached.contains(&digest) {
                report.kept_cached += 1;
                continue;
            }
            if fresh.contains(&digest) {
                report.kept_fresh += 1;
                continue;
            }
            let size = self.blobs.stat(&digest)?.unwrap_or(0);
            if self.blobs.delete(&digest)? {
                tracing::info!(%digest, size, "removed unreferenced blob");
                report.bytes += size;
                report.removed.push(digest);
            }
        }
        report.leftovers = self.remove_leftovers()?;
        Ok(report)
    }

    fn remove_leftovers(&self) -> Result<usize> {
        let mut removed = 0;
        for path in self.blobs.leftover_temp_files()? {
            // A live writer's temp file is young; only old ones are crash leftovers.
            let metadata = self.fs.symlink_metadata(&path)?;
            let age = metadata
                .modified
                .and_then(|modified| modified.elapsed().ok())
                .unwrap_or_default();
            if age > std::time::Duration::from_secs(600) {
                self.fs.remove_file(&path)?;
                removed += 1;
            }
        }
        for dir in WORK_DIRS {
            removed += self.abandoned_work(dir, true)?;
        }
        // Corrupt blobs fsck set aside for inspection: prune is where space is given back.
        let quarantine = Path::new(QUARANTINE_DIR);
        if self.fs.exists(quarantine)? {
            for entry in self.fs.read_dir(quarantine)? {
                self.fs.remove_file(&quarantine.join(&entry.name))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes what crashed writers left in `ingest/` and `uploads/` (staging directories and
    /// upload files whose lock file nobody holds any more; live ones are kept): for a server
    /// to call when it opens the store, instead of waiting for a `gc`. Returns how many
    /// items were removed.
    pub fn sweep_abandoned_work(&self) -> Result<usize> {
        let mut removed = 0;
        for dir in WORK_DIRS {
            removed += self.abandoned_work(dir, true)?;
        }
        Ok(removed)
    }

    /// Starts a work item under `dir` (`ingest` or `uploads`): a unique id and its lock file,
    /// held for as long as the writer lives so that `gc` can tell it from a crash leftover.
    /// Returns the id, the lock file's path and the held lock.
    pub(crate) fn begin_work(&self, dir: &str) -> Result<(String, PathBuf, Box<dyn LockGuard>)> {
        static WORK_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        self.fs.create_dir_all(Path::new(dir))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        let sequence = WORK_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{nanos}-{sequence}", std::process::id());
        let lock_path = Path::new(dir).join(format!("{id}.lock"));
        let lock = self.fs.lock(&lock_path)?;
        Ok((id, lock_path, lock))
    }

    /// Work items (import staging directories, upload files) under `dir` whose writer is
    /// gone, removed when `remove` is set; returns how many. Each item `<id>` has a lock file
    /// `<id>.lock` that its live writer holds; a crashed writer released it when it died.
    fn abandoned_work(&self, dir: &str, remove: bool) -> Result<usize> {
        let root = Path::new(dir);
        if !self.fs.exists(root)? {
            return Ok(0);
        }
        let mut count = 0;
        for entry in self.fs.read_dir(root)? {
            let name = entry.name.to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".lock") else {
                continue;
            };
            let lock_path = root.join(&name);
            let Some(_guard) = self.fs.try_lock(&lock_path)? else {
                continue;
            };
            count += 1;
            if remove {
                let item = root.join(id);
                match self.fs.symlink_metadata(&item) {
                    Ok(metadata) if metadata.kind == FileKind::Dir => {
                        self.fs.remove_dir_all(&item)?
                    }
                    Ok(_) => self.fs.remove_file(&item)?,
                    Err(error) if error.is_not_found() => {}
                    Err(error) => return Err(error.into()),
                }
                self.fs.remove_file(&lock_path)?;
            }
        }
        Ok(count)
    }

    /// Re-hashes every blob, and checks that everything `index.json` reaches is present.
    ///
    /// A blob whose content does not hash to its name (flipped bits, a truncated file) is
    /// moved to `quarantine/<algorithm>-<hex>` (kept for inspection), so it no longer
    /// counts as present: it is reported as corrupt, and as missing where an image needs
    /// it, until a load or pull fetches it again.
    pub fn fsck(&self) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let mut buffer = vec![0u8; crate::blob::COPY_BUFFER];
        let blobs = self.blobs.list()?;
        let mut suspects = Vec::new();
        for digest in &blobs {
            // Which file was hashed: a copy renamed over it meanwhile is not quarantined.
            let hashed = self.fs.metadata(&digest.blob_path())?;
            let mut file = self.blobs.open(digest)?;
            let mut hasher = Hasher::new(digest.algorithm());
            loop {
                let read = std::io::Read::read(&mut file, &mut buffer)
                    .map_err(|source| StoreError::io(format!("read blob {digest}"), source))?;
                if read == 0 {
                    break;
                }
                report.bytes += read as u64;
                hasher.update(&buffer[..read]);
            }
            report.checked += 1;
            if &hasher.finish() != digest {
                tracing::debug!(%digest, "blob content does not match its digest");
                suspects.push((digest.clone(), hashed));
            }
        }
        self.quarantine_corrupt(suspects, &mut report);
        let roots = self.index()?.manifests;
        let reach = match self.reachable(&roots) {
            Ok(reach) => reach,
            // A corrupt manifest cannot be walked; it is already reported as corrupt.
            Err(StoreError::DigestMismatch { .. } | StoreError::Manifest { .. })
                if !report.corrupt.is_empty() =>
            {
                Reachability::default()
            }
            Err(error) => return Err(error),
        };
        report.missing = reach.missing;
        report.absent_platforms = reach.absent_platforms;
        report.absent_partial = reach.absent_partial.len();
        let cached = self.cached_markers()?;
        for digest in blobs
            .iter()
            .filter(|digest| !reach.present.contains(digest))
            .filter(|digest| !report.quarantined.iter().any(|(moved, _)| moved == *digest))
        {
            if cached.contains(digest) {
                report.cached += 1;
            } else {
                report.unreferenced += 1;
            }
        }
        report.leftovers = self.blobs.leftover_temp_files()?.len()
            + self.abandoned_work(INGEST_DIR, false)?
            + self.abandoned_work(UPLOAD_DIR, false)?;
        Ok(report)
    }
}

impl Store {
    /// Moves the blobs fsck found corrupt to [`QUARANTINE_DIR`] under the GC lock (an
    /// import adopting a replacement holds it too), recording them in `report`. A blob
    /// replaced since it was hashed is left alone (a replacement was verified); one that
    /// cannot be moved (a read-only store) is reported corrupt only.
    fn quarantine_corrupt(&self, suspects: Vec<(Digest, Metadata)>, report: &mut FsckReport) {
        if suspects.is_empty() {
            return;
        }
        let gc_guard = match self.gc_lock() {
            Ok(guard) => Some(guard),
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "cannot take the GC lock: corrupt blobs stay in place");
                None
            }
        };
        for (digest, hashed) in suspects {
            if gc_guard.is_none() {
                report.corrupt.push(digest);
                continue;
            }
            match self.quarantine_blob(&digest, &hashed) {
                Ok(Some(moved_to)) => {
                    tracing::warn!(%digest, to = %moved_to.display(), "quarantined a corrupt blob");
                    report.corrupt.push(digest.clone());
                    report.quarantined.push((digest, moved_to));
                }
                Ok(None) => {
                    tracing::info!(%digest, "a corrupt blob was replaced while fsck ran");
                }
                Err(error) => {
                    tracing::warn!(%digest, error = %ErrorChain(&error), "cannot quarantine a corrupt blob");
                    report.corrupt.push(digest);
                }
            }
        }
    }

    /// Renames one corrupt blob into [`QUARANTINE_DIR`], unless the file at its path is no
    /// longer the one that was hashed. Returns where it went.
    fn quarantine_blob(&self, digest: &Digest, hashed: &Metadata) -> Result<Option<PathBuf>> {
        let path = digest.blob_path();
        let now = match self.fs.metadata(&path) {
            Ok(now) => now,
            Err(error) if error.is_not_found() => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        if (now.dev, now.ino) != (hashed.dev, hashed.ino) {
            return Ok(None);
        }
        let dir = Path::new(QUARANTINE_DIR);
        self.fs.create_dir_all(dir)?;
        let target = dir.join(digest.file_name());
        self.fs.rename(&path, &target)?;
        self.fs.sync_dir(dir)?;
        if let Some(blob_dir) = path.parent() {
            self.fs.sync_dir(blob_dir)?;
        }
        Ok(Some(target))
    }
}
