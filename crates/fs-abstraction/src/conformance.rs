//! One behaviour suite run on every [`Fs`] backend: [`RealFs`](crate::RealFs) on a temporary
//! directory and [`MemFs`](crate::MemFs) run the very same case functions, so the in-memory
//! tree cannot drift from the disk. Another backend can run it with [`run_all`] (feature
//! `conformance`).
//!
//! Escape cases point symlinks at a directory outside the root. On disk that directory holds
//! sentinel files which must be unchanged after every attempt (see [`Env::guarded`]); for
//! an in-memory tree there is no outside, and the cases only assert the refusal.

// Test code: a failed expectation is a panic with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
// Test helpers inspect the real outside directory directly.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::any::Any;
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{
    AtomicFile, FileKind, Fs, FsError, TEMP_PREFIX, WRITE_BEHIND_CHUNK, WriteBehind, WriteFile,
};

/// A fresh backend for one case.
pub struct Env {
    /// The filesystem under test, empty.
    pub fs: Arc<dyn Fs>,
    /// For disk backends: where the root and its sentinel sibling live.
    pub sentinel: Option<Sentinel>,
    /// Keeps temporary directories alive for the case.
    pub guard: Box<dyn Any>,
}

/// A disk layout `parent/{root, outside}`: `outside` holds sentinel files and nothing in
/// `parent` but `root` may change while a case runs.
pub struct Sentinel {
    /// The directory holding the root and the outside directory.
    pub parent: PathBuf,
    /// The root directory of the [`Fs`] (excluded from the comparison).
    pub root: PathBuf,
    /// The outside directory, holding sentinel files.
    pub outside: PathBuf,
}

/// Name of the outside directory, sibling of the root, in disk layouts.
pub const OUTSIDE: &str = "outside";

impl Env {
    /// The outside directory as an absolute path (an arbitrary one for in-memory trees).
    pub fn outside_abs(&self) -> PathBuf {
        match &self.sentinel {
            Some(sentinel) => sentinel.outside.clone(),
            None => PathBuf::from("/").join(OUTSIDE),
        }
    }

    /// The outside directory relative to the root: `../outside`.
    pub fn outside_rel(&self) -> PathBuf {
        Path::new("..").join(OUTSIDE)
    }

    /// Runs `attempt`, which must only contain refused operations, and asserts that nothing
    /// changed: outside the root (disk backends) nor inside it (every backend).
    pub fn guarded<T>(&self, attempt: impl FnOnce() -> T) -> T {
        let before = self.sentinel.as_ref().map(|s| snapshot(&s.parent, &s.root));
        let inside_before = tree_listing(&*self.fs);
        let result = attempt();
        if let (Some(sentinel), Some(before)) = (&self.sentinel, before) {
            let after = snapshot(&sentinel.parent, &sentinel.root);
            assert_eq!(before, after, "something outside the root changed");
        }
        assert_eq!(inside_before, tree_listing(&*self.fs), "the tree changed");
        result
    }

    /// Everything beside the root (disk backends), to compare before and after an attempt
    /// that may legitimately change the tree inside.
    pub fn outside_state(&self) -> Option<BTreeMap<PathBuf, String>> {
        self.sentinel.as_ref().map(|s| snapshot(&s.parent, &s.root))
    }

    /// Asserts that the sentinel files outside the root are as [`populate_outside`] made them.
    pub fn assert_outside_intact(&self) {
        if let Some(sentinel) = &self.sentinel {
            assert_eq!(
                std::fs::read(sentinel.outside.join("secret")).unwrap(),
                b"secret"
            );
            assert_eq!(
                std::fs::read(sentinel.outside.join("dir/file")).unwrap(),
                b"inner"
            );
        }
    }
}

/// Creates the sentinel files in `outside`.
pub fn populate_outside(outside: &Path) {
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::fs::write(outside.join("dir/file"), b"inner").unwrap();
}

/// Everything below `dir` except `skip` (kind, mode, content or target), symlinks not
/// followed.
pub fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path == skip {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let description = if meta.file_type().is_symlink() {
                format!("symlink {:?}", std::fs::read_link(&path).unwrap())
            } else if meta.is_dir() {
                pending.push(path.clone());
                format!("dir {:o}", meta.mode())
            } else {
                format!(
                    "file {:o} {} {:?}",
                    meta.mode(),
                    meta.nlink(),
                    std::fs::read(&path).unwrap()
                )
            };
            out.insert(path, description);
        }
    }
    out
}

/// Every entry of the tree through the [`Fs`] itself: path, kind, length, mode, target.
pub fn tree_listing(fs: &dyn Fs) -> Vec<String> {
    fs.walk(Path::new("."))
        .unwrap()
        .into_iter()
        .map(|entry| {
            let meta = &entry.metadata;
            let target = if meta.kind == FileKind::Symlink {
                format!(" -> {:?}", fs.read_link(&entry.path).unwrap())
            } else {
                String::new()
            };
            let len = if meta.kind == FileKind::Dir {
                0
            } else {
                meta.len
            };
            format!(
                "{} {:?} {len} {:o}{target}",
                entry.path.display(),
                meta.kind,
                meta.mode
            )
        })
        .collect()
}

/// A disk backend: `RealFs` rooted in a fresh temporary directory, with sentinels beside.
#[cfg(test)]
pub fn real_env() -> Env {
    let temp = tempfile::TempDir::new().unwrap();
    let parent = temp.path().to_path_buf();
    let root = parent.join("root");
    let outside = parent.join(OUTSIDE);
    populate_outside(&outside);
    let fs = crate::RealFs::create_root(&root).unwrap();
    Env {
        fs: Arc::new(fs),
        sentinel: Some(Sentinel {
            parent,
            root,
            outside,
        }),
        guard: Box::new(temp),
    }
}

