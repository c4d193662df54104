//! Upstreams admitted by `upstream_policy` (issue 15, point 1): two loopback docker-registry
//! instances behind HTTPS (tests/upstream_policy/tls_front.rs, a certificate for 127.0.0.1
//! trusted through `ca_file`), named in no upstream list, admitted by a host pattern and an
//! explicit address range; skopeo through a path prefix, containerd-style `?ns=` GETs, the
//! 32-client herd and stale answers for them; credentials from docker's `config.json`;
//! and every refusal: an unadmitted host, a
//! loopback address without its range (by name and as an IP literal), a redirect into a
//! refused range. Local store only: the policy sits above the storage seam (the same
//! `Upstream` as a configured one, whose fills and tags run on both backends in
//! tests/pull_through.rs).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sealer_test_harness::{
    ImageSpec, Registry, RegistryOptions, SeededImage, require_tools, seed_image,
    self_signed_certificate,
};

mod common;
#[path = "common/errors.rs"]
mod errors;
#[path = "upstream_policy/tls_front.rs"]
mod tls_front;
use common::{StoreProxy, biggest_layer, digest_of, skopeo_pull_digest};
use errors::{assert_error, error_message};
use tls_front::TlsFront;

const TIMEOUT: Duration = Duration::from_secs(60);
const MANIFEST_ACCEPT: (&str, &str) = ("Accept", "application/vnd.oci.image.manifest.v1+json");

/// The certificate (for `127.0.0.1`) every HTTPS upstream of a test presents, which the
/// proxy trusts through `ca_file`.
struct Certificate {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Certificate {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed_certificate(dir.path()).unwrap();
        Self {
            _dir: dir,
            cert,
            key,
        }
    }
}

/// A docker-registry holding one synthetic image at `path`, reached over HTTPS.
struct HttpsUpstream {
    registry: Registry,
    front: TlsFront,
    image: SeededImage,
}

impl HttpsUpstream {
    fn start(certificate: &Certificate, path: &str, layer_sizes: &[u64], seed: u64) -> Self {
        let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
        let image = seed_image(
            &registry.host(),
            path,
            &ImageSpec::new("x", layer_sizes, seed),
            None,
        )
        .unwrap();
        let backend: SocketAddr = registry.host().parse().unwrap();
        let front = TlsFront::pipe(&certificate.cert, &certificate.key, backend);
        Self {
            registry,
            front,
            image,
        }
    }

    /// The namespace clients name: the HTTPS endpoint's `127.0.0.1:PORT`.
    fn host(&self) -> String {
        self.front.host()
    }
}

/// `upstream_policy:` admitting `admit` (YAML list items) with `extra` keys (indented).
fn policy(admit: &[&str], extra: &str) -> String {
    let mut yaml = String::from("upstream_policy:\n  admit:\n");
    for pattern in admit {
        yaml.push_str(&format!("    - \"{pattern}\"\n"));
    }
    yaml.push_str("  use_docker_config: false\n");
    for line in extra.lines() {
        yaml.push_str(&format!("  {line}\n"));
    }
    yaml
}

/// Loopback HTTPS upstreams admitted by pattern and by the loopback range, trusting
/// `certificate`.
fn loopback_policy(certificate: &Certificate, extra: &str) -> String {
    policy(
        &["127.0.0.1:*"],
        &format!(
            "allow_ranges: [127.0.0.0/8]\nca_file: {}\n{extra}",
            certificate.cert.display()
        ),
    )
}

