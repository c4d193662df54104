//! Saving images to archives and loading them back, streaming.
//!
//! * **oci-archive** (default): a tar of an OCI image layout, multi-arch indexes included.
//!   `skopeo inspect oci-archive:FILE:NAME` reads it with the same manifest digests.
//! * **docker-archive**: `docker save`'s format (`manifest.json`, `<config>.json`,
//!   uncompressed `<diffid>.tar` layers), one platform per image.
//! * **OCI layout directories** load too ([`load_layout`]).
//!
//! Memory stays flat whatever the size: blobs stream through fixed buffers. Loads go through
//! an [`Ingest`](crate::Ingest): every blob is verified against its digest and the store changes only when
//! the whole archive was read and found complete.
//!
//! Files: `oci_save` and `docker_save` (the two exports), `load` (archives and layout
//! directories); this one holds the options, reports and errors, and the tar entry that
//! streams a verified blob through fs-abstraction's [`TarWriter`], the one tar writer.

use sealer_fs_abstraction::ErrorChain;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::Path;

use crate::blob::copy_hashing;
use crate::digest::Digest;
use crate::error::StoreError;
use crate::ingest::CommitReport;
use crate::model::Platform;
use crate::reference::Reference;
use crate::store::Store;

use sealer_fs_abstraction::tar::{PackOptions, TarError, TarWriter};

mod docker_save;
mod load;
mod oci_save;

use self::docker_save::save_docker;
pub use self::load::{load, load_layout};
use self::oci_save::save_oci;

/// Why saving or loading failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the archive failed.
    #[error("reading the archive")]
    Read(#[source] io::Error),
    /// Writing the archive failed.
    #[error("writing the archive")]
    Write(#[source] io::Error),
    /// The archive is not of a known format or is inconsistent.
    #[error("{entry}: {reason}")]
    Invalid {
        /// The archive entry (or file) at fault.
        entry: String,
        /// What was expected.
        reason: String,
    },
    /// The requested export cannot be made.
    #[error("{0}")]
    Unsupported(String),
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn invalid(entry: impl Into<String>, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid {
        entry: entry.into(),
        reason: reason.into(),
    }
}

/// Archive formats [`save`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveFormat {
    /// A tar of an OCI image layout.
    #[default]
    OciArchive,
    /// `docker save`'s format.
    DockerArchive,
}

/// Receives progress in bytes (the CLI draws a bar from it).
pub trait Progress: Send + Sync {
    /// The total, when known.
    fn set_total(&self, bytes: u64);
    /// `bytes` more were processed.
    fn advance(&self, bytes: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// Options of [`save`].
#[derive(Clone, Copy)]
pub struct SaveOptions<'a> {
    /// The format.
    pub format: ArchiveFormat,
    /// For docker-archive: the platform to export from multi-arch images (default: host).
    pub platform: Option<&'a Platform>,
    /// Progress sink.
    pub progress: &'a dyn Progress,
}

impl Default for SaveOptions<'_> {
    fn default() -> Self {
        Self {
            format: ArchiveFormat::OciArchive,
            platform: None,
            progress: &NoProgress,
        }
    }
}

/// What [`save`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveReport {
    /// The images, with the digest of what was written for each (the top manifest or index
    /// for oci-archive, the platform manifest for docker-archive).
    pub images: Vec<(String, Digest)>,
    /// Blob entries written.
    pub blobs: usize,
    /// Bytes of blob content written.
    pub bytes: u64,
}

/// The first bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Options of [`load`] and [`load_layout`].
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// A name for the image when the archive holds exactly one (overrides its own name).
    pub name: Option<&'a Reference>,
    /// Progress sink (bytes of archive read).
    pub progress: &'a dyn Progress,
    /// For [`load`]: read the layout under this directory of the archive (`registry` for a
    /// cluster image's `registry/` layer) and ignore the entries outside it.
    pub directory: Option<&'a str>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self {
            name: None,
            progress: &NoProgress,
            directory: None,
        }
    }
}

/// What a load added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The images, by name when they have one (`repository@digest` for a digest-pinned
    /// one, which is stored unnamed), with their top digest.
    pub images: Vec<(Option<String>, Digest)>,
    /// Blob accounting.
    pub commit: CommitReport,
    /// Warnings (for example names that could not be parsed).
    pub warnings: Vec<String>,
}

/// Writes the images named by `references` to `out` in `options.format`. Every blob is
/// re-hashed while written: content corrupted on disk aborts the save.
pub fn save(
    store: &Store,
    references: &[String],
    out: &mut dyn Write,
    options: SaveOptions<'_>,
) -> Result<SaveReport> {
    if references.is_empty() {
        return Err(ArchiveError::Unsupported("no image to save".to_owned()));
    }
    match options.format {
        ArchiveFormat::OciArchive => save_oci(store, references, out, options.progress),
        ArchiveFormat::DockerArchive => save_docker(store, references, out, options),
    }
}

/// One image of a docker-archive's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn diff_ids(config: &[u8]) -> Result<Vec<Digest>, String> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<Digest>,
    }
    serde_json::from_slice::<Config>(config)
        .map(|config| config.rootfs.diff_ids)
        .map_err(|error| format!("no valid rootfs.diff_ids: {}", ErrorChain(&error)))
}

impl From<TarError> for ArchiveError {
    fn from(error: TarError) -> Self {
        match error {
            TarError::Io { source, .. } => Self::Write(source),
            other => Self::Write(io::Error::other(other)),
        }
    }
}

/// An archive's tar stream: deterministic headers (mtime 0, owner 0:0).
type ArchiveTar<'w> = TarWriter<&'w mut dyn Write>;

fn archive_tar(out: &mut dyn Write) -> ArchiveTar<'_> {
    TarWriter::new(out, PackOptions::default())
}

/// Streams `size` bytes of `source` into the entry `path`, checking they hash to `digest`,
/// through the store's pipelined hashing copy (tar's own copy uses 8 KiB writes).
fn append_verified(
    tar: &mut ArchiveTar<'_>,
    path: &str,
    size: u64,
    source: &mut dyn Read,
    digest: &Digest,
    progress: &dyn Progress,
) -> Result<()> {
    tar.append_streamed(Path::new(path), 0o644, size, |out| {
        let what = || format!("blob {digest}");
        let mut counted = ProgressReader::new(source.take(size), progress);
        let (actual, copied) =
            copy_hashing(&mut counted, out, digest.algorithm(), Some(size), &what)?;
        if copied != size {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: copied,
            }
            .into());
        }
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                what: format!("blob {digest} in the store (run `sealer fsck`)"),
                expected: digest.clone(),
                actual,
            }
            .into());
        }
        Ok(copied)
    })
}

/// Ends the tar stream and flushes the output.
fn finish_tar(tar: ArchiveTar<'_>) -> Result<()> {
    tar.finish()?.flush().map_err(ArchiveError::Write)
}

/// A reader that reports the bytes it yields.
struct ProgressReader<'p, R> {
    inner: R,
    progress: &'p dyn Progress,
}

impl<'p, R> ProgressReader<'p, R> {
    fn new(inner: R, progress: &'p dyn Progress) -> Self {
        Self { inner, progress }
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.progress.advance(read as u64);
        Ok(read)
    }
}