/// An in-memory backend.
pub fn mem_env() -> Env {
    Env {
        fs: Arc::new(crate::MemFs::new()),
        sentinel: None,
        guard: Box::new(()),
    }
}

/// Runs every case on a fresh environment from `make`; panics on the first failure.
pub fn run_all(make: &dyn Fn() -> Env) {
    for (name, case) in CASES {
        tracing::info!(case = name, "conformance case");
        case(&make());
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

pub fn write(fs: &dyn Fs, path: &str, data: &[u8]) {
    let mut file = fs.create(Path::new(path)).unwrap();
    file.write_all(data).unwrap();
    file.flush().unwrap();
}

pub fn read(fs: &dyn Fs, path: &str) -> Vec<u8> {
    fs.read(Path::new(path)).unwrap()
}

#[track_caller]
pub fn assert_kind<T: std::fmt::Debug>(result: crate::Result<T>, kind: io::ErrorKind) {
    match result {
        Err(error) => assert_eq!(error.kind(), kind, "wrong error kind: {error}"),
        Ok(value) => panic!("expected a {kind:?} error, got Ok({value:?})"),
    }
}

#[track_caller]
pub fn assert_escape<T: std::fmt::Debug>(result: crate::Result<T>) {
    match result {
        Err(FsError::Escape { .. }) => {}
        other => panic!("expected an escape refusal, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: crate::Result<T>) {
    match result {
        Err(FsError::InvalidPath { .. }) => {}
        other => panic!("expected an invalid path error, got {other:?}"),
    }
}

/// Debug-printable stand-ins for trait objects (the `Ok` side of results under test).
trait Opaque<T> {
    fn opaque(self) -> crate::Result<&'static str>;
}

impl<T> Opaque<T> for crate::Result<T> {
    fn opaque(self) -> crate::Result<&'static str> {
        self.map(|_| "a handle")
    }
}

fn p(path: &str) -> &Path {
    Path::new(path)
}

fn names(fs: &dyn Fs, dir: &str) -> Vec<String> {
    fs.read_dir(p(dir))
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Cases

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name.
        pub const CASES: &[(&str, fn(&Env))] = &[$((stringify!($name), $name)),*];

        #[cfg(test)]
        mod real_tests {
            $( #[test] fn $name() { super::$name(&super::real_env()); } )*
        }

        #[cfg(test)]
        mod mem_tests {
            $( #[test] fn $name() { super::$name(&super::mem_env()); } )*
        }
    };
}

cases! {
    create_write_read,
    create_new_refuses_existing,
    create_dir_and_all,
    read_dir_sorted_with_kinds,
    metadata_follows_symlink_metadata_not,
    symlink_targets_verbatim,
    symlink_loop,
    hard_link_shares_inode,
    lock_excludes_until_drop,
    atomic_file_abandoned_leaves_old_content,
    write_behind_keeps_content,
    truncate_cuts_and_moves_the_write_position,
    rename_semantics,
    remove_file_semantics,
    remove_dir_semantics,
    remove_dir_all_semantics,
    permissions_and_mtime,
    sync_dir_semantics,
    walk_order,
    write_atomic_replaces_symlink_not_target,
    open_writer_outlives_unlink,
    invalid_paths_everywhere,
    root_cannot_be_removed_or_moved,
    escape_absolute_symlink,
    escape_dotdot_symlink,
    escape_symlinked_parent,
    escape_symlink_to_outside_file,
    escape_hard_link_outside,
    escape_rename_via_symlinked_dir,
    escape_remove_dir_all_through_symlink,
}

pub fn create_write_read(env: &Env) {
    let fs = &*env.fs;
    write(fs, "a", b"hello");
    assert_eq!(read(fs, "a"), b"hello");
    // create truncates.
    write(fs, "a", b"hi");
    assert_eq!(read(fs, "a"), b"hi");
    // Writes are visible once the writer is flushed (MemFs: at once).
    let mut file = fs.create(p("b")).unwrap();
    file.write_all(b"partial").unwrap();
    file.flush().unwrap();
    assert_eq!(read(fs, "b"), b"partial");
    drop(file);
    let mut reader = fs.open(p("b")).unwrap();
    let mut buf = [0; 3];
    reader.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"par");
    reader.seek(io::SeekFrom::Start(4)).unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"ial");

    assert_kind(fs.open(p("missing")).opaque(), io::ErrorKind::NotFound);
    assert_kind(fs.create(p("missing/x")).opaque(), io::ErrorKind::NotFound);
    assert_kind(fs.create(p("a/x")).opaque(), io::ErrorKind::NotADirectory);
    fs.create_dir(p("d")).unwrap();
    assert_kind(fs.create(p("d")).opaque(), io::ErrorKind::IsADirectory);
    assert_kind(fs.open(p("d")).opaque(), io::ErrorKind::IsADirectory);
    assert_kind(fs.open(p(".")).opaque(), io::ErrorKind::IsADirectory);
}

pub fn create_new_refuses_existing(env: &Env) {
    let fs = &*env.fs;
    let mut file = fs.create_new(p("n")).unwrap();
    file.write_all(b"new").unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert_eq!(read(fs, "n"), b"new");
    assert_kind(fs.create_new(p("n")).opaque(), io::ErrorKind::AlreadyExists);
    // A dangling symlink is something: create_new never follows it.
    fs.symlink(p("nowhere"), p("dangling")).unwrap();
    assert_kind(
        fs.create_new(p("dangling")).opaque(),
        io::ErrorKind::AlreadyExists,
    );
    assert!(!fs.exists(p("nowhere")).unwrap());
    // create follows it and creates the target inside the root.
    write(fs, "dangling", b"via link");
    assert_eq!(read(fs, "nowhere"), b"via link");
}

pub fn create_dir_and_all(env: &Env) {
    let fs = &*env.fs;
    fs.create_dir(p("d")).unwrap();
    assert_kind(fs.create_dir(p("d")), io::ErrorKind::AlreadyExists);
    assert_kind(fs.create_dir(p("x/y")), io::ErrorKind::NotFound);
    write(fs, "f", b"");
    assert_kind(fs.create_dir(p("f/y")), io::ErrorKind::NotADirectory);
    assert_kind(fs.create_dir(p(".")), io::ErrorKind::AlreadyExists);

    fs.create_dir_all(p("a/b/c")).unwrap();
    fs.create_dir_all(p("a/b/c")).unwrap();
    fs.create_dir_all(p(".")).unwrap();
    assert_eq!(fs.metadata(p("a/b/c")).unwrap().kind, FileKind::Dir);
    assert_kind(fs.create_dir_all(p("f")), io::ErrorKind::AlreadyExists);
    assert_kind(fs.create_dir_all(p("f/g/h")), io::ErrorKind::NotADirectory);
    // Through a symlink to a directory inside the root.
    fs.symlink(p("a/b"), p("ab")).unwrap();
    fs.create_dir_all(p("ab/c/d")).unwrap();
    assert_eq!(fs.metadata(p("a/b/c/d")).unwrap().kind, FileKind::Dir);
    fs.create_dir_all(p("ab")).unwrap();
}

pub fn read_dir_sorted_with_kinds(env: &Env) {
    let fs = &*env.fs;
    write(fs, "b", b"");
    fs.create_dir(p("a")).unwrap();
    fs.symlink(p("a"), p("c")).unwrap();
    write(fs, "a/inner", b"");
    let entries = fs.read_dir(p(".")).unwrap();
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.name.to_string_lossy().into_owned(), e.kind))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".to_owned(), FileKind::Dir),
            ("b".to_owned(), FileKind::File),
            ("c".to_owned(), FileKind::Symlink),
        ]
    );
    // Through a symlink to a directory.
    assert_eq!(names(fs, "c"), vec!["inner"]);
    assert_kind(fs.read_dir(p("b")), io::ErrorKind::NotADirectory);
    assert_kind(fs.read_dir(p("missing")), io::ErrorKind::NotFound);
}

