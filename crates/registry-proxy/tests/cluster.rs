//! Several replicas over one bucket (`cluster:`), each in-process on its own loopback port and
//! advertising it, in front of a REAL docker-registry upstream, over a REAL S3 server (moto):
//! one upstream GET per blob for the whole cluster, a lease holder that dies mid-fill, and
//! presigned 307 redirects followed by skopeo.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use sealer_image_store::Digest;
use sealer_registry_proxy::ServerConfig;
use sealer_registry_proxy::bucket::{Bucket, BucketConfig};
use sealer_test_harness::{
    Fault, FaultProxy, HttpResponse, ImageSpec, Moto, Registry, RegistryOptions, SeededImage,
    http_request, require_moto, require_tools, run_ok, seed_image,
};
use serde_json::Value;

#[path = "common/backends.rs"]
mod backends;
mod common;
use backends::bucket_keys_of;
use common::{InProcess, at_once, biggest_layer, digest_of};

const TIMEOUT: Duration = Duration::from_secs(60);
const SKOPEO: Duration = Duration::from_secs(120);
const SECRET: &str = "the-replicas-share-this-secret";

/// One replica: `serve` on its own runtime thread, on a listener bound before its
/// configuration is written (its advertised URL names the port).
struct Replica {
    server: InProcess,
}

impl Replica {
    /// Serves `yaml` over `bucket` (`storage` is added) as a replica of the cluster whose
    /// other `cluster:` keys are `cluster` (`advertise_url` and `peer_secret` are added);
    /// `None`: a lone server.
    fn start(bucket: &Value, yaml: &str, cluster: Option<&str>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let yaml = match cluster {
            None => yaml.to_owned(),
            Some(keys) => format!(
                "{yaml}cluster:\n  advertise_url: http://{address}\n  peer_secret: {SECRET}\n{keys}"
            ),
        };
        let storage = format!(
            "storage:\n  s3: {}\n",
            serde_json::to_string(bucket).unwrap()
        );
        let config = ServerConfig::parse(&format!("{storage}{yaml}"), Path::new("replica.yaml"))
            .unwrap_or_else(|error| panic!("{yaml}\n{error}"));
        Self {
            server: InProcess::start_on(listener, config),
        }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.server.request(method, path, headers)
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.server.get(path)
    }

    /// The value of the series `series` (`name{labels}`) in `/metrics`.
    fn metric(&self, series: &str) -> i64 {
        self.server
            .metric(series)
            .unwrap_or_else(|| panic!("{series} not in /metrics"))
    }

    fn wait_for_fills(&self) {
        self.server.wait_for_fills("up");
    }