#[test]
fn two_hosts_admitted_by_policy_are_pulled_through_by_skopeo_and_by_ns() {
    require_tools!("skopeo", "docker-registry", "openssl");
    let certificate = Certificate::new();
    let a = HttpsUpstream::start(&certificate, "team/app:1", &[300_000, 2_000], 11);
    let b = HttpsUpstream::start(&certificate, "team/app:1", &[200_000], 12);
    assert_ne!(a.image.manifest_digest, b.image.manifest_digest);
    let dir = tempfile::tempdir().unwrap();
    let proxy = StoreProxy::start(
        &dir.path().join("store"),
        &format!(
            "mode: read-write\n{}",
            loopback_policy(&certificate, "tag_ttl: 10m")
        ),
    );

    // skopeo through a path prefix (a port's `:` written `_`).
    for upstream in [&a, &b] {
        let prefix = format!("127.0.0.1_{}", upstream.front.port());
        let layout = dir.path().join(format!("layout-{prefix}"));
        assert_eq!(
            skopeo_pull_digest(&format!("{}/{prefix}/team/app:1", proxy.address), &layout),
            upstream.image.manifest_digest
        );
        // Cached under the admitted host: the two never collide.
        let cached = proxy
            .store()
            .lookup(&format!("{}/team/app:1", upstream.host()))
            .unwrap();
        assert_eq!(
            cached.descriptor.digest.to_string(),
            upstream.image.manifest_digest
        );
    }

    // containerd-style `?ns=`: OCI-Namespace, X-Cache, every blob.
    for upstream in [&b, &a] {
        let ns = upstream.host();
        let manifest = proxy.request(
            "GET",
            &format!("/v2/team/app/manifests/1?ns={ns}"),
            &[MANIFEST_ACCEPT],
        );
        assert_eq!(manifest.status, 200, "{ns}");
        assert_eq!(manifest.header("oci-namespace"), Some(ns.as_str()));
        assert_eq!(manifest.header("x-cache"), Some("HIT"));
        assert_eq!(digest_of(&manifest.body), upstream.image.manifest_digest);
        for digest in &upstream.image.blob_digests {
            let blob = proxy.get(&format!("/v2/team/app/blobs/{digest}?ns={ns}"));
            assert_eq!(blob.status, 200);
            assert!(blob.complete);
            assert_eq!(&digest_of(&blob.body), digest);
        }
    }
    // A tag never cached: fetched from its admitted upstream (MISS).
    let tagged = seed_image(
        &b.registry.host(),
        "team/app:2",
        &ImageSpec::new("x", &[1_000], 13),
        None,
    )
    .unwrap();
    let fresh = proxy.request(
        "GET",
        &format!("/v2/team/app/manifests/2?ns={}", b.host()),
        &[MANIFEST_ACCEPT],
    );
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.header("x-cache"), Some("MISS"));
    assert_eq!(digest_of(&fresh.body), tagged.manifest_digest);

    // Each admitted upstream has its own metrics, labelled with its host.
    for upstream in [&a, &b] {
        let series = format!(
            "sealer_proxy_fills_total{{upstream=\"{}\"}}",
            upstream.host()
        );
        assert!(proxy.metric(&series).unwrap() >= 1, "{series}");
    }
    // An admitted namespace is a cache: pushes into it are refused.
    let push = proxy.request(
        "POST",
        &format!("/v2/127.0.0.1_{}/team/app/blobs/uploads/", a.front.port()),
        &[],
    );
    assert_error(&push, 403, "DENIED");
}

#[test]
fn a_herd_of_32_cold_gets_through_an_admitted_host_makes_one_upstream_get() {
    require_tools!("skopeo", "docker-registry", "openssl");
    let certificate = Certificate::new();
    let upstream = HttpsUpstream::start(&certificate, "herd/app:1", &[12 << 20], 14);
    let (digest, expected) = biggest_layer(&upstream.registry, "herd/app", &upstream.image);
    let gets_before = upstream.registry.blob_gets(Some(&digest));
    let dir = tempfile::tempdir().unwrap();
    let proxy = StoreProxy::start(
        &dir.path().join("store"),
        &loopback_policy(&certificate, ""),
    );
    let ns = upstream.host();
    for response in proxy.get_at_once(&format!("/v2/herd/app/blobs/{digest}?ns={ns}"), 32) {
        assert_eq!(response.status, 200);
        assert!(response.complete);
        assert_eq!(response.body.len(), expected.len());
        assert_eq!(digest_of(&response.body), digest);
    }
    assert_eq!(upstream.registry.blob_gets(Some(&digest)) - gets_before, 1);
    assert_eq!(
        proxy.metric(&format!("sealer_proxy_fills_total{{upstream=\"{ns}\"}}")),
        Some(1)
    );
    proxy.wait_for_fills(&ns);
    assert!(proxy.blob_stored(&digest));
    let again = proxy.get(&format!("/v2/herd/app/blobs/{digest}?ns={ns}"));
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(upstream.registry.blob_gets(Some(&digest)) - gets_before, 1);
}

