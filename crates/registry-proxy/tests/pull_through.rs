//! The pull-through cache in-process on a loopback port, in front of REAL docker-registry
//! upstreams (tests/harness): several upstreams with the same repository path, one behind
//! token auth; skopeo through path prefixes, raw HTTP with `?ns=`; one upstream GET for a
//! 32-client herd; stale tags when an upstream is stopped or hangs; a corrupting upstream;
//! a client that leaves; Range on a cold blob; offline mode; `/metrics`.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sealer_image_store::{BlobStore, Digest, Store};
use sealer_registry_proxy::bucket::Bucket;
use sealer_registry_proxy::{ServerConfig, Storage};
use sealer_test_harness::{
    Fault, FaultProxy, HttpResponse, ImageSpec, Registry, RegistryOptions, SeededImage,
    TokenOptions, TokenServer, require_tools, run_ok, seed_image,
};
use serde_json::Value;

#[path = "common/backends.rs"]
mod backends;
mod common;
use backends::{on_bucket, s3_storage};
use common::{InProcess, biggest_layer, digest_of};

const TIMEOUT: Duration = Duration::from_secs(60);
const SKOPEO: Duration = Duration::from_secs(120);

/// A proxy on its own runtime thread, over a store directory (or the test's bucket, the
/// same for every proxy the test starts: [`over_s3`]).
struct Proxy {
    address: SocketAddr,
    store: PathBuf,
    server: InProcess,
}

impl Proxy {
    /// Serves `yaml` (a configuration; `storage` is added) over the store at `store` (or
    /// the test's bucket).
    fn start(store: &Path, yaml: &str) -> Self {
        let mut config = ServerConfig::parse(yaml, Path::new("proxy.yaml")).unwrap();
        config.storage = Some(match s3_storage() {
            Some(s3) => Storage::S3(s3.config),
            None => store.to_path_buf().into(),
        });
        let server = InProcess::start(config);
        Self {
            address: server.address,
            store: store.to_path_buf(),
            server,
        }
    }

