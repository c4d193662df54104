//! `sealer build` of the examples/ Kubefile: per-step output, the cache, reproducible
//! digests across stores and context copies with other mtimes, skopeo reads the result.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::require_tools;
use crate::support::{Sealer, arg, skopeo_inspect, temp};

const TAG: &str = "localhost/nginx-cluster:v1";

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nginx-cluster")
}

/// Copies a directory tree, giving every file the mtime `seconds`.
fn copy_tree(from: &Path, to: &Path, seconds: u64) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target, seconds);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
            let file = std::fs::File::options()
                .write(true)
                .open(&target)
                .expect("open");
            file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
                .expect("mtime");
        }
    }
}

#[test]
fn the_example_builds_reproducibly_and_rebuilds_from_the_cache() {
    let one = temp();
    let two = temp();
    let context = temp();
    copy_tree(&example(), context.path(), 1_234_567_890);
    let first = Sealer::new(one.path());
    let out = first.ok(&["build", "--build-mode", "lite", "-t", TAG, arg(&example())]);
    assert!(
        out.contains("STEP 6/10: COPY manifests /manifests/"),
        "{out}"
    );
    assert!(out.contains("3 layers built, 0 from the cache"), "{out}");
    let digest = first.digest_of(TAG);
    assert!(out.trim_end().ends_with(&digest), "{out}");

    let again = first.ok(&["build", "--build-mode", "lite", "-t", TAG, arg(&example())]);
    assert_eq!(again.matches("  CACHED").count(), 3, "{again}");
    assert!(
        again.contains("0 layers built, 3 from the cache"),
        "{again}"
    );
    assert_eq!(first.digest_of(TAG), digest);

    let second = Sealer::new(two.path());
    second.ok(&[
        "build",
        "--build-mode",
        "lite",
        "-f",
        arg(&context.path().join("Kubefile")),
        "-t",
        TAG,
        arg(context.path()),
    ]);
    assert_eq!(
        second.digest_of(TAG),
        digest,
        "same Kubefile and files, same digest"
    );

    let inspected = first.inspect(&[TAG]);
    let apps = &inspected["sealer"]["applications"];
    assert_eq!(apps[0]["name"], "nginx");
    assert_eq!(apps[0]["type"], "helm");
    assert_eq!(apps[1]["type"], "kube");
    assert_eq!(inspected["sealer"]["launch"]["app_names"][0], "nginx");

    require_tools!("skopeo");
    let skopeo = skopeo_inspect(&[&format!("oci:{}:{TAG}", arg(one.path()))]);
    assert_eq!(skopeo["Digest"], digest);
    assert_eq!(skopeo["Layers"].as_array().map(Vec::len), Some(3));
}

#[test]
fn build_errors_name_the_step() {
    let store = temp();
    let context = temp();
    std::fs::write(
        context.path().join("Kubefile"),
        "FROM scratch\nCOPY ../etc /etc\n",
    )
    .expect("write");
    let out = Sealer::new(store.path()).fails(&[
        "build",
        "--build-mode",
        "lite",
        "-t",
        "x:1",
        arg(context.path()),
    ]);
    assert!(out.contains("Kubefile:2:1"), "{out}");
    assert!(out.contains("is not inside the build context"), "{out}");
}

#[test]
fn prune_drops_the_cache_of_removed_images_only() {
    let store = temp();
    let sealer = Sealer::new(store.path());
    sealer.ok(&["build", "--build-mode", "lite", "-t", TAG, arg(&example())]);
    let out = sealer.ok(&["prune"]);
    assert!(out.contains("Removed 0 blobs"), "{out}");
    assert!(out.contains(", 0 build cache entries"), "{out}");
    let again = sealer.ok(&["build", "--build-mode", "lite", "-t", TAG, arg(&example())]);
    assert!(
        again.contains("0 layers built, 3 from the cache"),
        "{again}"
    );

    sealer.ok(&["rmi", TAG]);
    let out = sealer.ok(&["prune"]);
    assert!(out.contains(", 3 build cache entries"), "{out}");
    let rebuilt = sealer.ok(&["build", "--build-mode", "lite", "-t", TAG, arg(&example())]);
    assert!(
        rebuilt.contains("3 layers built, 0 from the cache"),
        "{rebuilt}"
    );
    sealer.ok(&["fsck"]);
}

#[test]
fn a_missing_base_is_pulled_and_its_apps_inherited() {
    require_tools!("docker-registry");
    let registry =
        sealer_test_harness::Registry::start(sealer_test_harness::RegistryOptions::anonymous())
            .expect("registry");
    let one = temp();
    let two = temp();
    let base = format!("{}/team/nginx-cluster:v1", registry.host());
    let first = Sealer::new(one.path());
    first.ok(&[
        "build",
        "--build-mode",
        "lite",
        "-t",
        &base,
        arg(&example()),
    ]);
    first.ok(&["push", &base]);

    let context = temp();
    std::fs::write(context.path().join("extra.yaml"), "kind: ConfigMap\n").expect("write");
    std::fs::write(
        context.path().join("Kubefile"),
        format!("FROM {base}\nCOPY extra.yaml /manifests/\nLAUNCH [\"hello\"]\n"),
    )
    .expect("write");
    let second = Sealer::new(two.path());
    let out = second.ok(&[
        "build",
        "--build-mode",
        "lite",
        "-t",
        "localhost/child:v1",
        arg(context.path()),
    ]);
    assert!(out.contains("1 layers built"), "{out}");
    let inspected = second.inspect(&["localhost/child:v1"]);
    assert_eq!(inspected["sealer"]["applications"][1]["name"], "hello");
    assert_eq!(inspected["sealer"]["launch"]["app_names"][0], "hello");
    assert_eq!(
        inspected["manifest"]["layers"].as_array().map(Vec::len),
        Some(4),
        "the base's three layers and one more"
    );
    second.ok(&["fsck"]);
}

