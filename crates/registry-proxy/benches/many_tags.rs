//! Manifest GETs by tag against a store with 10 tags and with 50,000 tags (issue 10, point
//! 9): the rate with 50,000 tags must be ≥ 0.8 × the rate with 10, since a tag is found in
//! the store's in-memory `index.json` (one `stat` per request to see whether it changed)
//! instead of reading and parsing the whole file per request.
//!
//! Run: `cargo bench -p sealer-registry-proxy --bench many_tags`. Each store is filled in
//! one `index.json` update (every tag names one small image), served by the in-process
//! server on a loopback port, and asked [`REQUESTS`] GETs of tags spread over the whole
//! list by [`CONCURRENCY`] clients at once; the best of [`ROUNDS`] interleaved rounds is
//! printed for each, with the ratio.

// A benchmark: a failure ends it with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, stream};
use sealer_image_store::Store;
use sealer_image_store::model::REF_NAME_ANNOTATION;
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_registry_proxy::ServerConfig;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const FEW: usize = 10;
const MANY: usize = 50_000;
const REQUESTS: usize = 10_000;
const WARM_UP: usize = 500;
const CONCURRENCY: usize = 32;
const ROUNDS: usize = 3;
const TARGET_RATIO: f64 = 0.8;
const REPOSITORY: &str = "bench/many";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// The store trusts an `index.json` stamp only once the file is this old (a write within
/// the same timestamp tick could otherwise go unseen): until then every request reads it.
const INDEX_SETTLE: Duration = Duration::from_millis(2_100);

fn main() -> BenchResult {
    // `cargo bench` passes --bench; `cargo test --benches` must not spend time here.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "many-tags benchmark: run it with `cargo bench -p sealer-registry-proxy --bench many_tags`"
        );
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .timeout(Duration::from_secs(30))
        .build()?;

    let few = Served::start(FEW)?;
    let many = Served::start(MANY)?;
    std::thread::sleep(INDEX_SETTLE);
    for served in [&few, &many] {
        runtime.block_on(served.run(&client, WARM_UP))?;
    }
    let (mut best_few, mut best_many) = (0f64, 0f64);
    for round in 1..=ROUNDS {
        let rate_few = runtime.block_on(few.run(&client, REQUESTS))?;
        let rate_many = runtime.block_on(many.run(&client, REQUESTS))?;
        println!("round {round}: {FEW} tags {rate_few:.0} req/s, {MANY} tags {rate_many:.0} req/s");
        best_few = best_few.max(rate_few);
        best_many = best_many.max(rate_many);
    }
    let ratio = best_many / best_few;
    println!(
        "manifest GETs by tag ({CONCURRENCY} concurrent clients, {REQUESTS} per run, best of {ROUNDS}):"
    );
    println!("  {FEW:>6} tags: {best_few:>8.0} req/s");
    println!("  {MANY:>6} tags: {best_many:>8.0} req/s");
    println!(
        "  ratio {ratio:.2} (target ≥ {TARGET_RATIO}): {}",
        if ratio >= TARGET_RATIO {
            "met"
        } else {
            "NOT met"
        }
    );
    for mut served in [few, many] {
        served.server.stop()?;
    }
    Ok(())
}

/// A store of `tags` tags served on a loopback port.
struct Served {
    _dir: tempfile::TempDir,
    server: common::InProcess,
    tags: usize,
}

impl Served {
    fn start(tags: usize) -> BenchResult<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("store");
        let store = Store::open_dir(&root)?;
        let name = |tag: usize| format!("localhost/{REPOSITORY}:t{tag}");
        let image = write_image(&store, &ImageSpec::new(&name(0), &[4096], 1))?;
        store.update_index(|index| {
            for tag in 1..tags {
                let mut entry = image.clone();
                entry
                    .annotations
                    .insert(REF_NAME_ANNOTATION.to_owned(), name(tag));
                index.manifests.push(entry);
            }
            Ok(())
        })?;
        let config = ServerConfig::parse(
            &format!("storage: {}\n", root.display()),
            Path::new("registry.yaml"),
        )?;
        let server = common::InProcess::start(config);
        Ok(Self {
            _dir: dir,
            server,
            tags,
        })
    }

    /// `count` GETs of tags spread over the whole list; returns requests per second.
    async fn run(&self, client: &reqwest::Client, count: usize) -> BenchResult<f64> {
        let base = format!("http://{}/v2/{REPOSITORY}/manifests", self.server.address);
        let started = Instant::now();
        let results: Vec<BenchResult> = stream::iter(0..count)
            .map(|request| {
                // A stride prime to the tag count visits tags all over the list.
                let url = format!("{base}/t{}", request.wrapping_mul(7_919) % self.tags);
                async move {
                    let response = client
                        .get(&url)
                        .header("Accept", MANIFEST_ACCEPT)
                        .send()
                        .await?;
                    if response.status() != reqwest::StatusCode::OK {
                        return Err(format!("GET {url}: {}", response.status()).into());
                    }
                    response.bytes().await?;
                    Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        results.into_iter().collect::<BenchResult>()?;
        Ok(count as f64 / elapsed)
    }
}