    fn host(&self) -> String {
        self.address.to_string()
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

    fn wait_for_fills(&self, upstream: &str) {
        self.server.wait_for_fills(upstream);
    }

    fn stop(&mut self) {
        self.server.stop().unwrap();
    }

    fn open_store(&self) -> Store {
        Store::open_dir(&self.store).unwrap()
    }
}

/// An anonymous docker-registry holding one synthetic image at `path` (`repo:tag`).
fn seeded_upstream(path: &str, layer_sizes: &[u64], seed: u64) -> (Registry, SeededImage) {
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let image = seed_image(
        &upstream.host(),
        path,
        &ImageSpec::new("x", layer_sizes, seed),
        None,
    )
    .unwrap();
    (upstream, image)
}

/// `upstreams:` YAML for `(name, url, extra keys)`.
fn upstreams(list: &[(&str, &str, &str)]) -> String {
    let mut yaml = String::from("upstreams:\n");
    for (name, url, extra) in list {
        yaml.push_str(&format!("  - name: {name}\n    url: {url}\n"));
        for line in extra.lines() {
            yaml.push_str(&format!("    {line}\n"));
        }
    }
    yaml
}

on_both_backends!(
    two_upstreams_with_the_same_repository_never_collide,
    a_herd_of_32_cold_gets_makes_one_upstream_get,
    a_cached_tag_is_served_stale_within_2s_when_the_upstream_is_down_or_hangs,
    a_corrupting_upstream_fails_every_client_and_commits_nothing,
    a_client_leaving_at_half_lets_the_fill_finish_and_a_broken_upstream_resumes,
    a_range_on_a_cold_blob_is_answered_from_the_fill,
    offline_mode_serves_the_cache_and_contacts_nobody,
    tag_lists_come_from_the_upstream_and_from_the_cache_when_it_is_down,
    a_502_body_carries_the_upstream_cause,
    a_hanging_upstream_is_remembered_as_failing_and_probed_once_per_interval,
    a_429_on_revalidation_serves_stale_and_nothing_is_asked_before_retry_after,
    the_uncached_fetch_timeout_is_a_setting,
);

fn blob_stored(proxy: &Proxy, digest: &str) -> bool {
    let digest: Digest = digest.parse().unwrap();
    match s3_storage() {
        Some(s3) => runtime()
            .block_on(Bucket::open(&s3.config).unwrap().stat_blob(&digest))
            .unwrap()
            .is_some(),
        None => proxy.open_store().blobs().stat(&digest).unwrap().is_some(),
    }
}

/// The digest the tag `reference` (`registry/repository:tag`) names where the proxy stores
/// it (the bucket spells a registry's `:port` as `__port`).
fn stored_tag(proxy: &Proxy, reference: &str) -> String {
    match s3_storage() {
        Some(s3) => {
            let (name, tag) = reference.rsplit_once(':').unwrap();
            runtime()
                .block_on(
                    Bucket::open(&s3.config)
                        .unwrap()
                        .get_tag(&name.replace(':', "__"), tag),
                )
                .unwrap()
                .unwrap()
                .to_string()
        }
        None => proxy
            .open_store()
            .lookup(reference)
            .unwrap()
            .descriptor
            .digest
            .to_string(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn two_upstreams_with_the_same_repository_never_collide() {
    require_tools!("skopeo", "docker-registry", "openssl");
    let plain = Registry::start(RegistryOptions::anonymous()).unwrap();
    let tokens = TokenServer::start(TokenOptions::user("robot", "s3cret")).unwrap();
    let guarded = Registry::start(RegistryOptions::token(&tokens)).unwrap();
    let image_a = seed_image(
        &plain.host(),
        "team/app:1",
        &ImageSpec::new("x", &[300_000, 2_000], 1),
        None,
    )
    .unwrap();
    let image_b = seed_image(
        &guarded.host(),
        "team/app:1",
        &ImageSpec::new("x", &[200_000], 2),
        Some(("robot", "s3cret")),
    )
    .unwrap();
    assert_ne!(image_a.manifest_digest, image_b.manifest_digest);

    let tokens_before = tokens.requests().len();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &format!(
            "mode: read-write
{}",
            upstreams(&[
                ("plain", &plain.url(), ""),
                (
                    "guarded",
                    &guarded.url(),
                    "credentials: {username: robot, password: s3cret}\ntag_ttl: 10m",
                ),
            ])
        ),
    );

    // skopeo through path prefixes (aliases: a `host:port` is no valid path component).
    for (alias, image) in [("plain", &image_a), ("guarded", &image_b)] {
        let layout = dir.path().join(format!("layout-{alias}"));
        assert_eq!(
            common::skopeo_pull_digest(&format!("{}/{alias}/team/app:1", proxy.host()), &layout),
            image.manifest_digest,
            "{alias}"
        );
    }

    // Stored under each upstream's host: no collision.
    for (upstream, image) in [(&plain, &image_a), (&guarded, &image_b)] {
        let stored = stored_tag(&proxy, &format!("{}/team/app:1", upstream.host()));
        assert_eq!(stored, image.manifest_digest);
    }

    // Raw HTTP with ?ns= (containerd) and a host:port path prefix: OCI-Namespace, X-Cache.
    for (upstream, image) in [(&plain, &image_a), (&guarded, &image_b)] {
        let ns = upstream.host();
        let response = proxy.request(
            "GET",
            &format!("/v2/team/app/manifests/1?ns={ns}"),
            &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        );
        assert_eq!(response.status, 200, "{ns}");
        assert_eq!(response.header("oci-namespace"), Some(ns.as_str()));
        assert_eq!(digest_of(&response.body), image.manifest_digest);
        assert!(
            matches!(response.header("x-cache"), Some("HIT" | "MISS")),
            "{:?}",
            response.header("x-cache")
        );
        for digest in &image.blob_digests {
            let blob = proxy.get(&format!("/v2/team/app/blobs/{digest}?ns={ns}"));
            assert_eq!(blob.status, 200);
            assert!(blob.complete);
            assert_eq!(&digest_of(&blob.body), digest);
            assert_eq!(blob.header("x-cache"), Some("HIT"));
            assert_eq!(blob.header("oci-namespace"), Some(ns.as_str()));
        }
        // A path prefix names the upstream as well as `?ns=` does.
        let prefixed = proxy.get(&format!("/v2/{ns}/team/app/manifests/1"));
        assert_eq!(prefixed.status, 200);
        assert_eq!(digest_of(&prefixed.body), image.manifest_digest);
        assert_eq!(prefixed.header("oci-namespace"), Some(ns.as_str()));
        let digest = &image.blob_digests[0];
        let blob = proxy.get(&format!("/v2/{ns}/team/app/blobs/{digest}"));
        assert_eq!(blob.header("oci-namespace"), Some(ns.as_str()));
    }

    // Digests are immutable: served with no upstream traffic at all.
    let before = (plain.access_log().len(), guarded.access_log().len());
    for (upstream, image) in [(&plain, &image_a), (&guarded, &image_b)] {
        let ns = upstream.host();
        let manifest = proxy.get(&format!(
            "/v2/{ns}/team/app/manifests/{}",
            image.manifest_digest
        ));
        assert_eq!(manifest.status, 200);
        assert_eq!(manifest.header("x-cache"), Some("HIT"));
        for digest in &image.blob_digests {
            let head = proxy.request("HEAD", &format!("/v2/{ns}/team/app/blobs/{digest}"), &[]);
            assert_eq!(head.status, 200);
            assert_eq!(head.header("x-cache"), Some("HIT"));
        }
    }
    // The guarded upstream's tag is trusted for 10 minutes: no revalidation either.
    let tagged = proxy.get("/v2/guarded/team/app/manifests/1");
    assert_eq!(tagged.header("x-cache"), Some("HIT"));
    assert_eq!(
        (plain.access_log().len(), guarded.access_log().len()),
        before
    );
    // The plain one revalidates every time (tag_ttl 0): one HEAD, still a hit.
    let heads = || plain.count("HEAD", |path| path == "/v2/team/app/manifests/1");
    let heads_before = heads();
    let revalidated = proxy.get("/v2/plain/team/app/manifests/1");
    assert_eq!(revalidated.header("x-cache"), Some("HIT"));
    assert_eq!(heads(), heads_before + 1);

    // Tokens are cached per scope: one token for the whole pull and everything since.
    let scope = "repository:team/app:pull";
    let token_requests = tokens.requests()[tokens_before..]
        .iter()
        .filter(|request| request.user.as_deref() == Some("robot"))
        .filter(|request| request.scopes.iter().any(|s| s == scope))
        .count();
    assert_eq!(token_requests, 1, "{:?}", tokens.requests());
    assert_eq!(
        proxy.metric("sealer_proxy_upstream_token_fetches_total{upstream=\"guarded\"}"),
        1
    );

    // Never an open proxy: a namespace that is no upstream is NAME_UNKNOWN.
    let unknown = proxy.get("/v2/team/app/manifests/1?ns=registry.example.com");
    assert_eq!(unknown.status, 404);
    assert!(String::from_utf8_lossy(&unknown.body).contains("NAME_UNKNOWN"));
    let unknown = proxy.get("/v2/registry.example.com/team/app/manifests/1");
    assert_eq!(unknown.status, 404);
    // Without a namespace and without a default upstream: the local store only.
    let local = proxy.get("/v2/team/app/manifests/1");
    assert_eq!(local.status, 404);
    assert!(String::from_utf8_lossy(&local.body).contains("MANIFEST_UNKNOWN"));
    // Pushes into an upstream's namespace would poison the cache; the local one is open.
    let push = proxy.request("POST", "/v2/plain/team/app/blobs/uploads/", &[]);
    assert_eq!(push.status, 403);
    assert!(String::from_utf8_lossy(&push.body).contains("DENIED"));
    let push = proxy.request("POST", "/v2/team/app/blobs/uploads/", &[]);
    assert_eq!(push.status, 202);
    // skopeo push and pull round-trip in read-write mode, under the local namespace.
    let layout = dir.path().join("layout-plain");
    run_ok(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:x", layout.display()),
            &format!("docker://{}/team/mine:1", proxy.host()),
        ],
        SKOPEO,
    )
    .unwrap();
    let raw = run_ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/team/mine:1", proxy.host()),
        ],
        SKOPEO,
    )
    .unwrap();
    assert_eq!(digest_of(&raw), image_a.manifest_digest);
    assert_eq!(
        stored_tag(&proxy, "localhost/team/mine:1"),
        image_a.manifest_digest
    );

