//! Caching the dependency images of a cluster image (issue 6 point 6): `sealer build` in full
//! mode of a Kubefile whose `imageList` names 20 images that share their base layers, from a
//! real loopback docker-registry into an empty store, beside `skopeo sync` of the same 20
//! images into an empty directory in the same run.
//!
//! Targets: upstream bytes (manifest and blob response bodies, from the registry's access
//! log) = 1.0 × the sum of the unique blob sizes (manifests, configs, layers, deduplicated by
//! digest); build time ≤ 1.0 × `skopeo sync` time (medians). A rebuild with the same store is
//! measured too: it should fetch 0 bytes. A missed target is printed, not an error.
//!
//! Every image is 3 base layers (the same in all 20) and 2 layers of its own. The build time
//! is the whole build (COPY step, scan, pulls, and the `registry/` layer: a compressed tar of
//! every pulled blob); the time spent inside the pull hook is printed beside it.
//!
//! Run: `cargo bench -p sealer-builder --bench deps_cache` (needs docker-registry and skopeo).
//! `SEALER_BENCH_IMAGE_KIB` (default 4096) is the size of one image: 3/4 in the shared base
//! layers, 1/4 in its own; `SEALER_BENCH_IMAGES` (default 20) the number of images;
//! `SEALER_BENCH_RUNS` (default 3) the runs of each side; `SEALER_BENCH_COMPRESSION` (`gzip`,
//! the default, or `zstd`) the build's layer compression.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sealer_builder::engine::{
    BuildMode, BuildOptions, BuildReport, HookError, LayerCompression, NoObserver, build,
    container_images,
};
use sealer_builder::kubefile::{Kubefile, parse};
use sealer_fs_abstraction::{Fs, RealFs};
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{ManifestDocument, Platform, Reference, Store};
use sealer_registry_client::{
    ClientOptions, CredentialStore, NoProgress, PlatformSelection, RegistryClient,
};
use sealer_test_harness::{
    AccessEntry, Registry, RegistryOptions, require_tool, run_ok, seed_image, temp_dir,
};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The seed of every image: with the same seed, layers of the same number and size are the
/// same blob, so the base layers are shared and the own layers differ by their size.
const SEED: u64 = 6;
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(600);
const KUBEFILE: &str = "FROM scratch\nCOPY imageList /imageList\n";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

/// Image `number`: the shared base layers, then two layers of its own (sizes offset by the
/// number, so their digests differ from every other image's).
fn spec(number: u64, image_bytes: u64) -> ImageSpec {
    let base = image_bytes * 3 / 4;
    let own = image_bytes - base;
    let layers = [
        base / 2,
        base / 4,
        base - base / 2 - base / 4,
        own / 2 + number,
        own - own / 2 + number,
    ];
    ImageSpec {
        gzip_level: 0,
        ..ImageSpec::new(&format!("localhost/bench/app-{number:02}:1"), &layers, SEED)
    }
}

/// Bytes of manifest and blob bodies in `entries` (what a client downloads).
fn content_bytes(entries: &[AccessEntry]) -> (u64, usize) {
    let content: Vec<&AccessEntry> = entries
        .iter()
        .filter(|entry| {
            entry.method == "GET"
                && (entry.path.contains("/manifests/") || entry.path.contains("/blobs/"))
        })
        .collect();
    (content.iter().map(|entry| entry.bytes).sum(), content.len())
}

/// What `run` fetched from `registry`, counted from its access log: content bytes, content
/// GETs, and requests of any kind.
fn fetched<T>(
    registry: &Registry,
    run: impl FnOnce() -> BenchResult<T>,
) -> BenchResult<(T, u64, usize, usize)> {
    let before = registry.access_log().len();
    let value = run()?;
    let log = registry.access_log();
    let entries = log.get(before..).unwrap_or_default();
    let (bytes, gets) = content_bytes(entries);
    Ok((value, bytes, gets, entries.len()))
}

/// How many images the built image's `sealer.image.container.images` lists.
fn listed_images(store: &Store, report: &BuildReport) -> BenchResult<usize> {
    match store.read_manifest(&report.descriptor)? {
        ManifestDocument::Image(manifest) => Ok(container_images(&manifest)?.len()),
        ManifestDocument::Index(_) => Err("one platform makes a manifest".into()),
    }
}

struct SealerRun {
    total: Duration,
    pulling: Duration,
    report: BuildReport,
}

