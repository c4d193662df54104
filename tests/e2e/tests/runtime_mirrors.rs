//! The files `sealer registry mirror-config` writes, read by the runtimes themselves: a real
//! containerd 1.6 (Debian's) pulls through `sealer registry serve` with the `hosts.toml` files
//! written for Docker (`--runtime docker`, the same files Docker Engine >= 28 reads from
//! /etc/docker/certs.d on its containerd image store) and for containerd, `ctr images pull
//! --hosts-dir`. Every upstream is mirrored: the upstreams see only the registry's requests.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::Path;
use std::time::Duration;

use sealer_e2e::{Served, run_sealer};
use sealer_test_harness::{
    Containerd, ImageSpec, Registry, RegistryOptions, SeededImage, require_root, require_tools,
    seed_image,
};

/// How long one `ctr images pull` of a small image may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// Pulls `host/repository:tag` with containerd's resolver configured by `hosts_dir`, then
/// checks containerd recorded the image under the seeded digest.
fn ctr_pull(containerd: &Containerd, hosts_dir: &Path, reference: &str, image: &SeededImage) {
    containerd
        .ctr(
            &[
                "images",
                "pull",
                "--hosts-dir",
                hosts_dir.to_str().unwrap(),
                "--snapshotter",
                "native",
                reference,
            ],
            PULL_TIMEOUT,
        )
        .unwrap();
    let listed = containerd
        .ctr(&["images", "ls"], Duration::from_secs(30))
        .unwrap();
    let line = listed
        .lines()
        .find(|line| line.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} not in `ctr images ls`:\n{listed}"));
    assert!(
        line.contains(&image.manifest_digest),
        "{reference}: {line} (seeded {})",
        image.manifest_digest
    );
}

/// Whether every request an upstream logged after its first `seeded` entries came from the
/// registry (none from containerd directly: the mirror answered), and at least one manifest
/// request did.
fn assert_only_the_registry_asked(upstream: &Registry, seeded: usize, name: &str) {
    let entries = upstream.access_log().split_off(seeded);
    assert!(
        entries
            .iter()
            .any(|entry| entry.path.contains("/manifests/")),
        "{name}: the registry never asked for a manifest: {entries:?}"
    );
    for entry in &entries {
        assert!(
            entry.user_agent.starts_with("sealer-registry/"),
            "{name} was asked directly, not through the registry: {entry:?}"
        );
    }
}

/// `default_only`: the configuration also has an `upstream_policy`, and the second upstream's
/// own directory is removed, so containerd reaches it through the generated
/// `certs.d/_default/hosts.toml`.
fn pulls_every_upstream_through_the_hosts_tomls_of(runtime: &str, default_only: bool) {
    require_tools!("docker-registry", "skopeo", "containerd", "ctr");
    if !require_root("containerd") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let upstreams = [
        Registry::start(RegistryOptions::anonymous()).unwrap(),
        Registry::start(RegistryOptions::anonymous()).unwrap(),
    ];
    let images = [
        seed_image(
            &upstreams[0].host(),
            "team/app:1",
            &ImageSpec::new("unused:1", &[20_000, 3_000], 71),
            None,
        )
        .unwrap(),
        seed_image(
            &upstreams[1].host(),
            "tools/probe:2",
            &ImageSpec::new("unused:1", &[9_000], 72),
            None,
        )
        .unwrap(),
    ];
    // What seeding asked (skopeo); later requests are the pulls'.
    let seeded: Vec<usize> = upstreams
        .iter()
        .map(|upstream| upstream.access_log().len())
        .collect();
    let config = work.path().join("registry.yaml");
    std::fs::write(
        &config,
        format!(
            "upstreams:\n  - name: first\n    url: {}\n  - name: second\n    url: {}\n{}",
            upstreams[0].url(),
            upstreams[1].url(),
            if default_only {
                "upstream_policy:\n  admit: [\"quay.io\"]\n"
            } else {
                ""
            }
        ),
    )
    .unwrap();
    let root = work.path().join("store");
    let served = Served::start(
        &root,
        &["--config", config.to_str().unwrap()],
        &work.path().join("registry.log"),
    )
    .unwrap();
    let etc = work.path().join("etc");
    run_sealer(
        &root,
        &[
            "registry",
            "mirror-config",
            "--runtime",
            runtime,
            "--endpoint",
            &format!("http://{}", served.host()),
            "--config",
            config.to_str().unwrap(),
            "--output",
            etc.to_str().unwrap(),
        ],
    )
    .unwrap();
    let hosts_dir = etc.join("certs.d");
    for upstream in &upstreams {
        assert!(
            hosts_dir.join(upstream.host()).join("hosts.toml").is_file(),
            "no hosts.toml for {}",
            upstream.host()
        );
    }

    if default_only {
        assert!(hosts_dir.join("_default").join("hosts.toml").is_file());
        std::fs::remove_dir_all(hosts_dir.join(upstreams[1].host())).unwrap();
    }
    let containerd = Containerd::start().unwrap();
    for ((upstream, image), reference) in upstreams
        .iter()
        .zip(&images)
        .zip(["team/app:1", "tools/probe:2"])
    {
        let reference = format!("{}/{reference}", upstream.host());
        ctr_pull(&containerd, &hosts_dir, &reference, image);
    }
    for (index, upstream) in upstreams.iter().enumerate() {
        assert_only_the_registry_asked(upstream, seeded[index], &format!("upstream {index}"));
    }
    // The registry served every pull without logging an error.
    let log = served.log();
    assert!(
        !log.contains("ERROR"),
        "the registry logged errors serving containerd:\n{log}"
    );
}

#[test]
fn containerd_pulls_every_upstream_through_the_docker_hosts_tomls() {
    pulls_every_upstream_through_the_hosts_tomls_of("docker", false);
}

#[test]
fn containerd_pulls_every_upstream_through_its_own_hosts_tomls() {
    pulls_every_upstream_through_the_hosts_tomls_of("containerd", false);
}

#[test]
fn containerd_reaches_a_registry_without_its_own_directory_through_the_default_hosts_toml() {
    pulls_every_upstream_through_the_hosts_tomls_of("containerd", true);
}