    assert!(proxy.metric("sealer_proxy_requests_total{upstream=\"plain\",cache=\"miss\"}") >= 1);
    assert!(proxy.metric("sealer_proxy_requests_total{upstream=\"guarded\",cache=\"hit\"}") >= 1);
}

fn a_herd_of_32_cold_gets_makes_one_upstream_get() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, image) = seeded_upstream("herd/app:1", &[12 << 20], 3);
    let (digest, expected) = biggest_layer(&upstream, "herd/app", &image);
    let gets_before = upstream.blob_gets(Some(&digest));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &format!(
            "{}default_upstream: up\n",
            upstreams(&[("up", &upstream.url(), "")])
        ),
    );
    let mut misses = 0;
    // Without a namespace: the default upstream.
    for response in proxy
        .server
        .get_at_once(&format!("/v2/herd/app/blobs/{digest}"), 32)
    {
        assert_eq!(response.status, 200);
        assert!(response.complete);
        assert_eq!(response.body.len(), expected.len());
        assert_eq!(digest_of(&response.body), digest);
        misses += usize::from(response.header("x-cache") == Some("MISS"));
    }
    assert!(misses >= 1);
    assert_eq!(upstream.blob_gets(Some(&digest)) - gets_before, 1);
    assert_eq!(proxy.metric("sealer_proxy_fills_total{upstream=\"up\"}"), 1);
    let followers = proxy.metric("sealer_proxy_fill_followers_total{upstream=\"up\"}");
    assert!(
        followers < misses as i64,
        "{followers} followers, {misses} misses"
    );
    proxy.wait_for_fills("up");
    assert!(blob_stored(&proxy, &digest));
    let again = proxy.get(&format!("/v2/herd/app/blobs/{digest}"));
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(upstream.blob_gets(Some(&digest)) - gets_before, 1);
}

