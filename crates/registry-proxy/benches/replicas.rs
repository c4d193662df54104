//! Registry replicas on an S3 bucket against distribution 2.8 (Debian's `docker-registry`,
//! its `s3` storage driver) on the same moto server, measured in the same run (issue 13):
//!
//! 1. **push and pull**: one sealer replica and one distribution, each under its own prefix
//!    of one bucket, push then pull an image of a few big layers (half of them uploaded
//!    monolithically, half in [`CHUNK_MIB`] MiB PATCHes, [`JOBS`] blobs at once, as clients
//!    do); a pull GETs the manifest and every blob and checks each digest. Prints the median
//!    seconds and MiB/s of the runs and the ratio sealer/distribution (target ≥ 1);
//! 2. **the herd**: [`HERD`] concurrent cold GETs of one big blob spread over three sealer
//!    replicas of one bucket, pulling through a real upstream docker-registry; the same over
//!    three distribution pull-through proxies (each with its own root in the bucket). Prints
//!    the blob GETs the upstream logged (target 1 for the cluster; distribution makes at least
//!    one per replica), the wall time and how many clients got the right bytes.
//!
//! Run: `cargo bench -p sealer-registry-proxy --bench replicas`. Every server is on
//! 127.0.0.1; nothing is fetched from the network. Environment:
//!
//! * `PATH`: must hold `docker-registry` (distribution 2.8);
//! * `MOTO_VENV`: the virtual environment with `bin/moto_server` (default `.venv-moto` at the
//!   workspace root, where `scripts/install-moto.sh` puts it); moto runs threaded;
//! * `SEALER_BENCH_REPLICAS_MIB`: the image size in MiB (default 1024; e.g. 256 for a quick
//!   run on a small machine), in `SEALER_BENCH_REPLICAS_LAYERS` layers (default 4);
//! * `SEALER_BENCH_REPLICAS_RUNS`: runs of the push/pull part, each on a fresh moto and fresh
//!   registries, the order of the two alternating (default 3);
//! * `SEALER_BENCH_HERD_MIB`: the herd's blob in MiB (default: one layer's size).
//!
//! The sealer side runs as this binary re-executed as `sealer registry serve` with a
//! `storage: { s3: … }` configuration (replicas add `cluster:`). A build whose configuration
//! does not accept it prints `sealer replicas on S3: not available in this build (<error>)`
//! and the distribution figures alone.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use sealer_image_store::testing::RandomBytes;
use sealer_image_store::{Algorithm, Digest, Hasher};
use sealer_registry_proxy::ServerConfig;
use sealer_test_harness::{
    Moto, MotoMode, ProxyUpstream, Registry, RegistryOptions, S3Storage, free_port,
};
use support::{BenchResult, OursChild, verdict};

/// Blobs pushed or pulled at once by one client.
const JOBS: usize = 4;
/// The PATCH size of chunked uploads (S3's smallest multipart part is 5 MiB).
const CHUNK_MIB: usize = 16;
/// Concurrent cold GETs of the herd.
const HERD: usize = 32;
/// Replicas (and distribution proxies) of the herd.
const REPLICAS: usize = 3;
const PUSH_REPO: &str = "bench/replicas";
const HERD_REPO: &str = "bench/herd";
/// The upstream's name in our replicas' configuration; also the first path component that
/// routes a request to it.
const UPSTREAM_NAME: &str = "up";
const PEER_SECRET: &str = "bench-peer-secret-0123456789";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MIB: f64 = (1u64 << 20) as f64;