/// `sealer build` of `kubefile` in full mode, pulling with a fresh registry client (as the CLI
/// does), timed from the client's creation to the commit.
fn sealer_build(
    kubefile: &Kubefile,
    context: &RealFs,
    store: &Store,
    compression: LayerCompression,
) -> BenchResult<SealerRun> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = RegistryClient::new(ClientOptions {
        credentials: CredentialStore::anonymous(),
        ..ClientOptions::default()
    })?;
    let pulling = Cell::new(Duration::ZERO);
    let pull = |reference: &str, platform: &Platform| -> Result<(), HookError> {
        let pull_started = Instant::now();
        let image: Reference = reference.parse()?;
        let result = runtime
            .block_on(client.pull(
                store,
                &image,
                PlatformSelection::Only(platform.clone()),
                &NoProgress,
            ))
            .map(drop)
            .map_err(HookError::from);
        pulling.set(pulling.get() + pull_started.elapsed());
        result
    };
    let options = BuildOptions {
        tags: vec!["localhost/bench/deps:1".parse()?],
        platforms: vec![amd64()],
        pull: Some(&pull),
        build_mode: BuildMode::Full,
        compression,
        ..BuildOptions::default()
    };
    let report = build(kubefile, context, store, &options, &mut NoObserver)?;
    Ok(SealerRun {
        total: started.elapsed(),
        pulling: pulling.get(),
        report,
    })
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
}

