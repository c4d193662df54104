//! [`MemFs`]: an in-memory tree with the semantics of [`crate::RealFs`].
//!
//! Path resolution mirrors `openat2(RESOLVE_BENEATH)`: symlinks are followed (at most
//! [`MAX_SYMLINK_HOPS`] of them, then `ELOOP`), an absolute target or a `..` that would climb
//! above the root fails with [`FsError::Escape`], exactly where the kernel would refuse.
//! Inodes are shared by hard links; errors carry the [`io::ErrorKind`] the kernel would give.
//!
//! Open files: a reader reads a snapshot of the content taken at `open` (later writes are not
//! seen by it); a writer writes through to the tree on every `write`, so its data is visible
//! to the next `open` at once, even before it is dropped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::real::{check_hard_link_source, check_symlink_target, refuse_root};
use crate::{DirEntry, Fs, FsError, FsPath, LockGuard, Metadata, ReadFile, Result, WriteFile};

mod tree;

use self::tree::{
    Lookup, Node, NodeData, ResolveError, Tree, already_exists, directory_not_empty, io_error,
    is_a_directory, not_a_directory, not_found, too_many_symlinks,
};

/// Symlinks followed while resolving one path before giving up with `ELOOP`, as Linux does.
pub const MAX_SYMLINK_HOPS: usize = 40;

/// The root directory's inode number.
const ROOT: u64 = 1;

/// Distinct device numbers per [`MemFs`], so `(dev, ino)` never collides across trees.
static NEXT_DEV: AtomicU64 = AtomicU64::new(1);

/// An in-memory filesystem. `Clone` shares the tree: clones see each other's changes.
#[derive(Clone)]
pub struct MemFs {
    inner: Arc<Inner>,
}

struct Inner {
    dev: u64,
    tree: Mutex<Tree>,
    /// Inodes currently locked by [`Fs::lock`].
    locks: Mutex<HashSet<u64>>,
    /// Signalled whenever a lock is released.
    unlocked: Condvar,
}

impl Default for MemFs {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemFs")
            .field("dev", &self.inner.dev)
            .finish_non_exhaustive()
    }
}