fn main() -> BenchResult {
    if let Some(done) = support::child_or_usage("replicas") {
        return done;
    }
    let mib = env_number("SEALER_BENCH_REPLICAS_MIB", 1024).max(1);
    let layer_count = env_number("SEALER_BENCH_REPLICAS_LAYERS", 4).max(1);
    let runs = env_number("SEALER_BENCH_REPLICAS_RUNS", 3).max(1);
    let herd_mib = env_number("SEALER_BENCH_HERD_MIB", (mib / layer_count).max(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bench = Bench {
        client: support::http_client()?,
    };

    let image = Image::generate(mib, layer_count);
    println!(
        "image: {} MiB in {layer_count} layers of {} MiB (+ config, manifest); even layers \
         pushed monolithically, odd ones in {CHUNK_MIB} MiB PATCHes; {JOBS} blobs at once",
        image.bytes() >> 20,
        image.layers[0].bytes.len() >> 20,
    );
    push_pull(&runtime, &bench, &image, runs)?;
    drop(image);
    herd(&runtime, &bench, herd_mib)
}

/// Part 1: push then pull on one sealer replica and on distribution, both on one moto.
fn push_pull(
    runtime: &tokio::runtime::Runtime,
    bench: &Bench,
    image: &Image,
    runs: usize,
) -> BenchResult {
    let mut distribution = Transfers::default();
    let mut sealer = Transfers::default();
    let mut sealer_missing = None;
    for run in 0..runs {
        let moto = Moto::start_with(MotoMode::Threaded)?;
        // Alternating who goes first, so that what the first leaves behind (moto's memory,
        // the page cache) weighs on both alike.
        let sealer_first = run % 2 == 1;
        for sealer_turn in [sealer_first, !sealer_first] {
            if sealer_turn {
                if sealer_missing.is_some() || sealer.error.is_some() {
                    continue;
                }
                let port = free_port()?;
                let config = sealer_config(&moto, &format!("sealer-{run}"), port, None);
                if let Err(error) = ServerConfig::parse(&config, "registry.yaml".as_ref()) {
                    sealer_missing = Some(error.to_string());
                    continue;
                }
                match OursChild::start(&config, port) {
                    Ok(ours) => {
                        sealer.add(runtime.block_on(bench.push_then_pull(&ours.url, image)));
                        if sealer.error.is_some() {
                            println!("  sealer replica's log: {}", ours.log_tail());
                        }
                    }
                    Err(error) => sealer.error = Some(format!("start: {error}")),
                }
            } else {
                let registry = Registry::start(RegistryOptions {
                    s3: Some(distribution_root(&moto, &format!("/distribution-{run}"))),
                    ..RegistryOptions::anonymous()
                })?;
                distribution.add(runtime.block_on(bench.push_then_pull(&registry.url(), image)));
                if let Some(error) = &distribution.error {
                    return Err(format!("distribution: {error}\n{}", registry.log()).into());
                }
            }
        }
    }

    let total = image.bytes() as f64;
    println!(
        "\npush then pull on one moto (threaded), median of {runs} run(s), fresh moto each run:"
    );
    distribution.print("distribution 2.8 (s3 driver)", total);
    match &sealer_missing {
        Some(error) => println!("  sealer replicas on S3: not available in this build ({error})"),
        None => sealer.print("sealer replica (s3)", total),
    }
    println!("ratios (sealer / distribution):");
    for (label, ours, theirs) in [
        (
            "push throughput",
            sealer.push_median(),
            distribution.push_median(),
        ),
        (
            "pull throughput",
            sealer.pull_median(),
            distribution.pull_median(),
        ),
    ] {
        // Throughput ratio = their time / our time.
        let ratio = ours.zip(theirs).map(|(ours, theirs)| theirs / ours);
        verdict(label, ratio, ">=", 1.0);
    }
    Ok(())
}

/// Part 2: the herd over three sealer replicas and over three distribution proxies.
fn herd(runtime: &tokio::runtime::Runtime, bench: &Bench, herd_mib: usize) -> BenchResult {
    let upstream = Registry::start(RegistryOptions::anonymous())?;
    let blob = Blob::generate(herd_mib << 20, 0x4e52_4448);
    runtime.block_on(bench.upload(&upstream.url(), HERD_REPO, &blob, false))?;
    let moto = Moto::start_with(MotoMode::Threaded)?;
    println!(
        "\nherd: {HERD} concurrent cold GETs of one {herd_mib} MiB blob over {REPLICAS} \
         replicas, pulling through docker-registry at {}; one moto (threaded):",
        upstream.host()
    );

    let proxies = (0..REPLICAS)
        .map(|index| {
            Registry::start(RegistryOptions {
                proxy: Some(ProxyUpstream {
                    remote_url: upstream.url(),
                    ..ProxyUpstream::default()
                }),
                s3: Some(distribution_root(
                    &moto,
                    &format!("/herd-distribution-{index}"),
                )),
                ..RegistryOptions::anonymous()
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let urls: Vec<String> = proxies
        .iter()
        .map(|proxy| format!("{}/v2/{HERD_REPO}/blobs/{}", proxy.url(), blob.digest))
        .collect();
    let distribution = bench.herd(runtime, &upstream, &urls, &blob);
    drop(proxies);
    print_herd("distribution 2.8 proxies", &distribution);

    let ports = (0..REPLICAS)
        .map(|_| free_port())
        .collect::<Result<Vec<_>, _>>()?;
    let configs: Vec<String> = ports
        .iter()
        .map(|port| sealer_config(&moto, "herd-sealer", *port, Some(&upstream.url())))
        .collect();
    let sealer = match ServerConfig::parse(&configs[0], "registry.yaml".as_ref()) {
        Err(error) => {
            println!("  sealer replicas on S3: not available in this build ({error})");
            None
        }
        Ok(_) => {
            let replicas = configs
                .iter()
                .zip(&ports)
                .map(|(config, port)| OursChild::start(config, *port))
                .collect::<Result<Vec<_>, _>>()?;
            let urls: Vec<String> = replicas
                .iter()
                .map(|replica| {
                    format!(
                        "{}/v2/{UPSTREAM_NAME}/{HERD_REPO}/blobs/{}",
                        replica.url, blob.digest
                    )
                })
                .collect();
            let herd = bench.herd(runtime, &upstream, &urls, &blob);
            if !herd.as_ref().is_ok_and(|herd| herd.complete == HERD) {
                for replica in &replicas {
                    println!("  sealer replica {}: {}", replica.url, replica.log_tail());
                }
            }
            print_herd("sealer replicas", &herd);
            Some(herd)
        }
    };

    println!("herd targets:");
    let gets = |herd: Option<&BenchResult<Herd>>| {
        herd.and_then(|herd| herd.as_ref().ok())
            .map(|herd| herd.upstream_gets as f64)
    };
    verdict("sealer upstream GETs", gets(sealer.as_ref()), "==", 1.0);
    verdict(
        "distribution upstream GETs",
        gets(Some(&distribution)),
        ">=",
        REPLICAS as f64,
    );
    Ok(())
}

fn print_herd(label: &str, herd: &BenchResult<Herd>) {
    match herd {
        Ok(herd) => {
            println!(
                "  {label:<28} {} upstream blob GET(s); {}/{HERD} right bytes in {:.2} s",
                herd.upstream_gets,
                herd.complete,
                herd.elapsed.as_secs_f64()
            );
            if let Some(error) = &herd.first_error {
                println!("  {:<28} first failure: {error}", "");
            }
        }
        Err(error) => println!("  {label:<28} FAILED: {error}"),
    }
}

/// distribution's storage: `root` in `moto`'s bucket.
fn distribution_root(moto: &Moto, root: &str) -> S3Storage {
    S3Storage {
        endpoint: moto.endpoint(),
        bucket: moto.bucket().to_owned(),
        root: root.to_owned(),
    }
}

/// Our registry's configuration on `moto`'s bucket under `prefix`, listening on `port`; with
/// an upstream, a replica of a cluster that pulls through it.
fn sealer_config(moto: &Moto, prefix: &str, port: u16, upstream: Option<&str>) -> String {
    let mut config = format!(
        "listen: 127.0.0.1:{port}\nmode: read-write\nstorage:\n  s3: {{bucket: {}, prefix: {prefix}, \
         endpoint: {}, allow_http: true,\n       access_key_id: sealer-test, \
         secret_access_key: sealer-test}}\n",
        moto.bucket(),
        moto.endpoint()
    );
    if let Some(upstream) = upstream {
        config.push_str(&format!(
            "cluster:\n  advertise_url: http://127.0.0.1:{port}\n  peer_secret: {PEER_SECRET}\n  \
             lease_ttl: 30s\nupstreams: [{{name: {UPSTREAM_NAME}, url: {upstream}}}]\n"
        ));
    }
    config
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// One blob in memory with its digest.
struct Blob {
    bytes: Bytes,
    digest: Digest,
}

impl Blob {
    /// `len` pseudo-random bytes from `seed`.
    fn generate(len: usize, seed: u64) -> Self {
        let mut bytes = Vec::with_capacity(len);
        // Reading an in-memory generator into a Vec cannot fail.
        let _ = std::io::Read::read_to_end(&mut RandomBytes::new(seed, len as u64), &mut bytes);
        Self::new(bytes)
    }

    fn new(bytes: Vec<u8>) -> Self {
        Self {
            digest: Digest::sha256(&bytes),
            bytes: Bytes::from(bytes),
        }
    }

    fn descriptor(&self, media_type: &str) -> serde_json::Value {
        serde_json::json!({
            "mediaType": media_type,
            "digest": self.digest.to_string(),
            "size": self.bytes.len(),
        })
    }
}

/// An OCI image: uncompressed layers of random bytes, its config and manifest.
struct Image {
    layers: Vec<Blob>,
    config: Blob,
    manifest: Blob,
}

impl Image {
    fn generate(mib: usize, layer_count: usize) -> Self {
        let layer_len = (mib << 20) / layer_count;
        let layers: Vec<Blob> = (0..layer_count)
            .map(|index| Blob::generate(layer_len, 0x5245_504c + index as u64))
            .collect();
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|layer| layer.digest.to_string())
            .collect();
        let config = Blob::new(
            serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }))
            .unwrap_or_default(),
        );
        let manifest = Blob::new(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(OCI_CONFIG),
                "layers": layers.iter().map(|layer| layer.descriptor(OCI_LAYER)).collect::<Vec<_>>(),
            }))
            .unwrap_or_default(),
        );
        Self {
            layers,
            config,
            manifest,
        }
    }

    /// Every byte a push sends or a pull receives.
    fn bytes(&self) -> usize {
        self.layers
            .iter()
            .chain([&self.config, &self.manifest])
            .map(|blob| blob.bytes.len())
            .sum()
    }
}

