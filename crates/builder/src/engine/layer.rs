//! A layer as a sorted set of entries, and its reproducible tar+gzip blob.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use flate2::{Compression, GzBuilder};
use sealer_fs_abstraction::Fs;
use sealer_fs_abstraction::tar::{PackOptions, TarWriter};
use sealer_image_store::model::media_type;
use sealer_image_store::{Algorithm, Descriptor, Digest, Hasher, Ingest};

use crate::engine::error::{BuildError, Result};

/// The gzip level of every layer (fixed: the level changes the bytes, hence the digest).
const GZIP_LEVEL: u32 = 6;
/// The zstd level of every layer (fixed, single-threaded: the output is deterministic for
/// the libzstd version Cargo.lock pins).
const ZSTD_LEVEL: i32 = 3;

/// How layers are compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip (level 6, empty header): what every registry and runtime reads.
    #[default]
    Gzip,
    /// zstd (level 3): smaller and faster; needs containerd ≥ 1.5 / recent CRI-O and podman.
    Zstd,
    /// A plain tar: for content that is compressed already (the `registry/` layer of
    /// dependency images), where compressing again costs time and saves nothing.
    Uncompressed,
}

impl LayerCompression {
    /// The layer media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Gzip => media_type::OCI_LAYER_GZIP,
            Self::Zstd => media_type::OCI_LAYER_ZSTD,
            Self::Uncompressed => media_type::OCI_LAYER,
        }
    }

    /// `gzip` or `zstd`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Uncompressed => "none",
        }
    }
}

/// One entry of a layer.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A directory with these permission bits.
    Dir(u32),
    /// A regular file read from `source` (a path of the layer's source `Fs`).
    File {
        /// Where its content is.
        source: PathBuf,
        /// Permission bits.
        mode: u32,
        /// Size in bytes.
        len: u64,
    },
    /// A symlink, stored verbatim.
    Symlink(PathBuf),
    /// A regular file with this content (a downloaded source) and permission bits.
    Data(std::sync::Arc<[u8]>, u32),
    /// A regular file of another `Fs` than the layer's source (an extracted ADD archive).
    Extern {
        /// Where it is.
        fs: std::sync::Arc<dyn Fs>,
        /// Its path there.
        source: PathBuf,
        /// Permission bits.
        mode: u32,
        /// Size in bytes.
        len: u64,
    },
    /// An OCI whiteout: the entry of this name in lower layers is deleted.
    Whiteout,
}

/// The entries of a layer by their path in the rootfs (relative); sorted, so parents come
/// before their children and the tar is the same whatever order they were added in.
#[derive(Debug, Default)]
pub(crate) struct LayerTree {
    entries: BTreeMap<PathBuf, Node>,
}

impl LayerTree {
    /// Adds (or replaces) an entry; its missing parent directories are added with mode 0755.
    pub(crate) fn insert(&mut self, path: PathBuf, node: Node) {
        self.add_parents(&path);
        self.entries.insert(path, node);
    }

    /// Adds the parent directories of `path` that are not entries yet (mode 0755).
    fn add_parents(&mut self, path: &Path) {
        let mut parent = path.parent();
        let mut missing = Vec::new();
        while let Some(dir) = parent {
            if dir.as_os_str().is_empty() {
                break;
            }
            if !self.entries.contains_key(dir) {
                missing.push(dir.to_path_buf());
            }
            parent = dir.parent();
        }
        for dir in missing {
            self.entries.insert(dir, Node::Dir(0o755));
        }
    }

    /// Sets the mode of every directory entry for which `mode_of` knows one (parents that
    /// [`Self::insert`] added get their real mode).
    pub(crate) fn set_dir_modes(&mut self, mode_of: impl Fn(&Path) -> Option<u32>) {
        for (path, node) in &mut self.entries {
            if let Node::Dir(mode) = node
                && let Some(real) = mode_of(path)
            {
                *mode = real;
            }
        }
    }

    /// The entries, sorted by path.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&PathBuf, &Node)> {
        self.entries.iter()
    }
}

/// A layer blob staged in an ingest.
#[derive(Debug, Clone)]
pub(crate) struct BuiltLayer {
    /// As the manifest lists it.
    pub(crate) descriptor: Descriptor,
    /// The digest of the uncompressed tar.
    pub(crate) diff_id: Digest,
}

