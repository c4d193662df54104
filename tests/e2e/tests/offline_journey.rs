//! The offline journey (issue 6), end to end with real parts: two docker-registry upstreams
//! seeded with generated images; `sealer build` of examples/offline-journey (rendered with
//! the upstreams' addresses) carries every image its manifests and chart name; `sealer save`;
//! the upstreams are stopped and tripwires listen on their ports; `sealer load` into an
//! empty store; `sealer registry serve --image`; skopeo pulls every dependency through it by
//! tag and by digest with path prefixes, `?ns=` answers like containerd's mirrors expect,
//! every digest equals the original, and nothing connects to the upstreams.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::Path;
use std::time::Duration;

use sealer_e2e::{Served, Tripwire, render_example, run_sealer, workspace_root};
use sealer_image_store::{Digest, Platform};
use sealer_test_harness::{
    ImageSpec, Registry, RegistryOptions, SeededImage, http_request, require_tools, run_ok,
    seed_image,
};

const STEP_TIMEOUT: Duration = Duration::from_secs(300);
const CLUSTER_IMAGE: &str = "localhost/journey/cluster:v1";
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

fn sealer(root: &Path, args: &[&str]) -> String {
    run_sealer(root, args).unwrap()
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    run_ok("skopeo", args, STEP_TIMEOUT).unwrap()
}

fn sha256_digest(bytes: &[u8]) -> String {
    Digest::sha256(bytes).to_string()
}

struct Dependency {
    /// `HOST/REPOSITORY`.
    name: String,
    tag: String,
    seeded: SeededImage,
    /// Named by digest only in the manifests (`HOST/REPOSITORY@sha256:…`).
    pinned: bool,
}

impl Dependency {
    /// The reference the cluster's manifests use.
    fn reference(&self) -> String {
        if self.pinned {
            format!("{}@{}", self.name, self.seeded.manifest_digest)
        } else {
            format!("{}:{}", self.name, self.tag)
        }
    }
}