#[test]
fn a_cached_tag_of_an_admitted_host_is_served_stale_when_it_is_down() {
    require_tools!("skopeo", "docker-registry", "openssl");
    let certificate = Certificate::new();
    let mut upstream = HttpsUpstream::start(&certificate, "stale/app:1", &[50_000], 15);
    let dir = tempfile::tempdir().unwrap();
    let proxy = StoreProxy::start(
        &dir.path().join("store"),
        &format!(
            "upstream_timeout: 1s\nupstream_probe_interval: 100ms\n{}",
            loopback_policy(&certificate, "tag_ttl: 0")
        ),
    );
    let tag = format!(
        "/v2/127.0.0.1_{}/stale/app/manifests/1",
        upstream.front.port()
    );
    let first = proxy.request("GET", &tag, &[MANIFEST_ACCEPT]);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(digest_of(&first.body), upstream.image.manifest_digest);
    let second = proxy.request("GET", &tag, &[MANIFEST_ACCEPT]);
    assert_eq!(second.header("x-cache"), Some("HIT"));

    // Down: its HTTPS endpoint closes every connection.
    upstream.registry.stop();
    for _ in 0..2 {
        let started = Instant::now();
        let stale = proxy.request("GET", &tag, &[MANIFEST_ACCEPT]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(stale.status, 200);
        assert_eq!(stale.header("x-cache"), Some("STALE"));
        assert_eq!(digest_of(&stale.body), upstream.image.manifest_digest);
    }
    let series = format!(
        "sealer_proxy_requests_total{{upstream=\"{}\",cache=\"stale\"}}",
        upstream.host()
    );
    assert_eq!(proxy.metric(&series), Some(2));
    // Nothing cached: the upstream's failure, quickly.
    let cold = proxy.get(&format!(
        "/v2/127.0.0.1_{}/stale/app/manifests/2",
        upstream.front.port()
    ));
    assert_error(&cold, 502, "UNKNOWN");
}

#[test]
fn a_host_no_pattern_admits_is_never_contacted() {
    require_tools!("skopeo", "docker-registry", "openssl");
    let certificate = Certificate::new();
    let upstream = HttpsUpstream::start(&certificate, "team/app:1", &[1_000], 16);
    let dir = tempfile::tempdir().unwrap();
    let proxy = StoreProxy::start(
        &dir.path().join("store"),
        &policy(
            &["quay.io", "*.gcr.io", "127.0.0.1:1"],
            &format!(
                "allow_ranges: [127.0.0.0/8]\nca_file: {}",
                certificate.cert.display()
            ),
        ),
    );
    let ns = upstream.host();
    for path in [
        format!("/v2/team/app/manifests/1?ns={ns}"),
        format!(
            "/v2/127.0.0.1_{}/team/app/manifests/1",
            upstream.front.port()
        ),
        format!(
            "/v2/team/app/blobs/{}?ns={ns}",
            upstream.image.blob_digests[0]
        ),
    ] {
        let response = proxy.request("GET", &path, &[MANIFEST_ACCEPT]);
        assert_error(&response, 404, "NAME_UNKNOWN");
        let message = error_message(&response);
        assert!(
            message.contains(&ns) && message.contains("upstream_policy admits: quay.io"),
            "{message}"
        );
    }
    // Every request to the upstream goes through its HTTPS endpoint.
    assert_eq!(upstream.front.connections(), 0);
}

#[test]
fn an_admitted_host_at_a_loopback_address_is_refused_without_its_range() {
    require_tools!("skopeo", "docker-registry", "openssl");
    let certificate = Certificate::new();
    let upstream = HttpsUpstream::start(&certificate, "team/app:1", &[1_000], 17);
    let dir = tempfile::tempdir().unwrap();
    // Admitted by pattern, but no range admits loopback addresses.
    let proxy = StoreProxy::start(
        &dir.path().join("store"),
        &policy(
            &["localhost:*", "127.0.0.1:*"],
            &format!("ca_file: {}", certificate.cert.display()),
        ),
    );
    let port = upstream.front.port();
    // By name (refused at resolution) and as an IP literal (never resolved).
    for (ns, address) in [
        (format!("localhost:{port}"), "loopback"),
        (format!("127.0.0.1:{port}"), "127.0.0.1"),
    ] {
        let manifest = proxy.request(
            "GET",
            &format!("/v2/team/app/manifests/1?ns={ns}"),
            &[MANIFEST_ACCEPT],
        );
        assert_error(&manifest, 403, "DENIED");
        let message = error_message(&manifest);
        assert!(
            message.contains(&ns) && message.contains(address),
            "{message}"
        );
        let blob = proxy.get(&format!(
            "/v2/team/app/blobs/{}?ns={ns}",
            upstream.image.blob_digests[0]
        ));
        assert_error(&blob, 403, "DENIED");
    }
    // Every request to the upstream goes through its HTTPS endpoint.
    assert_eq!(upstream.front.connections(), 0);
    // Nothing stored.
    assert!(!proxy.blob_stored(&upstream.image.blob_digests[0]));
    assert!(
        proxy
            .store()
            .lookup(&format!("localhost:{port}/team/app:1"))
            .is_err()
    );
}

#[test]
fn a_redirect_into_a_refused_range_is_not_followed() {
    require_tools!("openssl");
    let certificate = Certificate::new();
    // Where the redirects point: a listener on another loopback address that must never
    // see a connection.
    let trap = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    // Only the upstream's own address is admitted, not the rest of 127/8.
    let proxy = StoreProxy::start(
        &dir.path().join("store"),
        &policy(
            &["127.0.0.1:*"],
            &format!(
                "allow_ranges: [127.0.0.1/32]\nca_file: {}",
                certificate.cert.display()
            ),
        ),
    );
    let digest = digest_of(b"never fetched");
    for (location, refused) in [
        (format!("https://127.0.0.2:{trap_port}/blob"), "127.0.0.2"),
        (
            "https://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254",
        ),
        (format!("https://[::1]:{trap_port}/blob"), "::1"),
    ] {
        let redirecting = TlsFront::redirect(&certificate.cert, &certificate.key, &location);
        let blob = proxy.get(&format!(
            "/v2/team/app/blobs/{digest}?ns={}",
            redirecting.host()
        ));
        assert_error(&blob, 403, "DENIED");
        let message = error_message(&blob);
        assert!(message.contains(refused), "{message}");
        // The admitted upstream was asked (once: a refusal is not retried).
        assert_eq!(redirecting.connections(), 1, "{location}");
    }
    assert!(
        matches!(trap.accept(), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "a refused redirect reached its target"
    );
    assert!(!proxy.blob_stored(&digest));
}

/// Marks the child run of [`credentials_of_an_admitted_host_come_from_the_docker_config`].
const DOCKER_CONFIG_CHILD: &str = "SEALER_TEST_DOCKER_CONFIG_CHILD";

/// Runs [`docker_config_child`] in a child process of this test binary with its own
/// `DOCKER_CONFIG` (the environment is the process's: no test here changes its own).
#[test]
fn credentials_of_an_admitted_host_come_from_the_docker_config() {
    require_tools!("skopeo", "docker-registry", "openssl");
    let config_dir = tempfile::tempdir().unwrap();
    let output = sealer_test_harness::run_bounded(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "docker_config_child", "--ignored", "--nocapture"])
            .env("DOCKER_CONFIG", config_dir.path())
            .env(DOCKER_CONFIG_CHILD, "1"),
        TIMEOUT,
    )
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by credentials_of_an_admitted_host_come_from_the_docker_config, with its DOCKER_CONFIG"]
fn docker_config_child() {
    assert_eq!(std::env::var(DOCKER_CONFIG_CHILD).as_deref(), Ok("1"));
    let config_dir = PathBuf::from(std::env::var_os("DOCKER_CONFIG").unwrap());
    let certificate = Certificate::new();
    let registry = Registry::start(RegistryOptions::htpasswd("robot", "s3cret")).unwrap();
    let image = seed_image(
        &registry.host(),
        "private/app:1",
        &ImageSpec::new("x", &[1_000], 18),
        Some(("robot", "s3cret")),
    )
    .unwrap();
    let front = TlsFront::pipe(
        &certificate.cert,
        &certificate.key,
        registry.host().parse().unwrap(),
    );
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "robot:s3cret");
    std::fs::write(
        config_dir.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
            front.host()
        ),
    )
    .unwrap();
    let manifest_path = format!("/v2/private/app/manifests/1?ns={}", front.host());
    let dir = tempfile::tempdir().unwrap();
    // Without the docker config, the upstream's 401 is all there is.
    let anonymous = StoreProxy::start(
        &dir.path().join("anonymous"),
        &loopback_policy(&certificate, ""),
    );
    let refused = anonymous.request("GET", &manifest_path, &[MANIFEST_ACCEPT]);
    assert_ne!(refused.status, 200);
    // With it (the default), its credentials for the host are used.
    let yaml = loopback_policy(&certificate, "").replace("use_docker_config: false", "");
    let proxy = StoreProxy::start(&dir.path().join("store"), &yaml);
    let manifest = proxy.request("GET", &manifest_path, &[MANIFEST_ACCEPT]);
    assert_eq!(
        manifest.status,
        200,
        "{}",
        String::from_utf8_lossy(&manifest.body)
    );
    assert_eq!(digest_of(&manifest.body), image.manifest_digest);
}

