//! All-or-nothing imports. A load or pull stages its blobs in `ingest/<id>/`, verifying each
//! against its digest, then [`Ingest::commit`] checks the images are complete, renames the
//! blobs into `blobs/` and names the images in one `index.json` update. Until then the store
//! is untouched: a failed import is dropped whole, and a crashed one leaves only a staging
//! directory that `gc` removes (its lock file tells a dead importer from a live one).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sealer_fs_abstraction::{ErrorChain, LockGuard, ReadFile, WriteBehind, WriteFile};

use crate::blob::{BlobStore, PutOutcome, check_content, copy_hashing};
use crate::digest::{Algorithm, Digest};
use crate::error::{Result, StoreError};
use crate::model::{Descriptor, ManifestDocument};
use crate::reference::Reference;
use crate::store::{
    MAX_MANIFEST_SIZE, Store, is_manifest_type, parse_manifest, set_entry, verify_bytes,
};

use crate::store::INGEST_DIR;
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What [`Ingest::commit`] added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Blobs added to the store.
    pub blobs_added: usize,
    /// Bytes added to the store.
    pub bytes_added: u64,
    /// Blobs that were already present.
    pub blobs_reused: usize,
    /// Index entries not present (platforms not imported).
    pub absent_platforms: usize,
}

/// An import in progress; see the module documentation.
///
/// Staging methods take `&self`: several threads may stage different blobs of one import at
/// once (a pull downloads layers in parallel). Staging one digest from two threads at once
/// is not supported (the second `create_new` of its staging file fails).
pub struct Ingest<'s> {
    store: &'s Store,
    dir: PathBuf,
    lock_path: PathBuf,
    lock: Mutex<Option<Box<dyn LockGuard>>>,
    state: Mutex<Staged>,
}

/// What an [`Ingest`] has staged and relies on.
#[derive(Default)]
struct Staged {
    staged: BTreeMap<Digest, (PathBuf, u64)>,
    /// Blobs of the store this import counts on, with their size then.
    relied_on: BTreeMap<Digest, u64>,
}

impl<'s> Ingest<'s> {
    pub(crate) fn begin(store: &'s Store) -> Result<Self> {
        let (id, lock_path, lock) = store.begin_work(INGEST_DIR)?;
        let dir = Path::new(INGEST_DIR).join(&id);
        store.fs().create_dir(&dir)?;
        Ok(Self {
            store,
            dir,
            lock_path,
            lock: Mutex::new(Some(lock)),
            state: Mutex::new(Staged::default()),
        })
    }

    /// The staging state (a panic elsewhere cannot leave it half updated: every update is
    /// one insert).
    fn state(&self) -> MutexGuard<'_, Staged> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The size of a blob staged here or already in the store. A stored blob may have the
    /// wrong size (truncated): [`Ingest::present`] is what decides whether to fetch it.
    pub fn contains(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some((_, size)) = self.state().staged.get(digest) {
            return Ok(Some(*size));
        }
        let size = self.store.blobs().stat(digest)?;
        if let Some(size) = size {
            self.state().relied_on.insert(digest.clone(), size);
        }
        Ok(size)
    }

    /// Whether the blob `digest` of `size` bytes need not be fetched: it is staged here, or
    /// stored with exactly that size. A stored blob of another size is damaged (a
    /// truncated file): it is not present, and the verified blob staged instead replaces
    /// it at commit. A staged blob of another size is an error (two descriptors of one
    /// digest disagree).
    pub fn present(&self, digest: &Digest, size: u64) -> Result<bool> {
        if let Some((_, staged)) = self.state().staged.get(digest) {
            if *staged != size {
                return Err(StoreError::SizeMismatch {
                    digest: digest.clone(),
                    expected: size,
                    actual: *staged,
                });
            }
            return Ok(true);
        }
        match self.store.blobs().stat(digest)? {
            Some(stored) if stored == size => {
                self.state().relied_on.insert(digest.clone(), size);
                Ok(true)
            }
            Some(stored) => {
                tracing::warn!(
                    %digest,
                    expected = size,
                    stored,
                    "a stored blob has the wrong size; fetching it again to replace it"
                );
                Ok(false)
            }
            None => Ok(false),
        }
    }

