//! Packing: [`pack`] and [`TarWriter`] (reproducible headers, GNU long names, streamed
//! entries).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tar::{EntryType, Header};

use crate::{FileKind, Fs, FsError, FsPath, Metadata};

use super::{PackOptions, TarError};

/// Writes a reproducible tar of the tree under `dir` (not `dir` itself: entry names are
/// relative to it) to `out`, and returns `out`.
pub fn pack<W: Write>(
    fs: &dyn Fs,
    dir: &Path,
    out: W,
    options: &PackOptions,
) -> Result<W, TarError> {
    let mut writer = TarWriter::new(out, options.clone());
    writer.append_tree(fs, dir)?;
    writer.finish()
}

/// A tar stream being written: whole trees from an [`Fs`], single in-memory entries and
/// entries the caller streams itself. Dropped without [`TarWriter::finish`] (a failure part
/// way), it writes nothing more: no end-of-archive blocks make a cut stream look complete.
pub struct TarWriter<W: Write> {
    builder: tar::Builder<Gate<W>>,
    options: PackOptions,
    /// First archive path of every multiply-linked file, by `(dev, ino)`.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> TarWriter<W> {
    /// Starts a tar stream on `out`.
    pub fn new(out: W, options: PackOptions) -> Self {
        Self {
            builder: tar::Builder::new(Gate(Some(out))),
            options,
            links: HashMap::new(),
        }
    }

    /// Appends every entry below `dir`, named relative to `dir`, in [`Fs::walk`] order.
    pub fn append_tree(&mut self, fs: &dyn Fs, dir: &Path) -> Result<(), TarError> {
        let base = FsPath::new(dir)?;
        for entry in fs.walk(base.as_path())? {
            let name = if base.is_root() {
                entry.path.clone()
            } else {
                entry
                    .path
                    .strip_prefix(base.as_path())
                    .map(Path::to_path_buf)
                    .map_err(|_| {
                        TarError::io(
                            format!("packing {}", fs.display_path(&entry.path).display()),
                            io::Error::other("walk gave a path outside the packed directory"),
                        )
                    })?
            };
            self.append_fs_entry(fs, &entry.path, &name, &entry.metadata)?;
        }
        Ok(())
    }

    /// Appends one entry of `fs` (at `path`) under the archive name `name`.
    fn append_fs_entry(
        &mut self,
        fs: &dyn Fs,
        path: &Path,
        name: &Path,
        meta: &Metadata,
    ) -> Result<(), TarError> {
        let context = || format!("packing {}", fs.display_path(path).display());
        let mtime = meta
            .modified
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let mut header = self.header(meta.mode, mtime, (u64::from(meta.uid), u64::from(meta.gid)));
        match meta.kind {
            FileKind::Dir => {
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                self.builder
                    .append_data(&mut header, dir_name(name), io::empty())
                    .map_err(|e| TarError::io(context(), e))?;
            }
            FileKind::Symlink => {
                let target = fs.read_link(path)?;
                header.set_entry_type(EntryType::Symlink);
                header.set_size(0);
                self.builder
                    .append_link(&mut header, name, &target)
                    .map_err(|e| TarError::io(context(), e))?;
            }
            FileKind::File => {
                if meta.nlink > 1 {
                    let key = (meta.dev, meta.ino);
                    if let Some(first) = self.links.get(&key) {
                        header.set_entry_type(EntryType::Link);
                        header.set_size(0);
                        let first = first.clone();
                        return self
                            .builder
                            .append_link(&mut header, name, &first)
                            .map_err(|e| TarError::io(context(), e));
                    }
                    self.links.insert(key, name.to_path_buf());
                }
                header.set_entry_type(EntryType::Regular);
                header.set_size(meta.len);
                let file = fs.open(path)?;
                let reader = ExactReader {
                    inner: file.take(meta.len),
                    remaining: meta.len,
                };
                self.builder
                    .append_data(&mut header, name, reader)
                    .map_err(|e| TarError::io(context(), e))?;
            }
            FileKind::Other => {
                return Err(TarError::Special {
                    path: fs.display_path(path),
                });
            }
        }
        Ok(())
    }

    /// A GNU header with the options applied.
    fn header(&self, mode: u32, mtime: u64, uid_gid: (u64, u64)) -> Header {
        let mut header = Header::new_gnu();
        header.set_mode(mode & 0o7777);
        header.set_mtime(self.options.mtime.unwrap_or(mtime));
        let (uid, gid) = self.options.uid_gid.unwrap_or(uid_gid);
        header.set_uid(uid);
        header.set_gid(gid);
        header
    }

    /// The header of an in-memory entry: the options' mtime and owner, else 0.
    fn synthetic_header(&self, mode: u32) -> Header {
        self.header(mode, 0, (0, 0))
    }

