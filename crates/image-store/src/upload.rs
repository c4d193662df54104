//! Incremental, resumable blob uploads: the bytes of one blob arrive in any number of
//! pieces (a registry's chunked or streamed push), are appended to `uploads/<id>` while a
//! running SHA-256 is kept, and [`BlobUpload::commit`] verifies the digest, fsyncs and renames
//! the file into `blobs/`. Until then the store is untouched; a dropped upload removes its
//! file, and a crashed one leaves a file that `gc` removes (its lock file, held while the
//! upload lives, tells a dead upload from a live one, as for [`crate::Ingest`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sealer_fs_abstraction::{ErrorChain, LockGuard, ReadFile, WriteBehind, WriteFile};

use crate::blob::{BlobStore, COPY_BUFFER};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Result, StoreError};
use crate::store::Store;

use crate::store::UPLOAD_DIR;

/// One blob being uploaded in pieces; see the module documentation. Owns a clone of the
/// [`Store`] handle, so it can outlive the request that started it.
pub struct BlobUpload {
    store: Store,
    id: String,
    path: PathBuf,
    lock_path: PathBuf,
    lock: Option<Box<dyn LockGuard>>,
    file: Option<Box<dyn WriteFile>>,
    hasher: Hasher,
    size: u64,
}

impl std::fmt::Debug for BlobUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobUpload")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What an upload held at one moment, to go back to with [`BlobUpload::rollback`] when the
/// piece appended after it failed (a registry PATCH whose body was cut or disagreed with its
/// `Content-Range`): its size and the running hash of exactly those bytes.
#[derive(Clone)]
pub struct UploadCheckpoint {
    size: u64,
    hasher: Hasher,
}

impl std::fmt::Debug for UploadCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadCheckpoint")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl UploadCheckpoint {
    /// The upload's size at the checkpoint.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Store {
    /// Starts an incremental blob upload in `uploads/<id>`.
    pub fn begin_upload(&self) -> Result<BlobUpload> {
        BlobUpload::begin(self.clone(), true)
    }

    /// Starts an incremental blob upload whose bytes stay in the page cache until its
    /// [`BlobUpload::commit`]: no writeback is started while it is written (which would
    /// make the writer wait for the disk, and let the kernel drop pages that readers of the
    /// live upload, [`Self::open_upload`], then read back from disk). For an upload whose
    /// commit runs off every client's path (a pull-through fill), so that its one fsync of
    /// the whole blob waits for nobody.
    pub fn begin_cached_upload(&self) -> Result<BlobUpload> {
        BlobUpload::begin(self.clone(), false)
    }

    /// Opens the bytes written so far to the live upload `id` ([`BlobUpload::id`]) for
    /// reading: for serving a blob while it arrives. The bytes are unverified until the
    /// upload commits. Once the upload is committed (moved into `blobs/`) or dropped, the
    /// file is gone: a [`StoreError::Fs`] whose error `is_not_found()` (a handle opened
    /// before that stays readable on a real filesystem).
    pub fn open_upload(&self, id: &str) -> Result<Box<dyn ReadFile>> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(StoreError::io(
                format!("open upload {id:?}"),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an upload id"),
            ));
        }
        Ok(self.fs().open(&Path::new(UPLOAD_DIR).join(id))?)
    }
}

impl BlobUpload {
    /// `write_behind`: start writeback as the file grows ([`WriteBehind`]).
    fn begin(store: Store, write_behind: bool) -> Result<Self> {
        let fs = store.fs().clone();
        let (id, lock_path, lock) = store.begin_work(UPLOAD_DIR)?;
        let path = Path::new(UPLOAD_DIR).join(&id);
        let file = match fs.create_new(&path) {
            Ok(file) => file,
            Err(error) => {
                drop(lock);
                let _ = fs.remove_file(&lock_path);
                return Err(error.into());
            }
        };
        Ok(Self {
            store,
            id,
            path,
            lock_path,
            lock: Some(lock),
            // Synced on commit: written behind, so the sync does not wait for the whole blob
            // (unless the caller wants the pages cached until then).
            file: Some(if write_behind {
                Box::new(WriteBehind::new(file))
            } else {
                file
            }),
            hasher: Hasher::new(Algorithm::Sha256),
            size: 0,
        })
    }