pub fn metadata_follows_symlink_metadata_not(env: &Env) {
    let fs = &*env.fs;
    write(fs, "f", b"12345");
    fs.symlink(p("f"), p("l")).unwrap();
    fs.symlink(p("missing"), p("dangling")).unwrap();
    let meta = fs.metadata(p("l")).unwrap();
    assert_eq!(meta.kind, FileKind::File);
    assert_eq!(meta.len, 5);
    assert_eq!(meta.nlink, 1);
    let link = fs.symlink_metadata(p("l")).unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(link.len, 1);
    assert_ne!(link.ino, meta.ino);
    assert_kind(fs.metadata(p("dangling")), io::ErrorKind::NotFound);
    assert_eq!(
        fs.symlink_metadata(p("dangling")).unwrap().kind,
        FileKind::Symlink
    );
    assert!(fs.exists(p("dangling")).unwrap());
    assert!(!fs.exists(p("missing")).unwrap());
    assert_eq!(fs.metadata(p(".")).unwrap().kind, FileKind::Dir);
}

pub fn symlink_targets_verbatim(env: &Env) {
    let fs = &*env.fs;
    fs.create_dir_all(p("d/e")).unwrap();
    write(fs, "d/file", b"in d");
    for (target, link) in [
        ("/etc/passwd", "abs"),
        ("../../x", "d/e/up"),
        ("file", "d/rel"),
        ("../file", "d/e/round"),
    ] {
        fs.symlink(p(target), p(link)).unwrap();
        assert_eq!(fs.read_link(p(link)).unwrap(), PathBuf::from(target));
    }
    assert_eq!(read(fs, "d/rel"), b"in d");
    assert_eq!(read(fs, "d/e/round"), b"in d");
    assert_kind(fs.symlink(p("x"), p("d/rel")), io::ErrorKind::AlreadyExists);
    assert_kind(fs.read_link(p("d/file")), io::ErrorKind::InvalidInput);
    assert_kind(fs.read_link(p("missing")), io::ErrorKind::NotFound);
    assert_invalid(fs.symlink(p(""), p("empty")));
}

pub fn symlink_loop(env: &Env) {
    let fs = &*env.fs;
    fs.symlink(p("b"), p("a")).unwrap();
    fs.symlink(p("a"), p("b")).unwrap();
    for result in [
        fs.open(p("a")).opaque().map(|_| ()),
        fs.metadata(p("a")).map(|_| ()),
    ] {
        match result {
            Err(FsError::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(40)),
            other => panic!("expected ELOOP, got {other:?}"),
        }
    }
}

