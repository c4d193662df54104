//! `sealer registry serve`: the binary serves its store, skopeo reads it, SIGTERM stops it
//! cleanly; bad configurations fail with file:line; without a configuration it serves the
//! defaults that `sealer registry config` prints; JSON logs, the access log, `/metrics`
//! and the health endpoints as an operator reads them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sealer_image_store::Store;
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_registry_proxy::ServerConfig;
use sealer_test_harness::{free_port, http_get, http_request, require_tools, run_ok};
use serde_json::Value;

use crate::support::*;

#[test]
fn registry_serve_answers_skopeo_and_stops_on_sigterm() {
    require_tools!("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open_dir(&root).unwrap();
    let top = write_image(
        &store,
        &ImageSpec::new("localhost/team/app:v1", &[2_000], 5),
    )
    .unwrap();
    drop(store);
    let sealer = Sealer::new(&root);
    let (mut child, port) = start_serve(&sealer, dir.path(), "mode: read-only\n");
    let raw = run_ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://127.0.0.1:{port}/team/app:v1"),
        ],
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&raw)),
        top.digest.to_string()
    );

    let log = stop_serve(&mut child);
    assert!(log.contains("registry listening"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
    // Every line starts with its time (RFC 3339, UTC).
    for line in log.lines() {
        let stamp = line.split_whitespace().next().unwrap_or_default();
        assert!(
            stamp.len() > 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line}"
        );
    }
}

#[test]
fn registry_config_prints_the_defaults_commented() {
    let dir = tempfile::tempdir().unwrap();
    let printed = Sealer::new(dir.path().join("store")).ok(&["registry", "config"]);
    assert!(printed.starts_with("# "), "{printed}");
    assert!(printed.contains("\n# upstreams:\n"), "{printed}");
    let config = ServerConfig::parse(&printed, std::path::Path::new("registry.yaml")).unwrap();
    assert_eq!(config, ServerConfig::default());
}

