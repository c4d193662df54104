//! The layer cache: keys, input digests, the stat cache and the index in the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use sealer_fs_abstraction::{
    DirEntry, Fs, LockGuard, MemFs, Metadata, ReadFile, RealFs, Result as FsResult, WriteFile,
};
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{BlobStore, Descriptor, Digest, Store};
use sealer_layer_cache::{
    CacheEntry, CacheError, CacheKey, InputDigest, InputHasher, LayerCache, StatCache,
};

/// An `Fs` that counts the files opened for reading.
#[derive(Debug)]
struct CountingFs {
    inner: Arc<dyn Fs>,
    opens: AtomicUsize,
}

impl CountingFs {
    fn new(inner: Arc<dyn Fs>) -> Self {
        Self {
            inner,
            opens: AtomicUsize::new(0),
        }
    }

    fn take_opens(&self) -> usize {
        self.opens.swap(0, Ordering::SeqCst)
    }
}

impl Fs for CountingFs {
    fn display_path(&self, path: &Path) -> PathBuf {
        self.inner.display_path(path)
    }
    fn open(&self, path: &Path) -> FsResult<Box<dyn ReadFile>> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        self.inner.open(path)
    }
    fn create(&self, path: &Path) -> FsResult<Box<dyn WriteFile>> {
        self.inner.create(path)
    }
    fn create_new(&self, path: &Path) -> FsResult<Box<dyn WriteFile>> {
        self.inner.create_new(path)
    }
    fn create_dir(&self, path: &Path) -> FsResult<()> {
        self.inner.create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> FsResult<()> {
        self.inner.create_dir_all(path)
    }
    fn read_dir(&self, path: &Path) -> FsResult<Vec<DirEntry>> {
        self.inner.read_dir(path)
    }
    fn metadata(&self, path: &Path) -> FsResult<Metadata> {
        self.inner.metadata(path)
    }
    fn symlink_metadata(&self, path: &Path) -> FsResult<Metadata> {
        self.inner.symlink_metadata(path)
    }
    fn symlink(&self, target: &Path, link: &Path) -> FsResult<()> {
        self.inner.symlink(target, link)
    }
    fn read_link(&self, path: &Path) -> FsResult<PathBuf> {
        self.inner.read_link(path)
    }
    fn hard_link(&self, src: &Path, dst: &Path) -> FsResult<()> {
        self.inner.hard_link(src, dst)
    }
    fn rename(&self, from: &Path, to: &Path) -> FsResult<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> FsResult<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> FsResult<()> {
        self.inner.remove_dir(path)
    }
    fn remove_dir_all(&self, path: &Path) -> FsResult<()> {
        self.inner.remove_dir_all(path)
    }
    fn set_permissions(&self, path: &Path, mode: u32) -> FsResult<()> {
        self.inner.set_permissions(path, mode)
    }
    fn set_modified(&self, path: &Path, modified: SystemTime) -> FsResult<()> {
        self.inner.set_modified(path, modified)
    }
    fn sync_dir(&self, path: &Path) -> FsResult<()> {
        self.inner.sync_dir(path)
    }
    fn lock(&self, path: &Path) -> FsResult<Box<dyn LockGuard>> {
        self.inner.lock(path)
    }
    fn try_lock(&self, path: &Path) -> FsResult<Option<Box<dyn LockGuard>>> {
        self.inner.try_lock(path)
    }
}

/// An mtime safely in the past (files written just now are "racily clean" and not cached).
fn an_hour_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

fn write(fs: &dyn Fs, path: &str, content: &[u8]) {
    let path = Path::new(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs.create_dir_all(parent).unwrap();
    }
    let mut file = fs.create(path).unwrap();
    file.write_all(content).unwrap();
    drop(file);
    fs.set_modified(path, an_hour_ago()).unwrap();
}

/// A small build context: a manifest dir, a script, a symlink.
fn context() -> CountingFs {
    let fs = CountingFs::new(Arc::new(MemFs::new()));
    write(&fs, "manifests/a.yaml", b"kind: A\n");
    write(&fs, "manifests/sub/b.yaml", b"kind: B\n");
    write(&fs, "scripts/init.sh", b"#!/bin/sh\necho hi\n");
    fs.set_permissions(Path::new("scripts/init.sh"), 0o755)
        .unwrap();
    fs.symlink(Path::new("a.yaml"), Path::new("manifests/current.yaml"))
        .unwrap();
    fs
}

fn digest_of(fs: &dyn Fs, sources: &[&str], stat: &mut StatCache) -> InputDigest {
    let mut hasher = InputHasher::new();
    for source in sources {
        hasher.add_path(fs, Path::new(source), stat).unwrap();
    }
    hasher.finish()
}

