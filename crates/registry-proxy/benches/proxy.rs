//! The pull-through cache against distribution's own (`proxy.remoteurl`), both in front of
//! the same upstream docker-registry on loopback, both child processes (so that their CPU
//! time is theirs alone). Prints every measurement and its ratio with the target of issue 4:
//!
//! * warm blob throughput, 1 and 16 streams of cached 64 MiB blobs: ≥ 2 × distribution;
//! * cold pull (manifest + every blob through an empty cache): ≤ 1.05 × a direct pull;
//! * upstream blob GETs when 32 clients ask for one cold blob at once: 1;
//! * proxy CPU seconds per GiB served warm: ≤ 0.5 × distribution;
//!
//! and with the targets of issue 14, the cold fill on its own: [`COLD_BLOBS`] blobs of
//! `SEALER_BENCH_COLD_MIB` MiB (default 128) fetched at once through fresh caches, the caches
//! on a real disk (`SEALER_BENCH_DISK_DIR`, default the temp directory) and on tmpfs
//! (`SEALER_BENCH_TMPFS_DIR`, default `/dev/shm`): the median time of each proxy against
//! distribution's in the same run (≤ 0.8 ×), and each proxy's CPU (utime + stime from
//! `/proc`) per GiB (≤ 1.0 × distribution's). `SEALER_BENCH_ONLY=cold` runs that part alone.
//!
//! Run: `cargo bench -p sealer-registry-proxy --bench proxy` (needs docker-registry and
//! skopeo, found on `PATH`; the cold part alone needs only docker-registry, so the bench binary
//! and docker-registry carried to a machine without network are enough; `SEALER_BENCH_MIB` sets the size of the 4-layer image, default 256). Our proxy runs
//! as this binary re-executed with `SEALER_BENCH_SERVE=<config>`: `sealer_registry_proxy::run`
//! with info logs, as `sealer registry serve` runs it. When it cannot start (no pull-through
//! yet), the distribution and direct measurements are printed alone.

#[path = "support/mod.rs"]
mod support;

#[path = "support/cold.rs"]
mod cold;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use sealer_fs_abstraction::{Fs, RealFs};
use sealer_image_store::testing::ImageSpec;
use sealer_test_harness::{
    ProxyUpstream, Registry, RegistryOptions, free_port, run_ok, seed_image,
};
use support::{BenchResult, OursChild, verdict};

const BIG_REPO: &str = "bench/big";
const SMALL_IMAGES: usize = 20;
/// Cold pulls: the best of this many, each on fresh caches.
const RUNS: usize = 3;
/// Blobs fetched at once by one pull (as registry clients do).
const PULL_JOBS: usize = 4;
const HERD: usize = 32;
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

