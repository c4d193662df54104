//! Reproducible tar packing and confined, entry-by-entry unpacking through an [`Fs`].
//!
//! * [`pack`] (or a [`TarWriter`] for finer control) writes the tree under a directory as a
//!   tar stream: entries in [`Fs::walk`] order, directories with a trailing `/`, file
//!   content streamed, symlink targets verbatim, hard links detected by `(dev, ino)`, GNU
//!   long-name entries for paths or targets over 100 bytes. With [`PackOptions`] the same
//!   tree always gives the same bytes.
//! * [`unpack`] reads a tar stream entry by entry and writes each one through the [`Fs`]
//!   (never `tar::Archive::unpack`): names that are absolute or contain `..` are refused,
//!   writes through symlinks are confined by the [`Fs`], an entry replacing another kind of
//!   entry removes it first (so a file never writes through a symlink), device nodes are
//!   refused or skipped, and OCI whiteouts can be applied.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::EntryType;

mod pack;

pub use self::pack::{TarWriter, pack};

use crate::{FileKind, Fs, FsError, FsPath};

/// Prefix of an OCI whiteout entry: `.wh.<name>` deletes `<name>` from the layers below.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// An OCI opaque whiteout: the directory holding it hides everything the layers below put
/// there.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Buffer size for streaming file content out of an archive.
const COPY_BUFFER: usize = 128 * 1024;

/// Why packing or unpacking failed.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// A file operation outside of any one entry failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A file operation for one entry failed (an escape through a symlink included).
    #[error("tar entry {entry:?}")]
    Entry {
        /// The entry's name as stored in the archive.
        entry: String,
        /// What failed.
        #[source]
        source: FsError,
    },
    /// Reading or writing the tar stream failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry was refused: it would leave the destination or is of a refused kind.
    #[error("tar entry {entry:?} refused: {reason}")]
    Refused {
        /// The entry's name as stored in the archive.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A file of a kind that is never packed (device node, FIFO, socket).
    #[error("cannot pack {path}: device nodes, FIFOs and sockets are not packed")]
    Special {
        /// The file, as shown to users.
        path: PathBuf,
    },
}

impl TarError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    fn refused(entry: &str, reason: impl Into<String>) -> Self {
        Self::Refused {
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }
}

/// How [`pack`] normalises metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackOptions {
    /// When set, every entry gets this modification time (seconds since the epoch, as
    /// `SOURCE_DATE_EPOCH`); otherwise each keeps its own.
    pub mtime: Option<u64>,
    /// When set, every entry gets this owner `(uid, gid)`; otherwise each keeps its own. User
    /// and group names are always left empty.
    pub uid_gid: Option<(u64, u64)>,
}

/// How [`unpack`] treats special entries and metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Applies OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) instead of writing them as files.
    pub whiteouts: bool,
    /// Skips device nodes and FIFOs (listed in [`UnpackReport::skipped`]) instead of failing.
    pub skip_special: bool,
    /// Sets the modification times from the archive (otherwise they are the unpacking time).
    pub preserve_mtime: bool,
}

/// What [`unpack`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Regular files written.
    pub files: u64,
    /// Directory entries applied (created or already there).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Whiteouts applied (opaque ones included).
    pub whiteouts: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Entries skipped (special files with [`UnpackOptions::skip_special`]).
    pub skipped: Vec<String>,
}

// ---------------------------------------------------------------------------------------
// Unpacking

/// Unpacks the tar stream `input` into the directory `dest` (created if missing) through
/// `fs`, entry by entry. Fails on the first refused entry, naming it; entries before it stay
/// written.
pub fn unpack<R: Read>(
    fs: &dyn Fs,
    dest: &Path,
    input: R,
    options: &UnpackOptions,
) -> Result<UnpackReport, TarError> {
    let dest = FsPath::new(dest)?;
    fs.create_dir_all(dest.as_path())?;
    let mut unpacker = Unpacker {
        fs,
        dest,
        options,
        report: UnpackReport::default(),
        created: HashSet::new(),
        deferred_dirs: Vec::new(),
        known_dirs: HashSet::new(),
        buffer: vec![0; COPY_BUFFER],
    };
    unpacker
        .known_dirs
        .insert(unpacker.dest.as_path().to_path_buf());
    let mut archive = tar::Archive::new(input);
    let entries = archive
        .entries()
        .map_err(|e| TarError::io("reading the tar stream", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| TarError::io("reading the tar stream", e))?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish()
}

struct Unpacker<'a> {
    fs: &'a dyn Fs,
    dest: FsPath,
    options: &'a UnpackOptions,
    report: UnpackReport,
    /// Paths (relative to `dest`) this archive wrote: opaque whiteouts keep them.
    created: HashSet<PathBuf>,
    /// Directories whose mode and mtime are set at the end, once nothing is written in them.
    deferred_dirs: Vec<(PathBuf, u32, Option<SystemTime>)>,
    /// Directories this unpack created or checked, so parents are not re-created per entry.
    known_dirs: HashSet<PathBuf>,
    buffer: Vec<u8>,
}

