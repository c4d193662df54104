//! The inode table of a [`MemFs`](super::MemFs) and path resolution over it (symlinks
//! followed beneath the root, as `openat2(RESOLVE_BENEATH)` does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::path::{Component, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::{FileKind, FsPath, Metadata, Result};

use super::{MAX_SYMLINK_HOPS, ROOT};

pub(super) struct Tree {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) next_ino: u64,
}

pub(super) struct Node {
    pub(super) data: NodeData,
    pub(super) mode: u32,
    pub(super) mtime: SystemTime,
    /// Directory entries naming this inode (always 1 for directories: see `metadata`).
    pub(super) nlink: u64,
    /// Open writers: an unlinked file lives on until the last one is dropped, as on POSIX.
    pub(super) open_writers: u64,
}

pub(super) enum NodeData {
    /// Shared with reader snapshots; writers copy on write when a snapshot is alive.
    File(Arc<Vec<u8>>),
    Dir(BTreeMap<OsString, u64>),
    Symlink(PathBuf),
}

impl NodeData {
    pub(super) fn kind(&self) -> FileKind {
        match self {
            Self::File(_) => FileKind::File,
            Self::Dir(_) => FileKind::Dir,
            Self::Symlink(_) => FileKind::Symlink,
        }
    }
}

/// Where a path led.
pub(super) enum Lookup {
    /// An existing entry. `chain` lists the directories from the root to its parent.
    Found {
        chain: Vec<u64>,
        name: Option<OsString>,
        ino: u64,
    },
    /// Nothing at the last component; the parent directory exists.
    Missing { chain: Vec<u64>, name: OsString },
}

impl Lookup {
    pub(super) fn parent(&self) -> u64 {
        let chain = match self {
            Self::Found { chain, .. } | Self::Missing { chain, .. } => chain,
        };
        chain.last().copied().unwrap_or(ROOT)
    }
}

/// Why a path could not be resolved.
pub(super) enum ResolveError {
    Escape,
    Io(io::Error),
}

pub(super) fn io_error(kind: io::ErrorKind, message: &'static str) -> io::Error {
    io::Error::new(kind, message)
}

pub(super) fn not_found() -> io::Error {
    io_error(io::ErrorKind::NotFound, "no such file or directory")
}

pub(super) fn not_a_directory() -> io::Error {
    io_error(io::ErrorKind::NotADirectory, "not a directory")
}

pub(super) fn is_a_directory() -> io::Error {
    io_error(io::ErrorKind::IsADirectory, "is a directory")
}

pub(super) fn already_exists() -> io::Error {
    io_error(io::ErrorKind::AlreadyExists, "file exists")
}

pub(super) fn directory_not_empty() -> io::Error {
    io_error(io::ErrorKind::DirectoryNotEmpty, "directory not empty")
}

/// `ELOOP`, built from the errno so its kind matches the real one (the `ErrorKind` for it is
/// not stable yet).
pub(super) fn too_many_symlinks() -> io::Error {
    #[cfg(target_os = "linux")]
    {
        io::Error::from_raw_os_error(40)
    }
    #[cfg(not(target_os = "linux"))]
    {
        io::Error::other("too many levels of symbolic links")
    }
}

impl Tree {
    pub(super) fn node(&self, ino: u64) -> io::Result<&Node> {
        // Every inode named by a directory entry or an open writer is in the table.
        self.nodes.get(&ino).ok_or_else(not_found)
    }