impl MemFs {
    /// An empty tree: just the root directory.
    pub fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                data: NodeData::Dir(BTreeMap::new()),
                mode: 0o755,
                mtime: SystemTime::now(),
                nlink: 1,
                open_writers: 0,
            },
        );
        Self {
            inner: Arc::new(Inner {
                dev: NEXT_DEV.fetch_add(1, Ordering::Relaxed),
                tree: Mutex::new(Tree {
                    nodes,
                    next_ino: ROOT + 1,
                }),
                locks: Mutex::new(HashSet::new()),
                unlocked: Condvar::new(),
            }),
        }
    }

    /// The tree, recovering from a poisoned lock: every mutation leaves it consistent.
    fn tree(&self) -> MutexGuard<'_, Tree> {
        self.inner
            .tree
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn io(&self, op: &'static str, path: &Path, source: io::Error) -> FsError {
        FsError::io(op, self.display_path(path), source)
    }

    fn resolve_error(&self, op: &'static str, path: &Path, error: ResolveError) -> FsError {
        match error {
            ResolveError::Escape => {
                tracing::warn!(op, path = %path.display(), "refused a path escaping the in-memory root");
                FsError::Escape {
                    op,
                    path: path.to_path_buf(),
                    root: PathBuf::from("mem:/"),
                }
            }
            ResolveError::Io(source) => self.io(op, path, source),
        }
    }

    /// Validates and resolves `path` under the held tree lock.
    fn lookup(
        &self,
        tree: &Tree,
        op: &'static str,
        path: &Path,
        follow_last: bool,
    ) -> Result<Lookup> {
        let valid = FsPath::new(path)?;
        tree.resolve(&valid, follow_last)
            .map_err(|error| self.resolve_error(op, path, error))
    }

    /// Resolves `path`, which must exist.
    fn existing(
        &self,
        tree: &Tree,
        op: &'static str,
        path: &Path,
        follow_last: bool,
    ) -> Result<(Vec<u64>, Option<OsString>, u64)> {
        match self.lookup(tree, op, path, follow_last)? {
            Lookup::Found { chain, name, ino } => Ok((chain, name, ino)),
            Lookup::Missing { .. } => Err(self.io(op, path, not_found())),
        }
    }

    /// Opens (creating if missing, truncating if asked) a file for writing.
    fn open_for_write(
        &self,
        op: &'static str,
        path: &Path,
        follow_last: bool,
        exclusive: bool,
        truncate: bool,
        writer: bool,
    ) -> Result<u64> {
        let mut tree = self.tree();
        let lookup = self.lookup(&tree, op, path, follow_last)?;
        let ino = match lookup {
            Lookup::Found { ino, .. } => {
                if exclusive {
                    return Err(self.io(op, path, already_exists()));
                }
                let node = tree.node_mut(ino).map_err(|e| self.io(op, path, e))?;
                match &mut node.data {
                    NodeData::File(data) => {
                        if truncate {
                            *data = Arc::new(Vec::new());
                            node.mtime = SystemTime::now();
                        }
                    }
                    NodeData::Dir(_) => return Err(self.io(op, path, is_a_directory())),
                    // Unreachable when following; create_new refused it above.
                    NodeData::Symlink(_) => return Err(self.io(op, path, already_exists())),
                }
                ino
            }
            Lookup::Missing { chain, name } => {
                let parent = chain.last().copied().unwrap_or(ROOT);
                tree.insert(parent, name, NodeData::File(Arc::new(Vec::new())), 0o644)
                    .map_err(|e| self.io(op, path, e))?
            }
        };
        if writer {
            tree.node_mut(ino)
                .map_err(|e| self.io(op, path, e))?
                .open_writers += 1;
        }
        Ok(ino)
    }

    fn writer(&self, path: &Path, ino: u64) -> Box<dyn WriteFile> {
        Box::new(MemWriter {
            fs: self.clone(),
            display: self.display_path(path),
            ino,
            pos: 0,
        })
    }

    /// `create_dir` under the held lock.
    fn create_dir_locked(&self, tree: &mut Tree, op: &'static str, path: &Path) -> Result<()> {
        match self.lookup(tree, op, path, false)? {
            Lookup::Found { .. } => Err(self.io(op, path, already_exists())),
            Lookup::Missing { chain, name } => {
                let parent = chain.last().copied().unwrap_or(ROOT);
                tree.insert(parent, name, NodeData::Dir(BTreeMap::new()), 0o755)
                    .map_err(|e| self.io(op, path, e))?;
                Ok(())
            }
        }
    }

    /// Whether `path` is a directory, following symlinks (errors count as "no").
    fn is_dir_locked(tree: &Tree, path: &FsPath) -> bool {
        matches!(
            tree.resolve(path, true),
            Ok(Lookup::Found { ino, .. }) if matches!(tree.nodes.get(&ino).map(|n| &n.data), Some(NodeData::Dir(_)))
        )
    }

    /// The algorithm of `std`/cap-std `create_dir_all`, so errors match.
    fn create_dir_all_locked(&self, tree: &mut Tree, path: &FsPath, given: &Path) -> Result<()> {
        if path.is_root() {
            return Ok(());
        }
        match self.create_dir_locked(tree, "create_dir_all", path.as_path()) {
            Ok(()) => return Ok(()),
            Err(error) if error.is_not_found() => {}
            Err(_) if Self::is_dir_locked(tree, path) => return Ok(()),
            // As RealFs: a symlink that may not be followed is reported as an escape.
            Err(error) if error.is_already_exists() => {
                if let Err(ResolveError::Escape) = tree.resolve(path, true) {
                    return Err(self.resolve_error("create_dir_all", given, ResolveError::Escape));
                }
                return Err(self.rename_error_path(error, given));
            }
            Err(error) => return Err(self.rename_error_path(error, given)),
        }
        if let Some(parent) = path.parent() {
            self.create_dir_all_locked(tree, &parent, given)?;
        }
        match self.create_dir_locked(tree, "create_dir_all", path.as_path()) {
            Ok(()) => Ok(()),
            Err(_) if Self::is_dir_locked(tree, path) => Ok(()),
            Err(error) => Err(self.rename_error_path(error, given)),
        }
    }

    /// Reports an error of a sub-step against the path the caller gave.
    fn rename_error_path(&self, error: FsError, given: &Path) -> FsError {
        match error {
            FsError::Escape { op, root, .. } => FsError::Escape {
                op,
                path: given.to_path_buf(),
                root,
            },
            FsError::Io { op, source, .. } => self.io(op, given, source),
            other => other,
        }
    }
}

/// A reader's snapshot of a file's content.
struct Snapshot(Arc<Vec<u8>>);