    /// Stops it and waits until its runtime is gone, every task of it (fills, lease
    /// renewals) dropped: to the others, it died.
    fn stop(&mut self) {
        self.server.stop().unwrap();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The blob `digest` as stored in the bucket, `None` when absent.
fn bucket_blob(bucket: &Value, digest: &str) -> Option<Vec<u8>> {
    let digest: Digest = digest.parse().unwrap();
    let bucket: BucketConfig = serde_json::from_value(bucket.clone()).unwrap();
    runtime().block_on(async {
        let bucket = Bucket::open(&bucket).unwrap();
        bucket.stat_blob(&digest).await.unwrap()?;
        let mut read = bucket.get_blob(&digest, None).await.unwrap();
        let mut bytes = Vec::new();
        while let Some(chunk) = read.stream.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        Some(bytes)
    })
}

/// An anonymous docker-registry holding one image of one `size`-byte layer at `path`.
fn seeded_upstream(path: &str, size: u64, seed: u64) -> (Registry, SeededImage) {
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let image = seed_image(
        &upstream.host(),
        path,
        &ImageSpec::new("x", &[size], seed),
        None,
    )
    .unwrap();
    (upstream, image)
}

/// The configuration of every replica: `url` as the default upstream `up`.
fn upstream_yaml(url: &str, extra: &str) -> String {
    format!("upstreams:\n  - name: up\n    url: {url}\ndefault_upstream: up\n{extra}")
}

#[test]
fn a_herd_of_32_cold_gets_over_three_replicas_makes_one_upstream_get() {
    require_tools!("skopeo", "docker-registry");
    if !require_moto() {
        return;
    }
    let moto = Moto::start().unwrap();
    let bucket = bucket_keys_of(&moto);
    let (upstream, image) = seeded_upstream("herd/app:1", 12 << 20, 3);
    let (digest, expected) = biggest_layer(&upstream, "herd/app", &image);
    let gets_before = upstream.blob_gets(Some(&digest));
    let yaml = upstream_yaml(&upstream.url(), "");
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&bucket, &yaml, Some("")))
        .collect();
    let responses = at_once(32, |client| {
        replicas[client % 3].get(&format!("/v2/herd/app/blobs/{digest}"))
    });
    for response in responses {
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        assert!(response.complete);
        assert_eq!(response.body.len(), expected.len());
        assert_eq!(digest_of(&response.body), digest);
    }
    assert_eq!(upstream.blob_gets(Some(&digest)) - gets_before, 1);
    for replica in replicas.iter() {
        replica.wait_for_fills();
    }
    let upstream_fills: i64 = replicas
        .iter()
        .map(|replica| replica.metric("sealer_proxy_fills_total{upstream=\"up\"}"))
        .sum();
    assert_eq!(upstream_fills, 1);
    // The other replicas streamed from the lease holder (or found the blob committed).
    let peer_fills: i64 = replicas
        .iter()
        .map(|replica| replica.metric("sealer_proxy_peer_fills_total{upstream=\"up\"}"))
        .sum();
    assert!(peer_fills >= 1, "{peer_fills} peer fills");
    assert_eq!(bucket_blob(&bucket, &digest).unwrap(), expected);
    // Warm now: every replica answers from the bucket, still one upstream GET.
    for replica in replicas.iter() {
        let again = replica.get(&format!("/v2/herd/app/blobs/{digest}"));
        assert_eq!(again.header("x-cache"), Some("HIT"));
        assert_eq!(digest_of(&again.body), digest);
    }
    assert_eq!(upstream.blob_gets(Some(&digest)) - gets_before, 1);
}