fn main() -> BenchResult {
    if let Some(done) = support::child_or_usage("proxy") {
        return done;
    }
    let mib: u64 = std::env::var("SEALER_BENCH_MIB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bench = Bench {
        client: support::http_client()?,
        clock_ticks: clock_ticks(),
    };
    let only_cold = std::env::var("SEALER_BENCH_ONLY").is_ok_and(|only| only == "cold");
    if only_cold {
        return cold::run(&bench, &runtime);
    }

    // The upstream: one big image (4 stored layers) and small ones.
    let upstream = Registry::start(RegistryOptions::anonymous())?;
    let layer = (mib << 20) / 4;
    let big = seed_image(
        &upstream.host(),
        &format!("{BIG_REPO}:1"),
        &ImageSpec {
            gzip_level: 0,
            ..ImageSpec::new("example.com/bench/big:1", &[layer; 4], 7)
        },
        None,
    )?;
    for index in 0..SMALL_IMAGES {
        seed_image(
            &upstream.host(),
            &format!("bench/small-{index}:1"),
            &ImageSpec::new(
                "example.com/bench/small:1",
                &[48_000, 160_000],
                100 + index as u64,
            ),
            None,
        )?;
    }
    let layers: Vec<(String, u64)> = runtime.block_on(bench.layers(&upstream.url()))?;
    println!(
        "upstream: docker-registry at {}; {BIG_REPO}:1 = {} MiB in {} layers of {} MiB; \
         {SMALL_IMAGES} small images (2 layers, ~200 KiB)",
        upstream.host(),
        big.total_bytes >> 20,
        layers.len(),
        layers.first().map_or(0, |(_, size)| size >> 20),
    );

    // Cold pulls, each run on fresh caches; the last run's caches stay for the warm part.
    let mut direct = Timings::default();
    let mut distribution_cold = Timings::default();
    let mut ours_cold = Timings::default();
    let mut last = None;
    let mut ours_error = None;
    for _ in 0..RUNS {
        let distribution = Server::distribution(&upstream)?;
        let ours = match Server::ours(&upstream) {
            Ok(ours) => Some(ours),
            Err(error) => {
                ours_error.get_or_insert(error.to_string());
                None
            }
        };
        direct.add(runtime.block_on(bench.cold_pulls(&upstream.url())));
        distribution_cold.add(runtime.block_on(bench.cold_pulls(&distribution.url)));
        if let Some(ours) = &ours {
            ours_cold.add(runtime.block_on(bench.cold_pulls(&ours.url)));
        }
        last = Some((distribution, ours));
    }
    let (distribution, ours) = last.ok_or("no run")?;
    match &ours_error {
        None => println!("ours: sealer_registry_proxy::run, default_upstream = the upstream"),
        Some(error) => println!("ours: NOT AVAILABLE ({error}); distribution alone below"),
    }

    println!("\ncold pull of {BIG_REPO}:1 (best of {RUNS}, fresh caches each run):");
    direct.print_big("direct from the upstream", None);
    distribution_cold.print_big("distribution proxy", direct.big);
    ours_cold.print_big("sealer proxy", direct.big);
    println!("cold pull of the {SMALL_IMAGES} small images, one after another:");
    direct.print_small("direct from the upstream", None);
    distribution_cold.print_small("distribution proxy", direct.small);
    ours_cold.print_small("sealer proxy", direct.small);

    // Warm: the cached big layers, 1 and 16 streams; CPU time of each proxy over both.
    println!(
        "\nwarm blob throughput ({} MiB cached blobs):",
        layers[0].1 >> 20
    );
    // Runs alternate between the two proxies, so that load from elsewhere on the machine
    // hits both alike.
    let mut servers: Vec<(&str, &Server, Result<Warm, String>)> =
        vec![("distribution proxy", &distribution, Ok(Warm::default()))];
    if let Some(ours) = &ours {
        servers.push(("sealer proxy", ours, Ok(Warm::default())));
    }
    for (_, server, warm) in &mut servers {
        if let Err(error) = bench.settle(&runtime, server, &layers) {
            *warm = Err(error.to_string());
        }
    }
    for _ in 0..RUNS {
        for (_, server, warm) in &mut servers {
            let Ok(sum) = warm else { continue };
            match bench.warm_run(&runtime, &upstream, server, &layers) {
                Ok(run) => sum.add(&run),
                Err(error) => *warm = Err(error.to_string()),
            }
        }
    }
    let mut results = servers.into_iter().map(|(label, _, warm)| match warm {
        Ok(warm) => Some(warm),
        Err(error) => {
            println!("  {label}: FAILED: {error}");
            None
        }
    });
    let distribution_warm = results.next().flatten();
    let ours_warm = results.next().flatten();
    for (label, warm) in [
        ("distribution proxy", &distribution_warm),
        ("sealer proxy", &ours_warm),
    ] {
        if let Some(warm) = warm {
            println!(
                "  {label:<20} 1 stream {:>6.0} MiB/s, 16 streams {:>6.0} MiB/s (best of {RUNS}); \
                 {:.2} CPU s/GiB over {:.1} GiB; upstream blob GETs while warm: {}",
                warm.one,
                warm.sixteen,
                warm.cpu_per_gib(),
                warm.bytes as f64 / GIB,
                warm.upstream_gets
            );
        }
    }
    drop(distribution);
    drop(ours);

    // The herd: 32 clients, one cold blob, fresh caches.
    println!(
        "\nherd: {HERD} clients GET one cold {} MiB blob at once:",
        layers[0].1 >> 20
    );
    let (digest, size) = layers[layers.len() - 1].clone();
    let distribution = Server::distribution(&upstream)?;
    let distribution_herd = bench.herd(&runtime, &upstream, &distribution, &digest, size);
    drop(distribution);
    let ours_herd = match Server::ours(&upstream) {
        Ok(ours) => Some(bench.herd(&runtime, &upstream, &ours, &digest, size)),
        Err(_) => None,
    };
    for (label, herd) in [
        ("distribution proxy", Some(&distribution_herd)),
        ("sealer proxy", ours_herd.as_ref()),
    ] {
        match herd {
            Some(Ok(herd)) => println!(
                "  {label:<20} {} upstream blob GET(s); {}/{HERD} complete 200s in {:.2} s",
                herd.upstream_gets,
                herd.complete,
                herd.elapsed.as_secs_f64()
            ),
            Some(Err(error)) => println!("  {label:<20} FAILED: {error}"),
            None => {}
        }
    }

    // The verdict.
    println!("\nratios (sealer proxy vs target):");
    let ratio = |ours: Option<f64>, theirs: Option<f64>| match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => Some(ours / theirs),
        _ => None,
    };
    let warm_pair = |pick: fn(&Warm) -> f64| {
        ratio(
            ours_warm.as_ref().map(pick),
            distribution_warm.as_ref().map(pick),
        )
    };
    verdict(
        "warm 1 stream / distribution",
        warm_pair(|warm| warm.one),
        ">=",
        2.0,
    );
    verdict(
        "warm 16 streams / distribution",
        warm_pair(|warm| warm.sixteen),
        ">=",
        2.0,
    );
    verdict(
        "cold pull / direct",
        ratio(
            ours_cold.big.map(|d| d.as_secs_f64()),
            direct.big.map(|d| d.as_secs_f64()),
        ),
        "<=",
        1.05,
    );
    verdict(
        "herd upstream GETs",
        ours_herd
            .as_ref()
            .and_then(|herd| herd.as_ref().ok())
            .map(|herd| herd.upstream_gets as f64),
        "==",
        1.0,
    );
    verdict(
        "CPU per GiB / distribution",
        warm_pair(Warm::cpu_per_gib),
        "<=",
        0.5,
    );
    if let Ok(herd) = &distribution_herd {
        println!(
            "  (distribution: {} upstream GETs in the herd; cold pull {:.2} × direct)",
            herd.upstream_gets,
            ratio(
                distribution_cold.big.map(|d| d.as_secs_f64()),
                direct.big.map(|d| d.as_secs_f64())
            )
            .unwrap_or(f64::NAN)
        );
    }
    println!();
    cold::run(&bench, &runtime)
}

