//! Blobs: the [`BlobStore`] trait and its filesystem implementation over an OCI layout's
//! `blobs/<algorithm>/<hex>` tree.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sealer_fs_abstraction::{AtomicFile, FileKind, Fs, ReadFile, TEMP_PREFIX};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Result, StoreError};

/// Buffer size for streaming copies: large enough to keep syscalls and hashing calls cheap.
pub(crate) const COPY_BUFFER: usize = 1 << 20;

/// What [`BlobStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// The blob's size.
    pub size: u64,
    /// Whether the blob was already present (the source was then not read).
    pub existed: bool,
}

/// Content-addressed blob storage.
pub trait BlobStore: Send + Sync {
    /// The size of a blob, or `None` when absent.
    fn stat(&self, digest: &Digest) -> Result<Option<u64>>;

    /// Opens a blob for reading; it is seekable, for ranges.
    fn open(&self, digest: &Digest) -> Result<Box<dyn ReadFile>>;

    /// Stores the bytes of `data` under `expected` if they hash to it (and have
    /// `expected_size` bytes, when given). The bytes are hashed while written to a temporary
    /// file that is renamed into place only on a match: on any mismatch or error nothing is
    /// stored. When the blob is already present, `data` is not read. Concurrent puts of one
    /// blob are safe.
    fn put(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        data: &mut dyn Read,
    ) -> Result<PutOutcome>;

    /// Removes a blob; returns whether it existed.
    fn delete(&self, digest: &Digest) -> Result<bool>;

    /// Every blob present.
    fn list(&self) -> Result<Vec<Digest>>;

    /// Opens `range` of a blob (end exclusive, clamped to the blob's size).
    fn open_range(&self, digest: &Digest, range: Range<u64>) -> Result<Box<dyn Read + Send>> {
        let mut file = self.open(digest)?;
        file.seek(SeekFrom::Start(range.start))
            .map_err(|source| StoreError::io(format!("seek in blob {digest}"), source))?;
        Ok(Box::new(file.take(range.end.saturating_sub(range.start))))
    }
}

/// Copies `source` to `sink` while hashing, refusing more than `limit` bytes. Returns the
/// digest and the number of bytes copied.
pub(crate) fn copy_hashing(
    source: &mut dyn Read,
    sink: &mut dyn Write,
    algorithm: Algorithm,
    limit: Option<u64>,
    what: &dyn Fn() -> String,
) -> Result<(Digest, u64)> {
    let mut hasher = Hasher::new(algorithm);
    let mut buffer = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(StoreError::io(format!("read {}", what()), source)),
        };
        total += read as u64;
        if let Some(limit) = limit
            && total > limit
        {
            return Err(StoreError::SizeMismatch {
                digest: hasher.finish(),
                expected: limit,
                actual: total,
            });
        }
        hasher.update(&buffer[..read]);
        sink.write_all(&buffer[..read])
            .map_err(|source| StoreError::io(format!("write {}", what()), source))?;
    }
    Ok((hasher.finish(), total))
}

/// Checks a copied blob against what was announced.
pub(crate) fn check_content(
    what: &dyn Fn() -> String,
    expected: &Digest,
    expected_size: Option<u64>,
    actual: &Digest,
    size: u64,
) -> Result<()> {
    if let Some(expected_size) = expected_size
        && size != expected_size
    {
        return Err(StoreError::SizeMismatch {
            digest: expected.clone(),
            expected: expected_size,
            actual: size,
        });
    }
    if actual != expected {
        return Err(StoreError::DigestMismatch {
            what: what(),
            expected: expected.clone(),
            actual: actual.clone(),
        });
    }
    Ok(())
}

/// The [`BlobStore`] of an OCI image layout on an [`Fs`].
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    fs: Arc<dyn Fs>,
}

impl FsBlobStore {
    /// Blobs under `blobs/` of the layout rooted at `fs`.
    pub fn new(fs: Arc<dyn Fs>) -> Self {
        Self { fs }
    }

    /// The path of a blob relative to the layout root.
    pub fn path(digest: &Digest) -> PathBuf {
        digest.blob_path()
    }

    /// Moves a verified file (written elsewhere on the same [`Fs`]) into place as `digest`.
    pub(crate) fn adopt(&self, staged: &Path, digest: &Digest) -> Result<()> {
        let dir = Path::new("blobs").join(digest.algorithm().name());
        self.fs.create_dir_all(&dir)?;
        self.fs.rename(staged, &digest.blob_path())?;
        Ok(())
    }

    /// Syncs the blob directories after [`Self::adopt`] calls.
    pub(crate) fn sync(&self) -> Result<()> {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = Path::new("blobs").join(algorithm.name());
            if self.fs.exists(&dir)? {
                self.fs.sync_dir(&dir)?;
            }
        }
        Ok(())
    }

    /// Temporary files left in the blob directories by interrupted writes.
    pub(crate) fn leftover_temp_files(&self) -> Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = Path::new("blobs").join(algorithm.name());
            if !self.fs.exists(&dir)? {
                continue;
            }
            for entry in self.fs.read_dir(&dir)? {
                if entry.name.to_string_lossy().starts_with(TEMP_PREFIX) {
                    found.push(dir.join(&entry.name));
                }
            }
        }
        Ok(found)
    }
}

impl BlobStore for FsBlobStore {
    fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.fs.metadata(&digest.blob_path()) {
            Ok(metadata) if metadata.kind == FileKind::File => Ok(Some(metadata.len)),
            Ok(_) => Ok(None),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn ReadFile>> {
        self.fs.open(&digest.blob_path()).map_err(|error| {
            if error.is_not_found() {
                StoreError::BlobNotFound(digest.clone())
            } else {
                error.into()
            }
        })
    }

    fn put(
        &self,
        expected: &Digest,
        expected_size: Option<u64>,
        data: &mut dyn Read,
    ) -> Result<PutOutcome> {
        if let Some(size) = self.stat(expected)? {
            return Ok(PutOutcome {
                size,
                existed: true,
            });
        }
        let path = expected.blob_path();
        let dir = Path::new("blobs").join(expected.algorithm().name());
        self.fs.create_dir_all(&dir)?;
        let mut file = AtomicFile::create(self.fs.as_ref(), &path)?;
        let what = || format!("blob {expected}");
        let (actual, size) =
            copy_hashing(data, &mut file, expected.algorithm(), expected_size, &what)?;
        check_content(&what, expected, expected_size, &actual, size)?;
        file.commit()?;
        tracing::debug!(digest = %expected, size, "stored blob");
        Ok(PutOutcome {
            size,
            existed: false,
        })
    }

    fn delete(&self, digest: &Digest) -> Result<bool> {
        match self.fs.remove_file(&digest.blob_path()) {
            Ok(()) => Ok(true),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn list(&self) -> Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = Path::new("blobs").join(algorithm.name());
            if !self.fs.exists(&dir)? {
                continue;
            }
            for entry in self.fs.read_dir(&dir)? {
                let name = entry.name.to_string_lossy();
                // Temporary files and anything foreign are not blobs.
                if let Ok(digest) = format!("{}:{name}", algorithm.name()).parse::<Digest>() {
                    digests.push(digest);
                }
            }
        }
        Ok(digests)
    }
}
