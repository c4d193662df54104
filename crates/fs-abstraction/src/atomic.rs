//! Atomic file replacement on top of any [`Fs`]: temp file, fsync, rename, directory sync.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ErrorChain, Fs, FsError, FsPath, Result, WriteBehind, WriteFile};

/// A file being written to a temporary name next to its destination. [`AtomicFile::commit`]
/// makes it appear at the destination in one step; dropping it without committing removes the
/// temporary file, so the destination never holds partial content.
pub struct AtomicFile<'fs, F: Fs + ?Sized> {
    fs: &'fs F,
    temp: PathBuf,
    dest: PathBuf,
    /// Written behind ([`WriteBehind`]): it is synced on commit.
    file: Option<WriteBehind>,
    /// Whether the temporary file is still there to clean up (until the rename succeeded).
    pending: bool,
}

/// Prefix of temporary files: crash leftovers can be recognised (and cleaned) by it.
pub const TEMP_PREFIX: &str = ".tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl<'fs, F: Fs + ?Sized> AtomicFile<'fs, F> {
    /// Starts writing a replacement for `dest` (whose parent directory must exist).
    pub fn create(fs: &'fs F, dest: &Path) -> Result<Self> {
        let dest_path = FsPath::new(dest)?;
        let name = dest_path.file_name().ok_or_else(|| FsError::InvalidPath {
            path: dest.to_path_buf(),
            reason: "the root cannot be written as a file",
        })?;
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_name = format!(
            "{TEMP_PREFIX}{}-{}-{}",
            std::process::id(),
            unique,
            name.to_string_lossy()
        );
        let parent = dest_path.parent().unwrap_or_else(FsPath::root);
        let temp = parent.join(Path::new(&temp_name))?.as_path().to_path_buf();
        let file = fs.create_new(&temp)?;
        Ok(Self {
            fs,
            temp,
            dest: dest_path.as_path().to_path_buf(),
            file: Some(WriteBehind::new(file)),
            pending: true,
        })
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Sets the permission bits of the file being written, before any content is written
    /// to it (a file holding secrets is then never readable by others, even briefly). The
    /// mode is kept by the rename on [`AtomicFile::commit`].
    pub fn set_permissions(&self, mode: u32) -> Result<()> {
        self.fs.set_permissions(&self.temp, mode)
    }

    /// Fsyncs the data, renames it over the destination and syncs the directory. On failure
    /// the temporary file is removed (when `self` drops) and the destination is untouched.
    pub fn commit(mut self) -> Result<()> {
        let mut file = self.file.take().ok_or_else(|| {
            FsError::io(
                "commit",
                self.fs.display_path(&self.dest),
                io::Error::other("already committed"),
            )
        })?;
        file.flush()
            .and_then(|()| file.sync_all())
            .map_err(|source| FsError::io("fsync", self.fs.display_path(&self.temp), source))?;
        drop(file);
        self.fs.rename(&self.temp, &self.dest)?;
        self.pending = false;
        let parent = FsPath::new(&self.dest)?
            .parent()
            .unwrap_or_else(FsPath::root);
        self.fs.sync_dir(parent.as_path())
    }
}

impl<F: Fs + ?Sized> Write for AtomicFile<'_, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(file) => file.write(buf),
            None => Err(io::Error::other("write after commit")),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.write_all(buf),
            None => Err(io::Error::other("write after commit")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl<F: Fs + ?Sized> Drop for AtomicFile<'_, F> {
    fn drop(&mut self) {
        // Close before removing: the handle must not outlive its name.
        drop(self.file.take());
        if self.pending
            && let Err(error) = self.fs.remove_file(&self.temp)
        {
            tracing::warn!(error = %ErrorChain(&error), "could not remove an abandoned temporary file");
        }
    }
}