/// What an entry is, once classified.
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Special,
    /// Metadata-only entries the tar crate leaves to us (PAX global headers).
    Ignored,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), TarError> {
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let header = entry.header();
        let entry_type = header.entry_type();
        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::HardLink,
            EntryType::Char | EntryType::Block | EntryType::Fifo => Kind::Special,
            EntryType::XGlobalHeader => Kind::Ignored,
            other => {
                return Err(TarError::refused(
                    &raw_name,
                    format!("unsupported entry type {other:?}"),
                ));
            }
        };
        if let Kind::Ignored = kind {
            tracing::trace!(entry = %raw_name, "ignoring a PAX global header");
            return Ok(());
        }
        if let Kind::Special = kind {
            if self.options.skip_special {
                tracing::debug!(entry = %raw_name, "skipping a special file");
                self.report.skipped.push(raw_name);
                return Ok(());
            }
            return Err(TarError::refused(
                &raw_name,
                "device nodes and FIFOs are not unpacked",
            ));
        }
        let mode = header.mode().map_err(|e| self.read_error(&raw_name, e))? & 0o7777;
        let mtime = if self.options.preserve_mtime {
            let secs = header.mtime().map_err(|e| self.read_error(&raw_name, e))?;
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        } else {
            None
        };
        let path = entry.path().map_err(|e| self.read_error(&raw_name, e))?;
        let Some(rel) = clean_name(&path).map_err(|reason| TarError::refused(&raw_name, reason))?
        else {
            // `./` names the destination itself: only its own directory entry may say so.
            if let Kind::Dir = kind {
                self.deferred_dirs.push((PathBuf::new(), mode, mtime));
                self.report.dirs += 1;
                return Ok(());
            }
            return Err(TarError::refused(&raw_name, "the entry has no name"));
        };

        if self.options.whiteouts
            && let Some(file_name) = rel.file_name().and_then(|n| n.to_str())
            && file_name.starts_with(WHITEOUT_PREFIX)
        {
            return self.whiteout(&raw_name, &rel, file_name);
        }

        let target = self.target(&rel)?;
        self.ensure_parent(&raw_name, &target)?;
        match kind {
            Kind::Dir => {
                self.make_dir(&raw_name, &target)?;
                self.deferred_dirs.push((rel.clone(), mode, mtime));
                self.report.dirs += 1;
            }
            Kind::File => {
                let written = self.write_file(&raw_name, &target, entry)?;
                self.fs
                    .set_permissions(target.as_path(), mode)
                    .map_err(|source| entry_error(&raw_name, source))?;
                if let Some(mtime) = mtime {
                    self.fs
                        .set_modified(target.as_path(), mtime)
                        .map_err(|source| entry_error(&raw_name, source))?;
                }
                self.report.files += 1;
                self.report.bytes += written;
            }
            Kind::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| self.read_error(&raw_name, e))?
                    .ok_or_else(|| TarError::refused(&raw_name, "a symlink without a target"))?;
                // Stored verbatim, absolute or not: following it later is confined.
                self.replace(&raw_name, &target, |fs| fs.symlink(&link, target.as_path()))?;
                self.report.symlinks += 1;
            }
            Kind::HardLink => {
                let link = entry
                    .link_name()
                    .map_err(|e| self.read_error(&raw_name, e))?
                    .ok_or_else(|| TarError::refused(&raw_name, "a hard link without a target"))?;
                let link_rel = clean_name(&link)
                    .map_err(|reason| {
                        TarError::refused(&raw_name, format!("hard link target: {reason}"))
                    })?
                    .ok_or_else(|| {
                        TarError::refused(&raw_name, "a hard link to the destination")
                    })?;
                if link_rel == rel {
                    return Err(TarError::refused(&raw_name, "a hard link to itself"));
                }
                let source = self.target(&link_rel)?;
                self.hard_link(&raw_name, &source, &target)?;
                self.report.hardlinks += 1;
            }
            Kind::Special | Kind::Ignored => {}
        }
        self.created.insert(rel);
        Ok(())
    }

    fn read_error(&self, entry: &str, source: io::Error) -> TarError {
        TarError::io(format!("reading tar entry {entry:?}"), source)
    }

    /// The [`Fs`] path of an entry.
    fn target(&self, rel: &Path) -> Result<FsPath, TarError> {
        Ok(self.dest.join(rel)?)
    }

    /// Creates the parent directory of `target` unless this unpack already saw it.
    fn ensure_parent(&mut self, entry: &str, target: &FsPath) -> Result<(), TarError> {
        let parent = target.parent().unwrap_or_else(FsPath::root);
        if self.known_dirs.contains(parent.as_path()) {
            return Ok(());
        }
        self.fs
            .create_dir_all(parent.as_path())
            .map_err(|source| entry_error(entry, source))?;
        self.known_dirs.insert(parent.as_path().to_path_buf());
        Ok(())
    }

    /// Removes whatever is at `target` (never following a symlink there), so the entry
    /// replaces it instead of writing through it.
    fn clear(&mut self, entry: &str, target: &FsPath) -> Result<(), TarError> {
        // The cache only saves syscalls: confinement is the Fs's. Forget what goes away.
        self.known_dirs
            .retain(|dir| !dir.starts_with(target.as_path()));
        let result = match self.fs.symlink_metadata(target.as_path()) {
            Ok(meta) if meta.kind == FileKind::Dir => self.fs.remove_dir_all(target.as_path()),
            Ok(_) => self.fs.remove_file(target.as_path()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error),
        };
        result.map_err(|source| entry_error(entry, source))
    }

    /// Runs `create` (which must not follow a symlink at `target`); if something is in the
    /// way, removes it and tries once more. Trying first saves a lookup per entry on a fresh
    /// destination.
    fn replace<T>(
        &mut self,
        entry: &str,
        target: &FsPath,
        create: impl Fn(&dyn Fs) -> crate::Result<T>,
    ) -> Result<T, TarError> {
        match create(self.fs) {
            Err(error) if error.is_already_exists() => {
                self.clear(entry, target)?;
                create(self.fs).map_err(|source| entry_error(entry, source))
            }
            result => result.map_err(|source| entry_error(entry, source)),
        }
    }

    /// Creates a directory, replacing a non-directory; an existing directory is merged into.
    fn make_dir(&mut self, entry: &str, target: &FsPath) -> Result<(), TarError> {
        match self.fs.create_dir(target.as_path()) {
            Ok(()) => {}
            Err(error) if error.is_already_exists() => {
                let meta = self
                    .fs
                    .symlink_metadata(target.as_path())
                    .map_err(|source| entry_error(entry, source))?;
                if meta.kind != FileKind::Dir {
                    self.clear(entry, target)?;
                    self.fs
                        .create_dir(target.as_path())
                        .map_err(|source| entry_error(entry, source))?;
                }
            }
            Err(error) => return Err(entry_error(entry, error)),
        }
        self.known_dirs.insert(target.as_path().to_path_buf());
        Ok(())
    }

    /// Streams an entry's content into a new file.
    fn write_file(
        &mut self,
        entry_name: &str,
        target: &FsPath,
        entry: &mut impl Read,
    ) -> Result<u64, TarError> {
        // `create_new` never follows a symlink: one in the way is removed, not written through.
        let mut file = self.replace(entry_name, target, |fs| fs.create_new(target.as_path()))?;
        let write_error = |e| TarError::io(format!("writing tar entry {entry_name:?}"), e);
        let mut written = 0;
        loop {
            let read = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(entry_name, e)),
            };
            file.write_all(&self.buffer[..read]).map_err(write_error)?;
            written += read as u64;
        }
        file.flush().map_err(write_error)?;
        Ok(written)
    }

    /// Links `target` to the file at `source`; a symlink source is copied as a symlink
    /// (hard links to symlinks are valid tar but refused by [`Fs::hard_link`]).
    fn hard_link(&mut self, entry: &str, source: &FsPath, target: &FsPath) -> Result<(), TarError> {
        let meta = self
            .fs
            .symlink_metadata(source.as_path())
            .map_err(|source| entry_error(entry, source))?;
        if meta.kind == FileKind::Symlink {
            let link = self
                .fs
                .read_link(source.as_path())
                .map_err(|source| entry_error(entry, source))?;
            self.replace(entry, target, |fs| fs.symlink(&link, target.as_path()))
        } else {
            self.replace(entry, target, |fs| {
                fs.hard_link(source.as_path(), target.as_path())
            })
        }
    }

    /// Applies `.wh.<name>` or `.wh..wh..opq` at `rel`.
    fn whiteout(&mut self, entry: &str, rel: &Path, file_name: &str) -> Result<(), TarError> {
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = if parent_rel.as_os_str().is_empty() {
            self.dest.clone()
        } else {
            self.target(&parent_rel)?
        };
        if file_name == OPAQUE_WHITEOUT {
            match self.fs.symlink_metadata(parent.as_path()) {
                Ok(meta) if meta.kind == FileKind::Dir => {
                    self.clear_lower(entry, &parent, &parent_rel)?;
                }
                // Nothing below to hide.
                Ok(_) => {}
                Err(error) if error.is_not_found() => {}
                Err(error) => return Err(entry_error(entry, error)),
            }
        } else {
            let hidden = &file_name[WHITEOUT_PREFIX.len()..];
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(TarError::refused(entry, "a whiteout without a valid name"));
            }
            let hidden_rel = parent_rel.join(hidden);
            // A whiteout hides the layers below, never this layer's own entries.
            if !self.created.contains(&hidden_rel) {
                let target = self.target(&hidden_rel)?;
                self.clear(entry, &target)?;
            }
        }
        tracing::trace!(entry, "applied a whiteout");
        self.report.whiteouts += 1;
        Ok(())
    }

    /// Removes everything in `dir` that this archive did not write.
    fn clear_lower(&mut self, entry: &str, dir: &FsPath, dir_rel: &Path) -> Result<(), TarError> {
        let children = self
            .fs
            .read_dir(dir.as_path())
            .map_err(|source| entry_error(entry, source))?;
        for child in children {
            let child_rel = dir_rel.join(&child.name);
            let child_path = dir.join(Path::new(&child.name))?;
            if !self.created.contains(&child_rel) {
                self.clear(entry, &child_path)?;
            } else if child.kind == FileKind::Dir {
                self.clear_lower(entry, &child_path, &child_rel)?;
            }
        }
        Ok(())
    }

    /// Applies the deferred directory modes and mtimes, deepest first.
    fn finish(mut self) -> Result<UnpackReport, TarError> {
        for (rel, mode, mtime) in self.deferred_dirs.iter().rev() {
            let name = rel.display().to_string();
            let target = if rel.as_os_str().is_empty() {
                self.dest.clone()
            } else {
                self.target(rel)?
            };
            self.fs
                .set_permissions(target.as_path(), *mode)
                .map_err(|source| entry_error(&name, source))?;
            if let Some(mtime) = mtime {
                self.fs
                    .set_modified(target.as_path(), *mtime)
                    .map_err(|source| entry_error(&name, source))?;
            }
        }
        self.deferred_dirs.clear();
        Ok(self.report)
    }
}