/// Push and pull times of one registry, over the runs.
#[derive(Default)]
struct Transfers {
    push: Vec<Duration>,
    pull: Vec<Duration>,
    error: Option<String>,
}

impl Transfers {
    fn add(&mut self, run: BenchResult<(Duration, Duration)>) {
        match run {
            Ok((push, pull)) => {
                self.push.push(push);
                self.pull.push(pull);
            }
            Err(error) => self.error = Some(error.to_string()),
        }
    }

    fn push_median(&self) -> Option<f64> {
        median(&self.push)
    }

    fn pull_median(&self) -> Option<f64> {
        median(&self.pull)
    }

    fn print(&self, label: &str, bytes: f64) {
        if let Some(error) = &self.error {
            println!("  {label:<30} FAILED: {error}");
            return;
        }
        let figure = |seconds: Option<f64>| match seconds {
            Some(seconds) => format!("{seconds:>7.2} s {:>6.0} MiB/s", bytes / MIB / seconds),
            None => "n/a".to_owned(),
        };
        println!(
            "  {label:<30} push {}   pull {}",
            figure(self.push_median()),
            figure(self.pull_median())
        );
    }
}

/// The median in seconds (the mean of the middle two for an even count).
fn median(times: &[Duration]) -> Option<f64> {
    let mut seconds: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    seconds.sort_by(f64::total_cmp);
    let middle = seconds.len() / 2;
    match seconds.len() {
        0 => None,
        len if len % 2 == 1 => Some(seconds[middle]),
        _ => Some((seconds[middle - 1] + seconds[middle]) / 2.0),
    }
}