pub fn hard_link_shares_inode(env: &Env) {
    let fs = &*env.fs;
    write(fs, "f", b"one");
    fs.hard_link(p("f"), p("g")).unwrap();
    let (f, g) = (fs.metadata(p("f")).unwrap(), fs.metadata(p("g")).unwrap());
    assert_eq!((f.dev, f.ino), (g.dev, g.ino));
    assert_eq!(f.nlink, 2);
    write(fs, "g", b"two");
    assert_eq!(read(fs, "f"), b"two");
    fs.remove_file(p("f")).unwrap();
    assert_eq!(fs.metadata(p("g")).unwrap().nlink, 1);
    assert_eq!(read(fs, "g"), b"two");

    fs.symlink(p("g"), p("l")).unwrap();
    assert_kind(fs.hard_link(p("l"), p("h")), io::ErrorKind::InvalidInput);
    fs.create_dir(p("d")).unwrap();
    assert_kind(fs.hard_link(p("d"), p("h")), io::ErrorKind::IsADirectory);
    assert_kind(fs.hard_link(p("missing"), p("h")), io::ErrorKind::NotFound);
    assert_kind(fs.hard_link(p("g"), p("d")), io::ErrorKind::AlreadyExists);
    assert!(!fs.exists(p("h")).unwrap());
}

pub fn lock_excludes_until_drop(env: &Env) {
    let fs = Arc::clone(&env.fs);
    let guard = fs.lock(p("lockfile")).unwrap();
    assert!(fs.exists(p("lockfile")).unwrap());
    assert!(fs.try_lock(p("lockfile")).unwrap().is_none());
    let (sender, receiver) = std::sync::mpsc::channel();
    let other = Arc::clone(&fs);
    let thread = std::thread::spawn(move || {
        let second = other.lock(p("lockfile")).unwrap();
        sender.send(()).unwrap();
        drop(second);
    });
    assert!(
        receiver.recv_timeout(Duration::from_millis(200)).is_err(),
        "the second locker got the lock while the first held it"
    );
    drop(guard);
    receiver
        .recv_timeout(Duration::from_secs(10))
        .expect("the second locker never got the lock");
    thread.join().unwrap();
    assert!(fs.try_lock(p("lockfile")).unwrap().is_some());
}

pub fn atomic_file_abandoned_leaves_old_content(env: &Env) {
    let fs = &*env.fs;
    fs.write_atomic(p("conf"), b"old").unwrap();
    assert_eq!(read(fs, "conf"), b"old");
    {
        let mut file = AtomicFile::create(fs, p("conf")).unwrap();
        file.write_all(b"half-written").unwrap();
    }
    assert_eq!(read(fs, "conf"), b"old");
    assert_eq!(names(fs, "."), vec!["conf"]);
    fs.write_atomic(p("conf"), b"new").unwrap();
    assert_eq!(read(fs, "conf"), b"new");
    assert!(names(fs, ".").iter().all(|n| !n.starts_with(TEMP_PREFIX)));
    // Permissions set before writing survive the commit.
    let mut file = AtomicFile::create(fs, p("conf")).unwrap();
    file.set_permissions(0o600).unwrap();
    file.write_all(b"secret").unwrap();
    file.commit().unwrap();
    assert_eq!(read(fs, "conf"), b"secret");
    assert_eq!(fs.metadata(p("conf")).unwrap().mode, 0o600);
}

/// Starting writeback (directly, or through [`WriteBehind`] and [`AtomicFile`]) is a hint:
/// content is the same whatever ranges it is asked for, and readable before the sync.
pub fn write_behind_keeps_content(env: &Env) {
    let fs = &*env.fs;
    let chunk = usize::try_from(WRITE_BEHIND_CHUNK).unwrap();
    // Two and a half chunks, in uneven writes, so writeback starts mid-write.
    let data: Vec<u8> = (0..chunk * 5 / 2).map(|i| (i % 251) as u8).collect();
    let mut file = WriteBehind::new(fs.create_new(p("behind")).unwrap());
    for piece in data.chunks(chunk / 3 + 7) {
        file.write_all(piece).unwrap();
    }
    file.flush().unwrap();
    assert_eq!(read(fs, "behind"), data);
    file.sync_all().unwrap();
    drop(file);
    assert_eq!(read(fs, "behind"), data);

    let mut file = fs.create(p("direct")).unwrap();
    file.write_all(b"0123456789").unwrap();
    file.start_writeback(0, 0).unwrap();
    file.start_writeback(3, 4).unwrap();
    file.start_writeback(0, 1 << 40).unwrap();
    file.start_writeback(1 << 30, 10).unwrap();
    file.write_all(b"abc").unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert_eq!(read(fs, "direct"), b"0123456789abc");

    let mut file = AtomicFile::create(fs, p("atomic")).unwrap();
    for piece in data.chunks(chunk - 1) {
        file.write_all(piece).unwrap();
    }
    file.commit().unwrap();
    assert_eq!(read(fs, "atomic"), data);
}

/// [`WriteFile::truncate`] (directly and through [`WriteBehind`]) cuts the file and the
/// next write continues at the cut.
pub fn truncate_cuts_and_moves_the_write_position(env: &Env) {
    let fs = &*env.fs;
    let mut file = fs.create_new(p("cut")).unwrap();
    file.write_all(b"0123456789").unwrap();
    file.truncate(4).unwrap();
    file.write_all(b"ab").unwrap();
    file.flush().unwrap();
    assert_eq!(read(fs, "cut"), b"0123ab");
    drop(file);

    let chunk = usize::try_from(WRITE_BEHIND_CHUNK).unwrap();
    let data: Vec<u8> = (0..chunk + 100).map(|i| (i % 251) as u8).collect();
    let mut file = WriteBehind::new(fs.create_new(p("behind-cut")).unwrap());
    file.write_all(&data).unwrap();
    file.truncate(10).unwrap();
    file.write_all(b"xyz").unwrap();
    file.sync_all().unwrap();
    drop(file);
    let mut expected = data[..10].to_vec();
    expected.extend_from_slice(b"xyz");
    assert_eq!(read(fs, "behind-cut"), expected);
}

