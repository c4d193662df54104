//! What operators watch, on the server in-process over a loopback port: `/metrics` in
//! offline mode (no upstreams) read back with a Prometheus text parser, `/healthz` and
//! `/readyz` without credentials, `/readyz` failing when the store's index cannot be read.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value};
use sealer_image_store::Store;
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_registry_proxy::ServerConfig;
use sealer_registry_proxy::config::AuthConfig;
use sealer_test_harness::{HttpResponse, http_request};

mod common;
use common::InProcess;

const TIMEOUT: Duration = Duration::from_secs(30);
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A read-only server without upstreams over a store holding `localhost/team/app:v1`.
struct Offline {
    server: InProcess,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

impl Offline {
    fn start(adjust: impl FnOnce(&mut ServerConfig, &std::path::Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        write_image(
            &Store::open_dir(&store).unwrap(),
            &ImageSpec::new("localhost/team/app:v1", &[5_000], 3),
        )
        .unwrap();
        let mut config = ServerConfig {
            storage: Some(store.clone().into()),
            ..ServerConfig::default()
        };
        adjust(&mut config, dir.path());
        assert!(config.upstreams.is_empty());
        Self {
            server: InProcess::start(config),
            store,
            _dir: dir,
        }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let url = format!("http://{}{path}", self.server.address);
        http_request(method, &url, headers, &[], TIMEOUT).unwrap()
    }
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|sample| sample.metric == name && has_labels(sample, labels))
        .map(|sample| match &sample.value {
            Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => *value,
            other => panic!("{name}: not a single value: {other:?}"),
        })
}

fn has_labels(sample: &Sample, labels: &[(&str, &str)]) -> bool {
    labels
        .iter()
        .all(|(key, value)| sample.labels.get(key) == Some(*value))
}

/// `/metrics` parsed, after checking that every line is a comment or a sample.
fn scrape(server: &Offline, headers: &[(&str, &str)]) -> Scrape {
    let response = server.request("GET", "/metrics", headers);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(response.body).unwrap();
    for line in text.lines() {
        let sample = line
            .rsplit_once(' ')
            .is_some_and(|(series, value)| !series.is_empty() && value.parse::<f64>().is_ok());
        assert!(
            line.starts_with("# HELP ") || line.starts_with("# TYPE ") || sample,
            "not Prometheus text: {line:?}"
        );
    }
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap()
}

/// Scrapes until `done` holds (a request is recorded when its body has ended, which the
/// client may see a moment before the server), at most 10 s.
fn scrape_until(server: &Offline, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = scrape(server, &[]);
        if done(&scrape) || Instant::now() > deadline {
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_in_offline_mode_parse_and_count_every_request() {
    let server = Offline::start(|_, _| {});
    let accept = [("Accept", OCI_MANIFEST)];
    let manifest = server.request("GET", "/v2/team/app/manifests/v1", &accept);
    assert_eq!(manifest.status, 200);
    assert_eq!(
        server
            .request("GET", "/v2/team/app/manifests/v1", &accept)
            .status,
        200
    );
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let layer_size = manifest["layers"][0]["size"].as_u64().unwrap();
    let blob = server.request("GET", &format!("/v2/team/app/blobs/{layer}"), &[]);
    assert_eq!((blob.status, blob.body.len() as u64), (200, layer_size));
    for (method, path, status) in [
        ("GET", "/v2/team/app/manifests/missing", 404),
        ("POST", "/v2/team/app/blobs/uploads/", 403),
        ("GET", "/v2/Not..Valid/tags/list", 400),
        ("GET", "/elsewhere", 404),
    ] {
        assert_eq!(server.request(method, path, &[]).status, status, "{path}");
    }

    let requests = "sealer_registry_requests_total";
    let scrape = scrape_until(&server, |scrape| {
        value(scrape, requests, &[("route", "other")]).is_some()
    });
    for (method, route, status, count) in [
        ("GET", "manifest", "200", 2.0),
        ("GET", "manifest", "404", 1.0),
        ("GET", "blob", "200", 1.0),
        ("POST", "blob_upload", "403", 1.0),
        ("GET", "invalid", "400", 1.0),
        ("GET", "other", "404", 1.0),
    ] {
        let labels = [("method", method), ("route", route), ("status", status)];
        assert_eq!(value(&scrape, requests, &labels), Some(count), "{labels:?}");
    }
    assert_eq!(
        value(
            &scrape,
            "sealer_registry_response_bytes_total",
            &[("method", "GET"), ("route", "blob"), ("status", "200")]
        ),
        Some(layer_size as f64)
    );
    // One histogram per method and route: the three manifest GETs, every bucket cumulative.
    let latencies = scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == "sealer_registry_request_duration_seconds"
                && has_labels(sample, &[("method", "GET"), ("route", "manifest")])
        })
        .expect("a manifest latency histogram");
    let Value::Histogram(buckets) = &latencies.value else {
        panic!("not a histogram: {latencies:?}");
    };
    let last = buckets.last().unwrap();
    assert_eq!((last.less_than, last.count), (f64::INFINITY, 3.0));
    assert!(
        buckets
            .windows(2)
            .all(|pair| pair[0].count <= pair[1].count)
    );
    assert_eq!(
        value(
            &scrape,
            "sealer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "process_max_fds",
    ] {
        assert!(value(&scrape, name, &[]).unwrap() > 0.0, "{name}");
    }
    assert!(value(&scrape, "process_cpu_seconds_total", &[]).unwrap() >= 0.0);
    // Scrapes count as requests too.
    let scrape = scrape_until(&server, |scrape| {
        value(scrape, requests, &[("route", "metrics")]).is_some()
    });
    let labels = [("method", "GET"), ("route", "metrics"), ("status", "200")];
    assert!(value(&scrape, requests, &labels).unwrap() >= 1.0);
}

#[test]
fn health_answers_without_credentials_while_metrics_need_them() {
    use base64::Engine as _;
    let server = Offline::start(|config, dir| {
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(dir.join("htpasswd"), format!("bob:{hash}\n")).unwrap();
        config.auth = Some(AuthConfig {
            htpasswd: dir.join("htpasswd"),
            realm: "sealer-test".to_owned(),
            anonymous_pull: false,
        });
    });
    let healthz = server.request("GET", "/healthz", &[]);
    assert_eq!(healthz.status, 200, "{healthz:?}");
    let readyz = server.request("GET", "/readyz", &[]);
    assert_eq!(readyz.status, 200, "{readyz:?}");
    let body: serde_json::Value = serde_json::from_slice(&readyz.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "checks": {"index": "ok", "writable": "ok"}})
    );
    assert_eq!(server.request("HEAD", "/readyz", &[]).status, 200);
    assert_eq!(server.request("POST", "/healthz", &[]).status, 405);
    assert_eq!(server.request("GET", "/metrics", &[]).status, 401);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bob:pw")
    );
    let scrape = scrape(&server, &[("Authorization", &basic)]);
    assert!(
        value(
            &scrape,
            "sealer_registry_requests_total",
            &[("route", "healthz"), ("status", "200")]
        )
        .is_some()
    );
}