/// Herd results against one set of replicas.
struct Herd {
    upstream_gets: usize,
    complete: usize,
    /// What the first client that failed saw.
    first_error: Option<String>,
    elapsed: Duration,
}

#[derive(Clone)]
struct Bench {
    client: reqwest::Client,
}

impl Bench {
    /// Pushes `image` to `base`, then pulls it back: (push time, pull time).
    async fn push_then_pull(&self, base: &str, image: &Image) -> BenchResult<(Duration, Duration)> {
        let start = Instant::now();
        self.push(base, image).await?;
        let push = start.elapsed();
        let start = Instant::now();
        self.pull(base, image).await?;
        Ok((push, start.elapsed()))
    }

    /// The config and layers, [`JOBS`] at once (odd layers chunked), then the manifest.
    async fn push(&self, base: &str, image: &Image) -> BenchResult {
        let blobs = std::iter::once((&image.config, false)).chain(
            image
                .layers
                .iter()
                .enumerate()
                .map(|(index, layer)| (layer, index % 2 == 1)),
        );
        stream::iter(blobs)
            .map(|(blob, chunked)| self.upload(base, PUSH_REPO, blob, chunked))
            .buffer_unordered(JOBS)
            .try_collect::<()>()
            .await?;
        let url = format!("{base}/v2/{PUSH_REPO}/manifests/1");
        let response = self
            .client
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, OCI_MANIFEST)
            .body(image.manifest.bytes.clone())
            .send()
            .await?;
        expect_status(&url, response, reqwest::StatusCode::CREATED).await?;
        Ok(())
    }

    /// The manifest by tag, then every blob it names ([`JOBS`] at once), each checked
    /// against its digest.
    async fn pull(&self, base: &str, image: &Image) -> BenchResult {
        let url = format!("{base}/v2/{PUSH_REPO}/manifests/1");
        let response = self
            .client
            .get(&url)
            .header(reqwest::header::ACCEPT, OCI_MANIFEST)
            .send()
            .await?;
        let response = expect_status(&url, response, reqwest::StatusCode::OK).await?;
        if Digest::sha256(&response.bytes().await?) != image.manifest.digest {
            return Err(format!("GET {url}: not the pushed manifest").into());
        }
        stream::iter(std::iter::once(&image.config).chain(&image.layers))
            .map(|blob| {
                self.get_blob(
                    format!("{base}/v2/{PUSH_REPO}/blobs/{}", blob.digest),
                    blob.bytes.len(),
                    &blob.digest,
                )
            })
            .buffer_unordered(JOBS)
            .try_collect::<()>()
            .await
    }

    /// GETs `url` and checks that it answers 200 with `len` bytes of digest `digest`.
    async fn get_blob(&self, url: String, len: usize, digest: &Digest) -> BenchResult {
        let response = self.client.get(&url).send().await?;
        let mut response = expect_status(&url, response, reqwest::StatusCode::OK).await?;
        let mut hasher = Hasher::new(Algorithm::Sha256);
        let mut read = 0;
        while let Some(chunk) = response.chunk().await? {
            hasher.update(&chunk);
            read += chunk.len();
        }
        if read != len || hasher.finish() != *digest {
            return Err(format!("GET {url}: {read} bytes, not the {len} bytes of {digest}").into());
        }
        Ok(())
    }

    /// One blob upload to `repo`: `POST` then either one `PUT` with the whole body
    /// (monolithic) or `PATCH`es of [`CHUNK_MIB`] MiB and an empty `PUT` (chunked).
    async fn upload(&self, base: &str, repo: &str, blob: &Blob, chunked: bool) -> BenchResult {
        let url = format!("{base}/v2/{repo}/blobs/uploads/");
        let response = self.client.post(&url).send().await?;
        let response = expect_status(&url, response, reqwest::StatusCode::ACCEPTED).await?;
        let mut location = location(base, &response)?;
        let mut body = blob.bytes.clone();
        if chunked {
            let mut offset = 0;
            while offset < blob.bytes.len() {
                let end = (offset + (CHUNK_MIB << 20)).min(blob.bytes.len());
                let response = self
                    .client
                    .patch(&location)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(
                        reqwest::header::CONTENT_RANGE,
                        format!("{offset}-{}", end - 1),
                    )
                    .body(blob.bytes.slice(offset..end))
                    .send()
                    .await?;
                let response =
                    expect_status(&location, response, reqwest::StatusCode::ACCEPTED).await?;
                location = self::location(base, &response)?;
                offset = end;
            }
            body = Bytes::new();
        }
        let separator = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{separator}digest={}", blob.digest);
        let response = self
            .client
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await?;
        expect_status(&url, response, reqwest::StatusCode::CREATED).await?;
        Ok(())
    }

    /// [`HERD`] concurrent GETs of `blob`, client `i` asking `urls[i % urls.len()]`; counts
    /// the blob GETs `upstream` logged meanwhile.
    fn herd(
        &self,
        runtime: &tokio::runtime::Runtime,
        upstream: &Registry,
        urls: &[String],
        blob: &Blob,
    ) -> BenchResult<Herd> {
        let digest = blob.digest.to_string();
        let before = upstream.blob_gets(Some(&digest));
        let start = Instant::now();
        let results = runtime.block_on(async {
            // A task per client: checking digests takes CPU, which the runtime's threads share.
            let tasks: Vec<_> = (0..HERD)
                .map(|client| {
                    let bench = self.clone();
                    let url = urls[client % urls.len()].clone();
                    let (len, digest) = (blob.bytes.len(), blob.digest.clone());
                    tokio::spawn(async move { bench.get_blob(url, len, &digest).await })
                })
                .collect();
            futures_util::future::join_all(tasks).await
        });
        let mut complete = 0;
        let mut first_error = None;
        for result in results {
            match result
                .map_err(|error| error.to_string())
                .and_then(|got| got.map_err(|error| error.to_string()))
            {
                Ok(()) => complete += 1,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        let elapsed = start.elapsed();
        Ok(Herd {
            upstream_gets: upstream.blob_gets(Some(&digest)) - before,
            complete,
            first_error,
            elapsed,
        })
    }
}

/// `response` when its status is `expected`, else an error with the status and body.
async fn expect_status(
    url: &str,
    response: reqwest::Response,
    expected: reqwest::StatusCode,
) -> BenchResult<reqwest::Response> {
    if response.status() == expected {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    Err(format!("{url}: {status} (expected {expected}): {}", body.trim()).into())
}

/// The absolute URL of an upload's `Location` (registries may answer a path).
fn location(base: &str, response: &reqwest::Response) -> BenchResult<String> {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .ok_or("upload answer without Location")?
        .to_str()?;
    Ok(
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{base}{location}")
        },
    )
}
