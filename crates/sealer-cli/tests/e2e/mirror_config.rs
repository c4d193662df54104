//! `sealer registry mirror-config`: the files land under --output and parse; existing files
//! with other content are kept unless --force; skopeo pulls through the generated
//! registries.conf mirror (a real docker-registry holding the image under the upstream's
//! path prefix) while the upstream itself does not even resolve.

use std::path::Path;

use sealer_test_harness::{ImageSpec, Registry, RegistryOptions, require_tools, seed_image};

use crate::support::*;

const CONFIG: &str = "upstreams:\n\
  \x20 - name: hub\n    url: https://registry-1.docker.io\n\
  \x20 - name: quay\n    url: https://quay.io\n\
  \x20 - name: lab\n    url: http://10.0.0.5:5000\n    insecure: true\n\
  default_upstream: hub\n";

fn write_config(dir: &Path) -> String {
    let path = dir.join("registry.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    arg(&path).to_owned()
}

fn toml_file(path: &Path) -> toml::Table {
    std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .parse()
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn containerd_files_are_written_idempotently_and_kept_without_force() {
    let dir = temp();
    let config = write_config(dir.path());
    let out = dir.path().join("etc-containerd");
    let sealer = Sealer::new(dir.path().join("store"));
    let args = [
        "registry",
        "mirror-config",
        "--runtime",
        "containerd",
        "--endpoint",
        "http://127.0.0.1:5999",
        "--config",
        &config,
        "--upstream",
        "ghcr.io",
        "--output",
        arg(&out),
    ];
    let stdout = sealer.ok(&args);
    assert!(stdout.contains("Wrote "), "{stdout}");
    assert!(stdout.contains("config_path"), "{stdout}");
    assert_eq!(
        dir_names(&out.join("certs.d")),
        ["10.0.0.5:5000", "docker.io", "ghcr.io", "quay.io"]
    );
    let hub = toml_file(&out.join("certs.d/docker.io/hosts.toml"));
    assert_eq!(hub["server"].as_str(), Some("https://registry-1.docker.io"));
    let capabilities = hub["host"]["http://127.0.0.1:5999"]["capabilities"]
        .as_array()
        .unwrap();
    assert_eq!(capabilities.len(), 2);
    let lab = toml_file(&out.join("certs.d/10.0.0.5:5000/hosts.toml"));
    assert_eq!(lab["server"].as_str(), Some("http://10.0.0.5:5000"));
    // No temporary files left behind; the generator does not touch the store.
    assert_eq!(dir_names(&out.join("certs.d/docker.io")), ["hosts.toml"]);
    assert!(!dir.path().join("store").exists());

    // Same content again: fine. Edited by hand: kept, unless --force.
    sealer.ok(&args);
    let edited = out.join("certs.d/quay.io/hosts.toml");
    std::fs::write(&edited, "server = \"https://quay.io\"\n").unwrap();
    let error = sealer.fails(&args);
    assert!(error.contains("quay.io/hosts.toml"), "{error}");
    assert!(error.contains("--force"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&edited).unwrap(),
        "server = \"https://quay.io\"\n"
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    sealer.ok(&forced);
    assert!(toml_file(&edited)["host"]["http://127.0.0.1:5999"].is_table());
}

#[test]
fn docker_gets_daemon_json_and_prefix_names_and_stdout_has_file_headers() {
    let dir = temp();
    let config = write_config(dir.path());
    let sealer = Sealer::new(dir.path().join("store"));
    let out = dir.path().join("etc-docker");
    let stdout = sealer.ok(&[
        "registry",
        "mirror-config",
        "--runtime",
        "docker",
        "--endpoint",
        "http://10.0.0.2:5000",
        "--config",
        &config,
        "-o",
        arg(&out),
    ]);
    assert!(
        stdout.contains("quay.io/<repo> as 10.0.0.2:5000/quay.io/<repo>"),
        "{stdout}"
    );
    let daemon: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("daemon.json")).unwrap()).unwrap();
    assert_eq!(
        daemon,
        serde_json::json!({
            "registry-mirrors": ["http://10.0.0.2:5000"],
            "insecure-registries": ["10.0.0.2:5000"],
        })
    );

    // Without --output: every file after a `# file:` header, notes as comments.
    let stdout = sealer.ok(&[
        "registry",
        "mirror-config",
        "--runtime",
        "crio",
        "--endpoint",
        "https://mirror.example.com",
        "--config",
        &config,
    ]);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("# file: registries.conf.d/50-sealer-mirror.conf")
    );
    let body: String = lines
        .filter(|line| !line.starts_with("# note:"))
        .map(|line| format!("{line}\n"))
        .collect();
    let conf: toml::Table = body.parse().unwrap();
    assert_eq!(
        conf["registry"][1]["mirror"][0]["location"].as_str(),
        Some("mirror.example.com/quay.io")
    );

    let error = sealer.fails(&[
        "registry",
        "mirror-config",
        "--runtime",
        "docker",
        "--endpoint",
        "http://mirror",
        "--upstream",
        "quay.io",
    ]);
    assert!(error.contains("needs a `.` or a port"), "{error}");
}

#[test]
fn skopeo_pulls_through_the_generated_registries_conf_mirror() {
    require_tools!("skopeo", "docker-registry");
    // The mirror: a plain docker-registry holding the image where the sealer registry
    // serves it, under the upstream's host as a path prefix.
    let mirror = Registry::start(RegistryOptions::anonymous()).unwrap();
    let seeded = seed_image(
        &mirror.host(),
        "registry.invalid.example/team/app:v1",
        &ImageSpec::new("x/y:z", &[4_000], 11),
        None,
    )
    .unwrap();
    let dir = temp();
    let sealer = Sealer::new(dir.path().join("store"));
    let out = dir.path().join("etc-containers");
    sealer.ok(&[
        "registry",
        "mirror-config",
        "--runtime",
        "crio",
        "--endpoint",
        &mirror.url(),
        "--upstream",
        "registry.invalid.example",
        "--output",
        arg(&out),
    ]);
    let conf = out.join("registries.conf.d/50-sealer-mirror.conf");
    // The upstream does not resolve: only the mirror can answer.
    let raw = skopeo(&[
        "--registries-conf",
        arg(&conf),
        "inspect",
        "--raw",
        "docker://registry.invalid.example/team/app:v1",
    ]);
    assert_eq!(sha256(&raw), seeded.manifest_digest);
    let requests = mirror.count("GET", |path| {
        path == "/v2/registry.invalid.example/team/app/manifests/v1"
    });
    assert!(requests >= 1, "{:?}", mirror.access_log());
}