fn entry_error(entry: &str, source: FsError) -> TarError {
    TarError::Entry {
        entry: entry.to_owned(),
        source,
    }
}

/// The entry name as a clean relative path (`None` for the archive root `./`), or why it is
/// refused.
fn clean_name(name: &Path) -> Result<Option<PathBuf>, &'static str> {
    if name.as_os_str().as_encoded_bytes().contains(&0) {
        return Err("the name contains a NUL byte");
    }
    let mut clean = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("the name contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("the name is absolute"),
        }
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

#[cfg(test)]
mod tests {
    use tar::Header;

    use super::*;
    use crate::conformance::{Env, read, tree_listing, write};

    /// A tar stream assembled header by header, so names the tar crate would refuse to
    /// write (`..`, absolute) can be crafted.
    struct Raw(Vec<u8>);

    impl Raw {
        fn new() -> Self {
            Self(Vec::new())
        }

        fn push(&mut self, header: &Header, data: &[u8]) {
            self.0.extend_from_slice(header.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0, pad));
        }

        /// An old-style (v7) header with raw name and link name bytes.
        fn entry(mut self, name: &str, kind: EntryType, link: &str, data: &[u8]) -> Self {
            let mut header = Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_mtime(0);
            header.set_entry_type(kind);
            header.set_cksum();
            self.push(&header, data);
            self
        }

