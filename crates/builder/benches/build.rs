//! `sealer build` of a context of 1 GiB in 2,000 files: the first build (every layer made),
//! then no-op rebuilds (every layer from the cache). Target: a no-op rebuild under 0.3 s,
//! printed beside the first build's time.
//!
//! Run: `cargo bench -p sealer-builder --bench build` (set `SEALER_BENCH_MIB` and
//! `SEALER_BENCH_FILES` to change the context).
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use sealer_builder::engine::{BuildOptions, NoObserver, build};
use sealer_builder::kubefile::parse;
use sealer_fs_abstraction::{Fs, RealFs};
use sealer_image_store::Store;

type BenchResult = Result<(), Box<dyn std::error::Error>>;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Cheap, poorly compressible bytes (xorshift), different per file.
fn fill(block: &mut [u8], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in block.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

fn main() -> BenchResult {
    let mib = env("SEALER_BENCH_MIB", 1024);
    let files = env("SEALER_BENCH_FILES", 2000);
    let work = tempfile::tempdir()?;
    let context = RealFs::create_root(work.path().join("context"))?;
    let store = Store::open_dir(&work.path().join("store"))?;

    // Two COPY layers of half the files each, an app, metadata.
    let size = (mib << 20) / files;
    let mut block = vec![0u8; size as usize];
    let past = SystemTime::now() - Duration::from_secs(3600);
    for n in 0..files {
        let half = if n % 2 == 0 { "bin" } else { "images" };
        let path = format!("{half}/d{:02}/f{n:04}", n % 50);
        context.create_dir_all(Path::new(&path).parent().unwrap_or(Path::new(".")))?;
        fill(&mut block, n);
        let mut file = context.create(Path::new(&path))?;
        file.write_all(&block)?;
        drop(file);
        context.set_modified(Path::new(&path), past)?;
    }
    context.create_dir_all(Path::new("app"))?;
    context.write_atomic(Path::new("app/app.yaml"), b"kind: Pod\n")?;
    context.set_modified(Path::new("app/app.yaml"), past)?;
    let kubefile = parse(
        "FROM scratch\nCOPY bin /bin/\nCOPY images /images/\nAPP app local://app\nLAUNCH [\"app\"]\n",
        "Kubefile",
    )?;
    let options = BuildOptions {
        tags: vec!["localhost/bench:v1".parse()?],
        ..BuildOptions::default()
    };

    let started = Instant::now();
    let first = build(&kubefile, &context, &store, &options, &mut NoObserver)?;
    let first_time = started.elapsed();
    println!(
        "first build: {files} files, {mib} MiB: {first_time:.3?} ({} layers built)",
        first.layers_built
    );
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let again = build(&kubefile, &context, &store, &options, &mut NoObserver)?;
        best = best.min(started.elapsed());
        assert_eq!(again.descriptor.digest, first.descriptor.digest);
        assert_eq!(again.layers_built, 0, "a no-op rebuild builds nothing");
    }
    println!(
        "no-op rebuild: {best:.3?} (best of 5) beside {first_time:.3?} for the first build; target < 300 ms: {}",
        if best < Duration::from_millis(300) {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
