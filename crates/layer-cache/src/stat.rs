//! The stat cache: file content digests remembered by (path, size, mtime, inode, device), so
//! that hashing an unchanged build context reads no file.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sealer_fs_abstraction::Metadata;
use sealer_image_store::Digest;
use serde::{Deserialize, Serialize};

/// The version of the persisted format; a file of another version is ignored.
const FORMAT_VERSION: u32 = 1;

/// A file modified this close to (or after) the moment it was read may have changed again
/// within the same timestamp tick without its mtime moving: its digest is not remembered
/// (git calls such entries "racily clean"). Filesystems with whole-second timestamps (the
/// nanoseconds read 0) get a wider window.
const RACY_WINDOW: Duration = Duration::from_millis(100);
const RACY_WINDOW_COARSE: Duration = Duration::from_secs(2);

/// Counters of one hashing session, for output and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Regular files whose content digest was needed.
    pub files: u64,
    /// Of those, digests taken from the stat cache (the file was not read).
    pub reused: u64,
    /// Of those, files read and hashed.
    pub read: u64,
    /// Bytes read to hash them.
    pub bytes_read: u64,
}

/// A modification time as stored: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Mtime(i64, u32);

impl Mtime {
    fn of(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Self(
                i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                after.subsec_nanos(),
            ),
            Err(before) => {
                let before = before.duration();
                let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                match before.subsec_nanos() {
                    0 => Self(-secs, 0),
                    nanos => Self(-secs - 1, 1_000_000_000 - nanos),
                }
            }
        }
    }
}

/// One remembered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime: Mtime,
    ino: u64,
    dev: u64,
    digest: Digest,
}

impl StatEntry {
    fn matches(&self, metadata: &Metadata) -> bool {
        self.size == metadata.len
            && Some(self.mtime) == metadata.modified.map(Mtime::of)
            && self.ino == metadata.ino
            && self.dev == metadata.dev
    }
}

/// The persisted form.
#[derive(Serialize, Deserialize)]
struct StatFile {
    version: u32,
    entries: BTreeMap<String, StatEntry>,
}

/// File content digests keyed by path relative to the build context, valid while the file's
/// size, mtime (to the nanosecond), inode and device are unchanged.
///
/// Load it with [`LayerCache::load_stat_cache`](crate::LayerCache::load_stat_cache) (one per
/// build context, stored in the image store), pass it to every
/// [`InputHasher::add_path`](crate::InputHasher::add_path) of the build, and save it with
/// [`LayerCache::save_stat_cache`](crate::LayerCache::save_stat_cache) (a no-op when
/// nothing changed). `StatCache::new()` is an in-memory cache that is never persisted.
///
/// Entries are only hints: every use re-checks the file's metadata, so a lost or stale
/// entry costs one read, never a wrong digest. Entries for files that vanished are dropped
/// when the directory holding them is hashed again.
#[derive(Debug, Clone, Default)]
pub struct StatCache {
    entries: BTreeMap<PathBuf, StatEntry>,
    dirty: bool,
    stats: HashStats,
}

impl StatCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many files it remembers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it remembers no file.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What hashing through this cache did since it was created or loaded.
    pub fn stats(&self) -> HashStats {
        self.stats
    }

    /// Whether it changed since it was loaded or saved.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The remembered digest of `path` if its metadata still matches.
    pub(crate) fn lookup(&mut self, path: &Path, metadata: &Metadata) -> Option<Digest> {
        self.stats.files += 1;
        let entry = self.entries.get(path)?;
        if entry.matches(metadata) {
            self.stats.reused += 1;
            Some(entry.digest.clone())
        } else {
            None
        }
    }

    /// Records that `path` (with `metadata`, taken before reading) hashed to `digest`.
    /// `started` is when reading began, `unchanged` whether its metadata was the same after
    /// reading; a racily modified or changing file is not remembered.
    pub(crate) fn record(
        &mut self,
        path: &Path,
        metadata: &Metadata,
        digest: &Digest,
        bytes_read: u64,
        started: SystemTime,
        unchanged: bool,
    ) {
        self.stats.read += 1;
        self.stats.bytes_read += bytes_read;
        let stable = metadata
            .modified
            .filter(|_| unchanged)
            .filter(|modified| !is_racy(*modified, started));
        match stable {
            Some(modified) => {
                let entry = StatEntry {
                    size: metadata.len,
                    mtime: Mtime::of(modified),
                    ino: metadata.ino,
                    dev: metadata.dev,
                    digest: digest.clone(),
                };
                if self.entries.get(path) != Some(&entry) {
                    self.entries.insert(path.to_path_buf(), entry);
                    self.dirty = true;
                }
            }
            None => {
                tracing::debug!(path = %path.display(), "file changed recently: its digest is not remembered");
                if self.entries.remove(path).is_some() {
                    self.dirty = true;
                }
            }
        }
    }

    /// Drops the entries below the directory `dir` (`.` for the root) that are not in
    /// `seen`: the files a complete walk of `dir` just found.
    pub(crate) fn forget_missing_below(&mut self, dir: &Path, seen: &[&Path]) {
        let seen: HashSet<&Path> = seen.iter().copied().collect();
        let below: Box<dyn Iterator<Item = &PathBuf>> = if dir == Path::new(".") {
            Box::new(self.entries.keys())
        } else {
            // Paths order by component, so everything below `dir` follows it contiguously.
            Box::new(
                self.entries
                    .range::<Path, _>((Bound::Included(dir), Bound::Unbounded))
                    .map(|(path, _)| path)
                    .take_while(|path| path.starts_with(dir)),
            )
        };
        let gone: Vec<PathBuf> = below
            .filter(|path| !seen.contains(path.as_path()))
            .cloned()
            .collect();
        for path in gone {
            self.entries.remove(&path);
            self.dirty = true;
        }
    }

    /// Decodes a persisted cache; `None` when it is not one of this version.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let file: StatFile = serde_json::from_slice(bytes).ok()?;
        if file.version != FORMAT_VERSION {
            return None;
        }
        Some(Self {
            entries: file
                .entries
                .into_iter()
                .map(|(path, entry)| (PathBuf::from(path), entry))
                .collect(),
            dirty: false,
            stats: HashStats::default(),
        })
    }

    /// Encodes the cache (entries whose path is not UTF-8 are left out).
    pub(crate) fn encode(&self) -> serde_json::Result<Vec<u8>> {
        let file = StatFile {
            version: FORMAT_VERSION,
            entries: self
                .entries
                .iter()
                .filter_map(|(path, entry)| Some((path.to_str()?.to_owned(), entry.clone())))
                .collect(),
        };
        serde_json::to_vec(&file)
    }

    /// Marks the cache as saved.
    pub(crate) fn mark_saved(&mut self) {
        self.dirty = false;
    }
}

