//! Pull and push of a 256 MiB, 4-layer image on loopback against `skopeo copy` of the same
//! image in the same run, both talking to Debian's docker-registry. Prints the time ratios;
//! target: sealer ≤ 1.0 × skopeo.
//!
//! Run: `cargo bench -p sealer-registry-client --bench pull_push` (needs docker-registry and
//! skopeo; `SEALER_BENCH_MIB` changes the image size).

use std::time::{Duration, Instant};

use sealer_image_store::testing::ImageSpec;
use sealer_image_store::{Reference, Store};
use sealer_registry_client::{
    ClientOptions, CredentialStore, NoProgress, PlatformSelection, RegistryClient,
};
use sealer_test_harness::{Registry, RegistryOptions, run_ok, seed_image, temp_dir};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const REPOSITORY: &str = "bench/big:1";
const RUNS: usize = 3;
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(600);

fn main() -> BenchResult {
    let mib: u64 = std::env::var("SEALER_BENCH_MIB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(256);
    let layer = (mib << 20) / 4;
    let source = Registry::start(RegistryOptions::anonymous())?;
    let spec = ImageSpec {
        gzip_level: 0,
        ..ImageSpec::new("example.com/bench/big:1", &[layer; 4], 7)
    };
    let seeded = seed_image(&source.host(), REPOSITORY, &spec, None)?;
    println!(
        "image: {} MiB in 4 layers at {} ({})",
        seeded.total_bytes >> 20,
        source.host(),
        seeded.manifest_digest
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client = RegistryClient::new(ClientOptions {
        credentials: CredentialStore::anonymous(),
        ..ClientOptions::default()
    })?;
    let source_ref: Reference = format!("{}/{REPOSITORY}", source.host()).parse()?;

    // Pull: into an empty store each run.
    let mut pulled = None;
    let sealer_pull = best_of(|| {
        let dir = temp_dir()?;
        let store = Store::open_dir(&dir.path().join("store"))?;
        let start = Instant::now();
        runtime.block_on(client.pull(&store, &source_ref, PlatformSelection::Host, &NoProgress))?;
        let elapsed = start.elapsed();
        pulled = Some((dir, store));
        Ok(elapsed)
    })?;
    let skopeo_pull = best_of(|| {
        let dir = temp_dir()?;
        let start = Instant::now();
        skopeo(&[
            "--src-tls-verify=false",
            &format!("docker://{}/{REPOSITORY}", source.host()),
            &format!("oci:{}:x", dir.path().join("layout").display()),
        ])?;
        Ok(start.elapsed())
    })?;

    // Push: from the pulled store (sealer) or an OCI layout of it (skopeo) into a fresh
    // registry each run.
    let (_pulled_dir, store) = pulled.ok_or("no pull ran")?;
    let layout = temp_dir()?;
    let layout_ref = format!("oci:{}:x", layout.path().join("layout").display());
    skopeo(&[
        "--src-tls-verify=false",
        &format!("docker://{}/{REPOSITORY}", source.host()),
        &layout_ref,
    ])?;
    let sealer_push = best_of(|| {
        let target = Registry::start(RegistryOptions::anonymous())?;
        let destination: Reference = format!("{}/{REPOSITORY}", target.host()).parse()?;
        let start = Instant::now();
        runtime.block_on(client.push(
            &store,
            &source_ref.to_string(),
            &destination,
            &NoProgress,
        ))?;
        Ok(start.elapsed())
    })?;
    let skopeo_push = best_of(|| {
        let target = Registry::start(RegistryOptions::anonymous())?;
        let start = Instant::now();
        skopeo(&[
            "--dest-tls-verify=false",
            &layout_ref,
            &format!("docker://{}/{REPOSITORY}", target.host()),
        ])?;
        Ok(start.elapsed())
    })?;

    let seconds = |duration: Duration| duration.as_secs_f64();
    let rate =
        |duration: Duration| seeded.total_bytes as f64 / seconds(duration) / (1u64 << 20) as f64;
    println!(
        "sealer pull: {:.2}s ({:.0} MiB/s)",
        seconds(sealer_pull),
        rate(sealer_pull)
    );
    println!(
        "skopeo pull: {:.2}s ({:.0} MiB/s)",
        seconds(skopeo_pull),
        rate(skopeo_pull)
    );
    println!(
        "sealer push: {:.2}s ({:.0} MiB/s)",
        seconds(sealer_push),
        rate(sealer_push)
    );
    println!(
        "skopeo push: {:.2}s ({:.0} MiB/s)",
        seconds(skopeo_push),
        rate(skopeo_push)
    );
    println!(
        "ratios (sealer time / skopeo time, target <= 1.0): pull {:.2}, push {:.2}",
        seconds(sealer_pull) / seconds(skopeo_pull),
        seconds(sealer_push) / seconds(skopeo_push)
    );
    Ok(())
}

fn skopeo(args: &[&str]) -> BenchResult {
    let mut all = vec!["--insecure-policy", "copy", "-q"];
    all.extend_from_slice(args);
    run_ok("skopeo", &all, SKOPEO_TIMEOUT)?;
    Ok(())
}

/// The fastest of [`RUNS`] runs; each run measures its own interval (set-up excluded).
fn best_of(mut run: impl FnMut() -> BenchResult<Duration>) -> BenchResult<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..RUNS {
        best = best.min(run()?);
    }
    Ok(best)
}
