//! [`RealFs`]: the disk, confined to one directory by cap-std.
//!
//! Every path is resolved by cap-std relative to an open directory handle (`openat2` with
//! `RESOLVE_BENEATH` on Linux, a manual component-by-component walk elsewhere): `..` or a
//! symlink that would climb above the root, and absolute symlink targets, fail with
//! [`FsError::Escape`] instead of touching the host. This module is the only place of the
//! project allowed to use `std::fs` types, and only on handles that cap-std opened.

// `File::lock` and `File::sync_all` on a handle that cap-std opened need `std::fs::File`.
#![allow(clippy::disallowed_types)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use cap_fs_ext::{DirExt, OpenOptionsMaybeDirExt, SystemTimeSpec};
use cap_std::fs::{Dir, MetadataExt, OpenOptions, Permissions, PermissionsExt};

use crate::{
    DirEntry, ErrorChain, FileKind, Fs, FsError, FsPath, LockGuard, Metadata, ReadFile, Result,
    WriteFile,
};

/// The message of cap-std's error for a path that would leave its directory.
const CAP_STD_ESCAPE_MESSAGE: &str = "a path led outside of the filesystem";

/// A filesystem rooted at a directory on disk. Cloning is cheap and shares the root handle.
#[derive(Clone)]
pub struct RealFs {
    /// The root as given (made absolute), for messages.
    root: PathBuf,
    /// The open root directory every operation is resolved against.
    dir: Arc<Dir>,
}

impl std::fmt::Debug for RealFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealFs").field("root", &self.root).finish()
    }
}

impl RealFs {
    /// Opens an existing directory as the root.
    pub fn open_root(path: impl AsRef<Path>) -> Result<Self> {
        let root = absolute(path.as_ref());
        let dir = Dir::open_ambient_dir(&root, cap_std::ambient_authority())
            .map_err(|source| FsError::io("open root", root.clone(), source))?;
        tracing::debug!(root = %root.display(), "opened filesystem root");
        Ok(Self {
            root,
            dir: Arc::new(dir),
        })
    }

    /// Creates the directory (and its missing parents) if needed, then opens it as the root.
    pub fn create_root(path: impl AsRef<Path>) -> Result<Self> {
        let root = absolute(path.as_ref());
        Dir::create_ambient_dir_all(&root, cap_std::ambient_authority())
            .map_err(|source| FsError::io("create root", root.clone(), source))?;
        Self::open_root(root)
    }

    /// The root directory on disk.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Turns a cap-std error into an [`FsError`], recognising escape attempts.
    fn error(&self, op: &'static str, path: &Path, source: io::Error) -> FsError {
        if is_escape(&source) {
            tracing::warn!(op, path = %path.display(), root = %self.root.display(), "refused a path escaping the root");
            FsError::Escape {
                op,
                path: path.to_path_buf(),
                root: self.root.clone(),
            }
        } else {
            FsError::io(op, self.display_path(path), source)
        }
    }

    /// Runs `f` on the validated form of `path`, mapping its error.
    fn with<T>(
        &self,
        op: &'static str,
        path: &Path,
        f: impl FnOnce(&Dir, &Path) -> io::Result<T>,
    ) -> Result<T> {
        let valid = FsPath::new(path)?;
        f(&self.dir, valid.as_path()).map_err(|source| self.error(op, path, source))
    }

    /// Like [`RealFs::with`], but the root itself is refused (it cannot be removed or moved).
    fn with_non_root<T>(
        &self,
        op: &'static str,
        path: &Path,
        f: impl FnOnce(&Dir, &Path) -> io::Result<T>,
    ) -> Result<T> {
        refuse_root(&FsPath::new(path)?, path)?;
        self.with(op, path, f)
    }

    /// Opens a file with `options`, refusing directories (reading one would fail later, and
    /// [`crate::MemFs`] refuses them at open).
    fn open_file(
        &self,
        op: &'static str,
        path: &Path,
        options: &OpenOptions,
    ) -> Result<cap_std::fs::File> {
        let file = self.with(op, path, |dir, p| dir.open_with(p, options))?;
        let is_dir = file
            .metadata()
            .map_err(|source| self.error(op, path, source))?
            .is_dir();
        if is_dir {
            return Err(FsError::io(
                op,
                self.display_path(path),
                io::Error::from(io::ErrorKind::IsADirectory),
            ));
        }
        Ok(file)
    }
}

/// `std::path::absolute` when it works (it only fails on an empty path or without a current
/// directory), the path as given otherwise.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether cap-std refused `error` because the path would leave the root.
fn is_escape(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::PermissionDenied
        && error.raw_os_error().is_none()
        && error
            .get_ref()
            .is_some_and(|inner| inner.to_string() == CAP_STD_ESCAPE_MESSAGE)
}

/// Refuses the root for operations that would remove or replace it.
pub(crate) fn refuse_root(valid: &FsPath, given: &Path) -> Result<()> {
    if valid.is_root() {
        return Err(FsError::InvalidPath {
            path: given.to_path_buf(),
            reason: "the root itself cannot be removed, renamed, replaced or linked",
        });
    }
    Ok(())
}