#[test]
fn a_lease_holder_that_dies_mid_fill_is_taken_over_after_the_ttl() {
    require_tools!("skopeo", "docker-registry");
    if !require_moto() {
        return;
    }
    let moto = Moto::start().unwrap();
    let bucket = bucket_keys_of(&moto);
    let (upstream, image) = seeded_upstream("dies/app:1", 12 << 20, 5);
    let (digest, expected) = biggest_layer(&upstream, "dies/app", &image);
    // The holder's upstream GET stalls after 3 MiB: its fill is in progress when it dies.
    let faults =
        FaultProxy::in_front_of(&upstream.host(), Fault::stall_after(&digest, 3 << 20)).unwrap();
    // Counted where they enter (docker-registry logs a GET only once it is answered).
    let upstream_gets = || {
        faults
            .requests()
            .iter()
            .filter(|request| {
                request.method == "GET" && request.target.ends_with(&format!("/blobs/{digest}"))
            })
            .count()
    };
    let yaml = upstream_yaml(&faults.url(), "shutdown_timeout: 200ms\n");
    let keys = "  lease_ttl: 6s\n";
    let mut holder = Replica::start(&bucket, &yaml, Some(keys));
    let other = Replica::start(&bucket, &yaml, Some(keys));
    let path = format!("/v2/dies/app/blobs/{digest}");

    // The holder's client: the fill starts, takes the lease, stalls.
    let client = {
        let url = format!("http://{}{path}", holder.server.address);
        std::thread::spawn(move || http_request("GET", &url, &[], &[], TIMEOUT))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while faults.faults_applied() == 0 {
        assert!(Instant::now() < deadline, "the upstream GET never stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    // It dies: its fill and its lease renewals end with it, its lease stays.
    holder.stop();
    if let Ok(cut) = client.join().unwrap() {
        assert!(
            cut.status != 200 || !cut.complete,
            "the holder's client got a whole body"
        );
    }
    faults.set_fault(Fault::None);

    // The lease still lives: the other replica streams from the dead holder, which fails
    // (no wrong bytes, no upstream GET).
    let early = other.get(&path);
    assert!(
        early.status != 200 || !early.complete,
        "served while the lease lived: {}",
        early.status
    );
    assert_eq!(upstream_gets(), 1);

    // Once it expired, a retry takes it over and fetches from the upstream.
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        let response = other.get(&path);
        if response.status == 200 && response.complete {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "never taken over: {}",
            response.status
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(served.body, expected);
    assert_eq!(upstream_gets(), 2);
    other.wait_for_fills();
    assert_eq!(bucket_blob(&bucket, &digest).unwrap(), expected);
}

#[test]
fn complete_blobs_are_redirected_to_presigned_urls_and_skopeo_follows() {
    require_tools!("skopeo", "docker-registry");
    if !require_moto() {
        return;
    }
    let moto = Moto::start().unwrap();
    let bucket = bucket_keys_of(&moto);
    let (upstream, image) = seeded_upstream("redirect/app:1", 3 << 20, 7);
    let (digest, expected) = biggest_layer(&upstream, "redirect/app", &image);
    let plain = Replica::start(&bucket, &upstream_yaml(&upstream.url(), ""), Some(""));
    let redirecting = Replica::start(
        &bucket,
        &upstream_yaml(
            &upstream.url(),
            "redirect:\n  presigned: true\n  expires: 2m\n",
        ),
        Some(""),
    );
    let path = format!("/v2/redirect/app/blobs/{digest}");

    // Cold: a fill in progress is served, never redirected.
    let cold = redirecting.get(&path);
    assert_eq!(cold.status, 200);
    assert_eq!(cold.body, expected);
    redirecting.wait_for_fills();

    // Complete in the bucket: 307 to a presigned URL that serves the blob's bytes.
    let redirected = redirecting.get(&path);
    assert_eq!(redirected.status, 307);
    assert_eq!(
        redirected.header("docker-content-digest"),
        Some(digest.as_str())
    );
    let location = redirected.header("location").unwrap();
    assert!(location.starts_with(&moto.endpoint()), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let followed = http_request("GET", location, &[], &[], TIMEOUT).unwrap();
    assert_eq!(followed.status, 200);
    assert_eq!(followed.body, expected);
    // Never for Range requests nor HEAD; never on a replica without `redirect`.
    let range = redirecting.request("GET", &path, &[("Range", "bytes=100-199")]);
    assert_eq!(range.status, 206);
    assert_eq!(range.body, &expected[100..200]);
    let head = redirecting.request("HEAD", &path, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(plain.get(&path).status, 200);

    // skopeo pulls through the redirecting replica: warm (every blob in the bucket), then
    // again with every blob answered by a 307; identical digests both times.
    let dir = tempfile::tempdir().unwrap();
    for pass in ["warm", "redirected"] {
        let layout = dir.path().join(pass);
        run_ok(
            "skopeo",
            &[
                "copy",
                "--preserve-digests",
                "--src-tls-verify=false",
                &format!("docker://{}/redirect/app:1", redirecting.server.address),
                &format!("dir:{}", layout.display()),
            ],
            SKOPEO,
        )
        .unwrap();
        for blob in &image.blob_digests {
            let hex = blob.strip_prefix("sha256:").unwrap();
            let bytes = std::fs::read(layout.join(hex)).unwrap();
            assert_eq!(&digest_of(&bytes), blob, "{pass}");
        }
        redirecting.wait_for_fills();
    }
    let redirects = redirecting
        .metric("sealer_registry_requests_total{method=\"GET\",route=\"blob\",status=\"307\"}");
    assert!(
        redirects >= image.blob_digests.len() as i64,
        "{redirects} redirects"
    );
}