pub fn escape_absolute_symlink(env: &Env) {
    let fs = &*env.fs;
    fs.symlink(p("/etc"), p("link")).unwrap();
    fs.symlink(&env.outside_abs(), p("out")).unwrap();
    env.guarded(|| {
        assert_escape(fs.create(p("link/x")).opaque());
        assert_escape(fs.open(p("link/passwd")).opaque());
        assert_escape(fs.read_dir(p("link")));
        assert_escape(fs.metadata(p("link")));
        assert_escape(fs.create(p("out/x")).opaque());
        assert_escape(fs.open(p("out/secret")).opaque());
        assert_escape(fs.create(p("out/secret")).opaque());
        assert_escape(fs.create_dir(p("out/d")));
        assert_escape(fs.create_dir_all(p("out/d/e")));
        assert_escape(fs.remove_file(p("out/secret")));
        assert_escape(fs.remove_dir_all(p("out/dir")));
    });
    assert_eq!(fs.read_link(p("link")).unwrap(), PathBuf::from("/etc"));
    assert_eq!(
        fs.symlink_metadata(p("out")).unwrap().kind,
        FileKind::Symlink
    );
}

pub fn escape_dotdot_symlink(env: &Env) {
    let fs = &*env.fs;
    fs.create_dir(p("d")).unwrap();
    fs.symlink(p("../.."), p("d/link")).unwrap();
    fs.symlink(&env.outside_rel(), p("out")).unwrap();
    fs.symlink(p(".."), p("up")).unwrap();
    env.guarded(|| {
        assert_escape(fs.create(p("d/link/x")).opaque());
        assert_escape(fs.read_dir(p("d/link")));
        assert_escape(fs.open(p("out/secret")).opaque());
        assert_escape(fs.create(p("out/secret")).opaque());
        assert_escape(fs.create(p("out/new")).opaque());
        assert_escape(fs.read_dir(p("up")));
        assert_escape(fs.create_dir_all(p("up/outside/new")));
    });
}

pub fn rename_semantics(env: &Env) {
    let fs = &*env.fs;
    write(fs, "a", b"A");
    fs.rename(p("a"), p("b")).unwrap();
    assert!(!fs.exists(p("a")).unwrap());
    assert_eq!(read(fs, "b"), b"A");
    // A file over a file: replaced, the replaced inode loses a link.
    write(fs, "c", b"C");
    fs.hard_link(p("c"), p("c2")).unwrap();
    fs.rename(p("b"), p("c")).unwrap();
    assert_eq!(read(fs, "c"), b"A");
    assert_eq!(read(fs, "c2"), b"C");
    assert_eq!(fs.metadata(p("c2")).unwrap().nlink, 1);
    // Onto its own hard link: nothing happens.
    fs.hard_link(p("c"), p("c3")).unwrap();
    fs.rename(p("c"), p("c3")).unwrap();
    assert!(fs.exists(p("c")).unwrap() && fs.exists(p("c3")).unwrap());
    // Directories.
    fs.create_dir_all(p("d/sub")).unwrap();
    write(fs, "d/sub/f", b"deep");
    fs.rename(p("d"), p("e")).unwrap();
    assert_eq!(read(fs, "e/sub/f"), b"deep");
    fs.create_dir(p("empty")).unwrap();
    fs.rename(p("e"), p("empty")).unwrap();
    assert_eq!(read(fs, "empty/sub/f"), b"deep");
    fs.create_dir(p("other")).unwrap();
    assert_kind(
        fs.rename(p("other"), p("empty")),
        io::ErrorKind::DirectoryNotEmpty,
    );
    assert_kind(fs.rename(p("c"), p("other")), io::ErrorKind::IsADirectory);
    assert_kind(fs.rename(p("other"), p("c")), io::ErrorKind::NotADirectory);
    assert_kind(
        fs.rename(p("empty"), p("empty/sub/inside")),
        io::ErrorKind::InvalidInput,
    );
    assert_kind(fs.rename(p("missing"), p("x")), io::ErrorKind::NotFound);
    assert_kind(fs.rename(p("c"), p("missing/x")), io::ErrorKind::NotFound);
    // A symlink is moved, not its target.
    fs.symlink(p("c"), p("l")).unwrap();
    fs.rename(p("l"), p("empty/l")).unwrap();
    assert_eq!(fs.read_link(p("empty/l")).unwrap(), PathBuf::from("c"));
    assert_eq!(read(fs, "c"), b"A");
    // A file over a symlink replaces the link, not the target.
    fs.symlink(p("c2"), p("l2")).unwrap();
    fs.rename(p("c3"), p("l2")).unwrap();
    assert_eq!(fs.symlink_metadata(p("l2")).unwrap().kind, FileKind::File);
    assert_eq!(read(fs, "c2"), b"C");
}

pub fn remove_file_semantics(env: &Env) {
    let fs = &*env.fs;
    write(fs, "f", b"x");
    fs.symlink(p("f"), p("l")).unwrap();
    fs.remove_file(p("l")).unwrap();
    assert_eq!(read(fs, "f"), b"x");
    fs.remove_file(p("f")).unwrap();
    assert!(!fs.exists(p("f")).unwrap());
    assert_kind(fs.remove_file(p("f")), io::ErrorKind::NotFound);
    fs.create_dir(p("d")).unwrap();
    assert_kind(fs.remove_file(p("d")), io::ErrorKind::IsADirectory);
    fs.symlink(p("d"), p("ld")).unwrap();
    fs.remove_file(p("ld")).unwrap();
    assert!(fs.exists(p("d")).unwrap());
}

