//! Save and load of a 1 GiB image against `skopeo copy` in the same run, and raw single-core
//! SHA-256 throughput. Prints the ratios; targets: save and load ≥ 0.8 × the SHA-256 rate,
//! and faster than skopeo.
//!
//! Runs twice, each in a child (this binary re-executed) whose `TMPDIR` holds every store
//! and archive: on a real disk (`SEALER_BENCH_DISK_DIR`, default the temp directory), where
//! writing may be slower than hashing, and on tmpfs (`SEALER_BENCH_TMPFS_DIR`, default
//! `/dev/shm`), where only the CPU counts. `SEALER_BENCH_MEDIUM=disk|tmpfs` runs one medium
//! in this process.
//!
//! Run: `cargo bench -p sealer-image-store --bench save_load` (needs skopeo; set
//! `SEALER_BENCH_MIB` to change the image size).
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sealer_fs_abstraction::{AtomicFile, Fs, RealFs};
use sealer_image_store::archive::{self, LoadOptions, SaveOptions};
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{Digest, Store};

const NAME: &str = "example.com/bench/big:1";

/// Names the medium measured in this process (its `TMPDIR` is on it).
const MEDIUM_ENV: &str = "SEALER_BENCH_MEDIUM";

fn main() -> BenchResult {
    let Some(medium) = std::env::var_os(MEDIUM_ENV) else {
        return each_medium();
    };
    println!(
        "--- stores and archives on {} ({})",
        medium.to_string_lossy(),
        std::env::temp_dir().display()
    );
    let mib: u64 = std::env::var("SEALER_BENCH_MIB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1024);
    let work = tempfile::tempdir()?;
    let root = work.path();
    let source = Store::open_dir(&root.join("source"))?;
    let layer = (mib << 20) / 4;
    let spec = ImageSpec {
        gzip_level: 0,
        ..ImageSpec::new(NAME, &[layer; 4], 42)
    };
    write_image(&source, &spec)?;
    let bytes = mib << 20;
    let work_fs = RealFs::open_root(root)?;

    let sha = sha256_rate();
    println!("sha256 single core: {:.0} MiB/s", sha / MIB);
    // Writing new file data is the floor under any save or load: measure it here too.
    let write = best_of(3, || {
        let mut out = work_fs.create(Path::new("ceiling.bin"))?;
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..mib {
            out.write_all(&chunk)?;
        }
        out.sync_all()?;
        drop(out);
        work_fs.remove_file(Path::new("ceiling.bin"))?;
        Ok(())
    })?;
    let write_rate = bytes as f64 / write.as_secs_f64();
    println!(
        "plain file write + fsync (no hashing): {:.0} MiB/s",
        write_rate / MIB
    );

    let save = best_of(3, || {
        let mut out = AtomicFile::create(&work_fs, Path::new("sealer.tar"))?;
        archive::save(
            &source,
            &[NAME.to_owned()],
            &mut out,
            SaveOptions::default(),
        )?;
        out.commit()?;
        Ok(())
    })?;
    let load = best_of(3, || {
        let _ = work_fs.remove_dir_all(Path::new("loaded"));
        let target = Store::open_dir(&root.join("loaded"))?;
        let mut input = work_fs.open(Path::new("sealer.tar"))?;
        archive::load(&target, &mut input, LoadOptions::default())?;
        Ok(())
    })?;
    let rate = |elapsed: Duration| bytes as f64 / elapsed.as_secs_f64();
    println!(
        "sealer save: {:.2}s ({:.0} MiB/s) = {:.2} x sha256",
        save.as_secs_f64(),
        rate(save) / MIB,
        rate(save) / sha
    );
    println!(
        "sealer load: {:.2}s ({:.0} MiB/s) = {:.2} x sha256",
        load.as_secs_f64(),
        rate(load) / MIB,
        rate(load) / sha
    );

    if Command::new("skopeo").arg("--version").output().is_err() {
        println!("skopeo not installed: no peer comparison");
        return Ok(());
    }
    let source_layout = format!("oci:{}:{NAME}", root.join("source").display());
    let skopeo_archive = root.join("skopeo.tar");
    let skopeo_save = best_of(3, || {
        let _ = work_fs.remove_file(Path::new("skopeo.tar"));
        skopeo(&[
            &source_layout,
            &format!("oci-archive:{}:{NAME}", skopeo_archive.display()),
        ])
    })?;
    let skopeo_load = best_of(3, || {
        let _ = work_fs.remove_dir_all(Path::new("skopeo-loaded"));
        skopeo(&[
            &format!("oci-archive:{}:{NAME}", root.join("sealer.tar").display()),
            &format!("oci:{}:{NAME}", root.join("skopeo-loaded").display()),
        ])
    })?;
    println!(
        "skopeo save (oci: -> oci-archive:): {:.2}s",
        skopeo_save.as_secs_f64()
    );
    println!(
        "skopeo load (oci-archive: -> oci:): {:.2}s",
        skopeo_load.as_secs_f64()
    );
    let ceiling = sha.min(write_rate);
    println!(
        "against the slower of sha256 and plain writing ({:.0} MiB/s): save {:.2} x, load {:.2} x",
        ceiling / MIB,
        rate(save) / ceiling,
        rate(load) / ceiling
    );
    println!(
        "ratios: save {:.2} x sha256 (target >= 0.8), load {:.2} x sha256 (target >= 0.8), save {:.2} x skopeo time, load {:.2} x skopeo time (target < 1)",
        rate(save) / sha,
        rate(load) / sha,
        save.as_secs_f64() / skopeo_save.as_secs_f64(),
        load.as_secs_f64() / skopeo_load.as_secs_f64()
    );
    Ok(())
}

const MIB: f64 = (1 << 20) as f64;

/// Measures on disk, then on tmpfs: this binary again, with `TMPDIR` on each.
fn each_medium() -> BenchResult {
    let disk =
        std::env::var_os("SEALER_BENCH_DISK_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let tmpfs = std::env::var_os("SEALER_BENCH_TMPFS_DIR")
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    for (medium, dir) in [("disk", disk), ("tmpfs", tmpfs)] {
        if !dir.is_dir() {
            println!("--- no {medium} directory {}: skipped", dir.display());
            continue;
        }
        let status = Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env(MEDIUM_ENV, medium)
            .env("TMPDIR", &dir)
            .status()?;
        if !status.success() {
            return Err(format!("the run on {medium} ({}): {status}", dir.display()).into());
        }
    }
    Ok(())
}

fn skopeo(args: &[&str]) -> BenchResult {
    let status = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q"])
        .args(args)
        .status()?;
    if !status.success() {
        return Err(format!("skopeo {args:?} failed").into());
    }
    Ok(())
}

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The fastest of `runs` runs.
fn best_of(runs: usize, mut run: impl FnMut() -> BenchResult) -> BenchResult<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let start = Instant::now();
        run()?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

/// Bytes per second of single-threaded SHA-256 over a buffer in cache-warm memory.
fn sha256_rate() -> f64 {
    let buffer = vec![0x5au8; 64 << 20];
    let elapsed = best_of(5, || {
        std::hint::black_box(Digest::sha256(&buffer));
        Ok(())
    })
    .unwrap_or(Duration::MAX);
    buffer.len() as f64 / elapsed.as_secs_f64()
}
