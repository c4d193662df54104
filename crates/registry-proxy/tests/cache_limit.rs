//! The pull-through cache's size limit (`cache: { max_size }`) in-process on a loopback
//! port, in front of a REAL docker-registry upstream (tests/harness): least recently used
//! content is evicted past the limit, a download of an evicted blob and a concurrent fill
//! finish with the right bytes, pushed and carried content is never evicted, `fsck` stays
//! clean and `prune` keeps blobs cached by digest, `/metrics` shows size and evictions.
//! Local storage only (the limit is refused over a bucket), so no test runs on S3.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use sealer_image_store::model::media_type::OCI_MANIFEST;
use sealer_image_store::{BlobStore, Digest, FsckReport, GcOptions, Store};
use sealer_test_harness::{
    ImageSpec, Registry, RegistryOptions, SeededImage, require_tools, seed_image,
};
use serde_json::Value;

mod common;
use common::{StoreProxy, digest_of, write_cluster_image};

const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// A proxy over a store directory ([`StoreProxy`], whose methods are its own), with this
/// suite's pulls and counters.
struct Proxy(StoreProxy);

impl std::ops::Deref for Proxy {
    type Target = StoreProxy;

    fn deref(&self) -> &StoreProxy {
        &self.0
    }
}

impl Proxy {
    /// Serves `yaml` over the store at `store`.
    fn start(store: &Path, yaml: &str) -> Self {
        Self(StoreProxy::start(store, yaml))
    }

    fn host(&self) -> String {
        self.address.to_string()
    }

    /// The value of the series `series` in `/metrics`, if it is there (counters and sizes:
    /// never negative).
    fn metric(&self, series: &str) -> Option<u64> {
        self.0
            .metric(series)
            .map(|value| u64::try_from(value).unwrap())
    }

    /// Waits (at most 30 s) until no fill runs for upstream `up`, then (at most 30 s more)
    /// until the cache is within `limit` bytes.
    fn settle(&self, limit: Option<u64>) {
        self.wait_for_fills("up");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let size = self.metric("sealer_cache_size_bytes").unwrap();
            if limit.is_none_or(|limit| size <= limit) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cache did not settle: {size} bytes"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        self.0.server.stop().unwrap();
    }

    /// Pulls `repository:tag` of upstream `up` as a client would: the manifest, then every
    /// blob, each checked against its digest; returns the manifest's digest and the
    /// blobs' digests.
    fn pull(&self, repository: &str, tag: &str) -> (String, Vec<String>) {
        let manifest = self.request(
            "GET",
            &format!("/v2/up/{repository}/manifests/{tag}"),
            &[("Accept", OCI_MANIFEST)],
        );
        assert_eq!(manifest.status, 200, "{repository}:{tag}");
        let value: Value = serde_json::from_slice(&manifest.body).unwrap();
        let mut blobs = vec![value["config"]["digest"].as_str().unwrap().to_owned()];
        for layer in value["layers"].as_array().unwrap() {
            blobs.push(layer["digest"].as_str().unwrap().to_owned());
        }
        for digest in &blobs {
            let blob = self.get(&format!("/v2/up/{repository}/blobs/{digest}"));
            assert_eq!(blob.status, 200, "{digest}");
            assert!(blob.complete);
            assert_eq!(&digest_of(&blob.body), digest);
        }
        (digest_of(&manifest.body), blobs)
    }
}

/// An anonymous docker-registry holding one synthetic image per `(repository, layer
/// size, seed)`, tagged `1`.
fn upstream_with(images: &[(&str, u64, u64)]) -> (Registry, Vec<SeededImage>) {
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let seeded = images
        .iter()
        .map(|(repository, size, seed)| {
            seed_image(
                &upstream.host(),
                &format!("{repository}:1"),
                &ImageSpec::new("x", &[*size], *seed),
                None,
            )
            .unwrap()
        })
        .collect();
    (upstream, seeded)
}

fn config(upstream: &Registry, extra: &str) -> String {
    format!(
        "mode: read-write\nupstreams:\n  - name: up\n    url: {}\n{extra}",
        upstream.url()
    )
}

/// Asserts that `fsck` finds `store` clean, every blob referenced (or cached); returns its
/// report.
fn assert_fsck_clean(store: &Store) -> FsckReport {
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.unreferenced, 0, "{report:?}");
    report
}