impl AsRef<[u8]> for Snapshot {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A file open for writing: every write lands in the tree at once.
struct MemWriter {
    fs: MemFs,
    display: PathBuf,
    ino: u64,
    pos: usize,
}

impl Write for MemWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut tree = self.fs.tree();
        let node = tree.node_mut(self.ino)?;
        let NodeData::File(data) = &mut node.data else {
            return Err(is_a_directory());
        };
        // Copies only when a reader still holds a snapshot.
        let data = Arc::make_mut(data);
        let end = self.pos.checked_add(buf.len()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the maximum file size",
            )
        })?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[self.pos..end].copy_from_slice(buf);
        self.pos = end;
        node.mtime = SystemTime::now();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteFile for MemWriter {
    fn sync_all(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        let mut tree = self.fs.tree();
        let node = tree.node_mut(self.ino)?;
        let NodeData::File(data) = &mut node.data else {
            return Err(is_a_directory());
        };
        Arc::make_mut(data).resize(len, 0);
        self.pos = len;
        node.mtime = SystemTime::now();
        Ok(())
    }
}

impl Drop for MemWriter {
    fn drop(&mut self) {
        let mut tree = self.fs.tree();
        let Some(node) = tree.nodes.get_mut(&self.ino) else {
            tracing::warn!(path = %self.display.display(), "an open in-memory file lost its inode");
            return;
        };
        node.open_writers = node.open_writers.saturating_sub(1);
        if node.nlink == 0 && node.open_writers == 0 {
            tree.nodes.remove(&self.ino);
        }
    }
}

/// Holds an in-process lock on one inode.
struct MemLock {
    inner: Arc<Inner>,
    ino: u64,
}

impl LockGuard for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        locks.remove(&self.ino);
        self.inner.unlocked.notify_all();
    }
}

impl Fs for MemFs {
    fn display_path(&self, path: &Path) -> PathBuf {
        match FsPath::new(path) {
            Ok(valid) if valid.is_root() => PathBuf::from("mem:/"),
            Ok(valid) => PathBuf::from(format!("mem:/{}", valid.as_path().display())),
            Err(_) => path.to_path_buf(),
        }
    }

    fn open(&self, path: &Path) -> Result<Box<dyn ReadFile>> {
        let tree = self.tree();
        let (_, _, ino) = self.existing(&tree, "open", path, true)?;
        match &tree.node(ino).map_err(|e| self.io("open", path, e))?.data {
            NodeData::File(data) => Ok(Box::new(Cursor::new(Snapshot(Arc::clone(data))))),
            NodeData::Dir(_) => Err(self.io("open", path, is_a_directory())),
            NodeData::Symlink(_) => Err(self.io("open", path, too_many_symlinks())),
        }
    }

    fn create(&self, path: &Path) -> Result<Box<dyn WriteFile>> {
        let ino = self.open_for_write("create", path, true, false, true, true)?;
        Ok(self.writer(path, ino))
    }

    fn create_new(&self, path: &Path) -> Result<Box<dyn WriteFile>> {
        let ino = self.open_for_write("create_new", path, false, true, true, true)?;
        Ok(self.writer(path, ino))
    }

    fn create_dir(&self, path: &Path) -> Result<()> {
        let mut tree = self.tree();
        self.create_dir_locked(&mut tree, "create_dir", path)
    }

    fn create_dir_all(&self, path: &Path) -> Result<()> {
        let valid = FsPath::new(path)?;
        let mut tree = self.tree();
        self.create_dir_all_locked(&mut tree, &valid, path)
    }

    fn read_dir(&self, path: &Path) -> Result<Vec<DirEntry>> {
        let tree = self.tree();
        let (_, _, ino) = self.existing(&tree, "read_dir", path, true)?;
        let entries = tree
            .dir_entries(ino)
            .map_err(|e| self.io("read_dir", path, e))?;
        entries
            .iter()
            .map(|(name, child)| {
                let kind = tree
                    .node(*child)
                    .map_err(|e| self.io("read_dir", path, e))?
                    .data
                    .kind();
                Ok(DirEntry {
                    name: name.clone(),
                    kind,
                })
            })
            .collect()
    }

    fn metadata(&self, path: &Path) -> Result<Metadata> {
        let tree = self.tree();
        let (_, _, ino) = self.existing(&tree, "metadata", path, true)?;
        tree.metadata(self.inner.dev, ino)
            .map_err(|e| self.io("metadata", path, e))
    }