fn a_cached_tag_is_served_stale_within_2s_when_the_upstream_is_down_or_hangs() {
    require_tools!("skopeo", "docker-registry");
    let mut upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let image = seed_image(
        &upstream.host(),
        "stale/app:1",
        &ImageSpec::new("x", &[50_000], 4),
        None,
    )
    .unwrap();
    let fault = FaultProxy::in_front_of(&upstream.host(), Fault::None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::start(
        &dir.path().join("store"),
        &format!(
            "{}upstream_timeout: 1s\nupstream_probe_interval: 100ms\n",
            upstreams(&[("up", &fault.url(), "tag_ttl: 0")])
        ),
    );
    let tag = "/v2/up/stale/app/manifests/1";
    let first = proxy.get(tag);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(digest_of(&first.body), image.manifest_digest);
    let blob = &image.blob_digests[0];
    assert_eq!(
        proxy.get(&format!("/v2/up/stale/app/blobs/{blob}")).status,
        200
    );

    // Stopped: connections refused.
    upstream.stop();
    for _ in 0..2 {
        let started = Instant::now();
        let stale = proxy.get(tag);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(stale.status, 200);
        assert_eq!(stale.header("x-cache"), Some("STALE"));
        assert_eq!(digest_of(&stale.body), image.manifest_digest);
    }
    // Digests need no upstream at all.
    let hit = proxy.get(&format!("/v2/up/stale/app/blobs/{blob}"));
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    // The cached image is partial (one blob of it was asked for), not inconsistent.
    if !on_bucket() {
        let report = proxy.open_store().fsck().unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert!(report.absent_partial >= 1, "{report:?}");
    }
    // Nothing cached: a spec error, quickly.
    let started = Instant::now();
    let cold = proxy.get("/v2/up/stale/app/manifests/2");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(cold.status, 502);
    assert!(String::from_utf8_lossy(&cold.body).contains("\"code\":\"UNKNOWN\""));

    // Restarted, then hanging: it accepts connections and never answers. The probe interval
    // has passed: the next request asks, and its success ends the failing state.
    upstream.restart().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(proxy.get(tag).header("x-cache"), Some("HIT"));
    fault.set_fault(Fault::hang("/manifests/"));
    for _ in 0..2 {
        let started = Instant::now();
        let stale = proxy.get(tag);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(stale.status, 200);
        assert_eq!(stale.header("x-cache"), Some("STALE"));
    }
    assert!(proxy.metric("sealer_proxy_requests_total{upstream=\"up\",cache=\"stale\"}") >= 4);

    // A new server over the same store starts and serves while the upstream is gone
    // (connections refused).
    proxy.stop();
    upstream.stop();
    let url = fault.url();
    drop(fault);
    let restarted = Proxy::start(
        &dir.path().join("store"),
        &format!(
            "{}upstream_timeout: 1s\n",
            upstreams(&[("up", &url, "tag_ttl: 0")])
        ),
    );
    let stale = restarted.get(tag);
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(
        restarted
            .get(&format!("/v2/up/stale/app/blobs/{blob}"))
            .header("x-cache"),
        Some("HIT")
    );
}

fn a_corrupting_upstream_fails_every_client_and_commits_nothing() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, image) = seeded_upstream("flip/app:1", &[3 << 20], 5);
    let (digest, expected) = biggest_layer(&upstream, "flip/app", &image);
    let fault = FaultProxy::in_front_of(
        &upstream.host(),
        Fault::flip_byte(&format!("/blobs/{digest}"), expected.len() as u64 / 2),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &upstreams(&[("up", &fault.url(), "")]),
    );
    let path = format!("/v2/up/flip/app/blobs/{digest}");
    for response in proxy.server.get_at_once(&path, 8) {
        // The headers went out (the size was known), the body is cut before its last
        // piece: never a complete 200.
        assert_eq!(response.status, 200);
        assert!(!response.complete, "a client got a complete body");
        assert!(response.body.len() < expected.len());
    }
    assert!(fault.faults_applied() >= 1);
    proxy.wait_for_fills("up");
    assert!(!blob_stored(&proxy, &digest));
    assert!(
        proxy
            .metric("sealer_proxy_fill_failures_total{upstream=\"up\",reason=\"digest_mismatch\"}")
            >= 1
    );
    // The bytes arrived from another angle, the next fetch works.
    fault.set_fault(Fault::None);
    let good = proxy.get(&path);
    assert_eq!(good.status, 200);
    assert!(good.complete);
    assert_eq!(good.body, expected);
    proxy.wait_for_fills("up");
    assert!(blob_stored(&proxy, &digest));
}