/// Best cold-pull times of one target.
#[derive(Debug, Default)]
struct Timings {
    big: Option<Duration>,
    small: Option<Duration>,
    error: Option<String>,
}

impl Timings {
    fn add(&mut self, run: BenchResult<(Duration, Duration)>) {
        match run {
            Ok((big, small)) => {
                self.big = Some(self.big.map_or(big, |best| best.min(big)));
                self.small = Some(self.small.map_or(small, |best| best.min(small)));
            }
            Err(error) => {
                self.error.get_or_insert(error.to_string());
            }
        }
    }

    fn print_big(&self, label: &str, direct: Option<Duration>) {
        self.print(label, self.big, direct);
    }

    fn print_small(&self, label: &str, direct: Option<Duration>) {
        self.print(label, self.small, direct);
    }

    fn print(&self, label: &str, time: Option<Duration>, direct: Option<Duration>) {
        match (time, &self.error) {
            (Some(time), _) => {
                let versus = direct
                    .map(|direct| {
                        format!(
                            "  ({:.2} × direct)",
                            time.as_secs_f64() / direct.as_secs_f64()
                        )
                    })
                    .unwrap_or_default();
                println!("  {label:<26} {:>7.3} s{versus}", time.as_secs_f64());
            }
            (None, Some(error)) => println!("  {label:<26} FAILED: {error}"),
            (None, None) => {}
        }
    }
}

