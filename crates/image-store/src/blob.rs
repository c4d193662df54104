//! Blobs: the [`BlobStore`] trait and its filesystem implementation over an OCI layout's
//! `blobs/<algorithm>/<hex>` tree.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

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
    /// stored. When the blob is already present (with `expected_size` bytes, when given),
    /// `data` is not read; a stored copy of another size is replaced. Concurrent puts of
    /// one blob are safe.
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

/// Buffers in flight between the copying thread and the hashing thread.
const PIPELINE_DEPTH: usize = 4;

/// Copies `source` to `sink` while hashing, refusing more than `limit` bytes. Returns the
/// digest and the number of bytes copied.
///
/// Large copies hash on a second thread while this one reads and writes, so a copy runs at
/// close to the speed of hashing alone; content that fits one buffer is hashed inline.
pub(crate) fn copy_hashing(
    source: &mut dyn Read,
    sink: &mut dyn Write,
    algorithm: Algorithm,
    limit: Option<u64>,
    what: &dyn Fn() -> String,
) -> Result<(Digest, u64)> {
    let mut first = vec![0u8; COPY_BUFFER];
    let (filled, at_end) = fill(source, &mut first, what)?;
    check_limit(limit, filled as u64, what)?;
    if at_end {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(&first[..filled]);
        sink.write_all(&first[..filled])
            .map_err(|source| StoreError::io(format!("write {}", what()), source))?;
        return Ok((hasher.finish(), filled as u64));
    }
    std::thread::scope(|scope| {
        let (to_hasher, chunks) = mpsc::sync_channel::<(Arc<Vec<u8>>, usize)>(PIPELINE_DEPTH);
        let (recycle, recycled) = mpsc::channel::<Arc<Vec<u8>>>();
        let hashing = scope.spawn(move || {
            let mut hasher = Hasher::new(algorithm);
            for (chunk, len) in chunks {
                hasher.update(&chunk[..len]);
                // The copier may be gone after an error; the buffer is then just freed.
                let _ = recycle.send(chunk);
            }
            hasher.finish()
        });
        let copied = pipeline_copy(
            source,
            sink,
            (first, filled),
            &to_hasher,
            &recycled,
            limit,
            what,
        );
        drop(to_hasher);
        let digest = hashing.join().map_err(|_| {
            StoreError::io(
                format!("hash {}", what()),
                io::Error::other("the hashing thread panicked"),
            )
        })?;
        Ok((digest, copied?))
    })
}

/// The copying half of [`copy_hashing`]: sends each chunk to the hasher, then writes it.
fn pipeline_copy(
    source: &mut dyn Read,
    sink: &mut dyn Write,
    (first, first_len): (Vec<u8>, usize),
    to_hasher: &mpsc::SyncSender<(Arc<Vec<u8>>, usize)>,
    recycled: &mpsc::Receiver<Arc<Vec<u8>>>,
    limit: Option<u64>,
    what: &dyn Fn() -> String,
) -> Result<u64> {
    let hasher_gone = || {
        StoreError::io(
            format!("hash {}", what()),
            io::Error::other("the hashing thread stopped"),
        )
    };
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut allocated = 1;
    let mut buffer = first;
    let mut len = first_len;
    let mut total = len as u64;
    let mut at_end = false;
    loop {
        let chunk = Arc::new(buffer);
        to_hasher
            .send((chunk.clone(), len))
            .map_err(|_| hasher_gone())?;
        sink.write_all(&chunk[..len])
            .map_err(|source| StoreError::io(format!("write {}", what()), source))?;
        drop(chunk);
        if at_end {
            return Ok(total);
        }
        // Reuse a buffer the hasher is done with; allocate only while the pipeline fills.
        while let Ok(done) = recycled.try_recv() {
            if let Ok(done) = Arc::try_unwrap(done) {
                spare.push(done);
            }
        }
        buffer = match spare.pop() {
            Some(buffer) => buffer,
            None if allocated < PIPELINE_DEPTH + 1 => {
                allocated += 1;
                vec![0u8; COPY_BUFFER]
            }
            None => {
                let done = recycled.recv().map_err(|_| hasher_gone())?;
                Arc::try_unwrap(done).unwrap_or_else(|_| vec![0u8; COPY_BUFFER])
            }
        };
        let (filled, ended) = fill(source, &mut buffer, what)?;
        total += filled as u64;
        check_limit(limit, total, what)?;
        if filled == 0 {
            return Ok(total);
        }
        len = filled;
        at_end = ended;
    }
}

/// Reads until `buffer` is full or the source ends; returns the bytes read and whether the
/// source ended.
fn fill(
    source: &mut dyn Read,
    buffer: &mut [u8],
    what: &dyn Fn() -> String,
) -> Result<(usize, bool)> {
    let mut filled = 0;
    while filled < buffer.len() {
        match source.read(&mut buffer[filled..]) {
            Ok(0) => return Ok((filled, true)),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(StoreError::io(format!("read {}", what()), source)),
        }
    }
    Ok((filled, false))
}

fn check_limit(limit: Option<u64>, total: u64, what: &dyn Fn() -> String) -> Result<()> {
    match limit {
        Some(limit) if total > limit => Err(StoreError::TooLarge {
            what: what(),
            limit,
        }),
        _ => Ok(()),
    }
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
        match (self.stat(expected)?, expected_size) {
            // A stored copy of another size is damaged: the verified one replaces it.
            (Some(stored), Some(size)) if stored != size => {
                tracing::warn!(digest = %expected, expected = size, stored,
                    "a stored blob has the wrong size; replacing it");
            }
            (Some(size), _) => {
                return Ok(PutOutcome {
                    size,
                    existed: true,
                });
            }
            (None, _) => {}
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
