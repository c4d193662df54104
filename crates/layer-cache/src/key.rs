//! Cache keys and input digests.
//!
//! Everything hashed here is framed: every field is written as its length (8 bytes, little
//! endian) followed by its bytes, after a tag naming what it is, so two different inputs
//! never produce the same byte stream. A format version ([`KEY_VERSION`]) is hashed first:
//! changing the format invalidates every older key instead of colliding with it.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;
use std::time::SystemTime;

use sealer_fs_abstraction::{ErrorChain, FileKind, Fs, FsError, FsPath, Metadata};
use sealer_image_store::{Algorithm, Digest, DigestError, Hasher};

use crate::error::Result;
use crate::stat::StatCache;

/// The version of the key format, hashed into every key and input digest.
pub const KEY_VERSION: &str = "sealer-layer-cache/v1";

/// Read buffer for hashing file contents.
const READ_BUFFER: usize = 1 << 20;

/// A framed SHA-256 hasher.
struct Framed(Hasher);

impl Framed {
    fn new(purpose: &str) -> Self {
        let mut framed = Self(Hasher::new(Algorithm::Sha256));
        framed.field(KEY_VERSION.as_bytes());
        framed.field(purpose.as_bytes());
        framed
    }

    fn field(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn finish(self) -> Digest {
        self.0.finish()
    }
}

/// The key of one build step: `sha256(parent key, canonical instruction text, input
/// digest)`, with the chain seeded by the base image.
///
/// * [`CacheKey::base`] seeds the chain with the base image's manifest digest — the
///   single-platform manifest the build resolved `FROM` to, not an index — so a different
///   base (or another platform of it) gives different keys for every step. (sealer v0.8
///   started the chain from an empty parent: a new base reused stale layers.)
/// * [`CacheKey::scratch`] seeds `FROM scratch` with a fixed constant.
/// * [`CacheKey::next`] derives the key of the next step. Every instruction advances the
///   chain, including those that add no layer (ENV, LABEL, ARG, …), so that a change to
///   any of them rebuilds the layers after it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CacheKey(Digest);

impl CacheKey {
    /// The start of the chain for a build on the image whose manifest is `manifest`.
    pub fn base(manifest: &Digest) -> Self {
        let mut framed = Framed::new("base");
        framed.field(manifest.to_string().as_bytes());
        Self(framed.finish())
    }

    /// The start of the chain for `FROM scratch`.
    pub fn scratch() -> Self {
        Self(Framed::new("scratch").finish())
    }

    /// The key of the step after this one: `instruction` is its canonical text after
    /// variable expansion and `${ARCH}` substitution (the `Display` of a resolved
    /// instruction), `input` what it reads beyond its text.
    pub fn next(&self, instruction: &str, input: &InputDigest) -> Self {
        let mut framed = Framed::new("step");
        framed.field(self.0.to_string().as_bytes());
        framed.field(instruction.as_bytes());
        framed.field(input.0.to_string().as_bytes());
        Self(framed.finish())
    }

    /// The key as a digest.
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CacheKey {
    type Err = DigestError;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        text.parse().map(Self)
    }
}

/// What a step reads besides its own text, as one digest.
///
/// * COPY/ADD/APP/CNI/CSI: the sources, through [`InputHasher::add_path`] — relative
///   paths, file contents, permission bits and symlink targets; never mtimes, uid/gid.
/// * RUN: [`InputDigest::of_env`] of its environment. A RUN step is keyed by its command
///   (the instruction text), its environment (ENV and ARG values in scope, sorted) and its
///   parent key — which covers the base image and every earlier step. What the command
///   itself fetches or what the build host's tools do is NOT keyed, as in Docker: use
///   `--no-cache` to rerun it.
/// * Everything else: [`InputDigest::none`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InputDigest(Digest);

impl InputDigest {
    /// The input of a step that reads nothing besides its text.
    pub fn none() -> Self {
        Self(Framed::new("none").finish())
    }

    /// The input of a RUN step: its environment, sorted by name (then value), so the order
    /// variables were set in does not matter.
    pub fn of_env<K: AsRef<str>, V: AsRef<str>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut vars: Vec<(K, V)> = vars.into_iter().collect();
        vars.sort_by(|(ka, va), (kb, vb)| {
            (ka.as_ref(), va.as_ref()).cmp(&(kb.as_ref(), vb.as_ref()))
        });
        let mut framed = Framed::new("env");
        for (key, value) in &vars {
            framed.field(key.as_ref().as_bytes());
            framed.field(value.as_ref().as_bytes());
        }
        Self(framed.finish())
    }