/// Warm results of one proxy, over its runs.
#[derive(Debug, Default)]
struct Warm {
    /// Best MiB/s with one stream.
    one: f64,
    /// Best MiB/s with 16 streams.
    sixteen: f64,
    /// Proxy CPU seconds, all runs.
    cpu: f64,
    /// Bytes served, all runs.
    bytes: u64,
    /// Blob GETs the upstream saw meanwhile (should be 0).
    upstream_gets: usize,
}

impl Warm {
    fn add(&mut self, run: &Warm) {
        self.one = self.one.max(run.one);
        self.sixteen = self.sixteen.max(run.sixteen);
        self.cpu += run.cpu;
        self.bytes += run.bytes;
        self.upstream_gets += run.upstream_gets;
    }

    /// Proxy CPU seconds per GiB served.
    fn cpu_per_gib(&self) -> f64 {
        self.cpu / (self.bytes as f64 / GIB)
    }
}

/// Herd results of one proxy.
#[derive(Debug)]
struct Herd {
    upstream_gets: usize,
    complete: usize,
    elapsed: Duration,
}

struct Bench {
    client: reqwest::Client,
    clock_ticks: f64,
}

impl Bench {
    /// The big image's layers (digest, size), read from `base`.
    async fn layers(&self, base: &str) -> BenchResult<Vec<(String, u64)>> {
        let manifest = self.image_manifest(base, BIG_REPO, "1").await?;
        Ok(descriptors(&manifest, false))
    }

    /// The image manifest of `repo:reference` (the first of an index).
    async fn image_manifest(
        &self,
        base: &str,
        repo: &str,
        reference: &str,
    ) -> BenchResult<serde_json::Value> {
        let top = self.manifest(base, repo, reference).await?;
        match top["manifests"].as_array().and_then(|list| list.first()) {
            Some(first) => {
                let digest = first["digest"]
                    .as_str()
                    .ok_or("index entry without digest")?;
                self.manifest(base, repo, digest).await
            }
            None => Ok(top),
        }
    }