#[test]
fn cluster_image_carries_its_images_and_serves_them_offline() {
    require_tools!("docker-registry", "skopeo");
    let work = tempfile::tempdir().unwrap();
    let mut upstream_a = Registry::start(RegistryOptions::anonymous()).unwrap();
    let mut upstream_b = Registry::start(RegistryOptions::anonymous()).unwrap();
    let (host_a, host_b) = (upstream_a.host(), upstream_b.host());

    // Generated images; journey/web:1.0 exists in both registries with different content,
    // A's for two platforms (the cluster image keeps its index, clients pin that digest).
    let mut web_a = ImageSpec::new("unused:1", &[300_000, 20_000], 11);
    web_a.platforms = vec![
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", None),
    ];
    let seeds = [
        (&host_a, "journey/web:1.0", web_a),
        (
            &host_b,
            "journey/web:1.0",
            ImageSpec::new("unused:1", &[200_000], 12),
        ),
        (
            &host_b,
            "journey/tools:2.1",
            ImageSpec::new("unused:1", &[50_000, 9_000], 13),
        ),
        (
            &host_a,
            "journey/agent:0.3",
            ImageSpec::new("unused:1", &[80_000], 14),
        ),
        // Only ever named by digest (added to the manifests below).
        (
            &host_a,
            "journey/pinned:0.1",
            ImageSpec::new("unused:1", &[60_000], 15),
        ),
    ];
    let dependencies: Vec<Dependency> = seeds
        .iter()
        .map(|(host, path, spec)| {
            let (repository, tag) = path.split_once(':').unwrap();
            Dependency {
                name: format!("{host}/{repository}"),
                tag: tag.to_owned(),
                seeded: seed_image(host, path, spec, None).unwrap(),
                pinned: repository.ends_with("/pinned"),
            }
        })
        .collect();
    assert_ne!(
        dependencies[0].seeded.manifest_digest,
        dependencies[1].seeded.manifest_digest
    );

    // Build the example, rendered with the upstreams' addresses.
    let context = work.path().join("context");
    render_example(
        &workspace_root().join("examples/offline-journey"),
        &context,
        &[
            ("upstream-a.invalid", host_a.clone()),
            ("upstream-b.invalid", host_b.clone()),
        ],
    )
    .unwrap();
    let pinned = dependencies
        .iter()
        .find(|dependency| dependency.pinned)
        .unwrap();
    std::fs::write(
        context.join("manifests/pinned.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pinned\nspec:\n  containers:\n    - name: pinned\n      image: {}\n",
            pinned.reference()
        ),
    )
    .unwrap();
    let build_root = work.path().join("build-store");
    sealer(
        &build_root,
        &["build", "-t", CLUSTER_IMAGE, context.to_str().unwrap()],
    );
    let inspected: serde_json::Value =
        serde_json::from_str(&sealer(&build_root, &["inspect", CLUSTER_IMAGE])).unwrap();
    let listed = inspected.to_string();
    for dependency in &dependencies {
        assert!(
            listed.contains(&dependency.reference()),
            "{} not listed in {inspected:#}",
            dependency.reference()
        );
    }
    let archive = work.path().join("cluster.tar");
    sealer(
        &build_root,
        &["save", "-o", archive.to_str().unwrap(), CLUSTER_IMAGE],
    );

    // The upstreams go away; anything that still tries them trips a wire.
    upstream_a.stop();
    upstream_b.stop();
    let wires = [
        Tripwire::arm(format!("127.0.0.1:{}", upstream_a.port()).parse().unwrap()).unwrap(),
        Tripwire::arm(format!("127.0.0.1:{}", upstream_b.port()).parse().unwrap()).unwrap(),
    ];

    // An empty store on the "air-gapped" side: load, then serve what the image carries.
    let site_root = work.path().join("site-store");
    sealer(&site_root, &["load", "-i", archive.to_str().unwrap()]);
    let server = Served::start(
        &site_root,
        &["--image", CLUSTER_IMAGE],
        &work.path().join("serve.log"),
    )
    .unwrap();
    let mirror = server.host();
    // The carried multi-arch image is there for the build's platform only, and says so.
    let listing = sealer(&site_root, &["images"]);
    let web_a = listing
        .lines()
        .find(|line| line.starts_with(&format!("{host_a}/journey/web ")))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(web_a.contains("(+1 absent)"), "{listing}");

    for dependency in &dependencies {
        let reference = dependency.reference();
        let original = &dependency.seeded.manifest_digest;
        // Path prefix (CRI-O/podman mirrors, Docker prefix names): the host's port travels
        // as `_PORT`, references allow no `:` in their path.
        let (host, repository) = dependency.name.split_once('/').unwrap();
        let prefixed = format!("{mirror}/{}/{repository}", host.replace(':', "_"));
        let mut by = vec![original.clone()];
        if !dependency.pinned {
            by.push(dependency.tag.clone());
            let raw = skopeo(&[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{prefixed}:{}", dependency.tag),
            ]);
            assert_eq!(&sha256_digest(&raw), original, "{reference} by tag");
        }
        // By digest: the whole image (this platform's) is copied and verified by skopeo.
        let out = work
            .path()
            .join(format!("pulled-{}", sha256_digest(reference.as_bytes())));
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{prefixed}@{original}"),
            &format!("oci:{}:pulled", out.display()),
        ]);
        let pulled = skopeo(&["inspect", "--raw", &format!("oci:{}:pulled", out.display())]);
        let platform = &dependency.seeded.platforms[0];
        assert_eq!(
            sha256_digest(&pulled),
            platform.manifest_digest,
            "{reference} by digest"
        );
        // `?ns=` (containerd's hosts.toml mirrors), by tag and by digest.
        for manifest in &by {
            let response = http_request(
                "GET",
                &format!("http://{mirror}/v2/{repository}/manifests/{manifest}?ns={host}"),
                &[("Accept", ACCEPT)],
                &[],
                Duration::from_secs(10),
            )
            .unwrap();
            assert_eq!(response.status, 200, "{reference} by ns, {manifest}");
            assert_eq!(
                response.header("Docker-Content-Digest"),
                Some(original.as_str())
            );
            assert_eq!(sha256_digest(&response.body), *original);
        }
    }

    // The nodes' containerd: one hosts.toml per registry the cluster image carries.
    let certs = work.path().join("containerd");
    sealer(
        &site_root,
        &[
            "registry",
            "mirror-config",
            "--runtime",
            "containerd",
            "--endpoint",
            &format!("http://{mirror}"),
            "--image",
            CLUSTER_IMAGE,
            "--output",
            certs.to_str().unwrap(),
        ],
    );
    for host in [&host_a, &host_b] {
        let hosts_toml =
            std::fs::read_to_string(certs.join("certs.d").join(host).join("hosts.toml"))
                .unwrap_or_else(|error| panic!("hosts.toml of {host}: {error}"));
        assert!(
            hosts_toml.contains(&format!("http://{mirror}")),
            "{hosts_toml}"
        );
    }

    for wire in &wires {
        assert_eq!(
            wire.connections(),
            0,
            "something connected to the stopped upstream {}",
            wire.addr()
        );
    }
    // What an operator watches in this offline mode: `/metrics` in Prometheus text, counting
    // what the nodes pulled, and readiness.
    let metrics = http_request(
        "GET",
        &format!("http://{mirror}/metrics"),
        &[],
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
    let answered = |route: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|sample| {
                sample.metric == "sealer_registry_requests_total"
                    && sample.labels.get("route") == Some(route)
                    && sample.labels.get("status") == Some("200")
            })
            .map(|sample| match sample.value {
                prometheus_parse::Value::Counter(count) => count,
                _ => 0.0,
            })
            .sum()
    };
    assert!(answered("manifest") >= dependencies.len() as f64, "{text}");
    assert!(answered("blob") >= 1.0, "{text}");
    let ready = http_request(
        "GET",
        &format!("http://{mirror}/readyz"),
        &[],
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");

    let served_log = server.log();
    assert!(
        served_log.contains("imported the carried images"),
        "{served_log}"
    );
    // The digest-pinned image is served under its reference, with no complaint.
    assert!(served_log.contains(&pinned.reference()), "{served_log}");
    assert!(!served_log.contains("WARN"), "{served_log}");
    assert!(served_log.contains("layers_held_already=0"), "{served_log}");

    // A restart finds everything held already: the registry layer is not read again, and
    // the images are served as before.
    drop(server);
    let restarted = Served::start(
        &site_root,
        &["--image", CLUSTER_IMAGE],
        &work.path().join("serve-again.log"),
    )
    .unwrap();
    let log = restarted.log();
    assert!(log.contains("layers_held_already=1"), "{log}");
    let web = &dependencies[0];
    let (host, repository) = web.name.split_once('/').unwrap();
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!(
            "docker://{}/{}/{repository}:{}",
            restarted.host(),
            host.replace(':', "_"),
            web.tag
        ),
    ]);
    assert_eq!(sha256_digest(&raw), web.seeded.manifest_digest);
    for wire in &wires {
        assert_eq!(wire.connections(), 0);
    }
}