#[test]
fn registry_serve_without_a_config_serves_read_only_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open_dir(&root).unwrap();
    let top = write_image(
        &store,
        &ImageSpec::new("localhost/team/app:v1", &[2_000], 7),
    )
    .unwrap();
    drop(store);
    let sealer = Sealer::new(&root);
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut child = sealer
        .command(&[
            "--log-format",
            "json",
            "registry",
            "serve",
            "--listen",
            &listen,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_serving(port);
    let url = |path: &str| format!("http://{listen}{path}");
    let manifest_path = "/v2/team/app/manifests/v1";
    let manifest = http_request(
        "GET",
        &url(manifest_path),
        &[
            ("Accept", "application/vnd.oci.image.manifest.v1+json"),
            ("User-Agent", "e2e-probe/1.0 (\"quoted\")"),
        ],
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(manifest.status, 200);
    assert_eq!(
        format!("sha256:{}", sha256_hex(&manifest.body)),
        top.digest.to_string()
    );
    // Read-only: the defaults take no pushes.
    let push = http_request(
        "POST",
        &url("/v2/team/app/blobs/uploads/"),
        &[],
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(push.status, 403);
    for path in ["/healthz", "/readyz"] {
        let answer = http_get(&url(path), Duration::from_secs(10)).unwrap();
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
    }
    // `/metrics` in offline mode, read with a Prometheus text parser.
    let metrics = http_get(&url("/metrics"), Duration::from_secs(10)).unwrap();
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
    let sample = |name: &str, labels: &[(&str, &str)]| {
        scrape.samples.iter().find(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
    };
    for (method, route, status) in [
        ("GET", "manifest", "200"),
        ("POST", "blob_upload", "403"),
        ("GET", "healthz", "200"),
    ] {
        let labels = [("method", method), ("route", route), ("status", status)];
        let found = sample("sealer_registry_requests_total", &labels);
        assert!(
            matches!(found.map(|s| &s.value), Some(prometheus_parse::Value::Counter(n)) if *n >= 1.0),
            "{labels:?} in\n{text}"
        );
    }
    assert!(
        sample(
            "sealer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .is_some()
    );
    assert!(
        sample("process_resident_memory_bytes", &[]).is_some(),
        "{text}"
    );
    assert!(sample("sealer_registry_request_duration_seconds", &[]).is_some());

    let log = stop_serve(&mut child);
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    for line in &lines {
        let stamp = line["timestamp"].as_str().unwrap_or_default();
        assert!(stamp.ends_with('Z') && stamp.len() > 20, "{line}");
        assert!(
            line["level"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|line| line["message"].as_str().unwrap().contains("no --config")),
        "{log}"
    );
    let access = lines
        .iter()
        .find(|line| line["message"] == "request served" && line["path"] == manifest_path)
        .unwrap_or_else(|| panic!("no access line for the manifest in\n{log}"));
    assert!(
        access["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{access}"
    );
    assert_eq!(access["method"], "GET");
    assert_eq!(access["status"], 200);
    assert_eq!(access["bytes"], manifest.body.len());
    assert!(access["duration_ms"].as_f64().unwrap() >= 0.0, "{access}");
    assert_eq!(access["user_agent"], "e2e-probe/1.0 (\"quoted\")");
    assert_eq!(access["complete"], true);
    assert!(
        lines
            .iter()
            .any(|line| line["message"] == "request served" && line["status"] == 403),
        "{log}"
    );
}

#[test]
fn registry_serve_refuses_bad_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::new(dir.path().join("store"));
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, "listen: 127.0.0.1:1\nmode: sometimes\n").unwrap();
    let message = sealer.fails(&["registry", "serve", "--config", config.to_str().unwrap()]);
    assert!(message.contains("bad.yaml:2:"), "{message}");
    let upstreams = dir.path().join("upstreams.toml");
    std::fs::write(
        &upstreams,
        "[[upstreams]]\nname = \"lan\"\nurl = \"http://registry.lan:5000\"\n",
    )
    .unwrap();
    let message = sealer.fails(&["registry", "serve", "--config", upstreams.to_str().unwrap()]);
    assert!(message.contains("upstreams.toml:3:"), "{message}");
    assert!(message.contains("insecure: true"), "{message}");
}

#[test]
fn sealer_push_and_pull_through_registry_serve() {
    let dir = tempfile::tempdir().unwrap();
    let served = Sealer::new(dir.path().join("served"));
    let (mut child, port) = start_serve(&served, dir.path(), "mode: read-write\n");
    let local = Sealer::new(dir.path().join("local"));
    let name = format!("127.0.0.1:{port}/team/demo:v1");
    let store = Store::open_dir(&local.root).unwrap();
    let mut spec = ImageSpec::new(&name, &[3 << 20, 1_000], 9);
    spec.platforms = vec![
        sealer_image_store::Platform::new("linux", "amd64", None),
        sealer_image_store::Platform::new("linux", "arm64", None),
    ];
    let top = write_image(&store, &spec).unwrap();
    drop(store);
    local.ok(&["push", "--quiet", &name]);
    let pulled = Sealer::new(dir.path().join("pulled"));
    pulled.ok(&["pull", "--quiet", "--all-platforms", &name]);
    assert_eq!(pulled.digest_of(&name), top.digest.to_string());
    // The server stored it under its local namespace.
    let log = stop_serve(&mut child);
    assert_eq!(
        served.digest_of("localhost/team/demo:v1"),
        top.digest.to_string(),
        "{log}"
    );
    served.ok(&["fsck"]);
}

/// Starts `sealer registry serve` on a free port with `extra` configuration; waits until
/// `/v2/` answers.
fn start_serve(sealer: &Sealer, dir: &std::path::Path, extra: &str) -> (std::process::Child, u16) {
    let port = free_port().unwrap();
    let config = dir.join(format!("registry-{port}.yaml"));
    std::fs::write(&config, format!("listen: 127.0.0.1:{port}\n{extra}")).unwrap();
    let child = sealer
        .command(&["registry", "serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_serving(port);
    (child, port)
}

/// Waits (at most 20 s) until `/v2/` on `port` answers 200.
fn wait_until_serving(port: u16) {
    let base = format!("http://127.0.0.1:{port}/v2/");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&base, Duration::from_secs(2))
        .map(|r| r.status)
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "the registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM; asserts a clean exit within 20 s; returns the log.
fn stop_serve(child: &mut std::process::Child) -> String {
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{status}\n{log}");
    log
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}