/// Whether a file modified at `modified` may have changed again unnoticed while it was read
/// from `started` on.
fn is_racy(modified: SystemTime, started: SystemTime) -> bool {
    let window = if Mtime::of(modified).1 == 0 {
        RACY_WINDOW_COARSE
    } else {
        RACY_WINDOW
    };
    match started.duration_since(modified) {
        Ok(age) => age < window,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealer_fs_abstraction::FileKind;

    fn metadata(len: u64, modified: SystemTime) -> Metadata {
        Metadata {
            kind: FileKind::File,
            len,
            mode: 0o644,
            modified: Some(modified),
            dev: 1,
            ino: 7,
            nlink: 1,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn remembers_stable_files_and_checks_every_field() {
        let old = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        let now = SystemTime::now();
        let digest = Digest::sha256(b"x");
        let mut cache = StatCache::new();
        let path = Path::new("a/b");
        cache.record(path, &metadata(1, old), &digest, 1, now, true);
        assert!(cache.is_dirty());
        assert_eq!(cache.lookup(path, &metadata(1, old)), Some(digest.clone()));
        assert_eq!(cache.lookup(path, &metadata(2, old)), None);
        let touched = old + Duration::from_nanos(1);
        assert_eq!(cache.lookup(path, &metadata(1, touched)), None);
        let mut moved = metadata(1, old);
        moved.ino = 8;
        assert_eq!(cache.lookup(path, &moved), None);
        assert_eq!(
            cache.stats(),
            HashStats {
                files: 4,
                reused: 1,
                read: 1,
                bytes_read: 1
            }
        );
    }

    #[test]
    fn racy_or_changing_files_are_not_remembered() {
        let now = SystemTime::now();
        let digest = Digest::sha256(b"x");
        let mut cache = StatCache::new();
        let fresh = now - Duration::from_millis(10);
        cache.record(
            Path::new("fresh"),
            &metadata(1, fresh),
            &digest,
            1,
            now,
            true,
        );
        let coarse =
            UNIX_EPOCH + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap().as_secs() - 1);
        cache.record(
            Path::new("coarse"),
            &metadata(1, coarse),
            &digest,
            1,
            now,
            true,
        );
        let future = now + Duration::from_secs(60);
        cache.record(
            Path::new("future"),
            &metadata(1, future),
            &digest,
            1,
            now,
            true,
        );
        let old = now - Duration::from_secs(60);
        cache.record(
            Path::new("changing"),
            &metadata(1, old),
            &digest,
            1,
            now,
            false,
        );
        assert!(cache.is_empty());
        cache.record(Path::new("old"), &metadata(1, old), &digest, 1, now, true);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn forgets_vanished_files_below_a_directory_only() {
        let old = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let now = SystemTime::now();
        let digest = Digest::sha256(b"x");
        let mut cache = StatCache::new();
        for path in ["a/x", "a/y", "a/z/w", "a0", "b/x"] {
            cache.record(Path::new(path), &metadata(1, old), &digest, 1, now, true);
        }
        cache.forget_missing_below(Path::new("a"), &[Path::new("a/y")]);
        let left: Vec<&Path> = cache.entries.keys().map(PathBuf::as_path).collect();
        assert_eq!(left, [Path::new("a/y"), Path::new("a0"), Path::new("b/x")]);
        cache.forget_missing_below(Path::new("."), &[Path::new("b/x")]);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn round_trips_through_its_encoding() {
        let before_epoch = UNIX_EPOCH - Duration::new(5, 1);
        let mut cache = StatCache::new();
        let digest = Digest::sha256(b"x");
        cache.record(
            Path::new("p"),
            &metadata(3, before_epoch),
            &digest,
            3,
            SystemTime::now(),
            true,
        );
        let decoded = StatCache::decode(&cache.encode().unwrap()).unwrap();
        assert_eq!(decoded.entries, cache.entries);
        assert!(!decoded.is_dirty());
        assert!(StatCache::decode(b"{\"version\":99,\"entries\":{}}").is_none());
        assert!(StatCache::decode(b"garbage").is_none());
    }
}