#[test]
fn filling_past_the_limit_evicts_the_least_recently_used_and_a_used_one_survives() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, _) = upstream_with(&[("a/app", MIB, 1), ("b/app", MIB, 2), ("c/app", MIB, 3)]);
    let dir = tempfile::tempdir().unwrap();
    let limit = 5 * MIB / 2;
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &config(&upstream, &format!("cache:\n  max_size: {limit}\n")),
    );
    let (a_manifest, a_blobs) = proxy.pull("a/app", "1");
    let (b_manifest, b_blobs) = proxy.pull("b/app", "1");
    proxy.settle(Some(limit));
    assert_eq!(proxy.metric("sealer_cache_evictions_total"), Some(0));
    assert_eq!(proxy.metric("sealer_cache_limit_bytes"), Some(limit));
    let size = proxy.metric("sealer_cache_size_bytes").unwrap();
    assert!(size > 2 * MIB && size <= limit, "{size}");
    // a is used again (hits), so b is now the least recently used.
    proxy.pull("a/app", "1");
    let (c_manifest, c_blobs) = proxy.pull("c/app", "1");
    proxy.settle(Some(limit));

    for digest in a_blobs.iter().chain(&c_blobs) {
        assert!(proxy.blob_stored(digest), "{digest} was evicted");
    }
    for digest in [&a_manifest, &c_manifest] {
        assert!(proxy.blob_stored(digest), "{digest} was evicted");
    }
    assert!(!proxy.blob_stored(&b_blobs[1]), "b's layer was kept");
    assert!(!proxy.blob_stored(&b_manifest), "b's manifest was kept");
    let store = proxy.store();
    let reference = format!("{}/b/app:1", upstream.host());
    assert!(store.lookup(&reference).is_err(), "b's tag was kept");
    assert_fsck_clean(&store);

    let evicted = proxy.metric("sealer_cache_evicted_bytes_total").unwrap();
    assert!(evicted >= MIB, "{evicted}");
    assert!(proxy.metric("sealer_cache_evictions_total").unwrap() >= 3);
    let size = proxy.metric("sealer_cache_size_bytes").unwrap();
    assert!(size <= limit / 100 * 90, "{size}");

    // b comes back from the upstream as it was.
    let (again, _) = proxy.pull("b/app", "1");
    assert_eq!(again, b_manifest);
    proxy.settle(Some(limit));
    assert_fsck_clean(&proxy.store());
}

#[test]
fn the_order_of_use_survives_a_restart() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, _) =
        upstream_with(&[("a/app", MIB, 12), ("b/app", MIB, 13), ("c/app", MIB, 14)]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let limit = 5 * MIB / 2;
    let yaml = config(&upstream, &format!("cache:\n  max_size: {limit}\n"));
    let mut first = Proxy::start(&root, &yaml);
    let (_, a_blobs) = first.pull("a/app", "1");
    let (_, b_blobs) = first.pull("b/app", "1");
    // Used again within a minute of its fill: recorded in memory, written at the stop.
    first.pull("a/app", "1");
    first.settle(Some(limit));
    first.stop();

    let proxy = Proxy::start(&root, &yaml);
    let size = proxy.metric("sealer_cache_size_bytes").unwrap();
    assert!(size > 2 * MIB, "the restart forgot the cache: {size}");
    proxy.pull("c/app", "1");
    proxy.settle(Some(limit));
    for digest in &a_blobs {
        assert!(proxy.blob_stored(digest), "{digest} was evicted");
    }
    assert!(!proxy.blob_stored(&b_blobs[1]), "b's layer was kept");
    assert_fsck_clean(&proxy.store());
}

/// Sends `GET path` and reads the response head and `first` bytes of the body; returns the
/// stream, the body's length and the bytes read.
fn start_download(proxy: &Proxy, path: &str, first: usize) -> (TcpStream, usize, Vec<u8>) {
    let mut stream = TcpStream::connect(proxy.address).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        proxy.host()
    )
    .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the proxy closed early");
        received.extend_from_slice(&buffer[..read]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-cache: hit"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = received.split_off(head_end);
    while body.len() < first {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the proxy closed early");
        body.extend_from_slice(&buffer[..read]);
    }
    (stream, length, body)
}

#[test]
fn a_download_of_an_evicted_blob_and_a_concurrent_fill_both_finish_with_the_right_bytes() {
    require_tools!("skopeo", "docker-registry");
    // Bigger than what loopback socket buffers hold, so most of the download is read from
    // the file after its eviction.
    let layer = 24 * MIB;
    let (upstream, images) = upstream_with(&[("a/app", layer, 4), ("b/app", layer, 5)]);
    let dir = tempfile::tempdir().unwrap();
    let limit = 32 * MIB;
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &config(&upstream, "cache:\n  max_size: 32MiB\n"),
    );
    let (_, a_blobs) = proxy.pull("a/app", "1");
    proxy.settle(Some(limit));
    let a_layer = a_blobs[1].clone();
    let expected = {
        let digest: Digest = a_layer.parse().unwrap();
        let mut bytes = Vec::new();
        proxy
            .store()
            .blobs()
            .open(&digest)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    };

    // A slow client: the head and 1 MiB, then it waits while b is filled and a evicted.
    let (mut stream, length, mut body) = start_download(
        &proxy,
        &format!("/v2/up/a/app/blobs/{a_layer}"),
        MIB as usize,
    );
    assert_eq!(length, expected.len());
    let (_, mut b_blobs) = proxy.pull("b/app", "1");
    b_blobs.sort();
    assert_eq!(b_blobs, images[1].blob_digests);
    proxy.settle(Some(limit));
    assert!(!proxy.blob_stored(&a_layer), "a's layer was not evicted");
    assert!(proxy.metric("sealer_cache_evictions_total").unwrap() >= 1);

    let mut buffer = [0u8; 64 * 1024];
    let deadline = Instant::now() + TIMEOUT;
    while body.len() < length {
        assert!(Instant::now() < deadline, "the download stalled");
        let read = stream.read(&mut buffer).unwrap();
        assert!(
            read > 0,
            "the download was cut at {} of {length}",
            body.len()
        );
        body.extend_from_slice(&buffer[..read]);
    }
    assert!(
        body == expected,
        "the evicted blob's download has other bytes"
    );
    assert_fsck_clean(&proxy.store());

    // Asked again, it is fetched again.
    let again = proxy.get(&format!("/v2/up/a/app/blobs/{a_layer}"));
    assert_eq!(again.header("x-cache"), Some("MISS"));
    assert!(again.body == expected);
}