    fn staging_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.file_name())
    }

    /// Stages `data` as `expected`, verifying digest and size; `data` is not read when the
    /// blob is already staged or stored.
    pub fn put(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        data: &mut dyn Read,
    ) -> Result<PutOutcome> {
        let present = match expected_size {
            Some(expected_size) => self
                .present(expected, expected_size)?
                .then_some(expected_size),
            None => self.contains(expected)?,
        };
        if let Some(size) = present {
            return Ok(PutOutcome {
                size,
                existed: true,
            });
        }
        let path = self.staging_path(expected);
        let what = || format!("blob {expected}");
        let result = self.write_file(&path, data, expected.algorithm(), expected_size, &what);
        let checked = result.and_then(|(actual, size)| {
            check_content(&what, expected, expected_size, &actual, size).map(|()| size)
        });
        match checked {
            Ok(size) => {
                self.state().staged.insert(expected.clone(), (path, size));
                Ok(PutOutcome {
                    size,
                    existed: false,
                })
            }
            Err(error) => {
                self.discard(&path);
                Err(error)
            }
        }
    }

    /// Stages `data` whose digest is not known beforehand (a docker-archive layer); returns
    /// its digest and size.
    pub fn put_unknown(
        &self,
        algorithm: Algorithm,
        data: &mut dyn Read,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let temp = self.dir.join(format!(
            "unnamed-{}",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let describe = || what.to_owned();
        let (digest, size) = match self.write_file(&temp, data, algorithm, None, &describe) {
            Ok(written) => written,
            Err(error) => {
                self.discard(&temp);
                return Err(error);
            }
        };
        if self.present(&digest, size)? {
            self.discard(&temp);
        } else {
            let path = self.staging_path(&digest);
            self.store.fs().rename(&temp, &path)?;
            self.state().staged.insert(digest.clone(), (path, size));
        }
        Ok((digest, size))
    }

    /// Stages small content held in memory (a manifest or config).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256(bytes);
        self.put(&digest, Some(bytes.len() as u64), &mut &bytes[..])?;
        Ok(digest)
    }

    fn write_file(
        &self,
        path: &Path,
        data: &mut dyn Read,
        algorithm: Algorithm,
        limit: Option<u64>,
        what: &dyn Fn() -> String,
    ) -> Result<(Digest, u64)> {
        // Synced below: written behind, so the sync does not wait for the whole blob.
        let mut file = WriteBehind::new(self.store.fs().create_new(path)?);
        let written = copy_hashing(data, &mut file, algorithm, limit, what)?;
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(|source| StoreError::io(format!("fsync {}", what()), source))?;
        Ok(written)
    }

    fn discard(&self, path: &Path) {
        if let Err(error) = self.store.fs().remove_file(path)
            && !error.is_not_found()
        {
            tracing::warn!(error = %ErrorChain(&error), "could not remove a rejected staged blob");
        }
    }

    /// Opens a blob staged here or in the store.
    pub fn open(&self, digest: &Digest) -> Result<Box<dyn ReadFile>> {
        let staged = self
            .state()
            .staged
            .get(digest)
            .map(|(path, _)| path.clone());
        match staged {
            Some(path) => Ok(self.store.fs().open(&path)?),
            None => self.store.blobs().open(digest),
        }
    }

    /// Reads and verifies a small blob staged here or in the store.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let staged = self.state().staged.get(digest).cloned();
        match staged {
            Some((path, size)) => {
                if size > MAX_MANIFEST_SIZE {
                    return Err(StoreError::SizeMismatch {
                        digest: digest.clone(),
                        expected: MAX_MANIFEST_SIZE,
                        actual: size,
                    });
                }
                let bytes = self.store.fs().read(&path)?;
                verify_bytes(digest, &bytes)?;
                Ok(bytes)
            }
            None => self.store.read_verified(digest),
        }
    }

    /// Reads and parses a manifest or index staged here or in the store.
    pub fn read_manifest(&self, descriptor: &Descriptor) -> Result<ManifestDocument> {
        let bytes = self.read(&descriptor.digest)?;
        Ok(parse_manifest(&descriptor.digest, &bytes, Some(&descriptor.media_type))?.1)
    }

    /// Checks that every image reachable from `roots` is complete, then adds the staged blobs
    /// to the store and writes the names in one `index.json` update. Roots without a name
    /// are added as unnamed entries.
    pub fn commit(self, roots: &[(Option<Reference>, Descriptor)]) -> Result<CommitReport> {
        let mut report = CommitReport::default();
        let mut needed = BTreeSet::new();
        let mut pending: Vec<(Descriptor, Option<Digest>, bool)> = roots
            .iter()
            .map(|(_, root)| (root.clone(), None, false))
            .collect();
        while let Some((descriptor, parent, from_index)) = pending.pop() {
            if needed.contains(&descriptor.digest) {
                continue;
            }
            if !self.present(&descriptor.digest, descriptor.size)? {
                match parent {
                    Some(_) if from_index => {
                        report.absent_platforms += 1;
                        continue;
                    }
                    Some(parent) => {
                        return Err(StoreError::MissingChild {
                            parent,
                            child: descriptor.digest,
                        });
                    }
                    None => return Err(StoreError::BlobNotFound(descriptor.digest)),
                }
            }
            needed.insert(descriptor.digest.clone());
            if is_manifest_type(&descriptor.media_type) {
                let document = self.read_manifest(&descriptor)?;
                let is_index = matches!(document, ManifestDocument::Index(_));
                for child in document.children() {
                    pending.push((child.clone(), Some(descriptor.digest.clone()), is_index));
                }
            }
        }

        let _gc = self.store.gc_lock()?;
        let state = std::mem::take(&mut *self.state());
        for (digest, size) in &state.relied_on {
            if needed.contains(digest)
                && !state.staged.contains_key(digest)
                && self.store.blobs().stat(digest)? != Some(*size)
            {
                return Err(StoreError::RemovedConcurrently(digest.clone()));
            }
        }
        for (digest, (path, size)) in &state.staged {
            if needed.contains(digest) {
                // Renamed over a damaged stored copy, if there is one.
                self.store.blobs().adopt(path, digest)?;
                report.blobs_added += 1;
                report.bytes_added += size;
            }
        }
        report.blobs_reused = needed.len() - report.blobs_added;
        self.store.blobs().sync()?;
        self.store.update_index(|index| {
            for (name, descriptor) in roots {
                match name.as_ref().and_then(Reference::tagged_name) {
                    Some(tagged) => {
                        let mut entry = descriptor.clone();
                        entry
                            .annotations
                            .insert(crate::model::REF_NAME_ANNOTATION.to_owned(), tagged.clone());
                        set_entry(index, &tagged, entry);
                    }
                    None => {
                        let known = index
                            .manifests
                            .iter()
                            .any(|entry| entry.digest == descriptor.digest);
                        if !known {
                            let mut entry = descriptor.clone();
                            entry.annotations.remove(crate::model::REF_NAME_ANNOTATION);
                            index.manifests.push(entry);
                        }
                    }
                }
            }
            Ok(())
        })?;
        Ok(report)
    }
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        let fs = self.store.fs();
        if let Err(error) = fs.remove_dir_all(&self.dir)
            && !error.is_not_found()
        {
            tracing::warn!(error = %ErrorChain(&error), "could not remove an import's staging directory");
        }
        if let Err(error) = fs.remove_file(&self.lock_path) {
            tracing::warn!(error = %ErrorChain(&error), "could not remove an import's lock file");
        }
        self.lock
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}