/// Hashes what goes through it (the uncompressed tar: the diff_id).
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `tree` (file contents read from `fs`) as a tar with every mtime `mtime` and owner
/// 0:0, compressed with a fixed level (gzip with an empty header: no name, mtime 0, OS
/// "unknown"), and stages it in `ingest`. The tar is made on a second thread and streamed
/// into the ingest through a small channel, so a layer is never held in memory whole.
pub(crate) fn write_layer(
    tree: &LayerTree,
    fs: &dyn Fs,
    mtime: u64,
    compression: LayerCompression,
    ingest: &Ingest<'_>,
) -> Result<BuiltLayer> {
    let (sender, receiver) = mpsc::sync_channel::<Vec<u8>>(PIPE_DEPTH);
    let (staged, diff_id) = std::thread::scope(|scope| {
        let producer =
            scope.spawn(move || write_tar(tree, fs, mtime, compression, ChannelWriter { sender }));
        let mut reader = ChannelReader {
            receiver,
            current: Vec::new(),
            offset: 0,
        };
        let staged = ingest.put_unknown(Algorithm::Sha256, &mut reader, "a built layer");
        // Unblock the producer if staging stopped early (its sends then fail).
        drop(reader);
        let produced = producer.join().unwrap_or_else(|_| {
            Err(BuildError::Io {
                what: "writing a layer".to_owned(),
                source: io::Error::other("the layer writer thread panicked"),
            })
        });
        (staged, produced)
    });
    // The producer's error says why the stream ended early; report it first.
    let diff_id = diff_id?;
    let (digest, size) = staged?;
    Ok(BuiltLayer {
        descriptor: Descriptor::new(compression.media_type(), digest, size),
        diff_id,
    })
}

/// A compressing writer of any kind.
enum Compressor<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Compressor<W> {
    fn new(compression: LayerCompression, out: W) -> io::Result<Self> {
        Ok(match compression {
            LayerCompression::Gzip => Self::Gzip(
                GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(out, Compression::new(GZIP_LEVEL)),
            ),
            LayerCompression::Zstd => {
                Self::Zstd(zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?)
            }
            LayerCompression::Uncompressed => Self::Plain(out),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Self::Gzip(encoder) => encoder.finish(),
            Self::Zstd(encoder) => encoder.finish(),
            Self::Plain(out) => Ok(out),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(encoder) => encoder.write(buf),
            Self::Zstd(encoder) => encoder.write(buf),
            Self::Plain(out) => out.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Gzip(encoder) => encoder.flush(),
            Self::Zstd(encoder) => encoder.flush(),
            Self::Plain(out) => out.flush(),
        }
    }
}

/// Chunks in flight between the tar writer and the ingest.
const PIPE_DEPTH: usize = 8;
/// Size of one chunk.
const CHUNK: usize = 256 * 1024;

/// Writes the tar+gzip stream of `tree` to `out`; returns the diff_id.
fn write_tar(
    tree: &LayerTree,
    fs: &dyn Fs,
    mtime: u64,
    compression: LayerCompression,
    out: ChannelWriter,
) -> Result<Digest> {
    let buffered = io::BufWriter::with_capacity(CHUNK, out);
    let compress_error = |source| BuildError::Io {
        what: "compressing a layer".to_owned(),
        source,
    };
    let gzip = Compressor::new(compression, buffered).map_err(compress_error)?;
    let hashing = HashingWriter {
        inner: gzip,
        hasher: Hasher::new(Algorithm::Sha256),
    };
    let options = PackOptions {
        mtime: Some(mtime),
        uid_gid: Some((0, 0)),
    };
    let mut writer = TarWriter::new(hashing, options);
    for (path, node) in tree.entries() {
        match node {
            Node::Dir(mode) => writer.append_dir(path, *mode)?,
            Node::File { source, mode, len } => {
                let file = fs.open(source)?;
                writer.append_reader(path, *mode, *len, file)?;
            }
            Node::Symlink(target) => writer.append_symlink(path, target)?,
            Node::Data(data, mode) => writer.append_file(path, *mode, data)?,
            Node::Extern {
                fs,
                source,
                mode,
                len,
            } => {
                let file = fs.open(source)?;
                writer.append_reader(path, *mode, *len, file)?;
            }
            Node::Whiteout => writer.append_file(path, 0, &[])?,
        }
    }
    let hashing = writer.finish()?;
    let diff_id = hashing.hasher.finish();
    let mut buffered = hashing.inner.finish().map_err(compress_error)?;
    buffered.flush().map_err(compress_error)?;
    Ok(diff_id)
}

/// The writing end of the layer pipe.
struct ChannelWriter {
    sender: mpsc::SyncSender<Vec<u8>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.sender
            .send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the layer reader stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading end of the layer pipe: ends when the writer is dropped.
struct ChannelReader {
    receiver: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    offset: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            match self.receiver.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.offset = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// The whiteout name that deletes `path`: `<parent>/.wh.<name>`.
pub(crate) fn whiteout_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let mut whiteout = std::ffi::OsString::from(".wh.");
    whiteout.push(name);
    Some(match path.parent() {
        Some(parent) => parent.join(whiteout),
        None => PathBuf::from(whiteout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_added_and_entries_sorted() {
        let mut tree = LayerTree::default();
        tree.insert(PathBuf::from("b/c/file"), Node::Whiteout);
        tree.insert(PathBuf::from("a"), Node::Dir(0o700));
        let paths: Vec<_> = tree.entries().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            paths,
            vec![
                PathBuf::from("a"),
                PathBuf::from("b"),
                PathBuf::from("b/c"),
                PathBuf::from("b/c/file")
            ]
        );
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(
            whiteout_path(Path::new("etc/passwd")),
            Some(PathBuf::from("etc/.wh.passwd"))
        );
        assert_eq!(whiteout_path(Path::new("x")), Some(PathBuf::from(".wh.x")));
    }
}
