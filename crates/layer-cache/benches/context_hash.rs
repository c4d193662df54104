//! Hashing a build context of 1 GiB in 2,000 files: the first time (every file read), then
//! again in a new process-like session (stat cache loaded from the store, no file read).
//! Target: the no-op rehash well under the 0.3 s a whole no-op rebuild may take.
//!
//! Run: `cargo bench -p sealer-layer-cache --bench context_hash` (set `SEALER_BENCH_MIB` and
//! `SEALER_BENCH_FILES` to change the context).
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use sealer_fs_abstraction::{Fs, RealFs};
use sealer_image_store::Store;
use sealer_layer_cache::{InputDigest, InputHasher, LayerCache};

type BenchResult = Result<(), Box<dyn std::error::Error>>;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// One hashing session as a build does it: load the stat cache, hash, save.
fn session(
    cache: &LayerCache,
    context: &dyn Fs,
) -> Result<(InputDigest, u64, Duration), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut stat = cache.load_stat_cache(context)?;
    let mut hasher = InputHasher::new();
    hasher.add_path(context, Path::new("ctx"), &mut stat)?;
    let digest = hasher.finish();
    cache.save_stat_cache(context, &mut stat)?;
    Ok((digest, stat.stats().read, started.elapsed()))
}

fn main() -> BenchResult {
    let mib = env("SEALER_BENCH_MIB", 1024);
    let files = env("SEALER_BENCH_FILES", 2000);
    let work = tempfile::tempdir()?;
    let context = RealFs::create_root(work.path().join("context"))?;
    let store = Store::open_dir(&work.path().join("store"))?;
    let cache = LayerCache::open(&store)?;

    let size = (mib << 20) / files;
    let mut block = vec![0u8; size as usize];
    let past = SystemTime::now() - Duration::from_secs(3600);
    for n in 0..files {
        let path = format!("ctx/d{:02}/f{n:04}", n % 50);
        context.create_dir_all(Path::new(&path).parent().unwrap_or(Path::new(".")))?;
        block
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i as u64 ^ n) as u8);
        let mut file = context.create(Path::new(&path))?;
        file.write_all(&block)?;
        drop(file);
        context.set_modified(Path::new(&path), past)?;
    }

    let (first, read, first_time) = session(&cache, &context)?;
    println!("first hash:  {files} files, {mib} MiB: {first_time:.3?} ({read} files read)");
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let (again, read, time) = session(&cache, &context)?;
        assert_eq!(again, first, "an unchanged context hashes alike");
        assert_eq!(read, 0, "an unchanged context is not read");
        best = best.min(time);
    }
    println!(
        "no-op rehash: {best:.3?} (stat only, 0 files read); target < 300 ms for the whole no-op rebuild: {}",
        if best < Duration::from_millis(300) {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