    fn symlink_metadata(&self, path: &Path) -> Result<Metadata> {
        let tree = self.tree();
        let (_, _, ino) = self.existing(&tree, "symlink_metadata", path, false)?;
        tree.metadata(self.inner.dev, ino)
            .map_err(|e| self.io("symlink_metadata", path, e))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        check_symlink_target(target)?;
        refuse_root(&FsPath::new(link)?, link)?;
        let mut tree = self.tree();
        match self.lookup(&tree, "symlink", link, false)? {
            Lookup::Found { .. } => Err(self.io("symlink", link, already_exists())),
            Lookup::Missing { chain, name } => {
                let parent = chain.last().copied().unwrap_or(ROOT);
                tree.insert(parent, name, NodeData::Symlink(target.to_path_buf()), 0o777)
                    .map_err(|e| self.io("symlink", link, e))?;
                Ok(())
            }
        }
    }

    fn read_link(&self, path: &Path) -> Result<PathBuf> {
        let tree = self.tree();
        let (_, _, ino) = self.existing(&tree, "read_link", path, false)?;
        match &tree
            .node(ino)
            .map_err(|e| self.io("read_link", path, e))?
            .data
        {
            NodeData::Symlink(target) => Ok(target.clone()),
            _ => Err(self.io(
                "read_link",
                path,
                io_error(io::ErrorKind::InvalidInput, "not a symlink"),
            )),
        }
    }

