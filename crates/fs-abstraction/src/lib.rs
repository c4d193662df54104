//! Every file operation of sealer goes through an [`Fs`]: a handle rooted at one directory that
//! no path, `..`, symlink, hard link, rename or tar entry can reach outside of.
//!
//! * [`RealFs`] is the disk, confined by cap-std (`openat2` with `RESOLVE_BENEATH` on Linux).
//! * [`MemFs`] is an in-memory tree with the same semantics, symlinks included, for tests.
//! * [`tar`] packs a tree into a reproducible tar and unpacks one entry by entry, applying OCI
//!   whiteouts, through an [`Fs`].
//! * The `conformance` module (tests, or feature `conformance`) is one suite of cases run
//!   on both backends, escape attempts included, so they cannot drift apart.
//!
//! Paths given to an [`Fs`] are relative to its root and validated by [`FsPath::new`]: empty,
//! absolute, `..` and NUL-containing paths are refused before anything is touched. Symlinks
//! are followed only inside the root, with the rules of `openat2(RESOLVE_BENEATH)`: following
//! an absolute target, or a `..` that climbs above the root, fails with [`FsError::Escape`]
//! and never reaches the host. Symlink targets are still stored verbatim (absolute ones
//! included), so a tree can be packed and unpacked faithfully.

#![deny(missing_docs)]

mod atomic;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
mod mem;
mod path;
mod real;
mod stream;
pub mod tar;
mod temp;
mod write_behind;

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use atomic::{AtomicFile, TEMP_PREFIX};
pub use error::{ErrorChain, FsError, error_chain};
pub use mem::MemFs;
pub use path::FsPath;
pub use real::RealFs;
pub use stream::{InputSource, OutputTarget, OutputWriter, STDIO_NAME};
pub use temp::TempRoot;
pub use write_behind::{WRITE_BEHIND_CHUNK, WriteBehind};

/// Result of file operations.
pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// A readable, seekable open file.
pub trait ReadFile: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadFile for T {}

/// A writable open file.
pub trait WriteFile: Write + Send {
    /// Flushes data and metadata to stable storage (`fsync`).
    fn sync_all(&mut self) -> std::io::Result<()>;

    /// Asks for `len` bytes from `offset`, already written, to go to stable storage in the
    /// background, without waiting: a later [`WriteFile::sync_all`] then has little left to
    /// do. Only a hint: it guarantees nothing about durability, and the default does nothing
    /// (there is no storage behind [`MemFs`]). [`WriteBehind`] calls it as a file grows.
    fn start_writeback(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Cuts the file to its first `len` bytes and moves the write position to `len`: what
    /// undoes a failed append. The default refuses (`Unsupported`).
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        let _ = len;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this file cannot be truncated",
        ))
    }
}

/// What a directory entry is. Symlinks are never followed when this is reported by
/// [`Fs::symlink_metadata`], [`Fs::read_dir`] or [`Fs::walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device node, FIFO or socket.
    Other,
}

/// The metadata of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The kind of file.
    pub kind: FileKind,
    /// Size in bytes (for symlinks, the length of the target).
    pub len: u64,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Last modification time, when known.
    pub modified: Option<SystemTime>,
    /// Device number: with `ino`, identifies hard links.
    pub dev: u64,
    /// Inode number: with `dev`, identifies hard links.
    pub ino: u64,
    /// Number of hard links.
    pub nlink: u64,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
}

/// One entry of [`Fs::read_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's file name (one component).
    pub name: std::ffi::OsString,
    /// What the entry is; symlinks are not followed.
    pub kind: FileKind,
}

/// One entry of [`Fs::walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkEntry {
    /// Path relative to the [`Fs`] root.
    pub path: PathBuf,
    /// Metadata, symlinks not followed.
    pub metadata: Metadata,
}

/// An exclusive advisory lock, released when dropped.
pub trait LockGuard: Send {}

/// A filesystem rooted at one directory. Object safe: use it as `&dyn Fs` / `Arc<dyn Fs>`.
///
/// Every method validates its paths with [`FsPath::new`] and resolves them inside the root;
/// symlinks met while resolving are followed only when they stay inside the root (following
/// an absolute target, or a `..` above the root, fails with [`FsError::Escape`]). An
/// operation that would touch anything outside fails with an error and changes nothing.
/// `.` names the root; the root itself cannot be removed, renamed or linked
/// ([`FsError::InvalidPath`]).
pub trait Fs: Send + Sync + std::fmt::Debug {
    /// How `path` should be shown to a user in messages (the real path for [`RealFs`]).
    fn display_path(&self, path: &Path) -> PathBuf;

    /// Opens a file for reading (symlinks followed inside the root).
    fn open(&self, path: &Path) -> Result<Box<dyn ReadFile>>;

    /// Creates a file, truncating an existing one, and opens it for writing. The parent
    /// directory must exist.
    fn create(&self, path: &Path) -> Result<Box<dyn WriteFile>>;