pub fn remove_dir_semantics(env: &Env) {
    let fs = &*env.fs;
    fs.create_dir_all(p("d/e")).unwrap();
    assert_kind(fs.remove_dir(p("d")), io::ErrorKind::DirectoryNotEmpty);
    fs.remove_dir(p("d/e")).unwrap();
    fs.symlink(p("d"), p("ld")).unwrap();
    assert_kind(fs.remove_dir(p("ld")), io::ErrorKind::NotADirectory);
    write(fs, "f", b"");
    assert_kind(fs.remove_dir(p("f")), io::ErrorKind::NotADirectory);
    assert_kind(fs.remove_dir(p("missing")), io::ErrorKind::NotFound);
    fs.remove_dir(p("d")).unwrap();
    assert!(!fs.exists(p("d")).unwrap());
}

pub fn remove_dir_all_semantics(env: &Env) {
    let fs = &*env.fs;
    fs.create_dir_all(p("keep/dir")).unwrap();
    write(fs, "keep/file", b"kept");
    write(fs, "keep/dir/file", b"kept too");
    fs.create_dir_all(p("t/a/b")).unwrap();
    write(fs, "t/a/b/f", b"gone");
    write(fs, "t/x", b"gone");
    fs.hard_link(p("keep/file"), p("t/hard")).unwrap();
    fs.symlink(p("../keep/dir"), p("t/to_dir")).unwrap();
    fs.symlink(p("../keep/file"), p("t/a/to_file")).unwrap();
    fs.remove_dir_all(p("t")).unwrap();
    assert!(!fs.exists(p("t")).unwrap());
    assert_eq!(read(fs, "keep/file"), b"kept");
    assert_eq!(fs.metadata(p("keep/file")).unwrap().nlink, 1);
    assert_eq!(read(fs, "keep/dir/file"), b"kept too");
    // A symlink to a directory: the link goes, the directory stays.
    fs.symlink(p("keep"), p("lk")).unwrap();
    fs.remove_dir_all(p("lk")).unwrap();
    assert!(!fs.exists(p("lk")).unwrap());
    assert_eq!(read(fs, "keep/file"), b"kept");
    assert_kind(
        fs.remove_dir_all(p("keep/file")),
        io::ErrorKind::NotADirectory,
    );
    assert_kind(fs.remove_dir_all(p("missing")), io::ErrorKind::NotFound);
}

pub fn permissions_and_mtime(env: &Env) {
    let fs = &*env.fs;
    write(fs, "f", b"");
    fs.create_dir(p("d")).unwrap();
    fs.symlink(p("f"), p("l")).unwrap();
    fs.set_permissions(p("f"), 0o640).unwrap();
    assert_eq!(fs.metadata(p("f")).unwrap().mode, 0o640);
    fs.set_permissions(p("d"), 0o750).unwrap();
    assert_eq!(fs.metadata(p("d")).unwrap().mode, 0o750);
    // Through a symlink: the target changes.
    fs.set_permissions(p("l"), 0o600).unwrap();
    assert_eq!(fs.metadata(p("f")).unwrap().mode, 0o600);
    assert_eq!(fs.symlink_metadata(p("l")).unwrap().mode, 0o777);
    fs.set_permissions(p("f"), 0o4755).unwrap();
    assert_eq!(fs.metadata(p("f")).unwrap().mode, 0o4755);

    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs.set_modified(p("f"), when).unwrap();
    assert_eq!(fs.metadata(p("f")).unwrap().modified, Some(when));
    fs.set_modified(p("d"), when).unwrap();
    assert_eq!(fs.metadata(p("d")).unwrap().modified, Some(when));
    let later = when + Duration::from_secs(5);
    fs.set_modified(p("l"), later).unwrap();
    assert_eq!(fs.metadata(p("f")).unwrap().modified, Some(later));
    assert_kind(fs.set_modified(p("missing"), when), io::ErrorKind::NotFound);
    assert_kind(
        fs.set_permissions(p("missing"), 0o600),
        io::ErrorKind::NotFound,
    );
}

pub fn sync_dir_semantics(env: &Env) {
    let fs = &*env.fs;
    fs.create_dir(p("d")).unwrap();
    fs.symlink(p("d"), p("l")).unwrap();
    write(fs, "f", b"");
    fs.sync_dir(p(".")).unwrap();
    fs.sync_dir(p("d")).unwrap();
    fs.sync_dir(p("l")).unwrap();
    assert_kind(fs.sync_dir(p("f")), io::ErrorKind::NotADirectory);
    assert_kind(fs.sync_dir(p("missing")), io::ErrorKind::NotFound);
}

pub fn walk_order(env: &Env) {
    let fs = &*env.fs;
    fs.create_dir_all(p("a/b")).unwrap();
    write(fs, "a/b/f", b"");
    write(fs, "a-c", b"");
    write(fs, "a/z", b"");
    fs.symlink(p("a"), p("b")).unwrap();
    let walked: Vec<_> = fs
        .walk(p("."))
        .unwrap()
        .into_iter()
        .map(|e| (e.path.to_string_lossy().into_owned(), e.metadata.kind))
        .collect();
    assert_eq!(
        walked,
        vec![
            ("a".to_owned(), FileKind::Dir),
            ("a/b".to_owned(), FileKind::Dir),
            ("a/b/f".to_owned(), FileKind::File),
            ("a/z".to_owned(), FileKind::File),
            ("a-c".to_owned(), FileKind::File),
            ("b".to_owned(), FileKind::Symlink),
        ]
    );
    let below: Vec<_> = fs
        .walk(p("a"))
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(
        below,
        vec![
            PathBuf::from("a/b"),
            PathBuf::from("a/b/f"),
            PathBuf::from("a/z")
        ]
    );
}