        fn file(self, name: &str, data: &[u8]) -> Self {
            self.entry(name, EntryType::Regular, "", data)
        }

        fn dir(self, name: &str) -> Self {
            self.entry(name, EntryType::Directory, "", b"")
        }

        fn symlink(self, name: &str, target: &str) -> Self {
            self.entry(name, EntryType::Symlink, target, b"")
        }

        fn hard_link(self, name: &str, target: &str) -> Self {
            self.entry(name, EntryType::Link, target, b"")
        }

        /// A PAX extended header (ustar) carrying `path`, then a ustar file entry.
        fn pax_file(mut self, path: &str, data: &[u8]) -> Self {
            let record_body = format!(" path={path}\n");
            // The length prefix counts itself.
            let mut len = record_body.len() + 1;
            while format!("{len}{record_body}").len() != len {
                len += 1;
            }
            let record = format!("{len}{record_body}");
            let mut pax = Header::new_ustar();
            pax.set_path("PaxHeaders/x").unwrap();
            pax.set_size(record.len() as u64);
            pax.set_entry_type(EntryType::XHeader);
            pax.set_cksum();
            self.push(&pax, record.as_bytes());
            let mut header = Header::new_ustar();
            header.set_path("truncated").unwrap();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_entry_type(EntryType::Regular);
            header.set_cksum();
            self.push(&header, data);
            self
        }