    /// Appends a directory entry (its parents are not added).
    pub fn append_dir(&mut self, path: &Path, mode: u32) -> Result<(), TarError> {
        let name = archive_name(path)?;
        let mut header = self.synthetic_header(mode);
        header.set_entry_type(EntryType::Directory);
        header.set_size(0);
        self.builder
            .append_data(&mut header, dir_name(&name), io::empty())
            .map_err(|e| TarError::io(format!("appending {}", name.display()), e))
    }

    /// Appends a regular file with the given content.
    pub fn append_file(&mut self, path: &Path, mode: u32, data: &[u8]) -> Result<(), TarError> {
        self.append_reader(path, mode, data.len() as u64, data)
    }

    /// Appends a regular file of `size` bytes streamed from `data` (which must give exactly
    /// that many).
    pub fn append_reader(
        &mut self,
        path: &Path,
        mode: u32,
        size: u64,
        data: impl Read,
    ) -> Result<(), TarError> {
        let name = archive_name(path)?;
        let mut header = self.synthetic_header(mode);
        header.set_entry_type(EntryType::Regular);
        header.set_size(size);
        let reader = ExactReader {
            inner: data.take(size),
            remaining: size,
        };
        self.builder
            .append_data(&mut header, &name, reader)
            .map_err(|e| TarError::io(format!("appending {}", name.display()), e))
    }

    /// Appends a symlink whose target is stored verbatim.
    pub fn append_symlink(&mut self, path: &Path, target: &Path) -> Result<(), TarError> {
        let name = archive_name(path)?;
        let mut header = self.synthetic_header(0o777);
        header.set_entry_type(EntryType::Symlink);
        header.set_size(0);
        self.builder
            .append_link(&mut header, &name, target)
            .map_err(|e| TarError::io(format!("appending {}", name.display()), e))
    }

    /// Appends a regular file of `size` bytes that `write` streams straight into the output
    /// (for a caller with its own copy loop, one that hashes while it copies for instance);
    /// `write` returns how many bytes it wrote, which must be `size`.
    pub fn append_streamed<E: From<TarError>>(
        &mut self,
        path: &Path,
        mode: u32,
        size: u64,
        write: impl FnOnce(&mut dyn Write) -> Result<u64, E>,
    ) -> Result<(), E> {
        let name = archive_name(path)?;
        let mut header = self.synthetic_header(mode);
        header.set_entry_type(EntryType::Regular);
        header.set_size(size);
        // The header alone (GNU long-name entry included): no data follows from this call,
        // so tar adds no padding either.
        self.builder
            .append_data(&mut header, &name, io::empty())
            .map_err(|e| TarError::io(format!("appending {}", name.display()), e))?;
        let out = self.builder.get_mut();
        let written = write(out)?;
        if written != size {
            return Err(TarError::io(
                format!("appending {}", name.display()),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{written} bytes written for an entry of {size}"),
                ),
            )
            .into());
        }
        let remainder = (size % 512) as usize;
        if remainder != 0 {
            out.write_all(&[0u8; 512][..512 - remainder])
                .map_err(|e| TarError::io(format!("appending {}", name.display()), e))?;
        }
        Ok(())
    }

    /// Writes the end-of-archive blocks and returns the output.
    pub fn finish(mut self) -> Result<W, TarError> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Gate(None)));
        let gate = builder
            .into_inner()
            .map_err(|e| TarError::io("finishing the tar stream", e))?;
        gate.0.ok_or_else(|| {
            TarError::io(
                "finishing the tar stream",
                io::Error::other("the output was already closed"),
            )
        })
    }
}

impl<W: Write> Drop for TarWriter<W> {
    fn drop(&mut self) {
        // `tar::Builder` writes the end-of-archive blocks when dropped: a writer dropped
        // part way closes its output first, so they go nowhere.
        self.builder.get_mut().0 = None;
    }
}

/// The output of a [`TarWriter`]; closed (`None`) once the writer is dropped.
struct Gate<W>(Option<W>);

impl<W: Write> Write for Gate<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(out) => out.write(buf),
            None => Err(io::Error::other("the tar output is closed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// Validates an archive name given by a caller (relative, no `..`).
fn archive_name(path: &Path) -> Result<PathBuf, TarError> {
    let valid = FsPath::new(path)?;
    if valid.is_root() {
        return Err(FsError::InvalidPath {
            path: path.to_path_buf(),
            reason: "an archive entry needs a name",
        }
        .into());
    }
    Ok(valid.as_path().to_path_buf())
}

/// Directory names end with `/` in the archive, as tar tools write them.
fn dir_name(name: &Path) -> PathBuf {
    let mut name = name.as_os_str().to_os_string();
    if !name.as_encoded_bytes().ends_with(b"/") {
        name.push("/");
    }
    PathBuf::from(name)
}

/// Gives exactly `remaining` bytes or fails: a file that shrinks while being packed must
/// not leave a header whose size its data does not match.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being packed",
            ));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}