    pub(super) fn node_mut(&mut self, ino: u64) -> io::Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or_else(not_found)
    }

    pub(super) fn dir_entries(&self, ino: u64) -> io::Result<&BTreeMap<OsString, u64>> {
        match &self.node(ino)?.data {
            NodeData::Dir(entries) => Ok(entries),
            _ => Err(not_a_directory()),
        }
    }

    /// Resolves `path` like `openat2(RESOLVE_BENEATH)`; the last component's symlink is
    /// followed only when `follow_last`.
    pub(super) fn resolve(&self, path: &FsPath, follow_last: bool) -> Result<Lookup, ResolveError> {
        enum Step {
            Name(OsString),
            Parent,
        }
        // The directories walked so far with the names they were reached by; the current
        // directory is the last one.
        let mut stack: Vec<(u64, Option<OsString>)> = vec![(ROOT, None)];
        let mut queue: VecDeque<Step> = path
            .as_path()
            .components()
            .filter_map(|component| match component {
                Component::Normal(part) => Some(Step::Name(part.to_os_string())),
                // `FsPath` holds nothing else but the `.` of the root.
                _ => None,
            })
            .collect();
        let mut hops = 0;
        // A non-directory found on the way: only valid as the last component.
        let mut leaf: Option<(u64, OsString)> = None;
        while let Some(step) = queue.pop_front() {
            if leaf.is_some() {
                return Err(ResolveError::Io(not_a_directory()));
            }
            let current = stack.last().map_or(ROOT, |(ino, _)| *ino);
            match step {
                Step::Parent => {
                    if stack.len() == 1 {
                        return Err(ResolveError::Escape);
                    }
                    stack.pop();
                }
                Step::Name(part) => {
                    let entries = self.dir_entries(current).map_err(ResolveError::Io)?;
                    let is_last = queue.is_empty();
                    let Some(&ino) = entries.get(&part) else {
                        if is_last {
                            let chain = stack.into_iter().map(|(ino, _)| ino).collect();
                            return Ok(Lookup::Missing { chain, name: part });
                        }
                        return Err(ResolveError::Io(not_found()));
                    };
                    match &self.node(ino).map_err(ResolveError::Io)?.data {
                        NodeData::Symlink(target) if !is_last || follow_last => {
                            hops += 1;
                            if hops > MAX_SYMLINK_HOPS {
                                return Err(ResolveError::Io(too_many_symlinks()));
                            }
                            for component in target.components().rev() {
                                match component {
                                    Component::Normal(part) => {
                                        queue.push_front(Step::Name(part.to_os_string()));
                                    }
                                    Component::ParentDir => queue.push_front(Step::Parent),
                                    Component::CurDir => {}
                                    // RESOLVE_BENEATH refuses absolute targets outright.
                                    Component::RootDir | Component::Prefix(_) => {
                                        return Err(ResolveError::Escape);
                                    }
                                }
                            }
                        }
                        NodeData::Dir(_) => stack.push((ino, Some(part))),
                        NodeData::File(_) | NodeData::Symlink(_) => leaf = Some((ino, part)),
                    }
                }
            }
        }
        let (ino, name) = match leaf {
            Some((ino, name)) => (ino, Some(name)),
            // The path ends at a directory (the root itself when the stack is just it).
            None => stack.pop().unwrap_or((ROOT, None)),
        };
        let chain = stack.into_iter().map(|(ino, _)| ino).collect();
        Ok(Lookup::Found { chain, name, ino })
    }

    pub(super) fn alloc(&mut self, data: NodeData, mode: u32) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                data,
                mode,
                mtime: SystemTime::now(),
                nlink: 1,
                open_writers: 0,
            },
        );
        ino
    }

    /// Adds an entry `name -> ino` to directory `parent`.
    pub(super) fn link(&mut self, parent: u64, name: OsString, ino: u64) -> io::Result<()> {
        let parent_node = self.node_mut(parent)?;
        parent_node.mtime = SystemTime::now();
        match &mut parent_node.data {
            NodeData::Dir(entries) => {
                entries.insert(name, ino);
                Ok(())
            }
            _ => Err(not_a_directory()),
        }
    }

    /// Creates a node and its entry.
    pub(super) fn insert(
        &mut self,
        parent: u64,
        name: OsString,
        data: NodeData,
        mode: u32,
    ) -> io::Result<u64> {
        let ino = self.alloc(data, mode);
        if let Err(error) = self.link(parent, name, ino) {
            self.nodes.remove(&ino);
            return Err(error);
        }
        Ok(ino)
    }

    /// Removes the entry `name` of `parent`; the inode goes when nothing names or holds it.
    /// A directory's subtree goes with it.
    pub(super) fn unlink(&mut self, parent: u64, name: &OsString) -> io::Result<()> {
        let parent_node = self.node_mut(parent)?;
        parent_node.mtime = SystemTime::now();
        let ino = match &mut parent_node.data {
            NodeData::Dir(entries) => entries.remove(name).ok_or_else(not_found)?,
            _ => return Err(not_a_directory()),
        };
        self.release(ino);
        Ok(())
    }

    /// Drops one link to `ino`, freeing it (and a directory's content) when it was the last.
    pub(super) fn release(&mut self, ino: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.nlink = node.nlink.saturating_sub(1);
        if node.nlink > 0 || node.open_writers > 0 {
            return;
        }
        if let Some(Node {
            data: NodeData::Dir(entries),
            ..
        }) = self.nodes.remove(&ino)
        {
            for child in entries.into_values() {
                self.release(child);
            }
        }
    }

    pub(super) fn metadata(&self, dev: u64, ino: u64) -> io::Result<Metadata> {
        let node = self.node(ino)?;
        let (len, nlink) = match &node.data {
            NodeData::File(data) => (data.len() as u64, node.nlink),
            // As on Linux: `.`, the parent's entry and each subdirectory's `..`.
            NodeData::Dir(entries) => {
                let subdirs = entries
                    .values()
                    .filter(|child| {
                        self.nodes
                            .get(child)
                            .is_some_and(|n| matches!(n.data, NodeData::Dir(_)))
                    })
                    .count() as u64;
                (0, 2 + subdirs)
            }
            NodeData::Symlink(target) => (
                target.as_os_str().as_encoded_bytes().len() as u64,
                node.nlink,
            ),
        };
        Ok(Metadata {
            kind: node.data.kind(),
            len,
            mode: node.mode,
            modified: Some(node.mtime),
            dev,
            ino,
            nlink,
            uid: 0,
            gid: 0,
        })
    }
}