    /// The input as a digest.
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

/// Builds the [`InputDigest`] of a step that reads files (COPY/ADD sources, app sources).
///
/// Each [`add_path`](Self::add_path) hashes one source in the order given: its path relative
/// to the context root, then the tree below it (for a directory: every entry, depth first,
/// sorted by name, symlinks not followed) — for each entry its kind, path, permission bits
/// (`0o7777`), and a file's content digest or a symlink's target. A source that is itself a
/// symlink is hashed as the link *and* as what it resolves to inside the context (COPY
/// follows a source symlink), or as unresolvable. mtimes, uid/gid and sizes of directories
/// are not hashed.
///
/// File contents come from the [`StatCache`] when the file's (size, mtime, inode, device)
/// are unchanged since it was last read, so an unchanged context is only stat'ed.
pub struct InputHasher {
    framed: Framed,
    buffer: Vec<u8>,
}

impl Default for InputHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for InputHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputHasher").finish_non_exhaustive()
    }
}

impl InputHasher {
    /// An empty input.
    pub fn new() -> Self {
        Self {
            framed: Framed::new("input"),
            buffer: Vec::new(),
        }
    }

    /// Hashes the source `path` (relative to the root of `context`, the build context).
    /// Fails when it does not exist or cannot be read; a path that would leave the context
    /// fails with the `Fs`'s escape error.
    pub fn add_path(
        &mut self,
        context: &dyn Fs,
        path: &Path,
        stat_cache: &mut StatCache,
    ) -> Result<()> {
        let source = FsPath::new(path)?;
        let source_path = source.as_path();
        self.framed.field(b"source");
        self.framed
            .field(source_path.as_os_str().as_encoded_bytes());
        let metadata = context.symlink_metadata(source_path)?;
        let Self { framed, buffer } = self;
        let mut walk = ContextWalk {
            framed,
            buffer,
            context,
            stat_cache,
        };
        if metadata.kind == FileKind::Symlink {
            walk.entry(source_path, &metadata)?;
            // COPY follows a source that is a symlink: hash what it resolves to as well.
            match context.metadata(source_path) {
                Ok(followed) => {
                    walk.framed.field(b"resolves-to");
                    walk.tree(source_path, &followed)
                }
                Err(error) if is_unresolvable(&error) => {
                    tracing::debug!(path = %source_path.display(), error = %ErrorChain(&error), "source symlink does not resolve");
                    walk.framed.field(b"unresolvable");
                    Ok(())
                }
                Err(error) => Err(error.into()),
            }
        } else {
            walk.tree(source_path, &metadata)
        }
    }

    /// Hashes bytes under a label, for inputs that are not context files (a downloaded
    /// file's digest, an HTTP validator, a flag that changes what a step produces).
    pub fn add_bytes(&mut self, label: &str, data: &[u8]) {
        self.framed.field(b"bytes");
        self.framed.field(label.as_bytes());
        self.framed.field(data);
    }

    /// The digest of everything added.
    pub fn finish(self) -> InputDigest {
        InputDigest(self.framed.finish())
    }
}

/// One `add_path`'s walk of the build context: the [`InputHasher`]'s framed hasher it feeds
/// and read buffer it reuses, the context it reads and the stat cache it consults.
struct ContextWalk<'a> {
    framed: &'a mut Framed,
    buffer: &'a mut Vec<u8>,
    context: &'a dyn Fs,
    stat_cache: &'a mut StatCache,
}