#[test]
fn the_upstreams_a_policy_creates_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // No range admits loopback: the upstreams are created, and refused at connection.
    let proxy = StoreProxy::start(
        &dir.path().join("store"),
        &policy(&["127.0.0.1:*"], "max_upstreams: 1"),
    );
    let first = proxy.get("/v2/team/app/manifests/1?ns=127.0.0.1:1");
    assert_error(&first, 403, "DENIED");
    assert!(error_message(&first).contains("loopback"));
    // The same host again: its upstream exists.
    let again = proxy.get("/v2/team/app/manifests/1?ns=127.0.0.1:1");
    assert!(error_message(&again).contains("loopback"));
    let beyond = proxy.get("/v2/team/app/manifests/1?ns=127.0.0.1:2");
    assert_error(&beyond, 403, "DENIED");
    let message = error_message(&beyond);
    assert!(
        message.contains("127.0.0.1:2") && message.contains("max_upstreams"),
        "{message}"
    );
    let series = "sealer_proxy_requests_total{upstream=\"127.0.0.1:1\",cache=\"hit\"}";
    assert_eq!(proxy.metric(series), Some(0));
    assert_eq!(
        proxy.metric("sealer_proxy_requests_total{upstream=\"127.0.0.1:2\",cache=\"hit\"}"),
        None
    );
}