const SOURCES: [&str; 2] = ["manifests", "scripts/init.sh"];

#[test]
fn the_same_inputs_give_the_same_key() {
    let a = context();
    let b = context();
    let base = CacheKey::base(&Digest::sha256(b"base manifest"));
    let key_a = base.next(
        "COPY manifests scripts/init.sh .",
        &digest_of(&a, &SOURCES, &mut StatCache::new()),
    );
    let key_b = base.next(
        "COPY manifests scripts/init.sh .",
        &digest_of(&b, &SOURCES, &mut StatCache::new()),
    );
    assert_eq!(
        key_a, key_b,
        "two identical contexts (different inodes) hash alike"
    );
    let other_base = CacheKey::base(&Digest::sha256(b"another base"));
    assert_ne!(
        key_a,
        other_base.next(
            "COPY manifests scripts/init.sh .",
            &digest_of(&b, &SOURCES, &mut StatCache::new())
        ),
        "a different base image rebuilds everything"
    );
    assert_ne!(
        digest_of(&a, &SOURCES, &mut StatCache::new()),
        digest_of(&a, &["scripts/init.sh", "manifests"], &mut StatCache::new()),
        "source order is significant (later sources overwrite earlier ones)"
    );
}

#[test]
fn content_mode_and_link_target_changes_change_the_digest() {
    let reference = digest_of(&context(), &SOURCES, &mut StatCache::new());
    type Change = fn(&dyn Fs);
    let changes: [(&str, Change); 6] = [
        ("content", |fs| {
            write(fs, "manifests/sub/b.yaml", b"kind: C\n")
        }),
        ("same-size content", |fs| {
            write(fs, "manifests/a.yaml", b"kind: Z\n")
        }),
        ("mode", |fs| {
            fs.set_permissions(Path::new("scripts/init.sh"), 0o700)
                .unwrap()
        }),
        ("directory mode", |fs| {
            fs.set_permissions(Path::new("manifests/sub"), 0o700)
                .unwrap()
        }),
        ("link target", |fs| {
            fs.remove_file(Path::new("manifests/current.yaml")).unwrap();
            fs.symlink(Path::new("sub/b.yaml"), Path::new("manifests/current.yaml"))
                .unwrap();
        }),
        ("new file", |fs| write(fs, "manifests/sub/new.yaml", b"")),
    ];
    for (what, change) in changes {
        let fs = context();
        change(&fs);
        assert_ne!(
            digest_of(&fs, &SOURCES, &mut StatCache::new()),
            reference,
            "a {what} change went unnoticed"
        );
    }
}

#[test]
fn an_mtime_change_keeps_the_key_and_an_unchanged_context_is_not_read() {
    let fs = context();
    let mut stat = StatCache::new();
    let first = digest_of(&fs, &SOURCES, &mut stat);
    assert_eq!(fs.take_opens(), 3, "first hash reads every file");
    assert_eq!(stat.stats().read, 3);

    let again = digest_of(&fs, &SOURCES, &mut stat);
    assert_eq!(again, first);
    assert_eq!(fs.take_opens(), 0, "an unchanged context is only stat'ed");

    fs.set_modified(
        Path::new("manifests/a.yaml"),
        an_hour_ago() + Duration::from_secs(60),
    )
    .unwrap();
    let touched = digest_of(&fs, &SOURCES, &mut stat);
    assert_eq!(touched, first, "mtimes are not part of the key");
    assert_eq!(fs.take_opens(), 1, "only the touched file is read again");
    digest_of(&fs, &SOURCES, &mut stat);
    assert_eq!(fs.take_opens(), 0);
}

#[test]
fn freshly_written_files_are_read_again() {
    let fs = context();
    let mut file = fs.create(Path::new("manifests/a.yaml")).unwrap();
    file.write_all(b"kind: Y\n").unwrap();
    drop(file);
    let mut stat = StatCache::new();
    let first = digest_of(&fs, &SOURCES, &mut stat);
    fs.take_opens();
    assert_eq!(digest_of(&fs, &SOURCES, &mut stat), first);
    assert_eq!(
        fs.take_opens(),
        1,
        "a file modified while (or just before) it was read is not trusted from its stat"
    );
}

#[test]
fn a_source_symlink_is_hashed_with_what_it_points_to() {
    let fs = context();
    fs.symlink(Path::new("manifests"), Path::new("linked"))
        .unwrap();
    fs.symlink(Path::new("../outside"), Path::new("escaping"))
        .unwrap();
    let before = digest_of(
        &fs,
        &["linked", "manifests/current.yaml"],
        &mut StatCache::new(),
    );
    write(&fs, "manifests/a.yaml", b"kind: Q\n");
    let after = digest_of(
        &fs,
        &["linked", "manifests/current.yaml"],
        &mut StatCache::new(),
    );
    assert_ne!(
        before, after,
        "content behind a source symlink is part of the input"
    );
    // A link that cannot be followed is hashed as such (the engine refuses to copy it).
    let dangling = digest_of(&fs, &["escaping"], &mut StatCache::new());
    assert_ne!(dangling, digest_of(&fs, &["linked"], &mut StatCache::new()));
}

