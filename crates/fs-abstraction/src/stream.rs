//! Streams the user named on a command line: `-o PATH` for an output, `-i PATH` for an input.
//!
//! A rooted [`Fs`](crate::Fs) confines paths that come from content (tar entries, build
//! contexts); a path typed by the user is the user's decision and may lead anywhere, through
//! symlinks included (`/dev/stdout`, `/dev/fd/63` from a shell's `<(…)`). What must not
//! happen is replacing what is there when it is not a regular file:
//!
//! * [`OutputTarget`]: `-` is stdout; a device, FIFO or socket (directly or through a
//!   symlink) is written into where it is, never created, truncated or renamed over; a regular
//!   file, or a new path, is replaced atomically through [`AtomicFile`] (nothing appears
//!   before [`OutputWriter::commit`]); a symlink to a regular file is followed, so the link
//!   stays and its target is replaced; a dangling symlink is refused.
//! * [`InputSource`]: `-` is stdin; a regular file is opened with its length (for progress);
//!   a FIFO, device or socket is read as a stream; a directory is returned as a path for the
//!   caller to open as a root.

// Only here and in `real.rs` may `std::fs` be used: a stream the user named is opened where
// it is (no `openat2` root applies to `/dev/stdout`).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::{AtomicFile, FsError, RealFs, Result};

/// The name that means stdin for an input and stdout for an output.
pub const STDIO_NAME: &str = "-";

/// Where an output the user named goes, decided by what is at the path now
/// ([`OutputTarget::resolve`]); [`OutputTarget::open`] starts writing.
#[derive(Debug)]
pub enum OutputTarget {
    /// `-`: the process's stdout.
    Stdout,
    /// A device, FIFO or socket: written into where it is.
    Stream {
        /// The path as given.
        path: PathBuf,
        /// Whether it is a socket (connected to, not opened).
        socket: bool,
    },
    /// A regular file or a new path: replaced atomically.
    File {
        /// The directory the file is (or will be) in.
        dir: RealFs,
        /// The file's name in `dir`.
        name: PathBuf,
        /// The path as given (for messages; a symlink's target is in `dir`).
        path: PathBuf,
    },
}

impl OutputTarget {
    /// Looks at `path` and decides how it is written. Refused: a directory, a dangling
    /// symlink, a path with no file name.
    pub fn resolve(path: &Path) -> Result<Self> {
        if path.as_os_str() == STDIO_NAME {
            return Ok(Self::Stdout);
        }
        match std::fs::metadata(path) {
            Ok(metadata) => {
                let kind = metadata.file_type();
                if kind.is_dir() {
                    return Err(refused(path, "it is a directory, expected a file path"));
                }
                if !kind.is_file() {
                    // A device, FIFO or socket, possibly through symlinks (`/dev/stdout`).
                    return Ok(Self::Stream {
                        path: path.to_path_buf(),
                        socket: kind.is_socket(),
                    });
                }
                // A regular file: through a symlink, its target is the one replaced.
                let is_link = std::fs::symlink_metadata(path)
                    .map_err(|source| FsError::io("stat", path.to_path_buf(), source))?
                    .file_type()
                    .is_symlink();
                let file = if is_link {
                    std::fs::canonicalize(path).map_err(|source| {
                        FsError::io("resolve symlink", path.to_path_buf(), source)
                    })?
                } else {
                    path.to_path_buf()
                };
                Self::file(path, &file)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(refused(
                        path,
                        "it is a symlink to nothing; name an existing target, or a new path",
                    ));
                }
                Self::file(path, path)
            }
            Err(source) => Err(FsError::io("stat", path.to_path_buf(), source)),
        }
    }

    fn file(given: &Path, file: &Path) -> Result<Self> {
        let name = file
            .file_name()
            .ok_or_else(|| refused(given, "it does not name a file"))?;
        let parent = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Ok(Self::File {
            dir: RealFs::open_root(parent)?,
            name: PathBuf::from(name),
            path: given.to_path_buf(),
        })
    }

    /// Starts writing. For a FIFO this waits for a reader, as a shell's `>` does.
    pub fn open(&self) -> Result<OutputWriter<'_>> {
        let inner = match self {
            Self::Stdout => Inner::Stdout(io::stdout()),
            Self::Stream { path, socket } => {
                let stream: Box<dyn Write + Send> = if *socket {
                    Box::new(
                        UnixStream::connect(path)
                            .map_err(|source| FsError::io("connect", path.clone(), source))?,
                    )
                } else {
                    // No create, no truncate: a device or FIFO is only written into.
                    Box::new(
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(|source| FsError::io("open", path.clone(), source))?,
                    )
                };
                Inner::Stream(stream)
            }
            Self::File { dir, name, .. } => Inner::File(AtomicFile::create(dir, name)?),
        };
        Ok(OutputWriter {
            inner,
            path: self.path(),
        })
    }

    /// The path as given (`-` for stdout).
    pub fn path(&self) -> PathBuf {
        match self {
            Self::Stdout => PathBuf::from(STDIO_NAME),
            Self::Stream { path, .. } | Self::File { path, .. } => path.clone(),
        }
    }

    /// Whether the output is this process's stdout (`-`, `/dev/stdout`, or the file or pipe
    /// stdout is): messages must then go elsewhere.
    pub fn is_stdout(&self) -> bool {
        match self {
            Self::Stdout => true,
            Self::Stream { path, .. } => same_file_as_stdout(path),
            Self::File { dir, name, .. } => same_file_as_stdout(&dir.root().join(name)),
        }
    }
}

fn same_file_as_stdout(path: &Path) -> bool {
    // The magic link names whatever stdout is (a pipe, a file, a device).
    let Ok(stdout) = std::fs::metadata("/proc/self/fd/1") else {
        return false;
    };
    std::fs::metadata(path)
        .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == (stdout.dev(), stdout.ino()))
}