pub fn write_atomic_replaces_symlink_not_target(env: &Env) {
    let fs = &*env.fs;
    write(fs, "target", b"target");
    fs.symlink(p("target"), p("link")).unwrap();
    fs.write_atomic(p("link"), b"replaced").unwrap();
    assert_eq!(fs.symlink_metadata(p("link")).unwrap().kind, FileKind::File);
    assert_eq!(read(fs, "link"), b"replaced");
    assert_eq!(read(fs, "target"), b"target");
    assert_kind(
        fs.write_atomic(p("missing/x"), b""),
        io::ErrorKind::NotFound,
    );
    assert_eq!(names(fs, "."), vec!["link", "target"]);
}

pub fn open_writer_outlives_unlink(env: &Env) {
    let fs = &*env.fs;
    let mut writer = fs.create(p("f")).unwrap();
    writer.write_all(b"abc").unwrap();
    writer.flush().unwrap();
    let mut snapshot = fs.open(p("f")).unwrap();
    fs.remove_file(p("f")).unwrap();
    writer.write_all(b"def").unwrap();
    writer.sync_all().unwrap();
    drop(writer);
    assert!(!fs.exists(p("f")).unwrap());
    let mut data = Vec::new();
    snapshot.read_to_end(&mut data).unwrap();
    assert!(data.starts_with(b"abc"));
    assert!(names(fs, ".").is_empty());
}

pub fn invalid_paths_everywhere(env: &Env) {
    let fs = &*env.fs;
    write(fs, "ok", b"");
    fs.create_dir(p("dir")).unwrap();
    env.guarded(|| {
        for bad in ["", "a\0b", "/abs", "/", "../x", "a/../b", "dir/.."] {
            let bad = p(bad);
            assert_invalid(fs.open(bad).opaque());
            assert_invalid(fs.create(bad).opaque());
            assert_invalid(fs.create_new(bad).opaque());
            assert_invalid(fs.create_dir(bad));
            assert_invalid(fs.create_dir_all(bad));
            assert_invalid(fs.read_dir(bad));
            assert_invalid(fs.metadata(bad));
            assert_invalid(fs.symlink_metadata(bad));
            assert_invalid(fs.symlink(p("ok"), bad));
            assert_invalid(fs.read_link(bad));
            assert_invalid(fs.hard_link(bad, p("new")));
            assert_invalid(fs.hard_link(p("ok"), bad));
            assert_invalid(fs.rename(bad, p("new")));
            assert_invalid(fs.rename(p("ok"), bad));
            assert_invalid(fs.remove_file(bad));
            assert_invalid(fs.remove_dir(bad));
            assert_invalid(fs.remove_dir_all(bad));
            assert_invalid(fs.set_permissions(bad, 0o777));
            assert_invalid(fs.set_modified(bad, SystemTime::UNIX_EPOCH));
            assert_invalid(fs.sync_dir(bad));
            assert_invalid(fs.lock(bad).opaque());
            assert_invalid(fs.try_lock(bad).map(|g| g.is_some()));
            assert_invalid(fs.read(bad));
            assert_invalid(fs.exists(bad));
            assert_invalid(fs.write_atomic(bad, b""));
            assert_invalid(fs.walk(bad));
            assert_invalid(AtomicFile::create(fs, bad).map(|_| ()));
        }
        assert_invalid(fs.symlink(p("a\0b"), p("new")));
        assert_invalid(fs.symlink(p(""), p("new")));
    });
}

pub fn root_cannot_be_removed_or_moved(env: &Env) {
    let fs = &*env.fs;
    write(fs, "f", b"");
    env.guarded(|| {
        for root in [".", "./."] {
            let root = p(root);
            assert_invalid(fs.remove_file(root));
            assert_invalid(fs.remove_dir(root));
            assert_invalid(fs.remove_dir_all(root));
            assert_invalid(fs.rename(root, p("x")));
            assert_invalid(fs.rename(p("f"), root));
            assert_invalid(fs.hard_link(p("f"), root));
            assert_invalid(fs.symlink(p("f"), root));
            assert_invalid(fs.write_atomic(root, b""));
        }
    });
    assert_eq!(names(fs, "."), vec!["f"]);
}

/// `out_abs -> <outside, absolute>` and `out_rel -> ../outside`: both refused when followed.
fn outside_links(env: &Env) -> [&'static str; 2] {
    env.fs.symlink(&env.outside_abs(), p("out_abs")).unwrap();
    env.fs.symlink(&env.outside_rel(), p("out_rel")).unwrap();
    ["out_abs", "out_rel"]
}

pub fn escape_symlinked_parent(env: &Env) {
    let fs = &*env.fs;
    write(fs, "f", b"inside");
    for link in outside_links(env) {
        let at = |rest: &str| PathBuf::from(format!("{link}/{rest}"));
        env.guarded(|| {
            assert_escape(fs.create(&at("new")).opaque());
            assert_escape(fs.create(&at("secret")).opaque());
            assert_escape(fs.create_new(&at("new")).opaque());
            assert_escape(fs.create_dir(&at("nd")));
            assert_escape(fs.create_dir_all(&at("nd/x")));
            assert_escape(fs.symlink(p("x"), &at("l")));
            assert_escape(fs.hard_link(p("f"), &at("h")));
            assert_escape(fs.rename(p("f"), &at("f")));
            assert_escape(fs.set_permissions(&at("secret"), 0o777));
            assert_escape(fs.set_modified(&at("secret"), SystemTime::UNIX_EPOCH));
            assert_escape(fs.remove_file(&at("secret")));
            assert_escape(fs.remove_dir(&at("dir")));
            assert_escape(fs.remove_dir_all(&at("dir")));
            assert_escape(fs.write_atomic(&at("secret"), b"pwned"));
            assert_escape(fs.lock(&at("lockfile")).opaque());
            assert_escape(fs.try_lock(&at("lockfile")).map(|g| g.is_some()));
            assert_escape(fs.sync_dir(p(link)));
            assert_escape(fs.read_dir(p(link)));
            assert_escape(fs.walk(p(link)));
            assert_escape(fs.metadata(&at("secret")));
            assert_escape(fs.symlink_metadata(&at("secret")));
            assert_escape(fs.read_link(&at("secret")));
            assert_escape(fs.open(&at("secret")).opaque());
            assert_escape(fs.read(&at("secret")));
            assert_escape(fs.exists(&at("secret")));
        });
    }
    env.assert_outside_intact();
}