impl ContextWalk<'_> {
    /// Hashes `path` (whose metadata, symlinks followed or not, is `metadata`) and, for a
    /// directory, everything below it.
    fn tree(&mut self, path: &Path, metadata: &Metadata) -> Result<()> {
        self.entry(path, metadata)?;
        if metadata.kind != FileKind::Dir {
            return Ok(());
        }
        let entries = self.context.walk(path)?;
        let mut seen = Vec::with_capacity(entries.len());
        for entry in &entries {
            self.entry(&entry.path, &entry.metadata)?;
            if entry.metadata.kind == FileKind::File {
                seen.push(entry.path.as_path());
            }
        }
        self.stat_cache.forget_missing_below(path, &seen);
        Ok(())
    }

    /// Hashes one entry: kind, path, mode, and content digest or link target.
    fn entry(&mut self, path: &Path, metadata: &Metadata) -> Result<()> {
        let tag: &[u8] = match metadata.kind {
            FileKind::File => b"file",
            FileKind::Dir => b"dir",
            FileKind::Symlink => b"symlink",
            FileKind::Other => b"other",
        };
        self.framed.field(tag);
        self.framed.field(path.as_os_str().as_encoded_bytes());
        match metadata.kind {
            FileKind::File => {
                self.framed.field(&(metadata.mode & 0o7777).to_le_bytes());
                let digest = self.content_digest(path, metadata)?;
                self.framed.field(digest.to_string().as_bytes());
            }
            FileKind::Dir | FileKind::Other => {
                self.framed.field(&(metadata.mode & 0o7777).to_le_bytes());
            }
            FileKind::Symlink => {
                let target = self.context.read_link(path)?;
                self.framed.field(target.as_os_str().as_encoded_bytes());
            }
        }
        Ok(())
    }

    /// A file's content digest: from the stat cache, or read and hashed (and remembered).
    fn content_digest(&mut self, path: &Path, metadata: &Metadata) -> Result<Digest> {
        if let Some(digest) = self.stat_cache.lookup(path, metadata) {
            return Ok(digest);
        }
        let started = SystemTime::now();
        let mut file = self.context.open(path)?;
        if self.buffer.is_empty() {
            *self.buffer = vec![0; READ_BUFFER];
        }
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut read_bytes = 0u64;
        loop {
            let read = file
                .read(self.buffer)
                .map_err(|source| FsError::io("read", self.context.display_path(path), source))?;
            if read == 0 {
                break;
            }
            read_bytes += read as u64;
            hasher.update(&self.buffer[..read]);
        }
        let digest = hasher.finish();
        // Remember it only if the file did not change while it was read.
        let after = self.context.metadata(path)?;
        let unchanged = after.len == metadata.len
            && after.modified == metadata.modified
            && after.ino == metadata.ino
            && after.dev == metadata.dev;
        self.stat_cache
            .record(path, metadata, &digest, read_bytes, started, unchanged);
        Ok(digest)
    }
}

/// `ELOOP` on Linux (its `io::ErrorKind` is not stable; `MemFs` reports the same errno).
const ELOOP: i32 = 40;

/// Whether following a source symlink failed because of where it points (dangling, out of
/// the context, a loop), rather than an I/O failure.
fn is_unresolvable(error: &FsError) -> bool {
    matches!(error, FsError::Escape { .. })
        || error.is_not_found()
        || matches!(error, FsError::Io { source, .. } if source.raw_os_error() == Some(ELOOP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_part() {
        let base = CacheKey::base(&Digest::sha256(b"manifest"));
        let other_base = CacheKey::base(&Digest::sha256(b"other manifest"));
        assert_ne!(base, other_base);
        assert_ne!(base, CacheKey::scratch());
        assert_eq!(CacheKey::scratch(), CacheKey::scratch());
        let none = InputDigest::none();
        let step = base.next("COPY a b", &none);
        assert_eq!(step, base.next("COPY a b", &none));
        assert_ne!(step, other_base.next("COPY a b", &none));
        assert_ne!(step, base.next("COPY a c", &none));
        assert_ne!(
            step,
            base.next("COPY a b", &InputDigest::of_env([("A", "1")]))
        );
        // Framing: moving bytes between fields changes the key.
        assert_ne!(
            base.next("ab", &none),
            CacheKey::base(&Digest::sha256(b"manifest")).next("a", &none)
        );
        let text = step.to_string();
        assert_eq!(text.parse::<CacheKey>().unwrap(), step);
    }

    #[test]
    fn env_digests_ignore_order_but_not_content() {
        let a = InputDigest::of_env([("A", "1"), ("B", "2")]);
        assert_eq!(a, InputDigest::of_env([("B", "2"), ("A", "1")]));
        assert_ne!(a, InputDigest::of_env([("A", "1"), ("B", "3")]));
        assert_ne!(a, InputDigest::of_env([("A", "12"), ("B", "")]));
        assert_ne!(
            InputDigest::of_env(Vec::<(&str, &str)>::new()),
            InputDigest::none()
        );
    }
}