fn a_client_leaving_at_half_lets_the_fill_finish_and_a_broken_upstream_resumes() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, image) = seeded_upstream("leave/app:1", &[8 << 20], 6);
    let (digest, expected) = biggest_layer(&upstream, "leave/app", &image);
    // The upstream connection breaks at 60 %: the fill resumes with Range.
    let fault = FaultProxy::in_front_of(
        &upstream.host(),
        Fault::cut_after(&format!("/blobs/{digest}"), expected.len() as u64 * 6 / 10),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &upstreams(&[("up", &fault.url(), "")]),
    );
    let gets_before = upstream.blob_gets(Some(&digest));

    // A client that reads half the body and leaves.
    let mut stream = TcpStream::connect(proxy.address).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "GET /v2/up/leave/app/blobs/{digest} HTTP/1.1\r\nHost: {}\r\n\r\n",
        proxy.host()
    )
    .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    while received.len() < expected.len() / 2 {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the proxy closed early");
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(String::from_utf8_lossy(&received[..12]).contains("200"));
    drop(stream);

    proxy.wait_for_fills("up");
    assert!(blob_stored(&proxy, &digest));
    assert_eq!(fault.faults_applied(), 1);
    let ranged = fault
        .requests()
        .iter()
        .filter(|request| request.target.contains(&digest))
        .count();
    assert_eq!(ranged, 2, "{:?}", fault.requests());
    let upstream_gets = upstream.blob_gets(Some(&digest)) - gets_before;
    assert!(upstream_gets <= 2, "{upstream_gets}");
    let hit = proxy.get(&format!("/v2/up/leave/app/blobs/{digest}"));
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert!(hit.complete);
    assert_eq!(hit.body, expected);
    assert_eq!(
        upstream.blob_gets(Some(&digest)) - gets_before,
        upstream_gets
    );
}

fn a_range_on_a_cold_blob_is_answered_from_the_fill() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, image) = seeded_upstream("range/app:1", &[2 << 20], 7);
    let (digest, expected) = biggest_layer(&upstream, "range/app", &image);
    let gets_before = upstream.blob_gets(Some(&digest));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &upstreams(&[("up", &upstream.url(), "")]),
    );
    let path = format!("/v2/{}/range/app/blobs/{digest}", upstream.host());
    let response = proxy.request("GET", &path, &[("Range", "bytes=1000-1999")]);
    assert_eq!(response.status, 206);
    assert!(response.complete);
    assert_eq!(response.header("x-cache"), Some("MISS"));
    assert_eq!(
        response.header("content-range"),
        Some(format!("bytes 1000-1999/{}", expected.len()).as_str())
    );
    assert_eq!(response.body, &expected[1000..2000]);
    // The whole blob was fetched and cached (never a partial object).
    proxy.wait_for_fills("up");
    assert!(blob_stored(&proxy, &digest));
    let tail = proxy.request("GET", &path, &[("Range", "bytes=-100")]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.header("x-cache"), Some("HIT"));
    assert_eq!(tail.body, &expected[expected.len() - 100..]);
    let outside = proxy.request("GET", &path, &[("Range", "bytes=99999999-")]);
    assert_eq!(outside.status, 416);
    assert_eq!(upstream.blob_gets(Some(&digest)) - gets_before, 1);
}

