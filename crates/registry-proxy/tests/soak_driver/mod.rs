//! The soak of issue 10: several clients push, pull and delete (manifests and blobs) over
//! real HTTP against an in-process server, while a thread collects garbage (no grace, and
//! the default grace as `sealer prune` does) in a loop, for a fixed number of rounds.
//! Afterwards every image answered 201 and not deleted must pull with its digest (manifest
//! and every blob hashed) and `fsck` must be clean. `tests/soak.rs` runs it small,
//! `benches/soak.rs` large.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sealer_image_store::{Digest, GcOptions, Store};
use sealer_registry_proxy::{Mode, ServerConfig};
use serde_json::{Value, json};

use crate::common::InProcess;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Layers every client's images draw from, so that repositories share blobs.
const SHARED_LAYERS: u64 = 4;
/// Attempts of a push whose blobs a concurrent GC or blob delete removed.
const PUSH_ATTEMPTS: usize = 8;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a soak did and found.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// Manifest PUTs answered 201.
    pub pushes: usize,
    /// Pushes given up after [`PUSH_ATTEMPTS`] refusals (blobs removed under them).
    pub pushes_given_up: usize,
    /// Full pulls (manifest and every blob) during the run.
    pub pulls: usize,
    /// Manifest deletes.
    pub manifest_deletes: usize,
    /// Blob deletes, by answer: removed or kept (202), refused (409), unknown (404).
    pub blob_deletes: [usize; 3],
    /// GC runs.
    pub gcs: usize,
    /// Images alive at the end (each pulled again).
    pub images_at_end: usize,
    /// Everything that went wrong; empty when the soak passed.
    pub failures: Vec<String>,
}

impl SoakReport {
    /// Requests of every kind, GCs included.
    pub fn operations(&self) -> usize {
        self.pushes
            + self.pushes_given_up
            + self.pulls
            + self.manifest_deletes
            + self.blob_deletes.iter().sum::<usize>()
            + self.gcs
            + self.images_at_end
    }
}

/// An image a client was answered 201 for and has not deleted.
#[derive(Debug, Clone)]
struct Image {
    repo: String,
    tag: String,
    digest: Digest,
}

/// A tiny deterministic generator (the same soak every time for given sizes).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}

fn shared_layer(index: u64) -> Vec<u8> {
    format!("a layer every repository may use: {index}").into_bytes()
}

/// Runs `clients` clients for `rounds` rounds each against a fresh server and store.
pub fn run(clients: usize, rounds: usize) -> SoakReport {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("store");
    let mut server = InProcess::start(ServerConfig {
        storage: Some(storage.clone().into()),
        mode: Mode::ReadWrite,
        delete_blobs: true,
        ..ServerConfig::default()
    });
    let base = format!("http://{}", server.address);
    let store = Store::open_dir(&storage).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let gcs = Arc::new(AtomicUsize::new(0));
    let collector = {
        let (store, stop, gcs) = (store.clone(), stop.clone(), gcs.clone());
        std::thread::spawn(move || collect_garbage(&store, &stop, &gcs))
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let mut report = SoakReport::default();
    let mut alive = Vec::new();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let (http, base) = (http.clone(), base.clone());
                tokio::spawn(async move { run_client(&http, &base, client, rounds).await })
            })
            .collect();
        for task in tasks {
            let (client_report, images) = task.await.unwrap();
            merge(&mut report, client_report);
            alive.extend(images);
        }
    });
    stop.store(true, Ordering::Relaxed);
    let collector_error = collector.join().unwrap();
    report.failures.extend(collector_error);
    report.gcs = gcs.load(Ordering::Relaxed);

    runtime.block_on(async {
        for image in &alive {
            if let Err(failure) = pull(&http, &base, image).await {
                report.failures.push(format!("after the soak: {failure}"));
            }
        }
    });
    report.images_at_end = alive.len();
    match store.fsck() {
        Ok(fsck) if fsck.is_clean() => {}
        Ok(fsck) => report.failures.push(format!("fsck: {fsck:?}")),
        Err(error) => report.failures.push(format!("fsck: {error}")),
    }
    if let Err(error) = server.stop() {
        report.failures.push(format!("server: {error}"));
    }
    report
}

fn merge(into: &mut SoakReport, from: SoakReport) {
    into.pushes += from.pushes;
    into.pushes_given_up += from.pushes_given_up;
    into.pulls += from.pulls;
    into.manifest_deletes += from.manifest_deletes;
    for (total, count) in into.blob_deletes.iter_mut().zip(from.blob_deletes) {
        *total += count;
    }
    into.failures.extend(from.failures);
}

/// GC until told to stop (bounded in runs and time): without grace, the worst case for
/// pushes, and with the default grace, as `sealer prune` does; pauses of 0 to 40 ms between
/// runs land them at every point of the pushes.
fn collect_garbage(store: &Store, stop: &AtomicBool, gcs: &AtomicUsize) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut runs = 0u64;
    while !stop.load(Ordering::Relaxed) && runs < 10_000_000 && Instant::now() < deadline {
        let options = if runs.is_multiple_of(2) {
            GcOptions {
                keep_fresh: Duration::ZERO,
                ..GcOptions::default()
            }
        } else {
            GcOptions::default()
        };
        if let Err(error) = store.gc_with(&options) {
            return Some(format!("gc: {error}"));
        }
        runs += 1;
        gcs.fetch_add(1, Ordering::Relaxed);
        // A longer pause now and then lets pushes through on a loaded machine too.
        let pause = if runs.is_multiple_of(10) {
            150
        } else {
            runs % 9 * 5
        };
        std::thread::sleep(Duration::from_millis(pause));
    }
    None
}