    async fn manifest(
        &self,
        base: &str,
        repo: &str,
        reference: &str,
    ) -> BenchResult<serde_json::Value> {
        let url = format!("{base}/v2/{repo}/manifests/{reference}");
        let response = self
            .client
            .get(&url)
            .header("accept", MANIFEST_ACCEPT)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()).into());
        }
        Ok(serde_json::from_slice(&response.bytes().await?)?)
    }

    /// GETs a blob, counting (not keeping) its bytes; fails unless 200 with `size` bytes.
    async fn blob(&self, base: &str, repo: &str, digest: &str, size: u64) -> BenchResult<u64> {
        let url = format!("{base}/v2/{repo}/blobs/{digest}");
        let mut response = self.client.get(&url).send().await?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("GET {url}: {}", response.status()).into());
        }
        let mut read = 0u64;
        while let Some(chunk) = response.chunk().await? {
            read += chunk.len() as u64;
        }
        if read != size {
            return Err(format!("GET {url}: {read} bytes, expected {size}").into());
        }
        Ok(read)
    }

    /// A pull: the manifest(s), then every blob, [`PULL_JOBS`] at once.
    async fn pull(&self, base: &str, repo: &str, tag: &str) -> BenchResult<u64> {
        let manifest = self.image_manifest(base, repo, tag).await?;
        let blobs = descriptors(&manifest, true);
        let sizes: Vec<u64> = stream::iter(blobs)
            .map(|(digest, size)| async move { self.blob(base, repo, &digest, size).await })
            .buffer_unordered(PULL_JOBS)
            .try_collect()
            .await?;
        Ok(sizes.iter().sum())
    }

    /// The big image, then the small ones one after another: (big time, small time).
    async fn cold_pulls(&self, base: &str) -> BenchResult<(Duration, Duration)> {
        let start = Instant::now();
        self.pull(base, BIG_REPO, "1").await?;
        let big = start.elapsed();
        let start = Instant::now();
        for index in 0..SMALL_IMAGES {
            self.pull(base, &format!("bench/small-{index}"), "1")
                .await?;
        }
        Ok((big, start.elapsed()))
    }

    /// `streams` concurrent clients, each GETting every blob `rounds` times (stream `i`
    /// starts at blob `i`): MiB/s.
    async fn throughput(
        &self,
        base: &str,
        blobs: &[(String, u64)],
        streams: usize,
        rounds: usize,
    ) -> BenchResult<(f64, u64)> {
        let start = Instant::now();
        let tasks: Vec<_> = (0..streams)
            .map(|stream| {
                let bench = Bench {
                    client: self.client.clone(),
                    clock_ticks: self.clock_ticks,
                };
                let base = base.to_owned();
                let blobs = blobs.to_vec();
                tokio::spawn(async move {
                    let mut total = 0;
                    for step in 0..rounds * blobs.len() {
                        let (digest, size) = &blobs[(stream + step) % blobs.len()];
                        total += bench.blob(&base, BIG_REPO, digest, *size).await?;
                    }
                    BenchResult::Ok(total)
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await??;
        }
        Ok((total as f64 / MIB / start.elapsed().as_secs_f64(), total))
    }

    /// Waits until `server` serves every blob of `blobs` from its cache. distribution commits
    /// a fill after answering: the first GETs after it may fail or go upstream again.
    fn settle(
        &self,
        runtime: &tokio::runtime::Runtime,
        server: &Server,
        blobs: &[(String, u64)],
    ) -> BenchResult {
        for attempt in 0.. {
            let settled = runtime.block_on(async {
                for (digest, size) in blobs {
                    self.blob(&server.url, BIG_REPO, digest, *size).await?;
                }
                BenchResult::Ok(())
            });
            match settled {
                Ok(()) => break,
                Err(error) if attempt >= 20 => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
        Ok(())
    }

    /// One warm run of `server`, whose cache holds `blobs`: 1 stream over every blob 4 times,
    /// then 16 streams over every blob once; the proxy's CPU time over both.
    fn warm_run(
        &self,
        runtime: &tokio::runtime::Runtime,
        upstream: &Registry,
        server: &Server,
        blobs: &[(String, u64)],
    ) -> BenchResult<Warm> {
        let gets_before = upstream.blob_gets(None);
        let cpu_before = self.cpu_seconds(server.pid)?;
        let (one, one_bytes) = runtime.block_on(self.throughput(&server.url, blobs, 1, 4))?;
        let (sixteen, sixteen_bytes) =
            runtime.block_on(self.throughput(&server.url, blobs, 16, 1))?;
        let cpu = self.cpu_seconds(server.pid)? - cpu_before;
        Ok(Warm {
            one,
            sixteen,
            cpu,
            bytes: one_bytes + sixteen_bytes,
            upstream_gets: upstream.blob_gets(None) - gets_before,
        })
    }

    /// [`HERD`] concurrent GETs of one blob nobody has fetched through `server` yet.
    fn herd(
        &self,
        runtime: &tokio::runtime::Runtime,
        upstream: &Registry,
        server: &Server,
        digest: &str,
        size: u64,
    ) -> BenchResult<Herd> {
        let before = upstream.blob_gets(Some(digest));
        let start = Instant::now();
        let results = runtime.block_on(async {
            let tasks: Vec<_> = (0..HERD)
                .map(|_| {
                    let bench = Bench {
                        client: self.client.clone(),
                        clock_ticks: self.clock_ticks,
                    };
                    let base = server.url.clone();
                    let digest = digest.to_owned();
                    tokio::spawn(async move { bench.blob(&base, BIG_REPO, &digest, size).await })
                })
                .collect();
            let mut complete = 0;
            for task in tasks {
                if matches!(task.await, Ok(Ok(_))) {
                    complete += 1;
                }
            }
            complete
        });
        let elapsed = start.elapsed();
        Ok(Herd {
            upstream_gets: upstream.blob_gets(Some(digest)) - before,
            complete: results,
            elapsed,
        })
    }

    /// utime + stime of a process, in seconds, from `/proc/<pid>/stat`.
    fn cpu_seconds(&self, pid: u32) -> BenchResult<f64> {
        let proc = RealFs::open_root("/proc")?;
        let stat = String::from_utf8(proc.read(&Path::new(&pid.to_string()).join("stat"))?)?;
        // The command name (field 2) is in parentheses and may hold spaces.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or("unreadable /proc stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Field 3 (state) is fields[0]: utime (14) and stime (15) are 11 and 12.
        let ticks: u64 = fields.get(11).ok_or("no utime")?.parse::<u64>()?
            + fields.get(12).ok_or("no stime")?.parse::<u64>()?;
        Ok(ticks as f64 / self.clock_ticks)
    }
}

/// (digest, size) of the layers, with the config first when `config`.
fn descriptors(manifest: &serde_json::Value, config: bool) -> Vec<(String, u64)> {
    let entry = |value: &serde_json::Value| {
        Some((
            value["digest"].as_str()?.to_owned(),
            value["size"].as_u64()?,
        ))
    };
    let mut list = Vec::new();
    if config && let Some(config) = entry(&manifest["config"]) {
        list.push(config);
    }
    if let Some(layers) = manifest["layers"].as_array() {
        list.extend(layers.iter().filter_map(entry));
    }
    list
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that fails).
fn clock_ticks() -> f64 {
    run_ok("getconf", &["CLK_TCK"], Duration::from_secs(10))
        .ok()
        .and_then(|out| String::from_utf8(out).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A proxy under test: its base URL and process id, kept running while this lives.
struct Server {
    url: String,
    pid: u32,
    /// The [`Registry`] or [`OursChild`]: the process stops when it is dropped.
    _process: Box<dyn std::any::Any>,
}

impl Server {
    /// docker-registry with `proxy.remoteurl` = the upstream.
    fn distribution(upstream: &Registry) -> BenchResult<Self> {
        let registry = Registry::start(RegistryOptions {
            proxy: Some(ProxyUpstream {
                remote_url: upstream.url(),
                ..ProxyUpstream::default()
            }),
            ..RegistryOptions::default()
        })?;
        Ok(Self {
            url: registry.url(),
            pid: registry.pid().ok_or("docker-registry is not running")?,
            _process: Box::new(registry),
        })
    }

    /// This binary re-executed as our registry with the upstream as its default upstream
    /// (so both proxies get the same request paths).
    fn ours(upstream: &Registry) -> BenchResult<Self> {
        let port = free_port()?;
        let config = format!(
            "listen: 127.0.0.1:{port}\nstorage: store\nmode: read-only\n\
             upstreams:\n  - name: upstream\n    url: {}\n    tag_ttl: 0\n\
             default_upstream: upstream\n",
            upstream.url()
        );
        let ours = OursChild::start(&config, port)?;
        Ok(Self {
            url: ours.url.clone(),
            pid: ours.pid(),
            _process: Box::new(ours),
        })
    }
}