fn offline_mode_serves_the_cache_and_contacts_nobody() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, image) = seeded_upstream("off/app:1", &[40_000], 8);
    let fault = FaultProxy::in_front_of(&upstream.host(), Fault::None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let yaml = upstreams(&[("up", &fault.url(), "")]);
    let mut online = Proxy::start(&store, &yaml);
    let manifest = online.get("/v2/up/off/app/manifests/1");
    assert_eq!(manifest.status, 200);
    for digest in &image.blob_digests {
        let blob = online.get(&format!("/v2/up/off/app/blobs/{digest}"));
        assert_eq!(blob.status, 200);
        assert!(blob.complete);
    }
    online.wait_for_fills("up");
    online.stop();

    let seen = fault.requests().len();
    let offline = Proxy::start(&store, &format!("{yaml}offline: true\n"));
    let cached = offline.get("/v2/up/off/app/manifests/1");
    assert_eq!(cached.status, 200);
    assert_eq!(cached.header("x-cache"), Some("HIT"));
    assert_eq!(digest_of(&cached.body), image.manifest_digest);
    for digest in &image.blob_digests {
        let blob = offline.get(&format!("/v2/up/off/app/blobs/{digest}"));
        assert_eq!(blob.header("x-cache"), Some("HIT"));
        assert_eq!(&digest_of(&blob.body), digest);
    }
    let missing = offline.get("/v2/up/off/app/manifests/2");
    assert_eq!(missing.status, 404);
    assert!(String::from_utf8_lossy(&missing.body).contains("MANIFEST_UNKNOWN"));
    let zeros = format!("sha256:{}", "0".repeat(64));
    let missing = offline.get(&format!("/v2/up/off/app/blobs/{zeros}"));
    assert_eq!(missing.status, 404);
    assert!(String::from_utf8_lossy(&missing.body).contains("BLOB_UNKNOWN"));
    assert_eq!(
        fault.requests().len(),
        seen,
        "offline contacted the upstream"
    );
}

fn tag_lists_come_from_the_upstream_and_from_the_cache_when_it_is_down() {
    require_tools!("skopeo", "docker-registry");
    let mut upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    for (tag, seed) in [("1", 31), ("2", 32), ("3", 33)] {
        seed_image(
            &upstream.host(),
            &format!("tags/app:{tag}"),
            &ImageSpec::new("x", &[1_000], seed),
            None,
        )
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &format!(
            "{}upstream_timeout: 1s\n",
            upstreams(&[("up", &upstream.url(), "")])
        ),
    );
    let tags = |response: &HttpResponse| -> Vec<String> {
        let body: Value = serde_json::from_slice(&response.body).unwrap();
        body["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|tag| tag.as_str().unwrap().to_owned())
            .collect()
    };
    // Only tag 1 is cached; the list is the upstream's.
    assert_eq!(proxy.get("/v2/up/tags/app/manifests/1").status, 200);
    let listed = proxy.get("/v2/up/tags/app/tags/list");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("x-cache"), Some("MISS"));
    assert_eq!(tags(&listed), ["1", "2", "3"]);
    // Paginated by the server as usual.
    let page = proxy.get("/v2/up/tags/app/tags/list?n=2");
    assert_eq!(tags(&page), ["1", "2"]);
    assert!(
        page.header("link")
            .is_some_and(|link| link.contains("last=2"))
    );

    // The upstream stopped: the cached tags, quickly.
    upstream.stop();
    let started = Instant::now();
    let stale = proxy.get("/v2/up/tags/app/tags/list");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(tags(&stale), ["1"]);
    // A repository never cached: an error, not an empty list.
    let unknown = proxy.get("/v2/up/tags/other/tags/list");
    assert_eq!(
        unknown.status,
        502,
        "{}",
        String::from_utf8_lossy(&unknown.body)
    );
}