async fn run_client(
    http: &reqwest::Client,
    base: &str,
    client: usize,
    rounds: usize,
) -> (SoakReport, Vec<Image>) {
    let mut report = SoakReport::default();
    let mut random = Lcg(client as u64 + 1);
    let repo = format!("soak/c{client}");
    let mut alive: Vec<Image> = Vec::new();
    for round in 0..rounds {
        let tag = format!("r{round}");
        match push(http, base, &repo, &tag, round, random.next(SHARED_LAYERS)).await {
            Ok(Some(digest)) => {
                report.pushes += 1;
                alive.push(Image {
                    repo: repo.clone(),
                    tag,
                    digest,
                });
            }
            Ok(None) => report.pushes_given_up += 1,
            Err(failure) => report.failures.push(failure),
        }
        if !alive.is_empty() {
            let image = &alive[random.next(alive.len() as u64) as usize];
            match pull(http, base, image).await {
                Ok(()) => report.pulls += 1,
                Err(failure) => report.failures.push(failure),
            }
        }
        if round % 3 == 2 && !alive.is_empty() {
            let image = alive.remove(random.next(alive.len() as u64) as usize);
            let url = format!("{base}/v2/{}/manifests/{}", image.repo, image.digest);
            match http.delete(&url).send().await.map(|r| r.status().as_u16()) {
                Ok(202) => report.manifest_deletes += 1,
                other => report
                    .failures
                    .push(format!("DELETE {url}: {other:?}, expected 202")),
            }
        }
        if round % 2 == 1 {
            // A shared layer, through this repository or another client's.
            let layer = Digest::sha256(&shared_layer(random.next(SHARED_LAYERS)));
            let through = format!("soak/c{}", random.next(4));
            let url = format!("{base}/v2/{through}/blobs/{layer}");
            match http.delete(&url).send().await.map(|r| r.status().as_u16()) {
                Ok(202) => report.blob_deletes[0] += 1,
                Ok(409) => report.blob_deletes[1] += 1,
                Ok(404) => report.blob_deletes[2] += 1,
                other => report
                    .failures
                    .push(format!("DELETE {url}: {other:?}, expected 202, 409 or 404")),
            }
        }
    }
    (report, alive)
}

/// Pushes an image (a config, a layer of its own, a shared layer) as a client that sends
/// everything again when a concurrent GC or delete removed a blob before the manifest
/// named it. `Ok(Some(digest))`: answered 201; `Ok(None)`: given up.
async fn push(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    round: usize,
    shared: u64,
) -> Result<Option<Digest>, String> {
    let config = format!("{{\"os\":\"linux\",\"repo\":\"{repo}\",\"round\":{round}}}").into_bytes();
    let own = format!("the layer of {repo}:{tag}").into_bytes();
    let shared = shared_layer(shared);
    let descriptor = |media_type: &str, data: &[u8]| json!({"mediaType": media_type, "digest": Digest::sha256(data).to_string(), "size": data.len()});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &own),
            descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &shared),
        ],
    }))
    .unwrap();
    for _attempt in 0..PUSH_ATTEMPTS {
        for data in [&config, &own, &shared] {
            let url = format!(
                "{base}/v2/{repo}/blobs/uploads/?digest={}",
                Digest::sha256(data)
            );
            let status = http
                .post(&url)
                .body(data.clone())
                .send()
                .await
                .map_err(|error| format!("POST {url}: {error}"))?
                .status()
                .as_u16();
            // 404 BLOB_UPLOAD_UNKNOWN: removed right after its upload; the retry sends it.
            if status != 201 && status != 404 {
                return Err(format!("POST {url}: {status}"));
            }
        }
        let url = format!("{base}/v2/{repo}/manifests/{tag}");
        let response = http
            .put(&url)
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .map_err(|error| format!("PUT {url}: {error}"))?;
        match response.status().as_u16() {
            201 => return Ok(Some(Digest::sha256(&manifest))),
            400 => {
                let body = response.text().await.unwrap_or_default();
                if !body.contains("MANIFEST_BLOB_UNKNOWN") {
                    return Err(format!("PUT {url}: 400 {body}"));
                }
            }
            status => return Err(format!("PUT {url}: {status}")),
        }
    }
    Ok(None)
}

/// Pulls an image: the manifest by tag (its digest checked), then every blob, hashed.
async fn pull(http: &reqwest::Client, base: &str, image: &Image) -> Result<(), String> {
    let name = format!("{}:{}", image.repo, image.tag);
    let get = |url: String| async move {
        let response = http
            .get(&url)
            .send()
            .await
            .map_err(|error| format!("GET {url}: {error}"))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|error| format!("GET {url}: {error}"))?;
        if status != 200 {
            return Err(format!("GET {url}: {status}"));
        }
        Ok(body)
    };
    let manifest = get(format!("{base}/v2/{}/manifests/{}", image.repo, image.tag)).await?;
    if Digest::sha256(&manifest) != image.digest {
        return Err(format!("{name}: the manifest is not {}", image.digest));
    }
    let value: Value =
        serde_json::from_slice(&manifest).map_err(|error| format!("{name}: {error}"))?;
    let blobs =
        std::iter::once(&value["config"]).chain(value["layers"].as_array().into_iter().flatten());
    for blob in blobs {
        let digest = blob["digest"].as_str().unwrap_or_default();
        let bytes = get(format!("{base}/v2/{}/blobs/{digest}", image.repo)).await?;
        if Digest::sha256(&bytes).to_string() != digest {
            return Err(format!("{name}: blob {digest} has other content"));
        }
    }
    Ok(())
}
