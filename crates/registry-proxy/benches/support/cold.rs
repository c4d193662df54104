//! The cold fill of issue 14: [`COLD_BLOBS`] blobs fetched at once through fresh caches, with
//! the caches on a real disk and on tmpfs; time and CPU per GiB of our proxy against
//! distribution's, measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use sealer_fs_abstraction::{Fs, RealFs};
use sealer_image_store::Digest;
use sealer_test_harness::{Registry, RegistryOptions, run_ok};

use super::{Bench, GIB, Server};
use crate::support::{BenchResult, verdict};

/// Blobs fetched at once.
pub const COLD_BLOBS: usize = 8;
/// Runs per medium, each on fresh caches: the median is reported.
const COLD_RUNS: usize = 3;
const COLD_REPO: &str = "bench/cold";

/// Median time and CPU of one target over the runs.
#[derive(Default)]
struct Samples {
    seconds: Vec<f64>,
    ticks_per_gib: Vec<f64>,
}

impl Samples {
    fn time(&self) -> f64 {
        median(&self.seconds)
    }

    fn cpu(&self) -> f64 {
        median(&self.ticks_per_gib)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Set in the child that measures one medium: its name (its `TMPDIR` is the medium's).
const MEDIUM_ENV: &str = "SEALER_BENCH_COLD_MEDIUM";

/// Measures and prints the cold fill on disk and on tmpfs: each in a child (this binary
/// re-executed) whose `TMPDIR` is on that medium, since every cache, ours and
/// distribution's, is a temp directory.
pub fn run(bench: &Bench, runtime: &tokio::runtime::Runtime) -> BenchResult {
    if let Some(medium) = std::env::var_os(MEDIUM_ENV) {
        return runtime.block_on(run_medium(bench, &medium.to_string_lossy()));
    }
    let disk =
        std::env::var_os("SEALER_BENCH_DISK_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let tmpfs = std::env::var_os("SEALER_BENCH_TMPFS_DIR")
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    for (medium, dir) in [("disk", disk), ("tmpfs", tmpfs)] {
        let status = Command::new(std::env::current_exe()?)
            .arg("--bench")
            .env("SEALER_BENCH_ONLY", "cold")
            .env(MEDIUM_ENV, medium)
            .env("TMPDIR", &dir)
            .status()?;
        if !status.success() {
            return Err(format!("the cold fill on {medium} ({}): {status}", dir.display()).into());
        }
    }
    Ok(())
}

/// The cold fill with every cache (and the upstream) in the temp directory.
async fn run_medium(bench: &Bench, medium: &str) -> BenchResult {
    let mib: u64 = std::env::var("SEALER_BENCH_COLD_MIB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(128);
    let upstream = Registry::start(RegistryOptions::anonymous())?;
    let blobs = seed(bench, &upstream.url(), mib << 20).await?;
    let (direct, distribution, ours) = measure(bench, &upstream, &blobs).await?;
    println!(
        "cold fill, caches on {medium} ({}): {COLD_BLOBS} blobs of {mib} MiB GET at once through \
         fresh caches, median of {COLD_RUNS}; {} CPUs, load average {} (a loaded machine's \
         figures are rough)",
        std::env::temp_dir().display(),
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average()
    );
    println!(
        "  direct {:.3} s; distribution {:.3} s, {:.0} ticks/GiB; sealer {:.3} s, \
         {:.0} ticks/GiB",
        direct.time(),
        distribution.time(),
        distribution.cpu(),
        ours.time(),
        ours.cpu(),
    );
    verdict(
        &format!("cold {medium}: time / distribution"),
        Some(ours.time() / distribution.time()),
        "<=",
        0.8,
    );
    verdict(
        &format!("cold {medium}: CPU per GiB / distrib."),
        Some(ours.cpu() / distribution.cpu()),
        "<=",
        1.0,
    );
    Ok(())
}

/// Pushes [`COLD_BLOBS`] blobs of `size` pseudo-random bytes to `base`: (digest, size).
async fn seed(bench: &Bench, base: &str, size: u64) -> BenchResult<Vec<(String, u64)>> {
    let mut blobs = Vec::new();
    for index in 0..COLD_BLOBS {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ index as u64;
        let data: Vec<u8> = (0..size / 8)
            .flat_map(|_| {
                // xorshift64: cheap bytes that do not compress.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        let digest = Digest::sha256(&data).to_string();
        let started = bench
            .client
            .post(format!("{base}/v2/{COLD_REPO}/blobs/uploads/"))
            .send()
            .await?;
        let location = started
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .ok_or("upload start without Location")?
            .to_owned();
        let location = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = bench
            .client
            .put(format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await?;
        if !put.status().is_success() {
            return Err(format!("pushing blob {index}: {}", put.status()).into());
        }
        blobs.push((digest, size));
    }
    Ok(blobs)
}

/// [`COLD_RUNS`] runs, fresh caches each: direct, distribution, ours.
async fn measure(
    bench: &Bench,
    upstream: &Registry,
    blobs: &[(String, u64)],
) -> BenchResult<(Samples, Samples, Samples)> {
    let (mut direct, mut distribution, mut ours) =
        (Samples::default(), Samples::default(), Samples::default());
    for _ in 0..COLD_RUNS {
        let theirs = Server::distribution(upstream)?;
        let mine = Server::ours(upstream)?;
        let (seconds, _) = fetch_all(bench, &upstream.url(), blobs, None).await?;
        direct.seconds.push(seconds);
        for (server, samples) in [(&theirs, &mut distribution), (&mine, &mut ours)] {
            let (seconds, ticks) = fetch_all(bench, &server.url, blobs, Some(server.pid)).await?;
            samples.seconds.push(seconds);
            samples.ticks_per_gib.push(ticks);
        }
    }
    Ok((direct, distribution, ours))
}

/// GETs every blob at once from `base`: seconds, and CPU ticks per GiB of process `pid`.
async fn fetch_all(
    bench: &Bench,
    base: &str,
    blobs: &[(String, u64)],
    pid: Option<u32>,
) -> BenchResult<(f64, f64)> {
    // The writeback of what the previous target wrote would slow this one down: each
    // starts on a quiet disk.
    run_ok("sync", &[], Duration::from_secs(120))?;
    let cpu_before = pid.map(|pid| bench.cpu_seconds(pid)).transpose()?;
    let start = Instant::now();
    let bytes: u64 = try_join_all(
        blobs
            .iter()
            .map(|(digest, size)| bench.blob(base, COLD_REPO, digest, *size)),
    )
    .await?
    .iter()
    .sum();
    let seconds = start.elapsed().as_secs_f64();
    let ticks = match (pid, cpu_before) {
        (Some(pid), Some(before)) => {
            // What finishes after the last byte (the commit) is part of the fill's cost.
            tokio::time::sleep(Duration::from_millis(500)).await;
            (bench.cpu_seconds(pid)? - before) * bench.clock_ticks / (bytes as f64 / GIB)
        }
        _ => f64::NAN,
    };
    Ok((seconds, ticks))
}

/// `/proc/loadavg`'s first three fields.
fn load_average() -> String {
    RealFs::open_root("/proc")
        .and_then(|proc| proc.read(Path::new("loadavg")))
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}