    /// Creates a new file and opens it for writing; fails if anything exists at `path`.
    fn create_new(&self, path: &Path) -> Result<Box<dyn WriteFile>>;

    /// Creates one directory; its parent must exist.
    fn create_dir(&self, path: &Path) -> Result<()>;

    /// Creates a directory and every missing parent. Succeeds if it already exists.
    fn create_dir_all(&self, path: &Path) -> Result<()>;

    /// The entries of a directory, sorted by name, without `.` and `..`.
    fn read_dir(&self, path: &Path) -> Result<Vec<DirEntry>>;

    /// Metadata, following symlinks inside the root.
    fn metadata(&self, path: &Path) -> Result<Metadata>;

    /// Metadata of the entry itself (a symlink is reported as a symlink).
    fn symlink_metadata(&self, path: &Path) -> Result<Metadata>;

    /// Creates a symlink at `link` whose target is stored verbatim (it may be absolute or
    /// contain `..`: following it later is confined to the root all the same).
    fn symlink(&self, target: &Path, link: &Path) -> Result<()>;

    /// The verbatim target of a symlink.
    fn read_link(&self, path: &Path) -> Result<PathBuf>;

    /// Creates `dst` as a hard link to `src`; `src` must be a regular file inside the root
    /// (a symlink at `src` is not followed).
    fn hard_link(&self, src: &Path, dst: &Path) -> Result<()>;

    /// Renames `from` to `to`, replacing a file at `to`. Both stay inside the root.
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;

    /// Removes a file or symlink (never what a symlink points to).
    fn remove_file(&self, path: &Path) -> Result<()>;

    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> Result<()>;

    /// Removes a directory and everything below it, never following symlinks.
    fn remove_dir_all(&self, path: &Path) -> Result<()>;

    /// Sets the permission bits (`0o7777` mask) of a file or directory.
    fn set_permissions(&self, path: &Path, mode: u32) -> Result<()>;

    /// Sets the modification time of a file or directory (symlinks followed inside the root).
    fn set_modified(&self, path: &Path, modified: SystemTime) -> Result<()>;

    /// Flushes a directory's entries to stable storage (after a rename or create).
    fn sync_dir(&self, path: &Path) -> Result<()>;

    /// Takes an exclusive advisory lock on the file at `path` (created if missing), blocking
    /// until it is free. It excludes other processes too for [`RealFs`].
    fn lock(&self, path: &Path) -> Result<Box<dyn LockGuard>>;

    /// Like [`Fs::lock`] but returns `None` at once when another holder has the lock (used
    /// to tell a crashed writer's leftovers from a live writer's).
    fn try_lock(&self, path: &Path) -> Result<Option<Box<dyn LockGuard>>>;

    /// Reads a whole file.
    fn read(&self, path: &Path) -> Result<Vec<u8>> {
        let mut file = self.open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)
            .map_err(|source| FsError::io("read", self.display_path(path), source))?;
        Ok(data)
    }

    /// Whether anything (a dangling symlink included) exists at `path`.
    fn exists(&self, path: &Path) -> Result<bool> {
        match self.symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Writes `data` to `path` atomically: a temporary file in the same directory is written,
    /// fsynced and renamed over `path`, and the directory is synced. Readers see the old or the
    /// new content, never a mix, even after a crash.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<()> {
        let mut file = AtomicFile::create(self, path)?;
        file.write_all(data)
            .map_err(|source| FsError::io("write", self.display_path(path), source))?;
        file.commit()
    }

    /// Every entry below `path` (not `path` itself), depth first, sorted by name, symlinks
    /// not followed. Paths are relative to the root.
    fn walk(&self, path: &Path) -> Result<Vec<WalkEntry>> {
        let start = FsPath::new(path)?;
        let mut out = Vec::new();
        // A stack whose top is the next entry in depth-first name order.
        let mut pending = Vec::new();
        push_children(self, &start, &mut pending)?;
        while let Some(entry) = pending.pop() {
            let subdir = (entry.metadata.kind == FileKind::Dir).then(|| entry.path.clone());
            out.push(entry);
            if let Some(subdir) = subdir {
                push_children(self, &FsPath::new(&subdir)?, &mut pending)?;
            }
        }
        Ok(out)
    }
}

/// Pushes the entries of `dir` onto `pending` so that the first by name is on top.
fn push_children<F: Fs + ?Sized>(fs: &F, dir: &FsPath, pending: &mut Vec<WalkEntry>) -> Result<()> {
    let entries = fs.read_dir(dir.as_path())?;
    for entry in entries.into_iter().rev() {
        let path = dir.join(Path::new(&entry.name))?;
        let metadata = fs.symlink_metadata(path.as_path())?;
        pending.push(WalkEntry {
            path: path.as_path().to_path_buf(),
            metadata,
        });
    }
    Ok(())
}