        fn finish(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0, 1024));
            self.0
        }
    }

    fn unpack_into(env: &Env, dest: &str, tar: &[u8]) -> Result<UnpackReport, TarError> {
        unpack(&*env.fs, Path::new(dest), tar, &UnpackOptions::default())
    }

    #[track_caller]
    fn assert_refused(result: Result<UnpackReport, TarError>, name: &str) {
        match result {
            Err(TarError::Refused { entry, .. }) => assert_eq!(entry, name),
            other => panic!("expected entry {name:?} to be refused, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_escape(result: Result<UnpackReport, TarError>, name: &str) {
        match result {
            Err(TarError::Entry {
                entry,
                source: FsError::Escape { .. },
            }) => assert_eq!(entry, name),
            other => panic!("expected entry {name:?} to escape, got {other:?}"),
        }
    }

    /// Runs a hostile unpack and checks nothing outside changed and no `evil` appeared.
    fn hostile(env: &Env, attempt: impl FnOnce()) {
        let before = env.outside_state();
        attempt();
        assert_eq!(
            before,
            env.outside_state(),
            "something outside the root changed"
        );
        env.assert_outside_intact();
        let listing = tree_listing(&*env.fs);
        assert!(
            listing.iter().all(|line| !line.contains("evil")),
            "an evil entry was written: {listing:?}"
        );
    }

    fn outside_abs(env: &Env) -> String {
        env.outside_abs().to_str().unwrap().to_owned()
    }

    fn p(path: &str) -> &Path {
        Path::new(path)
    }

    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod real {
                $( #[test] fn $name() { super::$name(&crate::conformance::real_env()); } )*
            }
            mod mem {
                $( #[test] fn $name() { super::$name(&crate::conformance::mem_env()); } )*
            }
        };
    }

    on_both_backends! {
        refuses_dotdot_names,
        refuses_absolute_names,
        symlink_to_root_then_write,
        symlink_dotdot_then_write,
        symlink_to_outside_then_write,
        hard_link_escapes,
        special_entries,
        file_replaces_outside_symlink,
        kinds_replace_each_other,
        round_trip,
        reproducible,
        whiteouts,
        whiteouts_disabled,
        pax_long_name,
        tar_writer_entries,
    }

    fn refuses_dotdot_names(env: &Env) {
        env.fs.create_dir_all(p("sub/dir")).unwrap();
        hostile(env, || {
            for name in [
                "../evil",
                "a/../../evil",
                "a/../evil",
                "./../evil",
                "../../../evil",
            ] {
                let tar = Raw::new().file(name, b"pwned").finish();
                assert_refused(unpack_into(env, ".", &tar), name);
                assert_refused(unpack_into(env, "sub/dir", &tar), name);
            }
            let tar = Raw::new().dir("../evildir/").finish();
            assert_refused(unpack_into(env, ".", &tar), "../evildir/");
        });
    }

    fn refuses_absolute_names(env: &Env) {
        hostile(env, || {
            for name in ["/abs/evil", "/evil", "//evil"] {
                let tar = Raw::new().file(name, b"pwned").finish();
                assert_refused(unpack_into(env, ".", &tar), name);
            }
            let outside = format!("{}/evil", outside_abs(env));
            let tar = Raw::new().file(&outside, b"pwned").finish();
            assert_refused(unpack_into(env, ".", &tar), &outside);
        });
    }

    fn symlink_to_root_then_write(env: &Env) {
        hostile(env, || {
            let tar = Raw::new()
                .symlink("l", "/")
                .file("l/etc/evil", b"pwned")
                .finish();
            assert_escape(unpack_into(env, ".", &tar), "l/etc/evil");
            let tar = Raw::new().symlink("l2", "/").dir("l2/tmp/evil/").finish();
            assert_escape(unpack_into(env, ".", &tar), "l2/tmp/evil/");
        });
        // The symlink itself is stored verbatim.
        assert_eq!(env.fs.read_link(p("l")).unwrap(), PathBuf::from("/"));
    }

    fn symlink_dotdot_then_write(env: &Env) {
        hostile(env, || {
            let tar = Raw::new()
                .symlink("l", "../../..")
                .file("l/evil", b"pwned")
                .finish();
            assert_escape(unpack_into(env, ".", &tar), "l/evil");
            let tar = Raw::new()
                .dir("d/")
                .symlink("d/up", "..")
                .symlink("d/upup", "up/..")
                .file("d/upup/evil", b"pwned")
                .finish();
            assert_escape(unpack_into(env, ".", &tar), "d/upup/evil");
        });
    }

    fn symlink_to_outside_then_write(env: &Env) {
        let outside = outside_abs(env);
        hostile(env, || {
            for target in [outside.as_str(), "../outside"] {
                let tar = Raw::new()
                    .symlink("out", target)
                    .file("out/secret", b"pwned")
                    .finish();
                assert_escape(unpack_into(env, ".", &tar), "out/secret");
                let tar = Raw::new()
                    .symlink("out2", target)
                    .file("out2/evil", b"pwned")
                    .finish();
                assert_escape(unpack_into(env, ".", &tar), "out2/evil");
                env.fs.remove_file(p("out")).unwrap();
                env.fs.remove_file(p("out2")).unwrap();
            }
        });
    }

    fn hard_link_escapes(env: &Env) {
        let outside = outside_abs(env);
        hostile(env, || {
            let tar = Raw::new()
                .hard_link("evil1", "../../outside/secret")
                .finish();
            assert_refused(unpack_into(env, ".", &tar), "evil1");
            let tar = Raw::new().hard_link("evil2", "/etc/passwd").finish();
            assert_refused(unpack_into(env, ".", &tar), "evil2");
            let abs = format!("{outside}/secret");
            let tar = Raw::new().hard_link("evil3", &abs).finish();
            assert_refused(unpack_into(env, ".", &tar), "evil3");
            let tar = Raw::new()
                .symlink("out", &outside)
                .hard_link("evil4", "out/secret")
                .finish();
            assert_escape(unpack_into(env, ".", &tar), "evil4");
        });
        // A hard link to a symlink pointing outside becomes the same symlink: nothing is
        // linked to the outside file.
        let before = env.outside_state();
        let tar = Raw::new()
            .symlink("s", &format!("{outside}/secret"))
            .hard_link("h", "s")
            .finish();
        let report = unpack_into(env, ".", &tar).unwrap();
        assert_eq!(report.hardlinks, 1);
        assert_eq!(
            env.fs.read_link(p("h")).unwrap(),
            PathBuf::from(format!("{outside}/secret"))
        );
        assert_eq!(before, env.outside_state());
    }

    fn special_entries(env: &Env) {
        let tar = Raw::new()
            .entry("dev/null", EntryType::Char, "", b"")
            .entry("dev/sda", EntryType::Block, "", b"")
            .entry("fifo", EntryType::Fifo, "", b"")
            .file("ok", b"fine")
            .finish();
        hostile(env, || {
            assert_refused(unpack_into(env, ".", &tar), "dev/null");
        });
        let options = UnpackOptions {
            skip_special: true,
            ..UnpackOptions::default()
        };
        let report = unpack(&*env.fs, p("."), &tar[..], &options).unwrap();
        assert_eq!(report.skipped, vec!["dev/null", "dev/sda", "fifo"]);
        assert_eq!(report.files, 1);
        assert!(!env.fs.exists(p("dev")).unwrap());
        assert!(!env.fs.exists(p("fifo")).unwrap());
        assert_eq!(read(&*env.fs, "ok"), b"fine");
    }

    fn file_replaces_outside_symlink(env: &Env) {
        let outside = outside_abs(env);
        let before = env.outside_state();
        // From the same archive.
        let tar = Raw::new()
            .symlink("s", &format!("{outside}/secret"))
            .file("s", b"replaced")
            .finish();
        unpack_into(env, ".", &tar).unwrap();
        assert_eq!(
            env.fs.symlink_metadata(p("s")).unwrap().kind,
            FileKind::File
        );
        assert_eq!(read(&*env.fs, "s"), b"replaced");
        // Already in the destination, relative.
        env.fs.symlink(p("../outside/secret"), p("r")).unwrap();
        env.fs.symlink(p("../outside"), p("d")).unwrap();
        let tar = Raw::new()
            .file("r", b"replaced too")
            .dir("d/")
            .file("d/secret", b"inside now")
            .finish();
        unpack_into(env, ".", &tar).unwrap();
        assert_eq!(read(&*env.fs, "r"), b"replaced too");
        assert_eq!(env.fs.symlink_metadata(p("d")).unwrap().kind, FileKind::Dir);
        assert_eq!(read(&*env.fs, "d/secret"), b"inside now");
        assert_eq!(before, env.outside_state());
        env.assert_outside_intact();
    }

    fn kinds_replace_each_other(env: &Env) {
        let fs = &*env.fs;
        fs.create_dir_all(p("dir_then_file/sub")).unwrap();
        write(fs, "dir_then_file/sub/x", b"x");
        write(fs, "file_then_dir", b"f");
        write(fs, "file_then_link", b"f");
        fs.hard_link(p("file_then_link"), p("other_name")).unwrap();
        let tar = Raw::new()
            .file("dir_then_file", b"now a file")
            .dir("file_then_dir/")
            .symlink("file_then_link", "other_name")
            .file("other_name", b"new inode")
            .finish();
        unpack_into(env, ".", &tar).unwrap();
        assert_eq!(read(fs, "dir_then_file"), b"now a file");
        assert_eq!(fs.metadata(p("file_then_dir")).unwrap().kind, FileKind::Dir);
        assert_eq!(
            fs.symlink_metadata(p("file_then_link")).unwrap().kind,
            FileKind::Symlink
        );
        // A file entry replaces the name: it does not write into the old shared inode.
        assert_eq!(read(fs, "other_name"), b"new inode");
        assert_eq!(fs.metadata(p("other_name")).unwrap().nlink, 1);
    }

    const LONG_DIR: &str = "a-directory-name-that-is-long/another-directory-name-that-is-long/yet-another-long-directory-name";

    /// A tree exercising every kind of entry.
    fn build_tree(fs: &dyn Fs, base: &str) {
        let at = |rest: &str| PathBuf::from(format!("{base}/{rest}"));
        fs.create_dir_all(&at("dir")).unwrap();
        fs.set_permissions(&at("dir"), 0o750).unwrap();
        write(fs, &format!("{base}/dir/file"), b"content");
        fs.set_permissions(&at("dir/file"), 0o640).unwrap();
        write(fs, &format!("{base}/exec"), b"#!/bin/sh\n");
        fs.set_permissions(&at("exec"), 0o755).unwrap();
        write(fs, &format!("{base}/empty"), b"");
        fs.set_permissions(&at("empty"), 0o600).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        write(fs, &format!("{base}/big"), &big);
        fs.set_permissions(&at("big"), 0o644).unwrap();
        fs.symlink(p("/etc/passwd"), &at("abs")).unwrap();
        fs.symlink(p("dir/file"), &at("rel")).unwrap();
        fs.symlink(p("../nowhere"), &at("dangling")).unwrap();
        fs.hard_link(&at("dir/file"), &at("hard")).unwrap();
        fs.create_dir_all(&at(LONG_DIR)).unwrap();
        fs.set_permissions(&at(LONG_DIR), 0o755).unwrap();
        let long_file = format!("{LONG_DIR}/and-a-file-name-long-enough-to-need-an-extension.txt");
        write(fs, &format!("{base}/{long_file}"), b"long");
        fs.set_permissions(&at(&long_file), 0o644).unwrap();
        fs.symlink(Path::new(&long_file), &at("long-link")).unwrap();
    }

    /// Path, kind, mode, content or target of everything under `base`, relative to it.
    fn describe(fs: &dyn Fs, base: &str) -> Vec<String> {
        fs.walk(p(base))
            .unwrap()
            .into_iter()
            .map(|entry| {
                let rel = entry.path.strip_prefix(base).unwrap().display().to_string();
                let meta = &entry.metadata;
                let what = match meta.kind {
                    FileKind::File => format!("{:?}", fs.read(&entry.path).unwrap().len()),
                    FileKind::Symlink => format!("{:?}", fs.read_link(&entry.path).unwrap()),
                    _ => String::new(),
                };
                let mode = if meta.kind == FileKind::Symlink {
                    0
                } else {
                    meta.mode
                };
                format!("{rel} {:?} {mode:o} {what}", meta.kind)
            })
            .collect()
    }

    fn round_trip(env: &Env) {
        let fs = &*env.fs;
        build_tree(fs, "src");
        let tar = pack(fs, p("src"), Vec::new(), &PackOptions::default()).unwrap();
        assert!(
            tar.windows(13).any(|w| w == b"././@LongLink"),
            "long names need GNU extension entries"
        );
        let report = unpack_into(env, "dst", &tar).unwrap();
        assert_eq!(describe(fs, "src"), describe(fs, "dst"));
        assert_eq!(
            fs.read(p("dst/big")).unwrap(),
            fs.read(p("src/big")).unwrap()
        );
        let (first, second) = (
            fs.metadata(p("dst/dir/file")).unwrap(),
            fs.metadata(p("dst/hard")).unwrap(),
        );
        assert_eq!((first.dev, first.ino), (second.dev, second.ino));
        assert_eq!(first.nlink, 2);
        assert_eq!(report.hardlinks, 1);
        assert_eq!(report.symlinks, 4);
        assert_eq!(report.files, 5);
        assert_eq!(report.dirs, 4);
        assert_eq!(report.bytes, 300_000 + 7 + 10 + 4);
        // Directory entries end with a slash.
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect();
        assert!(names.contains(&"dir/".to_owned()), "{names:?}");
        assert_eq!(
            names.first().map(String::as_str),
            Some("a-directory-name-that-is-long/")
        );
    }

    fn reproducible(env: &Env) {
        let fs = &*env.fs;
        build_tree(fs, "src");
        let options = PackOptions {
            mtime: Some(0),
            uid_gid: Some((0, 0)),
        };
        let first = pack(fs, p("src"), Vec::new(), &options).unwrap();
        let unnormalised = pack(fs, p("src"), Vec::new(), &PackOptions::default()).unwrap();
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567_890);
        for entry in fs.walk(p("src")).unwrap() {
            if entry.metadata.kind != FileKind::Symlink {
                fs.set_modified(&entry.path, when).unwrap();
            }
        }
        let second = pack(fs, p("src"), Vec::new(), &options).unwrap();
        assert!(first == second, "the same tree packed to different bytes");
        let unnormalised_again = pack(fs, p("src"), Vec::new(), &PackOptions::default()).unwrap();
        assert!(
            unnormalised != unnormalised_again,
            "mtimes were not kept without options"
        );
        let mut archive = tar::Archive::new(&first[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 0);
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            assert_eq!(header.username_bytes(), Some(&b""[..]));
        }
    }

    fn whiteouts(env: &Env) {
        let fs = &*env.fs;
        // The lower layer.
        fs.create_dir_all(p("layer/a")).unwrap();
        write(fs, "layer/a/file", b"lower");
        write(fs, "layer/a/keep", b"lower");
        fs.create_dir_all(p("layer/b/deep")).unwrap();
        write(fs, "layer/b/deep/x", b"lower");
        write(fs, "layer/c", b"lower");
        fs.create_dir_all(p("layer/opq/sub")).unwrap();
        write(fs, "layer/opq/old", b"lower");
        write(fs, "layer/opq/sub/old", b"lower");
        fs.symlink(p("../a"), p("layer/opq/link")).unwrap();
        // The upper layer.
        let tar = Raw::new()
            .file("a/.wh.file", b"")
            .file(".wh.b", b"")
            .file(".wh.c", b"")
            .file(".wh.never-existed", b"")
            .dir("opq/")
            .file("opq/.wh..wh..opq", b"")
            .file("opq/new", b"upper")
            .dir("opq/sub/")
            .file("opq/sub/new", b"upper")
            .finish();
        let options = UnpackOptions {
            whiteouts: true,
            ..UnpackOptions::default()
        };
        let report = unpack(fs, p("layer"), &tar[..], &options).unwrap();
        assert_eq!(report.whiteouts, 5);
        assert_eq!(report.files, 2);
        let listing: Vec<String> = fs
            .walk(p("layer"))
            .unwrap()
            .into_iter()
            .map(|e| e.path.display().to_string())
            .collect();
        assert_eq!(
            listing,
            vec![
                "layer/a",
                "layer/a/keep",
                "layer/opq",
                "layer/opq/new",
                "layer/opq/sub",
                "layer/opq/sub/new"
            ]
        );
        // The opaque marker also hides content when it comes after this layer's entries.
        let tar = Raw::new()
            .dir("opq/")
            .file("opq/newer", b"upper")
            .file("opq/.wh..wh..opq", b"")
            .finish();
        unpack(fs, p("layer"), &tar[..], &options).unwrap();
        let listing: Vec<String> = fs
            .read_dir(p("layer/opq"))
            .unwrap()
            .into_iter()
            .map(|e| e.name.to_string_lossy().into_owned())
            .collect();
        assert_eq!(listing, vec!["newer"]);
    }

    fn whiteouts_disabled(env: &Env) {
        let fs = &*env.fs;
        write(fs, "c", b"kept");
        let tar = Raw::new().file(".wh.c", b"").finish();
        let report = unpack_into(env, ".", &tar).unwrap();
        assert_eq!(report.whiteouts, 0);
        assert_eq!(read(fs, "c"), b"kept");
        assert!(fs.exists(p(".wh.c")).unwrap());
    }

    fn pax_long_name(env: &Env) {
        let long = format!("{LONG_DIR}/{LONG_DIR}/file");
        let tar = Raw::new().pax_file(&long, b"pax").finish();
        unpack_into(env, "x", &tar).unwrap();
        assert_eq!(read(&*env.fs, &format!("x/{long}")), b"pax");
        // A PAX path is checked like any other name.
        let tar = Raw::new().pax_file("../evil", b"pwned").finish();
        hostile(env, || {
            assert_refused(unpack_into(env, ".", &tar), "../evil")
        });
    }

    fn tar_writer_entries(env: &Env) {
        // A writer holding etc/ (with `mode`), etc/hosts and the symlink etc/link.
        let etc_writer = |mode| {
            let mut writer = TarWriter::new(Vec::new(), PackOptions::default());
            writer.append_dir(p("etc"), mode).unwrap();
            writer
                .append_file(p("etc/hosts"), 0o644, b"127.0.0.1 localhost\n")
                .unwrap();
            writer
                .append_symlink(p("etc/link"), p("/etc/hosts"))
                .unwrap();
            writer
        };
        let mut writer = etc_writer(0o755);
        writer
            .append_reader(p("short"), 0o600, 10, &b"abc"[..])
            .unwrap_err();
        assert!(matches!(
            writer.append_file(p("../evil"), 0o644, b""),
            Err(TarError::Fs(FsError::InvalidPath { .. }))
        ));
        let writer = etc_writer(0o700);
        let tar = writer.finish().unwrap();
        unpack_into(env, ".", &tar).unwrap();
        assert_eq!(read(&*env.fs, "etc/hosts"), b"127.0.0.1 localhost\n");
        assert_eq!(env.fs.metadata(p("etc")).unwrap().mode, 0o700);
        assert_eq!(
            env.fs.read_link(p("etc/link")).unwrap(),
            PathBuf::from("/etc/hosts")
        );
    }

    /// A streamed entry reads back like any other, a long name included; a wrong byte
    /// count is an error.
    #[test]
    fn streamed_entries_read_back() {
        let long = format!("blobs/sha512/{}", "a".repeat(128));
        let mut writer = TarWriter::new(Vec::new(), PackOptions::default());
        writer
            .append_streamed::<TarError>(p(&long), 0o644, 5, |out| {
                out.write_all(b"hello")
                    .map_err(|e| TarError::io("streaming", e))?;
                Ok(5)
            })
            .unwrap();
        writer.append_file(p("next"), 0o644, b"after").unwrap();
        let tar = writer.finish().unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut entries = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            entries.push((entry.path().unwrap().display().to_string(), data));
        }
        assert_eq!(
            entries,
            vec![
                (long, b"hello".to_vec()),
                ("next".to_owned(), b"after".to_vec())
            ]
        );
        let mut writer = TarWriter::new(Vec::new(), PackOptions::default());
        assert!(
            writer
                .append_streamed::<TarError>(p("short"), 0o644, 3, |_| Ok(2))
                .is_err()
        );
    }

    /// A writer dropped part way (a failure) does not end the stream: no end-of-archive
    /// blocks make a cut stream look complete.
    #[test]
    fn a_writer_dropped_part_way_adds_no_end_blocks() {
        let mut out = Vec::new();
        {
            let mut writer = TarWriter::new(&mut out, PackOptions::default());
            writer.append_file(p("a"), 0o644, b"x").unwrap();
        }
        // One header and one block of data, nothing after.
        assert_eq!(out.len(), 1024);
    }

    /// Device nodes and FIFOs on disk are refused when packing.
    #[test]
    #[allow(clippy::disallowed_methods)]
    fn pack_refuses_fifo() {
        let env = crate::conformance::real_env();
        let root = env.sentinel.as_ref().unwrap().root.clone();
        let made = std::process::Command::new("mkfifo")
            .arg(root.join("pipe"))
            .status();
        if !made.is_ok_and(|status| status.success()) {
            eprintln!("mkfifo is unavailable: skipped");
            return;
        }
        match pack(&*env.fs, p("."), Vec::new(), &PackOptions::default()) {
            Err(TarError::Special { path }) => assert!(path.ends_with("pipe")),
            other => panic!("expected the FIFO to be refused, got {other:?}"),
        }
    }
}