pub fn escape_symlink_to_outside_file(env: &Env) {
    let fs = &*env.fs;
    fs.symlink(&env.outside_abs().join("secret"), p("s_abs"))
        .unwrap();
    fs.symlink(&env.outside_rel().join("secret"), p("s_rel"))
        .unwrap();
    fs.symlink(&env.outside_rel().join("newfile"), p("s_new"))
        .unwrap();
    for link in ["s_abs", "s_rel", "s_new"] {
        let link = p(link);
        env.guarded(|| {
            assert_escape(fs.open(link).opaque());
            assert_escape(fs.create(link).opaque());
            assert_escape(fs.metadata(link));
            assert_escape(fs.set_permissions(link, 0o777));
            assert_escape(fs.set_modified(link, SystemTime::UNIX_EPOCH));
            assert_escape(fs.lock(link).opaque());
            assert_escape(fs.try_lock(link).map(|g| g.is_some()));
            assert_escape(fs.sync_dir(link));
            assert_escape(fs.read(link));
            assert_escape(fs.read_dir(link));
            assert_escape(fs.create_dir_all(link));
            // Not followed (mkdir, exclusive creation, hard links): the link itself exists.
            assert_kind(fs.create_new(link).opaque(), io::ErrorKind::AlreadyExists);
            assert_kind(fs.create_dir(link), io::ErrorKind::AlreadyExists);
            assert_kind(fs.hard_link(link, p("h")), io::ErrorKind::InvalidInput);
        });
        assert_eq!(fs.symlink_metadata(link).unwrap().kind, FileKind::Symlink);
    }
    // Replacing or removing the link touches the link only.
    fs.write_atomic(p("s_abs"), b"replaced").unwrap();
    assert_eq!(read(fs, "s_abs"), b"replaced");
    fs.remove_file(p("s_rel")).unwrap();
    env.assert_outside_intact();
    if let Some(sentinel) = &env.sentinel {
        assert!(!sentinel.outside.join("newfile").exists());
    }
}

pub fn escape_hard_link_outside(env: &Env) {
    let fs = &*env.fs;
    let [abs, rel] = outside_links(env);
    fs.symlink(&env.outside_abs().join("secret"), p("s"))
        .unwrap();
    env.guarded(|| {
        for link in [abs, rel] {
            assert_escape(fs.hard_link(&Path::new(link).join("secret"), p("h")));
            assert_escape(fs.hard_link(&Path::new(link).join("dir/file"), p("h")));
        }
        // A symlink at the source is never followed, so never linked through.
        assert_kind(fs.hard_link(p("s"), p("h")), io::ErrorKind::InvalidInput);
    });
    if let Some(sentinel) = &env.sentinel {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(sentinel.outside.join("secret"))
                .unwrap()
                .nlink(),
            1
        );
    }
}

pub fn escape_rename_via_symlinked_dir(env: &Env) {
    let fs = &*env.fs;
    write(fs, "f", b"inside");
    fs.create_dir(p("d")).unwrap();
    for link in outside_links(env) {
        let at = |rest: &str| PathBuf::from(format!("{link}/{rest}"));
        env.guarded(|| {
            assert_escape(fs.rename(p("f"), &at("f")));
            assert_escape(fs.rename(p("d"), &at("d")));
            assert_escape(fs.rename(&at("secret"), p("stolen")));
            assert_escape(fs.rename(&at("dir"), p("stolen_dir")));
            assert_escape(fs.rename(&at("secret"), &at("moved")));
        });
    }
    // Renaming the link itself is fine: it stays a link.
    fs.rename(p("out_abs"), p("moved")).unwrap();
    assert_eq!(fs.read_link(p("moved")).unwrap(), env.outside_abs());
    env.assert_outside_intact();
}

pub fn escape_remove_dir_all_through_symlink(env: &Env) {
    let fs = &*env.fs;
    let [abs, rel] = outside_links(env);
    fs.create_dir_all(p("x/y")).unwrap();
    fs.symlink(&env.outside_abs(), p("x/abs")).unwrap();
    fs.symlink(&Path::new("..").join(env.outside_rel()), p("x/rel"))
        .unwrap();
    fs.symlink(&env.outside_abs().join("secret"), p("x/y/file"))
        .unwrap();
    env.guarded(|| {
        for link in [abs, rel] {
            assert_escape(fs.remove_dir_all(&Path::new(link).join("dir")));
        }
    });
    // Links inside a removed tree are removed, never followed.
    fs.remove_dir_all(p("x")).unwrap();
    assert!(!fs.exists(p("x")).unwrap());
    // A link given directly is removed itself.
    fs.remove_dir_all(p(abs)).unwrap();
    fs.remove_dir_all(p(rel)).unwrap();
    assert!(names(fs, ".").is_empty());
    env.assert_outside_intact();
    if let Some(sentinel) = &env.sentinel {
        assert!(sentinel.outside.join("dir").is_dir());
    }
}