/// What a cap-std file type is.
fn file_kind(file_type: &cap_std::fs::FileType) -> FileKind {
    if file_type.is_symlink() {
        FileKind::Symlink
    } else if file_type.is_dir() {
        FileKind::Dir
    } else if file_type.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// Converts cap-std metadata.
fn metadata(meta: &cap_std::fs::Metadata) -> Metadata {
    let kind = file_kind(&meta.file_type());
    Metadata {
        kind,
        len: meta.len(),
        mode: meta.mode() & 0o7777,
        modified: meta
            .modified()
            .ok()
            .map(cap_std::time::SystemTime::into_std),
        dev: meta.dev(),
        ino: meta.ino(),
        nlink: meta.nlink(),
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

impl WriteFile for cap_std::fs::File {
    fn sync_all(&mut self) -> io::Result<()> {
        cap_std::fs::File::sync_all(self)
    }

    /// `posix_fadvise(POSIX_FADV_DONTNEED)`: Linux starts writeback of the range's dirty pages
    /// without waiting, and drops those of its pages that are already clean (few, in a range
    /// just written: the data stays cached). Not `sync_file_range`, which rustix does not
    /// wrap. Elsewhere nothing is done.
    fn start_writeback(&mut self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(len) = std::num::NonZeroU64::new(len) {
            rustix::fs::fadvise(&*self, offset, Some(len), rustix::fs::Advice::DontNeed)?;
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = (offset, len);
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        io::Seek::seek(self, io::SeekFrom::Start(len))?;
        Ok(())
    }
}

/// Holds an open file whose `flock` is released on drop.
struct FileLock {
    file: std::fs::File,
}

impl LockGuard for FileLock {}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the descriptor would release it as well; unlocking first says why we hold it.
        if let Err(error) = self.file.unlock() {
            tracing::warn!(error = %ErrorChain(&error), "could not unlock a lock file");
        }
    }
}

impl Fs for RealFs {
    fn display_path(&self, path: &Path) -> PathBuf {
        match FsPath::new(path) {
            Ok(valid) if valid.is_root() => self.root.clone(),
            Ok(valid) => self.root.join(valid.as_path()),
            // Shown as given: joining an absolute path would hide the root.
            Err(_) => path.to_path_buf(),
        }
    }

    fn open(&self, path: &Path) -> Result<Box<dyn ReadFile>> {
        let file = self.open_file("open", path, OpenOptions::new().read(true))?;
        Ok(Box::new(file))
    }

    fn create(&self, path: &Path) -> Result<Box<dyn WriteFile>> {
        // `Dir::create` checks nothing more than `open_with`; a directory fails with EISDIR.
        let file = self.with("create", path, |dir, p| dir.create(p))?;
        Ok(Box::new(file))
    }

    fn create_new(&self, path: &Path) -> Result<Box<dyn WriteFile>> {
        let file = self.with("create_new", path, |dir, p| {
            dir.open_with(p, OpenOptions::new().write(true).create_new(true))
        })?;
        Ok(Box::new(file))
    }

    fn create_dir(&self, path: &Path) -> Result<()> {
        self.with("create_dir", path, |dir, p| dir.create_dir(p))
    }

    fn create_dir_all(&self, path: &Path) -> Result<()> {
        let valid = FsPath::new(path)?;
        if valid.is_root() {
            return Ok(());
        }
        self.with("create_dir_all", path, |dir, p| {
            dir.create_dir_all(p).map_err(|error| {
                // cap-std reports a symlink it may not follow as "exists, not a directory";
                // say that it leads outside instead.
                match dir.metadata(p) {
                    Err(follow)
                        if error.kind() == io::ErrorKind::AlreadyExists && is_escape(&follow) =>
                    {
                        follow
                    }
                    _ => error,
                }
            })
        })
    }

    fn read_dir(&self, path: &Path) -> Result<Vec<DirEntry>> {
        self.with("read_dir", path, |dir, p| {
            let mut entries = Vec::new();
            for entry in dir.read_dir(p)? {
                let entry = entry?;
                let kind = file_kind(&entry.file_type()?);
                entries.push(DirEntry {
                    name: entry.file_name(),
                    kind,
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })
    }

    fn metadata(&self, path: &Path) -> Result<Metadata> {
        self.with("metadata", path, |dir, p| dir.metadata(p))
            .map(|m| metadata(&m))
    }

    fn symlink_metadata(&self, path: &Path) -> Result<Metadata> {
        self.with("symlink_metadata", path, |dir, p| dir.symlink_metadata(p))
            .map(|m| metadata(&m))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        check_symlink_target(target)?;
        self.with_non_root("symlink", link, |dir, p| dir.symlink_contents(target, p))
    }

    fn read_link(&self, path: &Path) -> Result<PathBuf> {
        self.with("read_link", path, |dir, p| dir.read_link_contents(p))
    }

    fn hard_link(&self, src: &Path, dst: &Path) -> Result<()> {
        let src_valid = FsPath::new(src)?;
        refuse_root(&src_valid, src)?;
        let dst_valid = FsPath::new(dst)?;
        refuse_root(&dst_valid, dst)?;
        // linkat(2) without AT_SYMLINK_FOLLOW would link the symlink itself; refusing it keeps
        // hard links to regular files only, as the trait promises.
        let src_meta = self.symlink_metadata(src)?;
        check_hard_link_source(src_meta.kind)
            .map_err(|source| FsError::io("hard_link", self.display_path(src), source))?;
        self.dir
            .hard_link(src_valid.as_path(), &self.dir, dst_valid.as_path())
            .map_err(|source| {
                // An escape is as likely on either side: name the destination only when the
                // source resolved (its metadata was read above).
                self.error("hard_link", dst, source)
            })
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let from_valid = FsPath::new(from)?;
        refuse_root(&from_valid, from)?;
        let to_valid = FsPath::new(to)?;
        refuse_root(&to_valid, to)?;
        self.dir
            .rename(from_valid.as_path(), &self.dir, to_valid.as_path())
            .map_err(|source| {
                if is_escape(&source) {
                    // Name whichever side escapes, so the message points at the culprit.
                    let culprit = match self.dir.symlink_metadata(from_valid.as_path()) {
                        Err(error) if is_escape(&error) => from,
                        _ => to,
                    };
                    self.error("rename", culprit, source)
                } else {
                    self.error("rename", from, source)
                }
            })
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        self.with_non_root("remove_file", path, |dir, p| dir.remove_file(p))
    }

    fn remove_dir(&self, path: &Path) -> Result<()> {
        self.with_non_root("remove_dir", path, |dir, p| dir.remove_dir(p))
    }

    fn remove_dir_all(&self, path: &Path) -> Result<()> {
        // cap-std removes a symlink at `path` itself and never follows symlinks below it.
        self.with_non_root("remove_dir_all", path, |dir, p| dir.remove_dir_all(p))
    }

    fn set_permissions(&self, path: &Path, mode: u32) -> Result<()> {
        self.with("set_permissions", path, |dir, p| {
            dir.set_permissions(p, Permissions::from_mode(mode & 0o7777))
        })
    }

    fn set_modified(&self, path: &Path, modified: SystemTime) -> Result<()> {
        self.with("set_modified", path, |dir, p| {
            let time = cap_std::time::SystemTime::from_std(modified);
            dir.set_mtime(p, SystemTimeSpec::Absolute(time))
        })
    }

    fn sync_dir(&self, path: &Path) -> Result<()> {
        self.with("sync_dir", path, |dir, p| {
            // `open_dir` gives an `O_PATH` handle, which cannot be fsynced: open it for reading.
            let file = dir.open_with(p, OpenOptions::new().read(true).maybe_dir(true))?;
            if !file.metadata()?.is_dir() {
                return Err(io::Error::from(io::ErrorKind::NotADirectory));
            }
            file.sync_all()
        })
    }

    fn lock(&self, path: &Path) -> Result<Box<dyn LockGuard>> {
        let file = self.open_file(
            "lock",
            path,
            OpenOptions::new().read(true).write(true).create(true),
        )?;
        let file = file.into_std();
        // Blocking: `flock(LOCK_EX)` waits for the other holder (process or open handle).
        file.lock()
            .map_err(|source| FsError::io("lock", self.display_path(path), source))?;
        tracing::trace!(path = %self.display_path(path).display(), "locked");
        Ok(Box::new(FileLock { file }))
    }

    fn try_lock(&self, path: &Path) -> Result<Option<Box<dyn LockGuard>>> {
        let file = self.open_file(
            "try_lock",
            path,
            OpenOptions::new().read(true).write(true).create(true),
        )?;
        let file = file.into_std();
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(FileLock { file }))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => {
                Err(FsError::io("try_lock", self.display_path(path), source))
            }
        }
    }
}

/// Symlink targets are stored verbatim, but an empty or NUL-containing one cannot be.
pub(crate) fn check_symlink_target(target: &Path) -> Result<()> {
    let bytes = target.as_os_str().as_encoded_bytes();
    if bytes.is_empty() {
        return Err(FsError::InvalidPath {
            path: target.to_path_buf(),
            reason: "a symlink target cannot be empty",
        });
    }
    if bytes.contains(&0) {
        return Err(FsError::InvalidPath {
            path: target.to_path_buf(),
            reason: "a symlink target cannot contain a NUL byte",
        });
    }
    Ok(())
}

/// Hard links are made to regular files only.
pub(crate) fn check_hard_link_source(kind: FileKind) -> io::Result<()> {
    match kind {
        FileKind::File => Ok(()),
        FileKind::Symlink => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the source is a symlink: hard links are made to regular files only",
        )),
        FileKind::Dir => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "the source is a directory: hard links are made to regular files only",
        )),
        FileKind::Other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the source is a special file: hard links are made to regular files only",
        )),
    }
}