#[test]
fn readyz_fails_while_the_store_index_cannot_be_read() {
    let mut server = Offline::start(|_, _| {});
    assert_eq!(server.request("GET", "/readyz", &[]).status, 200);
    let index = server.store.join("index.json");
    let good = std::fs::read(&index).unwrap();
    std::fs::write(&index, b"{ not json").unwrap();
    let unready = server.request("GET", "/readyz", &[]);
    assert_eq!(unready.status, 503, "{unready:?}");
    let body: serde_json::Value = serde_json::from_slice(&unready.body).unwrap();
    assert_eq!(body["status"], "unready");
    assert_eq!(body["checks"]["index"], "failed");
    assert_eq!(body["checks"]["writable"], "ok");
    // Liveness is not readiness: the process still answers.
    assert_eq!(server.request("GET", "/healthz", &[]).status, 200);
    std::fs::write(&index, good).unwrap();
    assert_eq!(server.request("GET", "/readyz", &[]).status, 200);
    // The write check leaves nothing behind.
    let names: Vec<String> = std::fs::read_dir(&server.store)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|name| !name.contains("readyz")),
        "{names:?}"
    );
    server.server.stop().unwrap();
}

#[test]
fn a_client_that_leaves_before_the_answer_is_counted_as_499() {
    // An upstream that takes connections and never answers: the manifest fetch hangs.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::parse(
        &format!(
            "storage: {}\nupstreams:\n  - name: stuck\n    url: http://{}\n",
            dir.path().join("store").display(),
            stuck.local_addr().unwrap()
        ),
        std::path::Path::new("registry.yaml"),
    )
    .unwrap();
    let server = InProcess::start(config);
    {
        use std::io::Write as _;
        let mut client = std::net::TcpStream::connect(server.address).unwrap();
        client
            .write_all(b"GET /v2/stuck/team/app/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // The request is in the handler when the client goes.
        std::thread::sleep(Duration::from_millis(300));
    }
    let labels = [("method", "GET"), ("route", "manifest"), ("status", "499")];
    let url = format!("http://{}/metrics", server.address);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text =
            String::from_utf8(http_request("GET", &url, &[], &[], TIMEOUT).unwrap().body).unwrap();
        let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
        if value(&scrape, "sealer_registry_requests_total", &labels) == Some(1.0)
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
    assert_eq!(
        value(&scrape, "sealer_registry_requests_total", &labels),
        Some(1.0),
        "{text}"
    );
    // Nothing is left counted as running but this scrape.
    assert_eq!(
        value(&scrape, "sealer_registry_requests_in_flight", &[]),
        Some(1.0),
        "{text}"
    );
    drop(stuck);
}