fn main() -> BenchResult {
    if !(require_tool("docker-registry") && require_tool("skopeo")) {
        return Ok(());
    }
    let image_bytes = env("SEALER_BENCH_IMAGE_KIB", 4096) << 10;
    let images = env("SEALER_BENCH_IMAGES", 20);
    let runs = env("SEALER_BENCH_RUNS", 3).max(1);
    let compression = match std::env::var("SEALER_BENCH_COMPRESSION").as_deref() {
        Ok("zstd") => LayerCompression::Zstd,
        Ok("gzip") | Err(_) => LayerCompression::Gzip,
        Ok(other) => return Err(format!("SEALER_BENCH_COMPRESSION={other}: gzip or zstd").into()),
    };
    let registry = Registry::start(RegistryOptions::anonymous())?;
    let host = registry.host();

    // The images, written once locally (for the unique blob sizes, manifests included) and
    // pushed with skopeo.
    let scratch = temp_dir()?;
    let local = Store::open_dir(&scratch.path().join("store"))?;
    let mut unique = BTreeMap::new();
    let mut references = Vec::new();
    let mut pushed_bytes = 0;
    let seeding = Instant::now();
    for number in 0..images {
        let spec = spec(number, image_bytes);
        let top = write_image(&local, &spec)?;
        let ManifestDocument::Image(manifest) = local.read_manifest(&top)? else {
            return Err("a single-platform spec makes an image manifest".into());
        };
        unique.insert(top.digest.to_string(), top.size);
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            unique.insert(blob.digest.to_string(), blob.size);
        }
        pushed_bytes += top.size + manifest.config.size;
        pushed_bytes += manifest.layers.iter().map(|layer| layer.size).sum::<u64>();
        let path = format!("bench/app-{number:02}:1");
        let seeded = seed_image(&host, &path, &spec, None)?;
        if seeded.manifest_digest != top.digest.to_string() {
            return Err(format!("{path}: the registry serves another digest").into());
        }
        references.push(seeded.reference);
    }
    let unique_bytes: u64 = unique.values().sum();
    println!(
        "{images} images of {} each (3 shared base layers, 2 own) seeded at {host} in {:.1?}: {} blobs, {} unique of {} in all",
        mib(image_bytes),
        seeding.elapsed(),
        unique.len(),
        mib(unique_bytes),
        mib(pushed_bytes),
    );

    // The build context: an imageList naming the 20 references.
    let work = temp_dir()?;
    let context = RealFs::create_root(work.path().join("context"))?;
    let mut list = format!("# {images} images sharing base layers\n");
    for reference in &references {
        list.push_str(reference);
        list.push('\n');
    }
    context.write_atomic(Path::new("imageList"), list.as_bytes())?;
    let kubefile = parse(KUBEFILE, "Kubefile")?;

    // skopeo sync's source: the same references, as a YAML list.
    let mut yaml = format!("{host}:\n  tls-verify: false\n  images:\n");
    for reference in &references {
        let (repository, tag) = reference
            .strip_prefix(&format!("{host}/"))
            .and_then(|path| path.rsplit_once(':'))
            .ok_or("reference without host or tag")?;
        yaml.push_str(&format!("    {repository}: [\"{tag}\"]\n"));
    }
    let sync_dir = RealFs::create_root(work.path().join("sync"))?;
    sync_dir.write_atomic(Path::new("sync.yaml"), yaml.as_bytes())?;
    let sync_source = work
        .path()
        .join("sync/sync.yaml")
        .to_str()
        .ok_or("temp path not UTF-8")?
        .to_owned();

    let mut sealer_times = Vec::new();
    let mut pull_times = Vec::new();
    let mut rest_times = Vec::new();
    let mut skopeo_times = Vec::new();
    let mut sealer_bytes = Vec::new();
    let mut skopeo_bytes = Vec::new();
    let mut sealer_requests = 0;
    let mut skopeo_requests = 0;
    let mut last = None;
    for run in 0..runs {
        // sealer: an empty store each run.
        let store_dir = temp_dir()?;
        let store = Store::open_dir(&store_dir.path().join("store"))?;
        let (sealer, bytes, requests, _) = fetched(&registry, || {
            sealer_build(&kubefile, &context, &store, compression)
        })?;
        let listed = listed_images(&store, &sealer.report)?;
        if listed != references.len() {
            return Err(
                format!("the build lists {listed} images, not {}", references.len()).into(),
            );
        }
        sealer_times.push(sealer.total);
        pull_times.push(sealer.pulling);
        rest_times.push(sealer.total.saturating_sub(sealer.pulling));
        sealer_bytes.push(bytes);
        sealer_requests = requests;
        println!(
            "run {}: sealer build {:.3?} (pulls {:.3?}), {} in {requests} GETs, {} layers built",
            run + 1,
            sealer.total,
            sealer.pulling,
            mib(bytes),
            sealer.report.layers_built,
        );

        // skopeo sync: an empty directory each run.
        let destination = temp_dir()?;
        let destination_path = destination
            .path()
            .to_str()
            .ok_or("temp path not UTF-8")?
            .to_owned();
        let (elapsed, bytes, requests, _) = fetched(&registry, || {
            let started = Instant::now();
            run_ok(
                "skopeo",
                &[
                    "sync",
                    "--src",
                    "yaml",
                    "--dest",
                    "dir",
                    "--scoped",
                    "--src-tls-verify=false",
                    &sync_source,
                    &destination_path,
                ],
                SKOPEO_TIMEOUT,
            )?;
            Ok(started.elapsed())
        })?;
        skopeo_times.push(elapsed);
        skopeo_bytes.push(bytes);
        skopeo_requests = requests;
        println!(
            "run {}: skopeo sync  {elapsed:.3?}, {} in {requests} GETs",
            run + 1,
            mib(bytes),
        );
        last = Some((store_dir, store, sealer.report));
    }

    // A rebuild with the last run's store: nothing to fetch.
    let (_store_dir, store, first) = last.ok_or("no run")?;
    let (rebuild, rebuild_bytes, rebuild_gets, rebuild_requests) = fetched(&registry, || {
        sealer_build(&kubefile, &context, &store, compression)
    })?;
    if rebuild.report.descriptor.digest != first.descriptor.digest {
        return Err("the rebuild made another image".into());
    }

    let sealer_time = median(&mut sealer_times);
    let pull_time = median(&mut pull_times);
    let skopeo_time = median(&mut skopeo_times);
    let sealer_upstream = sealer_bytes.iter().copied().max().unwrap_or_default();
    let skopeo_upstream = skopeo_bytes.iter().copied().max().unwrap_or_default();
    let bytes_ratio = ratio(sealer_upstream as f64, unique_bytes as f64);
    let time_ratio = ratio(sealer_time.as_secs_f64(), skopeo_time.as_secs_f64());
    let pull_ratio = ratio(pull_time.as_secs_f64(), skopeo_time.as_secs_f64());
    println!();
    println!("deps_cache: {images} images sharing base layers, medians of {runs} runs");
    println!("  images                              {images}");
    println!(
        "  unique blob bytes                   {unique_bytes} ({}, {} blobs)",
        mib(unique_bytes),
        unique.len()
    );
    println!(
        "  sealer upstream bytes               {sealer_upstream} ({}, {sealer_requests} GETs) = {bytes_ratio:.3}x unique; target 1.0x: {}",
        mib(sealer_upstream),
        verdict(sealer_upstream == unique_bytes),
    );
    println!(
        "  skopeo upstream bytes               {skopeo_upstream} ({}, {skopeo_requests} GETs) = {:.3}x unique",
        mib(skopeo_upstream),
        ratio(skopeo_upstream as f64, unique_bytes as f64),
    );
    println!("  skopeo sync time                    {skopeo_time:.3?}");
    println!(
        "  sealer build time                   {sealer_time:.3?} = {time_ratio:.2}x skopeo; target <= 1.0x: {}",
        verdict(time_ratio <= 1.0),
    );
    println!("    of which in the pull hook         {pull_time:.3?} = {pull_ratio:.2}x skopeo");
    println!(
        "    the rest (COPY, scan, registry/)  {:.3?} ({compression:?} layers)",
        median(&mut rest_times)
    );
    println!(
        "  sealer rebuild, same store          {:.3?}, {rebuild_bytes} bytes in {rebuild_gets} GETs ({rebuild_requests} requests); target 0 bytes: {}",
        rebuild.total,
        verdict(rebuild_bytes == 0),
    );
    Ok(())
}