    fn hard_link(&self, src: &Path, dst: &Path) -> Result<()> {
        refuse_root(&FsPath::new(src)?, src)?;
        refuse_root(&FsPath::new(dst)?, dst)?;
        let mut tree = self.tree();
        let (_, _, ino) = self.existing(&tree, "symlink_metadata", src, false)?;
        let kind = tree
            .node(ino)
            .map_err(|e| self.io("hard_link", src, e))?
            .data
            .kind();
        check_hard_link_source(kind).map_err(|e| self.io("hard_link", src, e))?;
        match self.lookup(&tree, "hard_link", dst, false)? {
            Lookup::Found { .. } => Err(self.io("hard_link", dst, already_exists())),
            Lookup::Missing { chain, name } => {
                let parent = chain.last().copied().unwrap_or(ROOT);
                tree.link(parent, name, ino)
                    .map_err(|e| self.io("hard_link", dst, e))?;
                tree.node_mut(ino)
                    .map_err(|e| self.io("hard_link", dst, e))?
                    .nlink += 1;
                Ok(())
            }
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        refuse_root(&FsPath::new(from)?, from)?;
        refuse_root(&FsPath::new(to)?, to)?;
        let mut tree = self.tree();
        let (from_chain, from_name, from_ino) = self.existing(&tree, "rename", from, false)?;
        let from_parent = from_chain.last().copied().unwrap_or(ROOT);
        let to_lookup = self.lookup(&tree, "rename", to, false)?;
        let from_is_dir = matches!(
            tree.node(from_ino)
                .map_err(|e| self.io("rename", from, e))?
                .data,
            NodeData::Dir(_)
        );
        let (to_chain, to_name, replaced) = match to_lookup {
            Lookup::Found { chain, name, ino } => {
                if ino == from_ino {
                    // POSIX: renaming onto the same inode (itself or a hard link) does nothing.
                    return Ok(());
                }
                let replaced = tree.node(ino).map_err(|e| self.io("rename", to, e))?;
                match (&replaced.data, from_is_dir) {
                    (NodeData::Dir(entries), true) if !entries.is_empty() => {
                        return Err(self.io("rename", from, directory_not_empty()));
                    }
                    (NodeData::Dir(_), true) => {}
                    (_, true) => return Err(self.io("rename", from, not_a_directory())),
                    (NodeData::Dir(_), false) => {
                        return Err(self.io("rename", from, is_a_directory()));
                    }
                    (_, false) => {}
                }
                (chain, name, true)
            }
            Lookup::Missing { chain, name } => (chain, Some(name), false),
        };
        let (Some(from_name), Some(to_name)) = (from_name, to_name) else {
            return Err(self.io(
                "rename",
                from,
                io_error(io::ErrorKind::InvalidInput, "cannot rename the root"),
            ));
        };
        if from_is_dir && to_chain.contains(&from_ino) {
            return Err(self.io(
                "rename",
                from,
                io_error(
                    io::ErrorKind::InvalidInput,
                    "cannot move a directory into itself",
                ),
            ));
        }
        let to_parent = to_chain.last().copied().unwrap_or(ROOT);
        if replaced {
            tree.unlink(to_parent, &to_name)
                .map_err(|e| self.io("rename", to, e))?;
        }
        // Moving the entry keeps its link count: take it out of the old parent by hand.
        let from_parent_node = tree
            .node_mut(from_parent)
            .map_err(|e| self.io("rename", from, e))?;
        from_parent_node.mtime = SystemTime::now();
        if let NodeData::Dir(entries) = &mut from_parent_node.data {
            entries.remove(&from_name);
        }
        tree.link(to_parent, to_name, from_ino)
            .map_err(|e| self.io("rename", to, e))
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        refuse_root(&FsPath::new(path)?, path)?;
        let mut tree = self.tree();
        let lookup = self.lookup(&tree, "remove_file", path, false)?;
        let Lookup::Found {
            name: Some(name),
            ino,
            ..
        } = &lookup
        else {
            return Err(self.io("remove_file", path, not_found()));
        };
        if matches!(
            tree.node(*ino)
                .map_err(|e| self.io("remove_file", path, e))?
                .data,
            NodeData::Dir(_)
        ) {
            return Err(self.io("remove_file", path, is_a_directory()));
        }
        tree.unlink(lookup.parent(), name)
            .map_err(|e| self.io("remove_file", path, e))
    }

    fn remove_dir(&self, path: &Path) -> Result<()> {
        refuse_root(&FsPath::new(path)?, path)?;
        let mut tree = self.tree();
        let lookup = self.lookup(&tree, "remove_dir", path, false)?;
        let Lookup::Found {
            name: Some(name),
            ino,
            ..
        } = &lookup
        else {
            return Err(self.io("remove_dir", path, not_found()));
        };
        match &tree
            .node(*ino)
            .map_err(|e| self.io("remove_dir", path, e))?
            .data
        {
            NodeData::Dir(entries) if !entries.is_empty() => {
                return Err(self.io("remove_dir", path, directory_not_empty()));
            }
            NodeData::Dir(_) => {}
            _ => return Err(self.io("remove_dir", path, not_a_directory())),
        }
        tree.unlink(lookup.parent(), name)
            .map_err(|e| self.io("remove_dir", path, e))
    }

    fn remove_dir_all(&self, path: &Path) -> Result<()> {
        refuse_root(&FsPath::new(path)?, path)?;
        let mut tree = self.tree();
        let lookup = self.lookup(&tree, "remove_dir_all", path, false)?;
        let Lookup::Found {
            name: Some(name),
            ino,
            ..
        } = &lookup
        else {
            return Err(self.io("remove_dir_all", path, not_found()));
        };
        // As cap-std: a symlink is removed itself, a file is not a directory.
        if let NodeData::File(_) = tree
            .node(*ino)
            .map_err(|e| self.io("remove_dir_all", path, e))?
            .data
        {
            return Err(self.io("remove_dir_all", path, not_a_directory()));
        }
        tree.unlink(lookup.parent(), name)
            .map_err(|e| self.io("remove_dir_all", path, e))
    }

    fn set_permissions(&self, path: &Path, mode: u32) -> Result<()> {
        let mut tree = self.tree();
        let (_, _, ino) = self.existing(&tree, "set_permissions", path, true)?;
        tree.node_mut(ino)
            .map_err(|e| self.io("set_permissions", path, e))?
            .mode = mode & 0o7777;
        Ok(())
    }

    fn set_modified(&self, path: &Path, modified: SystemTime) -> Result<()> {
        let mut tree = self.tree();
        let (_, _, ino) = self.existing(&tree, "set_modified", path, true)?;
        tree.node_mut(ino)
            .map_err(|e| self.io("set_modified", path, e))?
            .mtime = modified;
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> Result<()> {
        let tree = self.tree();
        let (_, _, ino) = self.existing(&tree, "sync_dir", path, true)?;
        tree.dir_entries(ino)
            .map(|_| ())
            .map_err(|e| self.io("sync_dir", path, e))
    }

    fn lock(&self, path: &Path) -> Result<Box<dyn LockGuard>> {
        // Not a writer: the lock only needs the inode number.
        let ino = self.open_for_write("lock", path, true, false, false, false)?;
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while locks.contains(&ino) {
            locks = self
                .inner
                .unlocked
                .wait(locks)
                .unwrap_or_else(PoisonError::into_inner);
        }
        locks.insert(ino);
        Ok(Box::new(MemLock {
            inner: Arc::clone(&self.inner),
            ino,
        }))
    }

    fn try_lock(&self, path: &Path) -> Result<Option<Box<dyn LockGuard>>> {
        let ino = self.open_for_write("try_lock", path, true, false, false, false)?;
        let mut locks = self
            .inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !locks.insert(ino) {
            return Ok(None);
        }
        Ok(Some(Box::new(MemLock {
            inner: Arc::clone(&self.inner),
            ino,
        })))
    }
}