/// A 502 says why the upstream failed (here: the connection was refused), not only that
/// it did.
fn a_502_body_carries_the_upstream_cause() {
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_address = closed.local_addr().unwrap();
    let url = format!("http://{closed_address}");
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &format!(
            "{}upstream_timeout: 1s\n",
            upstreams(&[("up", &url, "tag_ttl: 0")])
        ),
    );
    let digest = digest_of(b"absent");
    for path in [
        "/v2/up/gone/app/manifests/1".to_owned(),
        format!("/v2/up/gone/app/blobs/{digest}"),
    ] {
        let answer = proxy.get(&path);
        let body = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, 502, "{path}: {body}");
        assert!(body.contains("Connection refused"), "{path}: {body}");
    }
    drop(proxy);

    // An upstream that closes the connection without answering (reset), and one that is no
    // TLS server (a plain-HTTP listener behind an https URL).
    let reset = FaultProxy::start(closed_address, Fault::refuse("")).unwrap();
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_address = plain.local_addr().unwrap();
    std::thread::spawn(move || {
        // Bounded: the proxy's client makes a few attempts per request.
        for stream in plain.incoming().take(16) {
            let _ = stream
                .unwrap()
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &upstreams(&[
            ("reset", &reset.url(), "tag_ttl: 0"),
            (
                "tls",
                &format!("https://{plain_address}"),
                "tag_ttl: 0\ninsecure: false",
            ),
        ]),
    );
    for (path, cause) in [
        ("/v2/reset/gone/app/manifests/1", "closed"),
        // rustls's words for a peer that speaks no TLS.
        ("/v2/tls/gone/app/manifests/1", "received corrupt message"),
    ] {
        let answer = proxy.get(path);
        let body = String::from_utf8_lossy(&answer.body);
        assert_eq!(answer.status, 502, "{path}: {body}");
        assert!(body.contains(cause), "{path}: {body}");
    }
}

#[test]
fn replicas_share_a_tags_revalidation_s3() {
    backends::over_s3(replicas_share_a_tags_revalidation);
}

/// Two servers over one bucket ask the upstream about a tag once per TTL between them: the
/// time of the last confirmation is kept in the bucket and claimed by a conditional write.
fn replicas_share_a_tags_revalidation() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, image) = seeded_upstream("shared/app:1", &[10_000], 71);
    let dir = tempfile::tempdir().unwrap();
    let yaml = upstreams(&[("up", &upstream.url(), "tag_ttl: 2s")]);
    let replicas = [
        Proxy::start(&dir.path().join("a"), &yaml),
        Proxy::start(&dir.path().join("b"), &yaml),
    ];
    let tag = "/v2/up/shared/app/manifests/1";
    let manifest_requests = || {
        upstream.count("HEAD", |path| path.ends_with("/manifests/1"))
            + upstream.count("GET", |path| path.ends_with("/manifests/1"))
    };
    let first = replicas[0].get(tag);
    assert_eq!(first.status, 200);
    assert_eq!(digest_of(&first.body), image.manifest_digest);
    let after_fill = manifest_requests();
    // Within the TTL: neither replica asks, the second one included.
    for replica in &replicas {
        let hit = replica.get(tag);
        assert_eq!(hit.header("x-cache"), Some("HIT"));
    }
    assert_eq!(manifest_requests(), after_fill);
    for round in 1..=2 {
        std::thread::sleep(Duration::from_millis(2_100));
        // Past the TTL, both replicas at once: one of them asks, once.
        std::thread::scope(|scope| {
            for replica in &replicas {
                for _ in 0..4 {
                    scope.spawn(|| {
                        let answer = replica.get(tag);
                        assert_eq!(answer.status, 200);
                        assert_eq!(digest_of(&answer.body), image.manifest_digest);
                    });
                }
            }
        });
        assert_eq!(
            manifest_requests(),
            after_fill + round,
            "one upstream request per TTL for the two replicas"
        );
    }
}

/// Requests the fault proxy received whose target contains `path`.
fn asked(fault: &FaultProxy, path: &str) -> usize {
    fault
        .requests()
        .iter()
        .filter(|request| request.target.contains(path))
        .count()
}

/// A proxy in front of `fault` (upstream `up`, tags revalidated on every request) with
/// `settings` added, and its first (`MISS`) answer for `tag`.
fn proxy_with_cached_tag(
    store: &Path,
    fault: &FaultProxy,
    settings: &str,
    tag: &str,
) -> (Proxy, HttpResponse) {
    let proxy = Proxy::start(
        store,
        &format!(
            "{}{settings}",
            upstreams(&[("up", &fault.url(), "tag_ttl: 0")])
        ),
    );
    let first = proxy.get(tag);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    (proxy, first)
}