#[test]
fn sources_outside_the_context_or_missing_are_errors() {
    let fs = context();
    let mut hasher = InputHasher::new();
    for bad in ["../x", "/etc/passwd", "missing"] {
        let error = hasher
            .add_path(&fs, Path::new(bad), &mut StatCache::new())
            .unwrap_err();
        assert!(matches!(error, CacheError::Fs(_)), "{bad}: {error}");
    }
}

fn mem_store() -> Store {
    Store::open(Arc::new(MemFs::new())).unwrap()
}

/// Puts a layer blob into the store and returns an entry for it.
fn stored_layer(store: &Store, content: &[u8]) -> CacheEntry {
    let digest = Digest::sha256(content);
    store.blobs().put(&digest, None, &mut &content[..]).unwrap();
    CacheEntry {
        layer: Descriptor::new(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            digest.clone(),
            content.len() as u64,
        ),
        diff_id: Digest::sha256(b"uncompressed"),
        created_by: "COPY manifests manifests".to_owned(),
    }
}

#[test]
fn entries_survive_a_reopen_and_need_their_layer() {
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::scratch().next("COPY a b", &InputDigest::none());
    let entry = {
        let store = Store::open_dir(dir.path()).unwrap();
        let cache = LayerCache::open(&store).unwrap();
        assert_eq!(cache.get(&key).unwrap(), None);
        let entry = stored_layer(&store, b"layer bytes");
        cache.put(&key, &entry).unwrap();
        entry
    };
    let store = Store::open_dir(dir.path()).unwrap();
    let cache = LayerCache::open(&store).unwrap();
    assert_eq!(cache.get(&key).unwrap(), Some(entry.clone()));
    assert_eq!(cache.entries().unwrap(), vec![(key.clone(), entry.clone())]);
    assert_eq!(
        cache.layer_digests().unwrap(),
        vec![entry.layer.digest.clone()]
    );

    // The blob disappears (a gc without the cache's roots): a miss, not a broken build.
    store.blobs().delete(&entry.layer.digest).unwrap();
    assert_eq!(cache.get(&key).unwrap(), None);
    let error = cache.put(&key, &entry).unwrap_err();
    assert!(matches!(error, CacheError::LayerMissing { .. }), "{error}");
    assert!(
        store.fsck().unwrap().is_clean(),
        "the cache directory does not upset fsck"
    );
}

#[test]
fn stat_caches_persist_in_the_store() {
    let store = mem_store();
    let fs = context();
    {
        let cache = LayerCache::open(&store).unwrap();
        let mut stat = cache.load_stat_cache(&fs).unwrap();
        assert!(stat.is_empty());
        digest_of(&fs, &SOURCES, &mut stat);
        cache.save_stat_cache(&fs, &mut stat).unwrap();
        assert!(!stat.is_dirty());
    }
    fs.take_opens();
    let cache = LayerCache::open(&store).unwrap();
    let mut stat = cache.load_stat_cache(&fs).unwrap();
    assert_eq!(stat.len(), 3);
    digest_of(&fs, &SOURCES, &mut stat);
    assert_eq!(fs.take_opens(), 0, "a restarted build reads nothing");
    assert_eq!(stat.stats().reused, 3);
    assert!(
        !stat.is_dirty(),
        "a no-op rebuild does not rewrite the stat cache"
    );

    // Another context (another location) has its own stat cache.
    let elsewhere = RealFs::create_root(tempfile::tempdir().unwrap().path()).unwrap();
    assert!(cache.load_stat_cache(&elsewhere).unwrap().is_empty());

    // Deleted files are forgotten when their directory is hashed again.
    fs.remove_file(Path::new("manifests/sub/b.yaml")).unwrap();
    digest_of(&fs, &SOURCES, &mut stat);
    assert_eq!(stat.len(), 2);
}

