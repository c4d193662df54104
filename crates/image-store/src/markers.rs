//! Marker files: an empty file `<dir>/<algorithm>-<hex>` per digest, whose mtime is all it
//! says. The holds on fresh blobs (`holds/`, [`crate::holds`]) and the blobs of the
//! pull-through cache (`cached/`, [`crate::cached`]) are kept so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sealer_fs_abstraction::Fs;

use crate::digest::Digest;
use crate::error::Result;

/// The markers of one directory of the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Markers {
    /// The directory, relative to the store's root.
    dir: &'static str,
}

impl Markers {
    /// The markers kept in `dir`.
    pub(crate) const fn new(dir: &'static str) -> Self {
        Self { dir }
    }

    /// Where the marker of `digest` is.
    pub(crate) fn path(self, digest: &Digest) -> PathBuf {
        Path::new(self.dir).join(digest.file_name())
    }

    /// Writes (or renews) the marker of `digest`, with the mtime `at`. The marker is empty:
    /// only its mtime matters.
    pub(crate) fn write(self, fs: &dyn Fs, digest: &Digest, at: SystemTime) -> Result<()> {
        fs.create_dir_all(Path::new(self.dir))?;
        let path = self.path(digest);
        drop(fs.create(&path)?);
        fs.set_modified(&path, at)?;
        Ok(())
    }

    /// Sets the mtime of the marker of `digest` to `at`, if it has one.
    pub(crate) fn touch(self, fs: &dyn Fs, digest: &Digest, at: SystemTime) -> Result<()> {
        match fs.set_modified(&self.path(digest), at) {
            Ok(()) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Removes the marker of `digest`, if it has one.
    pub(crate) fn remove(self, fs: &dyn Fs, digest: &Digest) -> Result<()> {
        match fs.remove_file(&self.path(digest)) {
            Ok(()) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// The digests marked (present in the store or not); files not named after a digest
    /// are passed over.
    pub(crate) fn list(self, fs: &dyn Fs) -> Result<BTreeSet<Digest>> {
        let dir = Path::new(self.dir);
        if !fs.exists(dir)? {
            return Ok(BTreeSet::new());
        }
        Ok(fs
            .read_dir(dir)?
            .iter()
            .filter_map(|entry| Digest::from_file_name(&entry.name.to_string_lossy()))
            .collect())
    }
}