#[test]
fn fsck_stays_clean_and_prune_keeps_blobs_cached_by_digest() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, images) = upstream_with(&[("a/app", 300_000, 6), ("b/app", 200_000, 7)]);
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::start(&dir.path().join("store"), &config(&upstream, ""));
    proxy.pull("a/app", "1");
    // b's blobs by digest alone, as a client that has the manifest from elsewhere.
    for digest in &images[1].blob_digests {
        let blob = proxy.get(&format!("/v2/up/b/app/blobs/{digest}"));
        assert_eq!(blob.status, 200);
        assert_eq!(&digest_of(&blob.body), digest);
    }
    proxy.settle(None);
    // Unbounded: no limit series, nothing evicted, but the size is known.
    assert_eq!(proxy.metric("sealer_cache_limit_bytes"), None);
    assert!(proxy.metric("sealer_cache_size_bytes").unwrap() > 500_000);
    proxy.stop();

    let store = proxy.store();
    let report = assert_fsck_clean(&store);
    assert_eq!(report.cached, images[1].blob_digests.len(), "{report:?}");
    let pruned = store
        .gc_with(&GcOptions {
            keep_fresh: Duration::ZERO,
            ..GcOptions::default()
        })
        .unwrap();
    assert!(pruned.removed.is_empty(), "{pruned:?}");
    assert_eq!(pruned.kept_cached, images[1].blob_digests.len());
    for digest in images.iter().flat_map(|image| &image.blob_digests) {
        assert!(proxy.blob_stored(digest), "prune removed {digest}");
    }
    assert_fsck_clean(&store);
}

#[test]
fn pushed_and_carried_content_is_never_evicted() {
    require_tools!("skopeo", "docker-registry");
    // The upstream has the very images that are then pushed and carried (same blobs), and
    // two more that overfill the cache.
    let pushed_spec = ImageSpec::new("x", &[MIB], 8);
    let carried_spec = ImageSpec::new("localhost/carried/app:1", &[MIB], 9);
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let pushed = seed_image(&upstream.host(), "pushed/app:1", &pushed_spec, None).unwrap();
    let carried = seed_image(&upstream.host(), "carried/app:1", &carried_spec, None).unwrap();
    for (repository, seed) in [("f1/app", 10), ("f2/app", 11)] {
        seed_image(
            &upstream.host(),
            &format!("{repository}:1"),
            &ImageSpec::new("x", &[MIB], seed),
            None,
        )
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    write_cluster_image(&root, &carried_spec);

    // Both cached first (so they are the least recently used), then the same pushed here.
    let mut first = Proxy::start(&root, &config(&upstream, ""));
    first.pull("pushed/app", "1");
    first.pull("carried/app", "1");
    first.settle(None);
    seed_image(&first.host(), "mine/app:1", &pushed_spec, None).unwrap();
    first.stop();

    // Restarted with the cluster image's carried images and a limit the fillers overflow
    // even once the pushed and carried blobs left the cache.
    let limit = 3 * MIB / 2;
    let proxy = Proxy::start(
        &root,
        &config(
            &upstream,
            &format!("images:\n  - localhost/cluster:1\ncache:\n  max_size: {limit}\n"),
        ),
    );
    proxy.pull("f1/app", "1");
    proxy.pull("f2/app", "1");
    proxy.settle(Some(limit));
    assert!(proxy.metric("sealer_cache_evictions_total").unwrap() >= 1);
    for digest in pushed.blob_digests.iter().chain(&carried.blob_digests) {
        assert!(proxy.blob_stored(digest), "{digest} was evicted");
    }
    let mine = proxy.request(
        "GET",
        "/v2/mine/app/manifests/1",
        &[("Accept", OCI_MANIFEST)],
    );
    assert_eq!(mine.status, 200);
    assert_eq!(digest_of(&mine.body), pushed.manifest_digest);
    assert_fsck_clean(&proxy.store());
}