/// Serves `body` at `/web.yaml` (404 elsewhere) on a loopback port, for `requests`
/// connections; returns the base URL.
fn serve_once(body: &'static str, requests: usize) -> String {
    serve_bytes("/web.yaml", body.as_bytes().to_vec(), requests)
}

/// Serves `body` at `path` (404 elsewhere) on a loopback port, for `requests` connections;
/// returns the base URL.
fn serve_bytes(path: &'static str, body: Vec<u8>, requests: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            if request_line.starts_with(&format!("GET {path} ")) {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            } else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        }
    });
    url
}

#[test]
fn a_large_add_download_arrives_whole() {
    use sha2::{Digest as _, Sha256};
    // 8 MiB of a pattern no buffer of the chain divides evenly.
    let body: Vec<u8> = (0..8u32 << 20)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = hex::encode(Sha256::digest(&body));
    let url = serve_bytes("/tools/big.bin", body, 2);
    let store = temp();
    let context = temp();
    std::fs::write(
        context.path().join("Kubefile"),
        format!("FROM scratch\nADD {url}/tools/big.bin /opt/\n"),
    )
    .expect("write");
    let sealer = Sealer::new(store.path());
    // A temporary directory of its own: the download's scratch file must be gone after.
    let scratch = temp();
    let output = sealer
        .command(&[
            "build",
            "--build-mode",
            "lite",
            "-t",
            "localhost/big:v1",
            arg(context.path()),
        ])
        .env("TMPDIR", scratch.path())
        .output()
        .expect("run sealer");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let leftovers: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("scratch dir")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let inspected = sealer.inspect(&["localhost/big:v1"]);
    let layer = inspected["manifest"]["layers"][0]["digest"]
        .as_str()
        .expect("a layer")
        .to_owned();
    let blob = std::fs::File::open(sealer.blob_path(&layer)).expect("layer blob");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    let mut found = None;
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        if name.trim_start_matches("./") == "opt/big.bin" {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).expect("read entry");
            found = Some(hex::encode(Sha256::digest(&content)));
        }
    }
    assert_eq!(found.as_deref(), Some(expected.as_str()));
}

#[test]
fn remote_app_sources_are_downloaded() {
    let url = serve_once("kind: Deployment\n", 3);
    let store = temp();
    let context = temp();
    std::fs::write(
        context.path().join("Kubefile"),
        format!("FROM scratch\nAPP web {url}/web.yaml\nLAUNCH [\"web\"]\n"),
    )
    .expect("write");
    let sealer = Sealer::new(store.path());
    let out = sealer.ok(&[
        "build",
        "--build-mode",
        "lite",
        "-t",
        "localhost/web:v1",
        arg(context.path()),
    ]);
    assert!(out.contains("1 layers built"), "{out}");
    let again = sealer.ok(&[
        "build",
        "--build-mode",
        "lite",
        "-t",
        "localhost/web:v1",
        arg(context.path()),
    ]);
    assert!(
        again.contains("0 layers built, 1 from the cache"),
        "{again}"
    );
    let inspected = sealer.inspect(&["localhost/web:v1"]);
    assert_eq!(inspected["sealer"]["applications"][0]["type"], "kube");
    assert_eq!(
        inspected["sealer"]["applications"][0]["launchfiles"][0],
        "web.yaml"
    );

    std::fs::write(
        context.path().join("Kubefile"),
        format!("FROM scratch\nAPP web {url}/missing.yaml\n"),
    )
    .expect("write");
    let out = sealer.fails(&[
        "build",
        "--build-mode",
        "lite",
        "-t",
        "localhost/web:v2",
        arg(context.path()),
    ]);
    assert!(out.contains("Kubefile:2:1") && out.contains("404"), "{out}");
}

/// Downloads trust CAs exactly as registry requests do (one TLS setup): a `--ca-file` with
/// no PEM certificate in it is an error naming the file, not silently ignored.
#[test]
fn downloads_refuse_a_ca_file_without_certificates_like_registry_requests() {
    let url = serve_once("kind: Deployment\n", 1);
    let store = temp();
    let context = temp();
    let ca = context.path().join("not-a-ca.pem");
    std::fs::write(&ca, "no certificate here\n").expect("write");
    std::fs::write(
        context.path().join("Kubefile"),
        format!("FROM scratch\nAPP web {url}/web.yaml\nLAUNCH [\"web\"]\n"),
    )
    .expect("write");
    let sealer = Sealer::new(store.path());
    let out = sealer.fails(&[
        "build",
        "--build-mode",
        "lite",
        "--ca-file",
        arg(&ca),
        "-t",
        "localhost/web:v1",
        arg(context.path()),
    ]);
    assert!(out.contains("not-a-ca.pem"), "{out}");
    assert!(out.contains("no PEM certificate"), "{out}");
}
