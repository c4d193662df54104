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
use std::time::Duration;

use crate::{AtomicFile, FileKind, Fs, FsError, TEMP_PREFIX};

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

    /// Runs `attempt` and asserts that nothing outside the root changed.
    pub fn guarded<T>(&self, attempt: impl FnOnce() -> T) -> T {
        let before = self.sentinel.as_ref().map(|s| snapshot(&s.parent, &s.root));
        let result = attempt();
        if let (Some(sentinel), Some(before)) = (&self.sentinel, before) {
            let after = snapshot(&sentinel.parent, &sentinel.root);
            assert_eq!(before, after, "something outside the root changed");
        }
        result
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
    escape_absolute_symlink,
    escape_dotdot_symlink,
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