    /// The upload's identifier (unique in this store; not a secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn file(&mut self) -> Result<&mut Box<dyn WriteFile>> {
        self.file.as_mut().ok_or_else(|| {
            StoreError::io(
                "write an upload",
                std::io::Error::other("the upload is finished"),
            )
        })
    }

    /// Appends `data`. On an error the upload is unusable (its size is unknown): drop it.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let id = self.id.clone();
        self.file()?
            .write_all(data)
            .map_err(|source| StoreError::io(format!("write upload {id}"), source))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// The current size and running hash, for [`Self::rollback`].
    pub fn checkpoint(&self) -> UploadCheckpoint {
        UploadCheckpoint {
            size: self.size,
            hasher: self.hasher.clone(),
        }
    }

    /// Goes back to `checkpoint` (taken from this upload): the file is cut to the size it had
    /// then and the running hash restored, so the bytes appended since are forgotten as if
    /// never sent and a later [`Self::commit`] verifies exactly what is kept. A checkpoint
    /// beyond the current size is refused. On an error the upload is unusable: drop it.
    pub fn rollback(&mut self, checkpoint: UploadCheckpoint) -> Result<()> {
        let id = self.id.clone();
        if checkpoint.size > self.size {
            return Err(StoreError::io(
                format!("roll back upload {id}"),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "the checkpoint ({} bytes) is beyond the upload's {} bytes",
                        checkpoint.size, self.size
                    ),
                ),
            ));
        }
        let file = self.file()?;
        file.flush()
            .and_then(|()| file.truncate(checkpoint.size))
            .map_err(|source| StoreError::io(format!("roll back upload {id}"), source))?;
        self.size = checkpoint.size;
        self.hasher = checkpoint.hasher;
        Ok(())
    }

    /// The digest of the bytes received so far with `algorithm`: the running SHA-256, or
    /// for sha512 the file re-hashed. Nothing is stored: for checking the bytes before
    /// [`Self::commit`] makes them durable (a registry serving a blob as it arrives releases
    /// it to its clients once verified, without waiting for the fsync).
    pub fn digest(&mut self, algorithm: Algorithm) -> Result<Digest> {
        let id = self.id.clone();
        self.file()?
            .flush()
            .map_err(|source| StoreError::io(format!("flush upload {id}"), source))?;
        match algorithm {
            Algorithm::Sha256 => Ok(self.hasher.clone().finish()),
            Algorithm::Sha512 => self.rehash(Algorithm::Sha512),
        }
    }

    /// Verifies that the bytes received hash to `expected` (a sha512 digest re-hashes the
    /// file), fsyncs them and moves them into `blobs/`. Returns the blob's size. When the
    /// blob is already in the store the upload is discarded and the stored blob kept. Either
    /// way the blob is held fresh ([`Store::hold_fresh`]) under the same GC lock. On a
    /// mismatch nothing is stored and the upload is removed.
    pub fn commit(mut self, expected: &Digest) -> Result<u64> {
        let id = self.id.clone();
        let mut file = self.file.take().ok_or_else(|| {
            StoreError::io(
                format!("commit upload {id}"),
                std::io::Error::other("already committed"),
            )
        })?;
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(|source| StoreError::io(format!("fsync upload {id}"), source))?;
        drop(file);
        let hasher = std::mem::replace(&mut self.hasher, Hasher::new(Algorithm::Sha256));
        let actual = match expected.algorithm() {
            Algorithm::Sha256 => hasher.finish(),
            Algorithm::Sha512 => self.rehash(Algorithm::Sha512)?,
        };
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                what: format!("upload {id}"),
                expected: expected.clone(),
                actual,
            });
        }
        let _gc = self.store.gc_lock()?;
        if self.store.blobs().stat(expected)?.is_none() {
            self.store.blobs().adopt(&self.path, expected)?;
            self.store.blobs().sync()?;
            tracing::debug!(digest = %expected, size = self.size, "stored uploaded blob");
        }
        // Held within the same GC lock as the rename: no prune can fall between the two
        // and remove the blob before the push names it in a manifest.
        self.store.write_hold(expected)?;
        Ok(self.size)
    }

    fn rehash(&self, algorithm: Algorithm) -> Result<Digest> {
        let mut file = self.store.fs().open(&self.path)?;
        let mut hasher = Hasher::new(algorithm);
        let mut buffer = vec![0u8; COPY_BUFFER];
        loop {
            let read = file
                .read(&mut buffer)
                .map_err(|source| StoreError::io(format!("read upload {}", self.id), source))?;
            if read == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buffer[..read]);
        }
    }
}

impl Drop for BlobUpload {
    fn drop(&mut self) {
        let fs = self.store.fs();
        self.file.take();
        // After a commit the file was renamed away: not finding it is the normal case.
        if let Err(error) = fs.remove_file(&self.path)
            && !error.is_not_found()
        {
            tracing::warn!(error = %ErrorChain(&error), "could not remove an upload's file");
        }
        if let Err(error) = fs.remove_file(&self.lock_path)
            && !error.is_not_found()
        {
            tracing::warn!(error = %ErrorChain(&error), "could not remove an upload's lock file");
        }
        self.lock.take();
    }
}