fn a_hanging_upstream_is_remembered_as_failing_and_probed_once_per_interval() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, image) = seeded_upstream("breaker/app:1", &[10_000], 21);
    let fault = FaultProxy::in_front_of(&upstream.host(), Fault::None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tag = "/v2/up/breaker/app/manifests/1";
    let interval = Duration::from_secs(2);
    let (proxy, _) = proxy_with_cached_tag(
        &dir.path().join("store"),
        &fault,
        "upstream_timeout: 500ms\nupstream_probe_interval: 2s\n",
        tag,
    );
    let failing = "sealer_proxy_upstream_failing{upstream=\"up\"}";
    assert_eq!(proxy.metric(failing), 0);

    // Blackholed: the first request waits the bound, then STALE; the upstream is failing.
    fault.set_fault(Fault::hang("/manifests/"));
    let stale = proxy.get(tag);
    let failed_at = Instant::now();
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert_eq!(digest_of(&stale.body), image.manifest_digest);
    assert_eq!(proxy.metric(failing), 1);

    // Within the probe interval: STALE without a request upstream.
    let before = asked(&fault, "/manifests/");
    for _ in 0..3 {
        let stale = proxy.get(tag);
        assert_eq!(stale.header("x-cache"), Some("STALE"));
        assert_eq!(digest_of(&stale.body), image.manifest_digest);
    }
    // Tag lists too: the cached tags, STALE, without a request.
    let listed = proxy.get("/v2/up/breaker/app/tags/list");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("x-cache"), Some("STALE"));
    assert!(
        failed_at.elapsed() < interval,
        "the test itself was too slow"
    );
    assert_eq!(asked(&fault, "/manifests/"), before);
    assert_eq!(asked(&fault, "/tags/list"), 0);

    // After it: one request probes; the upstream answers again, which ends the failing state.
    std::thread::sleep(interval.saturating_sub(failed_at.elapsed()) + Duration::from_millis(200));
    fault.set_fault(Fault::None);
    let hit = proxy.get(tag);
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert!(asked(&fault, "/manifests/") > before);
    assert_eq!(proxy.metric(failing), 0);
}

fn a_429_on_revalidation_serves_stale_and_nothing_is_asked_before_retry_after() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, image) = seeded_upstream("limited/app:1", &[10_000], 22);
    let fault = FaultProxy::in_front_of(&upstream.host(), Fault::None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tag = "/v2/up/limited/app/manifests/1";
    // A probe interval far shorter than the Retry-After: the wait is the upstream's.
    let (proxy, _) = proxy_with_cached_tag(
        &dir.path().join("store"),
        &fault,
        "upstream_timeout: 2s\nupstream_probe_interval: 100ms\n",
        tag,
    );
    let retry_after = Duration::from_secs(2);
    fault.set_fault(Fault::status(
        "/manifests/",
        429,
        Some(retry_after.as_secs()),
    ));
    let limited = proxy.get(tag);
    let limited_at = Instant::now();
    assert_eq!(limited.status, 200);
    assert_eq!(limited.header("x-cache"), Some("STALE"));
    assert_eq!(digest_of(&limited.body), image.manifest_digest);
    let before = asked(&fault, "/manifests/");
    // One request, no retry: the client does not wait out the Retry-After itself.
    assert_eq!(before, 2, "{:?}", fault.requests());

    // Past the probe interval, before Retry-After: STALE, nothing asked.
    std::thread::sleep(Duration::from_millis(300));
    let stale = proxy.get(tag);
    assert_eq!(stale.header("x-cache"), Some("STALE"));
    assert!(
        limited_at.elapsed() < retry_after,
        "the test itself was too slow"
    );
    assert_eq!(asked(&fault, "/manifests/"), before);

    // After Retry-After: asked again; a 503 is STALE too.
    std::thread::sleep(
        retry_after.saturating_sub(limited_at.elapsed()) + Duration::from_millis(200),
    );
    fault.set_fault(Fault::status("/manifests/", 503, None));
    let unavailable = proxy.get(tag);
    assert_eq!(unavailable.status, 200);
    assert_eq!(unavailable.header("x-cache"), Some("STALE"));
    assert!(asked(&fault, "/manifests/") > before);
}

fn the_uncached_fetch_timeout_is_a_setting() {
    require_tools!("skopeo", "docker-registry");
    let (upstream, _image) = seeded_upstream("cold/app:1", &[10_000], 23);
    let fault = FaultProxy::in_front_of(&upstream.host(), Fault::hang("/manifests/")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &dir.path().join("store"),
        &format!(
            "{}upstream_timeout: 500ms\nupstream_fetch_timeout: 1s\n",
            upstreams(&[("up", &fault.url(), "tag_ttl: 0")])
        ),
    );
    let cold = proxy.get("/v2/up/cold/app/manifests/1");
    assert_eq!(cold.status, 504);
    let body = String::from_utf8_lossy(&cold.body);
    assert!(body.contains("did not answer within 1s"), "{body}");
}