#[test]
fn prune_drops_entries_no_image_uses() {
    let store = mem_store();
    let image = write_image(&store, &ImageSpec::new("demo:1", &[1000], 3)).unwrap();
    let used_layer = match store.read_manifest(&image).unwrap() {
        sealer_image_store::ManifestDocument::Image(manifest) => manifest.layers[0].clone(),
        _ => unreachable!(),
    };
    let cache = LayerCache::open(&store).unwrap();
    let used_key = CacheKey::scratch().next("COPY used .", &InputDigest::none());
    let unused_key = CacheKey::scratch().next("COPY unused .", &InputDigest::none());
    let used = CacheEntry {
        layer: used_layer,
        diff_id: Digest::sha256(b"d"),
        created_by: "COPY used .".to_owned(),
    };
    let unused = stored_layer(&store, b"a layer of a failed build");
    cache.put(&used_key, &used).unwrap();
    cache.put(&unused_key, &unused).unwrap();
    store
        .fs()
        .write_atomic(Path::new("cache/layers/sha256-garbage.json"), b"{")
        .unwrap();

    // Cached layers are gc roots while their entry exists.
    let gc = store
        .gc_with_extra_roots(&cache.layer_digests().unwrap())
        .unwrap();
    assert!(gc.removed.is_empty(), "{:?}", gc.removed);
    assert!(cache.get(&unused_key).unwrap().is_some());

    let report = cache.prune_unused().unwrap();
    assert_eq!((report.kept, report.removed), (1, 2));
    assert!(cache.get(&unused_key).unwrap().is_none());
    assert_eq!(cache.get(&used_key).unwrap(), Some(used));
    let gc = store
        .gc_with_extra_roots(&cache.layer_digests().unwrap())
        .unwrap();
    assert_eq!(gc.removed, vec![unused.layer.digest]);

    // The free function with an explicit predicate.
    let report = sealer_layer_cache::prune(&store, |_| false).unwrap();
    assert_eq!((report.kept, report.removed), (0, 1));
    assert!(cache.entries().unwrap().is_empty());
}

#[test]
fn a_real_context_rehashes_from_stat_alone() {
    let dir = tempfile::tempdir().unwrap();
    let real: Arc<dyn Fs> = Arc::new(RealFs::create_root(dir.path()).unwrap());
    let fs = CountingFs::new(real);
    for n in 0..500 {
        write(&fs, &format!("ctx/d{}/f{n}", n % 10), &vec![n as u8; 4096]);
    }
    let store = mem_store();
    let cache = LayerCache::open(&store).unwrap();
    let mut stat = cache.load_stat_cache(&fs).unwrap();
    let first = digest_of(&fs, &["ctx"], &mut stat);
    assert_eq!(fs.take_opens(), 500);
    cache.save_stat_cache(&fs, &mut stat).unwrap();

    let started = std::time::Instant::now();
    let mut stat = cache.load_stat_cache(&fs).unwrap();
    let again = digest_of(&fs, &["ctx"], &mut stat);
    let elapsed = started.elapsed();
    assert_eq!(again, first);
    assert_eq!(fs.take_opens(), 0);
    assert_eq!(stat.stats().bytes_read, 0);
    eprintln!("no-op rehash of 500 files: {elapsed:?}");
}

/// The keys of a build's steps: (instruction text, input) after the seed.
fn chain(seed: CacheKey, steps: &[(&str, InputDigest)]) -> Vec<CacheKey> {
    let mut parent = seed;
    steps
        .iter()
        .map(|(text, input)| {
            parent = parent.next(text, input);
            parent.clone()
        })
        .collect()
}

#[test]
fn a_changed_source_rekeys_its_step_and_the_later_ones_only() {
    let fs = context();
    let mut stat = StatCache::new();
    let steps = |fs: &dyn Fs, stat: &mut StatCache| {
        vec![
            ("ENV A=1", InputDigest::none()),
            (
                "COPY scripts/init.sh scripts/",
                digest_of(fs, &["scripts/init.sh"], stat),
            ),
            (
                "COPY manifests manifests",
                digest_of(fs, &["manifests"], stat),
            ),
            ("RUN make", InputDigest::of_env([("A", "1")])),
        ]
    };
    let base = CacheKey::base(&Digest::sha256(b"kubernetes:v1.22 amd64 manifest"));
    let first = chain(base.clone(), &steps(&fs, &mut stat));
    assert_eq!(
        chain(base.clone(), &steps(&fs, &mut stat)),
        first,
        "a no-op rebuild reuses every key"
    );

    write(&fs, "manifests/sub/b.yaml", b"kind: Changed\n");
    let changed = chain(base.clone(), &steps(&fs, &mut stat));
    assert_eq!(
        changed[..2],
        first[..2],
        "steps before the change keep their keys"
    );
    assert!(
        changed[2..].iter().zip(&first[2..]).all(|(a, b)| a != b),
        "the changed step and every later one are rebuilt"
    );

    let rebased = chain(
        CacheKey::base(&Digest::sha256(b"kubernetes:v1.23 amd64 manifest")),
        &steps(&fs, &mut stat),
    );
    assert!(
        rebased.iter().zip(&changed).all(|(a, b)| a != b),
        "a different base rebuilds every step"
    );
}