/// An output being written; [`OutputWriter::commit`] completes it. Dropped without a commit,
/// a replaced regular file is left as it was (the stream cases cannot take back what they
/// wrote).
pub struct OutputWriter<'a> {
    inner: Inner<'a>,
    path: PathBuf,
}

enum Inner<'a> {
    Stdout(io::Stdout),
    Stream(Box<dyn Write + Send>),
    File(AtomicFile<'a, RealFs>),
}

impl OutputWriter<'_> {
    /// Flushes, and for a regular file syncs it and renames it into place.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        let flushed = match self.inner {
            Inner::Stdout(mut stdout) => stdout.flush(),
            Inner::Stream(mut stream) => stream.flush(),
            Inner::File(file) => return file.commit(),
        };
        flushed.map_err(|source| FsError::io("write", path, source))
    }
}

impl Write for OutputWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Stdout(stdout) => stdout.write(buf),
            Inner::Stream(stream) => stream.write(buf),
            Inner::File(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Stdout(stdout) => stdout.flush(),
            Inner::Stream(stream) => stream.flush(),
            Inner::File(file) => file.flush(),
        }
    }
}

/// An input the user named ([`InputSource::open`]).
pub enum InputSource {
    /// A directory (an OCI layout, say): open it as a root.
    Dir(PathBuf),
    /// Bytes to read in order.
    Stream {
        /// The reader: stdin, a file, a FIFO, a device or a socket.
        reader: Box<dyn Read + Send>,
        /// The length when it is a regular file.
        len: Option<u64>,
    },
}

impl std::fmt::Debug for InputSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(path) => f.debug_tuple("Dir").field(path).finish(),
            Self::Stream { len, .. } => f.debug_struct("Stream").field("len", len).finish(),
        }
    }
}

impl InputSource {
    /// Opens `path` for reading, following symlinks: `-` is stdin, `/dev/stdin` and
    /// `/dev/fd/N` are the streams they name.
    pub fn open(path: &Path) -> Result<Self> {
        if path.as_os_str() == STDIO_NAME {
            return Ok(Self::Stream {
                reader: Box::new(io::stdin()),
                len: None,
            });
        }
        let metadata = std::fs::metadata(path)
            .map_err(|source| FsError::io("open", path.to_path_buf(), source))?;
        let kind = metadata.file_type();
        if kind.is_dir() {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        let reader: Box<dyn Read + Send> = if kind.is_socket() {
            Box::new(
                UnixStream::connect(path)
                    .map_err(|source| FsError::io("connect", path.to_path_buf(), source))?,
            )
        } else {
            Box::new(
                std::fs::File::open(path)
                    .map_err(|source| FsError::io("open", path.to_path_buf(), source))?,
            )
        };
        Ok(Self::Stream {
            reader,
            len: kind.is_file().then_some(metadata.len()),
        })
    }
}

fn refused(path: &Path, reason: &'static str) -> FsError {
    FsError::io(
        "use as output",
        path.to_path_buf(),
        io::Error::new(io::ErrorKind::InvalidInput, reason),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_replaced_only_on_commit() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("out");
        std::fs::write(&path, b"old").unwrap();
        let target = OutputTarget::resolve(&path).unwrap();
        let mut writer = target.open().unwrap();
        writer.write_all(b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        writer.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn a_symlink_is_followed_and_kept() {
        let temp = tempfile::tempdir().unwrap();
        let target_file = temp.path().join("target");
        std::fs::write(&target_file, b"old").unwrap();
        let link = temp.path().join("link");
        std::os::unix::fs::symlink(&target_file, &link).unwrap();
        let target = OutputTarget::resolve(&link).unwrap();
        let mut writer = target.open().unwrap();
        writer.write_all(b"new").unwrap();
        writer.commit().unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target_file).unwrap(), b"new");
    }

    #[test]
    fn a_dangling_symlink_and_a_directory_are_refused() {
        let temp = tempfile::tempdir().unwrap();
        let link = temp.path().join("link");
        std::os::unix::fs::symlink(temp.path().join("nothing"), &link).unwrap();
        let error = crate::error_chain(&OutputTarget::resolve(&link).unwrap_err());
        assert!(error.contains("symlink to nothing"), "{error}");
        let error = crate::error_chain(&OutputTarget::resolve(temp.path()).unwrap_err());
        assert!(error.contains("directory"), "{error}");
    }

    #[test]
    fn a_socket_is_connected_to_and_left_in_place() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("socket");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let target = OutputTarget::resolve(&path).unwrap();
        assert!(matches!(target, OutputTarget::Stream { socket: true, .. }));
        let mut writer = target.open().unwrap();
        writer.write_all(b"bytes").unwrap();
        // Committing flushes and drops the connection: the reader sees the end.
        writer.commit().unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        accepted.read_to_end(&mut received).unwrap();
        assert_eq!(received, b"bytes");
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
        );
    }

    #[test]
    fn a_fifo_is_an_input_stream() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || std::fs::write(path, b"archive").unwrap())
        };
        let InputSource::Stream { mut reader, len } = InputSource::open(&path).unwrap() else {
            panic!("not a stream");
        };
        assert_eq!(len, None);
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        writer.join().unwrap();
        assert_eq!(read, b"archive");
    }

    #[test]
    fn a_character_device_is_a_stream() {
        let target = OutputTarget::resolve(Path::new("/dev/null")).unwrap();
        assert!(matches!(target, OutputTarget::Stream { socket: false, .. }));
        let mut writer = target.open().unwrap();
        writer.write_all(b"bytes").unwrap();
        writer.commit().unwrap();
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
}
