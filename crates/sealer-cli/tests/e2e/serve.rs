//! `sealer registry serve`: the binary serves its store, skopeo reads it, SIGTERM stops it
//! cleanly; bad configurations fail with file:line.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sealer_image_store::Store;
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_test_harness::{free_port, http_get, require_tools, run_ok};

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
    (child, port)
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
